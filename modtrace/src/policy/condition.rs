//! Conditions of a rule and their evaluation against one [`Event`].
//!
//! A condition about a field the record lacks is false, so a rule written for
//! fields a later schema adds (module analysis, cause) stays quiet until then.
use std::{collections::HashSet, fmt, sync::Arc};

use chrono::{Datelike, Timelike};
use globset::GlobSet;
use regex::RegexSet;
use serde_json::Value;

use super::event::{normalise_module_name, Event, Syscall};

#[derive(Debug, Clone)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    /// Bit set of [`Syscall`]s.
    Syscall(u8),
    Text {
        field: TextField,
        pattern: Pattern,
    },
    PathPrefix(Vec<String>),
    Flag {
        field: FlagField,
        value: bool,
    },
    Id {
        field: IdField,
        values: Vec<u64>,
    },
    /// Any of these taint letters.
    Taint(String),
    Sha256(Arc<HashSet<String>>),
    Result(Vec<Outcome>),
    Time(TimeWindow),
}

#[derive(Debug, Clone)]
pub struct Pattern {
    /// As written, for explanations.
    pub source: Vec<String>,
    pub matcher: Matcher,
    /// The globs of a glob matcher one by one, so that the policy can merge
    /// them with other rules' into one set per field.
    pub globs: Vec<globset::Glob>,
}

#[derive(Debug, Clone)]
pub enum Matcher {
    Glob(GlobSet),
    Regex(RegexSet),
}

impl Pattern {
    fn is_match(&self, text: &str) -> bool {
        match &self.matcher {
            Matcher::Glob(set) => set.is_match(text),
            Matcher::Regex(set) => set.is_match(text),
        }
    }

    /// Names this pattern matches exactly, when it is a list of plain names
    /// (no wildcard): such rules are found through an index, not a scan.
    pub fn literals(&self) -> Option<Vec<String>> {
        if !matches!(self.matcher, Matcher::Glob(_)) {
            return None;
        }
        self.source
            .iter()
            .map(|p| {
                (!p.contains(['*', '?', '[', ']', '{', '}', '\\']))
                    .then(|| normalise_module_name(p).into_owned())
            })
            .collect()
    }
}

/// String fields that globs and regexes apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextField {
    Module,
    Path,
    Exe,
    Comm,
    ParentExe,
    /// The parent's exe and every `ancestors[].exe` the record carries.
    AncestorExe,
    Cgroup,
    Container,
    Request,
    Params,
    Signer,
    License,
}

impl TextField {
    /// Condition key in the policy file; `<key>_regex` takes regexes.
    pub const ALL: [(&'static str, TextField); 12] = [
        ("module", TextField::Module),
        ("path", TextField::Path),
        ("exe", TextField::Exe),
        ("comm", TextField::Comm),
        ("parent_exe", TextField::ParentExe),
        ("ancestor_exe", TextField::AncestorExe),
        ("cgroup", TextField::Cgroup),
        ("container", TextField::Container),
        ("request", TextField::Request),
        ("params", TextField::Params),
        ("signer", TextField::Signer),
        ("license", TextField::License),
    ];

    pub fn key(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("?", |(k, _)| k)
    }

    /// Fields holding paths, where `*` stops at `/` and `**` crosses it.
    pub fn is_path(self) -> bool {
        matches!(
            self,
            TextField::Path
                | TextField::Exe
                | TextField::ParentExe
                | TextField::AncestorExe
                | TextField::Cgroup
        )
    }

    fn json_path(self) -> &'static [&'static str] {
        match self {
            TextField::Module => &["module", "name"],
            TextField::Path => &["args", "file", "path"],
            TextField::Exe => &["process", "exe"],
            TextField::Comm => &["process", "comm"],
            TextField::ParentExe | TextField::AncestorExe => &["parent", "exe"],
            TextField::Cgroup => &["process", "cgroup"],
            TextField::Container => &["process", "container_id"],
            TextField::Request => &["cause", "request"],
            TextField::Params => &["args", "params", "value"],
            TextField::Signer => &["module", "image", "signature", "signer"],
            TextField::License => &["module", "image", "modinfo", "license"],
        }
    }

    /// Calls `test` on each value of this field until it returns true.
    pub fn any_value(self, event: &Event, test: impl FnMut(&str) -> bool) -> bool {
        match self {
            TextField::Module => event.module().is_some_and(test),
            TextField::AncestorExe => {
                let parent = event.str_at(self.json_path());
                let ancestors = event
                    .at(&["process", "ancestors"])
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.get("exe")?.as_str());
                parent.into_iter().chain(ancestors).any(test)
            }
            _ => event.str_at(self.json_path()).is_some_and(test),
        }
    }

    fn values(self, event: &Event) -> Vec<String> {
        let mut out = Vec::new();
        self.any_value(event, |v| {
            out.push(v.to_owned());
            false
        });
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagField {
    Signed,
    Intree,
    Memfd,
    Unlinked,
}

impl FlagField {
    pub const ALL: [(&'static str, FlagField); 4] = [
        ("signed", FlagField::Signed),
        ("intree", FlagField::Intree),
        ("memfd", FlagField::Memfd),
        ("unlinked", FlagField::Unlinked),
    ];

    fn json_path(self) -> &'static [&'static str] {
        match self {
            FlagField::Signed => &["module", "image", "signature", "signed"],
            FlagField::Intree => &["module", "image", "modinfo", "intree"],
            FlagField::Memfd => &["args", "file", "memfd"],
            FlagField::Unlinked => &["args", "file", "unlinked"],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdField {
    Uid,
    Auid,
    Euid,
}

impl IdField {
    pub const ALL: [(&'static str, IdField); 3] = [
        ("uid", IdField::Uid),
        ("auid", IdField::Auid),
        ("euid", IdField::Euid),
    ];

    fn json_path(self) -> &'static [&'static str] {
        match self {
            IdField::Uid => &["process", "uid"],
            IdField::Auid => &["process", "auid"],
            IdField::Euid => &["process", "euid"],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
    Errno(String),
}

impl Outcome {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ok" => Some(Outcome::Ok),
            "error" => Some(Outcome::Error),
            errno
                if errno.len() > 1
                    && errno.starts_with('E')
                    && errno[1..]
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()) =>
            {
                Some(Outcome::Errno(errno.to_owned()))
            }
            _ => None,
        }
    }

    fn holds(&self, result: &Value) -> bool {
        let ok = result.get("ok").and_then(Value::as_bool);
        match self {
            Outcome::Ok => ok == Some(true),
            Outcome::Error => ok == Some(false),
            Outcome::Errno(name) => result.get("errno").and_then(Value::as_str) == Some(name),
        }
    }
}

/// A daily window in UTC, optionally on some weekdays only. `from > to`
/// wraps past midnight (22:00–06:00).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeWindow {
    /// Minutes after midnight.
    pub from: u32,
    pub to: u32,
    /// Bit 0 = Monday; 0x7f = every day.
    pub days: u8,
}

impl TimeWindow {
    fn contains(&self, ts: &str) -> bool {
        let Ok(time) = chrono::DateTime::parse_from_rfc3339(ts) else {
            return false;
        };
        let time = time.with_timezone(&chrono::Utc);
        let minute = time.hour() * 60 + time.minute();
        let day_bit = 1u8 << time.weekday().num_days_from_monday();
        let in_day = if self.from <= self.to {
            (self.from..self.to).contains(&minute)
        } else {
            minute >= self.from || minute < self.to
        };
        in_day && self.days & day_bit != 0
    }
}

impl Condition {
    pub fn eval(&self, event: &Event) -> bool {
        match self {
            Condition::All(all) => all.iter().all(|c| c.eval(event)),
            Condition::Any(any) => any.iter().any(|c| c.eval(event)),
            Condition::Not(inner) => !inner.eval(event),
            Condition::Syscall(mask) => mask & event.syscall.bit() != 0,
            Condition::Text { field, pattern } => {
                field.any_value(event, |value| pattern.is_match(value))
            }
            Condition::PathPrefix(prefixes) => event
                .str_at(TextField::Path.json_path())
                .is_some_and(|path| prefixes.iter().any(|p| path.starts_with(p.as_str()))),
            Condition::Flag { field, value } => {
                event.at(field.json_path()).and_then(Value::as_bool) == Some(*value)
            }
            Condition::Id { field, values } => event
                .at(field.json_path())
                .and_then(Value::as_u64)
                .is_some_and(|id| values.contains(&id)),
            Condition::Taint(letters) => {
                taint_letters(event).is_some_and(|have| have.chars().any(|c| letters.contains(c)))
            }
            Condition::Sha256(set) => event
                .str_at(&["module", "image", "sha256"])
                .is_some_and(|hash| set.contains(&hash.to_ascii_lowercase())),
            Condition::Result(outcomes) => event
                .at(&["result"])
                .is_some_and(|result| outcomes.iter().any(|o| o.holds(result))),
            Condition::Time(window) => event.str_at(&["ts"]).is_some_and(|ts| window.contains(ts)),
        }
    }

    /// One line per condition, indented by depth, each marked with whether it
    /// held for `event` and the value it looked at: `policy test`'s "why".
    pub fn explain(&self, event: &Event, depth: usize, out: &mut Vec<String>) {
        let mark = if self.eval(event) { "yes" } else { "no " };
        let pad = "  ".repeat(depth);
        out.push(format!("{pad}[{mark}] {self}{}", self.seen(event)));
        match self {
            Condition::All(items) | Condition::Any(items) => {
                for item in items {
                    item.explain(event, depth + 1, out);
                }
            }
            Condition::Not(inner) => inner.explain(event, depth + 1, out),
            _ => {}
        }
    }

    /// What the event holds for this condition, as " (value: …)".
    fn seen(&self, event: &Event) -> String {
        let shown = match self {
            Condition::All(_) | Condition::Any(_) | Condition::Not(_) => return String::new(),
            Condition::Syscall(_) => Value::from(event.syscall.name()).to_string(),
            Condition::Text { field, .. } => match field.values(event).as_slice() {
                [] => "absent".into(),
                [one] => Value::from(one.as_str()).to_string(),
                many => Value::from(many.to_vec()).to_string(),
            },
            Condition::PathPrefix(_) => json_or_absent(event.at(TextField::Path.json_path())),
            Condition::Flag { field, .. } => json_or_absent(event.at(field.json_path())),
            Condition::Id { field, .. } => json_or_absent(event.at(field.json_path())),
            Condition::Taint(_) => json_or_absent(event.at(&["module", "taint"])),
            Condition::Sha256(_) => json_or_absent(event.at(&["module", "image", "sha256"])),
            Condition::Result(_) => json_or_absent(event.at(&["result"])),
            Condition::Time(_) => json_or_absent(event.at(&["ts"])),
        };
        format!(" (value: {shown})")
    }
}

fn json_or_absent(value: Option<&Value>) -> String {
    value.map_or_else(|| "absent".into(), Value::to_string)
}

/// `module.taint` as letters: the record's `{"letters":"OE",…}`, or "OE",
/// or ["O","E"].
fn taint_letters(event: &Event) -> Option<String> {
    match event.at(&["module", "taint"])? {
        Value::Object(taint) => taint.get("letters")?.as_str().map(str::to_owned),
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => Some(items.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::All(_) => write!(f, "all of"),
            Condition::Any(_) => write!(f, "any of"),
            Condition::Not(_) => write!(f, "not"),
            Condition::Syscall(mask) => {
                let names: Vec<_> = Syscall::ALL
                    .iter()
                    .filter(|s| mask & s.bit() != 0)
                    .map(|s| s.name())
                    .collect();
                write!(f, "syscall in {names:?}")
            }
            Condition::Text { field, pattern } => {
                let how = match pattern.matcher {
                    Matcher::Glob(_) => "matches glob",
                    Matcher::Regex(_) => "matches regex",
                };
                write!(f, "{} {how} {:?}", field.key(), pattern.source)
            }
            Condition::PathPrefix(p) => write!(f, "path starts with {p:?}"),
            Condition::Flag { field, value } => {
                let key = FlagField::ALL
                    .iter()
                    .find(|(_, x)| x == field)
                    .map_or("?", |(k, _)| k);
                write!(f, "{key} is {value}")
            }
            Condition::Id { field, values } => {
                let key = IdField::ALL
                    .iter()
                    .find(|(_, x)| x == field)
                    .map_or("?", |(k, _)| k);
                write!(f, "{key} in {values:?}")
            }
            Condition::Taint(letters) => write!(f, "taint has any of {letters:?}"),
            Condition::Sha256(set) => write!(f, "sha256 in a set of {}", set.len()),
            Condition::Result(outcomes) => write!(f, "result is one of {outcomes:?}"),
            Condition::Time(w) => write!(
                f,
                "time (UTC) within {:02}:{:02}-{:02}:{:02} on days mask {:#09b}",
                w.from / 60,
                w.from % 60,
                w.to / 60,
                w.to % 60,
                w.days
            ),
        }
    }
}
