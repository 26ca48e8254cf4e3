//! `modtrace replay` of each watch's capture (run in the guest by lib.sh, with
//! the policy the watch was started with) must judge every syscall record as the
//! live watch did. The live path and replay read a record by different routes
//! (replay has only its JSON), and real loads on real kernels are where the two
//! must meet.
use std::collections::BTreeMap;

use serde_json::Value;

use super::{watch::SYSCALL_KINDS, Checks};
use crate::results::Watch;

/// Disagreements spelled out in one finding; the rest are counted. A capture
/// of thousands of records that all disagree stays readable.
const SHOWN: usize = 10;

/// Compares the replay of `watch` with its live records (`live`, already
/// parsed by the envelope checks).
pub(crate) fn check_replay(m: &mut Checks, watch: &Watch, live: &[&Value]) {
    let label = &watch.label;
    let what = format!("watch {label}: replay agrees with the live judgement");
    // The replay judges the whole capture with the policy file as it is at the
    // end; after a reload, part of the capture was judged by another policy.
    if let Some(reload) = live.iter().find(|r| r["kind"] == "policy_reload") {
        m.not_checked(format!(
            "{what}: the policy was reloaded (policy_reload at seq {}), so no one policy judged the whole capture",
            reload["seq"]
        ));
        return;
    }
    let replay = &watch.replay;
    m.check(
        replay.exit_code == Some(0),
        format!(
            "watch {label}: modtrace replay of the capture exits 0: got {:?}, stderr: {}",
            replay.exit_code,
            replay.stderr.trim()
        ),
    );
    let mut replayed = Vec::new();
    for line in &replay.lines {
        match line {
            Ok(record) => replayed.push(record),
            Err(err) => m.fail(format!(
                "watch {label}: replay output line is not JSON: {err}"
            )),
        }
    }
    let events = syscall_records(live).count();
    if events == 0 {
        m.not_checked(format!("{what}: the capture has no syscall record"));
    } else {
        report(
            m,
            &format!("{what}: the policy object of each of its {events} syscall records"),
            &policy_disagreements(live, &replayed),
        );
    }
    let alerts = alert_records(live).count();
    report(
        m,
        &format!("{what}: the alert records, {alerts} live (start and syscall records)"),
        &alert_disagreements(live, &replayed),
    );
}

/// One finding for a list of disagreements, which it names.
fn report(m: &mut Checks, what: &str, disagreements: &[String]) {
    let shown: Vec<&str> = disagreements
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect();
    let more = match disagreements.len().saturating_sub(SHOWN) {
        0 => String::new(),
        n => format!("; and {n} more"),
    };
    m.check(
        disagreements.is_empty(),
        format!(
            "{what}: {} disagreement(s): {}{more}",
            disagreements.len(),
            shown.join("; ")
        ),
    );
}

fn syscall_records<'a>(records: &'a [&'a Value]) -> impl Iterator<Item = &'a Value> + 'a {
    records
        .iter()
        .copied()
        .filter(|r| SYSCALL_KINDS.iter().any(|kind| r["kind"] == *kind))
}

/// Each live syscall record against the replayed record of the same `seq`:
/// both must exist and carry equal `policy` objects (verdict, and each match's
/// rule, severity, action and message).
fn policy_disagreements(live: &[&Value], replayed: &[&Value]) -> Vec<String> {
    let mut found = Vec::new();
    let mut replayed_by_seq = BTreeMap::new();
    for record in syscall_records(replayed) {
        if replayed_by_seq
            .insert(record["seq"].to_string(), record)
            .is_some()
        {
            found.push(format!("seq {}: replay wrote two records", record["seq"]));
        }
    }
    for record in syscall_records(live) {
        let (seq, kind, policy) = (&record["seq"], &record["kind"], &record["policy"]);
        let again = replayed_by_seq.remove(&seq.to_string());
        if !policy.is_object() {
            // Two records without a judgement would compare equal.
            found.push(format!(
                "seq {seq} ({kind}): the live record has no policy object: {policy}"
            ));
            continue;
        }
        match again {
            None => found.push(format!("seq {seq} ({kind}): no replayed record")),
            Some(again) if again["policy"] != *policy => found.push(format!(
                "seq {seq} ({kind}): live policy {policy}, replayed policy {}",
                again["policy"]
            )),
            Some(_) => {}
        }
    }
    for (seq, record) in replayed_by_seq {
        found.push(format!(
            "seq {seq} ({}): replayed, but no syscall record of the live capture",
            record["kind"]
        ));
    }
    found
}

fn alert_records<'a>(records: &'a [&'a Value]) -> impl Iterator<Item = &'a Value> + 'a {
    records.iter().copied().filter(|r| r["kind"] == "alert")
}

/// The live capture's `alert` records against replay's: each alert (the
/// record that raised it, the rule, its severity and message, and for the
/// closing alert of repeats its counts and names) as often in both. Their
/// own `seq` and `ts` differ by design.
fn alert_disagreements(live: &[&Value], replayed: &[&Value]) -> Vec<String> {
    let mut alerts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let key = |alert: &Value| {
        let dedup = match alert.get("dedup") {
            Some(dedup) => format!(", dedup {dedup}"),
            None => String::new(),
        };
        format!(
            "{} seq {}, rule {}, severity {}, message {}{dedup}",
            alert["event_kind"],
            alert["event_seq"],
            alert["rule"],
            alert["severity"],
            alert["message"]
        )
    };
    for alert in alert_records(live) {
        alerts.entry(key(alert)).or_default().0 += 1;
    }
    for alert in alert_records(replayed) {
        alerts.entry(key(alert)).or_default().1 += 1;
    }
    alerts
        .into_iter()
        .filter(|(_, (live, replayed))| live != replayed)
        .map(|(alert, (live, replayed))| {
            format!("{alert}: {live} live alert record(s), {replayed} replayed")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::results::Replayed;

    fn judged(seq: u64, kind: &str, policy: &Value) -> Value {
        json!({"kind": kind, "seq": seq, "policy": policy})
    }

    fn alerting(rule: &str, message: &str) -> Value {
        json!({"verdict": "alert", "matches": [
            {"rule": rule, "severity": "high", "action": "alert", "message": message}
        ]})
    }

    fn logging(rule: &str) -> Value {
        json!({"verdict": "log", "matches": [
            {"rule": rule, "severity": "low", "action": "log", "message": "m"}
        ]})
    }

    fn alert(seq: u64, event_seq: u64, event_kind: &str, rule: &str) -> Value {
        json!({"kind": "alert", "seq": seq, "event_seq": event_seq,
               "event_kind": event_kind, "rule": rule, "severity": "high", "message": "m"})
    }

    /// A live capture: a start record with an alert about a module loaded
    /// before it, an alerting load, and a logged unload.
    fn live() -> Vec<Value> {
        vec![
            json!({"kind": "start", "seq": 0}),
            alert(1, 0, "start", "modprobe.d:blacklist:loop"),
            judged(2, "finit_module", &alerting("fileless-load", "memfd")),
            alert(3, 2, "finit_module", "fileless-load"),
            judged(4, "delete_module", &logging("unload")),
            json!({"kind": "stop", "seq": 5}),
        ]
    }

    /// What `modtrace replay --format json` makes of `live()`: the same
    /// records, its alerts without a `seq` of their own.
    fn replayed() -> Vec<Value> {
        live()
            .into_iter()
            .map(|mut r| {
                if r["kind"] == "alert" {
                    r.as_object_mut().unwrap().remove("seq");
                }
                r
            })
            .collect()
    }

    fn refs(records: &[Value]) -> Vec<&Value> {
        records.iter().collect()
    }

    fn watch(replayed: &[Value], exit_code: Option<i32>) -> Watch {
        Watch {
            label: "main".into(),
            status: "started".into(),
            argv: Vec::new(),
            lines: Vec::new(),
            stderr: String::new(),
            exit_code: Some(0),
            replay: Replayed {
                lines: replayed.iter().cloned().map(Ok).collect(),
                stderr: "replay: …".into(),
                exit_code,
            },
            startup_s: Some(0.5),
        }
    }

    fn failures(m: &Checks) -> Vec<&str> {
        m.findings
            .iter()
            .filter(|f| !f.ok)
            .map(|f| f.what.as_str())
            .collect()
    }

    #[test]
    fn an_agreeing_replay_passes() {
        let (live, replayed) = (live(), replayed());
        assert_eq!(
            policy_disagreements(&refs(&live), &refs(&replayed)),
            Vec::<String>::new()
        );
        assert_eq!(
            alert_disagreements(&refs(&live), &refs(&replayed)),
            Vec::<String>::new()
        );
        let mut m = Checks::default();
        check_replay(&mut m, &watch(&replayed, Some(0)), &refs(&live));
        assert_eq!(failures(&m), Vec::<&str>::new());
        assert_eq!(m.findings.len(), 3, "exit code, policy objects, alerts");
        assert!(m.unchecked.is_empty(), "{:?}", m.unchecked);
    }

    #[test]
    fn a_different_verdict_names_the_seq_and_both_values() {
        let live = live();
        let mut replayed = replayed();
        replayed[2]["policy"]["verdict"] = json!("log");
        let found = policy_disagreements(&refs(&live), &refs(&replayed));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("seq 2 (\"finit_module\"): live policy {\"verdict\":\"alert\""),
            "{}",
            found[0]
        );
        assert!(
            found[0].contains("replayed policy {\"verdict\":\"log\""),
            "{}",
            found[0]
        );
    }

    #[test]
    fn a_different_message_names_the_seq_and_both_messages() {
        let live = live();
        let mut replayed = replayed();
        replayed[2]["policy"] = alerting("fileless-load", "memfd by ?");
        let found = policy_disagreements(&refs(&live), &refs(&replayed));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("seq 2 "), "{}", found[0]);
        assert!(found[0].contains("\"message\":\"memfd\""), "{}", found[0]);
        assert!(
            found[0].contains("\"message\":\"memfd by ?\""),
            "{}",
            found[0]
        );
    }

    #[test]
    fn a_missing_extra_or_doubled_replayed_record_is_a_disagreement() {
        let live = live();
        let mut replayed = replayed();
        replayed.retain(|r| r["seq"] != 4);
        assert_eq!(
            policy_disagreements(&refs(&live), &refs(&replayed)),
            ["seq 4 (\"delete_module\"): no replayed record"]
        );
        let mut replayed = self::replayed();
        replayed.push(judged(9, "delete_module", &logging("unload")));
        replayed.push(judged(
            2,
            "finit_module",
            &alerting("fileless-load", "memfd"),
        ));
        assert_eq!(
            policy_disagreements(&refs(&live), &refs(&replayed)),
            [
                "seq 2: replay wrote two records",
                "seq 9 (\"delete_module\"): replayed, but no syscall record of the live capture"
            ]
        );
    }

    #[test]
    fn live_records_without_a_judgement_do_not_agree_vacuously() {
        let live = vec![json!({"kind": "delete_module", "seq": 1})];
        let found = policy_disagreements(&refs(&live), &refs(&live));
        assert_eq!(
            found,
            ["seq 1 (\"delete_module\"): the live record has no policy object: null"]
        );
    }

    #[test]
    fn alerts_must_be_raised_on_the_same_records_by_the_same_rules() {
        let mut live = live();
        // Live alerted on the unload too, under a rule that replay logs.
        live.push(alert(6, 4, "delete_module", "unload"));
        let mut replayed = replayed();
        replayed[3]["rule"] = json!("other-rule");
        // Replay did not re-raise the start record's alert.
        replayed.remove(1);
        let found = alert_disagreements(&refs(&live), &refs(&replayed));
        assert_eq!(
            found,
            [
                "\"delete_module\" seq 4, rule \"unload\", severity \"high\", message \"m\": 1 live alert record(s), 0 replayed",
                "\"finit_module\" seq 2, rule \"fileless-load\", severity \"high\", message \"m\": 1 live alert record(s), 0 replayed",
                "\"finit_module\" seq 2, rule \"other-rule\", severity \"high\", message \"m\": 0 live alert record(s), 1 replayed",
                "\"start\" seq 0, rule \"modprobe.d:blacklist:loop\", severity \"high\", message \"m\": 1 live alert record(s), 0 replayed",
            ]
        );
    }

    #[test]
    fn closing_alerts_must_agree_on_their_counts() {
        let closing = |count: u64| {
            let mut a = alert(7, 6, "delete_module", "module-unload-attempt");
            a["dedup"] = json!({"closing": true, "count": count, "suppressed": count - 1});
            a
        };
        let live = vec![closing(5)];
        let replayed = vec![closing(4)];
        let found = alert_disagreements(&refs(&live), &refs(&replayed));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].ends_with(
                "dedup {\"closing\":true,\"count\":4,\"suppressed\":3}: 0 live alert record(s), 1 replayed"
            ),
            "{found:?}"
        );
        assert!(
            found[1].ends_with(
                "dedup {\"closing\":true,\"count\":5,\"suppressed\":4}: 1 live alert record(s), 0 replayed"
            ),
            "{found:?}"
        );
        assert!(alert_disagreements(&refs(&live), &refs(&live)).is_empty());
    }

    #[test]
    fn a_failed_replay_fails_the_watch() {
        let live = live();
        let mut m = Checks::default();
        check_replay(&mut m, &watch(&[], Some(2)), &refs(&live));
        let failed = failures(&m);
        assert!(
            failed[0].contains("replay of the capture exits 0: got Some(2)"),
            "{failed:?}"
        );
        assert!(
            failed[1].contains("seq 2 (\"finit_module\"): no replayed record"),
            "{failed:?}"
        );
    }

    #[test]
    fn a_reloaded_policy_is_shown_as_not_checked_and_counts_as_no_check() {
        let mut live = live();
        live.insert(5, json!({"kind": "policy_reload", "seq": 5, "ok": true}));
        let mut m = Checks::default();
        check_replay(&mut m, &watch(&[], None), &refs(&live));
        assert!(m.findings.is_empty());
        assert_eq!(m.unchecked.len(), 1);
        assert!(
            m.unchecked[0].contains("policy_reload at seq 5"),
            "{:?}",
            m.unchecked
        );
    }

    #[test]
    fn only_the_first_disagreements_are_spelled_out() {
        let disagreements: Vec<String> = (0..12).map(|seq| format!("seq {seq}: x")).collect();
        let mut m = Checks::default();
        report(&mut m, "watch main: w", &disagreements);
        let failed = failures(&m);
        assert!(
            failed[0].starts_with("watch main: w: 12 disagreement(s): seq 0: x;"),
            "{failed:?}"
        );
        assert!(failed[0].ends_with("seq 9: x; and 2 more"), "{failed:?}");
    }
}
