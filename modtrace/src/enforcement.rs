//! `modtrace enforce status` and `modtrace enforce release`: the pinned
//! enforcement (kernel/pinned.rs) as an operator sees and ends it, without a
//! collector. A release is written to [`RELEASE_LOG`], which the next
//! `watch` reports in its capture (a `release` record) and then empties.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::Path,
};

use serde::Serialize;

use crate::{
    clock::Clock,
    enrich::process,
    record::Release,
    kernel::{
        enforce::EnforceError,
        pinned::{self, PinnedMaps, PinnedState, PIN_DIR},
    },
    sink::Format,
};

/// Where releases wait for the next capture (tmpfs: a reboot, which ends
/// enforcement too, clears it).
pub const RELEASE_LOG: &str = "/run/modtrace/releases.ndjson";

#[derive(Debug, thiserror::Error)]
pub enum EnforceCommandError {
    #[error(transparent)]
    Enforce(#[from] EnforceError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: &'static str,
        source: std::io::Error,
    },
}

/// `enforce status --format json`.
#[derive(Debug, Serialize)]
pub struct Status {
    pub enforcing: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_dir: Option<&'static str>,
    /// When the programs were first pinned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<StatusPolicy>,
    /// Denials per deny rule since the policy was switched in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny_rules: Option<Vec<StatusRule>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_denials: Option<u64>,
    /// The `watch` that reports the denials, if one runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collector: Option<StatusCollector>,
}

#[derive(Debug, Serialize)]
pub struct StatusPolicy {
    pub sha256: String,
    pub source: String,
    pub active_since: String,
}

#[derive(Debug, Serialize)]
pub struct StatusRule {
    pub id: String,
    pub denials: u64,
}

#[derive(Debug, Serialize)]
pub struct StatusCollector {
    pub attached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// The pinned state, or `None` when nothing is pinned.
fn pinned_state() -> Result<Option<PinnedState>, EnforceError> {
    if !Path::new(PIN_DIR).exists() {
        return Ok(None);
    }
    PinnedMaps::open(Path::new(PIN_DIR))?.state().map(Some)
}

pub fn status() -> Result<Status, EnforceCommandError> {
    let Some(state) = pinned_state()? else {
        return Ok(Status {
            enforcing: false,
            pin_dir: None,
            since: None,
            policy: None,
            deny_rules: None,
            total_denials: None,
            collector: None,
        });
    };
    let attached = collector_alive(state.collector.pid, state.collector.start_ticks);
    Ok(Status {
        enforcing: true,
        pin_dir: Some(PIN_DIR),
        since: Some(Clock::unix_rfc3339(state.pinned_unix_s)),
        policy: Some(StatusPolicy {
            sha256: state.active.policy_sha256.clone(),
            source: state.active.source.clone(),
            active_since: Clock::unix_rfc3339(state.active.active_since_unix_s),
        }),
        total_denials: Some(state.active.rules.iter().map(|r| r.denials).sum()),
        deny_rules: Some(
            state
                .active
                .rules
                .iter()
                .map(|r| StatusRule {
                    id: r.id.clone(),
                    denials: r.denials,
                })
                .collect(),
        ),
        collector: Some(StatusCollector {
            attached,
            pid: attached.then_some(state.collector.pid),
        }),
    })
}

/// Whether the collector recorded in the pins still runs: its pid, started
/// when it said (a reused pid is another process).
fn collector_alive(pid: u32, start_ticks: u64) -> bool {
    pid != 0
        && process::read_proc_text(Path::new(&format!("/proc/{pid}/stat")))
            .and_then(|s| process::start_time_ticks(&s))
            == Some(start_ticks)
}

/// `status` as `enforce status` prints it.
pub fn render_status(status: &Status, format: Format) -> String {
    match format {
        Format::Json => format!("{}\n", serde_json::to_value(status).unwrap_or_default()),
        Format::Text => status_text(status),
    }
}

fn status_text(status: &Status) -> String {
    let (Some(since), Some(policy), Some(rules), Some(collector)) = (
        &status.since,
        &status.policy,
        &status.deny_rules,
        &status.collector,
    ) else {
        return "not enforcing: nothing is pinned under /sys/fs/bpf/modtrace\n".into();
    };
    let mut text = format!(
        "enforcing since {since} (pinned under {PIN_DIR})\npolicy {} (sha256 {}), in force since {}\n",
        policy.source, policy.sha256, policy.active_since
    );
    text += &match collector.pid {
        Some(pid) => format!("collector: attached (watch, pid {pid})\n"),
        None => "collector: none attached (denials are counted in the kernel and reported by the next watch --enforce)\n".into(),
    };
    text += &format!(
        "deny rules ({}), denials: {}\n",
        rules.len(),
        status.total_denials.unwrap_or(0)
    );
    for rule in rules {
        text += &format!("  {:<40} {}\n", rule.id, rule.denials);
    }
    text
}

/// `enforce release`: ends enforcement and logs it for the next capture;
/// returns what to print.
pub fn release() -> Result<String, EnforceCommandError> {
    let Some(state) = pinned_state()? else {
        pinned::release()?;
        return Ok("not enforcing: nothing was pinned\n".into());
    };
    let entry = Release {
        released_at: Clock.rfc3339(None),
        by_pid: std::process::id(),
        by_uid: nix::unistd::getuid().as_raw(),
        by_exe: fs::read_link("/proc/self/exe")
            .ok()
            .map(|p| p.display().to_string()),
        policy_sha256: state.active.policy_sha256.clone(),
        policy_source: state.active.source.clone(),
        denials: state
            .active
            .rules
            .iter()
            .map(|r| (r.id.clone(), r.denials))
            .collect(),
    };
    // Logged first: a release that could not be logged does not happen.
    log_release(&entry)?;
    pinned::release()?;
    tracing::info!(
        "enforcement released (policy {}, {} denials since it was switched in)",
        entry.policy_sha256,
        entry.denials.values().sum::<u64>()
    );
    Ok(format!(
        "released: enforcement ended; {PIN_DIR} removed; logged in {RELEASE_LOG} for the next capture\n"
    ))
}

fn log_release(entry: &Release) -> Result<(), EnforceCommandError> {
    let io = |what, path| move |source| EnforceCommandError::Io { what, path, source };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create("/run/modtrace")
        .map_err(io("creating", "/run/modtrace"))?;
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(RELEASE_LOG)
        .map_err(io("opening", RELEASE_LOG))?;
    let line = serde_json::to_string(entry).unwrap_or_default();
    writeln!(file, "{line}").map_err(io("writing", RELEASE_LOG))
}

/// The releases logged since the last capture took them, removed from the
/// log; each line that does not parse is returned as an error text.
pub fn take_releases() -> Vec<Result<Release, String>> {
    let Ok(text) = fs::read_to_string(RELEASE_LOG) else {
        return Vec::new();
    };
    let _ = fs::remove_file(RELEASE_LOG);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{RELEASE_LOG}: {e}: {l}")))
        .collect()
}
