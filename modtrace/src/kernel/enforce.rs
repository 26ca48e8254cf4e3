//! Enforcement's userspace half: checks that the BPF LSM is active, reads
//! the hook ids from BTF, fills the deny tables and attaches the LSM programs
//! of modtrace-ebpf/src/enforce.rs; then reads back the denials.
use std::{fs, path::Path};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::Lsm,
    Btf, Ebpf,
};
use modtrace_common::enforce::{
    Denial, DenyClause, DenyKey, EnforceConfig, DENIED_AT_LOAD_DATA, DENIED_AT_MODULE_REQUEST,
    DENIED_AT_POST_LOAD_DATA, DENIED_AT_READ_FILE,
};

use super::{
    btf::{BtfError, KernelBtf},
    maps::{take_map, MapsError},
};

/// Where the kernel lists its active LSMs.
pub const LSM_LIST: &str = "/sys/kernel/security/lsm";

/// The LSM programs and the hooks they attach to.
const PROGRAMS: [(&str, &str); 4] = [
    ("lsm_kernel_read_file", "kernel_read_file"),
    ("lsm_kernel_load_data", "kernel_load_data"),
    ("lsm_kernel_post_load_data", "kernel_post_load_data"),
    ("lsm_kernel_module_request", "kernel_module_request"),
];

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
    #[error("filling the deny tables: {0}")]
    Fill(#[from] aya::maps::MapError),
    #[error(transparent)]
    Maps(#[from] MapsError),
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

/// The attached LSM programs' tables, kept for reading denials back.
pub struct Enforcer {
    denials: PerCpuArray<MapData, u64>,
    /// `LAST_DENIAL`, an LRU hash map, which aya opens as a hash map.
    last: HashMap<MapData, u32, Denial>,
}

impl Enforcer {
    /// Fills the deny tables of `ebpf` (loaded with the configuration of
    /// [`config`]) and attaches its LSM programs. The tables are filled
    /// first, so no program runs on a half-filled table.
    pub fn start(
        ebpf: &mut Ebpf,
        clauses: &[DenyClause],
        keys: &[DenyKey],
    ) -> Result<Self, EnforceError> {
        let mut table: Array<MapData, DenyClause> = take_map(ebpf, "DENY_CLAUSES")?;
        for (index, clause) in (0u32..).zip(clauses) {
            table.set(index, clause, 0)?;
        }
        let mut names: HashMap<MapData, DenyKey, u8> = take_map(ebpf, "DENY_NAMES")?;
        for key in keys {
            names.insert(key, 1, 0)?;
        }
        let btf = Btf::from_sys_fs().map_err(|e| EnforceError::Attach {
            hook: PROGRAMS[0].1,
            detail: format!("aya could not read the kernel BTF: {e}"),
        })?;
        for (program, hook) in PROGRAMS {
            attach(ebpf, program, hook, &btf)?;
        }
        // The clauses and names stay in the kernel with the programs; only
        // the counters are read from here on.
        drop((table, names));
        Ok(Self {
            denials: take_map(ebpf, "DENIALS")?,
            last: take_map(ebpf, "LAST_DENIAL")?,
        })
    }

    /// Denials so far of each rule slot, summed over CPUs.
    pub fn counts(&self, rules: usize) -> Result<Vec<u64>, EnforceError> {
        (0..u32::try_from(rules).unwrap_or(u32::MAX))
            .map(|slot| Ok(self.denials.get(&slot, 0)?.iter().sum()))
            .collect()
    }

    /// The latest denial of thread `tid`'s load, removed: (rule slot, hook).
    pub fn take_denial(&mut self, tid: u32) -> Option<(u32, &'static str)> {
        let denial = self.last.get(&tid, 0).ok()?;
        let _ = self.last.remove(&tid);
        Some((denial.rule, hook_name(denial.hook)))
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

fn attach(
    ebpf: &mut Ebpf,
    program: &str,
    hook: &'static str,
    btf: &Btf,
) -> Result<(), EnforceError> {
    let failed = |detail: String| EnforceError::Attach { hook, detail };
    let lsm: &mut Lsm = super::program_mut(ebpf, program).map_err(failed)?;
    lsm.load(hook, btf)
        .map_err(|e| failed(format!("loading: {}", super::brief(e))))?;
    lsm.attach().map_err(|e| failed(e.to_string()))?;
    Ok(())
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
