//! The kernel matrix and how each kernel gets from Debian's mirror into `target/vm/`,
//! through the harness's own apt configuration of the kernel's release.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use super::apt::{Apt, Release, BOOKWORM, BULLSEYE, SID, TRIXIE};
use crate::sh::status;

/// One Debian kernel of the matrix, booted one way.
pub(crate) struct Kernel {
    /// Short name used on the command line and in result paths.
    pub name: &'static str,
    /// The release the kernel comes from; the guest's kmod comes from it too.
    pub release: &'static Release,
    /// The binary packages that make up the kernel, each a glob: `*` matches one
    /// dash-free run (an ABI number or version), and the newest match is used.
    pub packages: &'static [&'static str],
    pub boot: Boot,
    /// Whether the kernel loads modules (scenarios marked `needs: modules` skip it otherwise).
    pub has_modules: bool,
    /// What `cargo xtask test` runs on it (`cargo xtask vm-test` runs every scenario).
    pub in_test: InTest,
}

/// The scenarios `cargo xtask test` runs on a kernel, so that the whole test
/// command fits its time on a 2-core machine (README, "What CI runs").
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum InTest {
    /// Every scenario.
    All,
    /// The scenarios whose outcome depends on the kernel or its kmod
    /// (`vm::CORE_SCENARIOS`).
    Core,
    /// A preemptible kernel, where the kernel skips trampoline programs
    /// for preempted callers: the core scenarios and the ones of many
    /// concurrent calls (`vm::PREEMPTION_SCENARIOS`).
    Preemptible,
}

/// What the kernel command line adds to the harness's own arguments.
#[derive(Clone, Copy)]
pub(crate) enum Boot {
    /// Nothing: the kernel as Debian ships it.
    AsShipped,
    /// `lsm=` set to the kernel's own CONFIG_LSM list plus `bpf`, for kernels
    /// whose default list lacks the BPF LSM.
    LsmPlusBpf,
}

const fn kernel(
    name: &'static str,
    release: &'static Release,
    packages: &'static [&'static str],
    boot: Boot,
    in_test: InTest,
) -> Kernel {
    Kernel {
        name,
        release,
        packages,
        boot,
        has_modules: true,
        in_test,
    }
}

/// Adding a kernel is one line here: name, release, package globs, boot, what CI runs.
#[rustfmt::skip]
pub(crate) const KERNELS: &[Kernel] = &[
    kernel("debian-5.10", &BULLSEYE, &["linux-image-5.10.0-*-amd64"], Boot::AsShipped, InTest::Core),
    kernel("debian-5.10-lsm-bpf", &BULLSEYE, &["linux-image-5.10.0-*-amd64"], Boot::LsmPlusBpf, InTest::Core),
    kernel("debian-6.1", &BOOKWORM, &["linux-image-6.1.0-*-amd64"], Boot::AsShipped, InTest::All),
    kernel("debian-6.12-cloud", &BOOKWORM, &["linux-image-6.12.*+deb12-cloud-amd64"], Boot::AsShipped, InTest::Core),
    kernel("debian-6.12", &TRIXIE, &["linux-image-6.12.*+deb13-amd64"], Boot::AsShipped, InTest::Core),
    kernel("debian-6.12-rt", &TRIXIE, &["linux-image-6.12.*+deb13-rt-amd64"], Boot::AsShipped, InTest::Preemptible),
    // sid splits the kernel: vmlinuz, modules, and the files both need.
    kernel("debian-7.2-cloud", &SID, &[
        "linux-binary-7.2.*+deb14-cloud-amd64",
        "linux-modules-7.2.*+deb14-cloud-amd64",
        "linux-base-7.2.*+deb14-cloud-amd64",
    ], Boot::AsShipped, InTest::Core),
];

/// A kernel's packages unpacked under `target/vm/kernels/`, with `depmod` run on it.
pub(crate) struct UnpackedKernel {
    /// The packages, `name_version` each.
    pub package: String,
    /// `uname -r` of the kernel.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// The kernel's build configuration.
    pub config: PathBuf,
    /// The unpacked packages (`lib/modules/<release>` inside).
    pub root: PathBuf,
}

impl UnpackedKernel {
    pub(crate) fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }

    /// What `boot` adds to the kernel command line of this kernel.
    pub(crate) fn boot_args(&self, boot: Boot) -> Result<String> {
        match boot {
            Boot::AsShipped => Ok(String::new()),
            Boot::LsmPlusBpf => {
                let config = fs::read_to_string(&self.config)
                    .with_context(|| format!("reading {}", self.config.display()))?;
                let lsm = config_string(&config, "CONFIG_LSM")
                    .with_context(|| format!("{} sets no CONFIG_LSM", self.config.display()))?;
                Ok(format!("lsm={lsm},bpf"))
            }
        }
    }
}

/// The value of a string option of a kernel config (`CONFIG_LSM="yama,apparmor"`).
fn config_string<'a>(config: &'a str, option: &str) -> Option<&'a str> {
    config.lines().find_map(|line| {
        line.strip_prefix(option)?
            .strip_prefix('=')?
            .strip_prefix('"')?
            .strip_suffix('"')
    })
}

/// Downloads (unless cached) and unpacks the newest packages matching the kernel's globs.
pub(crate) fn fetch(kernel: &Kernel, vm_dir: &Path) -> Result<UnpackedKernel> {
    let apt = Apt::open(kernel.release, vm_dir)?;
    let debs = kernel
        .packages
        .iter()
        .map(|glob| apt.download(&apt.newest_matching(glob)?))
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("fetching kernel {}", kernel.name))?;
    unpack(&debs, &vm_dir.join("kernels"))
        .with_context(|| format!("unpacking {debs:?} for kernel {}", kernel.name))
}

fn unpack(debs: &[PathBuf], kernels_dir: &Path) -> Result<UnpackedKernel> {
    let stems: Vec<String> = debs
        .iter()
        .map(|deb| {
            let stem = deb.file_stem().unwrap_or_default().to_string_lossy();
            stem.rsplit_once('_').map_or(&*stem, |(s, _)| s).to_owned()
        })
        .collect();
    let package = stems.join(" ");
    let root = kernels_dir.join(stems.first().context("a kernel of no packages")?);
    // Names the packages unpacked, so that a change of one unpacks all again.
    let done = root.join(".unpacked");
    let unpacked = fs::read_to_string(&done).is_ok_and(|text| text == package);
    if !unpacked {
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root)?;
        for deb in debs {
            status(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
        }
        merge_usr_lib_modules(&root)?;
    }
    let release = only_entry(&root.join("lib/modules"))?;
    let modules = root.join("lib/modules").join(&release);
    let vmlinuz = first_file(&[
        root.join("boot").join(format!("vmlinuz-{release}")),
        modules.join("vmlinuz"),
    ])
    .with_context(|| format!("{package} holds no vmlinuz of {release}"))?;
    let config = first_file(&[
        root.join("boot").join(format!("config-{release}")),
        modules.join("config"),
    ])
    .with_context(|| format!("{package} holds no config of {release}"))?;
    if !unpacked {
        // modules.dep is made by the package's postinst, not shipped.
        status(Command::new("depmod").arg("-b").arg(&root).arg(&release))?;
        fs::write(&done, &package)?;
    }
    Ok(UnpackedKernel {
        package,
        release,
        vmlinuz,
        config,
        root,
    })
}

fn first_file(candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates.iter().find(|path| path.is_file()).cloned()
}

/// Newer packages ship modules under usr/lib/modules; give both layouts one path.
fn merge_usr_lib_modules(root: &Path) -> Result<()> {
    let usr = root.join("usr/lib/modules");
    let lib = root.join("lib/modules");
    if usr.is_dir() && !lib.exists() {
        fs::create_dir_all(root.join("lib"))?;
        fs::rename(&usr, &lib)
            .with_context(|| format!("moving {} to {}", usr.display(), lib.display()))?;
    }
    Ok(())
}

fn only_entry(dir: &Path) -> Result<String> {
    let names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one kernel release in {}, found {names:?}",
            dir.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_string_reads_the_quoted_value() {
        let config = "# CONFIG_LSM_MMAP_MIN_ADDR is not set\nCONFIG_LSM_X=\"no\"\n\
                      CONFIG_LSM=\"lockdown,yama,apparmor\"\nCONFIG_BPF=y\n";
        assert_eq!(
            config_string(config, "CONFIG_LSM"),
            Some("lockdown,yama,apparmor")
        );
        assert_eq!(config_string(config, "CONFIG_BPF"), None);
        assert_eq!(config_string(config, "CONFIG_NONE"), None);
    }

    #[test]
    fn kernel_names_are_unique() {
        let mut names: Vec<_> = KERNELS.iter().map(|k| k.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KERNELS.len());
    }
}
