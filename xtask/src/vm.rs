//! The VM matrix: `cargo xtask vm-test` boots real Debian kernels in QEMU, runs each
//! scenario of `tests/vm/scenarios/` with the real kmod tools in its own fresh guest,
//! brings the results back, and asserts them on the host with the checks of
//! `tests/vm/checks/` (the `modtrace-vm-checks` crate).
pub(crate) mod apt;
pub(crate) mod image;
pub(crate) mod kernels;
pub(crate) mod qemu;
pub(crate) mod userland;

use std::{
    collections::VecDeque,
    fs,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use modtrace_vm_checks::{self as checks, ScenarioResults};

use self::kernels::{InTest, Kernel, KERNELS};

/// What `cargo xtask test` runs on kernels marked [`InTest::Core`]: the
/// scenarios whose outcome depends most on the kernel and its kmod: how each
/// kind of load file reaches the kernel and the image read back (identity),
/// the attach strategies (strategies), the kernel-spawned modprobe and its
/// cause (autoload). The rest exercise modtrace's userspace on any kernel,
/// and run in full on the kernel marked `All`; `cargo xtask vm-test` runs
/// everything everywhere.
pub(crate) const CORE_SCENARIOS: &[&str] = &["autoload", "identity", "strategies"];
/// What a preemptible kernel adds to the core scenarios in the test set:
/// many calls of one syscall at once, where preempted callers make the
/// kernel skip programs (modtrace/src/kernel/skipped.rs).
pub(crate) const PREEMPTION_SCENARIOS: &[&str] = &["concurrency", "pending"];

/// Hard limit per guest: boot, scenario, results, poweroff.
/// Generous: a guest under TCG on a loaded 2-core host runs several times slower.
const VM_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(clap::Args)]
pub(crate) struct VmTestArgs {
    /// Run only these kernels (names: the KERNELS table in xtask/src/vm/kernels.rs;
    /// repeat the option or separate names with commas).
    #[arg(long, value_delimiter = ',')]
    pub kernel: Vec<String>,
    /// Run only these scenarios (file names under tests/vm/scenarios/, without .sh).
    #[arg(long, value_delimiter = ',')]
    pub scenario: Vec<String>,
    /// Keep each guest's initramfs tree and raw serial output under target/vm/work.
    #[arg(long)]
    pub keep: bool,
    /// Run what `cargo xtask test` runs: every scenario on the kernels marked
    /// `InTest::All` in the KERNELS table, CORE_SCENARIOS on the others.
    #[arg(long)]
    pub test_set: bool,
    /// Guests run at once; each is one single-threaded TCG process, so more
    /// than the host's free cores only slows every guest down.
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
}

impl Default for VmTestArgs {
    fn default() -> Self {
        Self {
            kernel: Vec::new(),
            scenario: Vec::new(),
            keep: false,
            test_set: false,
            jobs: 2,
        }
    }
}

/// A scenario script and what it needs from a kernel.
struct Scenario {
    name: String,
    needs_modules: bool,
}

pub(crate) fn run(args: &VmTestArgs) -> Result<()> {
    let workspace = crate::workspace_root();
    let vm_dir = crate::target_dir().join("vm");
    let kernels = selected_kernels(&args.kernel)?;
    let scenarios = selected_scenarios(&workspace.join("tests/vm/scenarios"), args)?;
    let binaries = build_guest_binaries();
    // Downloads and images one kernel at a time (apt and the disk gain nothing
    // from overlap), then runs the guests `jobs` at a time.
    let prepared = kernels
        .into_iter()
        .map(|kernel| prepare_kernel(kernel, &binaries, &[], &workspace, &vm_dir))
        .collect::<Result<Vec<_>>>()?;
    let runs = planned_runs(&prepared, &scenarios, args.test_set);
    let outcomes = run_all(&runs, args.jobs.max(1), &binaries, &vm_dir)?;
    if !args.keep {
        for kernel in &prepared {
            let _ = fs::remove_dir_all(&kernel.work);
        }
    }
    report_timings(&prepared, &outcomes);
    let outcomes: Vec<checks::Outcome> = outcomes.into_iter().map(|run| run.outcome).collect();
    report(&outcomes)
}

/// One guest boot: a scenario on a kernel.
struct Run<'a> {
    kernel: &'a PreparedKernel,
    scenario: &'a Scenario,
}

/// What a guest boot gave, with its wall time and the start-up time of each watch.
struct RunOutcome {
    kernel: &'static str,
    outcome: checks::Outcome,
    guest_s: Option<f64>,
    startups_s: Vec<f64>,
}

/// Every (kernel, scenario) pair to boot, in kernel order; scenarios that need
/// modules skip kernels without them, and say so. With `test_set`, kernels
/// marked [`InTest::Core`] run [`CORE_SCENARIOS`] only, and those marked
/// [`InTest::Preemptible`] add [`PREEMPTION_SCENARIOS`].
fn planned_runs<'a>(
    kernels: &'a [PreparedKernel],
    scenarios: &'a [Scenario],
    test_set: bool,
) -> Vec<Run<'a>> {
    let mut runs = Vec::new();
    for kernel in kernels {
        let selected: Vec<&str> = match kernel.kernel.in_test {
            InTest::All => Vec::new(),
            InTest::Core => CORE_SCENARIOS.to_vec(),
            InTest::Preemptible => [CORE_SCENARIOS, PREEMPTION_SCENARIOS].concat(),
        };
        let subset = test_set && !selected.is_empty();
        if subset {
            eprintln!(
                "vm: {}: the test set runs {} only (cargo xtask vm-test runs every scenario)",
                kernel.kernel.name,
                selected.join(", ")
            );
        }
        for scenario in scenarios {
            if subset && !selected.contains(&scenario.name.as_str()) {
                continue;
            }
            if scenario.needs_modules && !kernel.kernel.has_modules {
                eprintln!(
                    "vm: {}/{}: not run, the kernel has no modules",
                    kernel.kernel.name, scenario.name
                );
                continue;
            }
            runs.push(Run { kernel, scenario });
        }
    }
    runs
}

/// Boots the runs `jobs` at a time; outcomes come back in the runs' order.
fn run_all(
    runs: &[Run],
    jobs: usize,
    binaries: &image::GuestBinaries,
    vm_dir: &Path,
) -> Result<Vec<RunOutcome>> {
    let queue = Mutex::new(runs.iter().enumerate().collect::<VecDeque<_>>());
    let next = || queue.lock().ok()?.pop_front();
    let mut done: Vec<(usize, RunOutcome)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs)
            .map(|_| {
                scope.spawn(|| {
                    let mut outcomes = Vec::new();
                    while let Some((index, run)) = next() {
                        outcomes.push((index, run_scenario(run, vm_dir, binaries)));
                    }
                    outcomes
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .map_err(|_| anyhow::anyhow!("a VM runner thread panicked"))
            })
            .collect::<Result<Vec<_>>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    done.sort_by_key(|(index, _)| *index);
    Ok(done.into_iter().map(|(_, outcome)| outcome).collect())
}

/// Every kernel of the matrix, or those named.
pub(crate) fn selected_kernels(names: &[impl AsRef<str>]) -> Result<Vec<&'static Kernel>> {
    let known: Vec<_> = KERNELS.iter().map(|k| k.name).collect();
    if let Some(unknown) = names.iter().find(|n| !known.contains(&n.as_ref())) {
        bail!(
            "no kernel named {:?}; known: {}",
            unknown.as_ref(),
            known.join(", ")
        );
    }
    Ok(KERNELS
        .iter()
        .filter(|k| names.is_empty() || names.iter().any(|n| n.as_ref() == k.name))
        .collect())
}

fn selected_scenarios(dir: &Path, args: &VmTestArgs) -> Result<Vec<Scenario>> {
    let mut scenarios = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".sh"))
        else {
            continue;
        };
        let wanted = args.scenario.is_empty() || args.scenario.iter().any(|w| w == name);
        if name == "lib" || !wanted {
            continue;
        }
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let needs_modules = text.lines().any(|l| l.trim() == "# needs: modules");
        scenarios.push(Scenario {
            name: name.to_owned(),
            needs_modules,
        });
    }
    scenarios.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(missing) = args
        .scenario
        .iter()
        .find(|want| !scenarios.iter().any(|s| &s.name == *want))
    {
        bail!("no scenario {missing:?} in {}", dir.display());
    }
    if scenarios.is_empty() {
        bail!("no scenario in {}", dir.display());
    }
    Ok(scenarios)
}

/// Builds modtrace and mtcall; a failed build leaves the binary out of the guest, so
/// the scenarios that need it fail and say why (a stale binary is never used).
pub(crate) fn build_guest_binaries() -> image::GuestBinaries {
    let build =
        |package: &str| match crate::run_cargo(&["build", "--release", "--package", package]) {
            Ok(()) => Some(crate::target_dir().join("release").join(package)),
            Err(err) => {
                eprintln!(
                    "vm: WARNING: {package} did not build ({err:#}); guests will run without it"
                );
                None
            }
        };
    image::GuestBinaries {
        modtrace: build("modtrace"),
        mtcall: build("mtcall"),
    }
}

/// A kernel ready to boot: unpacked, with the initramfs built for it.
pub(crate) struct PreparedKernel {
    pub kernel: &'static Kernel,
    pub unpacked: kernels::UnpackedKernel,
    /// `kmod --version` of the release's kmod in the image.
    pub kmod_version: String,
    /// What the kernel command line adds for this kernel ([`kernels::Boot`]).
    pub boot_args: String,
    pub initramfs: PathBuf,
    pub work: PathBuf,
}

/// Fetches the kernel and its release's kmod and builds its initramfs under
/// `vm_dir/work/<kernel>`; `debs` are Debian packages to unpack into the image
/// besides the usual userland.
pub(crate) fn prepare_kernel(
    kernel: &'static Kernel,
    binaries: &image::GuestBinaries,
    debs: &[PathBuf],
    workspace: &Path,
    vm_dir: &Path,
) -> Result<PreparedKernel> {
    let unpacked = kernels::fetch(kernel, vm_dir)?;
    let userland = userland::fetch(kernel.release, vm_dir)?;
    let work = vm_dir.join("work").join(kernel.name);
    let initramfs = image::build(
        &unpacked,
        &userland,
        binaries,
        debs,
        &workspace.join("tests/vm"),
        &work,
    )
    .with_context(|| format!("building the initramfs for {}", kernel.name))?;
    let boot_args = unpacked.boot_args(kernel.boot)?;
    eprintln!(
        "vm: {} is {} ({}), kmod {} of {}{}",
        kernel.name,
        unpacked.release,
        unpacked.package,
        userland.kmod_package_version,
        kernel.release.name,
        if boot_args.is_empty() {
            String::new()
        } else {
            format!(", booted with {boot_args}")
        }
    );
    Ok(PreparedKernel {
        kernel,
        unpacked,
        kmod_version: userland.kmod_version_line(),
        boot_args,
        initramfs,
        work,
    })
}

fn run_scenario(run: &Run, vm_dir: &Path, binaries: &image::GuestBinaries) -> RunOutcome {
    let (prepared, scenario) = (run.kernel, run.scenario);
    let kernel = prepared.kernel;
    let label = format!("{}/{}", kernel.name, scenario.name);
    let out_dir = vm_dir
        .join("results")
        .join(kernel.name)
        .join(&scenario.name);
    let boot = qemu::Boot {
        vmlinuz: &prepared.unpacked.vmlinuz,
        initramfs: &prepared.initramfs,
        scenario: &scenario.name,
        append: &prepared.boot_args,
        timeout: VM_TIMEOUT,
        out_dir: &out_dir,
    };
    let mut guest_s = None;
    let booted = qemu::run(&boot).and_then(|(dir, elapsed)| {
        guest_s = Some(elapsed.as_secs_f64());
        eprintln!("vm: {label}: guest ran for {:.1} s", elapsed.as_secs_f64());
        Ok(ScenarioResults::load(&dir)?)
    });
    let built = checks::Built {
        mtcall: binaries.mtcall.is_some(),
        kmod_version: prepared.kmod_version.clone(),
    };
    let (outcome, startups_s) = match booted {
        Ok(results) => (
            checks::run(&label, &scenario.name, &results, &built),
            results
                .watches
                .values()
                .filter_map(|w| w.startup_s)
                .collect(),
        ),
        Err(err) => (
            checks::Outcome::vm_failed(&label, format!("{err:#}")),
            Vec::new(),
        ),
    };
    RunOutcome {
        kernel: kernel.name,
        outcome,
        guest_s,
        startups_s,
    }
}

/// Per kernel: guests booted, their total and longest wall time, and the
/// start-up of `modtrace watch` (spawn to start record) over every watch.
fn report_timings(kernels: &[PreparedKernel], runs: &[RunOutcome]) {
    eprintln!("\nvm: timings (wall time of each guest; watch start-up polled every 50 ms)");
    for kernel in kernels {
        let name = kernel.kernel.name;
        let ours: Vec<&RunOutcome> = runs.iter().filter(|r| r.kernel == name).collect();
        let guests: Vec<f64> = ours.iter().filter_map(|r| r.guest_s).collect();
        let mut startups: Vec<f64> = ours.iter().flat_map(|r| r.startups_s.clone()).collect();
        startups.sort_by(f64::total_cmp);
        let startup = match (startups.first(), startups.last()) {
            (Some(min), Some(max)) => format!(
                "watch start-up median {:.2} s (min {min:.2}, max {max:.2}, {} watches)",
                startups[startups.len() / 2],
                startups.len()
            ),
            _ => "no watch started".to_owned(),
        };
        eprintln!(
            "vm: {name}: {} guests, {:.0} s in all, longest {:.0} s; {startup}",
            guests.len(),
            guests.iter().sum::<f64>(),
            guests.iter().copied().fold(0.0, f64::max),
        );
    }
}

fn report(outcomes: &[checks::Outcome]) -> Result<()> {
    eprintln!("\nvm: summary");
    for outcome in outcomes {
        eprint!("{outcome}");
    }
    let failed = outcomes.iter().filter(|o| !o.passed()).count();
    // The plain closing line CI reads, alone on its line.
    println!("vm: {} passed, {failed} failed", outcomes.len() - failed);
    if failed > 0 {
        bail!(
            "{failed} of {} VM scenario runs failed (details above)",
            outcomes.len()
        );
    }
    eprintln!("vm: all {} scenario runs passed", outcomes.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_scenario_is_a_scenario_file() {
        let dir = crate::workspace_root().join("tests/vm/scenarios");
        for name in CORE_SCENARIOS {
            assert!(dir.join(format!("{name}.sh")).is_file(), "{name}");
        }
    }

    #[test]
    fn kernels_select_by_name_and_unknown_names_fail() {
        let names = |k: Vec<&Kernel>| k.iter().map(|k| k.name).collect::<Vec<_>>();
        assert_eq!(
            selected_kernels(&[] as &[&str]).unwrap().len(),
            KERNELS.len()
        );
        assert_eq!(
            names(selected_kernels(&["debian-6.12", "debian-5.10"]).unwrap()),
            ["debian-5.10", "debian-6.12"]
        );
        let Err(err) = selected_kernels(&["debian-6.1", "debian-9"]) else {
            panic!("debian-9 was selected");
        };
        assert!(err.to_string().contains("\"debian-9\""), "{err}");
    }
}
