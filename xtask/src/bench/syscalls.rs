//! What each tracer costs a syscall it does not trace: `tests/vm/bench/syscalls.sh`
//! times a getppid loop under each configuration (bare, modtrace with each attach
//! strategy, modtrace enforcing its default policy's deny rules, Debian's auditd
//! with the hardening guide's module rules), interleaved over rounds, in one guest
//! boot per kernel of the VM matrix and then on this host.
//! Each run is a ratio to the bare run of its own round; the table gives the median
//! ratio and its spread, and goes to `target/bench/<kernel>.json`.
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::collector::Collector;
use crate::{
    sh::{output, status},
    vm::{
        self,
        apt::{Apt, BOOKWORM},
        kernels, qemu,
    },
};

/// The configurations, in the order of the first round.
const CONFIGS: &[&str] = &[
    "bare",
    "fentry",
    "kprobe",
    "syscall-tracepoints",
    "raw-syscalls",
    // The default strategy with `--enforce`.
    "enforce",
    "auditd",
];
/// The guest's time is all TCG: boot, each modtrace start and stop, the loops.
const GUEST_BASE_TIMEOUT: Duration = Duration::from_secs(180);
const GUEST_TIMEOUT_PER_RUN: Duration = Duration::from_secs(120);

#[derive(clap::Args)]
pub(crate) struct Settings {
    /// Rounds of the interleaved configurations (each round runs each once).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(3..))]
    rounds: u32,
    /// Timed loops per run; a run's figure is its fastest loop.
    #[arg(long, default_value_t = 10)]
    loops: u32,
    /// getppid calls per timed loop in a guest (TCG: about 2 µs each).
    #[arg(long, default_value_t = 200_000)]
    guest_calls: u64,
    /// getppid calls per timed loop on this host.
    #[arg(long, default_value_t = 1_000_000)]
    host_calls: u64,
}

pub(crate) fn run(kernel: Option<&str>, settings: &Settings) -> Result<()> {
    let out_dir = crate::target_dir().join("bench");
    fs::create_dir_all(&out_dir)?;
    let guests = match kernel {
        Some("host") => Vec::new(),
        name => vm::selected_kernels(&Vec::from_iter(name))?,
    };
    let binaries = vm::build_guest_binaries();
    if binaries.modtrace.is_none() || binaries.mtcall.is_none() {
        bail!("modtrace and mtcall must build for the kernel benches (see the warnings above)");
    }
    let mut failed = Vec::new();
    if !guests.is_empty() {
        let vm_dir = crate::target_dir().join("vm");
        let debs = auditd_debs(&vm_dir)?;
        // One guest at a time: a TCG guest keeps a core busy, and two would
        // measure each other.
        for kernel in guests {
            if let Err(err) = run_guest(kernel, &binaries, &debs, &vm_dir, &out_dir, settings) {
                eprintln!("bench: {}: {err:#}", kernel.name);
                failed.push(kernel.name);
            }
        }
    }
    if kernel.is_none_or(|k| k == "host") {
        if let Err(err) = run_host(&binaries, &out_dir, settings) {
            eprintln!("bench: host: {err:#}");
            failed.push("host");
        }
    }
    if !failed.is_empty() {
        bail!("the kernel bench failed on {}", failed.join(", "));
    }
    Ok(())
}

/// bookworm's auditd and the libraries it depends on (C library aside, which the
/// image has already: this machine's, bookworm's too), through the harness's apt.
fn auditd_debs(vm_dir: &Path) -> Result<Vec<PathBuf>> {
    let apt = Apt::open(&BOOKWORM, vm_dir)?;
    let depends = output(apt.command("apt-cache").args(["depends", "auditd"]))?;
    let mut packages = vec!["auditd".to_owned()];
    packages.extend(
        depends
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .filter(|p| p.starts_with("lib") && !p.starts_with("libc6"))
            .map(str::to_owned),
    );
    packages.iter().map(|p| apt.download(p)).collect()
}

fn run_guest(
    kernel: &'static kernels::Kernel,
    binaries: &vm::image::GuestBinaries,
    debs: &[PathBuf],
    vm_dir: &Path,
    out_dir: &Path,
    settings: &Settings,
) -> Result<()> {
    let workspace = crate::workspace_root();
    let prepared = vm::prepare_kernel(kernel, binaries, debs, &workspace, vm_dir)?;
    let runs = u32::try_from(CONFIGS.len())? * settings.rounds;
    let append = format!(
        "modtrace.bench_rounds={} modtrace.bench_loops={} modtrace.bench_calls={} modtrace.bench_configs={} {}",
        settings.rounds,
        settings.loops,
        settings.guest_calls,
        CONFIGS.join(","),
        prepared.boot_args
    );
    let boot_dir = vm_dir.join("results").join(kernel.name).join("bench");
    let boot = qemu::Boot {
        vmlinuz: &prepared.unpacked.vmlinuz,
        initramfs: &prepared.initramfs,
        scenario: "bench/all",
        append: &append,
        timeout: GUEST_BASE_TIMEOUT + GUEST_TIMEOUT_PER_RUN * runs,
        out_dir: &boot_dir,
    };
    eprintln!(
        "bench: {}: booting {} for {runs} runs of {} loops of {} getppid calls",
        kernel.name, prepared.unpacked.release, settings.loops, settings.guest_calls
    );
    let (results, elapsed) = qemu::run(&boot)?;
    let _ = fs::remove_dir_all(&prepared.work);
    eprintln!(
        "bench: {}: guest ran for {:.0} s",
        kernel.name,
        elapsed.as_secs_f64()
    );
    let table = Table::load(
        kernel.name,
        &prepared.unpacked.release,
        "QEMU TCG guest, 2 vCPUs, single-threaded TCG",
        settings.guest_calls,
        &results,
    )?;
    publish(out_dir, &table, Collector::load(&results)?.as_ref())
}

/// The same script on this machine's kernel, with the collector built here and,
/// when the kernel has audit and this process may drive it, auditd from the
/// package unpacked under `target/bench/host/auditd`.
fn run_host(
    binaries: &vm::image::GuestBinaries,
    out_dir: &Path,
    settings: &Settings,
) -> Result<()> {
    let workspace = crate::workspace_root();
    let host_dir = out_dir.join("host-run");
    let _ = fs::remove_dir_all(&host_dir);
    let results = host_dir.join("results");
    let trace = host_dir.join("trace");
    fs::create_dir_all(&results)?;
    fs::create_dir_all(&trace)?;
    let release_dir = binaries
        .modtrace
        .as_deref()
        .and_then(Path::parent)
        .context("no modtrace binary")?;
    let path = std::env::join_paths(std::iter::once(release_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))?;
    let mut script = Command::new("sh");
    script
        .arg("-c")
        .arg(". tests/vm/scenarios/lib.sh; . tests/vm/bench/all.sh")
        .current_dir(&workspace)
        .env("PATH", &path)
        .env("R", &results)
        .env("T", &trace)
        .env(
            "MODTRACE",
            binaries.modtrace.as_deref().unwrap_or(Path::new("")),
        )
        .env("BENCH_DIR", workspace.join("tests/vm/bench"))
        .env("BENCH_ROUNDS", settings.rounds.to_string())
        .env("BENCH_LOOPS", settings.loops.to_string())
        .env("BENCH_CALLS", settings.host_calls.to_string())
        .env("BENCH_CONFIGS", CONFIGS.join(","))
        // The drain goal (200,000 records a second) is this host's: a second's
        // worth, queued in a ring large enough to hold them all.
        .env("BENCH_DRAIN_CALLS", "200000")
        .env("BENCH_DRAIN_RING", (256u32 << 20).to_string())
        .env("AUDIT_LOG_TMPFS", "no");
    match host_auditd(out_dir) {
        Ok(auditd) => {
            let library_path = std::env::join_paths(
                ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"]
                    .map(|dir| auditd.root.join(dir)),
            )?;
            let path = std::env::join_paths(
                std::iter::once(auditd.root.join("sbin")).chain(std::env::split_paths(&path)),
            )?;
            script
                .env("PATH", path)
                .env("LD_LIBRARY_PATH", library_path)
                .env("AUDITD_ARGS", format!("-c {}", auditd.config_dir.display()))
                .env("AUDIT_LOG", &auditd.log)
                .env("AUDIT_RULES_D", auditd.root.join("etc/audit/rules.d"));
        }
        Err(why) => {
            script.env("AUDIT_UNAVAILABLE", format!("{why:#}"));
        }
    }
    let release = output(Command::new("uname").arg("-r"))?.trim().to_owned();
    eprintln!(
        "bench: host: {} runs of {} loops of {} getppid calls on {release}",
        u32::try_from(CONFIGS.len())? * settings.rounds,
        settings.loops,
        settings.host_calls
    );
    status(&mut script)?;
    let table = Table::load(
        "host",
        &release,
        "this machine, no VM of ours",
        settings.host_calls,
        &results,
    )?;
    publish(out_dir, &table, Collector::load(&results)?.as_ref())
}

/// Debian's auditd unpacked under `target/bench/host-auditd/`, configured to log
/// there, for a host whose kernel has syscall auditing that this process may drive.
struct HostAuditd {
    root: PathBuf,
    config_dir: PathBuf,
    log: PathBuf,
}

fn host_auditd(out_dir: &Path) -> Result<HostAuditd> {
    if !Path::new("/proc/self/loginuid").exists() {
        bail!("the host kernel has no syscall auditing (no /proc/self/loginuid)");
    }
    let vm_dir = crate::target_dir().join("vm");
    let dir = out_dir.join("host-auditd");
    let _ = fs::remove_dir_all(&dir);
    let root = dir.join("root");
    fs::create_dir_all(&root)?;
    for deb in auditd_debs(&vm_dir)? {
        status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }
    let library_path = std::env::join_paths(
        ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"].map(|d| root.join(d)),
    )?;
    output(
        Command::new(root.join("sbin/auditctl"))
            .arg("-s")
            .env("LD_LIBRARY_PATH", &library_path),
    )
    .context("auditctl -s cannot reach the kernel's audit (CAP_AUDIT_CONTROL?)")?;
    // Debian's auditd.conf with its log and plugins moved here.
    let config_dir = dir.join("etc");
    let log = dir.join("log/audit.log");
    fs::create_dir_all(&config_dir)?;
    let conf = fs::read_to_string(root.join("etc/audit/auditd.conf"))?;
    let conf: String = conf
        .lines()
        .map(|line| match line.split_once(" = ") {
            Some(("log_file", _)) => format!("log_file = {}\n", log.display()),
            Some(("plugin_dir", _)) => {
                format!(
                    "plugin_dir = {}\n",
                    root.join("etc/audit/plugins.d").display()
                )
            }
            _ => format!("{line}\n"),
        })
        .collect();
    fs::write(config_dir.join("auditd.conf"), conf)?;
    Ok(HostAuditd {
        root,
        config_dir,
        log,
    })
}

fn publish(out_dir: &Path, table: &Table, collector: Option<&Collector>) -> Result<()> {
    let measured_at = output(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))?;
    let mut json = table.to_json(measured_at.trim());
    json["collector"] = collector.map_or(Value::Null, Collector::to_json);
    let path = out_dir.join(format!("{}.json", table.kernel));
    fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    let collector = collector.map_or("  collector: not measured\n".into(), Collector::render);
    println!("\n{}{collector}  -> {}", table.render(), path.display());
    Ok(())
}

/// One timed loop, as syscalls.sh wrote it.
struct Run {
    round: u32,
    config: String,
    ns_per_call: Option<f64>,
    probe: String,
    note: String,
    /// ns per call of each loop of the run.
    loops: Vec<f64>,
}

struct Table {
    kernel: String,
    release: String,
    machine: String,
    calls: u64,
    rounds: u32,
    runs: Vec<Run>,
}

/// A configuration's figures over the rounds where both it and bare were measured.
struct Summary {
    median_ns: f64,
    median_ratio: f64,
    min_ratio: f64,
    max_ratio: f64,
    /// The configuration's fastest run over bare's fastest: a second reading,
    /// for a machine whose speed jumps between two levels, where a round whose
    /// bare run fell in the slow one skews that round's ratio.
    fastest_ratio: f64,
    probe: String,
}

impl Table {
    fn load(
        kernel: &str,
        release: &str,
        machine: &str,
        calls: u64,
        results: &Path,
    ) -> Result<Table> {
        let tsv = results.join("bench/syscalls.tsv");
        let text = fs::read_to_string(&tsv).with_context(|| {
            let log = fs::read_to_string(results.join("scenario.log")).unwrap_or_default();
            format!("reading {} (bench log: {log})", tsv.display())
        })?;
        let runs = text
            .lines()
            .map(|line| {
                let fields: Vec<&str> = line.split('\t').collect();
                let [round, config, ns, probe, note, loops] = fields[..] else {
                    bail!("{}: not 6 fields: {line:?}", tsv.display());
                };
                Ok(Run {
                    round: round.parse()?,
                    config: config.to_owned(),
                    ns_per_call: ns.parse().ok(),
                    probe: probe.to_owned(),
                    note: note.to_owned(),
                    loops: loops.split(',').filter_map(|v| v.parse().ok()).collect(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let rounds = runs.iter().map(|r| r.round).max().unwrap_or(0);
        Ok(Table {
            kernel: kernel.to_owned(),
            release: release.to_owned(),
            machine: machine.to_owned(),
            calls,
            rounds,
            runs,
        })
    }

    fn loops_per_run(&self) -> usize {
        self.runs.iter().map(|r| r.loops.len()).max().unwrap_or(0)
    }

    fn ns(&self, round: u32, config: &str) -> Option<f64> {
        self.runs
            .iter()
            .find(|r| r.round == round && r.config == config)
            .and_then(|r| r.ns_per_call)
    }

    fn summary(&self, config: &str) -> Option<Summary> {
        let mut ratios = Vec::new();
        let mut ns = Vec::new();
        for round in 1..=self.rounds {
            if let (Some(bare), Some(this)) = (self.ns(round, "bare"), self.ns(round, config)) {
                ratios.push(this / bare);
                ns.push(this);
            }
        }
        let probes: Vec<&str> = self
            .runs
            .iter()
            .filter(|r| r.config == config && r.ns_per_call.is_some())
            .map(|r| r.probe.as_str())
            .collect();
        let seen = probes.iter().filter(|p| **p == "seen").count();
        let probe = match probes.first() {
            Some(&"-") => "-".to_owned(),
            _ => format!("{seen}/{}", probes.len()),
        };
        let bare_fastest = (1..=self.rounds)
            .filter_map(|round| self.ns(round, "bare"))
            .min_by(f64::total_cmp)?;
        Some(Summary {
            median_ns: median(&mut ns)?,
            median_ratio: median(&mut ratios)?,
            min_ratio: ratios.first().copied()?,
            max_ratio: ratios.last().copied()?,
            fastest_ratio: ns.first()? / bare_fastest,
            probe,
        })
    }

    /// Why a configuration has no figure: the first note of its runs.
    fn why_not(&self, config: &str) -> String {
        self.runs
            .iter()
            .find(|r| r.config == config && !r.note.is_empty())
            .map_or("not run".to_owned(), |r| r.note.clone())
    }

    fn render(&self) -> String {
        let mut text = format!(
            "{} ({}, {}): {} rounds, interleaved; each run the fastest of {} loops of {} getppid calls\n",
            self.kernel,
            self.release,
            self.machine,
            self.rounds,
            self.loops_per_run(),
            self.calls
        );
        let _ = writeln!(
            text,
            "  {:<22} {:>10} {:>14} {:>16} {:>17} {:>7}",
            "configuration", "ns/call", "ratio to bare", "spread", "fastest/fastest", "probe"
        );
        for config in CONFIGS {
            match self.summary(config) {
                Some(s) => {
                    let _ = writeln!(
                        text,
                        "  {config:<22} {:>10.1} {:>14.3} {:>16} {:>17.3} {:>7}",
                        s.median_ns,
                        s.median_ratio,
                        format!("{:.3}-{:.3}", s.min_ratio, s.max_ratio),
                        s.fastest_ratio,
                        s.probe
                    );
                }
                None => {
                    let _ = writeln!(
                        text,
                        "  {config:<22} not measured: {}",
                        self.why_not(config)
                    );
                }
            }
        }
        text.push_str(
            "  (ratio: each run over its round's bare run, median of the rounds; spread: the lowest\n   \
             and highest of those; fastest/fastest: the fastest run over bare's fastest; probe: runs\n   \
             whose tracer recorded the delete_module call made after the loop)\n",
        );
        text
    }

    fn to_json(&self, measured_at: &str) -> Value {
        let configs: Vec<Value> = CONFIGS
            .iter()
            .map(|config| {
                let runs: Vec<Value> = self
                    .runs
                    .iter()
                    .filter(|r| r.config == *config)
                    .map(|r| {
                        json!({
                            "round": r.round,
                            "ns_per_call": r.ns_per_call,
                            "loops_ns_per_call": r.loops,
                            "probe": r.probe,
                            "note": r.note,
                        })
                    })
                    .collect();
                match self.summary(config) {
                    Some(s) => json!({
                        "config": config,
                        "median_ns_per_call": s.median_ns,
                        "median_ratio_to_bare": s.median_ratio,
                        "min_ratio_to_bare": s.min_ratio,
                        "max_ratio_to_bare": s.max_ratio,
                        "fastest_over_bare_fastest": s.fastest_ratio,
                        "probe_seen": s.probe,
                        "runs": runs,
                    }),
                    None => json!({
                        "config": config,
                        "not_measured": self.why_not(config),
                        "runs": runs,
                    }),
                }
            })
            .collect();
        json!({
            "bench": "syscall cost: getppid loop, ratio to bare in the same round",
            "kernel": self.kernel,
            "release": self.release,
            "machine": self.machine,
            "measured_at": measured_at,
            "rounds": self.rounds,
            "loops_per_run": self.loops_per_run(),
            "calls_per_loop": self.calls,
            "figure_of_a_run": "its fastest loop",
            "configs": configs,
        })
    }
}

/// Sorts the values and returns their median (the mean of the middle two for an
/// even count), or None for none.
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(round: u32, config: &str, ns: Option<f64>) -> Run {
        Run {
            round,
            config: config.to_owned(),
            ns_per_call: ns,
            probe: if config == "bare" { "-" } else { "seen" }.to_owned(),
            note: if ns.is_none() {
                "failed: no start record"
            } else {
                ""
            }
            .to_owned(),
            loops: ns.into_iter().collect(),
        }
    }

    #[test]
    fn ratios_are_taken_within_each_round() {
        let table = Table {
            kernel: "k".into(),
            release: "r".into(),
            machine: "m".into(),
            calls: 1,
            rounds: 3,
            runs: vec![
                run(1, "bare", Some(100.0)),
                run(1, "raw-syscalls", Some(150.0)),
                run(2, "bare", Some(200.0)),
                run(2, "raw-syscalls", Some(260.0)),
                run(3, "bare", Some(100.0)),
                run(3, "raw-syscalls", Some(140.0)),
                run(1, "fentry", None),
            ],
        };
        let s = table.summary("raw-syscalls").unwrap();
        assert_eq!(s.median_ratio, 1.4);
        assert_eq!((s.min_ratio, s.max_ratio), (1.3, 1.5));
        assert_eq!(s.median_ns, 150.0);
        assert_eq!(s.probe, "3/3");
        assert_eq!(s.fastest_ratio, 1.4);
        assert!(table.summary("fentry").is_none());
        assert_eq!(table.why_not("fentry"), "failed: no start record");
        assert!(table
            .render()
            .contains("fentry                 not measured: failed"));
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }
}
