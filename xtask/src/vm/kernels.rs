//! The kernel matrix and how each kernel gets from Debian's mirror into `target/vm/`.
use std::{
    cmp::Ordering,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::sh::{output, status};

/// One Debian kernel of the matrix.
pub(crate) struct Kernel {
    /// Short name used on the command line and in result paths.
    pub name: &'static str,
    /// Binary package name; `*` matches one dash-free run (an ABI number or version),
    /// and the newest matching package is used.
    pub package_glob: &'static str,
    /// Whether the kernel loads modules (scenarios marked `needs: modules` skip it otherwise).
    pub has_modules: bool,
}

/// Adding a kernel is one line here.
pub(crate) const KERNELS: &[Kernel] = &[
    Kernel {
        name: "debian-6.1",
        package_glob: "linux-image-6.1.0-*-amd64",
        has_modules: true,
    },
    Kernel {
        name: "debian-6.12-cloud",
        package_glob: "linux-image-6.12.*-cloud-amd64",
        has_modules: true,
    },
];

/// A kernel package unpacked under `target/vm/kernels/`, with `depmod` run on it.
pub(crate) struct UnpackedKernel {
    pub package: String,
    /// `uname -r` of the kernel.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// The unpacked package (`lib/modules/<release>` inside).
    pub root: PathBuf,
}

impl UnpackedKernel {
    pub(crate) fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

/// Downloads (unless cached) and unpacks the newest package matching the kernel's glob.
pub(crate) fn fetch(kernel: &Kernel, vm_dir: &Path) -> Result<UnpackedKernel> {
    let debs = debs_dir(vm_dir)?;
    let deb = match newest_cached_deb(kernel.package_glob, &debs)? {
        Some(deb) => deb,
        None => download(kernel, &debs)?,
    };
    unpack(&deb, &vm_dir.join("kernels"))
        .with_context(|| format!("unpacking {} for kernel {}", deb.display(), kernel.name))
}

/// The .deb of one named package (a guest's userland, not a kernel), downloaded
/// into `target/vm/debs/` unless it is there already; nothing is installed.
pub(crate) fn fetch_package(package: &str, vm_dir: &Path) -> Result<PathBuf> {
    let debs = debs_dir(vm_dir)?;
    if let Some(deb) = newest_cached_deb(package, &debs)? {
        return Ok(deb);
    }
    apt_download(package, &debs)
}

fn debs_dir(vm_dir: &Path) -> Result<PathBuf> {
    let debs = vm_dir.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    Ok(debs)
}

fn newest_cached_deb(package_glob: &str, debs: &Path) -> Result<Option<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(debs).with_context(|| format!("listing {}", debs.display()))? {
        let path = entry?.path();
        let file = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let Some((package, _)) = file.split_once('_') else {
            continue;
        };
        if file.ends_with(".deb") && glob_matches(package_glob, package) {
            found.push((package.to_owned(), path));
        }
    }
    found.sort_by(|a, b| natural_cmp(&a.0, &b.0));
    Ok(found.pop().map(|(_, path)| path))
}

fn download(kernel: &Kernel, debs: &Path) -> Result<PathBuf> {
    let package = match newest_package(kernel)? {
        Some(package) => package,
        None => {
            // A fresh machine may have stale or no package lists.
            status(Command::new("apt-get").args(["update", "-qq"]))?;
            newest_package(kernel)?.with_context(|| {
                format!(
                    "no Debian package matches {} (kernel {})",
                    kernel.package_glob, kernel.name
                )
            })?
        }
    };
    eprintln!("vm: downloading {package} for kernel {}", kernel.name);
    apt_download(&package, debs)
}

/// `apt-get download` of one package into `debs`, returning the .deb it left.
fn apt_download(package: &str, debs: &Path) -> Result<PathBuf> {
    status(
        Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(debs),
    )?;
    newest_cached_deb(package, debs)?.with_context(|| {
        format!(
            "apt-get download {package} left no .deb in {}",
            debs.display()
        )
    })
}

fn newest_package(kernel: &Kernel) -> Result<Option<String>> {
    let prefix = kernel.package_glob.split('*').next().unwrap_or_default();
    let names = output(Command::new("apt-cache").args(["pkgnames", prefix]))?;
    Ok(names
        .lines()
        .filter(|name| glob_matches(kernel.package_glob, name))
        .max_by(|a, b| natural_cmp(a, b))
        .map(str::to_owned))
}

fn unpack(deb: &Path, kernels_dir: &Path) -> Result<UnpackedKernel> {
    let stem = deb
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let package = stem.split('_').next().unwrap_or_default().to_owned();
    let root = kernels_dir.join(&stem);
    let done = root.join(".unpacked");
    if !done.exists() {
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root)?;
        status(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
        merge_usr_lib_modules(&root)?;
    }
    let release = only_entry(&root.join("lib/modules"))?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!("{} holds no boot/vmlinuz-{release}", deb.display());
    }
    if !done.exists() {
        // modules.dep is made by the package's postinst, not shipped.
        status(Command::new("depmod").arg("-b").arg(&root).arg(&release))?;
        fs::write(&done, "")?;
    }
    Ok(UnpackedKernel {
        package,
        release,
        vmlinuz,
        root,
    })
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

/// `*` matches one or more characters other than `-`, so `6.1.0-*-amd64` does not
/// match `6.1.0-56-cloud-amd64`.
pub(crate) fn glob_matches(glob: &str, name: &str) -> bool {
    match glob.split_once('*') {
        None => glob == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (1..=rest.len()).any(|n| {
                rest.is_char_boundary(n)
                    && !rest[..n].contains('-')
                    && glob_matches(tail, &rest[n..])
            })
        }
    }
}

/// Orders names with numbers by value: `6.1.0-9` < `6.1.0-56`.
pub(crate) fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a, b);
    while !a.is_empty() && !b.is_empty() {
        let (chunk_a, rest_a) = split_chunk(a);
        let (chunk_b, rest_b) = split_chunk(b);
        let order = match (chunk_a.parse::<u64>(), chunk_b.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => chunk_a.cmp(chunk_b),
        };
        if order != Ordering::Equal {
            return order;
        }
        (a, b) = (rest_a, rest_b);
    }
    a.len().cmp(&b.len())
}

fn split_chunk(s: &str) -> (&str, &str) {
    let digits = s.starts_with(|c: char| c.is_ascii_digit());
    let end = s
        .find(|c: char| c.is_ascii_digit() != digits)
        .unwrap_or(s.len());
    s.split_at(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_abi_numbers_only() {
        assert!(glob_matches(
            "linux-image-6.1.0-*-amd64",
            "linux-image-6.1.0-56-amd64"
        ));
        assert!(!glob_matches(
            "linux-image-6.1.0-*-amd64",
            "linux-image-6.1.0-56-cloud-amd64"
        ));
        assert!(!glob_matches(
            "linux-image-6.1.0-*-amd64",
            "linux-image-6.1.0-56-amd64-dbg"
        ));
        assert!(glob_matches(
            "linux-image-6.12.*-cloud-amd64",
            "linux-image-6.12.117+deb12-cloud-amd64"
        ));
        assert!(!glob_matches(
            "linux-image-6.12.*-cloud-amd64",
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned"
        ));
    }

    #[test]
    fn natural_order_compares_numbers_by_value() {
        assert_eq!(
            natural_cmp("6.1.0-9-amd64", "6.1.0-56-amd64"),
            Ordering::Less
        );
        assert_eq!(
            natural_cmp("6.12.117+deb12", "6.12.99+deb12"),
            Ordering::Greater
        );
    }
}
