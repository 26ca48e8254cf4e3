//! The stages joined: decode → enrich → (image analysis) → judge → write.
//! [`crate::watch`] decides when each step runs; this says what it does.
use std::collections::{HashMap, VecDeque};

use modtrace_common::{kind_name, pinned::LOCK_RULE_ID, KernelEvent, Syscall};
use tracing::warn;

use crate::{
    clock::{Clock, Stamp},
    decode::{self, Decoded},
    enrich::{analysis::Analyses, summaries::Summaries, Enricher, Made},
    kernel::{
        enforce::{EnforceError, Enforcer},
        pinned::Handover,
    },
    policy::{
        dedup::{Alerted, Dedup},
        Policy,
    },
    record::{
        image::ImageReport,
        judgement::{Alert, Evaluation},
        Body, Call, Denials, Enforcement, EventCounts, PreviousEnforcement, Record, RecordId,
        SCHEMA_VERSION,
    },
    sink::{Emitter, SinkError},
};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("map AGGREGATES: {0}")]
    Aggregates(aya::maps::MapError),
    #[error("reading the kernel's denial counts: {0}")]
    Denials(#[from] EnforceError),
}

/// Requests remembered by id until the loads they cause are written.
const REMEMBERED_REQUESTS: usize = 256;

pub struct Pipeline {
    pub enricher: Enricher,
    pub analyses: Analyses<Made>,
    pub summaries: Summaries,
    pub policy: Policy,
    pub alerts: Dedup,
    emitter: Emitter,
    clock: Clock,
    host: String,
    /// The next record's seq: assigned here only, as each record is written.
    seq: u64,
    /// Syscall records and requests written, by kind (for `stop`).
    pub counts: EventCounts,
    /// The seqs of requests written, by record id, for the `cause` of loads.
    requests_written: HashMap<RecordId, u64>,
    requests_order: VecDeque<RecordId>,
    /// Under `watch --enforce`: the kernel's denials, read back.
    pub enforcement: Option<Enforcing>,
}

/// The enforcer and the id of each of its rule slots.
pub struct Enforcing {
    pub enforcer: Enforcer,
    pub rules: Vec<String>,
    /// The counts the last `enforcement` record reported.
    reported: Vec<u64>,
}

impl Enforcing {
    /// `rules`: the policy's deny rules by slot; the lock's denials
    /// ([`LOCK_RULE_ID`]) are counted after them.
    pub fn new(enforcer: Enforcer, mut rules: Vec<String>) -> Self {
        rules.push(LOCK_RULE_ID.to_owned());
        let reported = vec![0; rules.len()];
        Self {
            enforcer,
            rules,
            reported,
        }
    }

    /// Marks `call` of thread `tid` denied when the kernel denied it: a load
    /// that failed with EPERM, for which a denial of the thread is noted.
    fn attach_denial(&mut self, tid: u32, call: &mut Call) {
        let eperm = call
            .result
            .as_ref()
            .is_some_and(|r| r.errno.as_deref() == Some("EPERM"));
        if !eperm {
            return;
        }
        if let Some((rule, hook)) = self.enforcer.take_denial(tid) {
            call.enforcement = Some(Enforcement {
                denied: true,
                rule,
                hook: hook.to_owned(),
            });
        }
    }

    /// At exit, once the totals are taken for `stop`: they count as reported
    /// (a next collector reports only later denials); with `release` the
    /// pins are removed and enforcement ends, otherwise it goes on.
    pub fn finish(mut self, release: bool) -> Result<(), EnforceError> {
        self.mark_reported()?;
        self.enforcer.finish(release)
    }

    /// Notes in the kernel that the counts of the last report are reported.
    fn mark_reported(&mut self) -> Result<(), EnforceError> {
        self.enforcer.mark_reported(&self.reported)
    }

    /// The totals, and what changed since the last report (`None` when
    /// nothing did), which then counts as reported.
    fn denials(&mut self, since_last: bool) -> Result<Option<Denials>, EnforceError> {
        let counts = self.enforcer.counts(self.rules.len() - 1)?;
        let lock_denied = counts.last().is_some_and(|&n| n > 0);
        // The lock's entry only once it denied: most hosts never lock.
        let by_rule = |values: &[u64]| -> std::collections::BTreeMap<String, u64> {
            self.rules
                .iter()
                .cloned()
                .zip(values.iter().copied())
                .filter(|(rule, _)| lock_denied || rule != LOCK_RULE_ID)
                .collect()
        };
        let new: Vec<u64> = counts
            .iter()
            .zip(&self.reported)
            .map(|(now, before)| now.saturating_sub(*before))
            .collect();
        if since_last && new.iter().all(|&n| n == 0) {
            return Ok(None);
        }
        let denials = Denials {
            denials: by_rule(&counts),
            total: counts.iter().sum(),
            new: since_last.then(|| by_rule(&new)),
            previous: None,
        };
        self.reported = counts;
        Ok(Some(denials))
    }
}

impl Pipeline {
    pub fn new(
        enricher: Enricher,
        analyses: Analyses<Made>,
        summaries: Summaries,
        policy: Policy,
        alerts: Dedup,
        emitter: Emitter,
        host: String,
    ) -> Self {
        Self {
            enricher,
            analyses,
            summaries,
            policy,
            alerts,
            emitter,
            clock: Clock,
            host,
            seq: 0,
            counts: EventCounts::default(),
            requests_written: HashMap::new(),
            requests_order: VecDeque::new(),
            enforcement: None,
        }
    }

    /// The seq the next record will get, so that records can name it.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    pub fn flush(&mut self) -> Result<(), SinkError> {
        self.emitter.flush()
    }

    /// One item of a ring buffer, typed; None for one that cannot be read.
    pub fn decode(bytes: &[u8]) -> Option<Decoded> {
        decode::decode(bytes)
            // A record we cannot read is still a lost event: say so.
            .inspect_err(|err| warn!("dropping an unreadable kernel record: {err}"))
            .ok()
    }

    /// One decoded item of a ring buffer.
    pub fn on_decoded(
        &mut self,
        decoded: Decoded,
        still_in_call: impl Fn(u32, u64) -> bool,
    ) -> Result<(), SinkError> {
        match decoded {
            Decoded::Record(event) => self.on_event(&event),
            Decoded::LoadEntry(notice) => {
                self.enricher.load_began(&notice, still_in_call);
                Ok(())
            }
        }
    }

    /// Makes the record of `event`; writes it now, or once its image (or an
    /// earlier record of its thread) is analysed.
    pub fn on_event(&mut self, event: &KernelEvent) -> Result<(), SinkError> {
        let (made, image) = self.enricher.enrich(event);
        match image {
            Some(image) => self.analyses.submit(made.tid, made, image),
            None => {
                if let Some(made) = self.analyses.pass(made.tid, made) {
                    self.finish(made)?;
                }
            }
        }
        Ok(())
    }

    /// Records let go by image analysis, the analysed ones with their image.
    pub fn finish_analysed(
        &mut self,
        released: Vec<(Made, Option<ImageReport>)>,
    ) -> Result<(), SinkError> {
        for (mut made, image) in released {
            if let (Body::Call(call), Some(image)) = (&mut made.body, image) {
                call.module.get_or_insert_with(Default::default).image = Some(image);
            }
            self.finish(made)?;
        }
        Ok(())
    }

    /// Counts, judges and writes a record; its seq is the next one now.
    fn finish(&mut self, mut made: Made) -> Result<(), SinkError> {
        let seq = self.seq;
        let kind = kind_name(made.header.kind);
        self.summaries.remember(&made.header, made.tgid, seq);
        self.counts.add(made.header.kind, 1);
        match &mut made.body {
            Body::Request(_) => self.remember_request(made.id(), seq),
            Body::Call(call) => {
                if let Some(enforcing) = &mut self.enforcement {
                    enforcing.attach_denial(made.tid, call);
                }
                // A cause is cited by seq once its request is written.
                if let Some(cause) = &mut call.cause {
                    match self.requests_written.get(&cause.request_id) {
                        Some(&request_seq) => cause.request_seq = request_seq,
                        None => call.cause = None,
                    }
                }
            }
            _ => {}
        }
        let stamp = self.clock.stamp(Some(made.header.enter_ns));
        let ts = stamp.text.as_str();
        let evaluation = match (&made.body, Syscall::from_kind(made.header.kind)) {
            (Body::Call(call), Some(syscall)) => {
                let render = || self.json_of(kind, ts, &made.body);
                Some(self.policy.judge_call(syscall, ts, call, &render))
            }
            _ => None,
        };
        self.write(kind, ts, &made.body, evaluation.as_ref())?;
        let alerts = evaluation.map_or_else(Vec::new, |e| Alert::for_event(seq, kind, &e));
        let written = match &made.body {
            Body::Call(call) if !alerts.is_empty() => {
                let alerted = Alerted::of_call(seq, kind, ts, Some(stamp.ns), call);
                self.alerts.admit_alerted(&alerted, alerts)
            }
            // Its time may still end windows.
            _ => self.alerts.observe_ns(stamp.ns),
        };
        for alert in written {
            self.emit("alert", None, &Body::Alert(alert))?;
        }
        Ok(())
    }

    fn remember_request(&mut self, id: RecordId, seq: u64) {
        if self.requests_order.len() == REMEMBERED_REQUESTS {
            if let Some(oldest) = self.requests_order.pop_front() {
                self.requests_written.remove(&oldest);
            }
        }
        self.requests_order.push_back(id);
        self.requests_written.insert(id, seq);
    }

    /// The JSON of a record about to be written (without its policy
    /// object): for policy messages, which may name any field.
    fn json_of(&self, kind: &str, ts: &str, body: &Body) -> serde_json::Value {
        let record = next_record(&self.host, self.seq, kind, ts, body, None);
        serde_json::to_value(record).expect("records serialize to JSON")
    }

    /// Writes a record as the next one: its seq is assigned here, and
    /// nowhere else.
    fn write(
        &mut self,
        kind: &str,
        ts: &str,
        body: &Body,
        policy: Option<&Evaluation>,
    ) -> Result<(), SinkError> {
        let record = next_record(&self.host, self.seq, kind, ts, body, policy);
        self.emitter.write(&record, kind == "alert")?;
        self.seq += 1;
        Ok(())
    }

    /// Writes a record that no policy judges, with the time `boot_ns` (now,
    /// when None), then the closing alerts of windows that time ends.
    pub fn emit(&mut self, kind: &str, boot_ns: Option<u64>, body: &Body) -> Result<(), SinkError> {
        let stamp = self.clock.stamp(boot_ns);
        self.write(kind, &stamp.text, body, None)?;
        self.close_alert_windows(&stamp, false)
    }

    /// Writes the closing alerts of the windows that time `ts` ends (that of
    /// a record just written, or the timer's), with that `ts`: replay,
    /// reading it, closes the same windows.
    pub fn close_alert_windows(&mut self, ts: &Stamp, timer: bool) -> Result<(), SinkError> {
        let closing = if timer {
            self.alerts.due(ts.ns)
        } else {
            self.alerts.observe_ns(ts.ns)
        };
        for alert in closing {
            self.write("alert", &ts.text, &Body::Alert(alert), None)?;
        }
        Ok(())
    }

    /// Writes the summaries of closed aggregation windows (of all, at
    /// shutdown, with `now` None).
    pub fn report_summaries(&mut self, now: Option<u64>) -> Result<(), PipelineError> {
        let summaries = self
            .summaries
            .take_closed(now, &self.clock)
            .map_err(PipelineError::Aggregates)?;
        for (last_ns, summary) in summaries {
            self.emit("summary", Some(last_ns), &Body::Summary(summary))?;
        }
        Ok(())
    }

    /// An `enforcement` record with the denials since the last one, if any.
    pub fn report_denials(&mut self) -> Result<(), PipelineError> {
        let Some(enforcing) = &mut self.enforcement else {
            return Ok(());
        };
        if let Some(denials) = enforcing.denials(true)? {
            self.emit("enforcement", None, &Body::Enforcement(denials))?;
            // Only once the record is out: a collector killed before it
            // leaves the denials for the next one to report.
            self.flush()?;
            if let Some(enforcing) = &mut self.enforcement {
                enforcing.mark_reported()?;
            }
        }
        Ok(())
    }

    /// The `enforcement` record that says what this collector took over:
    /// the pinned policy in force until it switched its own in, with its
    /// denials and those no collector had reported.
    pub fn report_handover(&mut self, handover: &Handover) -> Result<(), PipelineError> {
        let rules = &handover.previous.rules;
        let denials = Denials {
            denials: rules.iter().map(|r| (r.id.clone(), r.denials)).collect(),
            total: rules.iter().map(|r| r.denials).sum(),
            new: Some(
                rules
                    .iter()
                    .map(|r| (r.id.clone(), r.denials.saturating_sub(r.reported)))
                    .collect(),
            ),
            previous: Some(PreviousEnforcement {
                pinned_since: Clock::unix_rfc3339(handover.pinned_unix_s),
                active_since: Clock::unix_rfc3339(handover.previous.active_since_unix_s),
                policy_sha256: handover.previous.policy_sha256.clone(),
                policy_source: handover.previous.source.clone(),
                replaced: handover.replaced,
            }),
        };
        Ok(self.emit("enforcement", None, &Body::Enforcement(denials))?)
    }

    /// The denials of the whole run, for `stop`.
    pub fn denial_totals(&mut self) -> Result<Option<Denials>, PipelineError> {
        match &mut self.enforcement {
            Some(enforcing) => Ok(enforcing.denials(false)?),
            None => Ok(None),
        }
    }

    /// Alerts closing every window still open, then nothing more.
    pub fn close_all_alerts(&mut self) -> Result<(), SinkError> {
        for alert in self.alerts.close_all() {
            self.emit("alert", None, &Body::Alert(alert))?;
        }
        Ok(())
    }
}

/// The record of `host` numbered `seq`, in the current schema.
fn next_record<'a>(
    host: &'a str,
    seq: u64,
    kind: &'a str,
    ts: &'a str,
    body: &'a Body,
    policy: Option<&'a Evaluation>,
) -> Record<'a> {
    Record {
        kind,
        schema: SCHEMA_VERSION,
        ts,
        seq,
        host,
        body,
        policy,
    }
}
