//! Idempotent set-up of a fresh Debian machine: every step first checks whether
//! its result is already there, so a second run takes seconds.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::sh::{output, status};

/// bpf-linker must use the same LLVM as the nightly that emits the bitcode; 0.13
/// is the release that builds against LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";
const NIGHTLY: &str = "nightly";
/// Debian packages for the VM matrix (QEMU, the guest's userland, module tools).
const DEBIAN_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "cpio",
    "xz-utils",
    "zstd",
    // pahole: the BTF offset tests check every offset against it.
    "dwarves",
    // Points each guest's kmod at its release's own loader and libraries.
    "patchelf",
];

pub(crate) fn run() -> Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_debian_packages()
}

fn nightly_sysroot() -> Result<PathBuf> {
    let sysroot = output(Command::new("rustc").arg(format!("+{NIGHTLY}")).args(["--print", "sysroot"]))
        .context("the nightly toolchain is needed to build the eBPF programs (rustup toolchain install nightly)")?;
    Ok(PathBuf::from(sysroot.trim()))
}

fn ensure_rust_src() -> Result<()> {
    if nightly_sysroot()?
        .join("lib/rustlib/src/rust/library/core")
        .is_dir()
    {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

fn installed_bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn ensure_bpf_linker() -> Result<()> {
    if installed_bpf_linker_version().is_some_and(|v| v.contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    let sysroot = nightly_sysroot()?;
    let libllvm = find_libllvm(&sysroot.join("lib"))?;
    // bpf-linker's build looks for lib/libLLVM.so under LLVM_PREFIX; the nightly
    // ships it under a versioned name only.
    let prefix = std::env::temp_dir().join("modtrace-llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {}",
        libllvm.display()
    );
    status(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--locked", "--no-default-features"])
            .args([
                "--features",
                BPF_LINKER_LLVM_FEATURE,
                "--version",
                BPF_LINKER_VERSION,
            ])
            .env("LLVM_PREFIX", &prefix)
            .env(
                "RUSTFLAGS",
                format!("-C link-arg=-Wl,-rpath,{}", sysroot.join("lib").display()),
            ),
    )
}

fn find_libllvm(libdir: &Path) -> Result<PathBuf> {
    let entries =
        std::fs::read_dir(libdir).with_context(|| format!("listing {}", libdir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("libLLVM.so.") {
            return Ok(path);
        }
    }
    bail!(
        "no libLLVM.so.* in {}: the nightly toolchain is incomplete",
        libdir.display()
    )
}

fn ensure_debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", pkg])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages {}", missing.join(" "));
    status(Command::new("apt-get").arg("update").arg("-qq"))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
