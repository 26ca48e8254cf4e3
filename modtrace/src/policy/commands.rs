//! `modtrace policy check` and `modtrace policy test`: what a policy says,
//! and why it judges one event as it does.
use std::{fmt::Write as _, fs, os::unix::fs::MetadataExt, path::Path};

use serde_json::Value;

use super::{running_kernel, secure_file, Context, Policy, PolicyError};

#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("the event is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("the event is not a syscall record: its `kind` must be init_module, finit_module or delete_module")]
    NotAnEvent,
    #[error("the event does not fit the record schema (docs/output.md): {0}")]
    Schema(#[from] super::event::SchemaError),
}

/// Offline commands read files the user names; whether `watch` would accept
/// the file is reported, not enforced.
fn offline_context() -> Context {
    Context {
        kernel: running_kernel(),
        check_owner: false,
    }
}

fn load(path: &Path) -> Result<Policy, PolicyError> {
    Policy::load(path, &offline_context())
}

/// The rules of a valid policy, one paragraph each, or every mistake.
pub fn check(path: &Path) -> Result<String, PolicyError> {
    let policy = load(path)?;
    let mut out = format!(
        "{}: valid, {} rules, sha256 {}\n",
        path.display(),
        policy.rules().len(),
        policy.sha256
    );
    if let Err(err) = fs::metadata(path)
        .map_err(|source| secure_file::SecureFileError::Read {
            path: path.into(),
            source,
        })
        .and_then(|meta| secure_file::check(path, meta.uid(), meta.mode()))
    {
        let _ = writeln!(
            out,
            "warning: `modtrace watch --policy` would refuse it: {err}"
        );
    }
    for rule in policy.rules() {
        let state = if rule.enabled { "" } else { " (disabled)" };
        let _ = writeln!(
            out,
            "\n{} [{} {}]{state}: {}",
            rule.id,
            rule.severity.name(),
            rule.action.name(),
            rule.description
        );
        let _ = writeln!(out, "  fires when:");
        out.push_str(&describe(&rule.when, 2));
        if let Some(allow) = &rule.allow {
            let _ = writeln!(out, "  unless allowed by:");
            out.push_str(&describe(allow, 2));
        }
    }
    Ok(out)
}

/// The condition tree, one line per condition.
fn describe(condition: &super::condition::Condition, depth: usize) -> String {
    use super::condition::Condition;
    let mut out = format!("{}{condition}\n", "  ".repeat(depth));
    match condition {
        Condition::All(items) | Condition::Any(items) => {
            if items.is_empty() {
                out = format!("{}always\n", "  ".repeat(depth));
            }
            for item in items {
                out.push_str(&describe(item, depth + 1));
            }
        }
        Condition::Not(inner) => out.push_str(&describe(inner, depth + 1)),
        _ => {}
    }
    out
}

/// Which rules match `event` (a JSON record), each condition marked with
/// whether it held and the value it saw.
pub fn test(path: Option<&Path>, event: &str) -> Result<String, TestError> {
    let policy = match path {
        Some(path) => load(path)?,
        None => Policy::default_policy(&offline_context()),
    };
    let record: Value = serde_json::from_str(event).map_err(TestError::NotJson)?;
    let explained = policy.explain(&record)?.ok_or(TestError::NotAnEvent)?;
    let evaluation = policy.evaluate(&record)?.ok_or(TestError::NotAnEvent)?;
    let mut out = format!("verdict: {}\n", evaluation.verdict.name());
    for m in &evaluation.matches {
        let _ = writeln!(
            out,
            "match: {} [{}] {}",
            m.rule,
            m.severity.name(),
            m.message
        );
    }
    for (id, matched, lines) in explained {
        let _ = writeln!(
            out,
            "\nrule {id}: {}",
            if matched { "MATCHES" } else { "no match" }
        );
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
    }
    Ok(out)
}
