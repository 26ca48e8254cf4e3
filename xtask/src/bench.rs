//! `cargo xtask bench`: the workspace's criterion benches, then the median of
//! each benchmark this run measured (criterion's own summary gives the mean);
//! then the kernel benches (`bench/syscalls.rs`): what each tracer costs an
//! unrelated syscall, and the collector's start-up, latency and RSS
//! (`bench/collector.rs`), in the VM matrix's guests and on this host.
mod baseline;
mod collector;
mod syscalls;

use std::{
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context as _, Result};
use serde_json::Value;

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// Only criterion benchmarks whose name contains this (criterion's filter).
    filter: Option<String>,
    /// Run one part only: the criterion benches (`policy`), `baseline create`
    /// against the guide's sha256sum (`baseline`), or the kernel benches (`kernels`).
    #[arg(long, value_enum)]
    only: Option<Part>,
    /// Kernel benches on this kernel only: a name of the VM matrix (as vm-test's
    /// --kernel) or `host`. Implies --only kernels.
    #[arg(long)]
    kernel: Option<String>,
    #[command(flatten)]
    syscalls: syscalls::Settings,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    Policy,
    Baseline,
    Kernels,
}

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    let only = match (args.only, &args.kernel) {
        (Some(Part::Policy | Part::Baseline), Some(_)) => {
            anyhow::bail!("--kernel selects a kernel bench; drop --only")
        }
        (None, Some(_)) => Some(Part::Kernels),
        (only, _) => only,
    };
    let runs = |part| only.is_none_or(|only| only == part);
    if runs(Part::Policy) {
        run_criterion(args.filter.as_deref())?;
    }
    if runs(Part::Baseline) {
        baseline::run()?;
    }
    if runs(Part::Kernels) {
        syscalls::run(args.kernel.as_deref(), &args.syscalls)?;
    }
    Ok(())
}

fn run_criterion(filter: Option<&str>) -> Result<()> {
    let started = SystemTime::now();
    // Default members only: the eBPF crate never builds for the host.
    let mut args = vec!["bench", "--benches"];
    if let Some(filter) = filter {
        args.extend(["--", filter]);
    }
    crate::run_cargo(&args)?;
    let medians = medians_since(&criterion_dir(), started)?;
    println!("\nmedians of this run:");
    for (name, nanoseconds) in medians {
        println!("  {name:<60} {}", human(nanoseconds));
    }
    Ok(())
}

fn criterion_dir() -> PathBuf {
    crate::target_dir().join("criterion")
}

/// (benchmark, median in ns) of every benchmark whose estimates were written
/// after `since`, so that results of earlier runs are not shown as this one's.
fn medians_since(dir: &Path, since: SystemTime) -> Result<Vec<(String, f64)>> {
    let mut medians = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let estimates = entry?.path().join("new/estimates.json");
        let Ok(modified) = fs::metadata(&estimates).and_then(|m| m.modified()) else {
            continue;
        };
        if modified < since {
            continue;
        }
        let read = |path: &Path| -> Result<Value> {
            let text =
                fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        };
        let benchmark = read(&estimates.with_file_name("benchmark.json"))?;
        let median = read(&estimates)?["median"]["point_estimate"]
            .as_f64()
            .with_context(|| format!("no median in {}", estimates.display()))?;
        let name = benchmark["full_id"].as_str().unwrap_or("?").to_owned();
        medians.push((name, median));
    }
    medians.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(medians)
}

fn human(nanoseconds: f64) -> String {
    if nanoseconds >= 1_000.0 {
        format!("{:.2} µs", nanoseconds / 1_000.0)
    } else {
        format!("{nanoseconds:.0} ns")
    }
}
