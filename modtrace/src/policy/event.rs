//! Read access to one syscall record as JSON (docs/output.md), the only input
//! of policy evaluation: live records and replayed ones go through here alike.
//! Every accessor returns `None` when the field is absent or null, so that a
//! rule about a field this capture lacks simply does not match.
use std::borrow::Cow;

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

/// One syscall record with the values many rules need extracted once.
pub struct Event<'a> {
    pub record: &'a Value,
    pub syscall: Syscall,
    module: Option<Cow<'a, str>>,
}

impl<'a> Event<'a> {
    /// `None` for records that are not syscall records (start, loss, …).
    pub fn new(record: &'a Value) -> Option<Self> {
        let syscall = Syscall::from_name(record.get("kind")?.as_str()?)?;
        let module = module_name(record, syscall);
        Some(Self {
            record,
            syscall,
            module,
        })
    }

    pub fn at(&self, path: &[&str]) -> Option<&'a Value> {
        value_at(self.record, path)
    }

    pub fn str_at(&self, path: &[&str]) -> Option<&'a str> {
        self.at(path)?.as_str()
    }

    /// The module's name as the record gives it (not normalised).
    pub fn module(&self) -> Option<&str> {
        self.module.as_deref()
    }
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

/// `module.name` once module analysis provides it; until then the name that
/// delete_module was given, or the file name of a finit_module path.
fn module_name(record: &Value, syscall: Syscall) -> Option<Cow<'_, str>> {
    if let Some(name) = value_at(record, &["module", "name"]).and_then(Value::as_str) {
        return Some(Cow::Borrowed(name));
    }
    match syscall {
        Syscall::DeleteModule => value_at(record, &["args", "name", "value"])
            .and_then(Value::as_str)
            .map(Cow::Borrowed),
        Syscall::FinitModule => value_at(record, &["args", "file", "path"])
            .and_then(Value::as_str)
            .and_then(name_from_path)
            .map(Cow::Borrowed),
        Syscall::InitModule => None,
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
        assert_eq!(Event::new(&record).unwrap().module(), Some("real"));
    }

    #[test]
    fn module_name_falls_back_to_the_path_or_the_delete_argument() {
        let finit = json!({"kind":"finit_module","args":{"file":{"path":"/x/usb-storage.ko.zst"}}});
        assert_eq!(Event::new(&finit).unwrap().module(), Some("usb-storage"));
        let memfd = json!({"kind":"finit_module","args":{"file":{"path":"/memfd:x"}}});
        assert_eq!(Event::new(&memfd).unwrap().module(), None);
        let delete = json!({"kind":"delete_module","args":{"name":{"value":"dummy"}}});
        assert_eq!(Event::new(&delete).unwrap().module(), Some("dummy"));
        let init = json!({"kind":"init_module","args":{}});
        assert_eq!(Event::new(&init).unwrap().module(), None);
    }

    #[test]
    fn other_records_are_not_events() {
        assert!(Event::new(&json!({"kind":"start"})).is_none());
        assert!(Event::new(&json!({"kind":5})).is_none());
        assert!(Event::new(&json!([])).is_none());
    }

    #[test]
    fn null_is_absent() {
        let record = json!({"kind":"init_module","process":{"exe":null}});
        assert!(Event::new(&record)
            .unwrap()
            .at(&["process", "exe"])
            .is_none());
    }
}
