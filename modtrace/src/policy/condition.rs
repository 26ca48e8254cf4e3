//! Conditions of a rule and their evaluation against one [`Event`].
//!
//! A condition about a field the record lacks is false, so a rule written for
//! fields a later schema adds (module analysis, cause) stays quiet until then.
use std::{borrow::Cow, collections::HashSet, fmt, sync::Arc};

use regex::RegexSet;
use serde_json::Value;

use super::{
    event::{normalise_module_name, Event, Syscall, SyscallBit, WeekTime},
    glob::{Globs, Text},
};

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
}

#[derive(Debug, Clone)]
pub enum Matcher {
    /// Boxed: it holds sets of names, and every condition is as large as
    /// its largest kind.
    Glob(Box<Globs>),
    Regex(RegexSet),
}

impl Pattern {
    /// Whether a value of `field` in `event` matches. Kept out of
    /// `Condition::eval` for the stack frame globset's matching needs.
    #[inline(never)]
    fn holds_for(&self, field: TextField, event: &Event) -> bool {
        field.any_value(event, |value| self.is_match(value))
    }

    fn is_match(&self, text: Text) -> bool {
        match &self.matcher {
            Matcher::Glob(globs) => globs.is_match(text),
            Matcher::Regex(set) => set.is_match(text.raw),
        }
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

    /// The value of the field in `event` (the module's name falls back
    /// to other fields: see [`Event::module`]).
    fn value<'a>(self, event: &Event<'a>) -> Option<&'a str> {
        match self {
            TextField::Module => event.module_name(),
            TextField::Path => event.path(),
            TextField::Exe => event.exe(),
            TextField::Comm => event.comm(),
            TextField::ParentExe | TextField::AncestorExe => event.parent_exe(),
            TextField::Cgroup => event.cgroup(),
            TextField::Container => event.container(),
            TextField::Request => event.request(),
            TextField::Params => event.params(),
            TextField::Signer => event.signer(),
            TextField::License => event.license(),
        }
    }

    /// `value` spelt as this field's values are compared.
    pub fn comparable(self, value: &str) -> Cow<'_, str> {
        match self {
            TextField::Module => normalise_module_name(value),
            _ => Cow::Borrowed(value),
        }
    }

    /// Calls `test` on each value of this field until it returns true.
    pub fn any_value(self, event: &Event, mut test: impl FnMut(Text) -> bool) -> bool {
        match self {
            TextField::Module => event
                .module()
                .zip(event.module_key())
                .is_some_and(|(raw, key)| test(Text { raw, key })),
            TextField::AncestorExe => event
                .parent_exe()
                .into_iter()
                .chain(event.ancestors().exes())
                .map(Text::plain)
                .any(test),
            _ => self.value(event).map(Text::plain).is_some_and(test),
        }
    }

    fn values(self, event: &Event) -> Vec<String> {
        let mut out = Vec::new();
        self.any_value(event, |v| {
            out.push(v.raw.to_owned());
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

    fn value(self, event: &Event) -> Option<bool> {
        match self {
            FlagField::Signed => event.signed(),
            FlagField::Intree => event.intree(),
            FlagField::Memfd => event.memfd(),
            FlagField::Unlinked => event.unlinked(),
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

    fn value(self, event: &Event) -> Option<u64> {
        match self {
            IdField::Uid => event.uid(),
            IdField::Auid => event.auid(),
            IdField::Euid => event.euid(),
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

    fn holds(&self, event: &Event) -> bool {
        match self {
            Outcome::Ok => event.ok() == Some(true),
            Outcome::Error => event.ok() == Some(false),
            Outcome::Errno(name) => event.errno() == Some(name),
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
    fn contains(&self, WeekTime { minute, day_bit }: WeekTime) -> bool {
        let in_day = if self.from <= self.to {
            (self.from..self.to).contains(&minute)
        } else {
            minute >= self.from || minute < self.to
        };
        in_day && self.days & day_bit != 0
    }
}

impl Condition {
    /// The condition evaluated as written, walking the tree: for explaining
    /// it. Rules are judged by their [`super::program::Program`].
    #[inline(never)]
    pub fn eval(&self, event: &Event) -> bool {
        match self {
            Condition::All(all) => all.iter().all(|c| c.eval(event)),
            Condition::Any(any) => any.iter().any(|c| c.eval(event)),
            Condition::Not(inner) => !inner.eval(event),
            test => test.test(event),
        }
    }

    /// A condition other than `all`, `any` and `not`, decided by one field.
    pub fn test(&self, event: &Event) -> bool {
        match self {
            Condition::All(_) | Condition::Any(_) | Condition::Not(_) => self.eval(event),
            Condition::Syscall(mask) => mask & event.syscall.bit() != 0,
            Condition::Text { field, pattern } => pattern.holds_for(*field, event),
            Condition::PathPrefix(prefixes) => event
                .path()
                .is_some_and(|path| prefixes.iter().any(|p| path.starts_with(p.as_str()))),
            Condition::Flag { field, value } => field.value(event) == Some(*value),
            Condition::Id { field, values } => {
                field.value(event).is_some_and(|id| values.contains(&id))
            }
            Condition::Taint(letters) => event.taint().is_some_and(|have| has_any(have, letters)),
            Condition::Sha256(set) => event.sha256().is_some_and(|hash| has_hash(set, hash)),
            Condition::Result(outcomes) => outcomes.iter().any(|o| o.holds(event)),
            Condition::Time(window) => in_window(window, event),
        }
    }

    /// The same condition with the conjuncts of each `all` and the
    /// alternatives of each `any` in order of the work they take, cheapest
    /// first, so that a flag decides before a glob is matched. Conditions
    /// have no effects, so the order changes only how soon an answer comes;
    /// ties keep the order they were written in.
    pub fn cheapest_first(&self) -> Condition {
        let reordered = |items: &[Condition]| {
            let mut items: Vec<Condition> = items.iter().map(Condition::cheapest_first).collect();
            items.sort_by_key(Condition::cost);
            items
        };
        match self {
            Condition::All(items) => Condition::All(reordered(items)),
            Condition::Any(items) => Condition::Any(reordered(items)),
            Condition::Not(inner) => Condition::Not(Box::new(inner.cheapest_first())),
            leaf => leaf.clone(),
        }
    }

    /// Rough work of evaluating the condition, in units of a field lookup.
    fn cost(&self) -> u32 {
        match self {
            Condition::All(items) | Condition::Any(items) => items.iter().map(Self::cost).sum(),
            Condition::Not(inner) => inner.cost(),
            Condition::Syscall(_)
            | Condition::Flag { .. }
            | Condition::Id { .. }
            | Condition::Taint(_)
            | Condition::Result(_) => 1,
            Condition::PathPrefix(_) | Condition::Time(_) => 2,
            Condition::Sha256(_) => 3,
            Condition::Text { pattern, .. } => match pattern.matcher {
                Matcher::Glob(_) => 4,
                Matcher::Regex(_) => 8,
            },
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
            Condition::PathPrefix(_) => json_or_absent(event.path()),
            Condition::Flag { field, .. } => json_or_absent(field.value(event)),
            Condition::Id { field, .. } => json_or_absent(field.value(event)),
            Condition::Taint(_) => json_or_absent(event.taint()),
            Condition::Sha256(_) => json_or_absent(event.sha256()),
            Condition::Result(_) => {
                let (ok, errno) = (event.ok(), event.errno());
                match (ok, errno) {
                    (None, None) => "absent".into(),
                    _ => serde_json::json!({ "ok": ok, "errno": errno }).to_string(),
                }
            }
            Condition::Time(_) => json_or_absent(event.time()),
        };
        format!(" (value: {shown})")
    }
}

fn json_or_absent(value: Option<impl Into<Value>>) -> String {
    value.map_or_else(|| "absent".into(), |v| v.into().to_string())
}

// The two conditions below are kept out of `Condition::eval`, which every
// condition of every rule goes through, as `Pattern::holds_for` is: inlined,
// their temporaries (a lowercased hash, a parsed timestamp) would make each
// call of it pay for a larger stack frame.

#[inline(never)]
fn has_any(have: &str, letters: &str) -> bool {
    have.chars().any(|c| letters.contains(c))
}

#[inline(never)]
fn has_hash(set: &HashSet<String>, hash: &str) -> bool {
    if hash.bytes().any(|b| b.is_ascii_uppercase()) {
        set.contains(&hash.to_ascii_lowercase())
    } else {
        set.contains(hash)
    }
}

#[inline(never)]
fn in_window(window: &TimeWindow, event: &Event) -> bool {
    event.week_time().is_some_and(|time| window.contains(time))
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
