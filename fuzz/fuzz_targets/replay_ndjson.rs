//! Any bytes given as a capture are replayed, refused as a newer schema, or
//! reported line by line as malformed: never a panic. A replay accounts for
//! every line, writes each record it keeps as one line of JSON, and re-judges
//! the capture's events with the policy (rebuilt for the kernel of each
//! `start` record).
#![no_main]

use std::{path::PathBuf, sync::OnceLock};

use libfuzzer_sys::fuzz_target;
use modtrace::{
    replay::{PolicySource, Replay, ReplayError},
    sink::Format,
};
use serde_json::Value;

/// The default rules without modprobe.d (so that a run does not depend on the
/// machine), and rules that put the captured kernel's release in a glob.
fn policy_file() -> &'static PathBuf {
    static POLICY: OnceLock<PathBuf> = OnceLock::new();
    POLICY.get_or_init(|| {
        let mut text =
            include_str!("../../tests/fixtures/replay/default-without-modprobe-d.toml").to_owned();
        text.push_str(concat!(
            "\n[[rule]]\nid = \"in-tree\"\nseverity = \"info\"\naction = \"log\"\n",
            "when = { path = [\"/lib/modules/{kernel}/**\", \"/usr/lib/modules/{kernel}/**\"] }\n",
            "message = \"{module} {path} {exe} {comm} {pid} {uid} {parent_exe} {syscall} {rule}\"\n",
        ));
        let path = std::env::temp_dir().join(format!(
            "modtrace-fuzz-replay-{}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).expect("a scratch policy file");
        path
    })
}

fuzz_target!(|data: &[u8]| {
    // JSON output with the policy above; text output with the embedded
    // default policy, as `modtrace replay` without --policy.
    // The text run also puts every alert through a one-second window.
    for (format, policy, alert_window_s) in [
        (Format::Json, Some(policy_file().clone()), None),
        (Format::Text, None, Some(1)),
    ] {
        let mut replay = Replay {
            file: "fuzz.ndjson",
            format,
            colour: format == Format::Text,
            out: Vec::new(),
            diagnostics: Vec::new(),
            alert_window_s,
        };
        let source = PolicySource {
            path: policy,
            check_owner: false,
        };
        let result = replay.run(data, &source);
        let lines = data.split_inclusive(|b| *b == b'\n').count() as u64;
        let diagnostics = String::from_utf8(replay.diagnostics).expect("diagnostics are UTF-8");
        let out = String::from_utf8(replay.out).expect("output is UTF-8");
        match result {
            Ok(summary) => {
                assert_eq!(summary.lines, lines);
                assert_eq!(
                    diagnostics.lines().count() as u64,
                    summary.malformed,
                    "{diagnostics}"
                );
                for line in diagnostics.lines() {
                    assert!(line.starts_with("modtrace replay: fuzz.ndjson:"), "{line}");
                }
                assert!(summary.records + summary.malformed <= summary.lines);
                assert!(summary.events + summary.dropped_alerts <= summary.records);
                assert_eq!(summary.verdicts.values().sum::<u64>(), summary.events);
                if format == Format::Json {
                    let written = out.lines().count() as u64;
                    assert_eq!(written, summary.records - summary.dropped_alerts);
                    let mut events = 0;
                    for line in out.lines() {
                        let record: Value =
                            serde_json::from_str(line).expect("each line written is JSON");
                        assert!(record["kind"].is_string() && record["schema"].is_u64());
                        let kind = record["kind"].as_str().unwrap_or_default();
                        events += u64::from(
                            ["init_module", "finit_module", "delete_module"].contains(&kind)
                                && record["policy"]["verdict"].is_string(),
                        );
                    }
                    assert_eq!(events, summary.events);
                }
                let _ = summary.text();
            }
            Err(ReplayError::NewerSchema { line, .. }) => assert!(line >= 1 && line <= lines),
            Err(err) => panic!("an in-memory capture and its policy fail only by schema: {err}"),
        }
    }
});
