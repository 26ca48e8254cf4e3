//! Globs of text conditions, decided by plain string comparison where their
//! shape allows it (a name, `**/name`, `prefix*`, `dir/**`, `*suffix`) and by
//! globset otherwise; and the index that finds, for one value, the rules whose
//! required globs it can match.
//!
//! globset prepares a candidate (file name, extension) and runs a strategy per
//! kind of glob on every call; the shapes policies are mostly written in need
//! one comparison, or one hash lookup per distinct length in the index.
use std::collections::{HashMap as StdHashMap, HashSet as StdHashSet};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use super::condition::TextField;

/// Keyed by policy strings and looked up with event values: a fast hash,
/// seeded per process so that crafted values cannot collide on purpose.
type HashMap<K, V> = StdHashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = StdHashSet<K, foldhash::fast::RandomState>;

/// A value as globs test it. Simple shapes compare `key`, the value in the
/// field's spelling for comparison (module names with `_` for `-`, as the
/// patterns are stored); globset tests `raw`, since a character class such
/// as `[_x]` tells the two apart.
#[derive(Debug, Clone, Copy)]
pub struct Text<'v> {
    pub raw: &'v str,
    pub key: &'v str,
}

impl<'v> Text<'v> {
    /// A value of a field compared as it is spelt.
    pub fn plain(raw: &'v str) -> Self {
        Self { raw, key: raw }
    }
}

/// Characters that make a pattern more than a literal (with backslash escapes on).
const WILDCARDS: [char; 7] = ['*', '?', '[', ']', '{', '}', '\\'];

#[derive(Debug, Clone)]
pub enum Glob {
    Simple(Shape),
    /// Any other pattern, as globset compiles it.
    Compiled(globset::Glob),
}

/// Patterns that one string comparison decides, exactly as globset would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// No wildcard: the whole value.
    Exact(String),
    /// `**/name`: the last path component, or the whole value.
    Basename(String),
    /// `literal*`, and `dir/**` as the prefix `dir/`; unless `crosses`, the
    /// rest holds no `/`.
    Prefix { prefix: String, crosses: bool },
    /// `*literal`; unless `crosses`, what comes before holds no `/`.
    Suffix { suffix: String, crosses: bool },
}

impl Shape {
    pub fn matches(&self, key: &str) -> bool {
        match self {
            Shape::Exact(exact) => key == exact,
            Shape::Basename(name) => basename(key) == name,
            Shape::Prefix { prefix, crosses } => key
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| *crosses || !rest.contains('/')),
            Shape::Suffix { suffix, crosses } => key
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| *crosses || !head.contains('/')),
        }
    }
}

fn basename(path: &str) -> &str {
    // Values are short: a plain scan beats the generic string searcher.
    match path.bytes().rposition(|b| b == b'/') {
        Some(slash) => &path[slash + 1..],
        None => path,
    }
}

impl Glob {
    /// `pattern` of a condition on `field`, `{kernel}` already filled in.
    /// In a path field `*` stops at `/` and `**` crosses it; in a module
    /// name `-` and `_` match each other.
    pub fn new(pattern: &str, field: TextField) -> Result<Self, globset::Error> {
        if let Some(shape) = simple_shape(pattern, field) {
            return Ok(Glob::Simple(shape));
        }
        compiled(pattern, field).map(Glob::Compiled)
    }
}

/// `pattern` as globset compiles it for `field`.
fn compiled(pattern: &str, field: TextField) -> Result<globset::Glob, globset::Error> {
    let text = if field == TextField::Module {
        dash_underscore_alike(pattern)
    } else {
        pattern.to_owned()
    };
    GlobBuilder::new(&text)
        .literal_separator(field.is_path())
        .backslash_escape(true)
        .build()
}

fn simple_shape(pattern: &str, field: TextField) -> Option<Shape> {
    let literal = |text: &str| !text.contains(WILDCARDS);
    let key = |text: &str| field.comparable(text).into_owned();
    let crosses = !field.is_path();
    if literal(pattern) {
        return Some(Shape::Exact(key(pattern)));
    }
    if let Some(name) = pattern.strip_prefix("**/") {
        if literal(name) && !name.is_empty() && !name.contains('/') {
            return Some(Shape::Basename(key(name)));
        }
    }
    if let Some(dir) = pattern.strip_suffix("/**") {
        if literal(dir) {
            return Some(Shape::Prefix {
                prefix: key(dir) + "/",
                crosses: true,
            });
        }
    }
    if let Some(prefix) = pattern.strip_suffix('*').filter(|p| literal(p)) {
        return Some(Shape::Prefix {
            prefix: key(prefix),
            crosses,
        });
    }
    if let Some(suffix) = pattern.strip_prefix('*').filter(|s| literal(s)) {
        return Some(Shape::Suffix {
            suffix: key(suffix),
            crosses,
        });
    }
    None
}

/// Rewrites a module-name pattern so that `-` and `_` outside character
/// classes each match either, as the kernel treats them alike.
pub(super) fn dash_underscore_alike(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut in_class = false;
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let next = chars.next();
                match next {
                    Some('-' | '_') if !in_class => out.push_str("[-_]"),
                    Some(n) => {
                        out.push('\\');
                        out.push(n);
                    }
                    None => out.push('\\'),
                }
            }
            '[' if !in_class => {
                in_class = true;
                out.push(c);
            }
            ']' if in_class => {
                in_class = false;
                out.push(c);
            }
            '-' | '_' if !in_class => out.push_str("[-_]"),
            _ => out.push(c),
        }
    }
    out
}

/// The globs of one condition: does a value match any of them?
#[derive(Debug, Clone)]
pub struct Globs {
    /// As written, for the index of rules.
    globs: Vec<Glob>,
    exact: Names,
    basenames: Names,
    affixes: Vec<Shape>,
    /// The compiled ones merged, when there are any.
    compiled: Option<GlobSet>,
}

impl Globs {
    pub fn new(globs: Vec<Glob>) -> Result<Self, globset::Error> {
        let mut exact = Vec::new();
        let mut basenames = Vec::new();
        let mut affixes = Vec::new();
        let mut set = GlobSetBuilder::new();
        let mut any_compiled = false;
        for glob in &globs {
            match glob {
                Glob::Simple(Shape::Exact(name)) => exact.push(name.clone()),
                Glob::Simple(Shape::Basename(name)) => basenames.push(name.clone()),
                Glob::Simple(affix) => affixes.push(affix.clone()),
                Glob::Compiled(compiled) => {
                    set.add(compiled.clone());
                    any_compiled = true;
                }
            }
        }
        let compiled = any_compiled.then(|| set.build()).transpose()?;
        Ok(Self {
            globs,
            exact: Names::new(exact),
            basenames: Names::new(basenames),
            affixes,
            compiled,
        })
    }

    pub fn globs(&self) -> &[Glob] {
        &self.globs
    }

    pub fn is_match(&self, text: Text) -> bool {
        self.exact.contains(text.key)
            || (!self.basenames.is_empty() && self.basenames.contains(basename(text.key)))
            || self.affixes.iter().any(|affix| affix.matches(text.key))
            || self
                .compiled
                .as_ref()
                .is_some_and(|set| set.is_match(text.raw))
    }
}

/// A set of strings, such as the names of a deny list.
#[derive(Debug, Clone)]
struct Names {
    /// A handful is compared in turn, which costs less than hashing the key.
    few: Vec<String>,
    many: HashSet<String>,
}

impl Names {
    const FEW: usize = 4;

    fn new(names: Vec<String>) -> Self {
        if names.len() <= Self::FEW {
            Self {
                few: names,
                many: HashSet::default(),
            }
        } else {
            Self {
                few: Vec::new(),
                many: names.into_iter().collect(),
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.few.is_empty() && self.many.is_empty()
    }

    fn contains(&self, key: &str) -> bool {
        self.few.iter().any(|name| name == key) || self.many.contains(key)
    }
}

/// Rules that require some value of one field to match one of their globs,
/// by glob: what one value can match is found with a lookup per shape (and
/// per distinct length of prefixes and suffixes), not a test per rule.
/// It finds a superset: prefixes and suffixes ignore whether `*` may cross
/// `/`, so each rule found is still checked whole.
#[derive(Debug)]
pub(super) struct GlobIndex {
    pub field: TextField,
    exact: RulesBy,
    basenames: RulesBy,
    prefixes: Affixes,
    suffixes: Affixes,
    compiled: GlobSet,
    /// The rule of each glob in `compiled`.
    compiled_rules: Vec<usize>,
}

/// Rules by a string their globs require.
#[derive(Debug, Default)]
struct RulesBy(HashMap<String, Vec<usize>>);

impl RulesBy {
    /// Lists a rule once per string, even when several of its globs share it.
    fn add(&mut self, key: &str, rule: usize) {
        let rules = self.0.entry(key.to_owned()).or_default();
        if rules.last() != Some(&rule) {
            rules.push(rule);
        }
    }

    fn get(&self, key: &str) -> &[usize] {
        // Most hold a handful of strings: comparing them costs less than
        // hashing the key.
        let rules = if self.0.len() <= 4 {
            self.0
                .iter()
                .find(|(k, _)| k.as_str() == key)
                .map(|(_, r)| r)
        } else {
            self.0.get(key)
        };
        rules.map_or(&[], Vec::as_slice)
    }
}

/// Prefixes or suffixes by their length in bytes.
#[derive(Debug, Default)]
struct Affixes(Vec<(usize, RulesBy)>);

impl Affixes {
    fn add(&mut self, affix: &str, rule: usize) {
        let position = match self.0.iter().position(|(len, _)| *len == affix.len()) {
            Some(position) => position,
            None => {
                self.0.push((affix.len(), RulesBy::default()));
                self.0.len() - 1
            }
        };
        self.0[position].1.add(affix, rule);
    }

    /// Calls `found` for the rules of each affix that `part_of(key, length)`
    /// yields.
    fn find(
        &self,
        key: &str,
        part_of: impl Fn(&str, usize) -> Option<&str>,
        found: &mut impl FnMut(usize),
    ) {
        for (len, rules) in &self.0 {
            if let Some(part) = part_of(key, *len) {
                rules.get(part).iter().copied().for_each(&mut *found);
            }
        }
    }
}

/// Builds a [`GlobIndex`].
pub(super) struct GlobIndexBuilder {
    index: GlobIndex,
    compiled: GlobSetBuilder,
}

impl GlobIndexBuilder {
    pub(super) fn new(field: TextField) -> Self {
        Self {
            index: GlobIndex {
                field,
                exact: RulesBy::default(),
                basenames: RulesBy::default(),
                prefixes: Affixes::default(),
                suffixes: Affixes::default(),
                compiled: GlobSet::empty(),
                compiled_rules: Vec::new(),
            },
            compiled: GlobSetBuilder::new(),
        }
    }

    pub(super) fn field(&self) -> TextField {
        self.index.field
    }

    pub(super) fn add(&mut self, glob: &Glob, rule: usize) {
        let index = &mut self.index;
        match glob {
            Glob::Simple(Shape::Exact(exact)) => index.exact.add(exact, rule),
            Glob::Simple(Shape::Basename(name)) => index.basenames.add(name, rule),
            Glob::Simple(Shape::Prefix { prefix, .. }) => index.prefixes.add(prefix, rule),
            Glob::Simple(Shape::Suffix { suffix, .. }) => index.suffixes.add(suffix, rule),
            Glob::Compiled(compiled) => {
                self.compiled.add(compiled.clone());
                index.compiled_rules.push(rule);
            }
        }
    }

    /// Each glob was built alone already; merging them fails only past
    /// globset's size limits.
    pub(super) fn build(mut self) -> Result<GlobIndex, globset::Error> {
        self.index.compiled = self.compiled.build()?;
        Ok(self.index)
    }
}

impl GlobIndex {
    /// Calls `found` with each rule that `text` may satisfy, possibly more
    /// than once.
    pub(super) fn candidates(&self, text: Text, found: &mut impl FnMut(usize)) {
        let key = text.key;
        self.exact.get(key).iter().copied().for_each(&mut *found);
        self.basenames
            .get(basename(key))
            .iter()
            .copied()
            .for_each(&mut *found);
        self.prefixes.find(key, |key, len| key.get(..len), found);
        self.suffixes.find(
            key,
            |key, len| key.get(key.len().checked_sub(len)?..),
            found,
        );
        if !self.compiled_rules.is_empty() {
            let mut matched = Vec::new();
            self.compiled.matches_into(text.raw, &mut matched);
            for glob in matched {
                found(self.compiled_rules[glob]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What globset alone says, as patterns were matched before shapes.
    fn globset_says(pattern: &str, field: TextField, raw: &str) -> bool {
        compiled(pattern, field)
            .unwrap()
            .compile_matcher()
            .is_match(raw)
    }

    const PATTERNS: [&str; 18] = [
        "",
        "ext4",
        "usb-storage",
        "usb_stor*",
        "**/kmod",
        "/lib/**",
        "/**",
        "mod*",
        "*",
        "*.ko",
        "a/b*",
        "*/x",
        "x/**",
        "*-core",
        "**",
        "**/",
        "a*b",
        "[a-z]*",
    ];
    const VALUES: [&str; 30] = [
        "",
        "ext4",
        "kmod",
        "/usr/bin/kmod",
        "/kmod",
        "x/kmod",
        "kmodx",
        "/lib",
        "/lib/",
        "/lib/x",
        "/lib/x/y",
        "/",
        "mod",
        "module",
        "mod/x",
        "a.ko",
        "/a.ko",
        "a/b",
        "a/bc",
        "a/b/c",
        "x",
        "x/",
        "x/y",
        "usb_storage",
        "usb-storage",
        "usb_stor",
        "usb-stor/x",
        "fw-core",
        "fw_core",
        "é/kmod",
    ];

    #[test]
    fn shapes_decide_as_globset_does() {
        for field in [TextField::Module, TextField::Comm, TextField::Exe] {
            for pattern in PATTERNS {
                let glob = Glob::new(pattern, field).unwrap();
                let globs = Globs::new(vec![glob.clone()]).unwrap();
                for raw in VALUES {
                    let key = field.comparable(raw);
                    let text = Text { raw, key: &key };
                    assert_eq!(
                        globs.is_match(text),
                        globset_says(pattern, field, raw),
                        "{pattern:?} on {raw:?} in {field:?} as {glob:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn plain_shapes_skip_globset() {
        let shape = |pattern| match Glob::new(pattern, TextField::Exe).unwrap() {
            Glob::Simple(shape) => Some(shape),
            Glob::Compiled(_) => None,
        };
        assert_eq!(
            shape("/usr/bin/kmod"),
            Some(Shape::Exact("/usr/bin/kmod".into()))
        );
        assert_eq!(shape("**/kmod"), Some(Shape::Basename("kmod".into())));
        assert_eq!(
            shape("/lib/**"),
            Some(Shape::Prefix {
                prefix: "/lib/".into(),
                crosses: true
            })
        );
        assert_eq!(shape("/usr/*/kmod"), None);
        assert_eq!(shape("[ab]"), None);
    }

    #[test]
    fn the_index_finds_every_rule_a_value_can_match() {
        let field = TextField::Exe;
        let mut builder = GlobIndexBuilder::new(field);
        for (rule, pattern) in PATTERNS.iter().enumerate() {
            builder.add(&Glob::new(pattern, field).unwrap(), rule);
        }
        let index = builder.build().unwrap();
        for raw in VALUES {
            let mut found = Vec::new();
            index.candidates(Text::plain(raw), &mut |rule| found.push(rule));
            for (rule, pattern) in PATTERNS.iter().enumerate() {
                if globset_says(pattern, field, raw) {
                    assert!(found.contains(&rule), "{pattern:?} on {raw:?}");
                }
            }
        }
    }
}
