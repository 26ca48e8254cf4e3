//! The CIS deny list in the effective modprobe configuration: each module
//! blacklisted (no autoload by alias) and install-redirected to /bin/true (no
//! load by name either), nothing that contradicts it, none of them loaded.
use std::{collections::BTreeMap, path::PathBuf};

use serde_json::json;

use super::{Check, Host, Outcome, Section, Status};
use crate::policy::{
    event::normalise_module_name,
    modprobe_d::{self, ConfigLine, LineKind},
};

/// Where the fixes write the deny list.
const CIS_FILE: &str = "/etc/modprobe.d/cis.conf";
/// systemd-modules-load's directories, highest priority first.
const MODULES_LOAD_DIRS: [&str; 5] = [
    "/etc/modules-load.d",
    "/run/modules-load.d",
    "/usr/local/lib/modules-load.d",
    "/usr/lib/modules-load.d",
    "/lib/modules-load.d",
];
/// Debian's list of modules to load at boot (kmod's own, read beside
/// modules-load.d).
const DEBIAN_MODULES_FILE: &str = "/etc/modules";

/// How one module is configured.
#[derive(Default)]
struct ModuleConfig<'a> {
    blacklist: Option<&'a ConfigLine>,
    /// The first install line: the one modprobe runs.
    install: Option<&'a ConfigLine>,
}

impl ModuleConfig<'_> {
    fn install_command(&self) -> Option<&str> {
        match &self.install?.kind {
            LineKind::Install(command) => Some(command),
            _ => None,
        }
    }

    fn install_disables(&self) -> bool {
        self.install_command()
            .is_some_and(modprobe_d::loads_nothing)
    }

    /// `install X /bin/false`: it stops the load, but modprobe then fails
    /// and logs an error for every autoload attempt.
    fn install_false(&self) -> bool {
        self.install_disables()
            && self
                .install_command()
                .is_some_and(|c| c.trim().rsplit('/').next() == Some("false"))
    }

    /// Blacklisted and redirected to /bin/true: the guide's hard deny.
    fn hard_denied(&self) -> bool {
        self.blacklist.is_some() && self.install_disables() && !self.install_false()
    }
}

fn configs(host: &Host) -> BTreeMap<&str, ModuleConfig<'_>> {
    let mut configs: BTreeMap<&str, ModuleConfig> = BTreeMap::new();
    for line in &host.modprobe {
        let config = configs.entry(line.module.as_str()).or_default();
        match line.kind {
            LineKind::Blacklist => {
                config.blacklist.get_or_insert(line);
            }
            LineKind::Install(_) => {
                config.install.get_or_insert(line);
            }
            LineKind::Options(_) => {}
        }
    }
    configs
}

fn at(host: &Host, line: &ConfigLine) -> String {
    format!(
        "{}:{}",
        host.root.host_path(&line.file).display(),
        line.line
    )
}

fn written(line: &ConfigLine) -> String {
    match &line.kind {
        LineKind::Blacklist => format!("blacklist {}", line.module),
        LineKind::Install(command) => format!("install {} {command}", line.module),
        LineKind::Options(options) => format!("options {} {options}", line.module),
    }
}

/// A fix that comments a line out, so that other fixes' line numbers hold.
pub(super) fn comment_out(file: &str, line: usize) -> String {
    format!("sed -i '{line}s/^/# disabled by modtrace audit: /' {file}")
}

/// kmod's spelling of a module in the deny file (`usb-storage`).
fn cis_spelling(module: &str) -> String {
    module.replace('_', "-")
}

pub(super) const CIS_LIST: Check = Check {
    id: "deny.cis-list",
    section: Section::DenyList,
    title: "Every CIS module is blacklisted and install-redirected to /bin/true",
    run: cis_list,
};

fn cis_list(host: &Host) -> Outcome {
    let configs = configs(host);
    let none = ModuleConfig::default();
    let mut outcome = Outcome::new(Status::Pass, "");
    let mut rows = Vec::new();
    let (mut missing, mut partial) = (0, 0);
    for module in &host.cis {
        let config = configs.get(module.as_str()).unwrap_or(&none);
        let state = if config.hard_denied() {
            "denied"
        } else if config.blacklist.is_none() && !config.install_disables() {
            missing += 1;
            "not denied"
        } else {
            partial += 1;
            "partly denied"
        };
        for line in [config.blacklist, config.install].into_iter().flatten() {
            outcome = outcome.evidence(at(host, line), written(line));
        }
        if state != "denied" {
            let name = cis_spelling(module);
            if config.blacklist.is_none() {
                outcome = outcome.fix(format!("echo 'blacklist {name}' >> {CIS_FILE}"));
            }
            if !config.install_disables() || config.install_false() {
                outcome = outcome.fix(format!("echo 'install {name} /bin/true' >> {CIS_FILE}"));
            }
        }
        rows.push(json!({
            "module": module,
            "state": state,
            "blacklist": config.blacklist.map(|l| at(host, l)),
            "install": config.install.map(|l| json!({"command": config.install_command(), "at": at(host, l)})),
        }));
    }
    let denied = host.cis.len() - missing - partial;
    outcome.status = if missing > 0 {
        Status::Fail
    } else if partial > 0 {
        Status::Warn
    } else {
        Status::Pass
    };
    outcome.summary = format!(
        "{denied} of {} CIS modules fully denied, {partial} partly, {missing} not at all",
        host.cis.len()
    );
    if outcome.status != Status::Pass {
        outcome = outcome.fix("update-initramfs -u -k all");
    }
    outcome.data(json!({"denied": denied, "partly": partial, "missing": missing, "modules": rows}))
}

pub(super) const INSTALL_FALSE: Check = Check {
    id: "deny.install-false",
    section: Section::DenyList,
    title: "No module is redirected to /bin/false",
    run: install_false,
};

fn install_false(host: &Host) -> Outcome {
    flag_lines(
        host,
        |config| config.install.filter(|_| config.install_false()),
        |_, line| {
            format!(
                "sed -i '{}s|false|true|' {}",
                line.line,
                host.root.host_path(&line.file).display()
            )
        },
        "modules are redirected to /bin/false, which fails every autoload with an error in the logs: use /bin/true",
    )
}

/// A warning for each module whose configuration line `pick` finds, with
/// that line as evidence and `fix` for it; `summary` follows the count.
fn flag_lines<'a>(
    host: &'a Host,
    pick: impl Fn(&ModuleConfig<'a>) -> Option<&'a ConfigLine>,
    fix: impl Fn(&str, &ConfigLine) -> String,
    summary: &str,
) -> Outcome {
    let mut outcome = Outcome::new(Status::Pass, "");
    let mut modules = Vec::new();
    for (module, config) in &configs(host) {
        let Some(line) = pick(config) else {
            continue;
        };
        modules.push(*module);
        outcome = outcome
            .evidence(at(host, line), written(line))
            .fix(fix(module, line));
    }
    outcome.status = Status::pass_unless(!modules.is_empty(), Status::Warn);
    outcome.summary = format!("{} {summary}", modules.len());
    outcome.data(json!({"modules": modules}))
}

pub(super) const BLACKLIST_ONLY: Check = Check {
    id: "deny.blacklist-only",
    section: Section::DenyList,
    title: "No module is only blacklisted",
    run: blacklist_only,
};

fn blacklist_only(host: &Host) -> Outcome {
    flag_lines(
        host,
        |config| config.blacklist.filter(|_| !config.install_disables()),
        |module, line| {
            format!(
                "echo 'install {} /bin/true' >> {}",
                cis_spelling(module),
                host.root.host_path(&line.file).display()
            )
        },
        "modules are blacklisted without an install line: `modprobe NAME` still loads them",
    )
}

pub(super) const LOADED: Check = Check {
    id: "deny.loaded",
    section: Section::DenyList,
    title: "No denied module is loaded",
    run: loaded,
};

fn loaded(host: &Host) -> Outcome {
    let loaded = match host.loaded_names() {
        Ok(loaded) => loaded,
        Err(err) => return Outcome::unreadable(err),
    };
    let mut outcome = Outcome::new(Status::Pass, "");
    let mut modules = Vec::new();
    for (module, reasons) in host.denied() {
        if !loaded.contains(&module) {
            continue;
        }
        outcome = outcome
            .evidence(
                super::host::PROC_MODULES,
                format!("{module} is loaded, denied by {}", reasons.join(", ")),
            )
            .fix(format!("modprobe -r {module}"));
        modules.push(module);
    }
    outcome.status = Status::pass_unless(!modules.is_empty(), Status::Fail);
    outcome.summary = format!("{} denied modules are loaded now", modules.len());
    if !modules.is_empty() {
        outcome = outcome.fix("update-initramfs -u -k all");
    }
    outcome.data(json!({"modules": modules}))
}

pub(super) const CONTRADICTIONS: Check = Check {
    id: "deny.contradictions",
    section: Section::DenyList,
    title: "Nothing asks to load or configures a denied module",
    run: contradictions,
};

/// A module that something asks to load or configures.
struct Wanted {
    module: String,
    file: PathBuf,
    line: usize,
    what: String,
}

/// The modules systemd-modules-load (and Debian's /etc/modules) loads at boot.
fn boot_loads(host: &Host) -> Vec<Wanted> {
    let mut files = modprobe_d::effective_files(&host.root.dirs(&MODULES_LOAD_DIRS));
    let debian = host.root.path(DEBIAN_MODULES_FILE);
    // modules-load.d/modules.conf is often a link to /etc/modules: read it once.
    let canonical = |p: &PathBuf| std::fs::canonicalize(p).ok();
    if debian.exists() && !files.iter().any(|f| canonical(f) == canonical(&debian)) {
        files.push(debian);
    }
    let mut wanted = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            if line.starts_with(['#', ';']) {
                continue;
            }
            wanted.push(Wanted {
                module: normalise_module_name(name).into_owned(),
                file: file.clone(),
                line: index + 1,
                what: "loaded at boot".to_owned(),
            });
        }
    }
    wanted
}

fn contradictions(host: &Host) -> Outcome {
    let denied = host.denied();
    let options = host.modprobe.iter().filter_map(|l| match &l.kind {
        LineKind::Options(o) => Some(Wanted {
            module: l.module.clone(),
            file: l.file.clone(),
            line: l.line,
            what: format!("configured: options {o}"),
        }),
        _ => None,
    });
    let mut outcome = Outcome::new(Status::Pass, "");
    let mut found = Vec::new();
    for wanted in boot_loads(host).into_iter().chain(options) {
        let Some(reasons) = denied.get(&wanted.module) else {
            continue;
        };
        let file = host.root.host_path(&wanted.file).display().to_string();
        outcome = outcome
            .evidence(
                format!("{file}:{}", wanted.line),
                format!(
                    "{} is {} but denied by {}",
                    wanted.module,
                    wanted.what,
                    reasons.join(", ")
                ),
            )
            .fix(comment_out(&file, wanted.line));
        found.push(json!({"module": wanted.module, "at": format!("{file}:{}", wanted.line), "what": wanted.what}));
    }
    outcome.status = Status::pass_unless(!found.is_empty(), Status::Warn);
    outcome.summary = format!(
        "{} lines ask to load or configure a module that modprobe.d denies",
        found.len()
    );
    outcome.data(json!({"contradictions": found}))
}
