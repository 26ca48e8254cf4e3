//! Enforcement's userspace half: checks that the BPF LSM is active, reads
//! the hook ids from BTF, puts the deny tables in force through the pinned
//! LSM programs of modtrace-ebpf/src/enforce.rs ([`super::pinned`]); then
//! reads back the denials.
use std::{fs, path::Path};

use modtrace_common::{
    enforce::{
        EnforceConfig, DENIED_AT_LOAD_DATA, DENIED_AT_MODULE_REQUEST, DENIED_AT_POST_LOAD_DATA,
        DENIED_AT_READ_FILE, DENY_RULE_CAP,
    },
    pinned::{CollectorInfo, LOCK_RULE_SLOT},
    ProbeConfig,
};

use super::{
    btf::{BtfError, KernelBtf},
    pinned::{self, Enforcement, Handover, PolicyTables},
};

/// Where the kernel lists its active LSMs.
pub const LSM_LIST: &str = "/sys/kernel/security/lsm";

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("--enforce needs the BPF LSM, which is not active on this kernel ({LSM_LIST}: {current:?}); add `lsm={current},bpf` to the kernel command line and reboot (plain `watch` works without it)")]
    Inactive { current: String },
    #[error("--enforce needs the BPF LSM, but {LSM_LIST} cannot be read ({source}); mount securityfs (`mount -t securityfs securityfs /sys/kernel/security`) or check that the kernel has CONFIG_SECURITY")]
    Unlisted { source: std::io::Error },
    #[error("reading the LSM hooks' ids from the kernel's BTF: {0}")]
    Btf(#[from] BtfError),
    #[error("the kernel's BTF has no {constant} in enum {enum_name}: modtrace cannot tell module loads from other reads of this kernel")]
    MissingConstant {
        enum_name: &'static str,
        constant: &'static str,
    },
    #[error("attaching the LSM program on {hook}: {detail}")]
    Attach { hook: &'static str, detail: String },
    #[error("the deny tables in the kernel: {0}")]
    Fill(#[from] aya::maps::MapError),
    #[error("loading the enforcement object: {0}")]
    Load(String),
    #[error(
        "the enforcement object lacks map {0}: it and the collector come from different builds"
    )]
    MissingMap(&'static str),
    #[error("the pinned enforcement, {path}: {detail}")]
    Pins {
        path: std::path::PathBuf,
        detail: String,
    },
    #[error("{name:?} is not a module name (1 to {max} bytes, no `/`)")]
    BadModuleName { name: String, max: usize },
    #[error("deny rule id {id:?} is longer than the {max} bytes enforcement keeps in the kernel")]
    RuleIdTooLong { id: String, max: usize },
}

/// Refuses enforcement when `lsm_list` (the text of [`LSM_LIST`]) lacks
/// `bpf`: the programs would load and attach, and never run.
pub fn check_active(lsm_list: &str) -> Result<(), EnforceError> {
    let current = lsm_list.trim().trim_end_matches(',');
    if current.split(',').any(|lsm| lsm == "bpf") {
        Ok(())
    } else {
        Err(EnforceError::Inactive {
            current: current.to_owned(),
        })
    }
}

/// [`check_active`] on the running kernel.
pub fn check_running_kernel() -> Result<(), EnforceError> {
    let list = fs::read_to_string(LSM_LIST).map_err(|source| EnforceError::Unlisted { source })?;
    check_active(&list)
}

/// The hook ids the programs compare with, from the kernel's BTF.
pub fn config(btf_path: &Path) -> Result<EnforceConfig, EnforceError> {
    let btf = KernelBtf::open(btf_path)?;
    let required = |enum_name: &'static str, constant: &'static str| {
        btf.enum_value(enum_name, constant)?
            .ok_or(EnforceError::MissingConstant {
                enum_name,
                constant,
            })
    };
    Ok(EnforceConfig {
        reading_module: required("kernel_read_file_id", "READING_MODULE")?,
        // Only newer kernels read compressed modules under an id of their own.
        reading_module_compressed: btf
            .enum_value("kernel_read_file_id", "READING_MODULE_COMPRESSED")?
            .unwrap_or(u32::MAX),
        loading_module: required("kernel_load_data_id", "LOADING_MODULE")?,
        _reserved: 0,
    })
}

/// This collector's enforcement: the pinned tables, in which its policy is
/// generation `generation`.
pub struct Enforcer {
    enforcement: Enforcement,
    /// The lock's denials when this collector started: its slot outlives
    /// generations, so this run's are those past it.
    lock_base: u64,
}

impl Enforcer {
    /// Puts the deny tables in force in the kernel (adopting what is pinned,
    /// see [`pinned`]), with the hook ids of [`config`] and the structure
    /// offsets of the kernel's BTF at `btf_path`.
    pub fn start(
        tables: &PolicyTables<'_>,
        config: &EnforceConfig,
        btf_path: &Path,
    ) -> Result<Self, EnforceError> {
        let mut probe = ProbeConfig::DEFAULT;
        probe.offsets = KernelBtf::open(btf_path)?.offsets()?.offsets;
        let enforcement = pinned::enforce(tables, config, &probe)?;
        let lock_base = enforcement.maps.denials(LOCK_RULE_SLOT)?;
        Ok(Self {
            enforcement,
            lock_base,
        })
    }

    /// What was pinned before this collector took over.
    pub fn handover(&self) -> Option<&Handover> {
        self.enforcement.handover.as_ref()
    }

    /// Denials so far of each of this policy's `rules` rule slots, summed
    /// over CPUs, then this run's of the lock (`lock-after-boot`).
    pub fn counts(&self, rules: usize) -> Result<Vec<u64>, EnforceError> {
        let maps = &self.enforcement.maps;
        let mut counts = self
            .slots(rules)
            .map(|slot| maps.denials(slot))
            .collect::<Result<Vec<_>, _>>()?;
        counts.push(maps.denials(LOCK_RULE_SLOT)?.saturating_sub(self.lock_base));
        Ok(counts)
    }

    /// Notes in the kernel that `counts` (as [`Self::counts`] gave them)
    /// have been reported, so that a later collector reports only the rest.
    pub fn mark_reported(&mut self, counts: &[u64]) -> Result<(), EnforceError> {
        let Some((lock, rules)) = counts.split_last() else {
            return Ok(());
        };
        for (slot, &count) in self.slots(rules.len()).zip(rules) {
            self.enforcement.maps.set_reported(slot, count)?;
        }
        self.enforcement
            .maps
            .set_reported(LOCK_RULE_SLOT, self.lock_base + lock)
    }

    /// The `DENIALS` slots of this policy's first `rules` rules.
    fn slots(&self, rules: usize) -> std::ops::Range<u32> {
        let base = self.enforcement.generation * DENY_RULE_CAP;
        base..base + u32::try_from(rules).unwrap_or(u32::MAX).min(DENY_RULE_CAP)
    }

    /// The latest denial of thread `tid`'s load, removed: (rule id, hook).
    pub fn take_denial(&mut self, tid: u32) -> Option<(String, &'static str)> {
        let (rule, hook) = self.enforcement.maps.take_denial(tid)?;
        Some((rule, hook_name(hook)))
    }

    /// Detaches: with `release` the pins are removed and enforcement ends;
    /// otherwise it goes on without a collector.
    pub fn finish(mut self, release: bool) -> Result<(), EnforceError> {
        if release {
            pinned::release()?;
            return Ok(());
        }
        self.set_collector(CollectorInfo::default())
    }

    /// Records in the kernel which collector reports the denials (the
    /// default value: none).
    pub fn set_collector(&mut self, collector: CollectorInfo) -> Result<(), EnforceError> {
        self.enforcement.maps.set_collector(collector)
    }
}

/// The LSM hook a `DENIED_AT_*` names.
pub fn hook_name(at: u32) -> &'static str {
    match at {
        DENIED_AT_READ_FILE => "kernel_read_file",
        DENIED_AT_LOAD_DATA => "kernel_load_data",
        DENIED_AT_POST_LOAD_DATA => "kernel_post_load_data",
        DENIED_AT_MODULE_REQUEST => "kernel_module_request",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bpf_lsm_in_the_list_is_active() {
        assert!(check_active("lockdown,capability,landlock,yama,apparmor,bpf\n").is_ok());
        assert!(check_active("bpf").is_ok());
    }

    #[test]
    fn without_it_the_error_names_the_list_and_the_parameter() {
        // Debian 11's default list.
        let err = check_active("capability,yama,apparmor,tomoyo\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "--enforce needs the BPF LSM, which is not active on this kernel \
             (/sys/kernel/security/lsm: \"capability,yama,apparmor,tomoyo\"); add \
             `lsm=capability,yama,apparmor,tomoyo,bpf` to the kernel command line and \
             reboot (plain `watch` works without it)"
        );
        // A name that merely contains "bpf" is not it.
        assert!(check_active("capability,notbpf").is_err());
    }

    #[test]
    fn this_kernel_names_its_module_hooks_in_btf() {
        let config = config(Path::new("/sys/kernel/btf/vmlinux")).expect("BTF of this host");
        assert_ne!(config.reading_module, u32::MAX);
        assert_ne!(config.loading_module, u32::MAX);
        assert_ne!(config.reading_module, config.reading_module_compressed);
    }
}
