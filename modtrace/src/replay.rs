//! `modtrace replay`: re-judges a recorded NDJSON capture with a policy,
//! through the same [`Policy::judge`] that `watch` uses on live records.
//!
//! Syscall records get a fresh `policy` object; the `alert` records of the
//! capture are dropped, as they were raised by the policy of the time; every
//! other record passes unchanged. Each alert of the new judgement follows
//! the record that raised it, as in `watch`'s output: a syscall record's, and
//! the `start` record's for modules already loaded that modprobe.d disables.
//! Repeated alerts go through the same [`Dedup`] as in `watch`, fed the same
//! records (the capture's alert records too: their `ts` is how time passed
//! for `watch`), with the window the `start` record names.
use std::{
    borrow::Cow,
    collections::BTreeMap,
    io::{self, BufRead, Write},
    path::PathBuf,
};

use modtrace_common::Syscall;
use serde::{Deserialize, Serialize};
use serde_json::{json, value::RawValue, Value};

use crate::{
    policy::{self, dedup::Dedup, event::ReadRecord, Policy},
    record::{
        judgement::{Alert, Evaluation, Verdict},
        SCHEMA_VERSION,
    },
    sink::{text_line, Format},
};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{file}:{line}: record of schema version {schema}, but this modtrace reads schema {SCHEMA_VERSION} and older; replay it with a newer modtrace")]
    NewerSchema {
        file: String,
        line: u64,
        schema: u64,
    },
    #[error("cannot read {file}: {source}")]
    Read { file: String, source: io::Error },
    #[error("cannot write the replay: {0}")]
    Write(io::Error),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
}

/// Counts of one replay, printed after it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub lines: u64,
    pub records: u64,
    /// Syscall records judged.
    pub events: u64,
    pub malformed: u64,
    /// `alert` records of the capture, left out of the output.
    pub dropped_alerts: u64,
    pub verdicts: BTreeMap<&'static str, u64>,
    /// Matches per rule id.
    pub rules: BTreeMap<String, u64>,
    /// Alerts the new judgement raises (closing alerts of repeats included).
    pub alerts: u64,
    /// Alerts of the new judgement counted in a closing alert, not written.
    pub suppressed_alerts: u64,
}

impl Summary {
    pub fn text(&self) -> String {
        let verdicts: Vec<String> = Verdict::ALL
            .iter()
            .map(|v| format!("{} {}", v.name(), self.verdicts.get(v.name()).unwrap_or(&0)))
            .collect();
        let mut out = format!(
            "replay: {} lines, {} records, {} events judged, {} malformed lines skipped, {} alert records of the capture dropped\nverdicts: {}\nalerts raised: {} ({} repeats not written, counted in closing alerts)\n",
            self.lines,
            self.records,
            self.events,
            self.malformed,
            self.dropped_alerts,
            verdicts.join(", "),
            self.alerts,
            self.suppressed_alerts
        );
        out.push_str("matches per rule:");
        if self.rules.is_empty() {
            out.push_str(" none");
        }
        for (rule, count) in &self.rules {
            out.push_str(&format!("\n  {rule}: {count}"));
        }
        out.push('\n');
        out
    }
}

/// Where the policy comes from: it is rebuilt for the kernel each `start`
/// record names, so that `{kernel}` paths fit the captured host.
pub struct PolicySource {
    pub path: Option<PathBuf>,
    pub check_owner: bool,
}

impl PolicySource {
    pub fn load(&self, kernel: &str) -> Result<Policy, policy::PolicyError> {
        let context = policy::Context {
            kernel: kernel.to_owned(),
            check_owner: self.check_owner,
        };
        Policy::load_or_default(self.path.as_deref(), &context)
    }
}

/// Longest line kept: the largest records (a load with a big modinfo) are a
/// few hundred KiB, and a hostile capture must not exhaust memory.
pub const MAX_LINE_BYTES: usize = 16 << 20;

enum LineRead {
    End,
    Line,
    /// Longer than the limit: `line` holds its start, the rest was skipped.
    TooLong,
}

/// `read_until(b'\n')` that keeps at most `limit` bytes of a line and skips
/// the rest of a longer one.
fn read_line_bounded(
    input: &mut impl BufRead,
    line: &mut Vec<u8>,
    limit: usize,
) -> io::Result<LineRead> {
    let mut seen = 0usize;
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            return Ok(match seen {
                0 => LineRead::End,
                _ if seen > limit => LineRead::TooLong,
                _ => LineRead::Line,
            });
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(end) => (end + 1, true),
            None => (chunk.len(), false),
        };
        let room = limit.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..take.min(room)]);
        seen += take;
        input.consume(take);
        if done {
            return Ok(if seen > limit {
                LineRead::TooLong
            } else {
                LineRead::Line
            });
        }
    }
}

pub struct Replay<'a, W: Write, D: Write> {
    pub file: &'a str,
    pub format: Format,
    pub colour: bool,
    pub out: W,
    /// Where malformed lines are reported.
    pub diagnostics: D,
    /// The alert window in seconds, instead of the one each `start` record
    /// names (captures from before windows existed name none: 0).
    pub alert_window_s: Option<u64>,
}

impl<W: Write, D: Write> Replay<'_, W, D> {
    pub fn run(
        &mut self,
        mut input: impl BufRead,
        source: &PolicySource,
    ) -> Result<Summary, ReplayError> {
        let mut kernel = policy::running_kernel();
        let mut policy = source.load(&kernel)?;
        let mut summary = Summary::default();
        let mut alerts = Dedup::new(self.alert_window_s.unwrap_or(0));
        // The time and host of the latest record, for the closing alerts at
        // the end of the input.
        let mut last = Value::Null;
        let mut line = Vec::new();
        loop {
            line.clear();
            let read =
                read_line_bounded(&mut input, &mut line, MAX_LINE_BYTES).map_err(|source| {
                    ReplayError::Read {
                        file: self.file.to_owned(),
                        source,
                    }
                })?;
            let too_long = match read {
                LineRead::End => break,
                LineRead::Line => false,
                LineRead::TooLong => true,
            };
            summary.lines += 1;
            if too_long {
                summary.malformed += 1;
                self.report(
                    summary.lines,
                    &format!("longer than {MAX_LINE_BYTES} bytes (no record is)"),
                )?;
                continue;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let text = match std::str::from_utf8(&line) {
                Ok(text) => text,
                Err(err) => {
                    summary.malformed += 1;
                    self.report(summary.lines, &format!("not UTF-8 ({err})"))?;
                    continue;
                }
            };
            // A syscall record is judged from its line, without a JSON tree.
            if let Some((envelope, syscall)) = syscall_envelope(text) {
                self.check_schema(envelope.schema, summary.lines)?;
                let judging = Judging {
                    policy: &policy,
                    alerts: &mut alerts,
                    summary: &mut summary,
                };
                if let Some(stamp) = self.judge_line(text, &envelope, syscall, judging)? {
                    last = stamp;
                }
                continue;
            }
            let record = match parse_record(text) {
                Ok(record) => record,
                Err(reason) => {
                    summary.malformed += 1;
                    self.report(summary.lines, &reason)?;
                    continue;
                }
            };
            self.check_schema(record["schema"].as_u64().unwrap_or_default(), summary.lines)?;
            if let Some(syscall) = record["kind"].as_str().and_then(Syscall::from_name) {
                // Its envelope did not read (a key given twice, say): the
                // line as serde_json writes it does.
                let canonical = record.to_string();
                let judging = Judging {
                    policy: &policy,
                    alerts: &mut alerts,
                    summary: &mut summary,
                };
                match serde_json::from_str::<Envelope>(&canonical) {
                    Ok(envelope) => {
                        if let Some(stamp) =
                            self.judge_line(&canonical, &envelope, syscall, judging)?
                        {
                            last = stamp;
                        }
                    }
                    Err(err) => {
                        judging.summary.malformed += 1;
                        self.report(
                            judging.summary.lines,
                            &format!("does not fit the record schema: {err}"),
                        )?;
                    }
                }
                continue;
            }
            summary.records += 1;
            let ts = record["ts"].as_str().unwrap_or_default().to_owned();
            last = stamp_of(&record);
            match record["kind"].as_str() {
                Some("alert") => {
                    summary.dropped_alerts += 1;
                    let closing = alerts.observe(&ts);
                    self.write_alerts(&last, closing, &mut summary)?;
                    continue;
                }
                Some("start") => {
                    // A new run: the last one's windows end with it.
                    let closing = alerts.close_all();
                    self.write_alerts(&last, closing, &mut summary)?;
                    let window = record["alert_window_s"].as_u64().unwrap_or(0);
                    alerts = Dedup::new(self.alert_window_s.unwrap_or(window));
                    if let Some(captured) = record["kernel"].as_str().filter(|k| *k != kernel) {
                        kernel = captured.to_owned();
                        policy = source.load(&kernel)?;
                    }
                    // A run under `watch --enforce` had its deny rules
                    // enforced: its records say so, not `would_deny`.
                    policy.set_enforced(record["enforcing"].as_bool().unwrap_or(false));
                    self.write(&record)?;
                    alerts.observe(&ts);
                    let preloaded = preloaded_alerts(&policy, &record);
                    self.write_alerts(&last, preloaded, &mut summary)?;
                    continue;
                }
                // `watch` closes every window before it writes `stop`.
                Some("stop") => {
                    let closing = alerts.close_all();
                    self.write_alerts(&last, closing, &mut summary)?;
                }
                _ => {}
            }
            self.write(&record)?;
            let closing = alerts.observe(&ts);
            self.write_alerts(&last, closing, &mut summary)?;
        }
        let closing = alerts.close_all();
        self.write_alerts(&last, closing, &mut summary)?;
        Ok(summary)
    }

    /// Judges syscall record `line` and writes it, then the alerts it
    /// raises; returns its time and host, or None when it does not fit the
    /// schema (reported, and skipped).
    fn judge_line(
        &mut self,
        line: &str,
        envelope: &Envelope,
        syscall: Syscall,
        judging: Judging,
    ) -> Result<Option<Value>, ReplayError> {
        let Judging {
            policy,
            alerts,
            summary,
        } = judging;
        let ts = envelope
            .ts
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
            .unwrap_or_default();
        let seq = envelope
            .seq
            .and_then(|raw| raw.get().parse().ok())
            .unwrap_or_default();
        let read = match ReadRecord::from_line(syscall, line, ts, seq) {
            Ok(read) => read,
            Err(err) => {
                summary.malformed += 1;
                self.report(
                    summary.lines,
                    &format!("does not fit the record schema: {err}"),
                )?;
                return Ok(None);
            }
        };
        summary.records += 1;
        let evaluation = policy.judge_line(line, &read);
        self.write_judged(line, envelope.policy, &evaluation)?;
        summary.events += 1;
        *summary
            .verdicts
            .entry(evaluation.verdict.name())
            .or_default() += 1;
        for m in &evaluation.matches {
            *summary.rules.entry(m.rule.clone()).or_default() += 1;
        }
        let stamp = json!({"ts": raw_json(envelope.ts), "host": raw_json(envelope.host)});
        let raised = Alert::for_event(read.seq, read.syscall.name(), &evaluation);
        let written = alerts.admit_read(&read, raised);
        self.write_alerts(&stamp, written, summary)?;
        Ok(Some(stamp))
    }

    /// Writes `line` with `evaluation` as its `policy` object, in place of
    /// the judgement of the time (`old`, a part of `line`) or after the rest.
    fn write_judged(
        &mut self,
        line: &str,
        old: Option<&RawValue>,
        evaluation: &Evaluation,
    ) -> Result<(), ReplayError> {
        let policy = serde_json::to_string(evaluation)
            .map_err(io::Error::other)
            .map_err(ReplayError::Write)?;
        let trimmed = line.trim_end();
        let at = old.and_then(|old| {
            let start = (old.get().as_ptr() as usize).checked_sub(line.as_ptr() as usize)?;
            let end = start + old.get().len();
            (line.get(start..end) == Some(old.get())).then_some((start, end))
        });
        let judged = match at {
            Some((start, end)) => format!("{}{policy}{}", &line[..start], &trimmed[end..]),
            None => {
                let open = trimmed.strip_suffix('}').unwrap_or(trimmed);
                format!("{open},\"policy\":{policy}}}")
            }
        };
        let text = match self.format {
            Format::Json => format!("{judged}\n"),
            Format::Text => {
                let record: Value = serde_json::from_str(&judged)
                    .map_err(io::Error::other)
                    .map_err(ReplayError::Write)?;
                text_line(&record, self.colour)
            }
        };
        self.out
            .write_all(text.as_bytes())
            .map_err(ReplayError::Write)
    }

    /// Writes the alerts that `record` raised, as `alert` records with its
    /// time and host (they have no `seq`: the capture's numbers are kept).
    fn write_alerts(
        &mut self,
        record: &Value,
        alerts: Vec<Alert>,
        summary: &mut Summary,
    ) -> Result<(), ReplayError> {
        summary.alerts += alerts.len() as u64;
        for alert in alerts {
            summary.suppressed_alerts += alert.dedup.as_ref().map_or(0, |d| d.suppressed);
            let mut line = json!({"kind": "alert", "schema": SCHEMA_VERSION,
                "ts": record["ts"], "host": record["host"]});
            let body = serde_json::to_value(alert)
                .map_err(io::Error::other)
                .map_err(ReplayError::Write)?;
            if let (Some(line), Value::Object(body)) = (line.as_object_mut(), body) {
                line.extend(body);
            }
            self.write(&line)?;
        }
        Ok(())
    }

    fn check_schema(&self, schema: u64, line: u64) -> Result<(), ReplayError> {
        if schema > u64::from(SCHEMA_VERSION) {
            return Err(ReplayError::NewerSchema {
                file: self.file.to_owned(),
                line,
                schema,
            });
        }
        Ok(())
    }

    fn report(&mut self, line: u64, reason: &str) -> Result<(), ReplayError> {
        writeln!(
            self.diagnostics,
            "modtrace replay: {}:{line}: malformed line skipped: {reason}",
            self.file
        )
        .map_err(ReplayError::Write)
    }

    fn write(&mut self, record: &Value) -> Result<(), ReplayError> {
        let text = match self.format {
            Format::Json => format!("{record}\n"),
            Format::Text => text_line(record, self.colour),
        };
        self.out
            .write_all(text.as_bytes())
            .map_err(ReplayError::Write)
    }
}

/// The alerts `watch` raised at start for the modules of the `start` record
/// that a modprobe.d directive of `policy` disables.
fn preloaded_alerts(policy: &Policy, start: &Value) -> Vec<Alert> {
    let loaded = start["loaded_modules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|module| module["name"].as_str());
    let seq = start["seq"].as_u64().unwrap_or_default();
    policy::preloaded_alerts(policy, loaded, seq)
}

/// What every record of a capture carries, read without a JSON tree: the
/// parts of a syscall record that its judgement and its alerts need.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    kind: Cow<'a, str>,
    schema: u64,
    #[serde(borrow, default)]
    ts: Option<&'a RawValue>,
    #[serde(borrow, default)]
    host: Option<&'a RawValue>,
    #[serde(borrow, default)]
    seq: Option<&'a RawValue>,
    /// The judgement of the time, replaced in the line.
    #[serde(borrow, default)]
    policy: Option<&'a RawValue>,
}

/// The envelope of `line` if it is a syscall record's.
fn syscall_envelope(line: &str) -> Option<(Envelope<'_>, Syscall)> {
    let envelope: Envelope = serde_json::from_str(line).ok()?;
    let syscall = Syscall::from_name(&envelope.kind)?;
    Some((envelope, syscall))
}

/// What judging a record changes besides the output.
struct Judging<'a> {
    policy: &'a Policy,
    alerts: &'a mut Dedup,
    summary: &'a mut Summary,
}

/// A value of a line, as JSON (null when absent).
fn raw_json(raw: Option<&RawValue>) -> Value {
    raw.and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or_default()
}

/// The time and host of `record`, which the alerts after it carry.
fn stamp_of(record: &Value) -> Value {
    json!({"ts": record["ts"], "host": record["host"]})
}

/// A line that is a JSON object with a string `kind` and a numeric `schema`.
fn parse_record(text: &str) -> Result<Value, String> {
    let record: Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
    if !record.is_object() {
        return Err("not a JSON object".into());
    }
    if !record["kind"].is_string() {
        return Err("no `kind`".into());
    }
    if !record["schema"].is_u64() {
        return Err("no `schema` version".into());
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(
        input: &str,
        policy: Option<PathBuf>,
    ) -> (Result<Summary, ReplayError>, String, String) {
        replay_windowed(input, policy, None)
    }

    /// [`replay`] with `replay --alert-window`.
    fn replay_windowed(
        input: &str,
        policy: Option<PathBuf>,
        alert_window_s: Option<u64>,
    ) -> (Result<Summary, ReplayError>, String, String) {
        let mut replay = Replay {
            file: "cap.ndjson",
            format: Format::Json,
            colour: false,
            out: Vec::new(),
            diagnostics: Vec::new(),
            alert_window_s,
        };
        let source = PolicySource {
            path: policy,
            check_owner: false,
        };
        let result = replay.run(input.as_bytes(), &source);
        (
            result,
            String::from_utf8(replay.out).unwrap(),
            String::from_utf8(replay.diagnostics).unwrap(),
        )
    }

    const DELETE: &str = r#"{"kind":"delete_module","schema":1,"ts":"2026-11-27T21:00:00Z","seq":1,"host":"h","duration_ns":1000,"exited":true,"process":{"pid":5,"tid":5,"ppid":1,"uid":0,"gid":0,"euid":0,"auid":null,"session":null,"comm":"rmmod","exe":"/usr/bin/kmod","cmdline":null,"cgroup_id":0,"cgroup":null},"parent":{"pid":1,"comm":"init","exe":null,"cmdline":null},"args":{"name":{"value":"dummy","truncated":false},"flags":{"raw":0,"names":[]}},"result":{"ret":0,"errno":null,"ok":true}}"#;

    #[test]
    fn malformed_lines_are_reported_counted_and_skipped() {
        let input = format!("{DELETE}\nnot json\n[1]\n{{\"kind\":\"x\"}}\n\n\u{0}\n{DELETE}\n");
        let (summary, out, diagnostics) = replay(&input, None);
        let summary = summary.unwrap();
        assert_eq!(summary.malformed, 4, "{diagnostics}");
        assert_eq!(summary.events, 2);
        assert_eq!(summary.lines, 7);
        // Each unload and its module-unload alert.
        assert_eq!(out.lines().count(), 4);
        for line in [2, 3, 4, 6] {
            assert!(
                diagnostics.contains(&format!("cap.ndjson:{line}: malformed line skipped")),
                "{diagnostics}"
            );
        }
    }

    #[test]
    fn a_syscall_record_that_does_not_fit_the_schema_is_reported_with_its_field() {
        let bad_uid = DELETE.replace("\"uid\":0", "\"uid\":\"root\"");
        let no_args = DELETE.replace("\"args\"", "\"arguments\"");
        let input = format!("{DELETE}\n{bad_uid}\n{no_args}\n");
        let (summary, out, diagnostics) = replay(&input, None);
        let summary = summary.unwrap();
        assert_eq!(
            (summary.malformed, summary.records, summary.events),
            (2, 1, 1)
        );
        assert!(
            diagnostics.contains(
                "cap.ndjson:2: malformed line skipped: does not fit the record schema: process.uid: invalid type: string \"root\""
            ),
            "{diagnostics}"
        );
        assert!(
            diagnostics.contains("cap.ndjson:3: malformed line skipped: does not fit the record schema: record: missing field `args`"),
            "{diagnostics}"
        );
        // The good record and its alert only.
        assert_eq!(out.lines().count(), 2, "{out}");
    }

    #[test]
    fn lines_are_read_up_to_a_limit_and_longer_ones_skipped_whole() {
        let mut input = io::Cursor::new(b"abc\n0123456789\nxy".to_vec());
        let mut line = Vec::new();
        let mut next = |line: &mut Vec<u8>| {
            line.clear();
            read_line_bounded(&mut input, line, 5).unwrap()
        };
        assert!(matches!(next(&mut line), LineRead::Line));
        assert_eq!(line, b"abc\n");
        assert!(matches!(next(&mut line), LineRead::TooLong));
        assert_eq!(line, b"01234");
        assert!(matches!(next(&mut line), LineRead::Line));
        assert_eq!(line, b"xy");
        assert!(matches!(next(&mut line), LineRead::End));
    }

    #[test]
    fn invalid_utf8_is_malformed_not_fatal() {
        let mut input = b"\xff\xfe\n".to_vec();
        input.extend_from_slice(DELETE.as_bytes());
        let mut r = Replay {
            file: "c",
            format: Format::Json,
            colour: false,
            out: Vec::new(),
            diagnostics: Vec::new(),
            alert_window_s: None,
        };
        let source = PolicySource {
            path: None,
            check_owner: false,
        };
        let summary = r.run(input.as_slice(), &source).unwrap();
        assert_eq!((summary.malformed, summary.events), (1, 1));
    }

    #[test]
    fn a_newer_schema_is_refused_with_its_line() {
        let newer = DELETE.replace("\"schema\":1", "\"schema\":2");
        let (result, _, _) = replay(&format!("{DELETE}\n{newer}\n"), None);
        let err = result.unwrap_err().to_string();
        assert!(
            err.starts_with("cap.ndjson:2: record of schema version 2"),
            "{err}"
        );
    }

    #[test]
    fn old_alerts_are_dropped_and_events_rejudged() {
        let stale = DELETE.replace("\"seq\":1", "\"seq\":0").replace(
            "\"host\":\"h\"",
            "\"host\":\"h\",\"policy\":{\"verdict\":\"none\",\"matches\":[]}",
        );
        let old_alert = r#"{"kind":"alert","schema":1,"ts":"t","seq":2,"host":"h","event_seq":0,"rule":"gone","severity":"low","message":"m"}"#;
        let (summary, out, _) = replay(&format!("{stale}\n{old_alert}\n"), None);
        let summary = summary.unwrap();
        assert_eq!(summary.dropped_alerts, 1);
        assert_eq!(summary.rules.get("module-unload"), Some(&1));
        assert_eq!(summary.verdicts.get("alert"), Some(&1));
        let lines: Vec<Value> = out
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let [record, alert] = lines.as_slice() else {
            panic!("the event and its new alert only: {out}")
        };
        assert_eq!(record["policy"]["verdict"], "alert");
        assert_eq!(record["policy"]["matches"][0]["rule"], "module-unload");
        assert_eq!(
            *alert,
            json!({"kind":"alert","schema":1,"ts":"2026-11-27T21:00:00Z","host":"h",
                "event_seq":0,"event_kind":"delete_module","rule":"module-unload",
                "severity":"low","message":record["policy"]["matches"][0]["message"]})
        );
    }

    #[test]
    fn the_start_record_raises_the_alerts_of_modules_loaded_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let modprobe_d = dir.path().join("modprobe.d");
        std::fs::create_dir(&modprobe_d).unwrap();
        std::fs::write(modprobe_d.join("deny.conf"), "blacklist cramfs\n").unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            format!(
                "[policy]\nmodprobe_d = true\nmodprobe_d_dirs = [{:?}]\n",
                modprobe_d.display().to_string()
            ),
        )
        .unwrap();
        let start = r#"{"kind":"start","schema":1,"ts":"t0","seq":0,"host":"h","kernel":"6.1.0-28-amd64","loaded_modules":[{"name":"ext4"},{"name":"cramfs"}]}"#;
        let (summary, out, _) = replay(&format!("{start}\n"), Some(path));
        assert_eq!(summary.unwrap().alerts, 1);
        let lines: Vec<Value> = out
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let [record, alert] = lines.as_slice() else {
            panic!("the start record and one alert: {out}")
        };
        assert_eq!(record["kind"], "start");
        assert_eq!(
            (&alert["event_kind"], &alert["event_seq"], &alert["rule"]),
            (
                &json!("start"),
                &json!(0),
                &json!("modprobe.d:blacklist:cramfs")
            )
        );
        assert_eq!(alert["ts"], "t0");
    }

    #[test]
    fn the_kernel_of_the_start_record_fills_kernel_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[[rule]]\nid = \"outside\"\nseverity = \"high\"\nwhen = { not = { path_prefix = \"/lib/modules/{kernel}/\" } }\n",
        )
        .unwrap();
        let start =
            r#"{"kind":"start","schema":1,"ts":"t","seq":0,"host":"h","kernel":"9.9.9-test"}"#;
        let finit = |path: &str| {
            crate::samples::complete(&json!({"kind":"finit_module","ts":"t","seq":1,"host":"h",
                "args":{"file":{"path":path}}}))
            .to_string()
        };
        let input = format!(
            "{start}\n{}\n{}\n",
            finit("/lib/modules/9.9.9-test/a.ko"),
            finit("/lib/modules/other/a.ko")
        );
        let summary = replay(&input, Some(path)).0.unwrap();
        assert_eq!(summary.rules.get("outside"), Some(&1));
    }

    /// `n` failed unloads by pid 5, a millisecond apart, after a `start`
    /// record naming `window` (none: a capture from before windows).
    fn repeated_failures(window: Option<u64>, n: u64) -> String {
        let mut start =
            json!({"kind":"start","schema":1,"ts":"2026-11-27T21:00:00Z","seq":0,"host":"h"});
        if let Some(window) = window {
            start["alert_window_s"] = json!(window);
        }
        let mut input = format!("{start}\n");
        for i in 1..=n {
            let record = DELETE
                .replace("\"seq\":1", &format!("\"seq\":{i}"))
                .replace("21:00:00Z", &format!("21:00:00.{i:03}Z"))
                .replace("\"dummy\"", &format!("\"m{i}\""))
                .replace(
                    r#""result":{"ret":0,"errno":null,"ok":true}"#,
                    r#""result":{"ret":-2,"errno":"ENOENT","ok":false}"#,
                );
            input.push_str(&record);
            input.push('\n');
        }
        input
    }

    fn alert_records(out: &str) -> Vec<Value> {
        out.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["kind"] == "alert")
            .collect()
    }

    #[test]
    fn repeats_are_deduplicated_with_the_window_of_the_start_record() {
        let (summary, out, _) = replay(&repeated_failures(Some(10), 20), None);
        let summary = summary.unwrap();
        let alerts = alert_records(&out);
        assert_eq!(alerts.len(), 2, "{out}");
        assert_eq!(alerts[0]["event_seq"], 1);
        assert!(alerts[0].get("dedup").is_none());
        assert_eq!(alerts[1]["event_seq"], 20);
        assert_eq!(alerts[1]["dedup"]["count"], 20);
        assert_eq!(alerts[1]["dedup"]["suppressed"], 19);
        assert_eq!(alerts[1]["dedup"]["modules"]["distinct"], 20);
        assert_eq!(alerts[1]["rule"], "module-unload-attempt");
        // At the end of the input, with the time of the last record.
        assert_eq!(alerts[1]["ts"], "2026-11-27T21:00:00.020Z");
        assert_eq!((summary.alerts, summary.suppressed_alerts), (2, 19));
        assert!(
            summary
                .text()
                .contains("alerts raised: 2 (19 repeats not written"),
            "{}",
            summary.text()
        );
    }

    #[test]
    fn a_capture_without_a_window_or_a_zero_override_writes_every_alert() {
        let (summary, _, _) = replay(&repeated_failures(None, 20), None);
        assert_eq!(summary.unwrap().alerts, 20);
        let (summary, _, _) = replay_windowed(&repeated_failures(Some(10), 20), None, Some(0));
        assert_eq!(summary.unwrap().alerts, 20);
    }

    #[test]
    fn stop_and_a_new_start_close_the_windows_of_their_run() {
        let run = repeated_failures(Some(10), 3);
        let stop = r#"{"kind":"stop","schema":1,"ts":"2026-11-27T21:00:01Z","seq":4,"host":"h"}"#;
        let (_, out, _) = replay(&format!("{run}{stop}\n{run}"), None);
        let kinds: Vec<String> = out
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .map(|r| match r["dedup"]["count"].as_u64() {
                Some(count) => format!("closing {count}"),
                None => r["kind"].as_str().unwrap().to_owned(),
            })
            .collect();
        // Each run: its first alert, the repeats counted, closed by its end.
        let one_run = [
            "start",
            "delete_module",
            "alert",
            "delete_module",
            "delete_module",
            "closing 3",
        ];
        let expected: Vec<&str> = one_run
            .iter()
            .chain(&["stop"])
            .chain(&one_run)
            .copied()
            .collect();
        assert_eq!(kinds, expected);
    }

    #[test]
    fn summary_text_names_every_verdict_and_rule() {
        let (summary, _, _) = replay(&format!("{DELETE}\n"), None);
        let text = summary.unwrap().text();
        assert!(
            text.contains("verdicts: none 0, ignore 0, log 0, alert 1"),
            "{text}"
        );
        assert!(text.contains("  module-unload: 1"), "{text}");
    }

    // ---- Fixtures: a capture recorded on a real kernel by `modtrace watch`
    // with the default policy (host-default-policy.ndjson: on this machine's
    // kernel, where every call fails with ENOSYS), while mtcall loaded
    // sctp.ko from /tmp, a memfd and an image from memory, unloaded twice,
    // and one process unloaded 5 times (its alerts repeat into one window).
    // host-damaged.ndjson and newer-schema.ndjson are an older capture of the
    // first five calls, damaged. ----

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/replay")
            .join(name)
    }

    fn replay_fixture(
        name: &str,
        policy: &str,
        format: Format,
    ) -> (Result<Summary, ReplayError>, String, String) {
        let mut replay = Replay {
            file: name,
            format,
            colour: false,
            out: Vec::new(),
            diagnostics: Vec::new(),
            alert_window_s: None,
        };
        let source = PolicySource {
            path: Some(fixture(policy)),
            check_owner: false,
        };
        let input = std::fs::read(fixture(name)).unwrap();
        let result = replay.run(input.as_slice(), &source);
        (
            result,
            String::from_utf8(replay.out).unwrap(),
            String::from_utf8(replay.diagnostics).unwrap(),
        )
    }

    /// The default policy the fixture captures were judged with.
    const DEFAULT: &str = "default-at-capture-without-modprobe-d.toml";

    #[test]
    fn a_record_judged_as_it_was_is_written_byte_for_byte_as_captured() {
        let (_, out, _) = replay_fixture("host-default-policy.ndjson", DEFAULT, Format::Json);
        let captured = std::fs::read_to_string(fixture("host-default-policy.ndjson")).unwrap();
        let is_event = |line: &&str| {
            line.contains(r#""kind":"init_module""#)
                || line.contains(r#""kind":"finit_module""#)
                || line.contains(r#""kind":"delete_module""#)
        };
        let captured: Vec<&str> = captured.lines().filter(is_event).collect();
        let replayed: Vec<&str> = out.lines().filter(is_event).collect();
        assert_eq!(captured.len(), 10);
        assert_eq!(captured, replayed);
    }

    #[test]
    fn a_record_whose_envelope_does_not_read_is_judged_as_serde_json_writes_it() {
        // `host` twice: a JSON tree keeps the last one.
        let twice = DELETE.replace("\"host\":\"h\"", "\"host\":\"x\",\"host\":\"h\"");
        let (summary, out, _) = replay(&format!("{twice}\n"), None);
        assert_eq!(summary.unwrap().events, 1);
        let first = out.lines().next().unwrap();
        let record: Value = serde_json::from_str(first).unwrap();
        assert_eq!(record["host"], "h");
        assert_eq!(record["policy"]["matches"][0]["rule"], "module-unload");
        assert_eq!(first, record.to_string());
    }

    #[test]
    fn replay_with_the_live_policy_agrees_with_the_live_judgement() {
        let (summary, out, _) = replay_fixture("host-default-policy.ndjson", DEFAULT, Format::Json);
        let summary = summary.unwrap();
        let live: Vec<Value> = std::fs::read_to_string(fixture("host-default-policy.ndjson"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let replayed: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let is_event = |r: &&Value| r["kind"].as_str().is_some_and(|k| k.ends_with("_module"));
        let live_events: Vec<&Value> = live.iter().filter(is_event).collect();
        let replayed_events: Vec<&Value> = replayed.iter().filter(is_event).collect();
        assert_eq!(live_events.len(), 10);
        assert_eq!(live_events, replayed_events);
        // The same alert records, the closing one of the repeats included;
        // only their own `seq` and `ts` differ.
        let alerts = |records: &[Value]| {
            let mut alerts: Vec<Value> = records
                .iter()
                .filter(|r| r["kind"] == "alert")
                .map(|r| {
                    let mut r = r.clone();
                    let body = r.as_object_mut().unwrap();
                    body.remove("seq");
                    body.remove("ts");
                    r
                })
                .collect();
            // Live and replay write their members in different orders.
            alerts.sort_by_key(|a| {
                let seq = a["event_seq"].as_u64();
                (seq, a["rule"].to_string(), a["dedup"].is_object())
            });
            alerts
        };
        assert_eq!(alerts(&live), alerts(&replayed));
        let live_alerts = alerts(&live).len() as u64;
        assert_eq!(live_alerts, 11);
        assert_eq!(summary.dropped_alerts, live_alerts);
        assert_eq!(summary.alerts, live_alerts);
        assert_eq!(summary.suppressed_alerts, 4);
        let closing: Vec<&Value> = replayed.iter().filter(|r| r["dedup"].is_object()).collect();
        assert_eq!(closing.len(), 1);
        assert_eq!(closing[0]["dedup"]["count"], 5);
        assert_eq!(
            closing[0]["dedup"]["modules"]["sample"],
            json!(["mtcall_repeated"])
        );
        assert_eq!(summary.rules.get("fileless-load"), Some(&2));
        assert_eq!(summary.rules.get("cis-denied-module"), Some(&1));
        assert_eq!(summary.rules.get("module-unload-attempt"), Some(&7));
        assert_eq!(summary.rules.get("module-unload"), None);
        assert_eq!(summary.verdicts.get("alert"), Some(&10));
        assert_eq!(summary.malformed, 0);
    }

    #[test]
    fn a_tuned_policy_changes_the_verdicts() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("tuned.toml");
        std::fs::write(
            &policy,
            "[[rule]]\nid = \"unload-by-user\"\nseverity = \"medium\"\naction = \"log\"\nwhen = { syscall = \"delete_module\", uid = 1000 }\n",
        )
        .unwrap();
        let (summary, _, _) = replay_fixture(
            "host-default-policy.ndjson",
            policy.to_str().unwrap(),
            Format::Json,
        );
        let summary = summary.unwrap();
        assert_eq!(summary.rules.len(), 1, "{summary:?}");
        assert_eq!(summary.rules.get("unload-by-user"), Some(&1));
        assert_eq!(summary.verdicts.get("log"), Some(&1));
        assert_eq!(summary.verdicts.get("none"), Some(&9));
        assert_eq!(summary.alerts, 0);
    }

    #[test]
    fn a_damaged_capture_is_replayed_around_its_bad_lines() {
        let (summary, _, diagnostics) =
            replay_fixture("host-damaged.ndjson", DEFAULT, Format::Json);
        let summary = summary.unwrap();
        assert_eq!(summary.malformed, 2, "{diagnostics}");
        assert_eq!(summary.events, 5);
        assert!(
            diagnostics.contains("host-damaged.ndjson:3: malformed line skipped: not JSON"),
            "{diagnostics}"
        );
        assert!(
            diagnostics.contains("host-damaged.ndjson:5: malformed line skipped: not JSON"),
            "{diagnostics}"
        );
    }

    #[test]
    fn a_capture_of_a_newer_schema_is_refused() {
        let (result, out, _) = replay_fixture("newer-schema.ndjson", DEFAULT, Format::Json);
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains("newer-schema.ndjson:2: record of schema version 2"),
            "{err}"
        );
        assert_eq!(
            out.lines().count(),
            1,
            "only the start record before the refusal"
        );
    }

    #[test]
    fn text_replay_prints_each_alert_after_its_event() {
        let (_, out, _) = replay_fixture("host-default-policy.ndjson", DEFAULT, Format::Text);
        let lines: Vec<&str> = out.lines().collect();
        let memfd = lines.iter().position(|l| l.contains("/memfd:")).unwrap();
        assert!(
            lines[memfd + 1].contains("ALERT CRITICAL fileless-load (event seq 5)"),
            "{out}"
        );
    }
}
