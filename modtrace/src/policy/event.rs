//! Read access to one syscall record as JSON (docs/output.md), the only input
//! of policy evaluation: live records and replayed ones go through here alike.
//!
//! The values conditions test are taken from the record in one pass when the
//! event is made, by walking each object's members rather than looking keys
//! up one hash at a time, and only from the objects the policy's rules read.
//! A field that is absent or null is `None`, so that a rule about a field this
//! capture lacks simply does not match.
use std::{borrow::Cow, cell::OnceCell};

use chrono::{Datelike, Timelike};
use serde_json::Value;

/// The traced syscalls; the discriminants are bits of a rule's prefilter mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syscall {
    InitModule = 1,
    FinitModule = 2,
    DeleteModule = 4,
}

impl Syscall {
    pub const ALL: [Syscall; 3] = [
        Syscall::InitModule,
        Syscall::FinitModule,
        Syscall::DeleteModule,
    ];
    pub const LOADS: u8 = Syscall::InitModule as u8 | Syscall::FinitModule as u8;
    pub const ANY: u8 = Self::LOADS | Syscall::DeleteModule as u8;

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Syscall::InitModule => "init_module",
            Syscall::FinitModule => "finit_module",
            Syscall::DeleteModule => "delete_module",
        }
    }

    pub fn bit(self) -> u8 {
        self as u8
    }
}

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

/// One syscall record with the values of the fields a policy reads.
pub struct Event<'a> {
    pub record: &'a Value,
    pub syscall: Syscall,
    values: [Option<&'a Value>; FIELD_COUNT],
    module: Option<&'a str>,
    /// `module` as names are compared: `-` spelled `_`.
    module_key: Option<Cow<'a, str>>,
    /// Minute of the day and weekday bit of `ts`, parsed on first use.
    clock: OnceCell<Option<Clock>>,
}

/// When an event happened, as time windows test it (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Minutes after midnight.
    pub minute: u32,
    /// Bit 0 = Monday.
    pub day_bit: u8,
}

impl<'a> Event<'a> {
    /// `None` for records that are not syscall records (start, loss, …).
    /// Fields outside `reads` are left absent; the module's name is always
    /// read, for the index of rules and for messages.
    pub fn new(record: &'a Value, reads: Fields) -> Option<Self> {
        let top = TopLevel::of(record);
        let syscall = Syscall::from_name(top.kind?)?;
        let mut event = Self {
            record,
            syscall,
            values: [None; FIELD_COUNT],
            module: None,
            module_key: None,
            clock: OnceCell::new(),
        };
        event.put(Field::Time, top.ts);
        event.put(Field::Result, top.result);
        if let Some(module) = top.module {
            event.read_module(module, reads);
        }
        let reads = if event.text(Field::ModuleName).is_none() {
            reads.or(Fields::of(&[Field::Path, Field::DeleteName]))
        } else {
            reads
        };
        if let Some(args) = top.args.filter(|_| reads.meets(Fields::ARGS)) {
            event.read_args(args, reads);
        }
        if let Some(process) = top.process {
            event.read_process(process, reads);
        }
        if let Some(parent) = top.parent {
            event.read_members(parent, reads.and(Fields::PARENT), |key| {
                (key == "exe").then_some(Field::ParentExe)
            });
        }
        if let Some(cause) = top.cause {
            event.read_members(cause, reads.and(Fields::CAUSE), |key| {
                (key == "request").then_some(Field::Request)
            });
        }
        event.module = event.module_name();
        event.module_key = event.module.map(normalise_module_name);
        Some(event)
    }

    /// The value of `field`; `None` when absent or null.
    pub fn get(&self, field: Field) -> Option<&'a Value> {
        self.values[field as usize]
    }

    pub fn text(&self, field: Field) -> Option<&'a str> {
        self.get(field)?.as_str()
    }

    /// Any value of the record, by path, for messages: they are formatted
    /// only for rules that matched, so they read the record directly.
    pub fn at(&self, path: &[&str]) -> Option<&'a Value> {
        value_at(self.record, path)
    }

    pub fn str_at(&self, path: &[&str]) -> Option<&'a str> {
        self.at(path)?.as_str()
    }

    /// The module's name as the record gives it (not normalised).
    pub fn module(&self) -> Option<&str> {
        self.module
    }

    /// The module's name normalised (see [`normalise_module_name`]).
    pub fn module_key(&self) -> Option<&str> {
        self.module_key.as_deref()
    }

    pub fn clock(&self) -> Option<Clock> {
        *self.clock.get_or_init(|| clock_of(self.text(Field::Time)?))
    }

    fn put(&mut self, field: Field, value: Option<&'a Value>) {
        self.values[field as usize] = value.filter(|v| !v.is_null());
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

    /// `module.name` once module analysis provides it; until then the name
    /// that delete_module was given, or the file name of a finit_module path.
    fn module_name(&self) -> Option<&'a str> {
        if let Some(name) = self.text(Field::ModuleName) {
            return Some(name);
        }
        match self.syscall {
            Syscall::DeleteModule => self.text(Field::DeleteName),
            Syscall::FinitModule => self.text(Field::Path).and_then(name_from_path),
            Syscall::InitModule => None,
        }
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

fn clock_of(ts: &str) -> Option<Clock> {
    let time = chrono::DateTime::parse_from_rfc3339(ts)
        .ok()?
        .with_timezone(&chrono::Utc);
    Some(Clock {
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
            Event::new(&record, Fields::ALL).unwrap().module(),
            Some("real")
        );
    }

    #[test]
    fn module_name_falls_back_to_the_path_or_the_delete_argument() {
        let finit = json!({"kind":"finit_module","args":{"file":{"path":"/x/usb-storage.ko.zst"}}});
        assert_eq!(
            Event::new(&finit, Fields::ALL).unwrap().module(),
            Some("usb-storage")
        );
        let memfd = json!({"kind":"finit_module","args":{"file":{"path":"/memfd:x"}}});
        assert_eq!(Event::new(&memfd, Fields::ALL).unwrap().module(), None);
        let delete = json!({"kind":"delete_module","args":{"name":{"value":"dummy"}}});
        assert_eq!(
            Event::new(&delete, Fields::ALL).unwrap().module(),
            Some("dummy")
        );
        let init = json!({"kind":"init_module","args":{}});
        assert_eq!(Event::new(&init, Fields::ALL).unwrap().module(), None);
    }

    #[test]
    fn other_records_are_not_events() {
        assert!(Event::new(&json!({"kind":"start"}), Fields::ALL).is_none());
        assert!(Event::new(&json!({"kind":5}), Fields::ALL).is_none());
        assert!(Event::new(&json!([]), Fields::ALL).is_none());
    }

    #[test]
    fn null_is_absent() {
        let record = json!({"kind":"init_module","process":{"exe":null}});
        let event = Event::new(&record, Fields::ALL).unwrap();
        assert!(event.at(&["process", "exe"]).is_none());
        assert!(event.get(Field::Exe).is_none());
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
        let event = Event::new(&record, Fields::ALL).unwrap();
        let strings = [
            (Field::Time, "t"),
            (Field::Exe, "e"),
            (Field::Comm, "c"),
            (Field::Cgroup, "g"),
            (Field::Container, "k"),
            (Field::ParentExe, "p"),
            (Field::Path, "/x.ko"),
            (Field::Params, "v"),
            (Field::Request, "r"),
            (Field::ModuleName, "m"),
            (Field::Taint, "O"),
            (Field::Sha256, "h"),
            (Field::Signer, "s"),
            (Field::License, "l"),
        ];
        for (field, expected) in strings {
            assert_eq!(event.text(field), Some(expected), "{field:?}");
        }
        for (field, expected) in [(Field::Uid, 1), (Field::Auid, 2), (Field::Euid, 3)] {
            assert_eq!(event.get(field).and_then(Value::as_u64), Some(expected));
        }
        for (field, expected) in [
            (Field::Memfd, false),
            (Field::Unlinked, true),
            (Field::Signed, true),
            (Field::Intree, false),
        ] {
            assert_eq!(event.get(field).and_then(Value::as_bool), Some(expected));
        }
        assert_eq!(event.get(Field::Result), Some(&json!({"ok":true})));
        assert_eq!(event.get(Field::Ancestors), Some(&json!([{"exe":"a"}])));
    }

    #[test]
    fn only_the_fields_read_are_taken_but_always_the_module_name() {
        let record = json!({"kind":"finit_module","process":{"exe":"e"},
            "args":{"file":{"path":"/x/usb-storage.ko"}}});
        let event = Event::new(&record, Fields::of(&[Field::Request])).unwrap();
        assert_eq!(event.get(Field::Exe), None);
        assert_eq!(event.get(Field::Path), Some(&json!("/x/usb-storage.ko")));
        assert_eq!(event.module(), Some("usb-storage"));
        assert_eq!(event.module_key(), Some("usb_storage"));
        let event = Event::new(&record, Fields::NONE).unwrap();
        assert_eq!(event.module(), Some("usb-storage"));
    }
}
