//! Whether module loads are recorded: audit rules for the three module
//! syscalls, or modtrace watching.
use std::collections::BTreeSet;

use serde_json::json;

use super::{Check, Host, Outcome, Section, Status};

const AUDITED_SYSCALLS: [&str; 3] = ["init_module", "finit_module", "delete_module"];
const RULES_FILE: &str = "/etc/audit/audit.rules";
const RULES_DIR: &str = "/etc/audit/rules.d";
const AUDIT_LOG: &str = "/var/log/audit/audit.log";
/// Where `watch` holds its lock (its `--lock-file` default).
const WATCH_LOCK: &str = "/run/modtrace.lock";
/// The guide's rules file.
const GUIDE_RULES_FILE: &str = "/etc/audit/rules.d/modules.rules";
const GUIDE_KEY: &str = "modules";

pub(super) const MODULE_SYSCALLS: Check = Check {
    id: "audit.module-syscalls",
    section: Section::Auditing,
    title: "Module syscalls are audited, or modtrace watches them",
    run: module_syscalls,
};

/// The module syscalls an exit rule of `text` audits, with their lines.
fn audited_syscalls(text: &str) -> Vec<(usize, &'static str)> {
    let mut found = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        // `-a always,exit` (either order); `never` rules suppress records.
        let audits_exits = words.windows(2).any(|w| {
            let parts: Vec<&str> = w[1].split(',').collect();
            w[0] == "-a" && parts.contains(&"exit") && parts.contains(&"always")
        });
        if !audits_exits {
            continue;
        }
        for pair in words.windows(2).filter(|w| w[0] == "-S") {
            for name in pair[1].split(',') {
                if let Some(syscall) = AUDITED_SYSCALLS.iter().find(|s| **s == name) {
                    found.push((index + 1, *syscall));
                }
            }
        }
    }
    found
}

/// The rules files auditd loads (augenrules merges rules.d into audit.rules).
fn rules_files(host: &Host) -> Vec<std::path::PathBuf> {
    let mut files = vec![host.root.path(RULES_FILE)];
    if let Ok(entries) = std::fs::read_dir(host.root.path(RULES_DIR)) {
        let mut rules: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "rules"))
            .collect();
        rules.sort();
        files.extend(rules);
    }
    files
}

/// Whether a `watch` holds its lock now.
fn watch_running(host: &Host) -> Option<bool> {
    let file = std::fs::File::open(host.root.path(WATCH_LOCK)).ok()?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
        Ok(_) => Some(false),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Some(true),
        Err(_) => None,
    }
}

/// SYSCALL records of today (local time, as `ausearch -ts today`) with the
/// guide's key, from the audit log.
fn events_today(host: &Host) -> Result<usize, super::super::ReadError> {
    let log = host.root.read(AUDIT_LOG)?;
    let midnight = chrono::Local::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .and_then(|t| t.and_local_timezone(chrono::Local).earliest())
        .map_or(0, |t| t.timestamp());
    let key = format!("key=\"{GUIDE_KEY}\"");
    Ok(log
        .lines()
        .filter(|l| l.starts_with("type=SYSCALL") && l.contains(&key))
        .filter_map(|l| {
            let stamp = l.split("msg=audit(").nth(1)?.split('.').next()?;
            stamp.parse::<i64>().ok()
        })
        .filter(|stamp| *stamp >= midnight)
        .count())
}

fn module_syscalls(host: &Host) -> Outcome {
    let mut covered = BTreeSet::new();
    let mut outcome = Outcome::new(Status::Pass, "");
    let mut needs_root = false;
    for file in rules_files(host) {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(err) => {
                needs_root |= err.kind() == std::io::ErrorKind::PermissionDenied;
                continue;
            }
        };
        let shown = host.root.host_path(&file);
        for (line, syscall) in audited_syscalls(&text) {
            covered.insert(syscall);
            outcome = outcome.evidence(
                format!("{}:{line}", shown.display()),
                format!("audits {syscall}"),
            );
        }
    }
    let watching = watch_running(host);
    if let Some(running) = watching {
        outcome = outcome.evidence(
            WATCH_LOCK,
            if running {
                "held: modtrace watch is running"
            } else {
                "not held: no modtrace watch"
            },
        );
    }
    let events = events_today(host);
    let events_today = match &events {
        Ok(count) => {
            outcome = outcome.evidence(
                AUDIT_LOG,
                format!("{count} SYSCALL records with key {GUIDE_KEY} today"),
            );
            Some(*count)
        }
        Err(err) => {
            needs_root |= err.needs_root();
            outcome = outcome.evidence(AUDIT_LOG, err.source.to_string());
            None
        }
    };
    let all = AUDITED_SYSCALLS.iter().all(|s| covered.contains(s));
    let missing: Vec<&str> = AUDITED_SYSCALLS
        .iter()
        .filter(|s| !covered.contains(*s))
        .copied()
        .collect();
    let watched = watching == Some(true);
    outcome.status = if all || watched {
        Status::Pass
    } else if needs_root {
        Status::Unknown
    } else {
        Status::Warn
    };
    outcome.needs_root = needs_root;
    outcome.summary = match (all, watched) {
        (true, _) => "audit rules record every module syscall".to_owned(),
        (false, true) => "modtrace watch records every module syscall".to_owned(),
        (false, false) => format!(
            "nothing records {}: no audit rule and no modtrace watch",
            missing.join(", ")
        ),
    };
    if outcome.status != Status::Pass {
        outcome = outcome
            .fix(format!(
                "printf '%s\\n' '-w /sbin/insmod -p x -k {GUIDE_KEY}' '-w /sbin/modprobe -p x -k {GUIDE_KEY}' '-w /sbin/rmmod -p x -k {GUIDE_KEY}' '-a always,exit -F arch=b64 -S init_module,delete_module,finit_module -k {GUIDE_KEY}' > {GUIDE_RULES_FILE}"
            ))
            .fix("augenrules --load")
            .fix("# or run modtrace watch as a service");
    }
    outcome.data(json!({
        "audited": covered,
        "missing": missing,
        "watch_running": watching,
        "events_today": events_today,
    }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_guides_rule_audits_all_three_and_never_rules_do_not() {
        let text = "-w /sbin/insmod -p x -k modules\n\
                    -a always,exit -F arch=b64 -S init_module,delete_module,finit_module -k modules\n\
                    -a never,exit -S init_module\n\
                    -a exit,always -S finit_module -S delete_module\n";
        assert_eq!(
            audited_syscalls(text),
            [
                (2, "init_module"),
                (2, "delete_module"),
                (2, "finit_module"),
                (4, "finit_module"),
                (4, "delete_module"),
            ]
        );
        assert!(Path::new(GUIDE_RULES_FILE).starts_with(RULES_DIR));
    }
}
