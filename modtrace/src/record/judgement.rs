//! What the policy adds to the output: the `policy` object of a syscall
//! record, `alert` and `policy_reload` records, and the policy named in
//! `start`. The policy stage makes these; it and the sinks share them here.
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const NAMES: &'static [&'static str] = &["info", "low", "medium", "high", "critical"];
    const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// What to do when a rule matches; ordered so that the strongest wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Recorded in the event's `matches`, nothing more.
    Ignore,
    /// Recorded, and makes the verdict `log`.
    Log,
    /// Also raises an `alert` record.
    Alert,
    /// Also stops the load in the kernel under `watch --enforce`; without
    /// it, the record says the load would have been denied.
    Deny,
}

impl Action {
    pub const NAMES: &'static [&'static str] = &["deny", "alert", "log", "ignore"];

    pub fn name(self) -> &'static str {
        match self {
            Action::Deny => "deny",
            Action::Alert => "alert",
            Action::Log => "log",
            Action::Ignore => "ignore",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "deny" => Some(Action::Deny),
            "alert" => Some(Action::Alert),
            "log" => Some(Action::Log),
            "ignore" => Some(Action::Ignore),
            _ => None,
        }
    }
}

/// The highest action of the rules that matched; `none` when none did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    None,
    Ignore,
    Log,
    Alert,
    Deny,
}

impl Verdict {
    pub const ALL: [Verdict; 5] = [
        Verdict::None,
        Verdict::Ignore,
        Verdict::Log,
        Verdict::Alert,
        Verdict::Deny,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Verdict::None => "none",
            Verdict::Ignore => "ignore",
            Verdict::Log => "log",
            Verdict::Alert => "alert",
            Verdict::Deny => "deny",
        }
    }
}

impl From<Action> for Verdict {
    fn from(action: Action) -> Self {
        match action {
            Action::Ignore => Verdict::Ignore,
            Action::Log => Verdict::Log,
            Action::Alert => Verdict::Alert,
            Action::Deny => Verdict::Deny,
        }
    }
}

/// One rule that matched one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Match {
    pub rule: String,
    pub severity: Severity,
    pub action: Action,
    pub message: String,
}

/// The `policy` object every syscall record carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evaluation {
    pub verdict: Verdict,
    pub matches: Vec<Match>,
    /// Audit mode: a deny rule matched, but the policy is not enforced (no
    /// `watch --enforce`, or `replay`), so the load went ahead.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub would_deny: bool,
}

impl Evaluation {
    /// The matches that raise alerts: a deny rule raises its alert too.
    pub fn alerts(&self) -> impl Iterator<Item = &Match> {
        self.matches.iter().filter(|m| m.action >= Action::Alert)
    }
}

/// The body of an `alert` record: one matched rule of action `alert`, or
/// the closing alert of a window of its repeats.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// The `seq` of the syscall record that raised it.
    pub event_seq: u64,
    pub event_kind: String,
    pub rule: String,
    pub severity: Severity,
    pub message: String,
    /// On the alert that closes a window of repeats only (the policy's deduplication).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dedup: Option<Repeats>,
}

impl Alert {
    /// The alerts that `evaluation` of record `seq`, of `kind`, raises.
    pub fn for_event(seq: u64, kind: &str, evaluation: &Evaluation) -> Vec<Alert> {
        evaluation
            .alerts()
            .map(|m| Alert {
                event_seq: seq,
                event_kind: kind.to_owned(),
                rule: m.rule.clone(),
                severity: m.severity,
                message: m.message.clone(),
                dedup: None,
            })
            .collect()
    }
}

/// What a closing alert adds to an alert record (its `dedup` object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Repeats {
    /// Always true: this alert closes a window (the first alert of a window
    /// carries no `dedup` object).
    pub closing: bool,
    /// Alerts of the rule from the process in the window, the written first
    /// one included.
    pub count: u64,
    /// Of those, the alerts not written: `count - 1`.
    pub suppressed: u64,
    pub window_s: u64,
    pub pid: Option<u64>,
    pub start_ns: Option<u64>,
    /// The record whose alert opened the window, and its time.
    pub first_event_seq: u64,
    pub first_ts: String,
    /// The time of the last record counted (`event_seq` names it).
    pub last_ts: String,
    pub modules: Modules,
}

/// The module names of a window's records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Modules {
    /// Distinct names (`-` and `_` alike), up to the policy's limit.
    pub distinct: u64,
    /// False when there were more than the policy's limit.
    pub exact: bool,
    /// The first the policy's number of distinct names, in the order they came.
    pub sample: Vec<String>,
}

/// Which policy is in force, for the `start` record.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyInfo {
    pub source: String,
    pub sha256: String,
    pub rules: usize,
}

/// The body of a `policy_reload` record. On a rejected reload `error` says
/// why, and the other fields name the policy still in force.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyReload {
    #[serde(flatten)]
    pub policy: PolicyInfo,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
