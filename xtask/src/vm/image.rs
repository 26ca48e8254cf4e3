//! The guest initramfs: busybox, the kernel's release's kmod, modtrace, mtcall, the selected modules
//! with their dependencies, the init, scenario and bench scripts from `tests/vm/`, and
//! any Debian packages a caller adds (the benches' auditd).
use std::{
    ffi::OsString,
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use super::{
    kernels::UnpackedKernel,
    userland::{self, Userland, GUEST_LIBDIR},
};
use crate::sh::{output, output_bytes, status};

/// Modules the scenarios use; their dependencies and soft dependencies come along.
const MODULES: &[&str] = &["sctp", "af_key", "dummy", "loop", "udf"];
/// Where the dummy module's variants go in the guest (see `install_fixtures`).
const FIXTURES_DIR: &str = "lib/modtrace-fixtures";
/// kmod's tools; in the guest they live in /sbin, busybox's applets in /bin.
const KMOD_TOOLS: &[&str] = &["modprobe", "insmod", "rmmod", "lsmod", "modinfo", "depmod"];
/// Kernel-provided module indexes depmod reads when it rebuilds the guest's indexes.
const MODULE_INDEX_FILES: &[&str] = &[
    "modules.builtin",
    "modules.builtin.modinfo",
    "modules.order",
];

/// Project binaries to put in the guest, when they were built.
pub(crate) struct GuestBinaries {
    pub modtrace: Option<PathBuf>,
    pub mtcall: Option<PathBuf>,
}

/// Builds `<out_dir>/initramfs.cpio` for the kernel and returns its path. `debs` are
/// Debian packages unpacked into the image as they are.
pub(crate) fn build(
    kernel: &UnpackedKernel,
    userland: &Userland,
    binaries: &GuestBinaries,
    debs: &[PathBuf],
    tests_vm: &Path,
    out_dir: &Path,
) -> Result<PathBuf> {
    let root = out_dir.join("root");
    let _ = fs::remove_dir_all(&root);
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "results",
        "home/user",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    install_busybox(&root)?;
    install_kmod(&root, userland)
        .with_context(|| format!("adding the kmod of {}", userland.release))?;
    if let Some(modtrace) = &binaries.modtrace {
        install_elf(&root, modtrace, "usr/bin/modtrace")?;
    }
    if let Some(mtcall) = &binaries.mtcall {
        install_elf(&root, mtcall, "usr/bin/mtcall")?;
    }
    install_modules(&root, kernel)
        .with_context(|| format!("adding modules of {}", kernel.package))?;
    install_fixtures(&root, kernel)
        .with_context(|| format!("making the dummy module variants of {}", kernel.package))?;
    install_scripts(&root, tests_vm)?;
    install_debs(&root, debs)?;
    install_users(&root)?;
    let cpio = out_dir.join("initramfs.cpio");
    write_cpio(&root, &cpio)?;
    Ok(cpio)
}

fn install_busybox(root: &Path) -> Result<()> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox is missing: install busybox-static (cargo xtask setup)");
    }
    copy_file(busybox, &root.join("bin/busybox"))?;
    let applets = output(Command::new(busybox).arg("--list"))?;
    for applet in applets
        .lines()
        .filter(|a| !KMOD_TOOLS.contains(a) && *a != "busybox")
    {
        symlink("busybox", root.join("bin").join(applet))?;
    }
    Ok(())
}

/// The release's kmod at /usr/bin/kmod, its libraries and loader in
/// [`GUEST_LIBDIR`]; the kmod tools are symlinks to it in /sbin, so that the
/// kernel's usermode helper execs the real ELF.
fn install_kmod(root: &Path, userland: &Userland) -> Result<()> {
    let files = userland.kmod_files()?;
    let kmod = root.join("usr/bin/kmod");
    copy_file(&files.kmod, &kmod)?;
    userland::patch_kmod(&kmod, &files.interpreter)?;
    let libdir = root.join(GUEST_LIBDIR.trim_start_matches('/'));
    for (name, library) in &files.libraries {
        copy_file(library, &libdir.join(name))?;
    }
    for tool in KMOD_TOOLS {
        symlink("/usr/bin/kmod", root.join("sbin").join(tool))?;
    }
    Ok(())
}

/// Copies an executable and every shared library `ldd` lists (the loader too) to
/// the same absolute paths in the image.
fn install_elf(root: &Path, binary: &Path, dest: &str) -> Result<()> {
    copy_file(binary, &root.join(dest))?;
    install_libraries(root, binary, None)
}

/// Copies from this machine every shared library of `binary` that is not in the
/// image yet. `library_path` (LD_LIBRARY_PATH) lets ldd find the image's own first.
fn install_libraries(root: &Path, binary: &Path, library_path: Option<&OsString>) -> Result<()> {
    for lib in shared_libraries(binary, library_path)? {
        if lib.starts_with(root) {
            continue;
        }
        let dest = root.join(lib.strip_prefix("/").unwrap_or(&lib));
        if !dest.exists() {
            copy_file(&lib, &dest)?;
        }
    }
    Ok(())
}

fn shared_libraries(binary: &Path, library_path: Option<&OsString>) -> Result<Vec<PathBuf>> {
    let mut ldd = Command::new("ldd");
    if let Some(path) = library_path {
        ldd.env("LD_LIBRARY_PATH", path);
    }
    let out = ldd
        .arg(binary)
        .output()
        .with_context(|| format!("running ldd {}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // ldd fails on static executables, which need nothing.
        return Ok(Vec::new());
    }
    if let Some(missing) = text.lines().find(|l| l.contains("not found")) {
        bail!(
            "{} needs a library nothing provides: {}",
            binary.display(),
            missing.trim()
        );
    }
    Ok(text
        .lines()
        .filter_map(|line| {
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Copies the requested modules with everything `modprobe --show-depends` pulls in,
/// then rebuilds the indexes for just those.
fn install_modules(root: &Path, kernel: &UnpackedKernel) -> Result<()> {
    let src = kernel.modules_dir();
    let dest = root.join("lib/modules").join(&kernel.release);
    fs::create_dir_all(&dest)?;
    for name in MODULES {
        for file in module_closure(kernel, name)? {
            let relative = file.strip_prefix(&src).with_context(|| {
                format!(
                    "modprobe resolved {name} to {} outside {}",
                    file.display(),
                    src.display()
                )
            })?;
            copy_file(&file, &dest.join(relative))?;
        }
    }
    for index in MODULE_INDEX_FILES {
        copy_file(&src.join(index), &dest.join(index))?;
    }
    status(
        Command::new("depmod")
            .arg("-b")
            .arg(root)
            .arg(&kernel.release),
    )
}

fn module_closure(kernel: &UnpackedKernel, name: &str) -> Result<Vec<PathBuf>> {
    let plan = output(
        Command::new("/sbin/modprobe")
            .arg("-d")
            .arg(&kernel.root)
            .args([
                "-S",
                &kernel.release,
                "--ignore-install",
                "--show-depends",
                name,
            ]),
    )?;
    let files: Vec<PathBuf> = plan
        .lines()
        .filter_map(|line| line.strip_prefix("insmod "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(PathBuf::from)
        .collect();
    if files.is_empty() {
        bail!(
            "{} has no module {name} (modprobe --show-depends: {plan:?})",
            kernel.package
        );
    }
    Ok(files)
}

/// Variants of the kernel's own dummy module, for scenarios that need a file
/// of known bytes: uncompressed, xz-compressed here (with the CRC32 check the
/// kernel's decompressor accepts), and with its signature stripped.
fn install_fixtures(root: &Path, kernel: &UnpackedKernel) -> Result<()> {
    let dummy = module_closure(kernel, "dummy")?
        .pop()
        .context("modprobe resolved dummy to no file")?;
    let plain = match dummy.extension().and_then(|e| e.to_str()) {
        Some("ko") => fs::read(&dummy).with_context(|| format!("reading {}", dummy.display()))?,
        Some("xz") => output_bytes(Command::new("xz").arg("-dc").arg(&dummy))?,
        _ => bail!("{}: compression not handled here", dummy.display()),
    };
    let dir = root.join(FIXTURES_DIR);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("dummy-unsigned.ko"), strip_signature(&plain)?)?;
    fs::write(dir.join("dummy.ko"), &plain)?;
    status(
        Command::new("xz")
            .args(["--check=crc32", "--keep", "--threads=1"])
            .arg(dir.join("dummy.ko")),
    )
}

/// The module without its appended signature (module-signing.rst: the
/// signature, a 12-byte `struct module_signature` ending in the signature's
/// big-endian length, then the magic string).
fn strip_signature(image: &[u8]) -> Result<&[u8]> {
    const MAGIC: &[u8] = b"~Module signature appended~\n";
    const INFO_LEN: usize = 12;
    let body = image
        .strip_suffix(MAGIC)
        .context("the module carries no signature to strip")?;
    let info_at = body
        .len()
        .checked_sub(INFO_LEN)
        .context("signature trailer truncated")?;
    let sig_len: [u8; 4] = body[info_at + 8..info_at + 12].try_into()?;
    info_at
        .checked_sub(u32::from_be_bytes(sig_len) as usize)
        .and_then(|end| body.get(..end))
        .context("signature length exceeds the module")
}

/// The init, the scenarios in /scenarios, and the benches in /scenarios/bench, so that
/// init runs a bench as the scenario `bench/NAME`.
fn install_scripts(root: &Path, tests_vm: &Path) -> Result<()> {
    copy_file(&tests_vm.join("init"), &root.join("init"))?;
    for (from, to) in [("scenarios", "scenarios"), ("bench", "scenarios/bench")] {
        let dir = tests_vm.join(from);
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            copy_file(
                &path,
                &root.join(to).join(path.file_name().unwrap_or_default()),
            )?;
        }
    }
    Ok(())
}

/// Unpacks Debian packages into the image, then adds from this machine each shared
/// library their executables need that none of them brings (libc and the like).
fn install_debs(root: &Path, debs: &[PathBuf]) -> Result<()> {
    let mut executables = Vec::new();
    for deb in debs {
        status(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root))?;
        // `-rwxr-xr-x root/root 12345 2023-01-01 00:00 ./sbin/auditd`
        let listing = output(Command::new("dpkg-deb").arg("-c").arg(deb))?;
        executables.extend(listing.lines().filter_map(|line| {
            let mut fields = line.split_whitespace();
            let mode = fields.next()?;
            let path = fields.last()?.strip_prefix("./")?;
            (mode.starts_with("-rwx") && path.contains("bin/")).then(|| root.join(path))
        }));
    }
    let library_path = std::env::join_paths(
        ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"].map(|dir| root.join(dir)),
    )?;
    for executable in executables {
        install_libraries(root, &executable, Some(&library_path))?;
    }
    Ok(())
}

/// The uid-1000 user for busybox su/setpriv and for readable names in the guest.
fn install_users(root: &Path) -> Result<()> {
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
    )?;
    // adm: auditd's log_group in Debian's auditd.conf.
    fs::write(
        root.join("etc/group"),
        "root:x:0:\nadm:x:4:\nuser:x:1000:\n",
    )?;
    Ok(())
}

fn write_cpio(root: &Path, cpio: &Path) -> Result<()> {
    let file = fs::File::create(cpio).with_context(|| format!("creating {}", cpio.display()))?;
    let listing = output(Command::new("find").arg(".").current_dir(root))?;
    let mut child = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc", "--owner", "0:0"])
        .current_dir(root)
        .stdin(std::process::Stdio::piped())
        .stdout(file)
        .spawn()
        .context("running cpio")?;
    use std::io::Write as _;
    child
        .stdin
        .take()
        .context("cpio stdin")?
        .write_all(listing.as_bytes())?;
    let exit = child.wait()?;
    if !exit.success() {
        bail!("cpio failed with {exit} while writing {}", cpio.display());
    }
    Ok(())
}

/// Copies a file's contents (following symlinks), creating parent directories and
/// keeping the permission bits.
fn copy_file(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}
