//! Project tasks cargo cannot do alone: set-up of a fresh machine, the whole test
//! suite, running the collector, the VM matrix, and benchmarks.
mod bench;
mod setup;
mod sh;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "modtrace project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and the tests need (idempotent; seconds when done).
    Setup,
    /// Set up, check formatting and lints, then run every test: unit, host
    /// integration, and the VM matrix's test set (`vm-test --test-set`).
    Test,
    /// Set up, build, then run `modtrace watch` with the given arguments.
    Watch {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Boot Debian kernels in QEMU and run the real-module scenarios.
    VmTest(vm::VmTestArgs),
    /// Set up, run the workspace's criterion benches and print the median of each,
    /// then measure each tracer's cost per unrelated syscall on the VM matrix's
    /// kernels and this host (tables on stdout and in target/bench/).
    Bench(bench::BenchArgs),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Test => {
            setup::run()?;
            lint()?;
            // Default members only: the eBPF crate builds for the BPF target
            // through build.rs, never for the host. This runs the unit tests
            // and modtrace's one host integration test binary (`--test host`).
            run_cargo(&["test", "--release"])?;
            vm::run(&vm::VmTestArgs {
                test_set: true,
                ..vm::VmTestArgs::default()
            })
        }
        Task::Watch { args } => {
            setup::run()?;
            run_cargo(&["build", "--release", "--package", "modtrace"])?;
            let modtrace = target_dir().join("release/modtrace");
            let status = Command::new(&modtrace)
                .arg("watch")
                .args(&args)
                .status()
                .with_context(|| format!("running {}", modtrace.display()))?;
            if !status.success() {
                bail!("modtrace watch exited with {status}");
            }
            Ok(())
        }
        Task::VmTest(args) => {
            setup::run()?;
            vm::run(&args)
        }
        Task::Bench(args) => {
            setup::run()?;
            bench::run(&args)
        }
    }
}

/// An unformatted file or a clippy warning fails the test command, on the
/// userspace crates (stable) and on the eBPF crate (nightly, BPF target).
fn lint() -> Result<()> {
    run_cargo(&["fmt", "--all", "--check"])?;
    run_cargo(&[
        "clippy",
        "--release",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    sh::status(Command::new("cargo").args([
        "+nightly",
        "clippy",
        "--release",
        "--package",
        "modtrace-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))
}

/// Runs cargo with the toolchain that invoked xtask, failing on a non-zero exit.
pub fn run_cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    sh::status(Command::new(cargo).args(args))
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR` when set (a relative one
/// from the current directory, as cargo reads it), else the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => std::env::current_dir().unwrap_or_default().join(dir),
        None => workspace_root().join("target"),
    }
}
