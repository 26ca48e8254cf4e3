//! Where records go: stdout as NDJSON or readable text, and optionally an
//! NDJSON file. Every line is rendered whole and written with one call, so a
//! reader never sees half a record.
use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use serde_json::Value;

use crate::record::{Body, Record, SCHEMA_VERSION};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Text,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot open output file {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("output file {path} is readable by others (mode {mode:o}); run `chmod 600 {path}` or choose another file")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("cannot write to {what}: {source}")]
    Write { what: String, source: io::Error },
}

/// Opens `path` for appending, creating it with mode 0600: captures name
/// processes and command lines, which other users should not read.
pub fn open_output_file(path: &Path) -> Result<File, SinkError> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| SinkError::Open {
            path: path.into(),
            source,
        })?;
    let mode = file
        .metadata()
        .map_err(|source| SinkError::Open {
            path: path.into(),
            source,
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(SinkError::Permissions {
            path: path.into(),
            mode,
        });
    }
    Ok(file)
}

pub struct Emitter {
    host: String,
    seq: u64,
    stdout_format: Format,
    colour: bool,
    file: Option<(PathBuf, File)>,
}

impl Emitter {
    pub fn new(
        host: String,
        stdout_format: Format,
        colour: bool,
        file: Option<(PathBuf, File)>,
    ) -> Self {
        Self {
            host,
            seq: 0,
            stdout_format,
            colour,
            file,
        }
    }

    /// The seq the next record will get, so that records can name each other.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// Writes one record to every sink; `ts` is RFC 3339 wall-clock time.
    pub fn emit(&mut self, kind: &str, ts: String, body: &Body) -> Result<(), SinkError> {
        let json = self.render(kind, ts, body);
        self.write(&json)
    }

    /// The record as JSON, numbered: callers may add to it (the policy
    /// verdict) before [`Emitter::write`].
    pub fn render(&mut self, kind: &str, ts: String, body: &Body) -> Value {
        let record = Record {
            kind,
            schema: SCHEMA_VERSION,
            ts,
            seq: self.seq,
            host: &self.host,
            body,
        };
        self.seq += 1;
        serde_json::to_value(&record).expect("records serialize to JSON")
    }

    pub fn write(&mut self, json: &Value) -> Result<(), SinkError> {
        let mut json_line = json.to_string();
        json_line.push('\n');
        if let Some((path, file)) = &mut self.file {
            file.write_all(json_line.as_bytes())
                .map_err(|source| SinkError::Write {
                    what: path.display().to_string(),
                    source,
                })?;
        }
        let (stdout_line, to_stderr) = match self.stdout_format {
            Format::Json => (json_line, false),
            // A person watching text output must not miss an alert among
            // the events: it goes to stderr, apart from them.
            Format::Text => (text_line(json, self.colour), json["kind"] == "alert"),
        };
        let (what, result) = if to_stderr {
            let mut err = io::stderr().lock();
            (
                "stderr",
                err.write_all(stdout_line.as_bytes())
                    .and_then(|()| err.flush()),
            )
        } else {
            let mut out = io::stdout().lock();
            (
                "stdout",
                out.write_all(stdout_line.as_bytes())
                    .and_then(|()| out.flush()),
            )
        };
        result.map_err(|source| SinkError::Write {
            what: what.into(),
            source,
        })
    }
}

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
        "stop" => format!(
            "events {} lost {}",
            record["events"]["total"], record["lost"]["total"]
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

    fn delete_by(auid: Value) -> Value {
        json!({"kind":"delete_module","ts":"t","process":{"pid":5,"uid":0,"auid":auid,"comm":"c"},
            "parent":{"pid":1,"comm":"init"},"args":{"name":{"value":"m"},"flags":{"names":[]}},
            "result":{"ret":-2,"errno":"ENOENT","ok":false}})
    }

    #[test]
    fn text_shows_an_unset_login_uid_as_auditd_does() {
        let line = text_line(&delete_by(json!(4294967295u64)), false);
        assert!(line.contains(" auid=unset "), "{line}");
        let line = text_line(&delete_by(json!(1000)), false);
        assert!(line.contains(" auid=1000 "), "{line}");
        // Unknown (the kernel lacks the field) stays apart from unset.
        let line = text_line(&delete_by(Value::Null), false);
        assert!(line.contains(" auid=- "), "{line}");
    }
}
