//! `modtrace enforce status|release|allow|lock`: the pinned enforcement
//! (kernel/pinned.rs) as an operator sees and changes it, without a
//! collector. Each change is written to [`COMMAND_LOG`], which the running
//! `watch` (or else the next) reports in its capture (`enforce_command`
//! records) and then empties.
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
    kernel::{
        enforce::EnforceError,
        pinned::{self, PinnedMaps, PinnedState, PIN_DIR},
    },
    record::{EnforceCommand, EnforceCommandKind},
    sink::Format,
};

/// Where enforce commands wait for a capture (tmpfs: a reboot, which ends
/// enforcement too, clears it).
pub const COMMAND_LOG: &str = "/run/modtrace/enforce-commands.ndjson";
/// [`COMMAND_LOG`] renamed while a collector takes it.
const TAKEN_LOG: &str = "/run/modtrace/enforce-commands.taken";

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
    #[error("nothing is enforced (nothing is pinned under {PIN_DIR}): start `modtrace watch --enforce` first")]
    NotEnforcing,
    #[error("`enforce {0}` needs root")]
    NotRoot(&'static str),
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
    /// Whether loading is locked (`enforce lock`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked: Option<bool>,
    /// `enforce allow`s that have not expired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temporary_allows: Option<Vec<StatusAllow>>,
}

#[derive(Debug, Serialize)]
pub struct StatusAllow {
    pub module: String,
    pub until: String,
    pub seconds_left: u64,
}

impl Status {
    fn not_enforcing() -> Self {
        Self {
            enforcing: false,
            pin_dir: None,
            since: None,
            policy: None,
            deny_rules: None,
            total_denials: None,
            collector: None,
            locked: None,
            temporary_allows: None,
        }
    }
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

/// The pinned maps, or `None` when nothing is pinned.
fn pinned_maps() -> Result<Option<PinnedMaps>, EnforceError> {
    if !Path::new(PIN_DIR).exists() {
        return Ok(None);
    }
    PinnedMaps::open(Path::new(PIN_DIR)).map(Some)
}

fn pinned_state() -> Result<Option<PinnedState>, EnforceError> {
    pinned_maps()?.map(|maps| maps.state()).transpose()
}

pub fn status() -> Result<Status, EnforceCommandError> {
    let Some(mut maps) = pinned_maps()? else {
        return Ok(Status::not_enforcing());
    };
    let state = maps.state()?;
    let now = monotonic_ns();
    let temporary_allows = maps
        .allows(now)?
        .into_iter()
        .map(|(module, until)| StatusAllow {
            module,
            until: wall_clock_of_monotonic(until),
            seconds_left: (until - now).div_ceil(1_000_000_000),
        })
        .collect();
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
        locked: Some(state.locked),
        temporary_allows: Some(temporary_allows),
    })
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`, which the kernel
/// side compares allows' expiries with.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

/// The wall-clock time (RFC 3339, seconds) of CLOCK_MONOTONIC `at`.
fn wall_clock_of_monotonic(at: u64) -> String {
    let ahead_s = at.saturating_sub(monotonic_ns()) / 1_000_000_000;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Clock::unix_rfc3339(now_s + ahead_s)
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
    if status.locked == Some(true) {
        text += "locked: only the modules loaded at the lock may load\n";
    }
    for allow in status.temporary_allows.iter().flatten() {
        text += &format!(
            "temporarily allowed: {} until {} ({} s left)\n",
            allow.module, allow.until, allow.seconds_left
        );
    }
    text
}

/// `enforce release`: ends enforcement and logs it for the capture;
/// returns what to print.
pub fn release() -> Result<String, EnforceCommandError> {
    require_root("release")?;
    let Some(state) = pinned_state()? else {
        pinned::release()?;
        return Ok("not enforcing: nothing was pinned\n".into());
    };
    let denials: std::collections::BTreeMap<String, u64> = state
        .active
        .rules
        .iter()
        .map(|r| (r.id.clone(), r.denials))
        .collect();
    let total: u64 = denials.values().sum();
    // Logged first: a release that could not be logged does not happen.
    log_command(EnforceCommandKind::Release {
        policy_sha256: state.active.policy_sha256.clone(),
        policy_source: state.active.source.clone(),
        denials,
    })?;
    pinned::release()?;
    tracing::info!(
        "enforcement released (policy {}, {total} denials since it was switched in)",
        state.active.policy_sha256
    );
    Ok(format!(
        "released: enforcement ended; {PIN_DIR} removed; logged in {COMMAND_LOG} for the capture\n"
    ))
}

/// `enforce allow NAME --for DURATION`: `name` may load for `duration`,
/// whatever denies it; the kernel lets the allow expire by itself.
pub fn allow(name: &str, duration: std::time::Duration) -> Result<String, EnforceCommandError> {
    require_root("allow")?;
    let mut maps = pinned_maps()?.ok_or(EnforceCommandError::NotEnforcing)?;
    let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    let until = monotonic_ns().saturating_add(nanos);
    let until_text = wall_clock_of_monotonic(until);
    log_command(EnforceCommandKind::Allow {
        module: name.to_owned(),
        until: until_text.clone(),
        seconds: duration.as_secs(),
    })?;
    maps.allow(name, until)?;
    tracing::warn!("{name} may load until {until_text}, whatever the policy or the lock says");
    Ok(format!("allowed: {name} may load until {until_text}\n"))
}

/// `enforce lock`: from now on only the modules loaded now (from
/// /proc/modules) and `also` may load.
pub fn lock(also: &[String]) -> Result<String, EnforceCommandError> {
    require_root("lock")?;
    let mut maps = pinned_maps()?.ok_or(EnforceCommandError::NotEnforcing)?;
    let modules =
        fs::read_to_string("/proc/modules").map_err(|source| EnforceCommandError::Io {
            what: "reading",
            path: "/proc/modules",
            source,
        })?;
    let mut keep: Vec<String> = modules
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    keep.extend(also.iter().cloned());
    log_command(EnforceCommandKind::Lock {
        kept: keep.len(),
        also: also.to_vec(),
    })?;
    maps.lock(&keep)?;
    tracing::warn!(
        "module loading locked: {} modules may still load",
        keep.len()
    );
    Ok(format!(
        "locked: only the {} modules loaded now{} may load; `modtrace enforce allow NAME --for 10m` unblocks one\n",
        keep.len(),
        if also.is_empty() { "" } else { " and those named" }
    ))
}

fn require_root(command: &'static str) -> Result<(), EnforceCommandError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(EnforceCommandError::NotRoot(command))
    }
}

/// Appends `command` to [`COMMAND_LOG`] under an exclusive lock, which the
/// collector taking the log waits for.
fn log_command(command: EnforceCommandKind) -> Result<(), EnforceCommandError> {
    let io = |what, path| move |source| EnforceCommandError::Io { what, path, source };
    let entry = EnforceCommand {
        at: Clock.rfc3339(None),
        by_pid: std::process::id(),
        by_uid: nix::unistd::getuid().as_raw(),
        by_exe: fs::read_link("/proc/self/exe")
            .ok()
            .map(|p| p.display().to_string()),
        command,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create("/run/modtrace")
        .map_err(io("creating", "/run/modtrace"))?;
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(COMMAND_LOG)
        .map_err(io("opening", COMMAND_LOG))?;
    let mut locked = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| io("locking", COMMAND_LOG)(errno.into()))?;
    let line = serde_json::to_string(&entry).unwrap_or_default();
    writeln!(locked, "{line}").map_err(io("writing", COMMAND_LOG))
}

/// The commands logged since a capture last took them, removed from the
/// log; a line that does not parse is returned as an error text.
pub fn take_commands() -> Vec<Result<EnforceCommand, String>> {
    // Renamed first, so that a command logged meanwhile starts a new log;
    // one writing to it still holds its lock.
    if fs::rename(COMMAND_LOG, TAKEN_LOG).is_err() {
        return Vec::new();
    }
    let text = fs::File::open(TAKEN_LOG)
        .ok()
        .and_then(|file| nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockShared).ok())
        .and_then(|mut file| {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut *file, &mut text).ok()?;
            Some(text)
        })
        .unwrap_or_default();
    let _ = fs::remove_file(TAKEN_LOG);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{COMMAND_LOG}: {e}: {l}")))
        .collect()
}

/// `90`, `90s`, `10m` or `1h`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{text:?}: the unit must be s, m or h")),
    };
    let count: u64 = number
        .parse()
        .map_err(|e| format!("{text:?} is not a duration: {e}"))?;
    if count == 0 {
        return Err(format!("{text:?}: a duration must be more than 0"));
    }
    count
        .checked_mul(scale)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_seconds_minutes_or_hours() {
        let secs = |s: u64| Ok(std::time::Duration::from_secs(s));
        assert_eq!(parse_duration("90"), secs(90));
        assert_eq!(parse_duration("90s"), secs(90));
        assert_eq!(parse_duration("10m"), secs(600));
        assert_eq!(parse_duration("1h"), secs(3600));
        assert_eq!(
            parse_duration("10d").unwrap_err(),
            "\"10d\": the unit must be s, m or h"
        );
        assert_eq!(
            parse_duration("0m").unwrap_err(),
            "\"0m\": a duration must be more than 0"
        );
        assert!(parse_duration("m")
            .unwrap_err()
            .starts_with("\"m\" is not a duration"));
        assert_eq!(
            parse_duration("99999999999999999h").unwrap_err(),
            "\"99999999999999999h\" is too long"
        );
    }

    #[test]
    fn a_logged_command_reads_back_as_the_record_it_becomes() {
        let command = EnforceCommand {
            at: "2026-12-02T07:00:00.000000000Z".into(),
            by_pid: 7,
            by_uid: 0,
            by_exe: Some("/usr/bin/modtrace".into()),
            command: EnforceCommandKind::Allow {
                module: "usb_storage".into(),
                until: "2026-12-02T07:10:00Z".into(),
                seconds: 600,
            },
        };
        let line = serde_json::to_value(&command).unwrap();
        assert_eq!(
            line,
            serde_json::json!({"at": "2026-12-02T07:00:00.000000000Z", "by_pid": 7, "by_uid": 0,
                "by_exe": "/usr/bin/modtrace", "command": "allow", "module": "usb_storage",
                "until": "2026-12-02T07:10:00Z", "seconds": 600})
        );
        let back: EnforceCommand = serde_json::from_value(line).unwrap();
        assert_eq!(back, command);
    }

    #[test]
    fn status_says_when_nothing_is_enforced() {
        let status = Status::not_enforcing();
        assert_eq!(
            render_status(&status, Format::Json),
            "{\"enforcing\":false}\n"
        );
        assert_eq!(
            render_status(&status, Format::Text),
            "not enforcing: nothing is pinned under /sys/fs/bpf/modtrace\n"
        );
    }

    #[test]
    fn status_text_names_the_policy_each_rule_the_lock_and_the_allows() {
        let status = Status {
            enforcing: true,
            pin_dir: Some(PIN_DIR),
            since: Some("2026-12-02T07:00:00Z".into()),
            policy: Some(StatusPolicy {
                sha256: "ab12".into(),
                source: "default".into(),
                active_since: "2026-12-02T07:05:00Z".into(),
            }),
            deny_rules: Some(vec![StatusRule {
                id: "cis-denied-module".into(),
                denials: 3,
            }]),
            total_denials: Some(3),
            collector: Some(StatusCollector {
                attached: false,
                pid: None,
            }),
            locked: Some(true),
            temporary_allows: Some(vec![StatusAllow {
                module: "usb_storage".into(),
                until: "2026-12-02T07:10:00Z".into(),
                seconds_left: 42,
            }]),
        };
        assert_eq!(
            render_status(&status, Format::Text),
            "enforcing since 2026-12-02T07:00:00Z (pinned under /sys/fs/bpf/modtrace)\n\
             policy default (sha256 ab12), in force since 2026-12-02T07:05:00Z\n\
             collector: none attached (denials are counted in the kernel and reported by the next watch --enforce)\n\
             deny rules (1), denials: 3\n\
             \x20 cis-denied-module                        3\n\
             locked: only the modules loaded at the lock may load\n\
             temporarily allowed: usb_storage until 2026-12-02T07:10:00Z (42 s left)\n"
        );
    }
}
