//! Loading the eBPF object and attaching it, choosing per syscall the cheapest
//! attach strategy the running kernel offers:
//!
//! 1. `fentry`: fentry/fexit on `__x64_sys_*`; costs nothing to other syscalls.
//! 2. `syscall-tracepoints`: `syscalls:sys_enter_*`/`sys_exit_*`.
//! 3. `raw-syscalls`: raw `sys_enter`/`sys_exit` filtered in the kernel by number.
//!
//! Any syscall tracepoint puts every syscall of the host on the slow path,
//! which is why fentry comes first.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use aya::{
    programs::{FEntry, FExit, RawTracePoint, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use modtrace_common::{ProbeConfig, Syscall, OFFSET_NONE};
use tracing::{debug, info, warn};

use self::btf::{KernelBtf, ResolvedOffsets};

pub mod btf;
pub mod maps;

/// The eBPF object built from `modtrace-ebpf` by build.rs for this very build.
const EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/modtrace"));

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Strategy {
    Fentry,
    SyscallTracepoints,
    RawSyscalls,
}

impl Strategy {
    pub const ALL: [Strategy; 3] = [Self::Fentry, Self::SyscallTracepoints, Self::RawSyscalls];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fentry => "fentry",
            Self::SyscallTracepoints => "syscall-tracepoints",
            Self::RawSyscalls => "raw-syscalls",
        }
    }
}

/// The names a traced syscall has in the kernel and in our object.
trait Names {
    fn kernel_function(self) -> String;
    fn program(self, prefix: &str) -> String;
    fn tracepoint(self, phase: &str) -> String;
}

impl Names for Syscall {
    fn kernel_function(self) -> String {
        format!("__x64_sys_{}", self.name())
    }
    fn program(self, prefix: &str) -> String {
        format!("{prefix}_{}", self.name())
    }
    fn tracepoint(self, phase: &str) -> String {
        format!("sys_{phase}_{}", self.name())
    }
}

/// In the order of `ProbeConfig`'s syscall numbers.
const SYSCALLS: [Syscall; 3] = Syscall::ALL;
#[cfg(not(target_arch = "x86_64"))]
compile_error!(
    "modtrace supports x86_64 only: the syscall numbers and __x64_sys_ names are per architecture"
);

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("modtrace needs root, or the capabilities CAP_BPF and CAP_PERFMON (and CAP_SYS_RESOURCE on kernels before 5.11): run it with sudo")]
    NotPrivileged,
    #[error("reading the kernel's BTF: {0}")]
    Btf(#[from] btf::BtfError),
    #[error("no attach strategy works for {syscall} on this kernel: {reasons}")]
    NoStrategy {
        syscall: &'static str,
        reasons: String,
    },
    #[error("loading the eBPF programs failed: {0}; if BPF is disabled or locked down on this kernel (CONFIG_BPF_SYSCALL, lockdown=confidentiality), modtrace cannot run")]
    Load(#[from] aya::EbpfError),
    #[error("attaching {strategy} for {syscall} failed: {detail}")]
    Attach {
        syscall: &'static str,
        strategy: &'static str,
        detail: String,
    },
}

#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub forced: Option<Strategy>,
    pub btf_path: PathBuf,
    pub ring_buffer_bytes: u32,
    pub aggregation: Aggregation,
}

/// How the kernel side counts repeated failing calls instead of reporting
/// each (see modtrace-ebpf/src/aggregate.rs and docs/output.md, `summary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aggregation {
    /// Zero reports every call in full.
    pub window: std::time::Duration,
    /// Full reports of each distinct failing call per process and window.
    pub threshold: u32,
    /// Distinct failing calls reported in full per process, syscall and
    /// result and window.
    pub budget: u32,
}

impl Aggregation {
    pub const DEFAULT: Self = Self {
        window: std::time::Duration::from_secs(10),
        threshold: 1,
        budget: 16,
    };
    pub const OFF: Self = Self {
        window: std::time::Duration::ZERO,
        ..Self::DEFAULT
    };

    pub fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    /// The window in ns, as the kernel side and `Aggregates` count it.
    pub fn window_ns(&self) -> u64 {
        u64::try_from(self.window.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The loaded object with its programs attached; dropping it detaches them.
pub struct Probes {
    pub ebpf: Ebpf,
    pub strategies: BTreeMap<&'static str, &'static str>,
    pub btf_available: bool,
    pub unavailable_fields: Vec<&'static str>,
    /// The kernel's module tracepoints are attached (see `attach_module_events`).
    pub module_events: bool,
    /// `sched_process_exec` fills the `EXECS` map (see `attach_exec_tracking`).
    pub exec_tracking: bool,
}

/// What this kernel offers, found before anything is loaded.
struct KernelSupport {
    btf: Option<KernelBtf>,
    offsets: Option<ResolvedOffsets>,
    tracefs: Option<PathBuf>,
    tp_offsets: Option<(u32, u32)>,
    /// /proc/modules exists: the kernel was built with module support.
    modules: bool,
}

fn has_capability(cap_eff: u64, bit: u32) -> bool {
    cap_eff & (1u64 << bit) != 0
}

/// CapEff from /proc/self/status; BPF tracing needs CAP_BPF + CAP_PERFMON, or
/// CAP_SYS_ADMIN which implies both.
pub fn check_privileges() -> Result<(), ProbeError> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let ok = has_capability(cap_eff, CAP_SYS_ADMIN)
        || (has_capability(cap_eff, CAP_BPF) && has_capability(cap_eff, CAP_PERFMON));
    if ok {
        Ok(())
    } else {
        Err(ProbeError::NotPrivileged)
    }
}

/// Finds tracefs, mounting it at /sys/kernel/tracing when it is not mounted.
fn tracefs() -> Option<PathBuf> {
    let candidates = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
    if let Some(found) = candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
    {
        return Some(found);
    }
    let target = PathBuf::from(candidates[0]);
    let mounted = nix::mount::mount(
        Some("tracefs"),
        &target,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    );
    match mounted {
        Ok(()) => {
            info!("mounted tracefs at {}", target.display());
            Some(target)
        }
        Err(err) => {
            warn!("tracefs is not mounted and mounting it at {} failed ({err}); the syscall-tracepoints strategy is unavailable (mount it with `mount -t tracefs tracefs {}`)", target.display(), target.display());
            None
        }
    }
}

/// Offset of the field named `field` in a tracepoint format file.
pub fn format_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let decl = parts.next()?.strip_prefix("field:")?;
        if decl
            .rsplit(|c: char| c.is_whitespace() || c == '*')
            .next()?
            != field
        {
            return None;
        }
        parts.find_map(|p| p.strip_prefix("offset:"))?.parse().ok()
    })
}

/// Offsets of the first argument in `sys_enter_*` and of `ret` in `sys_exit_*`.
/// Every syscall tracepoint shares one layout; finit_module's names it.
fn tracepoint_offsets(tracefs: &Path) -> Option<(u32, u32)> {
    let events = tracefs.join("events/syscalls");
    let enter = fs::read_to_string(events.join("sys_enter_finit_module/format")).ok()?;
    let exit = fs::read_to_string(events.join("sys_exit_finit_module/format")).ok()?;
    Some((
        format_field_offset(&enter, "fd")?,
        format_field_offset(&exit, "ret")?,
    ))
}

impl KernelSupport {
    fn probe(btf_path: &Path) -> Self {
        let btf = match KernelBtf::open(btf_path) {
            Ok(btf) => Some(btf),
            Err(err) => {
                warn!("{err}; without BTF modtrace cannot use fentry or raw-syscalls, nor capture euid, auid, session, the parent and the file path of finit_module");
                None
            }
        };
        let offsets = btf.as_ref().and_then(|b| match b.offsets() {
            Ok(o) => Some(o),
            Err(err) => {
                warn!("{err}; kernel structure fields will be reported as null");
                None
            }
        });
        let tracefs = tracefs();
        let tp_offsets = tracefs.as_deref().and_then(tracepoint_offsets);
        Self {
            btf,
            offsets,
            tracefs,
            tp_offsets,
            modules: Path::new("/proc/modules").exists(),
        }
    }

    /// Why `strategy` cannot serve `syscall` here, or None when it can.
    fn unavailable(&self, strategy: Strategy, syscall: Syscall) -> Option<String> {
        match strategy {
            Strategy::Fentry => match &self.btf {
                None => Some("no kernel BTF".into()),
                // Without module support the syscalls are stubs
                // (sys_ni_syscall), which the kernel refuses fentry on
                // (EPERM): not worth loading the object to learn it again.
                Some(_) if !self.modules => {
                    Some("this kernel has no module support (no /proc/modules)".into())
                }
                Some(btf) if !btf.has_function(&syscall.kernel_function()) => Some(format!(
                    "the kernel has no function {}",
                    syscall.kernel_function()
                )),
                Some(_) => self.regs_missing(),
            },
            Strategy::SyscallTracepoints => match &self.tracefs {
                None => Some("tracefs is not available".into()),
                Some(t)
                    if !t
                        .join("events/syscalls")
                        .join(syscall.tracepoint("enter"))
                        .is_dir() =>
                {
                    Some(format!(
                        "no tracepoint syscalls:{}",
                        syscall.tracepoint("enter")
                    ))
                }
                Some(_) if self.tp_offsets.is_none() => {
                    Some("the syscall tracepoints' format could not be read".into())
                }
                Some(_) => None,
            },
            Strategy::RawSyscalls => self.regs_missing(),
        }
    }

    fn regs_missing(&self) -> Option<String> {
        let o = self.offsets.as_ref().map(|r| r.offsets);
        let known = o.is_some_and(|o| {
            [o.pt_regs_di, o.pt_regs_si, o.pt_regs_dx, o.pt_regs_orig_ax]
                .iter()
                .all(|&v| v != OFFSET_NONE)
        });
        (!known).then(|| "the pt_regs layout is unknown (no BTF)".into())
    }

    fn config(&self, plan: &[Strategy; 3], aggregation: &Aggregation) -> ProbeConfig {
        let mut config = ProbeConfig::DEFAULT;
        config.aggregate_window_ns = aggregation.window_ns();
        config.aggregate_threshold = aggregation.threshold;
        config.aggregate_budget = aggregation.budget;
        config.cap_sys_module = u32::from(caps::Capability::CAP_SYS_MODULE.index());
        if let Some(resolved) = &self.offsets {
            config.offsets = resolved.offsets;
        }
        if let Some((args, ret)) = self.tp_offsets {
            config.tp_enter_args = args;
            config.tp_exit_ret = ret;
        }
        // The raw programs see every syscall; only the numbers of syscalls
        // planned for them are enabled, so no call is reported twice.
        let nr = |i: usize| {
            if plan[i] == Strategy::RawSyscalls {
                SYSCALLS[i].x86_64_nr()
            } else {
                u32::MAX
            }
        };
        config.nr_init_module = nr(0);
        config.nr_finit_module = nr(1);
        config.nr_delete_module = nr(2);
        config
    }
}

fn raise_memlock_limit() {
    // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; loading may fail on kernels before 5.11");
    }
}

pub fn attach(options: &ProbeOptions) -> Result<Probes, ProbeError> {
    check_privileges()?;
    raise_memlock_limit();
    let started = Instant::now();
    // aya's loader parses the kernel's several-MiB BTF as it is made (aya
    // 0.14 offers no loader without), which these programs need only for
    // fentry, and aya's own parse to attach fentry is needed only if fentry
    // may be used: our reading of the offsets goes on beside them, on a
    // thread of its own. Not the other way round: aya's many small
    // allocations made on a thread stay in that thread's arena (1.1 MiB of
    // resident memory kept for good), while ours are two large buffers that
    // go back to the kernel when freed.
    let fentry_possible =
        options.forced.is_none_or(|s| s == Strategy::Fentry) && Path::new("/proc/modules").exists();
    let (support, aya_btf, loader) = std::thread::scope(|scope| {
        let support = scope.spawn(|| {
            let support = KernelSupport::probe(&options.btf_path);
            debug!("start-up: kernel offsets read in {:?}", started.elapsed());
            support
        });
        let loader = EbpfLoader::new();
        let aya_btf = if fentry_possible {
            Btf::from_sys_fs().ok()
        } else {
            None
        };
        (support.join(), aya_btf, loader)
    });
    // Reading the offsets does not panic; if it did, the panic is passed on.
    let support = support.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    let mut premade = Some(loader);
    debug!("start-up: loader made after {:?}", started.elapsed());
    let mut refused: Vec<(usize, Strategy, String)> = Vec::new();
    loop {
        let plan = plan(&support, options.forced, &refused)?;
        // A fallback, which is rare, makes a loader of its own.
        let loader = premade.take().unwrap_or_else(EbpfLoader::new);
        match load_and_attach(&support, loader, aya_btf.as_ref(), &plan, options) {
            Ok(mut ebpf) => {
                let module_events = match attach_module_events(&mut ebpf) {
                    Ok(()) => true,
                    Err(why) => {
                        warn!("the kernel's module tracepoints are unavailable ({why}): records carry no `module` object and autoload requests are not seen");
                        false
                    }
                };
                let exec_tracking = match attach_exec_tracking(&mut ebpf) {
                    Ok(()) => true,
                    Err(why) => {
                        warn!("exec tracking is unavailable ({why}): the exe of a process that has exited before its record is read stays null");
                        false
                    }
                };
                let strategies = SYSCALLS
                    .iter()
                    .zip(plan)
                    .map(|(s, p)| (s.name(), p.as_str()))
                    .collect();
                let mut unavailable_fields = support
                    .offsets
                    .as_ref()
                    .map(|r| r.missing.clone())
                    .unwrap_or_default();
                if support.offsets.is_none() {
                    unavailable_fields.extend([
                        "euid",
                        "auid",
                        "session",
                        "ppid",
                        "parent.comm",
                        "finit_module.file",
                    ]);
                }
                if !exec_tracking {
                    unavailable_fields.push("exe of exited processes");
                }
                debug!("start-up: attached after {:?}", started.elapsed());
                return Ok(Probes {
                    ebpf,
                    strategies,
                    btf_available: support.btf.is_some(),
                    unavailable_fields,
                    module_events,
                    exec_tracking,
                });
            }
            Err(failures) if options.forced.is_none() => {
                warn_once(&failures);
                refused.extend(
                    failures
                        .into_iter()
                        .map(|f| (f.index, f.strategy, f.detail)),
                );
            }
            Err(mut failures) => {
                let AttachFailure {
                    index,
                    strategy,
                    detail,
                } = failures.swap_remove(0);
                return Err(ProbeError::Attach {
                    syscall: SYSCALLS[index].name(),
                    strategy: strategy.as_str(),
                    detail,
                });
            }
        }
    }
}

/// One warning for the failures of one attempt: the syscalls a strategy
/// failed for with the same reason are named together.
fn warn_once(failures: &[AttachFailure]) {
    let mut grouped: Vec<(Strategy, &str, Vec<&str>)> = Vec::new();
    for f in failures {
        let name = SYSCALLS[f.index].name();
        match grouped
            .iter_mut()
            .find(|(s, d, _)| *s == f.strategy && *d == f.detail)
        {
            Some((_, _, names)) => names.push(name),
            None => grouped.push((f.strategy, &f.detail, vec![name])),
        }
    }
    for (strategy, detail, names) in grouped {
        warn!(
            "{} for {} failed ({detail}); falling back",
            strategy.as_str(),
            names.join(", ")
        );
    }
}

fn plan(
    support: &KernelSupport,
    forced: Option<Strategy>,
    refused: &[(usize, Strategy, String)],
) -> Result<[Strategy; 3], ProbeError> {
    let mut plan = [Strategy::RawSyscalls; 3];
    for (index, syscall) in SYSCALLS.into_iter().enumerate() {
        let candidates = forced.map_or(Strategy::ALL.to_vec(), |s| vec![s]);
        let mut reasons = Vec::new();
        let chosen = candidates.into_iter().find(|&strategy| {
            let why = refused
                .iter()
                .find(|(i, s, _)| *i == index && *s == strategy)
                .map(|(_, _, d)| d.clone())
                .or_else(|| support.unavailable(strategy, syscall));
            if let Some(why) = &why {
                reasons.push(format!("{}: {why}", strategy.as_str()));
            }
            why.is_none()
        });
        plan[index] = chosen.ok_or_else(|| ProbeError::NoStrategy {
            syscall: syscall.name(),
            reasons: reasons.join("; "),
        })?;
    }
    Ok(plan)
}

struct AttachFailure {
    index: usize,
    strategy: Strategy,
    detail: String,
}

fn load_and_attach(
    support: &KernelSupport,
    loader: EbpfLoader<'_>,
    aya_btf: Option<&Btf>,
    plan: &[Strategy; 3],
    options: &ProbeOptions,
) -> Result<Ebpf, Vec<AttachFailure>> {
    let started = Instant::now();
    let config = support.config(plan, &options.aggregation);
    // Rebound, so that its lifetime may shorten to borrow `config`.
    let mut loader = loader;
    loader
        .btf(aya_btf)
        .override_global("MODTRACE_CONFIG", &config, true)
        .map_max_entries("EVENTS", options.ring_buffer_bytes);
    // A load failure is not specific to one syscall; report it against the
    // first and let the caller fall back only when attaching differs.
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| {
        vec![AttachFailure {
            index: 0,
            strategy: plan[0],
            detail: format!("loading: {}", brief(e)),
        }]
    })?;
    debug!("start-up: maps made in {:?}", started.elapsed());
    // Every syscall is tried before giving up, so that one reload serves
    // all the fallbacks (each load of the object costs a fraction of a second).
    let mut failures = Vec::new();
    let mut raw_attached = false;
    for (index, (syscall, strategy)) in SYSCALLS.into_iter().zip(plan).enumerate() {
        let attached = match strategy {
            Strategy::Fentry => aya_btf
                .ok_or_else(|| "aya could not read the kernel BTF".to_owned())
                .and_then(|btf| attach_fentry(&mut ebpf, syscall, btf)),
            Strategy::SyscallTracepoints => attach_tracepoints(&mut ebpf, syscall),
            Strategy::RawSyscalls if !raw_attached => {
                raw_attached = true;
                attach_raw(&mut ebpf)
            }
            Strategy::RawSyscalls => Ok(()),
        };
        if let Err(detail) = attached {
            failures.push(AttachFailure {
                index,
                strategy: *strategy,
                detail,
            });
        }
    }
    if failures.is_empty() {
        Ok(ebpf)
    } else {
        Err(failures)
    }
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the eBPF object"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| format!("program {name}: {e}"))
}

/// An aya error with the verifier's log cut to its verdict (its last lines);
/// the whole log goes to the debug level, where a developer can ask for it.
fn brief(err: impl std::fmt::Display) -> String {
    let text = err.to_string();
    let Some((head, log)) = text.split_once("Verifier output:") else {
        return text;
    };
    tracing::debug!("verifier log: {log}");
    // The verdict is the lines just before the statistics that end the log.
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let end = lines
        .iter()
        .position(|l| l.starts_with("verification time"))
        .unwrap_or(lines.len());
    let verdict = lines[end.saturating_sub(2)..end].join(" | ");
    format!("{} verifier: {verdict}", head.trim())
}

/// Runs `load`, the verifying of one program, saying how long it took
/// (verifying is most of start-up once the offsets are read).
fn timed<T>(program: &str, load: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = load();
    debug!("start-up: {program} verified in {:?}", started.elapsed());
    result
}

fn attach_fentry(ebpf: &mut Ebpf, syscall: Syscall, btf: &Btf) -> Result<(), String> {
    let function = syscall.kernel_function();
    let enter: &mut FEntry = program_mut(ebpf, &syscall.program("fentry"))?;
    timed(&syscall.program("fentry"), || enter.load(&function, btf))
        .map_err(|e| format!("loading fentry: {}", brief(e)))?;
    enter
        .attach()
        .map_err(|e| format!("attaching fentry to {function}: {e}"))?;
    let exit: &mut FExit = program_mut(ebpf, &syscall.program("fexit"))?;
    timed(&syscall.program("fexit"), || exit.load(&function, btf))
        .map_err(|e| format!("loading fexit: {}", brief(e)))?;
    exit.attach()
        .map_err(|e| format!("attaching fexit to {function}: {e}"))?;
    Ok(())
}

fn attach_tracepoints(ebpf: &mut Ebpf, syscall: Syscall) -> Result<(), String> {
    for (prefix, phase) in [("tp_enter", "enter"), ("tp_exit", "exit")] {
        let program: &mut TracePoint = program_mut(ebpf, &syscall.program(prefix))?;
        let tracepoint = syscall.tracepoint(phase);
        timed(&tracepoint, || program.load())
            .map_err(|e| format!("loading {tracepoint}: {}", brief(e)))?;
        program
            .attach("syscalls", &tracepoint)
            .map_err(|e| format!("attaching syscalls:{tracepoint}: {e}"))?;
    }
    Ok(())
}

fn attach_raw(ebpf: &mut Ebpf) -> Result<(), String> {
    for (program, tracepoint) in [("raw_sys_enter", "sys_enter"), ("raw_sys_exit", "sys_exit")] {
        let prog: &mut RawTracePoint = program_mut(ebpf, program)?;
        timed(program, || prog.load()).map_err(|e| format!("loading {program}: {}", brief(e)))?;
        prog.attach(tracepoint)
            .map_err(|e| format!("attaching raw tracepoint {tracepoint}: {e}"))?;
    }
    Ok(())
}

/// The kernel's own module events: `module_load` (the name the kernel
/// registered and the module's taints), `module_free` (the module really
/// left) and `module_request` (autoload). They need a kernel with module
/// support; without them the syscall records still stand.
fn attach_module_events(ebpf: &mut Ebpf) -> Result<(), String> {
    if !Path::new("/proc/modules").exists() {
        return Err("this kernel has no module support".into());
    }
    for tracepoint in ["module_load", "module_free", "module_request"] {
        let program: &mut RawTracePoint = program_mut(ebpf, tracepoint)?;
        timed(tracepoint, || program.load())
            .map_err(|e| format!("loading {tracepoint}: {}", brief(e)))?;
        program
            .attach(tracepoint)
            .map_err(|e| format!("attaching raw tracepoint {tracepoint}: {e}"))?;
    }
    Ok(())
}

/// Every exec's executable, remembered by pid (`crate::enrich::execs`), so that
/// records can name the exe of processes gone before they are read.
fn attach_exec_tracking(ebpf: &mut Ebpf) -> Result<(), String> {
    let program: &mut RawTracePoint = program_mut(ebpf, "process_exec")?;
    timed("process_exec", || program.load())
        .map_err(|e| format!("loading process_exec: {}", brief(e)))?;
    program
        .attach("sched_process_exec")
        .map_err(|e| format!("attaching raw tracepoint sched_process_exec: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTER_FORMAT: &str = "name: sys_enter_finit_module\nID: 700\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:const char * uargs;\toffset:24;\tsize:8;\tsigned:0;\n";

    #[test]
    fn reads_field_offsets_from_a_tracepoint_format() {
        assert_eq!(format_field_offset(ENTER_FORMAT, "fd"), Some(16));
        assert_eq!(format_field_offset(ENTER_FORMAT, "uargs"), Some(24));
        assert_eq!(format_field_offset(ENTER_FORMAT, "__syscall_nr"), Some(8));
        assert_eq!(format_field_offset(ENTER_FORMAT, "ret"), None);
        assert_eq!(
            format_field_offset("field:long ret;\toffset:abc;", "ret"),
            None
        );
    }

    #[test]
    fn reads_real_raw_syscalls_formats_on_this_kernel() {
        let tracefs = tracefs().expect("tracefs must be mountable where the tests run (root)");
        let format =
            fs::read_to_string(tracefs.join("events/raw_syscalls/sys_exit/format")).unwrap();
        assert_eq!(format_field_offset(&format, "ret"), Some(16));
        assert_eq!(format_field_offset(&format, "id"), Some(8));
    }
}
