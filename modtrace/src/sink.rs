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

use crate::{
    policy::Evaluation,
    record::{Body, Record, SCHEMA_VERSION},
};

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

/// Lines are buffered and written out by [`Emitter::flush`], which the
/// watch loop calls once per wake-up: one write for a batch of records
/// instead of one per line, and no record waits longer than that wake-up.
pub struct Emitter {
    host: String,
    seq: u64,
    stdout_format: Format,
    colour: bool,
    file: Option<(PathBuf, io::BufWriter<File>)>,
    stdout: io::BufWriter<io::Stdout>,
}

impl Emitter {
    pub fn new(
        host: String,
        stdout_format: Format,
        colour: bool,
        file: Option<(PathBuf, File)>,
    ) -> Self {
        const BUFFER: usize = 256 * 1024;
        Self {
            host,
            seq: 0,
            stdout_format,
            colour,
            file: file.map(|(path, f)| (path, io::BufWriter::with_capacity(BUFFER, f))),
            stdout: io::BufWriter::with_capacity(BUFFER, io::stdout()),
        }
    }

    /// Writes out what [`Emitter::write`] buffered.
    pub fn flush(&mut self) -> Result<(), SinkError> {
        if let Some((path, file)) = &mut self.file {
            file.flush().map_err(|source| SinkError::Write {
                what: path.display().to_string(),
                source,
            })?;
        }
        self.stdout.flush().map_err(|source| SinkError::Write {
            what: "stdout".into(),
            source,
        })
    }

    /// The seq the next record will get, so that records can name each other.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    fn record<'a>(
        &'a self,
        kind: &'a str,
        ts: &'a str,
        body: &'a Body,
        policy: Option<&'a Evaluation>,
    ) -> Record<'a> {
        Record {
            kind,
            schema: SCHEMA_VERSION,
            ts,
            seq: self.seq,
            host: &self.host,
            body,
            policy,
        }
    }

    /// The JSON the next record would have if it were `body` (without its
    /// policy object): for policy messages, which may name any field.
    pub fn json_of(&self, kind: &str, ts: &str, body: &Body) -> Value {
        serde_json::to_value(self.record(kind, ts, body, None)).expect("records serialize to JSON")
    }

    /// Writes one record to every sink; `ts` is RFC 3339 wall-clock time.
    pub fn emit(&mut self, kind: &str, ts: &str, body: &Body) -> Result<(), SinkError> {
        self.emit_judged(kind, ts, body, None)
    }

    /// [`Emitter::emit`] of a syscall record with its policy judgement.
    pub fn emit_judged(
        &mut self,
        kind: &str,
        ts: &str,
        body: &Body,
        policy: Option<&Evaluation>,
    ) -> Result<(), SinkError> {
        let record = self.record(kind, ts, body, policy);
        // Straight to bytes: no JSON tree is built for an NDJSON line.
        let mut line = serde_json::to_vec(&record).expect("records serialize to JSON");
        line.push(b'\n');
        let text = (self.stdout_format == Format::Text).then(|| {
            let json = serde_json::to_value(&record).expect("records serialize to JSON");
            (text_line(&json, self.colour), kind == "alert")
        });
        self.seq += 1;
        if let Some((path, file)) = &mut self.file {
            file.write_all(&line).map_err(|source| SinkError::Write {
                what: path.display().to_string(),
                source,
            })?;
        }
        let (what, result) = match text {
            // A person watching text output must not miss an alert among
            // the events: it goes to stderr, apart from them.
            Some((text, true)) => {
                let mut err = io::stderr().lock();
                (
                    "stderr",
                    err.write_all(text.as_bytes()).and_then(|()| err.flush()),
                )
            }
            Some((text, false)) => ("stdout", self.stdout.write_all(text.as_bytes())),
            None => ("stdout", self.stdout.write_all(&line)),
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
