//! `modtrace audit`: one finding per check of the hardening guide, each with
//! the evidence read (and where from) and, for anything but a pass, the
//! commands that fix it. The audit itself changes nothing.
//!
//! docs/audit.md documents the checks, the JSON schema and the exit codes.
mod auditing;
mod deny;
mod host;
mod initramfs;
mod integrity;
mod kernel;
mod modules;
mod render;
#[cfg(test)]
mod tests;

use serde::Serialize;
use serde_json::Value;

pub use host::Host;
pub use render::{fix_script, table};

use super::ReadError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    /// Could not be determined; never a guess.
    Unknown,
    Warn,
    Fail,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Unknown => "unknown",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }

    /// Pass when nothing was found, `otherwise` when something was.
    pub fn pass_unless(found: bool, otherwise: Status) -> Status {
        if found {
            otherwise
        } else {
            Status::Pass
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Section {
    Boot,
    Kernel,
    Modules,
    DenyList,
    Initramfs,
    Auditing,
    Integrity,
}

impl Section {
    pub fn title(self) -> &'static str {
        match self {
            Section::Boot => "Boot and signatures",
            Section::Kernel => "Kernel state",
            Section::Modules => "Loaded modules",
            Section::DenyList => "CIS deny list (modprobe.d)",
            Section::Initramfs => "Initramfs",
            Section::Auditing => "Auditing of module loads",
            Section::Integrity => "Module files on disk",
        }
    }
}

/// One thing read, and where from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evidence {
    pub source: String,
    pub value: String,
}

/// What one check found.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub status: Status,
    pub summary: String,
    pub evidence: Vec<Evidence>,
    /// Shell commands; a line starting with `#` is an instruction no
    /// command can carry out (firmware settings).
    pub fix: Vec<String>,
    /// Check-specific values (counts, lists), documented in docs/audit.md.
    pub data: Value,
    /// Some of what it needed could only be read as root.
    pub needs_root: bool,
}

impl Outcome {
    pub fn new(status: Status, summary: impl Into<String>) -> Self {
        Self {
            status,
            summary: summary.into(),
            evidence: Vec::new(),
            fix: Vec::new(),
            data: Value::Null,
            needs_root: false,
        }
    }

    /// A check that could not read what it needs.
    pub fn unreadable(err: &ReadError) -> Self {
        let summary = if err.needs_root() {
            format!(
                "{} is readable by root only: run as root",
                err.path.display()
            )
        } else {
            err.to_string()
        };
        let mut outcome = Self::new(Status::Unknown, summary);
        outcome.needs_root = err.needs_root();
        outcome.evidence(err.path.display(), err.source.to_string())
    }

    #[expect(
        clippy::needless_pass_by_value,
        reason = "a builder taking paths, numbers and strings alike reads best at its many call sites"
    )]
    pub fn evidence(mut self, source: impl ToString, value: impl ToString) -> Self {
        self.evidence.push(Evidence {
            source: source.to_string(),
            value: value.to_string(),
        });
        self
    }

    pub fn fix(mut self, command: impl Into<String>) -> Self {
        self.fix.push(command.into());
        self
    }

    pub fn data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }
}

/// A check: a stable id, a title, and the function that makes it.
#[derive(Debug)]
pub struct Check {
    pub id: &'static str,
    pub section: Section,
    pub title: &'static str,
    run: fn(&Host) -> Outcome,
}

/// Every check, in the order of the report.
pub const CHECKS: &[Check] = &[
    kernel::SECURE_BOOT,
    kernel::LOCKDOWN,
    kernel::SIG_ENFORCE,
    kernel::MODULES_DISABLED,
    kernel::TAINT,
    modules::COUNT,
    modules::UNUSED,
    modules::UNSIGNED,
    modules::OUT_OF_TREE,
    modules::PROPRIETARY,
    deny::CIS_LIST,
    deny::INSTALL_FALSE,
    deny::BLACKLIST_ONLY,
    deny::LOADED,
    deny::CONTRADICTIONS,
    initramfs::FRESH,
    initramfs::DENIED_MODULES,
    auditing::MODULE_SYSCALLS,
    integrity::BASELINE,
];

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub id: &'static str,
    pub section: Section,
    pub title: &'static str,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The whole audit, as `--format json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub version: u32,
    pub root: String,
    pub kernel: Option<String>,
    pub as_root: bool,
    /// The checks that could not be made in full without root.
    pub not_checked_without_root: Vec<&'static str>,
    pub counts: Counts,
    pub findings: Vec<Finding>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    pub pass: usize,
    pub warn: usize,
    pub fail: usize,
    pub unknown: usize,
}

/// The report's schema version (docs/audit.md).
pub const REPORT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
#[error("no check {id}; the checks are: {known}")]
pub struct UnknownCheck {
    id: String,
    known: String,
}

/// The checks `ids` names (every check when empty), in report order.
pub fn select(ids: &[String]) -> Result<Vec<&'static Check>, UnknownCheck> {
    if let Some(id) = ids.iter().find(|id| !CHECKS.iter().any(|c| c.id == *id)) {
        return Err(UnknownCheck {
            id: id.clone(),
            known: CHECKS.iter().map(|c| c.id).collect::<Vec<_>>().join(", "),
        });
    }
    Ok(CHECKS
        .iter()
        .filter(|c| ids.is_empty() || ids.iter().any(|id| id == c.id))
        .collect())
}

pub fn run(host: &Host, checks: &[&Check]) -> Report {
    let findings: Vec<Finding> = checks
        .iter()
        .map(|check| Finding {
            id: check.id,
            section: check.section,
            title: check.title,
            outcome: (check.run)(host),
        })
        .collect();
    let mut counts = Counts::default();
    for finding in &findings {
        *match finding.outcome.status {
            Status::Pass => &mut counts.pass,
            Status::Warn => &mut counts.warn,
            Status::Fail => &mut counts.fail,
            Status::Unknown => &mut counts.unknown,
        } += 1;
    }
    Report {
        version: REPORT_VERSION,
        root: host.root.dir().display().to_string(),
        kernel: host.release.as_ref().ok().cloned(),
        as_root: nix::unistd::geteuid().is_root(),
        not_checked_without_root: findings
            .iter()
            .filter(|f| f.outcome.needs_root)
            .map(|f| f.id)
            .collect(),
        counts,
        findings,
    }
}

impl Report {
    /// 0 when every check passed, 1 when any warned or could not be
    /// determined, 2 when any failed.
    pub fn exit_code(&self) -> u8 {
        match self.findings.iter().map(|f| f.outcome.status).max() {
            Some(Status::Fail) => 2,
            Some(Status::Warn | Status::Unknown) => 1,
            Some(Status::Pass) | None => 0,
        }
    }
}
