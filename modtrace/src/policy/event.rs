//! The input of policy evaluation: the values of one syscall record that
//! conditions test (docs/output.md names them by their JSON paths).
//!
//! `watch` takes them from the record it has just made, as it is in memory;
//! replay and `policy test` read them from the record's JSON, walking each
//! object's members rather than looking keys up one hash at a time, and only
//! the objects the policy's rules read. Either way conditions see the same
//! typed [`Values`], and everything after that is one code path.
use std::{borrow::Cow, cell::OnceCell};

use chrono::{Datelike, Timelike};
use serde_json::Value;

use crate::record::{image::Analysis, AncestorRecord, Args, Call, FileArg};

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

/// The record values that conditions test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `ts`
    Time,
    /// `process.exe`
    Exe,
    /// `process.comm`
    Comm,
    /// `process.cgroup`
    Cgroup,
    /// `process.container.id`
    Container,
    /// `process.uid`
    Uid,
    /// `process.auid`
    Auid,
    /// `process.euid`
    Euid,
    /// `process.ancestors`
    Ancestors,
    /// `parent.exe`
    ParentExe,
    /// `args.file.path`
    Path,
    /// `args.file.memfd`
    Memfd,
    /// `args.file.unlinked`
    Unlinked,
    /// `args.params.value`
    Params,
    /// `args.name.value`, the name delete_module was given
    DeleteName,
    /// `result`
    Result,
    /// `cause.request`
    Request,
    /// `module.name`
    ModuleName,
    /// `module.taint`
    Taint,
    /// `module.image.sha256`
    Sha256,
    /// `module.image.signature.signer`
    Signer,
    /// `module.image.signature.signed`
    Signed,
    /// `module.image.modinfo.license`
    License,
    /// `module.image.modinfo.intree`
    Intree,
}

const FIELD_COUNT: usize = Field::Intree as usize + 1;

/// A set of [`Field`]s: what a policy's rules read, so that making an event
/// skips the objects none of them looks into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fields(u32);

impl Fields {
    pub const NONE: Fields = Fields(0);
    pub const ALL: Fields = Fields((1 << FIELD_COUNT) - 1);
    const PROCESS: Fields = Fields::of(&[
        Field::Exe,
        Field::Comm,
        Field::Cgroup,
        Field::Container,
        Field::Uid,
        Field::Auid,
        Field::Euid,
        Field::Ancestors,
    ]);
    const PARENT: Fields = Fields::of(&[Field::ParentExe]);
    const FILE: Fields = Fields::of(&[Field::Path, Field::Memfd, Field::Unlinked]);
    const ARGS: Fields = Fields::of(&[Field::Params, Field::DeleteName]).or(Self::FILE);
    const CAUSE: Fields = Fields::of(&[Field::Request]);
    const IMAGE: Fields = Fields::of(&[Field::Sha256])
        .or(Self::SIGNATURE)
        .or(Self::MODINFO);
    const SIGNATURE: Fields = Fields::of(&[Field::Signer, Field::Signed]);
    const MODINFO: Fields = Fields::of(&[Field::License, Field::Intree]);

    pub const fn of(fields: &[Field]) -> Fields {
        let mut bits = 0;
        let mut i = 0;
        while i < fields.len() {
            bits |= 1 << fields[i] as u32;
            i += 1;
        }
        Fields(bits)
    }

    pub const fn or(self, other: Fields) -> Fields {
        Fields(self.0 | other.0)
    }

    fn meets(self, other: Fields) -> bool {
        self.0 & other.0 != 0
    }

    fn and(self, other: Fields) -> Fields {
        Fields(self.0 & other.0)
    }

    fn has(self, field: Field) -> bool {
        self.0 & 1 << field as u32 != 0
    }

    fn without(self, field: Field) -> Fields {
        Fields(self.0 & !(1 << field as u32))
    }
}

/// Defines [`Values`], one typed value per field that conditions test, and
/// for each the accessor of [`Event`] that takes it from the record in
/// memory (`live`, a [`Live`]) or from the values read from JSON: the one
/// place that says where `watch`'s records keep each value.
macro_rules! values {
    ($($(#[$doc:meta])* $name:ident: $ty:ty = |$live:ident| $from_live:expr;)*) => {
        /// The values of a record that conditions test, typed. A field that
        /// is absent, null or of another type is `None`, so that a rule
        /// about a field this record lacks simply does not match.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct Values<'a> {
            $($(#[$doc])* pub $name: $ty,)*
            /// The letters of `module.taint`.
            pub taint: Option<Cow<'a, str>>,
        }

        impl<'a> Event<'a> {
            $($(#[$doc])* pub fn $name(&self) -> $ty {
                match &self.source {
                    Source::Json(values) => values.$name,
                    Source::Live($live) => $from_live,
                }
            })*

            /// All the values, however they are read.
            pub fn values(&self) -> Values<'_> {
                Values {
                    $($name: self.$name(),)*
                    taint: self.taint().map(Cow::Borrowed),
                }
            }
        }
    };
}

values! {
    /// `ts`
    time: Option<&'a str> = |live| Some(live.ts);
    /// `result.ok`
    ok: Option<bool> = |live| live.call.result.as_ref().map(|r| r.ok);
    /// `result.errno`
    errno: Option<&'a str> = |live| live.call.result.as_ref()?.errno.as_deref();
    /// `process.exe`
    exe: Option<&'a str> = |live| live.call.process.exe.as_deref();
    /// `process.comm`
    comm: Option<&'a str> = |live| Some(&live.call.process.comm);
    /// `process.cgroup`
    cgroup: Option<&'a str> = |live| live.call.process.cgroup.as_deref();
    /// `process.container.id`
    container: Option<&'a str> = |live| Some(&live.call.process.container.as_ref()?.id);
    /// `process.uid`
    uid: Option<u64> = |live| Some(live.call.process.uid.into());
    /// `process.auid`
    auid: Option<u64> = |live| live.call.process.auid.map(u64::from);
    /// `process.euid`
    euid: Option<u64> = |live| live.call.process.euid.map(u64::from);
    /// `process.ancestors[].exe`
    ancestors: Ancestors<'a> = |live| Ancestors::Typed(&live.call.process.ancestors);
    /// `parent.exe`
    parent_exe: Option<&'a str> = |live| live.call.parent.exe.as_deref();
    /// `args.file.path`
    path: Option<&'a str> = |live| live.file()?.path.as_deref();
    /// `args.file.memfd`
    memfd: Option<bool> = |live| Some(live.file()?.memfd);
    /// `args.file.unlinked`
    unlinked: Option<bool> = |live| Some(live.file()?.unlinked);
    /// `args.params.value`
    params: Option<&'a str> = |live| match &live.call.args {
        Args::Init { params, .. } | Args::Finit { params, .. } => params.value.as_deref(),
        Args::Delete { .. } => None,
    };
    /// `args.name.value`, the name delete_module was given
    delete_name: Option<&'a str> = |live| match &live.call.args {
        Args::Delete { name, .. } => name.value.as_deref(),
        _ => None,
    };
    /// `cause.request`
    request: Option<&'a str> = |live| Some(&live.call.cause.as_ref()?.request);
    /// `module.name`
    module_name: Option<&'a str> = |live| live.call.module.as_ref()?.name.as_deref();
    /// `module.image.sha256`
    sha256: Option<&'a str> = |live| Some(&live.analysis()?.sha256);
    /// `module.image.signature.signer`
    signer: Option<&'a str> = |live| live.analysis()?.signature.signer.as_deref();
    /// `module.image.signature.signed`
    signed: Option<bool> = |live| Some(live.analysis()?.signature.signed);
    /// `module.image.modinfo.license`
    license: Option<&'a str> = |live| live.analysis()?.modinfo.license.as_deref();
    /// `module.image.modinfo.intree`
    intree: Option<bool> = |live| Some(live.analysis()?.modinfo.intree);
}

/// A syscall record as `watch` holds it before writing it.
#[derive(Clone, Copy)]
pub struct Live<'a> {
    /// The record's `ts`.
    pub ts: &'a str,
    pub call: &'a Call,
}

impl<'a> Live<'a> {
    fn file(self) -> Option<&'a FileArg> {
        match &self.call.args {
            Args::Finit { file, .. } => Some(file),
            _ => None,
        }
    }

    fn analysis(self) -> Option<&'a Analysis> {
        self.call.module.as_ref()?.image.as_ref()?.analysis.as_ref()
    }
}

enum Source<'a> {
    /// Boxed: the values of a record read from JSON are many, and an event
    /// of `watch` should not carry room for them.
    Json(Box<Values<'a>>),
    Live(Live<'a>),
}

/// `process.ancestors`, as the record's JSON or the collector's own list.
#[derive(Debug, Clone, Copy, Default)]
pub enum Ancestors<'a> {
    #[default]
    Absent,
    Json(&'a [Value]),
    Typed(&'a [AncestorRecord]),
}

impl<'a> Ancestors<'a> {
    /// The exes the ancestors have, nearest first.
    pub fn exes(self) -> impl Iterator<Item = &'a str> {
        let (json, typed) = match self {
            Ancestors::Absent => (&[][..], &[][..]),
            Ancestors::Json(json) => (json, &[][..]),
            Ancestors::Typed(typed) => (&[][..], typed),
        };
        json.iter()
            .filter_map(|a| a.get("exe")?.as_str())
            .chain(typed.iter().filter_map(|a| a.exe.as_deref()))
    }
}

/// Conditions see ancestors only through their exes.
impl PartialEq for Ancestors<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.exes().eq(other.exes())
    }
}

impl Eq for Ancestors<'_> {}

/// The record as JSON, for messages: they are formatted only for rules that
/// matched, and may name any field. A live record is rendered only then.
enum RecordJson<'a> {
    Read(&'a Value),
    Live {
        render: &'a dyn Fn() -> Value,
        rendered: OnceCell<Value>,
    },
}

/// One syscall record, with the values a policy tests.
pub struct Event<'a> {
    record: RecordJson<'a>,
    pub syscall: Syscall,
    source: Source<'a>,
    module: Option<&'a str>,
    /// `module` as names are compared: `-` spelled `_`.
    module_key: Option<Cow<'a, str>>,
    /// Minute of the day and weekday bit of `ts`, parsed on first use.
    clock: OnceCell<Option<WeekTime>>,
}

/// When an event happened, as time windows test it (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeekTime {
    /// Minutes after midnight.
    pub minute: u32,
    /// Bit 0 = Monday.
    pub day_bit: u8,
}

impl<'a> Event<'a> {
    /// The event of a record read back from JSON (replay, `policy test`);
    /// `None` for records that are not syscall records (start, loss, …).
    /// Fields outside `reads` are left absent; the module's name is always
    /// read, for the index of rules and for messages.
    pub fn from_json(record: &'a Value, reads: Fields) -> Option<Self> {
        let top = TopLevel::of(record);
        let syscall = Syscall::from_name(top.kind?)?;
        let mut reader = JsonReader::default();
        reader.put(Field::Time, top.ts);
        reader.put(Field::Result, top.result);
        if let Some(module) = top.module {
            reader.read_module(module, reads);
        }
        let reads = if reader.values.module_name.is_none() {
            reads.or(Fields::of(&[Field::Path, Field::DeleteName]))
        } else {
            reads
        };
        if let Some(args) = top.args.filter(|_| reads.meets(Fields::ARGS)) {
            reader.read_args(args, reads);
        }
        if let Some(process) = top.process {
            reader.read_process(process, reads);
        }
        if let Some(parent) = top.parent {
            reader.read_members(parent, reads.and(Fields::PARENT), |key| {
                (key == "exe").then_some(Field::ParentExe)
            });
        }
        if let Some(cause) = top.cause {
            reader.read_members(cause, reads.and(Fields::CAUSE), |key| {
                (key == "request").then_some(Field::Request)
            });
        }
        Some(Self::new(
            RecordJson::Read(record),
            syscall,
            Source::Json(Box::new(reader.values)),
        ))
    }

    /// The event of a record `watch` has just made, its values taken from
    /// `live` as they are; `render` gives its JSON, for messages only.
    pub fn from_live(render: &'a dyn Fn() -> Value, syscall: Syscall, live: Live<'a>) -> Self {
        let record = RecordJson::Live {
            render,
            rendered: OnceCell::new(),
        };
        Self::new(record, syscall, Source::Live(live))
    }

    fn new(record: RecordJson<'a>, syscall: Syscall, source: Source<'a>) -> Self {
        let mut event = Self {
            record,
            syscall,
            source,
            module: None,
            module_key: None,
            clock: OnceCell::new(),
        };
        event.module = event.module_name().or_else(|| match syscall {
            // Until module analysis names it: the name delete_module was
            // given, or the file name of a finit_module path.
            Syscall::DeleteModule => event.delete_name(),
            Syscall::FinitModule => event.path().and_then(name_from_path),
            Syscall::InitModule => None,
        });
        event.module_key = event.module.map(normalise_module_name);
        event
    }

    /// The letters of `module.taint`.
    pub fn taint(&self) -> Option<&str> {
        match &self.source {
            Source::Json(values) => values.taint.as_deref(),
            Source::Live(live) => Some(&live.call.module.as_ref()?.taint.as_ref()?.letters),
        }
    }

    /// Any value of the record, by path, for messages.
    pub fn at(&self, path: &[&str]) -> Option<&Value> {
        let record = match &self.record {
            RecordJson::Read(record) => record,
            RecordJson::Live { render, rendered } => rendered.get_or_init(render),
        };
        value_at(record, path)
    }

    pub fn str_at(&self, path: &[&str]) -> Option<&str> {
        self.at(path)?.as_str()
    }

    /// The text of a value default messages name, taken from a live record
    /// in memory as messages show the JSON (a string as it is, a null or
    /// absent value as `?`), so that such a message renders no JSON. None
    /// for any other path, or for a record read from JSON.
    pub fn live_text(&self, path: &[&str]) -> Option<String> {
        let Source::Live(live) = &self.source else {
            return None;
        };
        let process = &live.call.process;
        Some(match path {
            ["process", "exe"] => process.exe.clone().unwrap_or_else(|| "?".into()),
            ["process", "pid"] => process.pid.to_string(),
            ["process", "uid"] => process.uid.to_string(),
            ["process", "comm"] => process.comm.clone(),
            ["result", "ret"] => live.call.result.as_ref()?.ret.to_string(),
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

    pub fn clock(&self) -> Option<WeekTime> {
        *self.clock.get_or_init(|| week_time_of(self.time()?))
    }
}

/// The module a record `watch` has just made is about, as [`Event::module`]
/// names it for the same record read from JSON.
pub fn module_of<'a>(call: &'a Call, kind: &str) -> Option<&'a str> {
    static NO_JSON: fn() -> Value = || Value::Null;
    let event = Event::from_live(&NO_JSON, Syscall::from_name(kind)?, Live { ts: "", call });
    event.module()
}

/// Takes [`Values`] from a record's JSON in one walk over each object the
/// policy reads, stopping in each once it has what it wants.
#[derive(Default)]
struct JsonReader<'a> {
    values: Values<'a>,
}

impl<'a> JsonReader<'a> {
    fn put(&mut self, field: Field, value: Option<&'a Value>) {
        let Some(value) = value else { return };
        let v = &mut self.values;
        match field {
            Field::Time => v.time = value.as_str(),
            Field::Result => {
                for (key, value) in members(value) {
                    match key {
                        "ok" => v.ok = value.as_bool(),
                        "errno" => v.errno = value.as_str(),
                        _ => {}
                    }
                }
            }
            Field::Exe => v.exe = value.as_str(),
            Field::Comm => v.comm = value.as_str(),
            Field::Cgroup => v.cgroup = value.as_str(),
            Field::Container => v.container = value.as_str(),
            Field::Uid => v.uid = value.as_u64(),
            Field::Auid => v.auid = value.as_u64(),
            Field::Euid => v.euid = value.as_u64(),
            Field::Ancestors => {
                v.ancestors = value
                    .as_array()
                    .map_or(Ancestors::Absent, |a| Ancestors::Json(a));
            }
            Field::ParentExe => v.parent_exe = value.as_str(),
            Field::Path => v.path = value.as_str(),
            Field::Memfd => v.memfd = value.as_bool(),
            Field::Unlinked => v.unlinked = value.as_bool(),
            Field::Params => v.params = value.as_str(),
            Field::DeleteName => v.delete_name = value.as_str(),
            Field::Request => v.request = value.as_str(),
            Field::ModuleName => v.module_name = value.as_str(),
            Field::Taint => v.taint = taint_letters(value),
            Field::Sha256 => v.sha256 = value.as_str(),
            Field::Signer => v.signer = value.as_str(),
            Field::Signed => v.signed = value.as_bool(),
            Field::License => v.license = value.as_str(),
            Field::Intree => v.intree = value.as_bool(),
        }
    }

    /// Stores each member of `object` that `field_of` names as a field in
    /// `wanted`, and stops once it has them all.
    fn read_members(
        &mut self,
        object: &'a Value,
        mut wanted: Fields,
        field_of: impl Fn(&str) -> Option<Field>,
    ) {
        if wanted == Fields::NONE {
            return;
        }
        for (key, value) in members(object) {
            if let Some(field) = field_of(key).filter(|f| wanted.has(*f)) {
                self.put(field, Some(value));
                wanted = wanted.without(field);
                if wanted == Fields::NONE {
                    return;
                }
            }
        }
    }

    fn read_process(&mut self, process: &'a Value, reads: Fields) {
        if reads.has(Field::Container) {
            self.put(Field::Container, value_at(process, &["container", "id"]));
        }
        self.read_members(process, reads.and(Fields::PROCESS), |key| match key {
            "exe" => Some(Field::Exe),
            "comm" => Some(Field::Comm),
            "cgroup" => Some(Field::Cgroup),
            "uid" => Some(Field::Uid),
            "auid" => Some(Field::Auid),
            "euid" => Some(Field::Euid),
            "ancestors" => Some(Field::Ancestors),
            _ => None,
        });
    }

    fn read_args(&mut self, args: &'a Value, reads: Fields) {
        for (key, value) in members(args) {
            let (wanted, field_of): (_, fn(&str) -> Option<Field>) = match key {
                "file" => (Fields::FILE, |key| match key {
                    "path" => Some(Field::Path),
                    "memfd" => Some(Field::Memfd),
                    "unlinked" => Some(Field::Unlinked),
                    _ => None,
                }),
                "params" => (Fields::of(&[Field::Params]), |key| {
                    (key == "value").then_some(Field::Params)
                }),
                "name" => (Fields::of(&[Field::DeleteName]), |key| {
                    (key == "value").then_some(Field::DeleteName)
                }),
                _ => continue,
            };
            self.read_members(value, reads.and(wanted), field_of);
        }
    }

    fn read_module(&mut self, module: &'a Value, reads: Fields) {
        for (key, value) in members(module) {
            match key {
                "name" => self.put(Field::ModuleName, Some(value)),
                "taint" => self.put(Field::Taint, Some(value)),
                "image" if reads.meets(Fields::IMAGE) => self.read_image(value, reads),
                _ => {}
            }
        }
    }

    fn read_image(&mut self, image: &'a Value, reads: Fields) {
        for (key, value) in members(image) {
            match key {
                "sha256" => self.put(Field::Sha256, Some(value)),
                "signature" => {
                    self.read_members(value, reads.and(Fields::SIGNATURE), |key| match key {
                        "signer" => Some(Field::Signer),
                        "signed" => Some(Field::Signed),
                        _ => None,
                    });
                }
                "modinfo" => {
                    self.read_members(value, reads.and(Fields::MODINFO), |key| match key {
                        "license" => Some(Field::License),
                        "intree" => Some(Field::Intree),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
    }
}

/// The letters of `module.taint`: the record's `{"letters":"OE",…}`, or, as
/// people write events for `policy test`, "OE" or ["O","E"].
fn taint_letters(taint: &Value) -> Option<Cow<'_, str>> {
    match taint {
        Value::Object(_) => members(taint)
            .find(|(key, _)| *key == "letters")
            .and_then(|(_, letters)| letters.as_str())
            .map(Cow::Borrowed),
        Value::String(letters) => Some(Cow::Borrowed(letters)),
        Value::Array(items) => Some(Cow::Owned(items.iter().filter_map(Value::as_str).collect())),
        _ => None,
    }
}

/// The members of the record's top level that events read.
#[derive(Default)]
struct TopLevel<'a> {
    kind: Option<&'a str>,
    ts: Option<&'a Value>,
    result: Option<&'a Value>,
    process: Option<&'a Value>,
    parent: Option<&'a Value>,
    args: Option<&'a Value>,
    module: Option<&'a Value>,
    cause: Option<&'a Value>,
}

impl<'a> TopLevel<'a> {
    fn of(record: &'a Value) -> Self {
        let mut top = Self::default();
        for (key, value) in members(record) {
            let slot = match key {
                "kind" => {
                    top.kind = value.as_str();
                    continue;
                }
                "ts" => &mut top.ts,
                "result" => &mut top.result,
                "process" => &mut top.process,
                "parent" => &mut top.parent,
                "args" => &mut top.args,
                "module" => &mut top.module,
                "cause" => &mut top.cause,
                _ => continue,
            };
            *slot = Some(value);
        }
        top
    }
}

/// The members of `value` if it is an object; a walk over them costs less
/// than hashing each key looked for.
fn members(value: &Value) -> impl Iterator<Item = (&str, &Value)> {
    value
        .as_object()
        .into_iter()
        .flatten()
        .map(|(key, value)| (key.as_str(), value))
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

    #[test]
    fn module_name_comes_from_the_module_object_first() {
        let record = json!({"kind":"finit_module","module":{"name":"real"},
            "args":{"file":{"path":"/tmp/other.ko"}}});
        assert_eq!(
            Event::from_json(&record, Fields::ALL).unwrap().module(),
            Some("real")
        );
    }

    #[test]
    fn module_name_falls_back_to_the_path_or_the_delete_argument() {
        let finit = json!({"kind":"finit_module","args":{"file":{"path":"/x/usb-storage.ko.zst"}}});
        assert_eq!(
            Event::from_json(&finit, Fields::ALL).unwrap().module(),
            Some("usb-storage")
        );
        let memfd = json!({"kind":"finit_module","args":{"file":{"path":"/memfd:x"}}});
        assert_eq!(
            Event::from_json(&memfd, Fields::ALL).unwrap().module(),
            None
        );
        let delete = json!({"kind":"delete_module","args":{"name":{"value":"dummy"}}});
        assert_eq!(
            Event::from_json(&delete, Fields::ALL).unwrap().module(),
            Some("dummy")
        );
        let init = json!({"kind":"init_module","args":{}});
        assert_eq!(Event::from_json(&init, Fields::ALL).unwrap().module(), None);
    }

    #[test]
    fn other_records_are_not_events() {
        assert!(Event::from_json(&json!({"kind":"start"}), Fields::ALL).is_none());
        assert!(Event::from_json(&json!({"kind":5}), Fields::ALL).is_none());
        assert!(Event::from_json(&json!([]), Fields::ALL).is_none());
    }

    #[test]
    fn null_is_absent() {
        let record = json!({"kind":"init_module","process":{"exe":null}});
        let event = Event::from_json(&record, Fields::ALL).unwrap();
        assert!(event.at(&["process", "exe"]).is_none());
        assert_eq!(event.exe(), None);
    }

    #[test]
    fn fields_come_from_their_paths() {
        let record = json!({"kind":"finit_module","ts":"t","result":{"ok":true},
            "process":{"exe":"e","comm":"c","cgroup":"g","container":{"runtime":"docker","id":"k"},"uid":1,"auid":2,
                "euid":3,"ancestors":[{"exe":"a"}]},
            "parent":{"exe":"p"},
            "args":{"file":{"path":"/x.ko","memfd":false,"unlinked":true},"params":{"value":"v"}},
            "cause":{"request":"r"},
            "module":{"name":"m","taint":"O","image":{"sha256":"h",
                "signature":{"signer":"s","signed":true},"modinfo":{"license":"l","intree":false}}}});
        let event = Event::from_json(&record, Fields::ALL).unwrap();
        let values = event.values();
        let ancestors = [json!({"exe":"a"})];
        let expected = Values {
            time: Some("t"),
            ok: Some(true),
            errno: None,
            exe: Some("e"),
            comm: Some("c"),
            cgroup: Some("g"),
            container: Some("k"),
            uid: Some(1),
            auid: Some(2),
            euid: Some(3),
            ancestors: Ancestors::Json(&ancestors),
            parent_exe: Some("p"),
            path: Some("/x.ko"),
            memfd: Some(false),
            unlinked: Some(true),
            params: Some("v"),
            delete_name: None,
            request: Some("r"),
            module_name: Some("m"),
            taint: Some("O".into()),
            sha256: Some("h"),
            signer: Some("s"),
            signed: Some(true),
            license: Some("l"),
            intree: Some(false),
        };
        assert_eq!(values, expected);
        assert_eq!(values.ancestors.exes().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn taint_letters_come_from_the_record_or_as_people_write_them() {
        for taint in [
            json!({"raw":12288,"letters":"OE"}),
            json!("OE"),
            json!(["O", "E"]),
        ] {
            let record = json!({"kind":"finit_module","module":{"taint":taint}});
            let event = Event::from_json(&record, Fields::ALL).unwrap();
            let values = event.values();
            assert_eq!(values.taint.as_deref(), Some("OE"), "{taint}");
        }
    }

    #[test]
    fn values_of_another_type_are_absent() {
        let record = json!({"kind":"finit_module","process":{"uid":"0","exe":7},
            "args":{"file":{"memfd":"yes"}},"result":{"ok":1,"errno":5}});
        let event = Event::from_json(&record, Fields::ALL).unwrap();
        let values = event.values();
        assert_eq!(values, Values::default());
    }

    mod live_and_json_agree {
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
                    source: "caller-memory",
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
                    error: Some("unresolved"),
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

        #[test]
        fn for_every_kind_of_call() {
            let calls = [
                (Syscall::FinitModule, finit()),
                (Syscall::InitModule, failed_init()),
                (Syscall::FinitModule, memfd_unfinished()),
                (Syscall::DeleteModule, delete()),
                (Syscall::DeleteModule, unloaded()),
            ];
            for (syscall, call) in calls {
                let json = render(syscall, &call);
                let render = || json.clone();
                let live = Event::from_live(
                    &render,
                    syscall,
                    Live {
                        ts: TS,
                        call: &call,
                    },
                );
                let read = Event::from_json(&json, Fields::ALL).unwrap();
                assert_eq!(live.values(), read.values(), "{json}");
                assert_eq!(live.syscall, read.syscall);
                assert_eq!(live.module(), read.module());
                assert_eq!(live.module_key(), read.module_key());
                assert_ne!(live.values(), Values::default());
                // What the default policy makes of each, messages included.
                let policy = crate::policy::Policy::default_policy(&crate::policy::Context {
                    kernel: "6.1.0-28-amd64".into(),
                    check_owner: false,
                });
                assert_eq!(policy.evaluate_event(&live), policy.evaluate_event(&read));
                // What messages take from the record in memory reads as the JSON.
                let paths: [&[&str]; 5] = [
                    &["process", "exe"],
                    &["process", "pid"],
                    &["process", "uid"],
                    &["process", "comm"],
                    &["result", "ret"],
                ];
                for path in paths {
                    let Some(text) = live.live_text(path) else {
                        continue;
                    };
                    let from_json = match read.at(path) {
                        Some(Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                        None => "?".into(),
                    };
                    assert_eq!(text, from_json, "{path:?} of {json}");
                }
            }
        }
    }

    #[test]
    fn only_the_fields_read_are_taken_but_always_the_module_name() {
        let record = json!({"kind":"finit_module","process":{"exe":"e"},
            "args":{"file":{"path":"/x/usb-storage.ko"}}});
        let event = Event::from_json(&record, Fields::of(&[Field::Request])).unwrap();
        assert_eq!(event.exe(), None);
        assert_eq!(event.path(), Some("/x/usb-storage.ko"));
        assert_eq!(event.module(), Some("usb-storage"));
        assert_eq!(event.module_key(), Some("usb_storage"));
        let event = Event::from_json(&record, Fields::NONE).unwrap();
        assert_eq!(event.module(), Some("usb-storage"));
    }
}
