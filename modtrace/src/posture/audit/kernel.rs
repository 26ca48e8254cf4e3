//! Secure Boot, lockdown, signature enforcement, modules_disabled, taint.
use serde_json::json;

use super::{host::PROC_MODULES, Check, Host, Outcome, Section, Status};
use crate::record::fields;

/// The UEFI global variable `SecureBoot` (UEFI spec, EFI_GLOBAL_VARIABLE).
const SECURE_BOOT_VAR: &str =
    "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";
pub(super) const LOCKDOWN_FILE: &str = "/sys/kernel/security/lockdown";
const SIG_ENFORCE_FILE: &str = "/sys/module/module/parameters/sig_enforce";
pub(super) const MODULES_DISABLED_FILE: &str = "/proc/sys/kernel/modules_disabled";
pub(super) const TAINTED_FILE: &str = "/proc/sys/kernel/tainted";
/// systemd-sysctl's files, in its order of priority.
const SYSCTL_DIRS: [&str; 4] = [
    "/etc/sysctl.d",
    "/run/sysctl.d",
    "/usr/local/lib/sysctl.d",
    "/usr/lib/sysctl.d",
];

/// Adding a word to the kernel command line through GRUB, Debian's way.
fn grub_cmdline_fix(word: &str) -> [String; 2] {
    [
        format!("sed -i 's/^GRUB_CMDLINE_LINUX=\"/&{word} /' /etc/default/grub"),
        "update-grub".to_owned(),
    ]
}

pub(super) const SECURE_BOOT: Check = Check {
    id: "boot.secure-boot",
    section: Section::Boot,
    title: "Secure Boot is on",
    run: secure_boot,
};

fn secure_boot(host: &Host) -> Outcome {
    let firmware_fix = [
        "# enable Secure Boot in the firmware setup (UEFI mode), then reboot",
        "mokutil --sb-state",
    ];
    if !host.root.path("/sys/firmware/efi").exists() {
        let outcome = Outcome::new(
            Status::Warn,
            "booted without UEFI (no /sys/firmware/efi), so without Secure Boot",
        )
        .evidence("/sys/firmware/efi", "absent")
        .data(json!({"uefi": false, "secure_boot": false}));
        return firmware_fix.iter().fold(outcome, |o, f| o.fix(*f));
    }
    let bytes = match host.root.read_bytes(SECURE_BOOT_VAR) {
        Ok(bytes) => bytes,
        Err(err) if err.not_found() => {
            return Outcome::new(
                Status::Unknown,
                "UEFI boot, but the firmware has no SecureBoot variable (efivarfs not mounted?)",
            )
            .evidence(SECURE_BOOT_VAR, "absent")
            .data(json!({"uefi": true, "secure_boot": null}));
        }
        Err(err) => return Outcome::unreadable(&err),
    };
    // efivarfs: 4 bytes of attributes, then the variable's one byte.
    let Some(&value) = bytes.get(4) else {
        return Outcome::new(
            Status::Unknown,
            format!("{SECURE_BOOT_VAR} is {} bytes, not 5", bytes.len()),
        )
        .evidence(SECURE_BOOT_VAR, format!("{bytes:02x?}"));
    };
    let on = value == 1;
    let outcome = Outcome::new(
        if on { Status::Pass } else { Status::Warn },
        if on {
            "Secure Boot is enabled"
        } else {
            "Secure Boot is disabled"
        },
    )
    .evidence(SECURE_BOOT_VAR, format!("value byte {value}"))
    .data(json!({"uefi": true, "secure_boot": on}));
    if on {
        outcome
    } else {
        firmware_fix.iter().fold(outcome, |o, f| o.fix(*f))
    }
}

pub(super) const LOCKDOWN: Check = Check {
    id: "kernel.lockdown",
    section: Section::Boot,
    title: "Kernel lockdown is integrity or confidentiality",
    run: lockdown,
};

/// The selected mode of `none [integrity] confidentiality`.
pub(super) fn lockdown_mode(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find_map(|word| word.strip_prefix('[')?.strip_suffix(']'))
}

fn lockdown(host: &Host) -> Outcome {
    let text = match host.root.read(LOCKDOWN_FILE) {
        Ok(text) => text,
        Err(err) if err.not_found() => {
            return Outcome::new(
                Status::Unknown,
                "no lockdown file: securityfs is not mounted, or the kernel has no lockdown LSM",
            )
            .evidence(LOCKDOWN_FILE, "absent")
            .data(json!({"mode": null}));
        }
        Err(err) => return Outcome::unreadable(&err),
    };
    let Some(mode) = lockdown_mode(&text) else {
        return Outcome::new(
            Status::Unknown,
            format!("{LOCKDOWN_FILE} names no selected mode"),
        )
        .evidence(LOCKDOWN_FILE, text.trim());
    };
    let locked = matches!(mode, "integrity" | "confidentiality");
    let outcome = Outcome::new(
        if locked { Status::Pass } else { Status::Warn },
        format!("lockdown mode is {mode}"),
    )
    .evidence(LOCKDOWN_FILE, text.trim())
    .data(json!({"mode": mode, "raw": text.trim()}));
    if locked {
        return outcome;
    }
    let [edit, update] = grub_cmdline_fix("lockdown=integrity");
    outcome
        .fix(format!("echo integrity > {LOCKDOWN_FILE}"))
        .fix(edit)
        .fix(update)
}

pub(super) const SIG_ENFORCE: Check = Check {
    id: "kernel.sig-enforce",
    section: Section::Boot,
    title: "Only signed modules can load",
    run: sig_enforce,
};

fn sig_enforce(host: &Host) -> Outcome {
    let value = match host.root.read(SIG_ENFORCE_FILE) {
        Ok(text) => text.trim().to_owned(),
        Err(err) if err.not_found() => {
            return Outcome::new(
                Status::Fail,
                "the kernel does not check module signatures (no module.sig_enforce: built without CONFIG_MODULE_SIG)",
            )
            .evidence(SIG_ENFORCE_FILE, "absent")
            .fix("# install a kernel built with CONFIG_MODULE_SIG (every Debian kernel is)")
            .data(json!({"sig_enforce": null}));
        }
        Err(err) => return Outcome::unreadable(&err),
    };
    let enforced = value == "Y";
    let lockdown = host
        .root
        .read(LOCKDOWN_FILE)
        .ok()
        .and_then(|text| lockdown_mode(&text).map(str::to_owned));
    let by_lockdown = matches!(lockdown.as_deref(), Some("integrity" | "confidentiality"));
    let data = json!({"sig_enforce": enforced, "lockdown": lockdown});
    let outcome = match (enforced, by_lockdown) {
        (true, _) => Outcome::new(Status::Pass, "module.sig_enforce is on"),
        (false, true) => Outcome::new(
            Status::Pass,
            "module.sig_enforce is off, but lockdown refuses unsigned modules",
        )
        .evidence(LOCKDOWN_FILE, lockdown.unwrap_or_default()),
        (false, false) => {
            let [edit, update] = grub_cmdline_fix("module.sig_enforce=1");
            Outcome::new(
                Status::Warn,
                "module.sig_enforce is off and lockdown is not on: unsigned modules load (tainting E)",
            )
            .fix(edit)
            .fix(update)
        }
    };
    outcome.evidence(SIG_ENFORCE_FILE, value).data(data)
}

pub(super) const MODULES_DISABLED: Check = Check {
    id: "kernel.modules-disabled",
    section: Section::Kernel,
    title: "Module loading is disabled after boot, not too early",
    run: modules_disabled,
};

fn modules_disabled(host: &Host) -> Outcome {
    let value = match host.root.read(MODULES_DISABLED_FILE) {
        Ok(text) => text.trim().to_owned(),
        Err(err) => return Outcome::unreadable(&err),
    };
    let early = sysctl_settings(host, "kernel.modules_disabled");
    let set_early: Vec<&(String, usize, String)> =
        early.iter().filter(|(_, _, v)| v == "1").collect();
    let disabled = value == "1";
    let data = json!({
        "modules_disabled": value.parse::<u8>().ok(),
        "set_by_sysctl": set_early.iter().map(|(f, l, _)| format!("{f}:{l}")).collect::<Vec<_>>(),
    });
    let mut outcome = if !set_early.is_empty() {
        let mut outcome = Outcome::new(
            Status::Warn,
            "kernel.modules_disabled is set by sysctl at boot, before services load the modules they need (the guide's pitfall)",
        );
        for (file, line, _) in &set_early {
            outcome = outcome
                .evidence(format!("{file}:{line}"), "kernel.modules_disabled = 1")
                .fix(super::deny::comment_out(file, *line));
        }
        outcome
            .fix(late_disable_unit())
            .fix("systemctl enable modules-disabled.service")
    } else if disabled {
        Outcome::new(Status::Pass, "module loading and unloading are disabled")
    } else {
        Outcome::new(
            Status::Warn,
            "modules can still be loaded: kernel.modules_disabled is 0",
        )
        .fix("sysctl -w kernel.modules_disabled=1")
        .fix(late_disable_unit())
        .fix("systemctl enable modules-disabled.service")
    };
    outcome = outcome.evidence(MODULES_DISABLED_FILE, &value);
    outcome.data(data)
}

/// A unit that disables module loading once the system is up, rather than
/// in sysctl.d, which runs before the services that load modules.
fn late_disable_unit() -> String {
    "printf '[Unit]\\nDescription=Disable module loading after boot\\nAfter=multi-user.target\\n[Service]\\nType=oneshot\\nExecStart=/sbin/sysctl -w kernel.modules_disabled=1\\n[Install]\\nWantedBy=multi-user.target\\n' > /etc/systemd/system/modules-disabled.service".to_owned()
}

/// Every `key = value` line for `key` in sysctl's files: (file, line, value).
fn sysctl_settings(host: &Host, key: &str) -> Vec<(String, usize, String)> {
    let dirs = host.root.dirs(&SYSCTL_DIRS);
    let mut files = crate::policy::modprobe_d::effective_files(&dirs);
    files.push(host.root.path("/etc/sysctl.conf"));
    let mut found = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for (index, line) in text.lines().enumerate() {
            let Some((name, value)) = line.split_once('=') else {
                continue;
            };
            let name = name.trim().trim_start_matches('-').replace('/', ".");
            if name == key {
                found.push((
                    host.root.host_path(&file).display().to_string(),
                    index + 1,
                    value.trim().to_owned(),
                ));
            }
        }
    }
    found
}

pub(super) const TAINT: Check = Check {
    id: "kernel.taint",
    section: Section::Kernel,
    title: "The kernel is not tainted",
    run: taint,
};

fn taint(host: &Host) -> Outcome {
    let text = match host.root.read(TAINTED_FILE) {
        Ok(text) => text,
        Err(err) => return Outcome::unreadable(&err),
    };
    let Ok(raw) = text.trim().parse::<u64>() else {
        return Outcome::new(
            Status::Unknown,
            format!("{TAINTED_FILE} is not a number: {:?}", text.trim()),
        )
        .evidence(TAINTED_FILE, text.trim());
    };
    let decoded = fields::taint(raw);
    let known_bits = (1u64 << fields::TAINT_FLAG_COUNT) - 1;
    let unknown_bits = raw & !known_bits;
    let modules = host.modules.as_ref().ok();
    let mut flags = Vec::new();
    let mut outcome = Outcome::new(Status::Pass, "the kernel is not tainted");
    for (letter, name) in decoded.letters.chars().zip(&decoded.names) {
        let carriers: Vec<&str> = modules
            .into_iter()
            .flatten()
            .filter(|m| m.taint.contains(letter))
            .map(|m| m.name.as_str())
            .collect();
        let who = if carriers.is_empty() {
            "no loaded module carries it".to_owned()
        } else {
            format!("carried by {}", carriers.join(", "))
        };
        outcome = outcome.evidence(TAINTED_FILE, format!("{letter} {name}: {who}"));
        flags.push(json!({"letter": letter.to_string(), "name": name, "modules": carriers}));
    }
    if raw != 0 {
        outcome.status = Status::Warn;
        outcome.summary = format!("the kernel is tainted: {raw} ({})", decoded.letters);
        outcome = outcome
            .fix("# taint lasts until reboot: unload or replace the modules named, then reboot")
            .fix("dmesg | grep -iE 'taint|signature|loaded kernel'");
        if modules.is_some() {
            outcome = outcome.evidence(PROC_MODULES, "modules' taint letters");
        }
    } else {
        outcome = outcome.evidence(TAINTED_FILE, "0");
    }
    outcome.data(json!({
        "raw": raw,
        "letters": decoded.letters,
        "flags": flags,
        "unknown_bits": unknown_bits,
    }))
}
