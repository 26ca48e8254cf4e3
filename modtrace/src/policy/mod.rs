//! The policy engine: rules over syscall records, verdicts and alerts.
//!
//! Stage 4. Rules are evaluated against the typed record (docs/output.md):
//! the one `watch` has just made, or the one `replay` deserialises from a
//! capture's line, so that a policy judges a recorded capture exactly as it
//! would have judged the live events. The file format is described in
//! docs/policy.md.
//!
//! A policy is compiled for speed once: it indexes each rule that requires a
//! glob or path prefix by that glob, so that per event only the rules a value
//! can match, and the few rules that require nothing indexable, are checked.
pub mod commands;
pub mod condition;
mod decidable;
pub mod dedup;
pub mod defaults;
pub mod event;
mod glob;
pub mod kernel_rules;
pub mod modprobe_d;
mod parse;
mod program;
pub mod secure_file;

use std::{borrow::Cow, fmt, path::Path};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::record::{
    judgement::{Action, Alert, Evaluation, Match, PolicyInfo, Severity, Verdict},
    Call,
};

use self::{
    condition::{Condition, Matcher, Pattern, TextField},
    event::{Event, ReadRecord, SchemaError, SyscallBit},
    glob::{Glob, GlobIndex, GlobIndexBuilder, Shape},
    program::Program,
};
pub use self::{
    event::Syscall,
    parse::{line_column, Context, ParseError},
};

/// How a match is put into words for the person reading the alert.
#[derive(Debug, Clone)]
pub enum Message {
    /// The description, whether the call failed (and its errno), then what
    /// loaded what.
    Default,
    /// With `{module}`, `{syscall}`, `{exe}`, `{comm}`, `{pid}`, `{uid}`,
    /// `{path}`, `{parent_exe}`, `{result}` and `{rule}` filled in from the
    /// event.
    Template(String),
    /// A modprobe.d directive that the event got around.
    Bypass(modprobe_d::Directive),
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub description: String,
    pub severity: Severity,
    pub action: Action,
    pub message: Message,
    pub when: Condition,
    /// The allow-list: the rule fires only for events this does not match.
    pub allow: Option<Condition>,
    pub enabled: bool,
    /// Syscalls the rule can match at all, checked before anything else.
    syscalls: u8,
    /// The rest of `when`, and not `allow`, laid out cheapest test first.
    program: Program,
}

impl Rule {
    #[expect(clippy::too_many_arguments, reason = "one argument per rule field")]
    pub fn new(
        id: String,
        description: String,
        severity: Severity,
        action: Action,
        message: Message,
        when: Condition,
        allow: Option<Condition>,
        enabled: bool,
    ) -> Self {
        let (syscalls, mut rest) = split_syscalls(&when);
        if let Some(allow) = &allow {
            rest.push(Condition::Not(Box::new(allow.clone())));
        }
        let program = Program::new(&Condition::All(rest).cheapest_first());
        Self {
            id,
            description,
            severity,
            action,
            message,
            when,
            allow,
            enabled,
            syscalls,
            program,
        }
    }

    pub fn matches(&self, event: &Event) -> bool {
        self.syscalls & event.syscall.bit() != 0 && self.program.holds(event)
    }

    /// The conditions of `when` that must all hold.
    fn conjuncts(&self) -> &[Condition] {
        match &self.when {
            Condition::All(all) => all.as_slice(),
            single => std::slice::from_ref(single),
        }
    }

    /// The field and globs of a condition that `when` requires, for the
    /// index: the rule can only match events with a value matching one of
    /// these. Of several, the one that is cheapest to look up.
    fn index_entry(&self) -> Option<(TextField, Vec<Glob>)> {
        self.conjuncts()
            .iter()
            .filter_map(|c| match c {
                Condition::Text {
                    field,
                    pattern:
                        Pattern {
                            matcher: Matcher::Glob(globs),
                            ..
                        },
                } => Some((*field, globs.globs().to_vec())),
                Condition::PathPrefix(prefixes) => {
                    let globs = prefixes.iter().map(|prefix| {
                        Glob::Simple(Shape::Prefix {
                            prefix: prefix.clone(),
                            crosses: true,
                        })
                    });
                    Some((TextField::Path, globs.collect()))
                }
                _ => None,
            })
            .min_by_key(|(field, globs)| {
                let compiled = globs.iter().any(|g| matches!(g, Glob::Compiled(_)));
                (compiled, *field != TextField::Module)
            })
    }

    fn matched(&self, event: &Event) -> Match {
        Match {
            rule: self.id.clone(),
            severity: self.severity,
            action: self.action,
            message: self.message_for(event),
        }
    }

    fn message_for(&self, event: &Event) -> String {
        match &self.message {
            // Written into one string: a flood of failing calls formats one
            // message per record.
            Message::Default => format!(
                "{}{}: {} {} by {} (pid {}, uid {})",
                self.description,
                Outcome(event),
                event.syscall.name(),
                event.module().unwrap_or(match event.syscall {
                    Syscall::InitModule => "an image from memory",
                    _ => "an unnamed module",
                }),
                display(event, &["process", "exe"]),
                event.process().pid,
                event.process().uid,
            ),
            Message::Template(template) => fill(template, &self.id, event),
            Message::Bypass(directive) => directive.explain(event),
        }
    }
}

/// The syscalls a condition can hold for, as far as its top-level `syscall`
/// or `load` conditions say (everything otherwise), and its other conjuncts.
fn split_syscalls(when: &Condition) -> (u8, Vec<Condition>) {
    let conjuncts = match when {
        Condition::All(all) => all.as_slice(),
        single => std::slice::from_ref(single),
    };
    let mut mask = event::ANY_SYSCALL;
    let mut rest = Vec::new();
    for conjunct in conjuncts {
        match conjunct {
            Condition::Syscall(bits) => mask &= bits,
            other => rest.push(other.clone()),
        }
    }
    (mask, rest)
}

/// What became of the call, after a rule's description: nothing when it
/// succeeded, else that it failed and how, so that a description such as
/// "module unload attempt" or "load of an unsigned module" never reads as
/// if a failed call had changed the kernel.
pub(super) struct Outcome<'e, 'a>(pub(super) &'e Event<'a>);

impl std::fmt::Display for Outcome<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.ok() {
            Some(true) => Ok(()),
            Some(false) => write!(f, " failed ({})", Errno(self.0)),
            None => f.write_str(" (no result: the call had not returned)"),
        }
    }
}

/// The errno name of a failed call, or its raw return when it has none.
struct Errno<'e, 'a>(&'e Event<'a>);

impl std::fmt::Display for Errno<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.errno() {
            Some(errno) => f.write_str(errno),
            None => write!(f, "ret {}", display(self.0, &["result", "ret"])),
        }
    }
}

/// `{result}` in a message template: `ok`, the errno name, or `no result`.
fn result_word(event: &Event) -> String {
    match event.ok() {
        Some(true) => "ok".into(),
        Some(false) => Errno(event).to_string(),
        None => "no result".into(),
    }
}

fn display<'e>(event: &'e Event, path: &[&str]) -> Cow<'e, str> {
    if let Some(text) = event.typed_text(path) {
        return text;
    }
    match event.at(path) {
        Some(Value::String(s)) => Cow::Borrowed(s),
        Some(other) => other.to_string().into(),
        None => "?".into(),
    }
}

fn fill(template: &str, rule: &str, event: &Event) -> String {
    const FIELDS: [(&str, &[&str]); 6] = [
        ("{exe}", &["process", "exe"]),
        ("{comm}", &["process", "comm"]),
        ("{pid}", &["process", "pid"]),
        ("{uid}", &["process", "uid"]),
        ("{path}", &["args", "file", "path"]),
        ("{parent_exe}", &["parent", "exe"]),
    ];
    let mut out = template
        .replace("{rule}", rule)
        .replace("{syscall}", event.syscall.name())
        .replace("{module}", event.module().unwrap_or("?"));
    if out.contains("{result}") {
        out = out.replace("{result}", &result_word(event));
    }
    for (placeholder, path) in FIELDS {
        if out.contains(placeholder) {
            out = out.replace(placeholder, &display(event, path));
        }
    }
    out
}

/// Alerts for modules loaded before modtrace started that a modprobe.d
/// directive of `policy` disables: something got around it before modtrace
/// could see the load, most often the initramfs.
pub fn preloaded_alerts<'a>(
    policy: &Policy,
    loaded: impl IntoIterator<Item = &'a str>,
    start_seq: u64,
) -> Vec<Alert> {
    let loaded: Vec<String> = loaded
        .into_iter()
        .map(|name| event::normalise_module_name(name).into_owned())
        .collect();
    policy
        .rules()
        .iter()
        .filter(|rule| rule.enabled && rule.action >= Action::Alert)
        .filter_map(|rule| match &rule.message {
            Message::Bypass(directive) if loaded.contains(&directive.module) => Some(Alert {
                event_seq: start_seq,
                event_kind: "start".to_owned(),
                rule: rule.id.clone(),
                severity: rule.severity,
                message: directive.explain_preloaded(),
                dedup: None,
            }),
            _ => None,
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    File(#[from] secure_file::SecureFileError),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ParseError>),
}

/// Fewer rules on one field are checked one by one: looking a value up in an
/// index costs about as much as checking four rules whole.
const MIN_INDEXED_RULES: usize = 4;

/// A rule's id, whether it matched, and one line per condition saying why.
pub type Explained = (String, bool, Vec<String>);

pub struct Policy {
    rules: Vec<Rule>,
    /// Rules that require a glob or a path prefix on some field, one index
    /// per field.
    indexes: Vec<GlobIndex>,
    /// Every other enabled rule, checked for each event.
    scan: Vec<usize>,
    /// Of the policy text, to tell which policy judged a capture.
    pub sha256: String,
    /// The file the policy came from, or "default".
    pub source: String,
    /// Whether its deny rules are enforced in the kernel (`watch
    /// --enforce`); otherwise a deny match only says `would_deny`.
    enforced: bool,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("source", &self.source)
            .field("sha256", &self.sha256)
            .field("rules", &self.rules.len())
            .finish()
    }
}

impl Policy {
    /// The embedded default policy, for events from `context.kernel`.
    pub fn default_policy(context: &Context) -> Self {
        Self::from_text(defaults::DEFAULT_POLICY, "default", context)
            .expect("the embedded default policy parses (checked by a test)")
    }

    /// Reads and parses a policy file; with `context.check_owner`, only a
    /// root-owned file that no one else can write.
    pub fn load(path: &Path, context: &Context) -> Result<Self, PolicyError> {
        let text = secure_file::read(path, context.check_owner)?;
        let mut policy = Self::from_text(&text, &path.display().to_string(), context)?;
        policy.source = path.display().to_string();
        Ok(policy)
    }

    pub fn from_text(text: &str, file: &str, context: &Context) -> Result<Self, PolicyError> {
        let parsed = parse::parse(text, file, context).map_err(PolicyError::Invalid)?;
        let mut rules = Vec::new();
        if parsed.include_default {
            let default = parse::parse(defaults::DEFAULT_POLICY, "default", context)
                .map_err(PolicyError::Invalid)?;
            // A rule of the file replaces the default rule of the same id.
            rules.extend(
                default
                    .rules
                    .into_iter()
                    .filter(|d| !parsed.rules.iter().any(|r| r.id == d.id)),
            );
        }
        rules.extend(parsed.rules);
        if parsed.modprobe_d {
            let dirs = parsed.modprobe_d_dirs.unwrap_or_else(|| {
                modprobe_d::SYSTEM_DIRS
                    .iter()
                    .map(std::string::ToString::to_string)
                    .collect()
            });
            rules.extend(modprobe_d::rules(&modprobe_d::read_config(&dirs)));
        }
        Ok(Self::from_rules(rules, &sha256_hex(text.as_bytes()), file))
    }

    pub fn from_rules(rules: Vec<Rule>, sha256: &str, source: &str) -> Self {
        let mut groups: Vec<(GlobIndexBuilder, Vec<usize>)> = Vec::new();
        let mut scan = Vec::new();
        for (index, rule) in rules.iter().enumerate().filter(|(_, r)| r.enabled) {
            let Some((field, globs)) = rule.index_entry() else {
                scan.push(index);
                continue;
            };
            let position = match groups.iter().position(|(g, _)| g.field() == field) {
                Some(position) => position,
                None => {
                    groups.push((GlobIndexBuilder::new(field), Vec::new()));
                    groups.len() - 1
                }
            };
            let (builder, indexed) = &mut groups[position];
            for glob in &globs {
                builder.add(glob, index);
            }
            indexed.push(index);
        }
        let mut indexes = Vec::new();
        for (builder, indexed) in groups {
            if indexed.len() < MIN_INDEXED_RULES {
                scan.extend(indexed);
                continue;
            }
            match builder.build() {
                Ok(index) => indexes.push(index),
                // Past globset's size limits the rules are checked one by one.
                Err(_) => scan.extend(indexed),
            }
        }
        scan.sort_unstable();
        Self {
            rules,
            indexes,
            scan,
            sha256: sha256.to_owned(),
            source: source.to_owned(),
            enforced: false,
        }
    }

    /// Marks the deny rules as enforced in the kernel, so that their matches
    /// no longer say `would_deny`.
    pub fn set_enforced(&mut self, enforced: bool) {
        self.enforced = enforced;
    }

    /// The enabled rules of action `deny`, which the kernel enforces.
    pub fn deny_rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules
            .iter()
            .filter(|r| r.enabled && r.action == Action::Deny)
    }

    pub fn info(&self) -> PolicyInfo {
        PolicyInfo {
            source: self.source.clone(),
            sha256: self.sha256.clone(),
            rules: self.rules.iter().filter(|r| r.enabled).count(),
        }
    }

    /// The file at `path`, or the default policy when there is none.
    pub fn load_or_default(path: Option<&Path>, context: &Context) -> Result<Self, PolicyError> {
        match path {
            Some(path) => Self::load(path, context),
            None => Ok(Self::default_policy(context)),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Judges one record read back from JSON (`policy test`); `None` for
    /// records that are not syscall records.
    pub fn evaluate(&self, record: &Value) -> Result<Option<Evaluation>, SchemaError> {
        Ok(ReadRecord::from_json(record)?.map(|read| self.judge_read(record, &read)))
    }

    /// Judges one event, however its values were read.
    pub fn evaluate_event(&self, event: &Event) -> Evaluation {
        // Nothing is allocated unless a rule matches.
        let mut matched = Vec::new();
        let mut check = |index: usize| {
            if self.rules[index].matches(event) {
                matched.push(index);
            }
        };
        self.scan.iter().copied().for_each(&mut check);
        for index in &self.indexes {
            index.field.any_value(event, |value| {
                index.candidates(value, &mut check);
                false
            });
        }
        if matched.is_empty() {
            return Evaluation {
                verdict: Verdict::None,
                matches: Vec::new(),
                would_deny: false,
            };
        }
        // An index may offer a rule twice; matches keep the order of the
        // rules in the file.
        matched.sort_unstable();
        matched.dedup();
        let matches: Vec<Match> = matched
            .into_iter()
            .map(|index| self.rules[index].matched(event))
            .collect();
        let verdict = matches
            .iter()
            .map(|m| Verdict::from(m.action))
            .max()
            .unwrap_or(Verdict::None);
        Evaluation {
            verdict,
            matches,
            would_deny: verdict == Verdict::Deny && !self.enforced,
        }
    }

    /// Judges a record read back from JSON: `read`, the typed record of the
    /// line `json` (which messages may quote).
    pub fn judge_read(&self, json: &Value, read: &ReadRecord) -> Evaluation {
        self.evaluate_event(&Event::read(json, read))
    }

    /// Judges capture line `line`, read as `read` (replay).
    pub fn judge_line(&self, line: &str, read: &ReadRecord) -> Evaluation {
        self.evaluate_event(&Event::read_line(line, read))
    }

    /// Judges a record `watch` has just made, as it is in memory; `render`
    /// gives its JSON, called only if a matched rule's message needs it.
    /// The evaluation is the record's `policy` object.
    pub fn judge_call(
        &self,
        syscall: Syscall,
        ts: &str,
        call: &Call,
        render: &dyn Fn() -> Value,
    ) -> Evaluation {
        self.evaluate_event(&Event::live(render, syscall, ts, call))
    }

    /// For each enabled rule: whether it matched `record`, and why, one line
    /// per condition.
    pub fn explain(&self, record: &Value) -> Result<Option<Vec<Explained>>, SchemaError> {
        let Some(read) = ReadRecord::from_json(record)? else {
            return Ok(None);
        };
        let event = Event::read(record, &read);
        let explained = self
            .rules
            .iter()
            .filter(|r| r.enabled)
            .map(|rule| {
                let mut lines = Vec::new();
                rule.when.explain(&event, 1, &mut lines);
                if let Some(allow) = &rule.allow {
                    lines.push("  allow-list (the rule fires only if this is no):".into());
                    allow.explain(&event, 2, &mut lines);
                }
                (rule.id.clone(), rule.matches(&event), lines)
            })
            .collect();
        Ok(Some(explained))
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The running kernel's release, for `{kernel}` in paths.
pub fn running_kernel() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
