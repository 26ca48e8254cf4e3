//! The text view: one readable line per record, for people watching a
//! terminal. It reads records by their JSON field names (docs/output.md).
use serde_json::Value;

const RESET: &str = "\x1b[0m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const BOLD: &str = "\x1b[1m";

fn paint(text: &str, colour: &str, enabled: bool) -> String {
    if enabled {
        format!("{colour}{text}{RESET}")
    } else {
        text.to_owned()
    }
}

fn s(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// One readable line per record, for people watching a terminal.
pub fn text_line(record: &Value, colour: bool) -> String {
    let kind = s(&record["kind"]);
    let head = format!("{} {}", s(&record["ts"]), paint(&kind, BOLD, colour));
    let tail = match kind.as_str() {
        "start" => format!(
            "modtrace {} kernel {} strategies {}",
            s(&record["modtrace_version"]),
            s(&record["kernel"]),
            record["strategies"]
        ),
        "loss" => paint(
            &format!("LOST {} events {}", s(&record["total"]), record["lost"]),
            YELLOW,
            colour,
        ),
        "alert" => paint(
            &format!(
                "ALERT {} {} (event seq {}): {}",
                s(&record["severity"]).to_uppercase(),
                s(&record["rule"]),
                s(&record["event_seq"]),
                s(&record["message"])
            ),
            RED,
            colour,
        ),
        "policy_reload" => format!(
            "policy {} sha256 {} rules {}{}",
            s(&record["source"]),
            s(&record["sha256"]),
            s(&record["rules"]),
            record["error"]
                .as_str()
                .map(|e| format!(" REJECTED, previous policy kept: {e}"))
                .unwrap_or_default()
        ),
        "summary" => paint(
            &format!(
                "{} {} {} calls by pid={} uid={} comm={} ({}), {} reported in full, {} .. {}",
                s(&record["count"]),
                s(&record["elided"]),
                s(&record["syscall"]),
                s(&record["process"]["pid"]),
                s(&record["process"]["uid"]),
                s(&record["process"]["comm"]),
                s(&record["result"]["errno"]),
                s(&record["reported"]),
                s(&record["first"]),
                s(&record["last"]),
            ),
            YELLOW,
            colour,
        ),
        "stop" => format!(
            "events {} aggregated {} lost {}",
            record["events"]["total"], record["aggregated"]["total"], record["lost"]["total"]
        ),
        _ => call_text(record, colour),
    };
    format!("{head} {tail}\n")
}

/// The kernel's "no login uid" (`(uid_t)-1`), which auditd prints as `unset`.
const AUID_UNSET: u64 = u32::MAX as u64;

/// A login uid as auditd shows it: `unset` rather than 4294967295.
fn auid(value: &Value) -> String {
    match value.as_u64() {
        Some(AUID_UNSET) => "unset".into(),
        _ => s(value),
    }
}

fn call_text(record: &Value, colour: bool) -> String {
    let result = &record["result"];
    let outcome = match (&result["ok"], &result["errno"]) {
        (Value::Bool(true), _) => paint("ok", GREEN, colour),
        (Value::Bool(false), errno) => paint(&s(errno), RED, colour),
        _ => paint("no-exit", YELLOW, colour),
    };
    let p = &record["process"];
    let args = &record["args"];
    let what = match s(&record["kind"]).as_str() {
        "finit_module" => format!(
            "fd={} file={} params={:?}",
            args["fd"],
            s(&args["file"]["path"]),
            s(&args["params"]["value"])
        ),
        "init_module" => format!(
            "image_len={} params={:?}",
            args["image_len"],
            s(&args["params"]["value"])
        ),
        _ => format!(
            "name={} flags={}",
            s(&args["name"]["value"]),
            args["flags"]["names"]
        ),
    };
    let verdict = match record["policy"]["verdict"].as_str() {
        Some(v @ ("alert" | "log")) => format!(" policy={v}"),
        _ => String::new(),
    };
    format!(
        "{outcome} pid={} uid={} auid={} comm={} exe={} parent={}({}) {what}{verdict}",
        s(&p["pid"]),
        s(&p["uid"]),
        auid(&p["auid"]),
        s(&p["comm"]),
        s(&p["exe"]),
        s(&record["parent"]["comm"]),
        s(&record["parent"]["pid"]),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn delete_by(auid: &Value) -> Value {
        json!({"kind":"delete_module","ts":"t","process":{"pid":5,"uid":0,"auid":auid,"comm":"c"},
            "parent":{"pid":1,"comm":"init"},"args":{"name":{"value":"m"},"flags":{"names":[]}},
            "result":{"ret":-2,"errno":"ENOENT","ok":false}})
    }

    #[test]
    fn text_shows_an_unset_login_uid_as_auditd_does() {
        let line = text_line(&delete_by(&json!(4294967295u64)), false);
        assert!(line.contains(" auid=unset "), "{line}");
        let line = text_line(&delete_by(&json!(1000)), false);
        assert!(line.contains(" auid=1000 "), "{line}");
        // Unknown (the kernel lacks the field) stays apart from unset.
        let line = text_line(&delete_by(&Value::Null), false);
        assert!(line.contains(" auid=- "), "{line}");
    }
}
