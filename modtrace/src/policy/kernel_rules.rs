//! The policy's deny rules compiled into the tables the LSM programs read
//! (modtrace-common/src/enforce.rs). Pure: the running kernel's module tree
//! comes in as a [`ModuleTree`], so every case is unit tested.
//!
//! Each rule becomes one clause per alternative of its `any`s (a disjunctive
//! normal form); a clause holds the hooks it applies to, the file properties
//! it requires, and the module names and request strings it denies, in a
//! hash map keyed by clause. Module globs with wildcards are expanded against
//! the module tree: the kernel compares whole names. An autoload request is
//! resolved in userspace, here, through `modules.alias`, so that the request
//! `net-pf-21` is denied with the module `rds` that it asks for.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

use modtrace_common::{
    enforce::{
        DenyClause, DenyKey, DENY_CLAUSE_CAP, DENY_FILE_ANY, DENY_FILE_NO, DENY_FILE_YES,
        DENY_HOOK_FINIT_MODULE, DENY_HOOK_INIT_MODULE, DENY_HOOK_REQUEST, DENY_KEY_MODULE,
        DENY_KEY_REQUEST, DENY_NAME_CAP, DENY_RULE_CAP,
    },
    KERNEL_MODULE_NAME_LEN,
};

use super::{
    condition::{Condition, FlagField, Matcher, Pattern, TextField},
    event::{normalise_module_name, Syscall, SyscallBit, LOAD_SYSCALLS},
    glob::{Glob, Shape, Text},
    Rule,
};

/// The modules of the running kernel's tree and the aliases that name them,
/// with `-` folded to `_`.
#[derive(Debug, Default, Clone)]
pub struct ModuleTree {
    pub modules: BTreeSet<String>,
    /// Alias → the modules it resolves to. Only aliases without wildcards:
    /// the kernel compares a request with whole strings.
    pub aliases: BTreeMap<String, BTreeSet<String>>,
}

impl ModuleTree {
    /// Reads `modules.dep` and `modules.alias` in `dir`
    /// (`/lib/modules/$(uname -r)`); a missing file leaves its part empty.
    pub fn read(dir: &Path) -> Self {
        let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap_or_default();
        Self::parse(&read("modules.dep"), &read("modules.alias"))
    }

    /// From the text of `modules.dep` (`kernel/fs/udf/udf.ko.xz: deps…`) and
    /// `modules.alias` (`alias fs-udf udf`).
    pub fn parse(modules_dep: &str, modules_alias: &str) -> Self {
        let modules = modules_dep
            .lines()
            .filter_map(|line| line.split(':').next())
            .filter_map(module_of_file)
            .collect();
        let mut aliases: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for line in modules_alias.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(alias), Some(module)) =
                (words.next(), words.next(), words.next())
            {
                if !alias.contains(['*', '?', '[']) {
                    aliases.entry(fold(alias)).or_default().insert(fold(module));
                }
            }
        }
        Self { modules, aliases }
    }
}

/// `kernel/fs/udf/udf.ko.xz` → `udf`, as the kernel side names a finit
/// file: its basename without `.ko[.xz|.zst|.gz]`, `-` folded to `_`.
fn module_of_file(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|suffix| file.strip_suffix(suffix))
        .filter(|name| !name.is_empty())
        .map(fold)
}

fn fold(name: &str) -> String {
    normalise_module_name(name).into_owned()
}

/// What the kernel side is given: the tables, and the id of each rule slot.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DenyTables {
    /// Rule ids by slot (`DenyClause::rule`, the index of `DENIALS`).
    pub rules: Vec<String>,
    /// At most `DENY_CLAUSE_CAP`; slot `i` of `DENY_CLAUSES`.
    pub clauses: Vec<DenyClause>,
    pub keys: Vec<DenyKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("{count} deny rules; the kernel counts denials for at most {DENY_RULE_CAP}")]
    TooManyRules { count: usize },
    #[error("the deny rules make {count} clauses (one per alternative of each `any`); the kernel checks at most {DENY_CLAUSE_CAP}")]
    TooManyClauses { count: usize },
    #[error("the deny rules name {count} module names and requests; the kernel holds at most {DENY_NAME_CAP}")]
    TooManyNames { count: usize },
    #[error("rule {rule:?}: {name:?} is longer than the {max} bytes of a kernel module name", max = KERNEL_MODULE_NAME_LEN - 1)]
    NameTooLong { rule: String, name: String },
    #[error("rule {rule:?}: condition `{condition}` cannot be decided in the kernel")]
    Undecidable { rule: String, condition: String },
}

/// The deny rules, in order, as kernel tables.
pub fn compile<'r>(
    rules: impl IntoIterator<Item = &'r Rule>,
    tree: &ModuleTree,
) -> Result<DenyTables, CompileError> {
    let mut tables = DenyTables::default();
    for rule in rules {
        let slot = u32::try_from(tables.rules.len()).unwrap_or(u32::MAX);
        tables.rules.push(rule.id.clone());
        let undecidable = |condition: &Condition| CompileError::Undecidable {
            rule: rule.id.clone(),
            condition: condition.to_string(),
        };
        if let Some(allow) = &rule.allow {
            return Err(undecidable(allow));
        }
        for clause in clauses(&rule.when, tree).map_err(|c| undecidable(&c))? {
            tables.add(slot, &rule.id, &clause, tree)?;
        }
    }
    if tables.rules.len() > DENY_RULE_CAP as usize {
        return Err(CompileError::TooManyRules {
            count: tables.rules.len(),
        });
    }
    if tables.clauses.len() > DENY_CLAUSE_CAP as usize {
        return Err(CompileError::TooManyClauses {
            count: tables.clauses.len(),
        });
    }
    if tables.keys.len() > DENY_NAME_CAP as usize {
        return Err(CompileError::TooManyNames {
            count: tables.keys.len(),
        });
    }
    Ok(tables)
}

impl DenyTables {
    fn add(
        &mut self,
        rule: u32,
        rule_id: &str,
        clause: &Clause,
        tree: &ModuleTree,
    ) -> Result<(), CompileError> {
        let index = u32::try_from(self.clauses.len()).unwrap_or(u32::MAX);
        let requests = clause.requests(tree);
        let mut key = |kind: u32, name: &str| -> Result<(), CompileError> {
            self.keys.push(deny_key(index, kind, name).ok_or_else(|| {
                CompileError::NameTooLong {
                    rule: rule_id.to_owned(),
                    name: name.to_owned(),
                }
            })?);
            Ok(())
        };
        for module in clause.modules.iter().flatten() {
            key(DENY_KEY_MODULE, module)?;
        }
        for request in requests.iter().flatten() {
            key(DENY_KEY_REQUEST, request)?;
        }
        self.clauses.push(DenyClause {
            rule,
            hooks: clause.hooks,
            match_module: u32::from(clause.modules.is_some()),
            match_request: u32::from(requests.is_some()),
            memfd: clause.memfd,
            unlinked: clause.unlinked,
        });
        Ok(())
    }
}

fn deny_key(clause: u32, kind: u32, name: &str) -> Option<DenyKey> {
    let mut key = DenyKey {
        clause,
        kind,
        name: [0; KERNEL_MODULE_NAME_LEN],
    };
    // One byte stays NUL, as in the kernel's `struct module::name`.
    key.name
        .get_mut(..name.len())
        .filter(|_| name.len() < KERNEL_MODULE_NAME_LEN)?
        .copy_from_slice(name.as_bytes());
    Some(key)
}

/// One conjunction: `None` sets allow anything.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Clause {
    hooks: u32,
    modules: Option<BTreeSet<String>>,
    requests: Option<BTreeSet<String>>,
    memfd: u32,
    unlinked: u32,
}

const ALL_HOOKS: u32 = DENY_HOOK_INIT_MODULE | DENY_HOOK_FINIT_MODULE | DENY_HOOK_REQUEST;

impl Clause {
    const ANY: Self = Self {
        hooks: ALL_HOOKS,
        modules: None,
        requests: None,
        memfd: DENY_FILE_ANY,
        unlinked: DENY_FILE_ANY,
    };

    /// Both must hold; `None` when they never can.
    fn and(&self, other: &Clause) -> Option<Clause> {
        let hooks = self.hooks & other.hooks;
        let both = |a: &Option<BTreeSet<String>>, b: &Option<BTreeSet<String>>| match (a, b) {
            (Some(a), Some(b)) => Some(a.intersection(b).cloned().collect()),
            (Some(x), None) | (None, Some(x)) => Some(x.clone()),
            (None, None) => None,
        };
        let file = |a: u32, b: u32| match (a, b) {
            (DENY_FILE_ANY, x) | (x, DENY_FILE_ANY) => Some(x),
            (a, b) if a == b => Some(a),
            _ => None,
        };
        let clause = Clause {
            hooks,
            modules: both(&self.modules, &other.modules),
            requests: both(&self.requests, &other.requests),
            memfd: file(self.memfd, other.memfd)?,
            unlinked: file(self.unlinked, other.unlinked)?,
        };
        let empty = |set: &Option<BTreeSet<String>>| set.as_ref().is_some_and(BTreeSet::is_empty);
        (hooks != 0 && !empty(&clause.modules) && !empty(&clause.requests)).then_some(clause)
    }

    /// The request strings the request hook denies, or `None` for every
    /// request: those listed, and those that resolve to a denied module
    /// (its own name, or an alias of it).
    fn requests(&self, tree: &ModuleTree) -> Option<BTreeSet<String>> {
        if self.hooks & DENY_HOOK_REQUEST == 0 {
            return Some(BTreeSet::new());
        }
        let Some(modules) = &self.modules else {
            return self.requests.clone();
        };
        let resolving: BTreeSet<String> = modules
            .iter()
            .cloned()
            .chain(
                tree.aliases
                    .iter()
                    .filter(|(_, targets)| targets.iter().any(|t| modules.contains(t)))
                    .map(|(alias, _)| alias.clone()),
            )
            .collect();
        Some(match &self.requests {
            Some(listed) => listed.intersection(&resolving).cloned().collect(),
            None => resolving,
        })
    }
}

/// `when` as alternatives, each of which is a conjunction the kernel checks;
/// the condition it cannot decide otherwise.
fn clauses(when: &Condition, tree: &ModuleTree) -> Result<Vec<Clause>, Condition> {
    let leaf = |clause: Clause| Ok(vec![clause]);
    match when {
        Condition::All(items) => {
            let mut out = vec![Clause::ANY];
            for item in items {
                let alternatives = clauses(item, tree)?;
                out = out
                    .iter()
                    .flat_map(|a| alternatives.iter().filter_map(move |b| a.and(b)))
                    .collect();
            }
            Ok(out)
        }
        Condition::Any(items) => {
            let mut out = Vec::new();
            for item in items {
                out.extend(clauses(item, tree)?);
            }
            Ok(out)
        }
        Condition::Syscall(mask) => leaf(Clause {
            hooks: hooks_of(*mask),
            ..Clause::ANY
        }),
        Condition::Text {
            field: TextField::Module,
            pattern,
        } => leaf(Clause {
            modules: Some(module_names(pattern, tree).ok_or_else(|| when.clone())?),
            ..Clause::ANY
        }),
        Condition::Text {
            field: TextField::Request,
            pattern,
        } => leaf(Clause {
            hooks: DENY_HOOK_REQUEST,
            requests: Some(exact_names(pattern).ok_or_else(|| when.clone())?),
            ..Clause::ANY
        }),
        Condition::Flag { field, value } => {
            let state = if *value { DENY_FILE_YES } else { DENY_FILE_NO };
            let clause = Clause {
                hooks: DENY_HOOK_FINIT_MODULE,
                ..Clause::ANY
            };
            match field {
                FlagField::Memfd => leaf(Clause {
                    memfd: state,
                    ..clause
                }),
                FlagField::Unlinked => leaf(Clause {
                    unlinked: state,
                    ..clause
                }),
                FlagField::Signed | FlagField::Intree => Err(when.clone()),
            }
        }
        _ => Err(when.clone()),
    }
}

/// Both load syscalls (`load = true`) also stop the autoload requests of
/// what they name: a request is a load asked for by the kernel.
fn hooks_of(mask: u8) -> u32 {
    let mut hooks = 0;
    if mask & Syscall::InitModule.bit() != 0 {
        hooks |= DENY_HOOK_INIT_MODULE;
    }
    if mask & Syscall::FinitModule.bit() != 0 {
        hooks |= DENY_HOOK_FINIT_MODULE;
    }
    if mask & LOAD_SYSCALLS == LOAD_SYSCALLS {
        hooks |= DENY_HOOK_REQUEST;
    }
    hooks
}

/// The names a module glob matches: itself when literal, else the modules
/// of the tree it matches. `None` for regexes.
fn module_names(pattern: &Pattern, tree: &ModuleTree) -> Option<BTreeSet<String>> {
    let Matcher::Glob(globs) = &pattern.matcher else {
        return None;
    };
    let mut names: BTreeSet<String> = globs
        .globs()
        .iter()
        .filter_map(|glob| match glob {
            Glob::Simple(Shape::Exact(name)) => Some(name.clone()),
            _ => None,
        })
        .collect();
    names.extend(
        tree.modules
            .iter()
            .filter(|name| globs.is_match(Text::plain(name)))
            .cloned(),
    );
    Some(names)
}

/// Literal request strings, folded; `None` if any has a wildcard.
fn exact_names(pattern: &Pattern) -> Option<BTreeSet<String>> {
    let Matcher::Glob(globs) = &pattern.matcher else {
        return None;
    };
    globs
        .globs()
        .iter()
        .map(|glob| match glob {
            Glob::Simple(Shape::Exact(name)) => Some(fold(name)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests;
