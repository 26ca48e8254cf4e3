//! Policy file (TOML) → rules. Every mistake is reported with the file, line
//! and column of the key or value at fault, and parsing goes on past it so
//! that one `policy check` run lists them all.
use std::{borrow::Cow, collections::HashSet, fmt, ops::Range, path::Path, sync::Arc};

use regex::{RegexBuilder, RegexSetBuilder};
use toml::{
    de::{DeTable, DeValue},
    Spanned,
};

use super::{
    condition::{Condition, FlagField, IdField, Matcher, Outcome, Pattern, TextField, TimeWindow},
    decidable,
    event::{Syscall, SyscallBit, LOAD_SYSCALLS},
    glob::{dash_underscore_alike, Glob, Globs},
    secure_file, Action, Message, Rule, Severity,
};

/// One mistake in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// What a policy file says, before modprobe.d rules are added.
#[derive(Debug, Default)]
pub(super) struct Parsed {
    pub rules: Vec<Rule>,
    pub include_default: bool,
    pub modprobe_d: bool,
    /// Directories to read modprobe configuration from instead of the
    /// system's (for tests and for judging another host's capture).
    pub modprobe_d_dirs: Option<Vec<String>>,
}

/// Settings that parsing substitutes into rules.
#[derive(Debug, Clone)]
pub struct Context {
    /// Replaces `{kernel}` in paths: the kernel the events come from.
    pub kernel: String,
    /// Whether hash-list files must pass the ownership check (not for tests
    /// run as a user, never for the embedded policy, which names none).
    pub check_owner: bool,
}

pub(super) fn parse(text: &str, file: &str, context: &Context) -> Result<Parsed, Vec<ParseError>> {
    let mut parser = Parser {
        file,
        text,
        context,
        errors: Vec::new(),
    };
    let parsed = match DeTable::parse(text) {
        Ok(doc) => parser.document(doc.get_ref()),
        Err(err) => {
            let span = err.span().unwrap_or(0..0);
            parser.error(span, err.message().trim_end());
            Parsed::default()
        }
    };
    if parser.errors.is_empty() {
        Ok(parsed)
    } else {
        Err(parser.errors)
    }
}

type Table<'i> = DeTable<'i>;
type Item<'i> = Spanned<DeValue<'i>>;

struct Parser<'a> {
    file: &'a str,
    text: &'a str,
    context: &'a Context,
    errors: Vec<ParseError>,
}

const RULE_KEYS: &[&str] = &[
    "id",
    "description",
    "severity",
    "action",
    "message",
    "enabled",
    "when",
    "allow",
];
const POLICY_KEYS: &[&str] = &[
    "version",
    "include_default",
    "modprobe_d",
    "modprobe_d_dirs",
];

impl Parser<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = line_column(self.text, span.start);
        self.errors.push(ParseError {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
        });
    }

    fn document(&mut self, doc: &Table) -> Parsed {
        let mut parsed = Parsed::default();
        let mut ids: Vec<(String, usize)> = Vec::new();
        for (key, item) in doc {
            match key.get_ref().as_ref() {
                "policy" => {
                    if let Some(table) = self.table(item, "[policy]") {
                        self.policy_settings(table, &mut parsed);
                    }
                }
                "rule" => {
                    for rule_item in self.array(item, "[[rule]]") {
                        if let Some(rule) = self.rule(rule_item, &mut ids) {
                            parsed.rules.push(rule);
                        }
                    }
                }
                other => self.unknown_key(key, other, "at the top level", &["policy", "rule"]),
            }
        }
        parsed
    }

    fn policy_settings(&mut self, table: &Table, parsed: &mut Parsed) {
        for (key, item) in table {
            match key.get_ref().as_ref() {
                "version" => {
                    if let Some(version) = self.integer(item) {
                        if version != 1 {
                            self.error(
                                item.span(),
                                format!("policy version {version} is not supported; this modtrace reads version 1"),
                            );
                        }
                    }
                }
                "include_default" => {
                    parsed.include_default = self.boolean(item).unwrap_or(false);
                }
                "modprobe_d" => parsed.modprobe_d = self.boolean(item).unwrap_or(false),
                "modprobe_d_dirs" => {
                    parsed.modprobe_d_dirs = Some(
                        self.strings(item)
                            .into_iter()
                            .map(|s| s.get_ref().to_string())
                            .collect(),
                    );
                }
                other => self.unknown_key(key, other, "in [policy]", POLICY_KEYS),
            }
        }
    }

    fn rule(&mut self, item: &Item, ids: &mut Vec<(String, usize)>) -> Option<Rule> {
        let table = self.table(item, "a [[rule]]")?;
        for (key, _) in table {
            let name = key.get_ref().as_ref();
            if !RULE_KEYS.contains(&name) {
                self.unknown_key(key, name, "in [[rule]]", RULE_KEYS);
            }
        }
        let errors_before = self.errors.len();
        let id = self.rule_id(item, table, ids);
        let severity = match table.get("severity") {
            Some(v) => self.keyword(v, "severity", Severity::from_name, Severity::NAMES),
            None => {
                self.error(
                    item.span(),
                    "rule lacks `severity` (info, low, medium, high or critical)",
                );
                None
            }
        };
        let action = match table.get("action") {
            Some(v) => self.keyword(v, "action", Action::from_name, Action::NAMES),
            None => Some(Action::Alert),
        };
        if action == Some(Action::Deny) {
            for (span, message) in decidable::refusals(item.span(), table) {
                self.error(span, message);
            }
        }
        let description = table
            .get("description")
            .and_then(|v| self.string(v))
            .map(std::string::ToString::to_string);
        let message = table
            .get("message")
            .and_then(|v| self.string(v))
            .map(|s| Message::Template(s.to_string()));
        let enabled = table
            .get("enabled")
            .and_then(|v| self.boolean(v))
            .unwrap_or(true);
        let when = table.get("when").and_then(|v| self.condition_table(v));
        let allow = table.get("allow").and_then(|v| self.condition_table(v));
        if self.errors.len() > errors_before {
            return None;
        }
        let id = id?;
        Some(Rule::new(
            id.clone(),
            description.unwrap_or_else(|| id.clone()),
            severity?,
            action?,
            message.unwrap_or(Message::Default),
            when.unwrap_or(Condition::All(Vec::new())),
            allow,
            enabled,
        ))
    }

    fn rule_id(
        &mut self,
        item: &Item,
        table: &Table,
        ids: &mut Vec<(String, usize)>,
    ) -> Option<String> {
        let Some(value) = table.get("id") else {
            self.error(item.span(), "rule lacks `id`");
            return None;
        };
        let id = self.string(value)?.to_string();
        let valid = !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
        if !valid {
            self.error(
                value.span(),
                format!("rule id {id:?} may only hold letters, digits, `-`, `_`, `.` and `:`"),
            );
            return None;
        }
        let line = line_column(self.text, value.span().start).0;
        if let Some((_, first)) = ids.iter().find(|(seen, _)| *seen == id) {
            let first = *first;
            self.error(
                value.span(),
                format!("duplicate rule id {id:?} (first defined on line {first})"),
            );
            return None;
        }
        ids.push((id.clone(), line));
        Some(id)
    }

    /// A table of conditions, all of which must hold.
    fn condition_table(&mut self, item: &Item) -> Option<Condition> {
        let table = self.table(item, "a table of conditions")?;
        let mut all = Vec::new();
        for (key, value) in table {
            if let Some(condition) = self.condition(key, value) {
                all.push(condition);
            }
        }
        Some(match all.len() {
            1 => all.pop()?,
            _ => Condition::All(all),
        })
    }

    fn condition(&mut self, key: &Spanned<Cow<str>>, value: &Item) -> Option<Condition> {
        let name = key.get_ref().as_ref();
        if let Some((field, regex)) = text_field(name) {
            return self.text_condition(field, regex, value);
        }
        if let Some((_, field)) = FlagField::ALL.iter().find(|(k, _)| *k == name) {
            let value = self.boolean(value)?;
            return Some(Condition::Flag {
                field: *field,
                value,
            });
        }
        if let Some((_, field)) = IdField::ALL.iter().find(|(k, _)| *k == name) {
            let values = self.ids(value)?;
            return Some(Condition::Id {
                field: *field,
                values,
            });
        }
        match name {
            "all" | "any" => {
                if !value.get_ref().is_array() {
                    self.type_error(value, "an array of condition tables");
                    return None;
                }
                let items = self.array(value, "an array of condition tables");
                if items.is_empty() {
                    self.error(
                        value.span(),
                        format!("`{name}` needs at least one condition table"),
                    );
                    return None;
                }
                let conditions = items
                    .iter()
                    .filter_map(|i| self.condition_table(i))
                    .collect();
                Some(if name == "all" {
                    Condition::All(conditions)
                } else {
                    Condition::Any(conditions)
                })
            }
            "not" => Some(Condition::Not(Box::new(self.condition_table(value)?))),
            "syscall" => self.syscalls(value),
            "load" => {
                let load = self.boolean(value)?;
                let mask = if load {
                    LOAD_SYSCALLS
                } else {
                    Syscall::DeleteModule.bit()
                };
                Some(Condition::Syscall(mask))
            }
            "path_prefix" => {
                let prefixes = self.non_empty_strings(value)?;
                Some(Condition::PathPrefix(
                    prefixes
                        .iter()
                        .map(|p| p.get_ref().replace("{kernel}", &self.context.kernel))
                        .collect(),
                ))
            }
            "taint" => self.taint(value),
            "sha256" => {
                let hashes = self.non_empty_strings(value)?;
                let mut set = HashSet::new();
                for hash in hashes {
                    set.insert(self.sha256_hex(hash.get_ref(), hash.span())?);
                }
                Some(Condition::Sha256(Arc::new(set)))
            }
            "sha256_file" => self.sha256_file(value),
            "result" => {
                let mut outcomes = Vec::new();
                for text in self.non_empty_strings(value)? {
                    match Outcome::parse(text.get_ref()) {
                        Some(o) => outcomes.push(o),
                        None => self.error(
                            text.span(),
                            format!("result {:?} is not `ok`, `error` or an errno name such as \"ENOENT\"", text.get_ref()),
                        ),
                    }
                }
                Some(Condition::Result(outcomes))
            }
            "time" => self.time(value),
            other => {
                let mut known: Vec<String> = CONDITION_KEYS
                    .iter()
                    .map(std::string::ToString::to_string)
                    .collect();
                for (k, _) in TextField::ALL {
                    known.push(k.to_owned());
                    known.push(format!("{k}_regex"));
                }
                known.extend(FlagField::ALL.iter().map(|(k, _)| k.to_string()));
                known.extend(IdField::ALL.iter().map(|(k, _)| k.to_string()));
                let known: Vec<&str> = known.iter().map(String::as_str).collect();
                self.unknown_key(key, other, "as a condition", &known);
                None
            }
        }
    }

    fn text_condition(&mut self, field: TextField, regex: bool, value: &Item) -> Option<Condition> {
        let patterns = self.non_empty_strings(value)?;
        let source: Vec<String> = patterns.iter().map(|p| p.get_ref().to_string()).collect();
        let matcher = if regex {
            self.regexes(field, &patterns, value)?
        } else {
            self.globs(field, &patterns, value)?
        };
        Some(Condition::Text {
            field,
            pattern: Pattern { source, matcher },
        })
    }

    fn globs(
        &mut self,
        field: TextField,
        patterns: &[Spanned<Cow<str>>],
        value: &Item,
    ) -> Option<Matcher> {
        let mut globs = Vec::new();
        let mut ok = true;
        for pattern in patterns {
            let text = pattern
                .get_ref()
                .replace("{kernel}", &glob_literal(&self.context.kernel));
            match Glob::new(&text, field) {
                Ok(glob) => globs.push(glob),
                Err(err) => {
                    ok = false;
                    self.error(
                        pattern.span(),
                        format!("bad glob {:?}: {}", pattern.get_ref(), glob_reason(&err)),
                    );
                }
            }
        }
        if !ok {
            return None;
        }
        match Globs::new(globs) {
            Ok(globs) => Some(Matcher::Glob(Box::new(globs))),
            Err(err) => {
                self.error(
                    value.span(),
                    format!("these globs are too large together: {}", glob_reason(&err)),
                );
                None
            }
        }
    }

    fn regexes(
        &mut self,
        field: TextField,
        patterns: &[Spanned<Cow<str>>],
        value: &Item,
    ) -> Option<Matcher> {
        let mut anchored = Vec::new();
        for pattern in patterns {
            let mut text = pattern.get_ref().to_string();
            if field == TextField::Module {
                text = dash_underscore_alike(&text);
            }
            // Each regex must match the whole value: an allow-list written as
            // `ext4` must not also allow `myext4rootkit`.
            let text = format!("^(?:{text})$");
            // The same limit as the set below: a regex that compiles alone
            // but not in the set would otherwise vanish from the rule.
            if let Err(err) = RegexBuilder::new(&text)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
            {
                self.error(
                    pattern.span(),
                    format!("bad regex {:?}: {}", pattern.get_ref(), regex_reason(&err)),
                );
                return None;
            }
            anchored.push(text);
        }
        match RegexSetBuilder::new(anchored)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
        {
            Ok(set) => Some(Matcher::Regex(set)),
            Err(err) => {
                self.error(
                    value.span(),
                    format!(
                        "these regexes are too large together: {}",
                        regex_reason(&err)
                    ),
                );
                None
            }
        }
    }

    fn syscalls(&mut self, value: &Item) -> Option<Condition> {
        let mut mask = 0;
        for name in self.non_empty_strings(value)? {
            match Syscall::from_name(name.get_ref()) {
                Some(s) => mask |= s.bit(),
                None => self.error(
                    name.span(),
                    format!(
                        "unknown syscall {:?}; use init_module, finit_module or delete_module",
                        name.get_ref()
                    ),
                ),
            }
        }
        Some(Condition::Syscall(mask))
    }

    fn taint(&mut self, value: &Item) -> Option<Condition> {
        let letters = self.string(value)?;
        if letters.is_empty() || !letters.chars().all(|c| c.is_ascii_uppercase()) {
            self.error(
                value.span(),
                format!("taint {letters:?} must be kernel taint letters such as \"POE\""),
            );
            return None;
        }
        Some(Condition::Taint(letters.to_string()))
    }

    fn sha256_hex(&mut self, text: &str, span: Range<usize>) -> Option<String> {
        if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            Some(text.to_ascii_lowercase())
        } else {
            self.error(span, format!("{text:?} is not a sha256 (64 hex digits)"));
            None
        }
    }

    /// A hash list in `sha256sum` format (the hash, then optionally a path).
    fn sha256_file(&mut self, value: &Item) -> Option<Condition> {
        let path = self.string(value)?.to_string();
        let text = match secure_file::read(Path::new(&path), self.context.check_owner) {
            Ok(text) => text,
            Err(err) => {
                self.error(value.span(), err.to_string());
                return None;
            }
        };
        let mut set = HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let hash = line.split_whitespace().next().unwrap_or_default();
            if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
                self.error(
                    value.span(),
                    format!("{path}:{}: {hash:?} is not a sha256 (64 hex digits)", n + 1),
                );
                return None;
            }
            set.insert(hash.to_ascii_lowercase());
        }
        Some(Condition::Sha256(Arc::new(set)))
    }

    fn time(&mut self, value: &Item) -> Option<Condition> {
        let table = self.table(
            value,
            "a table such as { from = \"22:00\", to = \"06:00\" }",
        )?;
        let mut window = TimeWindow {
            from: 0,
            to: 24 * 60,
            days: 0x7f,
        };
        for (key, item) in table {
            match key.get_ref().as_ref() {
                "from" => window.from = self.clock_time(item)?,
                "to" => window.to = self.clock_time(item)?,
                "days" => {
                    window.days = 0;
                    for day in self.non_empty_strings(item)? {
                        match DAYS
                            .iter()
                            .position(|d| *d == day.get_ref().to_ascii_lowercase())
                        {
                            Some(i) => window.days |= 1 << i,
                            None => self.error(
                                day.span(),
                                format!(
                                    "{:?} is not a day; use mon, tue, wed, thu, fri, sat or sun",
                                    day.get_ref()
                                ),
                            ),
                        }
                    }
                }
                other => self.unknown_key(key, other, "in time", &["from", "to", "days"]),
            }
        }
        Some(Condition::Time(window))
    }

    fn clock_time(&mut self, item: &Item) -> Option<u32> {
        let text = self.string(item)?;
        let parsed = text.split_once(':').and_then(|(h, m)| {
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60 && text.len() == 5).then_some(h * 60 + m)
        });
        if parsed.is_none() {
            self.error(item.span(), format!("time {text:?} is not HH:MM (UTC)"));
        }
        parsed
    }

    fn ids(&mut self, value: &Item) -> Option<Vec<u64>> {
        let items: Vec<&Item> = match value.get_ref() {
            DeValue::Array(items) => items.iter().collect(),
            _ => vec![value],
        };
        let mut ids = Vec::new();
        for item in items {
            let id = self.integer(item)?;
            match u64::try_from(id) {
                Ok(id) if id <= u64::from(u32::MAX) => ids.push(id),
                _ => {
                    self.error(
                        item.span(),
                        format!("{id} is not a user id (0 to 4294967295)"),
                    );
                    return None;
                }
            }
        }
        if ids.is_empty() {
            self.error(value.span(), "the list is empty");
            return None;
        }
        Some(ids)
    }

    fn keyword<T: Copy>(
        &mut self,
        item: &Item,
        what: &str,
        from_name: fn(&str) -> Option<T>,
        names: &[&str],
    ) -> Option<T> {
        let text = self.string(item)?;
        let found = from_name(text);
        if found.is_none() {
            self.error(
                item.span(),
                format!("{what} {text:?} is not one of {}", names.join(", ")),
            );
        }
        found
    }

    fn unknown_key(&mut self, key: &Spanned<Cow<str>>, name: &str, place: &str, known: &[&str]) {
        let hint = closest(name, known)
            .map(|k| format!("; did you mean `{k}`?"))
            .unwrap_or_default();
        self.error(key.span(), format!("unknown key `{name}` {place}{hint}"));
    }

    fn type_error(&mut self, item: &Item, expected: &str) {
        self.error(
            item.span(),
            format!("expected {expected}, found {}", item.get_ref().type_str()),
        );
    }

    fn table<'v, 'i>(&mut self, item: &'v Item<'i>, expected: &str) -> Option<&'v Table<'i>> {
        let table = item.get_ref().as_table();
        if table.is_none() {
            self.type_error(item, expected);
        }
        table
    }

    fn array<'v, 'i>(&mut self, item: &'v Item<'i>, expected: &str) -> Vec<&'v Item<'i>> {
        match item.get_ref().as_array() {
            Some(items) => items.iter().collect(),
            None => {
                self.type_error(item, expected);
                Vec::new()
            }
        }
    }

    fn string<'v>(&mut self, item: &'v Item) -> Option<&'v str> {
        let text = item.get_ref().as_str();
        if text.is_none() {
            self.type_error(item, "a string");
        }
        text
    }

    fn boolean(&mut self, item: &Item) -> Option<bool> {
        let value = item.get_ref().as_bool();
        if value.is_none() {
            self.type_error(item, "true or false");
        }
        value
    }

    fn integer(&mut self, item: &Item) -> Option<i64> {
        let value = item
            .get_ref()
            .as_integer()
            .and_then(|i| i64::from_str_radix(i.as_str(), i.radix()).ok());
        if value.is_none() {
            self.type_error(item, "an integer");
        }
        value
    }

    /// A string or an array of strings, as spanned strings.
    fn strings<'i>(&mut self, item: &Item<'i>) -> Vec<Spanned<Cow<'i, str>>> {
        let single = |item: &Item<'i>| match item.get_ref() {
            DeValue::String(s) => Some(Spanned::new(item.span(), s.clone())),
            _ => None,
        };
        match item.get_ref() {
            DeValue::String(_) => single(item).into_iter().collect(),
            DeValue::Array(items) => {
                let mut out = Vec::new();
                for element in items {
                    match single(element) {
                        Some(s) => out.push(s),
                        None => self.type_error(element, "a string"),
                    }
                }
                out
            }
            _ => {
                self.type_error(item, "a string or an array of strings");
                Vec::new()
            }
        }
    }

    fn non_empty_strings<'i>(&mut self, item: &Item<'i>) -> Option<Vec<Spanned<Cow<'i, str>>>> {
        let errors_before = self.errors.len();
        let strings = self.strings(item);
        if self.errors.len() > errors_before {
            return None;
        }
        if strings.is_empty() {
            self.error(item.span(), "the list is empty");
            return None;
        }
        Some(strings)
    }
}

const CONDITION_KEYS: &[&str] = &[
    "all",
    "any",
    "not",
    "syscall",
    "load",
    "path_prefix",
    "taint",
    "sha256",
    "sha256_file",
    "result",
    "time",
];

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// `exe` → (Exe, glob); `exe_regex` → (Exe, regex).
fn text_field(key: &str) -> Option<(TextField, bool)> {
    let (name, regex) = match key.strip_suffix("_regex") {
        Some(name) => (name, true),
        None => (key, false),
    };
    TextField::ALL
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, f)| (*f, regex))
}

/// The most memory one `*_regex` condition's compiled regexes may take.
const REGEX_SIZE_LIMIT: usize = 1 << 22;

fn glob_reason(err: &globset::Error) -> String {
    err.kind().to_string()
}

/// The regex crate's messages span several lines; keep the last, which says
/// what is wrong.
fn regex_reason(err: &regex::Error) -> String {
    let text = err.to_string();
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(&text)
        .trim()
        .trim_start_matches("error: ")
        .to_owned()
}

/// 1-based line and column (in characters) of byte `offset`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The known key nearest to a misspelt one, if it is near enough to be a typo.
fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// `text` as a glob that matches it literally: a kernel release is a name,
/// not a pattern (and in replay it comes from the capture).
fn glob_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "?*[]{}\\,".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
