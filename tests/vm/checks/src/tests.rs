//! The checks must be able to fail. Each test runs the real checks of a scenario
//! over a real guest's results (`fixtures/insmod_params`, see fixtures/README.md):
//! as the guest sent them, which must pass, and with one thing changed, which must
//! fail with a finding that names it, and with no other failure.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde_json::{json, Value};
use tempfile::TempDir;

use super::*;

const SCENARIO: &str = "insmod_params";
const LABEL: &str = "debian-6.1/insmod_params";
/// What the runner built for the fixture's guest (debian-6.1: bookworm's kmod 30).
fn all_built() -> Built {
    Built {
        mtcall: true,
        kmod_version: "kmod version 30".into(),
    }
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(SCENARIO)
}

/// A copy of the fixture to change one thing in.
fn copy_of_fixture() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture(), dir.path());
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn check(dir: &Path, built: &Built) -> Outcome {
    let results = ScenarioResults::load(dir).unwrap();
    run(LABEL, SCENARIO, &results, built)
}

/// The pid of action `label` in the fixture.
fn pid_of(label: &str) -> u32 {
    let results = ScenarioResults::load(&fixture()).unwrap();
    results.action(label).and_then(|a| a.pid).unwrap()
}

/// (area, finding) of every failed check.
fn failures(outcome: &Outcome) -> Vec<(&'static str, &str)> {
    [("ground", &outcome.ground), ("modtrace", &outcome.modtrace)]
        .into_iter()
        .flat_map(|(area, checks)| {
            checks
                .findings
                .iter()
                .filter(|f| !f.ok)
                .map(move |f| (area, f.what.as_str()))
        })
        .collect()
}

fn read_ndjson(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write_ndjson(path: &Path, records: &[Value]) {
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    fs::write(path, text).unwrap();
}

/// Removes the records `drop` selects from watch `label`'s capture and from its
/// replay, as if modtrace had never written them, and keeps the rest consistent
/// with itself: `seq` and alerts' `event_seq` renumbered, alerts on a removed
/// record removed, `stop.events` recounted.
fn drop_records(results: &Path, label: &str, drop: impl Fn(&Value) -> bool) {
    let watch = results.join("watch").join(label);
    let live = read_ndjson(&watch.join("out.ndjson"));
    let mut renumbered = BTreeMap::new();
    for record in live.iter().filter(|r| !drop(r)) {
        let next = renumbered.len() as u64;
        renumbered.insert(record["seq"].as_u64().unwrap(), next);
    }
    let rewrite = |records: Vec<Value>| -> Vec<Value> {
        let mut kept: Vec<Value> = records
            .into_iter()
            .filter(|r| {
                let alive = |seq: &Value| seq.as_u64().is_some_and(|s| renumbered.contains_key(&s));
                (r["seq"].is_null() || alive(&r["seq"]))
                    && (r["event_seq"].is_null() || alive(&r["event_seq"]))
            })
            .collect();
        for record in &mut kept {
            for field in ["seq", "event_seq"] {
                if let Some(old) = record[field].as_u64() {
                    record[field] = json!(renumbered[&old]);
                }
            }
        }
        let count = |kind: &str| kept.iter().filter(|r| r["kind"] == kind).count();
        let counts: Vec<(&str, usize)> =
            ["init_module", "finit_module", "delete_module", "request"]
                .into_iter()
                .map(|kind| (kind, count(kind)))
                .collect();
        for stop in kept.iter_mut().filter(|r| r["kind"] == "stop") {
            for &(kind, n) in &counts {
                stop["events"][kind] = json!(n);
            }
            stop["events"]["total"] = json!(counts.iter().map(|(_, n)| n).sum::<usize>());
        }
        kept
    };
    let replayed = read_ndjson(&watch.join("replayed.ndjson"));
    write_ndjson(&watch.join("out.ndjson"), &rewrite(live));
    write_ndjson(&watch.join("replayed.ndjson"), &rewrite(replayed));
}

fn is_record_of(record: &Value, kind: &str, pid: u32) -> bool {
    record["kind"] == kind && record.pointer("/process/pid") == Some(&json!(pid))
}

#[test]
fn a_run_where_modtrace_agrees_with_ftrace_passes() {
    let outcome = check(&fixture(), &all_built());
    assert_eq!(failures(&outcome), []);
    assert!(outcome.passed(), "{outcome}");
    let shown = outcome.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2, "{shown}");
    assert!(
        lines[0].starts_with(&format!("PASS {LABEL} ground truth: "))
            && lines[0].ends_with(" checks, 0 failed"),
        "{shown}"
    );
    assert!(
        lines[1].starts_with(&format!("PASS {LABEL} modtrace: "))
            && lines[1].ends_with(" checks, 0 failed"),
        "{shown}"
    );
    // Every area ran checks over each of the scenario's loads and unloads.
    assert!(outcome.ground.findings.len() >= 10, "{shown}");
    assert!(outcome.modtrace.findings.len() >= 50, "{shown}");
}

#[test]
fn a_load_ftrace_saw_but_modtrace_did_not_report_fails_naming_it() {
    let pid = pid_of("insmod");
    let dir = copy_of_fixture();
    drop_records(dir.path(), "main", |r| is_record_of(r, "finit_module", pid));
    let outcome = check(dir.path(), &all_built());
    assert!(!outcome.passed());
    let failed = failures(&outcome);
    assert_eq!(failed.len(), 2, "{failed:#?}");
    let (area, missing) = failed[0];
    assert_eq!(area, "modtrace");
    assert!(
        missing.starts_with("watch main: 3 of 4 traced syscalls have a record, 0 counted lost; missing: [TracedCall { syscall: \"finit_module\", comm: \"insmod\", ")
            && missing.contains(&format!("tgid: Some({pid})"))
            && missing.contains("loaded: Some((\"dummy\", \"\"))"),
        "{missing}"
    );
    assert_eq!(
        failed[1],
        (
            "modtrace",
            format!("insmod: one modtrace record for pid Some({pid}), got 0").as_str()
        )
    );
    let shown = outcome.to_string();
    assert!(
        shown.contains(&format!(
            "FAIL {LABEL} modtrace: {} checks, 2 failed\n    - {missing}\n",
            outcome.modtrace.findings.len()
        )),
        "{shown}"
    );
}

#[test]
fn a_record_of_a_call_ftrace_never_saw_fails() {
    let pid = pid_of("insmod");
    let dir = copy_of_fixture();
    let trace = dir.path().join("trace");
    let text = fs::read_to_string(&trace).unwrap();
    let insmod = format!("insmod-{pid} ");
    let kept: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with(&insmod))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(kept, text, "the fixture traced insmod");
    fs::write(&trace, kept).unwrap();
    let outcome = check(dir.path(), &all_built());
    assert!(!outcome.passed());
    let failed = failures(&outcome);
    assert_eq!(failed.len(), 2, "{failed:#?}");
    assert_eq!(
        failed[0],
        (
            "ground",
            format!(
                "insmod: one finit_module returning 0 (None) traced for pid Some({pid}), got []"
            )
            .as_str()
        )
    );
    let (area, extra) = failed[1];
    assert_eq!(area, "modtrace");
    assert!(
        extra.starts_with("watch main: records the kernel never traced: [Object {")
            && extra.contains("\"kind\": String(\"finit_module\")")
            && extra.contains(&format!("\"pid\": Number({pid})")),
        "{extra}"
    );
}

#[test]
fn a_record_field_that_disagrees_with_the_kernel_fails_naming_the_field() {
    let pid = pid_of("insmod");
    let dir = copy_of_fixture();
    let out = dir.path().join("watch/main/out.ndjson");
    let mut live = read_ndjson(&out);
    let load = live
        .iter_mut()
        .find(|r| is_record_of(r, "finit_module", pid))
        .unwrap();
    load["module"]["name"] = json!("dumm");
    write_ndjson(&out, &live);
    let outcome = check(dir.path(), &all_built());
    assert_eq!(
        failures(&outcome),
        [(
            "modtrace",
            format!("watch main: finit_module by tid {pid} (insmod): module.name: got Some(\"dumm\"), expected Some(\"dummy\")").as_str()
        )]
    );
    assert!(!outcome.passed());
}

#[test]
fn a_watch_that_did_not_start_fails_and_says_why() {
    let dir = copy_of_fixture();
    let status = "missing: /usr/bin/modtrace is not in the image";
    fs::write(dir.path().join("watch/main/status"), format!("{status}\n")).unwrap();
    let outcome = check(dir.path(), &all_built());
    let failed = failures(&outcome);
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(failed[0].0, "modtrace");
    assert!(
        failed[0].1.starts_with(&format!(
            "watch main: modtrace binary missing/failed to start: {status} (argv "
        )),
        "{failed:?}"
    );
    assert!(!outcome.passed());

    fs::remove_dir_all(dir.path().join("watch")).unwrap();
    let outcome = check(dir.path(), &all_built());
    assert_eq!(
        failures(&outcome),
        [("modtrace", "watch main: the scenario never started it")]
    );
}

#[test]
fn lost_ground_truth_fails() {
    let dir = copy_of_fixture();
    let stats = dir.path().join("trace_stats");
    let text = fs::read_to_string(&stats).unwrap();
    fs::write(&stats, text.replacen("overrun: 0", "overrun: 3", 1)).unwrap();
    let outcome = check(dir.path(), &all_built());
    assert_eq!(
        failures(&outcome),
        [(
            "ground",
            "ftrace overruns (lost ground truth): got 3, expected 0"
        )]
    );
}

#[test]
fn a_guest_without_mtcall_fails() {
    let outcome = check(
        &fixture(),
        &Built {
            mtcall: false,
            ..all_built()
        },
    );
    assert_eq!(
        failures(&outcome),
        [(
            "ground",
            "mtcall did not build: target/release/mtcall is not in the guest"
        )]
    );
}

#[test]
fn a_kmod_other_than_the_releases_fails() {
    let outcome = check(
        &fixture(),
        &Built {
            kmod_version: "kmod version 34.2".into(),
            ..all_built()
        },
    );
    assert_eq!(
        failures(&outcome),
        [(
            "ground",
            "the kmod that ran in the guest (meta kmod) is the release's: got Some(\"kmod version 30\"), expected Some(\"kmod version 34.2\")"
        )]
    );
}

#[test]
fn a_scenario_without_assertions_fails_naming_where_to_write_them() {
    let results = ScenarioResults::load(&fixture()).unwrap();
    let outcome = run("debian-6.1/unwritten", "unwritten", &results, &all_built());
    assert!(!outcome.passed());
    let failed = failures(&outcome);
    let path = "tests/vm/checks/src/scenarios.rs";
    assert_eq!(
        failed,
        [(
            "ground",
            format!("no assertions are written for scenario unwritten ({path})").as_str()
        )]
    );
    // The path it names is this crate's, from the workspace root.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..");
    assert!(root.join(path).is_file(), "{}", root.display());
    assert!(
        outcome
            .to_string()
            .ends_with("modtrace: 0 checks, 0 failed (no checks ran: that is a failure)\n"),
        "{outcome}"
    );
}

#[test]
fn a_failed_vm_run_fails_with_its_error() {
    let outcome = Outcome::vm_failed(LABEL, "guest timed out after 300s".into());
    assert!(!outcome.passed());
    assert_eq!(
        outcome.to_string(),
        format!("FAIL {LABEL}: the VM run failed: guest timed out after 300s\n")
    );
}
