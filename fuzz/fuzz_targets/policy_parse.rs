//! Any text given as a policy parses, or yields errors each naming a line and
//! column of the text; a policy that parses is described as `policy check`
//! describes it and judges a set of records without panicking, and the rule
//! index of `evaluate` finds exactly the rules that `explain`, which checks
//! every rule one by one, says match.
#![no_main]

use std::{io::Write, path::PathBuf, sync::OnceLock};

use libfuzzer_sys::fuzz_target;
use modtrace::{
    policy::{commands, Context, Policy, PolicyError},
    record::judgement::{Action, Verdict},
    samples::complete,
};
use serde_json::{json, Value};

/// Records to judge: the syscall records of a real capture, a record with
/// every field a condition reads, and records whose fields have the wrong
/// types or are missing (which do not fit the schema).
fn records() -> &'static [Value] {
    static RECORDS: OnceLock<Vec<Value>> = OnceLock::new();
    RECORDS.get_or_init(|| {
        let capture = include_str!("../../tests/fixtures/replay/host-default-policy.ndjson");
        let mut records: Vec<Value> = capture
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|r: &Value| r["kind"].as_str().is_some_and(|k| k.ends_with("_module")))
            .collect();
        records.push(complete(
            &json!({"kind":"finit_module","schema":1,"ts":"2026-11-29T01:30:00.123456789Z",
            "seq":3,"host":"web1",
            "process":{"pid":812,"tid":812,"ppid":790,"uid":0,"gid":0,"euid":0,"auid":1000,
                "comm":"modprobe","exe":"/usr/bin/kmod","cmdline":["modprobe","usb-storage"],
                "cgroup":"/user.slice/user-1000.slice/session-3.scope",
                "container":{"runtime":"docker","id":"abc123","pod_uid":null},
                "ancestors":[{"pid":790,"comm":"bash","uid":0,"exe":"/usr/bin/bash"},
                    {"pid":700,"comm":"sshd","uid":0,"exe":"/usr/sbin/sshd"}]},
            "parent":{"pid":790,"comm":"bash","exe":"/usr/bin/bash","cmdline":["-bash"]},
            "args":{"fd":3,"file":{"path":"/lib/modules/6.1.0-28-amd64/kernel/usb-storage.ko.xz",
                "unlinked":false,"memfd":false},"params":{"value":"debug=1"}},
            "result":{"ret":0,"errno":null,"ok":true},
            "module":{"name":"usb_storage","taint":"OE",
                "image":{"sha256":"AB".repeat(32),"modinfo":{"license":"GPL","intree":true},
                    "signature":{"signer":"Debian Secure Boot CA","signed":true}}},
            "cause":{"request":"net-pf-10-proto-132"}}),
        ));
        records.push(
            json!({"kind":"init_module","ts":"not a time","process":{"uid":-1,
            "exe":["x"],"ancestors":{"exe":"/bin/sh"}},"parent":null,"args":{"file":5},
            "result":{"ok":"yes","errno":1},"module":{"name":"","taint":["P",1,"O"],
            "image":{"sha256":null,"signature":{"signed":"false"}}}}),
        );
        records.push(
            json!({"kind":"delete_module","ts":"2026-11-29T23:59:59+14:00",
            "args":{"name":{"value":"a-b"}},"module":{"taint":"PX"},"result":{}}),
        );
        records.push(complete(
            &json!({"kind":"finit_module","args":{"file":{"path":"/memfd:x (deleted)",
            "memfd":true}}}),
        ));
        records.push(json!({"kind":"start","kernel":"6.1.0-28-amd64"}));
        records
    })
}

/// A file for `policy check` to read, one per fuzzing process.
fn scratch() -> &'static PathBuf {
    static SCRATCH: OnceLock<PathBuf> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        std::env::temp_dir().join(format!("modtrace-fuzz-policy-{}.toml", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let context = Context {
        kernel: "6.1.0-28-amd64".into(),
        check_owner: true,
    };
    match Policy::from_text(text, "fuzz.toml", &context) {
        Ok(policy) => {
            for record in records() {
                // A record that does not fit the schema is an error, the
                // same for both; one that is no syscall record is none.
                let evaluation = match policy.evaluate(record) {
                    Ok(Some(evaluation)) => evaluation,
                    Ok(None) => {
                        assert!(matches!(policy.explain(record), Ok(None)));
                        continue;
                    }
                    Err(err) => {
                        assert!(policy.explain(record).is_err(), "{err}");
                        continue;
                    }
                };
                let explained = policy
                    .explain(record)
                    .expect("it read as a record above")
                    .expect("a syscall record");
                let indexed: Vec<&str> =
                    evaluation.matches.iter().map(|m| m.rule.as_str()).collect();
                let scanned: Vec<&str> = explained
                    .iter()
                    .filter(|(_, matched, _)| *matched)
                    .map(|(id, _, _)| id.as_str())
                    .collect();
                assert_eq!(
                    indexed, scanned,
                    "the rule index and a scan of every rule disagree on {record}"
                );
                let strongest = evaluation.matches.iter().map(|m| m.action).max();
                assert_eq!(
                    evaluation.verdict,
                    strongest.map_or(Verdict::None, Verdict::from)
                );
                assert_eq!(
                    evaluation.alerts().count(),
                    evaluation
                        .matches
                        .iter()
                        .filter(|m| m.action == Action::Alert)
                        .count()
                );
                serde_json::to_string(&evaluation).expect("an evaluation serializes");
            }
            let _ = policy.info();
            // `policy check` reads a file: give it this text.
            let path = scratch();
            if std::fs::File::create(path)
                .and_then(|mut f| f.write_all(data))
                .is_ok()
            {
                let description = commands::check(path).expect("the text parsed above");
                assert!(description.contains("valid"));
            }
        }
        Err(PolicyError::Invalid(errors)) => {
            assert!(!errors.is_empty());
            let lines = text.lines().count().max(1) + 1;
            for error in errors {
                assert!(
                    error.line >= 1 && error.line <= lines && error.column >= 1,
                    "{error}"
                );
                assert!(!error.message.is_empty(), "{error:?}");
            }
        }
        Err(PolicyError::File(err)) => panic!("from_text reads no file: {err}"),
    }
});
