//! Any text given as a policy parses or yields errors with positions; a
//! policy that parses evaluates a record without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modtrace::policy::{Context, Policy, PolicyError};

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
            let record = serde_json::json!({"kind":"finit_module","ts":"2026-11-27T21:30:00Z",
                "process":{"pid":1,"uid":0,"comm":"modprobe","exe":"/usr/bin/kmod"},
                "args":{"file":{"path":"/lib/modules/6.1.0-28-amd64/a-b.ko","memfd":false,"unlinked":false}},
                "result":{"ok":false,"errno":"ENOSYS"},
                "module":{"name":"a_b","taint":"OE","modinfo":{"signed":false}}});
            let _ = policy.evaluate(&record);
            let _ = policy.explain(&record);
        }
        Err(PolicyError::Invalid(errors)) => {
            assert!(!errors.is_empty());
            for error in errors {
                assert!(error.line >= 1 && error.column >= 1, "{error}");
            }
        }
        Err(PolicyError::File(_)) => {}
    }
});
