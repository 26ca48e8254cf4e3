//! Loading the eBPF object and attaching it, choosing per syscall the cheapest
//! attach strategy the running kernel offers:
//!
//! 1. `kprobe`: a kprobe on the entry of `__x64_sys_*`, with the fexit of
//!    `fentry` on their return; costs nothing to other syscalls. First
//!    because a kprobe runs with preemption disabled: no caller, however
//!    many calls it makes, can make the kernel skip it for another
//!    (kernel/skipped.rs), while a trampoline program is skipped on a CPU
//!    where a preempted task is inside it, which any local user can arrange
//!    on a preemptible kernel by flooding the same syscall.
//! 2. `fentry`: fentry/fexit on the same functions; costs nothing to other
//!    syscalls either. For kernels without kprobes. (5.10's BTF declares the
//!    functions' `pt_regs` argument only forward, and the verifier refuses
//!    fentry's reading of it there.)
//! 3. `syscall-tracepoints`: `syscalls:sys_enter_*`/`sys_exit_*`.
//! 4. `raw-syscalls`: raw `sys_enter`/`sys_exit` filtered in the kernel by number.
//!
//! Any syscall tracepoint puts every syscall of the host on the slow path,
//! which is why fentry and kprobe come first. The object is loaded once: each
//! syscall's strategies are tried in turn on it, and a strategy that fails
//! unloads its own programs before the next is tried.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    str::FromStr,
    time::Instant,
};

use aya::{
    maps::Array,
    programs::{FEntry, FExit, KProbe, ProgramError, RawTracePoint, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use modtrace_common::{ProbeConfig, Syscall, OFFSET_NONE};
use tracing::{debug, info, warn};

use self::btf::{KernelBtf, ResolvedOffsets};
use crate::record::RefusedStrategy;

pub mod btf;
pub mod enforce;
pub mod maps;
pub mod pinned;
pub mod skipped;

/// The eBPF object built from `modtrace-ebpf` by build.rs for this very build.
const EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/modtrace"));

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Strategy {
    Kprobe,
    Fentry,
    SyscallTracepoints,
    RawSyscalls,
}

impl Strategy {
    /// Best first: the order in which they are tried.
    pub const ALL: [Strategy; 4] = [
        Self::Kprobe,
        Self::Fentry,
        Self::SyscallTracepoints,
        Self::RawSyscalls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
            Self::SyscallTracepoints => "syscall-tracepoints",
            Self::RawSyscalls => "raw-syscalls",
        }
    }

    fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Needs aya's parse of the kernel's BTF to attach: fentry and fexit.
    fn uses_trampolines(self) -> bool {
        matches!(self, Self::Fentry | Self::Kprobe)
    }
}

/// The strategy forced for each syscall, in the order of `Syscall::ALL`;
/// `None` leaves that syscall to the best available (the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StrategyChoice([Option<Strategy>; 3]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StrategyChoiceError {
    #[error("unknown strategy `{0}` (expected one of {strategies})", strategies = strategy_names())]
    UnknownStrategy(String),
    #[error("unknown syscall `{0}` (expected one of init_module, finit_module, delete_module)")]
    UnknownSyscall(String),
    #[error("{0} is given a strategy twice")]
    Repeated(&'static str),
}

fn strategy_names() -> String {
    Strategy::ALL.map(Strategy::as_str).join(", ")
}

impl StrategyChoice {
    /// The strategy forced for the syscall at `index` of `Syscall::ALL`.
    pub fn forced(&self, index: usize) -> Option<Strategy> {
        self.0[index]
    }

    /// Whether some syscall may be served by a strategy for which `pick` holds.
    fn may_use(&self, pick: impl Fn(Strategy) -> bool) -> bool {
        self.0
            .iter()
            .any(|forced| forced.map_or_else(|| Strategy::ALL.into_iter().any(&pick), &pick))
    }
}

/// `STRATEGY` forces it for every syscall; `SYSCALL=STRATEGY,…` forces it
/// for each syscall named and leaves the others to the automatic choice.
impl FromStr for StrategyChoice {
    type Err = StrategyChoiceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let strategy = |name: &str| {
            Strategy::named(name.trim())
                .ok_or_else(|| StrategyChoiceError::UnknownStrategy(name.trim().to_owned()))
        };
        if !text.contains('=') {
            return Ok(Self([Some(strategy(text)?); 3]));
        }
        let mut choice = Self::default();
        for part in text.split(',') {
            let (syscall, name) = part.split_once('=').unwrap_or((part, ""));
            let index = SYSCALLS
                .iter()
                .position(|s| s.name() == syscall.trim())
                .ok_or_else(|| StrategyChoiceError::UnknownSyscall(syscall.trim().to_owned()))?;
            if choice.0[index].is_some() {
                return Err(StrategyChoiceError::Repeated(SYSCALLS[index].name()));
            }
            choice.0[index] = Some(strategy(name)?);
        }
        Ok(choice)
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

/// In the order of `ProbeConfig`'s syscall numbers and of `RAW_SYSCALLS`.
const SYSCALLS: [Syscall; 3] = Syscall::ALL;

/// Where perf lists the kprobe event source (`perf_event_open` type).
const KPROBE_EVENT_SOURCE: &str = "/sys/bus/event_source/devices/kprobe";
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
}

#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub forced: StrategyChoice,
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
    /// For each syscall, the better strategies that were passed over and why.
    pub refused: BTreeMap<&'static str, Vec<RefusedStrategy>>,
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
    /// perf's kprobe event source, through which aya attaches kprobes.
    kprobes: bool,
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
            kprobes: Path::new(KPROBE_EVENT_SOURCE).exists(),
        }
    }

    /// Why `strategy` cannot serve `syscall` here, or None when it can.
    fn unavailable(&self, strategy: Strategy, syscall: Syscall) -> Option<String> {
        match strategy {
            Strategy::Fentry => self.wrapper_missing(syscall),
            Strategy::Kprobe if !self.kprobes => Some(format!(
                "this kernel has no kprobes (no {KPROBE_EVENT_SOURCE})"
            )),
            Strategy::Kprobe => self.wrapper_missing(syscall),
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

    /// Why the syscall's `__x64_sys_*` function cannot be traced by its
    /// arguments, or None when it can.
    fn wrapper_missing(&self, syscall: Syscall) -> Option<String> {
        match &self.btf {
            None => Some("no kernel BTF".into()),
            // Without module support the syscalls are stubs
            // (sys_ni_syscall), which the kernel refuses fentry on
            // (EPERM), and which every unimplemented syscall shares: not
            // worth loading the object to learn it again.
            Some(_) if !self.modules => {
                Some("this kernel has no module support (no /proc/modules)".into())
            }
            Some(btf) if !btf.has_function(&syscall.kernel_function()) => Some(format!(
                "the kernel has no function {}",
                syscall.kernel_function()
            )),
            Some(_) => self.regs_missing(),
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

    fn config(&self, aggregation: &Aggregation) -> ProbeConfig {
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
        // Which of them the raw programs report is set after loading
        // (`RAW_SYSCALLS`), once each syscall's strategy is known.
        config.nr_init_module = Syscall::InitModule.x86_64_nr();
        config.nr_finit_module = Syscall::FinitModule.x86_64_nr();
        config.nr_delete_module = Syscall::DeleteModule.x86_64_nr();
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
    // fentry and fexit, and aya's own parse to attach those is needed only if
    // they may be used: our reading of the offsets goes on beside them, on a
    // thread of its own. Not the other way round: aya's many small
    // allocations made on a thread stay in that thread's arena (1.1 MiB of
    // resident memory kept for good), while ours are two large buffers that
    // go back to the kernel when freed.
    let trampolines_possible =
        options.forced.may_use(Strategy::uses_trampolines) && Path::new("/proc/modules").exists();
    let (support, aya_btf, loader) = std::thread::scope(|scope| {
        let support = scope.spawn(|| {
            let support = KernelSupport::probe(&options.btf_path);
            debug!("start-up: kernel offsets read in {:?}", started.elapsed());
            support
        });
        let loader = EbpfLoader::new();
        let aya_btf = if trampolines_possible {
            Btf::from_sys_fs().ok()
        } else {
            None
        };
        (support.join(), aya_btf, loader)
    });
    // Reading the offsets does not panic; if it did, the panic is passed on.
    let support = support.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    debug!("start-up: loader made after {:?}", started.elapsed());
    let mut ebpf = load(&support, loader, aya_btf.as_ref(), options)?;
    debug!("start-up: maps made after {:?}", started.elapsed());
    let mut attacher = Attacher {
        ebpf: &mut ebpf,
        support: &support,
        aya_btf: aya_btf.as_ref(),
        raw: None,
        failed: Vec::new(),
    };
    let mut strategies = BTreeMap::new();
    let mut refused = BTreeMap::new();
    for (index, syscall) in SYSCALLS.into_iter().enumerate() {
        let (strategy, refusals) = attacher.attach_best(index, options.forced.forced(index))?;
        strategies.insert(syscall.name(), strategy.as_str());
        refused.insert(syscall.name(), refusals);
    }
    warn_failures(&attacher.failed, &strategies);
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
    Ok(Probes {
        ebpf,
        strategies,
        refused,
        btf_available: support.btf.is_some(),
        unavailable_fields,
        module_events,
        exec_tracking,
    })
}

/// One warning per strategy that failed to load or attach for the same
/// reason, naming the syscalls together. Strategies this kernel lacks are
/// only listed in `start`: they are no surprise.
fn warn_failures(
    failed: &[(&'static str, RefusedStrategy)],
    chosen: &BTreeMap<&'static str, &'static str>,
) {
    let mut grouped: Vec<(&RefusedStrategy, Vec<&str>)> = Vec::new();
    for (syscall, refusal) in failed {
        match grouped.iter_mut().find(|(r, _)| *r == refusal) {
            Some((_, names)) => names.push(syscall),
            None => grouped.push((refusal, vec![syscall])),
        }
    }
    for (refusal, names) in grouped {
        let instead: Vec<&str> = names.iter().map(|n| chosen[n]).collect();
        warn!(
            "{} for {} failed ({}); using {} instead",
            refusal.strategy,
            names.join(", "),
            refusal.reason,
            instead.join(", ")
        );
    }
}

/// Loads the object, with the settings every strategy shares; which
/// strategy serves a syscall is decided after, on this one load.
fn load(
    support: &KernelSupport,
    loader: EbpfLoader<'_>,
    aya_btf: Option<&Btf>,
    options: &ProbeOptions,
) -> Result<Ebpf, ProbeError> {
    let config = support.config(&options.aggregation);
    // Rebound, so that its lifetime may shorten to borrow `config`.
    let mut loader = loader;
    loader
        .btf(aya_btf)
        .override_global("MODTRACE_CONFIG", &config, true)
        .map_max_entries("EVENTS", options.ring_buffer_bytes);
    Ok(loader.load(EBPF_OBJECT)?)
}

/// Attaches each syscall's strategy to the one loaded object.
struct Attacher<'a> {
    ebpf: &'a mut Ebpf,
    support: &'a KernelSupport,
    aya_btf: Option<&'a Btf>,
    /// The raw programs serve every syscall given to them: attached at the
    /// first such syscall, and the outcome kept for the others.
    raw: Option<Result<(), String>>,
    /// The strategies that failed to load or attach, by syscall.
    failed: Vec<(&'static str, RefusedStrategy)>,
}

impl Attacher<'_> {
    /// Tries the strategies for the syscall at `index`, best first (only the
    /// forced one when one is), and returns the one attached with the
    /// better ones passed over.
    fn attach_best(
        &mut self,
        index: usize,
        forced: Option<Strategy>,
    ) -> Result<(Strategy, Vec<RefusedStrategy>), ProbeError> {
        let syscall = SYSCALLS[index];
        let candidates = forced.map_or(Strategy::ALL.to_vec(), |s| vec![s]);
        let mut refused = Vec::new();
        for strategy in candidates {
            let reason = match self.support.unavailable(strategy, syscall) {
                Some(why) => why,
                None => match self.attach(strategy, index) {
                    Ok(()) => return Ok((strategy, refused)),
                    Err(why) => {
                        let refusal = RefusedStrategy {
                            strategy: strategy.as_str(),
                            reason: why.clone(),
                        };
                        self.failed.push((syscall.name(), refusal));
                        why
                    }
                },
            };
            refused.push(RefusedStrategy {
                strategy: strategy.as_str(),
                reason,
            });
        }
        Err(ProbeError::NoStrategy {
            syscall: syscall.name(),
            reasons: refused
                .iter()
                .map(|r| format!("{}: {}", r.strategy, r.reason))
                .collect::<Vec<_>>()
                .join("; "),
        })
    }

    fn attach(&mut self, strategy: Strategy, index: usize) -> Result<(), String> {
        let syscall = SYSCALLS[index];
        let aya_btf = self.aya_btf;
        let btf = || aya_btf.ok_or_else(|| "aya could not read the kernel BTF".to_owned());
        match strategy {
            Strategy::Fentry => attach_fentry(self.ebpf, syscall, btf()?),
            Strategy::Kprobe => attach_kprobe(self.ebpf, syscall, btf()?),
            Strategy::SyscallTracepoints => attach_tracepoints(self.ebpf, syscall),
            Strategy::RawSyscalls => {
                self.raw
                    .get_or_insert_with(|| attach_raw(self.ebpf))
                    .clone()?;
                enable_raw(self.ebpf, index)
            }
        }
    }
}

/// Runs the steps of one strategy's attaching; if one fails, unloads the
/// programs it names (which detaches what was attached), so that the next
/// strategy starts clean and no call is reported twice.
fn all_or_nothing(
    ebpf: &mut Ebpf,
    programs: &[&str],
    steps: impl FnOnce(&mut Ebpf) -> Result<(), String>,
) -> Result<(), String> {
    let attached = steps(ebpf);
    if attached.is_err() {
        for name in programs {
            if let Some(program) = ebpf.program_mut(name) {
                // Unloading one that never loaded fails; nothing to undo.
                let _ = unload(program);
            }
        }
    }
    attached
}

fn unload(program: &mut aya::programs::Program) -> Result<(), ProgramError> {
    use aya::programs::Program;
    match program {
        Program::FEntry(p) => p.unload(),
        Program::FExit(p) => p.unload(),
        Program::KProbe(p) => p.unload(),
        Program::TracePoint(p) => p.unload(),
        Program::RawTracePoint(p) => p.unload(),
        _ => Ok(()),
    }
}

/// Marks the syscall at `index` as the raw programs' to report.
fn enable_raw(ebpf: &mut Ebpf, index: usize) -> Result<(), String> {
    let map = ebpf
        .map_mut("RAW_SYSCALLS")
        .ok_or("map RAW_SYSCALLS missing from the eBPF object")?;
    let mut enabled: Array<_, u32> =
        Array::try_from(map).map_err(|e| format!("map RAW_SYSCALLS: {e}"))?;
    let index = u32::try_from(index).map_err(|e| e.to_string())?;
    enabled
        .set(index, 1, 0)
        .map_err(|e| format!("enabling the raw programs' syscall: {e}"))
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

// Each pair below is loaded (verified) whole before anything is attached,
// and its exit is attached before its entry: a call that enters between the
// two is then seen to return without an entry (counted as `entry_missing`)
// instead of staying pending as if still in the kernel.

fn attach_fentry(ebpf: &mut Ebpf, syscall: Syscall, btf: &Btf) -> Result<(), String> {
    let (enter, exit) = (syscall.program("fentry"), syscall.program("fexit"));
    all_or_nothing(ebpf, &[&enter, &exit], |ebpf| {
        load_fentry(ebpf, &enter, syscall, btf)?;
        load_fexit(ebpf, &exit, syscall, btf)?;
        attach_fexit(ebpf, &exit, syscall)?;
        let program: &mut FEntry = program_mut(ebpf, &enter)?;
        program
            .attach()
            .map(drop)
            .map_err(|e| format!("attaching fentry to {}: {e}", syscall.kernel_function()))
    })
}

/// A kprobe at the entry and, as with fentry, fexit at the return. Not a
/// kretprobe: a kretprobe's returns are caught by a fixed number of
/// instances (perf's kprobe source, which aya 0.14 uses, takes the kernel's
/// default of about two per CPU and offers no way to ask for more), and a
/// call returning when all are taken is missed, its record left pending.
/// fexit's trampoline has no such limit.
fn attach_kprobe(ebpf: &mut Ebpf, syscall: Syscall, btf: &Btf) -> Result<(), String> {
    let (enter, exit) = (syscall.program("kprobe"), syscall.program("fexit"));
    let function = syscall.kernel_function();
    all_or_nothing(ebpf, &[&enter, &exit], |ebpf| {
        let program: &mut KProbe = program_mut(ebpf, &enter)?;
        timed(&enter, || program.load()).map_err(|e| format!("loading kprobe: {}", brief(e)))?;
        load_fexit(ebpf, &exit, syscall, btf)?;
        attach_fexit(ebpf, &exit, syscall)?;
        let program: &mut KProbe = program_mut(ebpf, &enter)?;
        program
            .attach(&function, 0)
            .map(drop)
            .map_err(|e| format!("attaching kprobe to {function}: {e}"))
    })
}

fn load_fentry(ebpf: &mut Ebpf, name: &str, syscall: Syscall, btf: &Btf) -> Result<(), String> {
    let program: &mut FEntry = program_mut(ebpf, name)?;
    timed(name, || program.load(&syscall.kernel_function(), btf))
        .map_err(|e| format!("loading fentry: {}", brief(e)))
}

fn load_fexit(ebpf: &mut Ebpf, name: &str, syscall: Syscall, btf: &Btf) -> Result<(), String> {
    let program: &mut FExit = program_mut(ebpf, name)?;
    timed(name, || program.load(&syscall.kernel_function(), btf))
        .map_err(|e| format!("loading fexit: {}", brief(e)))
}

fn attach_fexit(ebpf: &mut Ebpf, name: &str, syscall: Syscall) -> Result<(), String> {
    let program: &mut FExit = program_mut(ebpf, name)?;
    program
        .attach()
        .map(drop)
        .map_err(|e| format!("attaching fexit to {}: {e}", syscall.kernel_function()))
}

fn attach_tracepoints(ebpf: &mut Ebpf, syscall: Syscall) -> Result<(), String> {
    let pairs = [("tp_exit", "exit"), ("tp_enter", "enter")]
        .map(|(prefix, phase)| (syscall.program(prefix), syscall.tracepoint(phase)));
    let names = pairs.each_ref().map(|(program, _)| program.as_str());
    all_or_nothing(ebpf, &names, |ebpf| {
        for (name, tracepoint) in &pairs {
            let program: &mut TracePoint = program_mut(ebpf, name)?;
            timed(tracepoint, || program.load())
                .map_err(|e| format!("loading {tracepoint}: {}", brief(e)))?;
        }
        for (name, tracepoint) in &pairs {
            let program: &mut TracePoint = program_mut(ebpf, name)?;
            program
                .attach("syscalls", tracepoint)
                .map_err(|e| format!("attaching syscalls:{tracepoint}: {e}"))?;
        }
        Ok(())
    })
}

fn attach_raw(ebpf: &mut Ebpf) -> Result<(), String> {
    let pairs = [("raw_sys_exit", "sys_exit"), ("raw_sys_enter", "sys_enter")];
    let names = pairs.map(|(program, _)| program);
    all_or_nothing(ebpf, &names, |ebpf| {
        for (name, _) in pairs {
            let program: &mut RawTracePoint = program_mut(ebpf, name)?;
            timed(name, || program.load()).map_err(|e| format!("loading {name}: {}", brief(e)))?;
        }
        for (name, tracepoint) in pairs {
            let program: &mut RawTracePoint = program_mut(ebpf, name)?;
            program
                .attach(tracepoint)
                .map_err(|e| format!("attaching raw tracepoint {tracepoint}: {e}"))?;
        }
        Ok(())
    })
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
    fn a_strategy_is_forced_for_all_syscalls_or_for_each_named() {
        use Strategy::*;
        let parsed = |text: &str| text.parse::<StrategyChoice>().map(|c| c.0);
        assert_eq!(parsed("kprobe"), Ok([Some(Kprobe); 3]));
        assert_eq!(parsed("raw-syscalls"), Ok([Some(RawSyscalls); 3]));
        assert_eq!(
            parsed("delete_module=fentry, init_module = syscall-tracepoints"),
            Ok([Some(SyscallTracepoints), None, Some(Fentry)])
        );
        assert_eq!(
            parsed("finit_module=kprobe"),
            Ok([None, Some(Kprobe), None])
        );
        assert_eq!(StrategyChoice::default().0, [None; 3]);
    }

    #[test]
    fn a_forced_strategy_that_does_not_exist_is_named() {
        let error = |text: &str| text.parse::<StrategyChoice>().unwrap_err().to_string();
        assert_eq!(
            error("uprobe"),
            "unknown strategy `uprobe` (expected one of kprobe, fentry, syscall-tracepoints, raw-syscalls)"
        );
        assert_eq!(
            error("init_module=kprobe,finit=fentry"),
            "unknown syscall `finit` (expected one of init_module, finit_module, delete_module)"
        );
        assert!(error("init_module=").starts_with("unknown strategy ``"));
        assert!(error("init_module").starts_with("unknown strategy `init_module`"));
        assert_eq!(
            error("init_module=kprobe,init_module=fentry"),
            "init_module is given a strategy twice"
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
