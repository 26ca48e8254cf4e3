//! The input of policy evaluation: one syscall record, typed, with the
//! values conditions test (docs/output.md names them by their JSON paths).
//!
//! `watch` judges the record it has just made, as it is in memory; replay
//! and `policy test` deserialise a line into the same record type
//! ([`ReadRecord`]) and judge it the same way. Either way each value is
//! taken from one place: the accessors below.
use std::{borrow::Cow, cell::OnceCell};

use chrono::{Datelike, Timelike};
use serde::Deserialize as _;
use serde_json::Value;

use crate::record::{image::Analysis, AncestorRecord, Args, Call, FileArg, Process};

pub use modtrace_common::Syscall;

/// Syscalls as bits of a rule's prefilter mask.
pub trait SyscallBit {
    fn bit(self) -> u8;
}

impl SyscallBit for Syscall {
    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The mask of the load syscalls.
pub const LOAD_SYSCALLS: u8 = 1 << Syscall::InitModule as u8 | 1 << Syscall::FinitModule as u8;
/// The mask of every traced syscall.
pub const ANY_SYSCALL: u8 = LOAD_SYSCALLS | 1 << Syscall::DeleteModule as u8;

/// A line that claims to be a syscall record but does not fit the schema:
/// where, and why.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SchemaError {
    pub path: String,
    pub message: String,
}

/// A syscall record read back from JSON (replay, `policy test`).
#[derive(Debug)]
pub struct ReadRecord {
    pub syscall: Syscall,
    /// The record's `ts` (empty when it has none: no time window matches).
    pub ts: String,
    pub seq: u64,
    pub call: Call,
}

impl ReadRecord {
    /// Syscall record `line` of `syscall`, whose envelope gave `ts` and
    /// `seq`: an error naming the field when it does not fit the schema.
    pub fn from_line(
        syscall: Syscall,
        line: &str,
        ts: String,
        seq: u64,
    ) -> Result<Self, SchemaError> {
        // Tracking the path costs as much again: only a record that does
        // not fit is read a second time, to say where.
        let call = match serde_json::from_str(line) {
            Ok(call) => call,
            Err(_) => {
                let mut json = serde_json::Deserializer::from_str(line);
                serde_path_to_error::deserialize(&mut json).map_err(|e| schema_error(&e))?
            }
        };
        Ok(Self {
            syscall,
            ts,
            seq,
            call,
        })
    }

    /// The syscall record `record` is; `None` for the other kinds (start,
    /// loss, …); an error naming the field when it does not fit the schema.
    pub fn from_json(record: &Value) -> Result<Option<Self>, SchemaError> {
        let Some(syscall) = record
            .get("kind")
            .and_then(Value::as_str)
            .and_then(Syscall::from_name)
        else {
            return Ok(None);
        };
        // Tracking the path costs as much again: only a record that does
        // not fit is read a second time, to say where.
        let call = match Call::deserialize(record) {
            Ok(call) => call,
            Err(_) => serde_path_to_error::deserialize(record).map_err(|e| schema_error(&e))?,
        };
        Ok(Some(Self {
            syscall,
            ts: record
                .get("ts")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            seq: record
                .get("seq")
                .and_then(Value::as_u64)
                .unwrap_or_default(),
            call,
        }))
    }
}

/// Where and why a record does not fit the schema.
fn schema_error(err: &serde_path_to_error::Error<serde_json::Error>) -> SchemaError {
    // The top level is "." to the path's printer.
    let path = match err.path().to_string() {
        root if root == "." => "record".to_owned(),
        path => path,
    };
    SchemaError {
        path,
        message: err.inner().to_string(),
    }
}

/// The record as JSON, for messages: they are formatted only for rules that
/// matched, and may name any field. A live record is rendered, and a line
/// parsed, only then.
enum RecordJson<'a> {
    Read(&'a Value),
    Line {
        line: &'a str,
        parsed: OnceCell<Value>,
    },
    Live {
        render: &'a dyn Fn() -> Value,
        rendered: OnceCell<Value>,
    },
}

/// One syscall record, with the values a policy tests.
pub struct Event<'a> {
    json: RecordJson<'a>,
    pub syscall: Syscall,
    ts: &'a str,
    call: &'a Call,
    module: Option<&'a str>,
    /// `module` as names are compared: `-` spelled `_`.
    module_key: Option<Cow<'a, str>>,
    /// Minute of the day and weekday bit of `ts`, parsed on first use.
    week_time: OnceCell<Option<WeekTime>>,
}

/// When an event happened, as time windows test it (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeekTime {
    /// Minutes after midnight.
    pub minute: u32,
    /// Bit 0 = Monday.
    pub day_bit: u8,
}

/// `process.ancestors`: conditions see them through their exes.
#[derive(Debug, Clone, Copy)]
pub struct Ancestors<'a>(&'a [AncestorRecord]);

impl<'a> Ancestors<'a> {
    /// The exes the ancestors have, nearest first.
    pub fn exes(self) -> impl Iterator<Item = &'a str> {
        self.0.iter().filter_map(|a| a.exe.as_deref())
    }
}

impl<'a> Event<'a> {
    /// The event of a record `watch` has just made; `render` gives its JSON,
    /// for messages only.
    pub fn live(
        render: &'a dyn Fn() -> Value,
        syscall: Syscall,
        ts: &'a str,
        call: &'a Call,
    ) -> Self {
        let json = RecordJson::Live {
            render,
            rendered: OnceCell::new(),
        };
        Self::new(json, syscall, ts, call)
    }

    /// The event of a record read back from JSON as `read`, `json` its line.
    pub fn read(json: &'a Value, read: &'a ReadRecord) -> Self {
        Self::new(RecordJson::Read(json), read.syscall, &read.ts, &read.call)
    }

    /// The event of capture line `line`, read as `read`.
    pub fn read_line(line: &'a str, read: &'a ReadRecord) -> Self {
        let json = RecordJson::Line {
            line,
            parsed: OnceCell::new(),
        };
        Self::new(json, read.syscall, &read.ts, &read.call)
    }

    fn new(json: RecordJson<'a>, syscall: Syscall, ts: &'a str, call: &'a Call) -> Self {
        let mut event = Self {
            json,
            syscall,
            ts,
            call,
            module: None,
            module_key: None,
            week_time: OnceCell::new(),
        };
        event.module = event.module_name().or_else(|| match syscall {
            // Until the kernel names it (a load that failed never is): the
            // name delete_module was given, the file name of a finit_module
            // path, or the name in an init_module image's `struct module`,
            // as the kernel side of enforcement names them.
            Syscall::DeleteModule => event.delete_name(),
            Syscall::FinitModule => event.path().and_then(name_from_path),
            Syscall::InitModule => event.analysis()?.this_module_name.as_deref(),
        });
        event.module_key = event.module.map(normalise_module_name);
        event
    }

    fn file(&self) -> Option<&'a FileArg> {
        match &self.call.args {
            Args::Finit { file, .. } => Some(file),
            _ => None,
        }
    }

    fn analysis(&self) -> Option<&'a Analysis> {
        self.call.module.as_ref()?.image.as_ref()?.analysis.as_ref()
    }

    /// `ts`
    pub fn time(&self) -> Option<&'a str> {
        (!self.ts.is_empty()).then_some(self.ts)
    }

    /// `result.ok`
    pub fn ok(&self) -> Option<bool> {
        self.call.result.as_ref().map(|r| r.ok)
    }

    /// `result.errno`
    pub fn errno(&self) -> Option<&'a str> {
        self.call.result.as_ref()?.errno.as_deref()
    }

    /// `process.exe`
    pub fn exe(&self) -> Option<&'a str> {
        self.call.process.exe.as_deref()
    }

    /// `process.comm`
    pub fn comm(&self) -> Option<&'a str> {
        Some(&self.call.process.comm)
    }

    /// `process.cgroup`
    pub fn cgroup(&self) -> Option<&'a str> {
        self.call.process.cgroup.as_deref()
    }

    /// `process.container.id`
    pub fn container(&self) -> Option<&'a str> {
        Some(&self.call.process.container.as_ref()?.id)
    }

    /// The calling process as the record has it, for messages.
    pub fn process(&self) -> &'a Process {
        &self.call.process
    }

    /// `process.uid`
    pub fn uid(&self) -> Option<u64> {
        Some(self.call.process.uid.into())
    }

    /// `process.auid`
    pub fn auid(&self) -> Option<u64> {
        self.call.process.auid.map(u64::from)
    }

    /// `process.euid`
    pub fn euid(&self) -> Option<u64> {
        self.call.process.euid.map(u64::from)
    }

    /// `process.ancestors[].exe`
    pub fn ancestors(&self) -> Ancestors<'a> {
        Ancestors(&self.call.process.ancestors)
    }

    /// `parent.exe`
    pub fn parent_exe(&self) -> Option<&'a str> {
        self.call.parent.exe.as_deref()
    }

    /// `args.file.path`
    pub fn path(&self) -> Option<&'a str> {
        self.file()?.path.as_deref()
    }

    /// `args.file.memfd`
    pub fn memfd(&self) -> Option<bool> {
        Some(self.file()?.memfd)
    }

    /// `args.file.unlinked`
    pub fn unlinked(&self) -> Option<bool> {
        Some(self.file()?.unlinked)
    }

    /// `args.params.value`
    pub fn params(&self) -> Option<&'a str> {
        match &self.call.args {
            Args::Init { params, .. } | Args::Finit { params, .. } => params.value.as_deref(),
            Args::Delete { .. } => None,
        }
    }

    /// `args.name.value`, the name delete_module was given
    pub fn delete_name(&self) -> Option<&'a str> {
        match &self.call.args {
            Args::Delete { name, .. } => name.value.as_deref(),
            _ => None,
        }
    }

    /// `cause.request`
    pub fn request(&self) -> Option<&'a str> {
        Some(&self.call.cause.as_ref()?.request)
    }

    /// `module.name`
    pub fn module_name(&self) -> Option<&'a str> {
        self.call.module.as_ref()?.name.as_deref()
    }

    /// The letters of `module.taint`.
    pub fn taint(&self) -> Option<&'a str> {
        Some(&self.call.module.as_ref()?.taint.as_ref()?.letters)
    }

    /// `module.image.sha256`
    pub fn sha256(&self) -> Option<&'a str> {
        Some(&self.analysis()?.sha256)
    }

    /// `module.image.signature.signer`
    pub fn signer(&self) -> Option<&'a str> {
        self.analysis()?.signature.signer.as_deref()
    }

    /// `module.image.signature.signed`
    pub fn signed(&self) -> Option<bool> {
        Some(self.analysis()?.signature.signed)
    }

    /// `module.image.modinfo.license`
    pub fn license(&self) -> Option<&'a str> {
        self.analysis()?.modinfo.license.as_deref()
    }

    /// `module.image.modinfo.intree`
    pub fn intree(&self) -> Option<bool> {
        Some(self.analysis()?.modinfo.intree)
    }

    /// Any value of the record, by path, for messages.
    pub fn at(&self, path: &[&str]) -> Option<&Value> {
        let record = match &self.json {
            RecordJson::Read(record) => record,
            // The line was read as this record: it is JSON.
            RecordJson::Line { line, parsed } => {
                parsed.get_or_init(|| serde_json::from_str(line).unwrap_or_default())
            }
            RecordJson::Live { render, rendered } => rendered.get_or_init(render),
        };
        value_at(record, path)
    }

    pub fn str_at(&self, path: &[&str]) -> Option<&str> {
        self.at(path)?.as_str()
    }

    /// The text of a value default messages name, taken from the record as
    /// messages show the JSON (a string as it is, a null or absent value as
    /// `?`), so that such a message renders no JSON. None for any other path.
    pub fn typed_text(&self, path: &[&str]) -> Option<Cow<'a, str>> {
        let process = &self.call.process;
        Some(match path {
            ["process", "exe"] => Cow::Borrowed(process.exe.as_deref().unwrap_or("?")),
            ["process", "pid"] => process.pid.to_string().into(),
            ["process", "uid"] => process.uid.to_string().into(),
            ["process", "comm"] => Cow::Borrowed(&process.comm),
            ["result", "ret"] => self.call.result.as_ref()?.ret.to_string().into(),
            _ => return None,
        })
    }

    /// The module's name as the record gives it, or failing that as the
    /// arguments do (not normalised).
    pub fn module(&self) -> Option<&'a str> {
        self.module
    }

    /// The module's name normalised (see [`normalise_module_name`]).
    pub fn module_key(&self) -> Option<&str> {
        self.module_key.as_deref()
    }

    pub fn week_time(&self) -> Option<WeekTime> {
        *self.week_time.get_or_init(|| week_time_of(self.time()?))
    }
}

/// The module a syscall record is about, as [`Event::module`] names it.
pub fn module_of<'a>(call: &'a Call, kind: &str) -> Option<&'a str> {
    static NO_JSON: fn() -> Value = || Value::Null;
    let event = Event::live(&NO_JSON, Syscall::from_name(kind)?, "", call);
    event.module()
}

fn week_time_of(ts: &str) -> Option<WeekTime> {
    let time = chrono::DateTime::parse_from_rfc3339(ts)
        .ok()?
        .with_timezone(&chrono::Utc);
    Some(WeekTime {
        minute: time.hour() * 60 + time.minute(),
        day_bit: 1 << time.weekday().num_days_from_monday(),
    })
}

pub fn value_at<'a>(mut value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    for key in path {
        value = value.get(key)?;
    }
    (!value.is_null()).then_some(value)
}

/// The kernel treats `-` and `_` in module names alike (usb-storage is
/// usb_storage); this is the one spelling names are compared in.
pub fn normalise_module_name(name: &str) -> Cow<'_, str> {
    if name.contains('-') {
        Cow::Owned(name.replace('-', "_"))
    } else {
        Cow::Borrowed(name)
    }
}

/// `/lib/modules/…/sctp.ko.xz` → `sctp`; None for files that are not `.ko`.
fn name_from_path(path: &str) -> Option<&str> {
    let file = path.rsplit('/').next()?;
    let stem = ["", ".xz", ".zst", ".gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext)?.strip_suffix(".ko"))?;
    (!stem.is_empty()).then_some(stem)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::samples::complete;

    /// The module an event of (partial) `record` is about.
    fn module_of_record(record: &Value) -> Option<String> {
        let record = complete(record);
        let read = ReadRecord::from_json(&record).unwrap().unwrap();
        Event::read(&record, &read).module().map(str::to_owned)
    }

    #[test]
    fn module_name_comes_from_the_module_object_first() {
        let record = json!({"kind":"finit_module","module":{"name":"real"},
            "args":{"file":{"path":"/tmp/other.ko"}}});
        assert_eq!(module_of_record(&record).as_deref(), Some("real"));
    }

    #[test]
    fn module_name_falls_back_to_the_path_or_the_delete_argument() {
        let finit = json!({"kind":"finit_module","args":{"file":{"path":"/x/usb-storage.ko.zst"}}});
        assert_eq!(module_of_record(&finit).as_deref(), Some("usb-storage"));
        let memfd = json!({"kind":"finit_module","args":{"file":{"path":"/memfd:x"}}});
        assert_eq!(module_of_record(&memfd), None);
        let delete = json!({"kind":"delete_module","args":{"name":{"value":"dummy"}}});
        assert_eq!(module_of_record(&delete).as_deref(), Some("dummy"));
        let init = json!({"kind":"init_module"});
        assert_eq!(module_of_record(&init), None);
        let image = json!({"kind":"init_module","module":{"image":{"sha256":"ab","size":1,
            "modinfo":{"name":"alias-name"},"signature":{},"this_module_name":"udf","warnings":[]}}});
        assert_eq!(module_of_record(&image).as_deref(), Some("udf"));
    }

    #[test]
    fn other_records_are_not_events() {
        for record in [json!({"kind":"start"}), json!({"kind":5}), json!([])] {
            assert!(
                ReadRecord::from_json(&record).unwrap().is_none(),
                "{record}"
            );
        }
    }

    #[test]
    fn a_record_that_does_not_fit_the_schema_says_where() {
        let mut record = complete(&json!({"kind":"finit_module"}));
        record["process"]["uid"] = json!("0");
        let err = ReadRecord::from_json(&record).unwrap_err();
        assert_eq!(err.path, "process.uid");
        assert!(
            err.to_string()
                .starts_with("process.uid: invalid type: string"),
            "{err}"
        );
        let mut record = complete(&json!({"kind":"delete_module"}));
        record.as_object_mut().unwrap().remove("args");
        let err = ReadRecord::from_json(&record).unwrap_err();
        assert!(err.to_string().contains("missing field `args`"), "{err}");
    }

    #[test]
    fn records_of_older_collectors_are_read() {
        // From tests/fixtures/replay/host-damaged.ndjson: no namespaces,
        // ancestors, container, unit or start time yet.
        let record: Value = serde_json::from_str(
            r#"{"kind":"finit_module","schema":1,"ts":"2026-11-27T21:52:00.873237598Z","seq":1,"host":"vm","duration_ns":9959,"exited":true,"process":{"pid":1860,"tid":1860,"ppid":1746,"uid":0,"gid":0,"euid":0,"auid":4294967295,"session":4294967295,"comm":"mtcall","exe":"/tmp/m","cmdline":["/tmp/m"],"cgroup_id":1,"cgroup":"/"},"parent":{"pid":1746,"comm":"bash","exe":"/usr/bin/bash","cmdline":["bash"]},"args":{"fd":3,"file":{"path":"/tmp/sctp.ko","truncated":false,"ino":10248392,"unlinked":false,"memfd":false},"params":{"value":"","truncated":false},"flags":{"raw":0,"names":[]}},"result":{"ret":-38,"errno":"ENOSYS","ok":false},"module":null}"#,
        )
        .unwrap();
        let read = ReadRecord::from_json(&record).unwrap().unwrap();
        let event = Event::read(&record, &read);
        assert_eq!(event.module(), Some("sctp"));
        assert_eq!(event.ancestors().exes().count(), 0);
        assert_eq!(read.call.process.namespaces.mnt, None);
    }

    #[test]
    fn taint_letters_come_from_the_record_or_as_people_write_them() {
        for taint in [
            json!({"raw":12288,"letters":"OE","names":["out_of_tree_module","unsigned_module"]}),
            json!("OE"),
            json!(["O", "E"]),
        ] {
            let record = complete(&json!({"kind":"finit_module","module":{"taint":taint}}));
            let read = ReadRecord::from_json(&record).unwrap().unwrap();
            let event = Event::read(&record, &read);
            assert_eq!(event.taint(), Some("OE"), "{taint}");
            let parsed = read.call.module.unwrap().taint.unwrap();
            assert_eq!(parsed.raw, 12288, "{taint}");
        }
    }

    mod live_and_read_agree {
        use super::*;
        use crate::{
            record::{fields, image::ImageReport, FileArg, ModuleInfo},
            samples::{captured, ordinary_finit as finit, render, TS},
        };

        /// The same load by a process of which little is known, from memory,
        /// failing, its image unreadable.
        fn failed_init() -> Call {
            let mut call = finit();
            call.process.exe = None;
            call.process.cgroup = None;
            call.process.container = None;
            call.process.auid = None;
            call.process.ancestors.clear();
            call.parent.exe = None;
            call.args = Args::Init {
                image_addr: "0x7f0000".into(),
                image_len: 4096,
                params: captured(None),
            };
            call.result = Some(fields::call_result(-1));
            call.module = Some(ModuleInfo {
                taint: Some(fields::taint(1 << 12 | 1 << 13)),
                image: Some(ImageReport {
                    source: "caller-memory".into(),
                    during_call: true,
                    analysis: None,
                    error: Some("unreadable".into()),
                }),
                ..ModuleInfo::default()
            });
            call.cause = None;
            call
        }

        /// A memfd load whose path was not captured, the task died inside.
        fn memfd_unfinished() -> Call {
            let mut call = finit();
            call.args = Args::Finit {
                fd: 4,
                file: FileArg {
                    path: None,
                    truncated: false,
                    ino: None,
                    unlinked: true,
                    memfd: true,
                    error: Some("unresolved".into()),
                },
                params: captured(Some("")),
                flags: fields::decode_flags(0, fields::FINIT_FLAGS),
            };
            call.exited = false;
            call.duration_ns = None;
            call.result = None;
            call.module = None;
            call
        }

        fn delete() -> Call {
            let mut call = finit();
            call.args = Args::Delete {
                name: captured(Some("usb-storage")),
                flags: fields::decode_flags(0, fields::DELETE_FLAGS),
            };
            call.result = Some(fields::call_result(-2));
            call.module = Some(ModuleInfo {
                name: Some("usb-storage".into()),
                freed: Some(false),
                ..ModuleInfo::default()
            });
            call
        }

        /// An unload that worked: the default policy tells it from an
        /// attempt by `result` alone.
        fn unloaded() -> Call {
            let mut call = delete();
            call.result = Some(fields::call_result(0));
            call
        }

        /// Every value conditions test, as text, for comparing two events.
        fn values(event: &Event) -> Vec<String> {
            vec![
                format!("{:?}", event.time()),
                format!("{:?} {:?}", event.ok(), event.errno()),
                format!("{:?} {:?} {:?}", event.exe(), event.comm(), event.cgroup()),
                format!("{:?}", event.container()),
                format!("{:?} {:?} {:?}", event.uid(), event.auid(), event.euid()),
                format!("{:?}", event.ancestors().exes().collect::<Vec<_>>()),
                format!("{:?} {:?}", event.parent_exe(), event.path()),
                format!("{:?} {:?}", event.memfd(), event.unlinked()),
                format!("{:?} {:?}", event.params(), event.delete_name()),
                format!(
                    "{:?} {:?} {:?}",
                    event.request(),
                    event.module_name(),
                    event.taint()
                ),
                format!(
                    "{:?} {:?} {:?}",
                    event.sha256(),
                    event.signer(),
                    event.signed()
                ),
                format!("{:?} {:?}", event.license(), event.intree()),
                format!("{:?} {:?}", event.module(), event.module_key()),
            ]
        }

        #[test]
        fn for_every_kind_of_call() {
            let calls = [
                (Syscall::FinitModule, finit()),
                (Syscall::InitModule, failed_init()),
                (Syscall::FinitModule, memfd_unfinished()),
                (Syscall::DeleteModule, delete()),
                (Syscall::DeleteModule, unloaded()),
            ];
            let policy = crate::policy::Policy::default_policy(&crate::policy::Context {
                kernel: "6.1.0-28-amd64".into(),
                check_owner: false,
            });
            for (syscall, call) in calls {
                let json = render(syscall, &call);
                let render = || json.clone();
                let live = Event::live(&render, syscall, TS, &call);
                let read = ReadRecord::from_json(&json).unwrap().unwrap();
                let read_event = Event::read(&json, &read);
                assert_eq!(values(&live), values(&read_event), "{json}");
                assert_eq!(live.syscall, read_event.syscall);
                // The record read back renders as the one written.
                assert_eq!(render_read(&read), json);
                // What the default policy makes of each, messages included.
                assert_eq!(
                    policy.judge_call(syscall, TS, &call, &render),
                    policy.judge_read(&json, &read)
                );
                // What messages take from the typed record reads as the JSON.
                let paths: [&[&str]; 5] = [
                    &["process", "exe"],
                    &["process", "pid"],
                    &["process", "uid"],
                    &["process", "comm"],
                    &["result", "ret"],
                ];
                for path in paths {
                    let Some(text) = live.typed_text(path) else {
                        continue;
                    };
                    let from_json = match read_event.at(path) {
                        Some(Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                        None => "?".into(),
                    };
                    assert_eq!(text, from_json, "{path:?} of {json}");
                }
            }
        }

        fn render_read(read: &ReadRecord) -> Value {
            render(read.syscall, &read.call)
        }
    }
}
