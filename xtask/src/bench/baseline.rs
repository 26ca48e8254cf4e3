//! `baseline create` on the Debian 6.1 module tree (about 4,000 files), side
//! by side with the hardening guide's `find … -exec sha256sum {} + | sort`,
//! on this host, warm page cache, each run alternately.
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::vm::kernels::{self, KERNELS};

/// The kernel whose tree the issue names.
const KERNEL: &str = "debian-6.1";
const ROUNDS: usize = 5;
/// The goal: modtrace at least this many times faster.
const GOAL: f64 = 1.8;

pub(crate) fn run() -> Result<()> {
    let kernel = KERNELS
        .iter()
        .find(|k| k.name == KERNEL)
        .with_context(|| format!("no kernel {KERNEL} in the VM matrix"))?;
    let unpacked = kernels::fetch(kernel, &crate::target_dir().join("vm"))?;
    let modules = unpacked.modules_dir();
    // A root for `--root`: the kernel's release, and its module tree linked in.
    let root_dir = crate::target_dir().join("bench/baseline-root");
    let _ = std::fs::remove_dir_all(&root_dir);
    let root = Root(root_dir);
    let host_modules = root.path().join("lib/modules");
    std::fs::create_dir_all(root.path().join("proc/sys/kernel"))?;
    std::fs::create_dir_all(&host_modules)?;
    std::fs::write(
        root.path().join("proc/sys/kernel/osrelease"),
        format!("{}\n", unpacked.release),
    )?;
    std::os::unix::fs::symlink(&modules, host_modules.join(&unpacked.release))?;
    let modtrace = crate::target_dir().join("release/modtrace");
    crate::run_cargo(&["build", "--release", "-p", "modtrace"])?;
    let output = root.path().join("baseline.json");
    let guide = format!(
        "find {} -name '*.ko*' -exec sha256sum {{}} + | sort > {}",
        modules.display(),
        root.path().join("guide.sha256").display()
    );
    let files = count_modules(&modules)?;
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    // One untimed run of each fills the page cache.
    for round in 0..=ROUNDS {
        let a = timed(
            Command::new(&modtrace)
                .args(["baseline", "create", "--root"])
                .arg(root.path())
                .arg("--output")
                .arg(&output),
        )?;
        let b = timed(Command::new("sh").arg("-c").arg(&guide))?;
        if round > 0 {
            ours.push(a);
            theirs.push(b);
        }
    }
    let (ours, theirs) = (median(&mut ours), median(&mut theirs));
    let speedup = theirs.as_secs_f64() / ours.as_secs_f64();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nbaseline create on {} ({files} module files), median of {ROUNDS} warm runs, load {}:",
        unpacked.release,
        load.split_whitespace().next().unwrap_or("?")
    );
    println!(
        "  modtrace baseline create                      {:>8.3} s",
        ours.as_secs_f64()
    );
    println!(
        "  find -exec sha256sum {{}} + | sort (the guide)  {:>8.3} s",
        theirs.as_secs_f64()
    );
    println!(
        "  modtrace is {speedup:.2}x as fast (goal {GOAL}x): {}",
        if speedup >= GOAL { "met" } else { "NOT met" }
    );
    Ok(())
}

/// The scratch root, as `root.path()` reads.
struct Root(std::path::PathBuf);

impl Root {
    fn path(&self) -> &Path {
        &self.0
    }
}

fn count_modules(dir: &Path) -> Result<usize> {
    let out = Command::new("find")
        .arg(dir)
        .args(["-name", "*.ko*"])
        .output()?;
    Ok(out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count())
}

fn timed(command: &mut Command) -> Result<Duration> {
    let started = Instant::now();
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(started.elapsed())
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}
