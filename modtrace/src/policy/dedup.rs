//! Alert deduplication: the alerts of one rule from one process within a
//! window become the first alert, written at once, and one closing alert
//! that counts them.
//!
//! Any user can make module syscalls fail by the hundred thousand a second,
//! and each failing call may match a rule; a SIEM that gets an alert per call
//! drops them all. So alerts on failed calls are keyed by rule and process
//! (`process.pid` and `process.start_ns`), never by module name, which a
//! flood can vary at will. A call that succeeded changed the kernel and only
//! a caller holding CAP_SYS_MODULE can make one: its alerts are always
//! written in full, and never enter a window.
//!
//! `watch` and `replay` must raise the same alert records for one capture, so
//! everything here is a function of the records in their order: time is the
//! latest `ts` among the records seen so far (never the wall clock), and a
//! window closes when a record shows that its time has passed, or when the
//! run ends. `watch` makes time visible to replay by writing each closing
//! alert with the `ts` that closed it.
use std::hash::BuildHasher as _;

use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};

use super::event::ReadRecord;
use crate::record::{
    judgement::{Alert, Modules, Repeats},
    Call,
};

/// Window of `watch --alert-window` when none is given, in seconds.
pub const DEFAULT_WINDOW_S: u64 = 10;
/// Module names a closing alert lists.
pub const SAMPLE_NAMES: usize = 8;
/// Distinct names counted exactly per window; past this a window counts no
/// more, so that a flood of new names costs bounded memory.
pub const MAX_DISTINCT: usize = 1024;
/// Windows open at once. A process per call (a fork flood) opens a window
/// each; past this the window that ends first closes early, so that memory
/// stays bounded (about 10 KiB a window at most, 10 MiB in all).
pub const MAX_WINDOWS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    rule: String,
    pid: Option<u64>,
    start_ns: Option<u64>,
}

struct Window {
    /// Opening order, to close windows that end together in a fixed order.
    opened: u64,
    end_ns: i64,
    first: Alert,
    first_ts: String,
    first_ns: i64,
    last_seq: u64,
    last_kind: String,
    last_ts: String,
    last_ns: i64,
    count: u64,
    names: HashSet<u64>,
    exact: bool,
    sample: Vec<String>,
}

impl Window {
    fn count(&mut self, record: &Alerted, ts_ns: i64) {
        self.count += 1;
        self.last_seq = record.seq;
        record.kind.clone_into(&mut self.last_kind);
        record.ts.clone_into(&mut self.last_ts);
        self.last_ns = ts_ns;
        let Some(module) = record.module else { return };
        // A fixed hasher: live and replay must count alike.
        let hash = foldhash::fast::FixedState::default()
            .hash_one(super::event::normalise_module_name(module));
        if self.names.contains(&hash) {
            return;
        }
        if self.names.len() >= MAX_DISTINCT {
            self.exact = false;
            return;
        }
        self.names.insert(hash);
        if self.sample.len() < SAMPLE_NAMES {
            self.sample.push(module.to_owned());
        }
    }

    fn close(self, key: Key, window_s: u64) -> Alert {
        let modules = Modules {
            distinct: self.names.len() as u64,
            exact: self.exact,
            sample: self.sample,
        };
        let pid = key.pid.map_or_else(|| "?".to_owned(), |p| p.to_string());
        let seconds = (self.last_ns - self.first_ns).max(0) as f64 / 1e9;
        let names = if modules.sample.is_empty() {
            "no module name".to_owned()
        } else {
            let more = if modules.exact { "" } else { " or more" };
            let etc = if modules.distinct > modules.sample.len() as u64 {
                ", …"
            } else {
                ""
            };
            format!(
                "{}{more} distinct module name(s): {}{etc}",
                modules.distinct,
                modules.sample.join(", ")
            )
        };
        let message = format!(
            "{}: {} alerts from pid {pid} in {seconds:.3} s ({} not written), {names}; the first: {}",
            key.rule,
            self.count,
            self.count - 1,
            self.first.message,
        );
        Alert {
            event_seq: self.last_seq,
            event_kind: self.last_kind,
            rule: key.rule,
            severity: self.first.severity,
            message,
            dedup: Some(Repeats {
                closing: true,
                count: self.count,
                suppressed: self.count - 1,
                window_s,
                pid: key.pid,
                start_ns: key.start_ns,
                first_event_seq: self.first.event_seq,
                first_ts: self.first_ts,
                last_ts: self.last_ts,
                modules,
            }),
        }
    }
}

/// The open windows of one run, and the time the records have reached.
pub struct Dedup {
    window_s: u64,
    windows: HashMap<Key, Window>,
    opened: u64,
    /// The latest `ts` seen, in ns since the epoch. In `watch` that includes
    /// its own alert records', stamped when written: under a backlog they run
    /// ahead of the records' entry times, and a window opened then still
    /// lasts its length from the time the output has reached.
    now_ns: Option<i64>,
}

/// `ts` (RFC 3339) in ns since the epoch.
pub fn parse_ns(ts: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(ts)
        .ok()?
        .timestamp_nanos_opt()
}

/// What the windows need of a syscall record that raised alerts: `watch`
/// takes it from the record in memory, replay from its JSON.
pub struct Alerted<'a> {
    pub seq: u64,
    pub kind: &'a str,
    pub ts: &'a str,
    /// `ts` in ns since the epoch; None when it does not read as RFC 3339.
    pub ts_ns: Option<i64>,
    /// Only failed calls repeat into a window: a successful load or unload
    /// (and a call without a result, which may have succeeded) is always
    /// alerted in full.
    pub failed: bool,
    pub pid: Option<u64>,
    pub start_ns: Option<u64>,
    /// The module's name as policies read it ([`Event::module`]).
    pub module: Option<&'a str>,
}

impl<'a> Alerted<'a> {
    /// Syscall record `seq` of `kind`, as `watch` holds it.
    pub fn of_call(
        seq: u64,
        kind: &'a str,
        ts: &'a str,
        ts_ns: Option<i64>,
        call: &'a Call,
    ) -> Self {
        Self {
            seq,
            kind,
            ts,
            ts_ns,
            failed: call.result.as_ref().is_some_and(|r| !r.ok),
            pid: Some(u64::from(call.process.pid)),
            start_ns: call.process.start_ns,
            module: super::event::module_of(call, kind),
        }
    }
}

impl Dedup {
    /// Windows of `window_s` seconds; 0 writes every alert.
    pub fn new(window_s: u64) -> Self {
        Self {
            window_s,
            windows: HashMap::new(),
            opened: 0,
            now_ns: None,
        }
    }

    pub fn window_s(&self) -> u64 {
        self.window_s
    }

    /// A record of time `ts` was written (or, in replay, read): the closing
    /// alerts of the windows that have ended by then.
    pub fn observe(&mut self, ts: &str) -> Vec<Alert> {
        parse_ns(ts).map_or_else(Vec::new, |ts_ns| self.observe_ns(ts_ns))
    }

    /// [`Dedup::observe`] of a time already in ns since the epoch, as
    /// `watch` has it: no RFC 3339 text is read back.
    pub fn observe_ns(&mut self, ts_ns: i64) -> Vec<Alert> {
        if self.window_s == 0 {
            return Vec::new();
        }
        let now = self.now_ns.map_or(ts_ns, |now| now.max(ts_ns));
        self.now_ns = Some(now);
        if self.windows.is_empty() {
            return Vec::new();
        }
        let ended: Vec<Key> = self
            .windows
            .iter()
            .filter(|(_, w)| w.end_ns <= now)
            .map(|(key, _)| key.clone())
            .collect();
        self.close(ended)
    }

    /// The alerts to write after syscall record `read` (already written),
    /// which raised `alerts` (see [`Dedup::admit_alerted`]).
    pub fn admit_read(&mut self, read: &ReadRecord, alerts: Vec<Alert>) -> Vec<Alert> {
        let ts_ns = parse_ns(&read.ts);
        let alerted = Alerted::of_call(read.seq, read.syscall.name(), &read.ts, ts_ns, &read.call);
        self.admit_alerted(&alerted, alerts)
    }

    /// The alerts to write after syscall record `record` (already written),
    /// which raised `alerts`: the closing alerts of the windows its time
    /// ended, then each of its alerts that opens a window or that no window
    /// holds. An alert that falls in an open window is counted there instead.
    pub fn admit_alerted(&mut self, record: &Alerted, alerts: Vec<Alert>) -> Vec<Alert> {
        let ts = record.ts;
        let mut out = record
            .ts_ns
            .map_or_else(Vec::new, |ts_ns| self.observe_ns(ts_ns));
        let (Some(ts_ns), true, false) = (record.ts_ns, record.failed, self.window_s == 0) else {
            out.extend(alerts);
            return out;
        };
        if alerts.is_empty() {
            return out;
        }
        // A window opens at the latest time seen: a record delivered late
        // (a long call's, whose `ts` is its entry) opens no window that has
        // already ended.
        let now = self.now_ns.map_or(ts_ns, |now| now.max(ts_ns));
        self.now_ns = Some(now);
        for alert in alerts {
            let key = Key {
                rule: alert.rule.clone(),
                pid: record.pid,
                start_ns: record.start_ns,
            };
            if let Some(window) = self.windows.get_mut(&key) {
                window.count(record, ts_ns);
                continue;
            }
            if self.windows.len() >= MAX_WINDOWS {
                out.extend(self.close_first());
            }
            let mut window = Window {
                opened: self.opened,
                end_ns: now.saturating_add(self.window_s as i64 * 1_000_000_000),
                first: alert.clone(),
                first_ts: ts.to_owned(),
                first_ns: ts_ns,
                last_seq: 0,
                last_kind: String::new(),
                last_ts: String::new(),
                last_ns: ts_ns,
                count: 0,
                names: HashSet::new(),
                exact: true,
                sample: Vec::new(),
            };
            window.count(record, ts_ns);
            self.opened += 1;
            self.windows.insert(key, window);
            out.push(alert);
        }
        out
    }

    /// For `watch`'s timer, at wall-clock time `ts_ns` (ns since the epoch):
    /// the closing alerts due, to be written with that time. Time moves only when one is due, because
    /// only a written record tells replay that it moved.
    pub fn due(&mut self, ts_ns: i64) -> Vec<Alert> {
        let any = self
            .windows
            .values()
            .any(|w| w.end_ns <= ts_ns && w.count > 1);
        if any {
            self.observe_ns(ts_ns)
        } else {
            Vec::new()
        }
    }

    /// The run ends (stop, end of a replayed capture): every window closes.
    pub fn close_all(&mut self) -> Vec<Alert> {
        let all: Vec<Key> = self.windows.keys().cloned().collect();
        self.close(all)
    }

    /// The window that ends first closes early, to make room for another.
    fn close_first(&mut self) -> Vec<Alert> {
        let first = self
            .windows
            .iter()
            .min_by_key(|(_, w)| (w.end_ns, w.opened))
            .map(|(key, _)| key.clone());
        self.close(first.into_iter().collect())
    }

    /// Closing alerts of `keys` in the order their windows end, for windows
    /// that held more than their first alert.
    fn close(&mut self, keys: Vec<Key>) -> Vec<Alert> {
        let mut closed: Vec<(Key, Window)> = keys
            .into_iter()
            .filter_map(|key| self.windows.remove_entry(&key))
            .collect();
        closed.sort_by_key(|(_, w)| (w.end_ns, w.opened));
        closed
            .into_iter()
            .filter(|(_, w)| w.count > 1)
            .map(|(key, w)| w.close(key, self.window_s))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::policy::Severity;

    const T0: &str = "2026-12-01T22:00:00.000000000Z";

    /// `ts` = T0 + `ms` milliseconds.
    fn at(ms: u64) -> String {
        let t = chrono::DateTime::parse_from_rfc3339(T0).unwrap()
            + chrono::Duration::milliseconds(ms as i64);
        t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    }

    fn delete(seq: u64, ms: u64, pid: u64, name: &str, ok: bool) -> Value {
        json!({"kind":"delete_module","ts":at(ms),"seq":seq,
            "process":{"pid":pid,"start_ns":pid * 1000},
            "args":{"name":{"value":name,"truncated":false}},
            "result":{"ret":if ok {0} else {-2},"errno":if ok {Value::Null} else {json!("ENOENT")},"ok":ok}})
    }

    /// [`Dedup::admit_read`] of `record`, completed to a whole record.
    fn admit(dedup: &mut Dedup, record: &Value, alerts: Vec<Alert>) -> Vec<Alert> {
        let read = ReadRecord::from_json(&crate::samples::complete(record))
            .unwrap()
            .unwrap();
        dedup.admit_read(&read, alerts)
    }

    fn alert(record: &Value, rule: &str) -> Alert {
        Alert {
            event_seq: record["seq"].as_u64().unwrap(),
            event_kind: "delete_module".into(),
            rule: rule.into(),
            severity: Severity::Info,
            message: format!("m{}", record["seq"]),
            dedup: None,
        }
    }

    /// Runs `records` through `dedup` as watch does, each raising one alert
    /// of `rule`; returns every alert written, closing ones included.
    fn run(dedup: &mut Dedup, records: &[Value], rule: &str) -> Vec<Alert> {
        let mut written = Vec::new();
        for record in records {
            written.extend(admit(dedup, record, vec![alert(record, rule)]));
        }
        written.extend(dedup.close_all());
        written
    }

    fn closing(alerts: &[Alert]) -> Vec<&Repeats> {
        alerts.iter().filter_map(|a| a.dedup.as_ref()).collect()
    }

    #[test]
    fn a_flood_of_varying_names_is_one_alert_and_one_closing_alert() {
        let records: Vec<Value> = (0..10_000)
            .map(|i| delete(i, i / 10, 42, &format!("name{i}"), false))
            .collect();
        let written = run(&mut Dedup::new(10), &records, "r");
        assert_eq!(written.len(), 2, "{written:#?}");
        assert_eq!(written[0].event_seq, 0);
        assert!(written[0].dedup.is_none());
        let repeats = written[1].dedup.as_ref().unwrap();
        assert_eq!((repeats.count, repeats.suppressed), (10_000, 9_999));
        assert_eq!(repeats.modules.distinct, MAX_DISTINCT as u64);
        assert!(!repeats.modules.exact);
        assert_eq!(
            repeats.modules.sample,
            (0..8).map(|i| format!("name{i}")).collect::<Vec<_>>()
        );
        assert_eq!((repeats.pid, repeats.start_ns), (Some(42), Some(42_000)));
        assert_eq!(repeats.first_event_seq, 0);
        assert_eq!(written[1].event_seq, 9_999);
        assert_eq!(repeats.first_ts, at(0));
        assert_eq!(repeats.last_ts, at(999));
        assert_eq!(
            written[1].message,
            "r: 10000 alerts from pid 42 in 0.999 s (9999 not written), 1024 or more distinct module name(s): name0, name1, name2, name3, name4, name5, name6, name7, …; the first: m0"
        );
    }

    #[test]
    fn distinct_names_are_counted_exactly_up_to_the_limit() {
        let records: Vec<Value> = (0..300)
            .map(|i| delete(i, 0, 7, &format!("m-{}", i % 100), false))
            .collect();
        let written = run(&mut Dedup::new(10), &records, "r");
        let repeats = closing(&written);
        assert_eq!(repeats[0].count, 300);
        assert_eq!(
            (repeats[0].modules.distinct, repeats[0].modules.exact),
            (100, true)
        );
        // `-` and `_` name the same module.
        let same = [delete(0, 0, 7, "a-b", false), delete(1, 0, 7, "a_b", false)];
        let written = run(&mut Dedup::new(10), &same, "r");
        assert_eq!(closing(&written)[0].modules.distinct, 1);
        assert_eq!(closing(&written)[0].modules.sample, ["a-b"]);
    }

    #[test]
    fn windows_are_per_rule_and_per_process() {
        let mut dedup = Dedup::new(10);
        let mut written = Vec::new();
        for i in 0..40u64 {
            let record = delete(i, i, 100 + i % 2, "x", false);
            written.extend(admit(
                &mut dedup,
                &record,
                vec![alert(&record, "a"), alert(&record, "b")],
            ));
        }
        // The same pid with another start time is another process.
        let mut reused = delete(40, 40, 100, "x", false);
        reused["process"]["start_ns"] = json!(1);
        written.extend(admit(&mut dedup, &reused, vec![alert(&reused, "a")]));
        written.extend(dedup.close_all());
        let first: Vec<(u64, &str)> = written
            .iter()
            .filter(|a| a.dedup.is_none())
            .map(|a| (a.event_seq, a.rule.as_str()))
            .collect();
        assert_eq!(first, [(0, "a"), (0, "b"), (1, "a"), (1, "b"), (40, "a")]);
        let counts: Vec<(Option<u64>, &str, u64)> = written
            .iter()
            .filter_map(|a| {
                Some((
                    a.dedup.as_ref()?.pid,
                    a.rule.as_str(),
                    a.dedup.as_ref()?.count,
                ))
            })
            .collect();
        assert_eq!(
            counts,
            [
                (Some(100), "a", 20),
                (Some(100), "b", 20),
                (Some(101), "a", 20),
                (Some(101), "b", 20)
            ]
        );
        // Every alert raised is written or counted as suppressed.
        let suppressed: u64 = closing(&written).iter().map(|r| r.suppressed).sum();
        let written_first = written.iter().filter(|a| a.dedup.is_none()).count() as u64;
        assert_eq!(written_first + suppressed, 81);
    }

    #[test]
    fn successful_calls_are_never_deduplicated() {
        let records: Vec<Value> = (0..50).map(|i| delete(i, i, 5, "dummy", true)).collect();
        let written = run(&mut Dedup::new(10), &records, "r");
        assert_eq!(written.len(), 50);
        assert!(written.iter().all(|a| a.dedup.is_none()));
        // Nor calls without a result, which may have succeeded.
        let mut unfinished = delete(0, 0, 5, "dummy", false);
        unfinished["result"] = Value::Null;
        let written = run(&mut Dedup::new(10), &[unfinished.clone(), unfinished], "r");
        assert_eq!(written.len(), 2);
        // A success amid a flood of failures of the same process is written
        // and does not count in the window.
        let mut records: Vec<Value> = (0..10).map(|i| delete(i, i, 5, "x", false)).collect();
        records.insert(5, delete(99, 5, 5, "x", true));
        let written = run(&mut Dedup::new(10), &records, "r");
        let seqs: Vec<u64> = written.iter().map(|a| a.event_seq).collect();
        assert_eq!(seqs, [0, 99, 9]);
        assert_eq!(closing(&written)[0].count, 10);
    }

    #[test]
    fn a_window_closes_when_a_later_record_shows_its_time_has_passed() {
        let mut dedup = Dedup::new(10);
        let mut written = Vec::new();
        for (seq, ms) in [(0, 0), (1, 5_000), (2, 9_999)] {
            let r = delete(seq, ms, 9, "x", false);
            written.extend(admit(&mut dedup, &r, vec![alert(&r, "r")]));
        }
        assert_eq!(written.len(), 1);
        // Any record's time closes it, before that record's own alerts.
        assert!(dedup.observe(&at(9_999)).is_empty());
        let closed = dedup.observe(&at(10_000));
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].dedup.as_ref().unwrap().count, 3);
        // The next alert opens a new window and is written.
        let r = delete(3, 10_001, 9, "x", false);
        assert_eq!(admit(&mut dedup, &r, vec![alert(&r, "r")]).len(), 1);
        // A window of one alert closes without a closing alert.
        assert!(dedup.observe(&at(20_001)).is_empty());
        assert!(dedup.close_all().is_empty());
    }

    #[test]
    fn the_timer_moves_time_only_when_it_closes_something() {
        let mut dedup = Dedup::new(10);
        let one = delete(0, 0, 9, "x", false);
        admit(&mut dedup, &one, vec![alert(&one, "r")]);
        // Only a window of one alert is due: nothing to write, and time
        // must stay, since replay will never see this moment.
        assert!(dedup.due(parse_ns(&at(15_000)).unwrap()).is_empty());
        let two = delete(1, 1_000, 8, "x", false);
        let three = delete(2, 2_000, 8, "x", false);
        assert_eq!(admit(&mut dedup, &two, vec![alert(&two, "r")]).len(), 1);
        assert!(admit(&mut dedup, &three, vec![alert(&three, "r")]).is_empty());
        // pid 8's window opened at 1 s: it ends at 11 s, not 25 s.
        assert!(dedup.due(parse_ns(&at(10_999)).unwrap()).is_empty());
        let closed = dedup.due(parse_ns(&at(11_000)).unwrap());
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].dedup.as_ref().unwrap().pid, Some(8));
        assert!(dedup.close_all().is_empty(), "pid 9's closed silently");
    }

    #[test]
    fn a_record_that_ends_a_window_gets_the_closing_alert_before_its_own() {
        let mut dedup = Dedup::new(1);
        let records = [
            delete(0, 0, 9, "x", false),
            delete(1, 10, 9, "x", false),
            delete(2, 1_000, 9, "x", false),
        ];
        let mut written = Vec::new();
        for r in &records {
            written.extend(admit(&mut dedup, r, vec![alert(r, "r")]));
        }
        let order: Vec<(u64, bool)> = written
            .iter()
            .map(|a| (a.event_seq, a.dedup.is_some()))
            .collect();
        assert_eq!(order, [(0, false), (1, true), (2, false)]);
    }

    #[test]
    fn time_is_the_latest_ts_seen_so_late_records_open_no_stale_window() {
        let mut dedup = Dedup::new(10);
        let first = delete(0, 20_000, 9, "x", false);
        assert_eq!(admit(&mut dedup, &first, vec![alert(&first, "r")]).len(), 1);
        // A long call's record, entered long before: in the open window.
        let late = delete(1, 0, 9, "x", false);
        assert!(admit(&mut dedup, &late, vec![alert(&late, "r")]).is_empty());
        // Time never runs backwards: the window ends 10 s after 20 s.
        assert!(dedup.observe(&at(29_999)).is_empty());
        assert_eq!(dedup.observe(&at(5_000)).len(), 0);
        assert_eq!(dedup.observe(&at(30_000)).len(), 1);
    }

    #[test]
    fn windows_that_end_together_close_in_the_order_they_opened() {
        let mut dedup = Dedup::new(10);
        for pid in [30, 10, 20] {
            for seq in 0..2 {
                let r = delete(seq, 0, pid, "x", false);
                admit(&mut dedup, &r, vec![alert(&r, "r")]);
            }
        }
        let pids: Vec<Option<u64>> = dedup
            .observe(&at(10_000))
            .iter()
            .map(|a| a.dedup.as_ref().unwrap().pid)
            .collect();
        assert_eq!(pids, [Some(30), Some(10), Some(20)]);
    }

    #[test]
    fn past_the_window_limit_the_window_that_ends_first_closes_early() {
        let mut dedup = Dedup::new(10);
        let mut written = Vec::new();
        // Each pid twice, so that each window has a closing alert.
        for pid in 0..MAX_WINDOWS as u64 + 1 {
            for seq in [2 * pid, 2 * pid + 1] {
                let r = delete(seq, pid, pid, "x", false);
                written.extend(admit(&mut dedup, &r, vec![alert(&r, "r")]));
            }
        }
        assert_eq!(dedup.windows.len(), MAX_WINDOWS);
        // Pid 0's window, the first to end, was closed for the last one.
        let closed: Vec<&Repeats> = closing(&written);
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].pid, closed[0].count), (Some(0), 2));
        // Its closing alert comes before the alert that made room.
        let last: Vec<(u64, bool)> = written[written.len() - 2..]
            .iter()
            .map(|a| (a.event_seq, a.dedup.is_some()))
            .collect();
        assert_eq!(last, [(1, true), (2 * MAX_WINDOWS as u64, false)]);
        // Nothing is lost: every alert is written or counted.
        written.extend(dedup.close_all());
        let suppressed: u64 = closing(&written).iter().map(|r| r.suppressed).sum();
        let first = written.iter().filter(|a| a.dedup.is_none()).count() as u64;
        assert_eq!(first + suppressed, 2 * (MAX_WINDOWS as u64 + 1));
    }

    #[test]
    fn a_zero_window_writes_every_alert() {
        let records: Vec<Value> = (0..100).map(|i| delete(i, 0, 5, "x", false)).collect();
        let written = run(&mut Dedup::new(0), &records, "r");
        assert_eq!(written.len(), 100);
        assert!(written.iter().all(|a| a.dedup.is_none()));
    }

    #[test]
    fn the_same_records_give_the_same_alerts_in_the_same_order() {
        // Watch and replay each keep their own windows (hash maps, each
        // iterated in its own order): the same records must still give the
        // same alerts, closing ones in the same order.
        let records: Vec<Value> = (0..1_000)
            .map(|i| {
                delete(
                    i,
                    i * 37 % 25_000,
                    1 + i % 3,
                    &format!("n{}", i % 11),
                    i % 7 == 0,
                )
            })
            .collect();
        let once = |dedup: &mut Dedup| {
            let mut written = Vec::new();
            for r in &records {
                written.extend(admit(dedup, r, vec![alert(r, "a"), alert(r, "b")]));
            }
            written.extend(dedup.close_all());
            serde_json::to_string(&written).unwrap()
        };
        assert_eq!(once(&mut Dedup::new(3)), once(&mut Dedup::new(3)));
    }
}
