//! The VM matrix: `cargo xtask vm-test` boots real Debian kernels in QEMU, runs each
//! scenario of `tests/vm/scenarios/` with the real kmod tools in its own fresh guest,
//! brings the results back, and asserts them on the host with the checks of
//! `tests/vm/checks/` (the `modtrace-vm-checks` crate).
pub(crate) mod image;
pub(crate) mod kernels;
pub(crate) mod qemu;

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use modtrace_vm_checks::{self as checks, ScenarioResults};

use self::kernels::{Kernel, KERNELS};

/// Hard limit per guest: boot, scenario, results, poweroff.
/// Generous: a guest under TCG on a loaded 2-core host runs several times slower.
const VM_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(clap::Args, Default)]
pub(crate) struct VmTestArgs {
    /// Run only this kernel (names: the KERNELS table in xtask/src/vm/kernels.rs).
    #[arg(long)]
    pub kernel: Option<String>,
    /// Run only this scenario (a file name under tests/vm/scenarios/, without .sh).
    #[arg(long)]
    pub scenario: Option<String>,
    /// Keep each guest's initramfs tree and raw serial output under target/vm/work.
    #[arg(long)]
    pub keep: bool,
}

/// A scenario script and what it needs from a kernel.
struct Scenario {
    name: String,
    needs_modules: bool,
}

pub(crate) fn run(args: &VmTestArgs) -> Result<()> {
    let workspace = crate::workspace_root();
    let vm_dir = crate::target_dir().join("vm");
    let kernels = selected_kernels(args.kernel.as_deref())?;
    let scenarios = selected_scenarios(&workspace.join("tests/vm/scenarios"), args)?;
    let binaries = build_guest_binaries();
    // Downloads and images one kernel at a time (apt and the disk gain nothing from
    // overlap), then boots the kernels side by side: each guest is one
    // single-threaded TCG process, so the matrix takes about half the time on a
    // host with a core per kernel.
    let prepared = kernels
        .into_iter()
        .map(|kernel| prepare_kernel(kernel, &binaries, &[], &workspace, &vm_dir))
        .collect::<Result<Vec<_>>>()?;
    let outcomes = std::thread::scope(|scope| {
        let runs: Vec<_> = prepared
            .iter()
            .map(|kernel| scope.spawn(|| run_kernel(kernel, &scenarios, &binaries, &vm_dir)))
            .collect();
        runs.into_iter()
            .zip(&prepared)
            .map(|(run, kernel)| {
                run.join().map_err(|_| {
                    anyhow::anyhow!("the VM runner of {} panicked", kernel.kernel.name)
                })
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let outcomes: Vec<checks::Outcome> = outcomes.into_iter().flatten().collect();
    if !args.keep {
        for kernel in &prepared {
            let _ = fs::remove_dir_all(&kernel.work);
        }
    }
    report(&outcomes)
}

/// Every kernel of the matrix, or the one named.
pub(crate) fn selected_kernels(name: Option<&str>) -> Result<Vec<&'static Kernel>> {
    let kernels: Vec<_> = KERNELS
        .iter()
        .filter(|k| name.is_none_or(|want| want == k.name))
        .collect();
    if kernels.is_empty() {
        let names: Vec<_> = KERNELS.iter().map(|k| k.name).collect();
        bail!(
            "no kernel named {:?}; known: {}",
            name.unwrap_or(""),
            names.join(", ")
        );
    }
    Ok(kernels)
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
        if name == "lib" || args.scenario.as_deref().is_some_and(|want| want != name) {
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
    if scenarios.is_empty() {
        bail!(
            "no scenario {:?} in {}",
            args.scenario.as_deref().unwrap_or("*"),
            dir.display()
        );
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
    pub initramfs: PathBuf,
    pub work: PathBuf,
}

/// Fetches the kernel and builds its initramfs under `vm_dir/work/<kernel>`; `debs`
/// are Debian packages to unpack into the image besides the usual userland.
pub(crate) fn prepare_kernel(
    kernel: &'static Kernel,
    binaries: &image::GuestBinaries,
    debs: &[PathBuf],
    workspace: &Path,
    vm_dir: &Path,
) -> Result<PreparedKernel> {
    let unpacked = kernels::fetch(kernel, vm_dir)?;
    let work = vm_dir.join("work").join(kernel.name);
    let initramfs = image::build(
        &unpacked,
        binaries,
        debs,
        &workspace.join("tests/vm"),
        &work,
    )
    .with_context(|| format!("building the initramfs for {}", kernel.name))?;
    eprintln!(
        "vm: {} is {} ({})",
        kernel.name, unpacked.release, unpacked.package
    );
    Ok(PreparedKernel {
        kernel,
        unpacked,
        initramfs,
        work,
    })
}

fn run_kernel(
    prepared: &PreparedKernel,
    scenarios: &[Scenario],
    binaries: &image::GuestBinaries,
    vm_dir: &Path,
) -> Vec<checks::Outcome> {
    let kernel = prepared.kernel;
    let mut outcomes = Vec::new();
    for scenario in scenarios {
        if scenario.needs_modules && !kernel.has_modules {
            eprintln!(
                "vm: {}/{}: not run, the kernel has no modules",
                kernel.name, scenario.name
            );
            continue;
        }
        outcomes.push(run_scenario(prepared, scenario, vm_dir, binaries));
    }
    outcomes
}

fn run_scenario(
    prepared: &PreparedKernel,
    scenario: &Scenario,
    vm_dir: &Path,
    binaries: &image::GuestBinaries,
) -> checks::Outcome {
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
        append: "",
        timeout: VM_TIMEOUT,
        out_dir: &out_dir,
    };
    let booted = qemu::run(&boot).and_then(|(dir, elapsed)| {
        eprintln!("vm: {label}: guest ran for {:.1} s", elapsed.as_secs_f64());
        Ok(ScenarioResults::load(&dir)?)
    });
    let built = checks::Built {
        mtcall: binaries.mtcall.is_some(),
    };
    match booted {
        Ok(results) => checks::run(&label, &scenario.name, &results, &built),
        Err(err) => checks::Outcome::vm_failed(&label, format!("{err:#}")),
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
