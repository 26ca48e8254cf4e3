//! Which conditions of a `deny` rule the kernel can decide at the moment of
//! the load. The LSM programs decide from what the hook has (the opened file,
//! the request string, the image's own name) and from maps filled from the
//! policy; whatever needs userspace (the loader's exe, the image's signature
//! analysis, the call's result) is known only after the load, too late to
//! stop it. The check reads the policy's TOML, so that each refusal points at
//! the key at fault.
use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// Condition keys a deny rule may use (besides `all` and `any`).
const DECIDABLE_KEYS: &[&str] = &["module", "syscall", "load", "request", "memfd", "unlinked"];

/// One reason a deny rule cannot be enforced: where, and what to say.
pub(super) type Refusal = (Range<usize>, String);

/// The refusals for a deny rule's table `rule`, which spans `rule_span`
/// (empty when the kernel can decide every condition).
pub(super) fn refusals(rule_span: Range<usize>, rule: &DeTable) -> Vec<Refusal> {
    let mut out = Vec::new();
    if let Some((key, _)) = rule.get_key_value("allow") {
        out.push((key.span(), undecidable("allow")));
    }
    match rule.get_key_value("when") {
        Some((key, when)) => {
            // A `when` that is not a table is reported by the parser.
            if let Some(table) = when.get_ref().as_table() {
                check_table(table, &mut out);
                if !restricts_to_loads(table) {
                    out.push((key.span(), NO_LOAD_RESTRICTION.into()));
                }
            }
        }
        None => out.push((rule_span, NO_LOAD_RESTRICTION.into())),
    }
    out
}

const NO_LOAD_RESTRICTION: &str = "a deny rule must say which loads it stops: give `load = true`, `syscall = \"init_module\"` or `\"finit_module\"`, or `request`, in `when` or in each of its `any` alternatives";

fn undecidable(key: &str) -> String {
    let hint = match key {
        "module_regex" => ", or \"module\" with globs, which can",
        _ => "",
    };
    format!("condition {key:?} cannot be decided before the load; use action = \"alert\"{hint}")
}

fn check_table(table: &DeTable, out: &mut Vec<Refusal>) {
    for (key, value) in table {
        let name = key.get_ref().as_ref();
        match name {
            "all" | "any" => {
                for item in value.get_ref().as_array().into_iter().flatten() {
                    if let Some(inner) = item.get_ref().as_table() {
                        check_table(inner, out);
                    }
                }
            }
            "syscall" => {
                for (span, text) in strings(value) {
                    if text == "delete_module" {
                        out.push((span, UNLOAD_NOT_DENIABLE.into()));
                    }
                }
            }
            "load" => {
                if matches!(value.get_ref(), DeValue::Boolean(false)) {
                    out.push((value.span(), UNLOAD_NOT_DENIABLE.into()));
                }
            }
            "request" => {
                for (span, text) in strings(value) {
                    if text.contains(['*', '?', '[', ']', '{', '}', '\\']) {
                        out.push((span, format!("request {text:?} cannot be decided before the load: the kernel compares whole request strings, so list them")));
                    }
                }
            }
            key_name if DECIDABLE_KEYS.contains(&key_name) => {}
            _ => out.push((key.span(), undecidable(name))),
        }
    }
}

const UNLOAD_NOT_DENIABLE: &str =
    "a deny rule stops loads and autoloads only; use action = \"alert\" for delete_module";

/// Whether every way `table` can hold names a load syscall or a request:
/// the kernel hooks are on loads, and a rule that could match an unload
/// would judge differently in userspace than in the kernel.
fn restricts_to_loads(table: &DeTable) -> bool {
    let tables = |value: &toml::Spanned<DeValue>| -> Vec<bool> {
        value
            .get_ref()
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item.get_ref().as_table().map(restricts_to_loads))
            .collect()
    };
    table
        .iter()
        .any(|(key, value)| match key.get_ref().as_ref() {
            "syscall" | "load" | "request" => true,
            "all" => tables(value).into_iter().any(|r| r),
            "any" => {
                let alternatives = tables(value);
                !alternatives.is_empty() && alternatives.into_iter().all(|r| r)
            }
            _ => false,
        })
}

fn strings<'v>(value: &'v toml::Spanned<DeValue>) -> Vec<(Range<usize>, &'v str)> {
    match value.get_ref() {
        DeValue::String(s) => vec![(value.span(), s.as_ref())],
        DeValue::Array(items) => items
            .iter()
            .filter_map(|item| match item.get_ref() {
                DeValue::String(s) => Some((item.span(), s.as_ref())),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}
