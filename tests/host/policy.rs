//! Policies in `modtrace watch` on this machine's kernel: alerts for real
//! calls made by `mtcall`, SIGHUP reloads, and refusal of unsafe policy files.

use std::{
    fs,
    os::unix::fs::{chown, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::harness::{self, modtrace, mtcall, serial, Watch, LOCK_FILE};
use serde_json::Value;
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(10);

fn sha256_of(path: &Path) -> String {
    Sha256::digest(fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A policy file as `watch` accepts it: root's, mode 0600.
fn write_policy(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("policy.toml");
    fs::write(&path, text).unwrap();
    chown(&path, Some(0), Some(0)).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn unload_rule(id: &str, module: &str) -> String {
    format!(
        "[[rule]]\nid = \"{id}\"\nseverity = \"high\"\nmessage = \"{{module}} unloaded by {{comm}}\"\n\
         when = {{ syscall = \"delete_module\", module = \"{module}\" }}\n"
    )
}

/// mtcall's delete_module of `name`, then the record of it and its alert.
fn unload_and_alert(watch: &mut Watch, name: &str, rule: &str) -> (Value, Value) {
    let call = &mtcall(&["delete-module", name])[0];
    let record = watch.wait_for(
        |r| r["kind"] == "delete_module" && r["process"]["pid"] == call["pid"],
        WAIT,
    );
    let seq = record["seq"].clone();
    let alert = watch.wait_for(
        |r| r["kind"] == "alert" && r["event_seq"] == seq && r["rule"] == rule,
        WAIT,
    );
    (record, alert)
}

#[test]
fn a_matching_call_raises_an_alert_with_its_seq() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), &unload_rule("unload-polmod", "pol-mod"));
    let mut watch = Watch::start(&["--policy", policy.to_str().unwrap()]);
    let start = watch.records[0].clone();
    assert_eq!(start["policy"]["sha256"], sha256_of(&policy));
    assert_eq!(start["policy"]["source"], policy.to_str().unwrap());
    assert_eq!(start["policy"]["rules"], 1);

    // pol_mod is pol-mod to the kernel, and so to the policy.
    let (record, alert) = unload_and_alert(&mut watch, "pol_mod", "unload-polmod");
    assert_eq!(record["policy"]["verdict"], "alert");
    assert_eq!(record["policy"]["matches"][0]["rule"], "unload-polmod");
    assert_eq!(alert["severity"], "high");
    assert_eq!(alert["event_kind"], "delete_module");
    assert_eq!(alert["message"], "pol_mod unloaded by mtcall");
    assert!(alert["seq"].as_u64() > record["seq"].as_u64());

    let other = &mtcall(&["delete-module", "not-this-one"])[0];
    let quiet = watch.wait_for(|r| r["process"]["pid"] == other["pid"], WAIT);
    assert_eq!(quiet["policy"]["verdict"], "none");
    let records = watch.stop();
    let alerts: Vec<&Value> = records.iter().filter(|r| r["kind"] == "alert").collect();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
}

#[test]
fn sighup_with_a_broken_policy_keeps_the_old_one() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), &unload_rule("first", "hupmod"));
    let first_sha = sha256_of(&policy);
    let mut watch = Watch::start(&["--policy", policy.to_str().unwrap()]);

    fs::write(&policy, "[[rule]]\nid = \"broken\"\nseverity = \"loud\"\n").unwrap();
    watch.signal(libc::SIGHUP);
    let rejected = watch.wait_for(|r| r["kind"] == "policy_reload", WAIT);
    assert_eq!(rejected["ok"], false);
    assert_eq!(
        rejected["sha256"], first_sha,
        "the old policy stays in force"
    );
    let error = rejected["error"].as_str().unwrap();
    assert!(
        error.contains("policy.toml:3:12: severity \"loud\""),
        "{error}"
    );
    unload_and_alert(&mut watch, "hupmod", "first");

    let second = write_policy(dir.path(), &unload_rule("second", "hupmod"));
    watch.signal(libc::SIGHUP);
    let accepted = watch.wait_for(|r| r["kind"] == "policy_reload" && r["ok"] == true, WAIT);
    assert_eq!(accepted["sha256"], sha256_of(&second));
    let (record, _) = unload_and_alert(&mut watch, "hupmod", "second");
    assert_eq!(record["policy"]["matches"].as_array().unwrap().len(), 1);
    watch.stop();
}

/// The rules that matched `record`, in policy order.
fn rules_of(record: &Value) -> Vec<&str> {
    record["policy"]["matches"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["rule"].as_str())
        .collect()
}

#[test]
fn the_default_policy_alerts_with_no_configuration() {
    let _serial = serial();
    let mut watch = Watch::start(&[]);
    assert_eq!(watch.records[0]["policy"]["source"], "default");
    // Every call fails here: an attempt, never "module unloaded".
    let (record, alert) = unload_and_alert(&mut watch, "defaultmod", "module-unload-attempt");
    assert_eq!(alert["severity"], "info");
    let pid = &record["process"]["pid"];
    assert_eq!(
        alert["message"],
        format!("module unload attempt failed (ENOSYS): delete_module defaultmod by {} (pid {pid}, uid 0)", harness::mtcall_path().display())
    );
    assert_eq!(rules_of(&record), ["module-unload-attempt"]);
    let call = &mtcall(&["init-module", "--image-len", "64"])[0];
    let record = watch.wait_for(|r| r["process"]["pid"] == call["pid"], WAIT);
    let rules = rules_of(&record);
    assert!(rules.contains(&"fileless-load"), "{rules:?}");
    assert!(rules.contains(&"unexpected-loader"), "{rules:?}");
    watch.stop();
}

fn refused(policy: &Path) -> String {
    let out = modtrace()
        .args(["watch", "--lock-file", LOCK_FILE, "--policy"])
        .arg(policy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "nothing may be traced with an unsafe policy"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_group_writable_policy_is_refused() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), &unload_rule("r", "x"));
    fs::set_permissions(&policy, fs::Permissions::from_mode(0o664)).unwrap();
    let stderr = refused(&policy);
    assert!(stderr.contains("lets group or others write it"), "{stderr}");
    assert!(stderr.contains("chmod go-w"), "{stderr}");
}

#[test]
fn a_policy_owned_by_another_user_is_refused() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), &unload_rule("r", "x"));
    chown(&policy, Some(1000), None).unwrap();
    let stderr = refused(&policy);
    assert!(stderr.contains("owned by uid 1000, not root"), "{stderr}");
}

#[test]
fn an_invalid_policy_is_refused_with_its_position() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(
        dir.path(),
        "[[rule]]\nid = \"r\"\nseverity = \"low\"\nwhen = { comm = \"a[\" }\n",
    );
    let stderr = refused(&policy);
    assert!(
        stderr.contains("policy.toml:4:17: bad glob \"a[\""),
        "{stderr}"
    );
}

/// `n` delete_module calls from this process, each naming another module
/// (`{prefix}{i}`), as a flood that hopes to defeat deduplication by names
/// would; returns how many failed with ENOSYS (all of them on this kernel).
fn failing_unloads(prefix: &str, n: usize) -> usize {
    (0..n)
        .filter(|i| {
            let name = std::ffi::CString::new(format!("{prefix}{i}")).unwrap();
            // SAFETY: a valid C string; the kernel only reads it.
            let ret = unsafe { libc::syscall(libc::SYS_delete_module, name.as_ptr(), 0) };
            ret == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS)
        })
        .count()
}

/// The records of our unloads of `prefix*` names, and the alerts of
/// `rule` that point at one of them.
fn flood_records<'a>(
    records: &'a [Value],
    prefix: &str,
    rule: &str,
) -> (Vec<&'a Value>, Vec<&'a Value>) {
    let pid = std::process::id();
    let ours: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["kind"] == "delete_module"
                && r["process"]["pid"] == pid
                && r["args"]["name"]["value"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    let seqs: Vec<&Value> = ours.iter().map(|r| &r["seq"]).collect();
    let alerts = records
        .iter()
        .filter(|a| a["kind"] == "alert" && a["rule"] == rule && seqs.contains(&&a["event_seq"]))
        .collect();
    (ours, alerts)
}

#[test]
fn a_flood_of_failing_unloads_with_varying_names_raises_two_alerts() {
    let _serial = serial();
    const CALLS: usize = 10_000;
    let prefix = "dedupflood";
    // Every call reported in full (the kernel's own aggregation of repeats
    // is tested in watch.rs), into a ring large enough that none is lost:
    // the counts below are exact.
    let watch = Watch::start(&["--aggregate", "off", "--ring-buffer-size", "268435456"]);
    assert_eq!(watch.records[0]["alert_window_s"], 10, "the default window");
    assert_eq!(failing_unloads(prefix, CALLS), CALLS);
    let records = watch.stop();
    let stop = records.last().unwrap();
    assert_eq!(stop["lost"]["total"], 0, "{stop}");
    let (ours, alerts) = flood_records(&records, prefix, "module-unload-attempt");
    assert_eq!(ours.len(), CALLS);
    // Every record keeps its whole judgement: only alert records are held back.
    for record in &ours {
        assert_eq!(
            record["policy"]["matches"][0]["rule"],
            "module-unload-attempt"
        );
    }
    let [first, closing] = alerts.as_slice() else {
        panic!("the first alert and one closing alert, got {alerts:#?}")
    };
    assert_eq!(first["event_seq"], ours[0]["seq"]);
    assert!(first.get("dedup").is_none(), "{first}");
    assert_eq!(first["message"], ours[0]["policy"]["matches"][0]["message"]);
    let dedup = &closing["dedup"];
    assert_eq!(dedup["closing"], true);
    assert_eq!(dedup["count"], CALLS);
    assert_eq!(dedup["suppressed"], CALLS - 1);
    assert_eq!(dedup["first_event_seq"], ours[0]["seq"]);
    assert_eq!(closing["event_seq"], ours[CALLS - 1]["seq"]);
    assert_eq!(dedup["pid"], std::process::id());
    assert_eq!(dedup["start_ns"], ours[0]["process"]["start_ns"]);
    assert!(dedup["start_ns"].as_u64().is_some_and(|s| s > 0));
    // Varying names did not defeat it; they are counted and sampled.
    assert_eq!(dedup["modules"]["distinct"], 1024, "counted up to 1,024");
    assert_eq!(dedup["modules"]["exact"], false);
    let sample: Vec<String> = (0..8).map(|i| format!("{prefix}{i}")).collect();
    assert_eq!(dedup["modules"]["sample"], serde_json::json!(sample));
    assert_eq!(closing["severity"], "info");
    // The alerts written and those counted are exactly the calls that matched.
    let written = alerts.iter().filter(|a| a.get("dedup").is_none()).count() as u64;
    assert_eq!(
        written + dedup["suppressed"].as_u64().unwrap(),
        CALLS as u64
    );
    // The closing alert comes before stop, and after the last record counted.
    let at = |r: &Value| records.iter().position(|x| x["seq"] == r["seq"]).unwrap();
    assert!(at(closing) > at(ours[CALLS - 1]) && at(closing) < records.len() - 1);

    // Replay of the capture raises the very same alert records.
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("flood.ndjson");
    let lines: Vec<String> = records.iter().map(Value::to_string).collect();
    fs::write(&capture, lines.join("\n") + "\n").unwrap();
    let out = modtrace()
        .args(["replay", "--format", "json"])
        .arg(&capture)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let without_seq_and_ts = |alerts: Vec<&Value>| -> Vec<Value> {
        alerts
            .into_iter()
            .map(|a| {
                let mut a = a.clone();
                let body = a.as_object_mut().unwrap();
                body.remove("seq");
                body.remove("ts");
                a
            })
            .collect()
    };
    let (_, again) = flood_records(&replayed, prefix, "module-unload-attempt");
    assert_eq!(without_seq_and_ts(again), without_seq_and_ts(alerts));
}

#[test]
fn a_zero_alert_window_writes_every_alert() {
    let _serial = serial();
    const CALLS: usize = 1_000;
    let watch = Watch::start(&["--alert-window", "0", "--aggregate", "off"]);
    assert_eq!(watch.records[0]["alert_window_s"], 0);
    assert_eq!(failing_unloads("nodedup", CALLS), CALLS);
    let records = watch.stop();
    assert_eq!(records.last().unwrap()["lost"]["total"], 0);
    let (ours, alerts) = flood_records(&records, "nodedup", "module-unload-attempt");
    assert_eq!(ours.len(), CALLS);
    assert_eq!(alerts.len(), CALLS);
    assert!(alerts.iter().all(|a| a.get("dedup").is_none()));
}
