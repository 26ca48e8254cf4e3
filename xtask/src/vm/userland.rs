//! A release's own kmod for its guests: the kmod package and everything it
//! depends on, from the release's packages (never this machine's), unpacked
//! under `target/vm/userland/<release>/`. The image gets kmod with its shared
//! libraries and the release's dynamic loader in a directory of their own
//! ([`GUEST_LIBDIR`]), kmod's ELF interpreter and RPATH pointed there, so that
//! it runs beside the host-built modtrace and mtcall, which use this machine's
//! C library at the usual paths.
use std::{
    collections::BTreeMap,
    fs,
    path::{Component, Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use super::apt::{upstream_version, Apt, Release};
use crate::sh::{output, status};

/// Where the image holds the release's kmod libraries and loader.
pub(crate) const GUEST_LIBDIR: &str = "/usr/lib/kmod-release";
/// Where the shared libraries of a Debian amd64 system live, merged /usr or not.
const LIBRARY_DIRS: &[&str] = &[
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib64",
    "usr/lib64",
];
/// Libraries kmod 34 and later dlopen to decompress modules (no DT_NEEDED),
/// with the packages that hold them; older kmod links them and finds them anyway.
const DLOPENED: &[(&str, &str)] = &[
    ("liblzma.so.5", "liblzma5"),
    ("libzstd.so.1", "libzstd1"),
    ("libz.so.1", "zlib1g"),
];
/// Symlinks followed inside the unpacked tree before giving up.
const MAX_LINKS: usize = 16;

/// The unpacked kmod of one release.
pub(crate) struct Userland {
    pub release: &'static str,
    /// The kmod package's version (`28-1`).
    pub kmod_package_version: String,
    root: PathBuf,
}

/// The files of kmod for a guest, from one release's packages.
pub(crate) struct KmodFiles {
    /// The kmod executable, to be patched by [`patch_kmod`] once copied.
    pub kmod: PathBuf,
    /// Every shared library kmod loads, and the dynamic loader, by file name in [`GUEST_LIBDIR`].
    pub libraries: BTreeMap<String, PathBuf>,
    /// The loader's file name in [`GUEST_LIBDIR`].
    pub interpreter: String,
}

/// Downloads (unless cached) kmod and its dependencies from the release, and unpacks them.
pub(crate) fn fetch(release: &'static Release, vm_dir: &Path) -> Result<Userland> {
    let apt = Apt::open(release, vm_dir)?;
    let debs = apt
        .download_with_depends(
            &std::iter::once("kmod")
                .chain(DLOPENED.iter().map(|(_, package)| *package))
                .collect::<Vec<_>>(),
        )
        .with_context(|| format!("fetching kmod of {}", release.name))?;
    let root = vm_dir.join("userland").join(release.name);
    let names: Vec<String> = debs
        .iter()
        .map(|d| {
            d.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let listing = names.join("\n");
    let done = root.join(".unpacked");
    if !fs::read_to_string(&done).is_ok_and(|text| text == listing) {
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root)?;
        for deb in &debs {
            status(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
        }
        fs::write(&done, &listing)?;
    }
    let kmod_deb = debs
        .iter()
        .find(|d| {
            d.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("kmod_"))
        })
        .context("apt resolved kmod to no kmod package")?;
    let version = output(
        Command::new("dpkg-deb")
            .arg("-f")
            .arg(kmod_deb)
            .arg("Version"),
    )?;
    Ok(Userland {
        release: release.name,
        kmod_package_version: version.trim().to_owned(),
        root,
    })
}

impl Userland {
    /// What `kmod --version` prints first for this release's kmod.
    pub(crate) fn kmod_version_line(&self) -> String {
        format!(
            "kmod version {}",
            upstream_version(&self.kmod_package_version)
        )
    }

    /// kmod, its library closure and its loader, each resolved inside the release.
    pub(crate) fn kmod_files(&self) -> Result<KmodFiles> {
        let kmod = ["usr/bin/kmod", "bin/kmod"]
            .iter()
            .map(|p| self.root.join(p))
            .find(|p| p.is_file())
            .with_context(|| format!("the kmod of {} has no bin/kmod", self.release))?;
        let interpreter_path = patchelf(&["--print-interpreter"], &kmod)?;
        let interpreter = self.resolve(Path::new(interpreter_path.trim()))?;
        let interpreter_name = file_name(Path::new(interpreter_path.trim()));
        let mut libraries = BTreeMap::from([(interpreter_name.clone(), interpreter)]);
        let mut pending = vec![kmod.clone()];
        for (soname, _) in DLOPENED {
            let library = self.library(soname)?;
            pending.push(library.clone());
            libraries.insert((*soname).to_owned(), library);
        }
        while let Some(elf) = pending.pop() {
            for soname in patchelf(&["--print-needed"], &elf)?.lines() {
                if libraries.contains_key(soname) {
                    continue;
                }
                let library = self
                    .library(soname)
                    .with_context(|| format!("{} needs {soname}", elf.display()))?;
                pending.push(library.clone());
                libraries.insert(soname.to_owned(), library);
            }
        }
        Ok(KmodFiles {
            kmod,
            libraries,
            interpreter: interpreter_name,
        })
    }

    fn library(&self, soname: &str) -> Result<PathBuf> {
        LIBRARY_DIRS
            .iter()
            .find_map(|dir| self.resolve(&Path::new("/").join(dir).join(soname)).ok())
            .with_context(|| {
                format!(
                    "no package of kmod's dependencies in {} provides {soname}",
                    self.release
                )
            })
    }

    /// The file an absolute path of the release names, symlinks followed inside
    /// the unpacked tree, and `/lib…` found under `/usr/lib…` too (merged /usr).
    fn resolve(&self, path: &Path) -> Result<PathBuf> {
        let mut path = path.to_path_buf();
        for _ in 0..MAX_LINKS {
            let inside = |p: &Path| self.root.join(p.strip_prefix("/").unwrap_or(p));
            let candidate = [
                inside(&path),
                inside(&Path::new("/usr").join(path.strip_prefix("/").unwrap_or(&path))),
            ]
            .into_iter()
            .find(|c| c.symlink_metadata().is_ok())
            .with_context(|| {
                format!(
                    "{} is not in the packages of {}",
                    path.display(),
                    self.release
                )
            })?;
            match fs::read_link(&candidate) {
                Ok(target) => {
                    let base = candidate
                        .strip_prefix(&self.root)
                        .map(|p| Path::new("/").join(p))
                        .unwrap_or_default();
                    path = normalize(&base.parent().unwrap_or(Path::new("/")).join(target));
                }
                Err(_) => return Ok(candidate),
            }
        }
        bail!("{}: too many symlinks in {}", path.display(), self.release)
    }
}

/// `a/b/../c` → `a/c`, without touching the file system (an absolute symlink
/// target replaces the base when joined).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

fn patchelf(args: &[&str], elf: &Path) -> Result<String> {
    output(Command::new("patchelf").args(args).arg(elf))
        .context("patchelf is needed for the guests' kmod (cargo xtask setup installs it)")
}

/// Points the copied kmod at the release's loader and libraries in the image
/// (DT_RPATH, not RUNPATH: it also serves the libraries' own dependencies).
pub(crate) fn patch_kmod(kmod: &Path, interpreter: &str) -> Result<()> {
    patchelf(
        &[
            "--set-interpreter",
            &format!("{GUEST_LIBDIR}/{interpreter}"),
            "--force-rpath",
            "--set-rpath",
            GUEST_LIBDIR,
        ],
        kmod,
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_resolves_parent_directories() {
        assert_eq!(
            normalize(Path::new("/lib64/../lib/x86_64-linux-gnu/ld-2.31.so")),
            PathBuf::from("/lib/x86_64-linux-gnu/ld-2.31.so")
        );
    }

    #[test]
    fn resolve_follows_links_inside_the_tree_and_merged_usr() {
        let dir = std::env::temp_dir().join(format!("userland-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let lib = dir.join("usr/lib/x86_64-linux-gnu");
        fs::create_dir_all(&lib).unwrap();
        fs::create_dir_all(dir.join("usr/lib64")).unwrap();
        fs::write(lib.join("ld-linux-x86-64.so.2"), "loader").unwrap();
        std::os::unix::fs::symlink(
            "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            dir.join("usr/lib64/ld-linux-x86-64.so.2"),
        )
        .unwrap();
        std::os::unix::fs::symlink("ld-linux-x86-64.so.2", lib.join("ld.so")).unwrap();
        let userland = Userland {
            release: "test",
            kmod_package_version: "34.2-2".into(),
            root: dir.clone(),
        };
        let loader = lib.join("ld-linux-x86-64.so.2");
        assert_eq!(
            userland
                .resolve(Path::new("/lib64/ld-linux-x86-64.so.2"))
                .unwrap(),
            loader
        );
        assert_eq!(
            userland
                .resolve(Path::new("/lib/x86_64-linux-gnu/ld.so"))
                .unwrap(),
            loader
        );
        assert!(userland.resolve(Path::new("/lib/libnone.so.1")).is_err());
        assert_eq!(userland.kmod_version_line(), "kmod version 34.2");
        fs::remove_dir_all(&dir).unwrap();
    }
}
