//! `modtrace watch`: the loop that runs the [`crate::pipeline`]. It only
//! schedules: epoll wake-ups, timers, signals, the reaper and shutdown.
//!
//! The ring buffer is read on epoll wake-ups (tokio `AsyncFd`). A short timer
//! reports kernel-side losses as soon as they appear and reaps calls whose task
//! died inside the syscall, so that no observed call goes unreported.
use std::{
    fs::File,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use modtrace_common::{pinned::CollectorInfo, KernelEvent, Syscall, TaskInfo, PARENT_PROCESS};
use tokio::signal::unix::{signal, SignalKind};
use tracing::warn;

use crate::{
    clock::Clock,
    decode::Decoded,
    enforcement,
    enrich::{
        analysis::Analyses,
        execs::ExecTable,
        modules,
        process::{self, ProcRoot},
        summaries::Summaries,
        Enricher,
    },
    kernel::{
        self,
        enforce::Enforcer,
        maps::{take_map, Maps, MapsError, Rings, Wakers},
        pinned::{Handover, PolicyTables},
        ProbeOptions, StrategyChoice,
    },
    pipeline::{Enforcing, Pipeline, PipelineError},
    policy::{
        self,
        dedup::Dedup,
        kernel_rules::{self, DenyTables, ModuleTree},
        Policy,
    },
    record::{judgement::PolicyReload, Body, Loss, LossCounts, LostTotals, Start, Stop},
    sink::{self, Emitter, Format, SinkError},
};

#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub format: Format,
    pub colour: bool,
    pub output: Option<PathBuf>,
    pub strategy: StrategyChoice,
    pub btf: PathBuf,
    pub ring_buffer_bytes: u32,
    pub aggregation: kernel::Aggregation,
    pub lock_file: PathBuf,
    /// The policy file; the embedded default policy when absent.
    pub policy: Option<PathBuf>,
    /// Seconds in which one rule's alerts from one process repeat into one.
    pub alert_window_s: u64,
    /// Enforce the policy's deny rules in the kernel (BPF LSM).
    pub enforce: bool,
    /// End enforcement when `watch` exits; otherwise it stays pinned.
    pub release_on_exit: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Probe(#[from] kernel::ProbeError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error("another modtrace is already running (it holds {path}); stop it first, or give this one another --lock-file if you really want two")]
    AlreadyRunning { path: PathBuf },
    #[error("cannot create lock file {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Enforce(#[from] kernel::enforce::EnforceError),
    #[error("the policy's deny rules cannot be enforced: {0}")]
    DenyRules(#[from] policy::kernel_rules::CompileError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

/// Held for the life of the process; the kernel drops the lock when we exit.
fn acquire_lock(path: &Path) -> Result<nix::fcntl::Flock<File>, WatchError> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| WatchError::Lock {
            path: path.into(),
            source,
        })?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| WatchError::AlreadyRunning { path: path.into() })
}

/// What the loop holds besides the pipeline: the kernel's loss counts
/// reported so far.
struct Collector {
    pipeline: Pipeline,
    reported_losses: LossCounts,
    /// Calls reported from their map because the kernel skipped their exit.
    reported_past_exit: u64,
    /// Under `--enforce`: the deny tables in the kernel, which a reload may
    /// not change (they are filled once, before the programs attach).
    enforced: Option<DenyTables>,
}

impl Collector {
    /// `drain` as a real-time thread: each record costs map lookups (the
    /// caller's exec, whether it is still in its call), bpf() syscalls that
    /// must not be preempted either (`Unpreempted`).
    fn drain_unpreempted(&mut self, rings: &mut Rings, maps: &mut Maps) -> Result<(), WatchError> {
        let _unpreempted = Unpreempted::enter();
        self.drain(rings, maps)
    }

    /// Reads every ring, the notices first (their loads are in progress),
    /// then the loads, then at most `EVENTS_PER_PASS` of the failing calls,
    /// until all are empty: a flood in `EVENTS` never delays a load.
    fn drain(&mut self, rings: &mut Rings, maps: &mut Maps) -> Result<(), WatchError> {
        const EVENTS_PER_PASS: usize = 4096;
        loop {
            self.drain_ring(&mut rings.notices, maps, usize::MAX)?;
            self.drain_loads(rings, maps)?;
            if self.drain_ring(&mut rings.events, maps, EVENTS_PER_PASS)? < EVENTS_PER_PASS {
                return Ok(());
            }
        }
    }

    /// Reads the loads. Before a load whose caller the kernel may have
    /// started (modprobe for an autoload request), reads the events the
    /// kernel wrote before that load began: the request it serves, which is
    /// among them, is then written first, and the load can cite it. When
    /// userspace reads late (a busy host), the loads ring would otherwise be
    /// read ahead of the request.
    fn drain_loads(&mut self, rings: &mut Rings, maps: &mut Maps) -> Result<(), WatchError> {
        while let Some(decoded) = next_decoded(&mut rings.loads) {
            let Some(decoded) = decoded else { continue };
            if let Some(entered_ns) = load_of_kernel_helper(&decoded) {
                self.catch_up(&mut rings.events, maps, entered_ns)?;
            }
            self.deliver(decoded, maps)?;
        }
        Ok(())
    }

    /// Passes an item down the pipeline, unless it is a call whose exit the
    /// kernel skipped that was already reported from its map: the kernel
    /// delivers such a call when its thread enters the next one, to either
    /// ring (`deliver_stale` in modtrace-ebpf/src/calls.rs).
    fn deliver(&mut self, decoded: Decoded, maps: &mut Maps) -> Result<(), WatchError> {
        if matches!(&decoded, Decoded::Record(event) if maps.is_repeat(event)) {
            return Ok(());
        }
        self.pipeline
            .on_decoded(decoded, |tid, enter_ns| maps.in_call(tid, enter_ns))?;
        Ok(())
    }

    /// Reads `events` until it is empty or up to the first item the kernel
    /// wrote after `entered_ns`. Its timestamp was taken before it was
    /// written, and items are read in the order they were written: past it,
    /// nothing written before `entered_ns` is left.
    fn catch_up(
        &mut self,
        events: &mut RingBuf<MapData>,
        maps: &mut Maps,
        entered_ns: u64,
    ) -> Result<(), WatchError> {
        while let Some(decoded) = next_decoded(events) {
            let Some(decoded) = decoded else { continue };
            let later = matches!(&decoded, Decoded::Record(e) if e.header().exit_ns > entered_ns);
            self.deliver(decoded, maps)?;
            if later {
                break;
            }
        }
        Ok(())
    }

    /// Reads up to `limit` items of `ring`; returns how many it read.
    fn drain_ring(
        &mut self,
        ring: &mut RingBuf<MapData>,
        maps: &mut Maps,
        limit: usize,
    ) -> Result<usize, WatchError> {
        let mut read = 0;
        while read < limit {
            let Some(decoded) = next_decoded(ring) else {
                break;
            };
            read += 1;
            if let Some(decoded) = decoded {
                self.deliver(decoded, maps)?;
            }
        }
        Ok(read)
    }

    fn report_losses(&mut self, maps: &Maps) -> Result<(), WatchError> {
        let now = maps.losses()?;
        let delta = LossCounts {
            ringbuf_full: now.ringbuf_full - self.reported_losses.ringbuf_full,
            entry_missing: now.entry_missing - self.reported_losses.entry_missing,
            pending_full: now.pending_full - self.reported_losses.pending_full,
        };
        if delta.total() > 0 {
            let total = delta.total();
            self.reported_losses = now;
            self.pipeline
                .emit("loss", None, &Body::Loss(Loss { lost: delta, total }))?;
        }
        Ok(())
    }

    /// Reports and forgets pending calls selected by `finished`: tasks that
    /// died inside the syscall, or, at shutdown, every call still in flight.
    fn reap(
        &mut self,
        maps: &mut Maps,
        finished: impl Fn(&KernelEvent) -> bool,
    ) -> Result<(), WatchError> {
        for event in maps.take_pending(finished) {
            self.pipeline.on_event(&event)?;
        }
        Ok(())
    }

    /// Reports the privileged calls still pending whose exit the kernel
    /// skipped, without their result; they stay in their map (see
    /// `Maps::report_in_map`). No more are reported than the kernel counts
    /// skipped exits, however /proc reads.
    fn report_exits_skipped(
        &mut self,
        maps: &mut Maps,
        exits_skipped: u64,
        skipped: impl Fn(&KernelEvent) -> bool,
    ) -> Result<(), WatchError> {
        let budget = exits_skipped.saturating_sub(self.reported_past_exit);
        for event in maps.report_in_map(budget, skipped) {
            self.reported_past_exit += 1;
            self.pipeline.on_event(&event)?;
        }
        Ok(())
    }

    /// SIGHUP: a policy that fails to load is reported and the one in force
    /// stays, so a typo never leaves the host unwatched.
    fn reload_policy(&mut self, path: Option<&Path>) -> Result<(), WatchError> {
        let policy = &mut self.pipeline.policy;
        let loaded = Policy::load_or_default(path, &policy_context())
            .map_err(|e| e.to_string())
            .and_then(|loaded| match &self.enforced {
                Some(enforced) => same_deny_rules(loaded, enforced),
                None => Ok(loaded),
            });
        let reload = match loaded {
            Ok(loaded) => {
                *policy = loaded;
                PolicyReload {
                    policy: policy.info(),
                    ok: true,
                    error: None,
                }
            }
            Err(err) => {
                warn!("policy reload rejected, keeping the policy in force: {err}");
                PolicyReload {
                    policy: policy.info(),
                    ok: false,
                    error: Some(err),
                }
            }
        };
        Ok(self
            .pipeline
            .emit("policy_reload", None, &Body::PolicyReload(reload))?)
    }
}

/// The next item of `ring`, decoded (`Some(None)` for one that could not
/// be); None once the ring is empty.
fn next_decoded(ring: &mut RingBuf<MapData>) -> Option<Option<Decoded>> {
    let item = ring.next()?;
    Some(Pipeline::decode(&item))
}

/// The entry time of a load whose caller's parent is a kernel thread, or
/// not known to be a process.
fn load_of_kernel_helper(decoded: &Decoded) -> Option<u64> {
    match decoded {
        Decoded::Record(event) => event
            .invocation()
            .filter(|i| i.parent != PARENT_PROCESS)
            .map(|_| event.header().enter_ns),
        Decoded::LoadEntry(_) => None,
    }
}

/// `policy`, enforced, if its deny rules compile to the tables in force;
/// otherwise why the reload is refused.
fn same_deny_rules(mut policy: Policy, enforced: &DenyTables) -> Result<Policy, String> {
    let tables = deny_tables(&policy).map_err(|e| e.to_string())?;
    if &tables != enforced {
        return Err("under --enforce the deny rules cannot change on SIGHUP: the kernel's tables are filled once; restart watch to change them".into());
    }
    policy.set_enforced(true);
    Ok(policy)
}

/// The kernel tables of `policy`'s deny rules, for the running kernel's
/// module tree.
fn deny_tables(policy: &Policy) -> Result<DenyTables, WatchError> {
    let tree = ModuleTree::read(&Path::new("/lib/modules").join(policy::running_kernel()));
    Ok(kernel_rules::compile(policy.deny_rules(), &tree)?)
}

/// Whether the thread of a pending call is still the one that made it;
/// None while the call is younger than a second, too young to judge.
fn caller_alive(event: &KernelEvent, now_boot_ns: u64) -> Option<bool> {
    const GRACE_NS: u64 = 1_000_000_000;
    let header = event.header();
    let task = event.task();
    if now_boot_ns.saturating_sub(header.enter_ns) < GRACE_NS {
        return None;
    }
    let stat = process::read_proc_text(&thread_file(task, "stat"));
    Some(match stat.and_then(|s| process::start_time_ticks(&s)) {
        None => false,
        Some(ticks) => process::ticks_to_ns(ticks) <= header.enter_ns,
    })
}

fn thread_file(task: &TaskInfo, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{}/task/{}/{name}", task.pid, task.tid))
}

/// A pending call whose thread no longer exists (or whose tid now belongs to
/// a thread started after the call) will never reach the exit probe.
fn task_died(event: &KernelEvent, now_boot_ns: u64) -> bool {
    caller_alive(event, now_boot_ns) == Some(false)
}

/// A pending call whose thread lives on outside that syscall: the kernel
/// skipped modtrace's exit program (kernel/skipped.rs), so no exit comes.
fn exit_skipped(event: &KernelEvent, now_boot_ns: u64) -> bool {
    let Some(syscall) = Syscall::from_kind(event.header().kind) else {
        return false;
    };
    caller_alive(event, now_boot_ns) == Some(true)
        && process::read_proc_text(&thread_file(event.task(), "syscall"))
            .is_some_and(|text| !in_syscall(&text, syscall.x86_64_nr()))
}

/// Whether /proc/<pid>/task/<tid>/syscall says the thread is in syscall
/// `nr`; a running thread's cannot be told, and counts as in it.
fn in_syscall(proc_syscall: &str, nr: u32) -> bool {
    match proc_syscall.split_whitespace().next() {
        Some("running") | None => true,
        Some(first) => first.parse::<i64>().ok() == Some(i64::from(nr)),
    }
}

/// This process, as the pinned enforcement records its collector.
fn this_collector() -> CollectorInfo {
    let pid = std::process::id();
    let start_ticks = process::read_proc_text(Path::new(&format!("/proc/{pid}/stat")))
        .and_then(|s| process::start_time_ticks(&s))
        .unwrap_or(0);
    CollectorInfo {
        pid,
        _reserved: 0,
        start_ticks,
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Policies judge this kernel's events, from files only root can change.
fn policy_context() -> policy::Context {
    policy::Context {
        kernel: policy::running_kernel(),
        check_owner: true,
    }
}

fn start_body(
    probes: &kernel::Probes,
    policy: &Policy,
    alert_window_s: u64,
    enforcing: bool,
) -> Start {
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    Start {
        modtrace_version: env!("CARGO_PKG_VERSION"),
        kernel,
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_owned()),
        btf: probes.btf_available,
        strategies: probes.strategies.clone(),
        refused_strategies: probes.refused.clone(),
        module_events: probes.module_events,
        loaded_modules: modules::loaded(),
        unavailable_fields: probes.unavailable_fields.clone(),
        policy: policy.info(),
        alert_window_s,
        enforcing,
    }
}

/// Load notices must be read while the loader is still in its call (its
/// image is copied out of its memory then): on a host kept busy, by a flood
/// of failing calls say, a collector at the default priority was seen to
/// wake only after modprobe had exited (6.12's EEVDF scheduler, 2 CPUs, 5
/// flooders). A nice of -10 makes it win those wake-ups without the risk of
/// a real-time priority, under which a busy collector could starve the host.
fn raise_priority() {
    const NICE: libc::c_int = -10;
    // SAFETY: setpriority on the calling process; no pointers.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) } != 0 {
        tracing::debug!(
            "could not raise the collector's priority to nice {NICE}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The nice sets a share, not how soon the collector runs once woken, and
/// only among the tasks of its own group: with autogroup (each session a
/// group, as on this host) or cgroups, other groups' work competes at the
/// group's weight, whatever the nice. EEVDF then lets the running task end
/// its slice (0.75-3 ms, checked at the next tick: 4 ms at HZ=250), and the
/// collector was seen waiting 1-5 ms so behind other sessions' builds. Since
/// 6.12 a fair task may ask for a shorter slice (`sched_attr.sched_runtime`,
/// passed up to its group), and a task with a shorter slice preempts the
/// running one on wake-up; shares stay as they were. The loop asks for the
/// shortest the kernel grants, 0.1 ms: with two nice-10 spinners in another
/// session, p99 from a call's return to its line on a pipe fell from 4.2 ms
/// to 0.7 ms (600 calls each, interleaved). Earlier kernels ignore it.
/// Only the calling thread, the loop's, is changed, once the image analysis
/// threads are started (they would inherit it); it keeps its nice.
fn shorten_slice() {
    if let Err(err) = set_scheduling(libc::SCHED_OTHER, 0) {
        tracing::debug!("could not shorten the collector's slice to {SLICE_NS} ns: {err}");
    }
}

/// The slice `shorten_slice` gives the loop thread.
const SLICE_NS: u64 = 100_000;

/// Sets the calling thread's policy and priority with sched_setattr, with
/// the loop's short slice and the nice the thread has.
fn set_scheduling(policy: libc::c_int, priority: u32) -> std::io::Result<()> {
    // include/uapi/linux/sched/types.h, SCHED_ATTR_SIZE_VER0.
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        sched_policy: u32,
        sched_flags: u64,
        sched_nice: i32,
        sched_priority: u32,
        sched_runtime: u64,
        sched_deadline: u64,
        sched_period: u64,
    }
    // sched_setattr sets the nice too: keep the one the thread has.
    // SAFETY: getpriority of the calling thread; errno is reset first to
    // tell -1 from an error, as getpriority(2) says.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: policy as u32,
        sched_flags: 0,
        sched_nice: nice,
        sched_priority: priority,
        sched_runtime: SLICE_NS,
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: sched_setattr on the calling thread with a valid attr of the
    // size it states; the kernel only reads it.
    if unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &raw const attr, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The loop thread as a real-time thread (SCHED_FIFO 1) while it drains the
/// rings and reads the kernel's maps. A bpf() syscall on a map holds the CPU's
/// `bpf_prog_active` while it runs, and the kernel skips every kprobe
/// program on that CPU meanwhile (kernel/skipped.rs): on a preemptible
/// kernel a module syscall that preempts the collector there would lose
/// its entry. No ordinary task preempts a real-time one. A bulk read is
/// bounded by the maps' capacities; a drain under a flood is not, and then
/// the kernel's real-time throttling (sched_rt_runtime_us, 95% by default)
/// leaves the CPU's other tasks their share. The thread returns to its
/// normal policy as soon as the work is done.
struct Unpreempted;

impl Unpreempted {
    fn enter() -> Self {
        if let Err(err) = set_scheduling(libc::SCHED_FIFO, 1) {
            tracing::debug!("could not make the collector real-time while it reads maps: {err}");
        }
        Self
    }
}

impl Drop for Unpreempted {
    fn drop(&mut self) {
        shorten_slice();
    }
}

pub async fn run(options: WatchOptions) -> Result<(), WatchError> {
    let _lock = acquire_lock(&options.lock_file)?;
    raise_priority();
    let mut policy = Policy::load_or_default(options.policy.as_deref(), &policy_context())?;
    // Refused before anything is attached: no watch that looks enforced
    // and is not.
    let enforce = match options.enforce {
        true => {
            kernel::enforce::check_running_kernel()?;
            let config = kernel::enforce::config(&options.btf)?;
            policy.set_enforced(true);
            Some((config, deny_tables(&policy)?))
        }
        false => None,
    };
    let file = match &options.output {
        Some(path) => Some((path.clone(), sink::open_output_file(path)?)),
        None => None,
    };
    let mut probes = kernel::attach(&ProbeOptions {
        forced: options.strategy,
        btf_path: options.btf.clone(),
        ring_buffer_bytes: options.ring_buffer_bytes,
        aggregation: options.aggregation,
    })?;
    // Attaching parsed the kernel's BTF (tens of MiB, freed by now);
    // the allocator would keep it for the life of the process otherwise.
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    let mut rings = Rings::take(&mut probes.ebpf)?;
    let mut maps = Maps::take(&mut probes.ebpf)?;
    let summaries = Summaries::new(
        take_map(&mut probes.ebpf, "AGGREGATES")?,
        options.aggregation.window_ns(),
    );
    let execs = ExecTable::new(if probes.exec_tracking {
        Some(take_map(&mut probes.ebpf, "EXECS")?)
    } else {
        None
    });
    let io = |what| move |source| WatchError::Io { what, source };
    let pipeline = Pipeline::new(
        Enricher::new(ProcRoot::default(), probes.module_events, execs),
        Analyses::start().map_err(io("starting the image analysis thread"))?,
        summaries,
        policy,
        Dedup::new(options.alert_window_s),
        Emitter::new(options.format, options.colour, file),
        hostname(),
    );
    let mut handover = None;
    let mut collector = Collector {
        pipeline,
        reported_losses: LossCounts::default(),
        reported_past_exit: 0,
        enforced: None,
    };
    if let Some((config, tables)) = enforce {
        let info = collector.pipeline.policy.info();
        let mut enforcer = Enforcer::start(
            &PolicyTables {
                rules: &tables.rules,
                clauses: &tables.clauses,
                keys: &tables.keys,
                policy_sha256: &info.sha256,
                source: &info.source,
            },
            &config,
            &options.btf,
        )?;
        enforcer.set_collector(this_collector())?;
        handover = enforcer.handover().cloned();
        collector.pipeline.enforcement = Some(Enforcing::new(enforcer, tables.rules.clone()));
        collector.enforced = Some(tables);
    }
    // Handlers go in before `start` is written: whoever waits for `start`
    // and then signals must not kill us with the default action.
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(io("installing the SIGTERM handler"))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(io("installing the SIGINT handler"))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(io("installing the SIGHUP handler"))?;
    write_start(
        &mut collector.pipeline,
        &probes,
        options.alert_window_s,
        options.enforce,
    )?;
    report_takeover(&mut collector.pipeline, handover.as_ref())?;

    // Epoll only wakes the loop; every wake-up drains all rings in their
    // order, so the rings themselves stay with the collector.
    let wakers = Wakers::new(&rings).map_err(io("registering the ring buffers with epoll"))?;
    shorten_slice();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            ready = wakers.readable() => {
                let mut guard = ready.map_err(io("waiting on the ring buffers"))?;
                collector.drain_unpreempted(&mut rings, &mut maps)?;
                guard.clear_ready();
            }
            _ = tick.tick() => {
                let _unpreempted = Unpreempted::enter();
                collector.drain(&mut rings, &mut maps)?;
                collector.report_losses(&maps)?;
                collector.pipeline.report_denials()?;
                let now = Clock.stamp(None);
                collector.pipeline.close_alert_windows(&now, true)?;
                ticks += 1;
                if ticks.is_multiple_of(5) {
                    collector.pipeline.report_summaries(Some(Clock::boot_ns()))?;
                    report_enforce_commands(&mut collector.pipeline)?;
                }
                if ticks.is_multiple_of(10) {
                    let now = Clock::boot_ns();
                    collector.reap(&mut maps, |e| task_died(e, now))?;
                    let exits_skipped = kernel::skipped::exits_skipped(&probes.ebpf);
                    collector.report_exits_skipped(&mut maps, exits_skipped, |e| exit_skipped(e, now))?;
                }
            }
            released = collector.pipeline.analyses.next(), if collector.pipeline.analyses.busy() => {
                collector.pipeline.finish_analysed(released)?;
            }
            _ = sighup.recv() => collector.reload_policy(options.policy.as_deref())?,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        collector.pipeline.flush()?;
    }
    drop(wakers);
    shutdown(probes, rings, maps, collector, options.release_on_exit)
}

/// The `start` record, and the alerts of modules loaded before it that the
/// policy's modprobe.d rules disable.
fn write_start(
    pipeline: &mut Pipeline,
    probes: &kernel::Probes,
    alert_window_s: u64,
    enforcing: bool,
) -> Result<(), WatchError> {
    let start = start_body(probes, &pipeline.policy, alert_window_s, enforcing);
    let preloaded = policy::preloaded_alerts(
        &pipeline.policy,
        start.loaded_modules.iter().map(|m| m.name.as_str()),
        pipeline.next_seq(),
    );
    pipeline.emit("start", None, &Body::Start(start))?;
    for alert in preloaded {
        pipeline.emit("alert", None, &Body::Alert(alert))?;
    }
    Ok(pipeline.flush()?)
}

/// What happened to enforcement while no collector ran: each `enforce`
/// command since the last capture, and the pinned enforcement this one took
/// over.
fn report_takeover(pipeline: &mut Pipeline, handover: Option<&Handover>) -> Result<(), WatchError> {
    report_enforce_commands(pipeline)?;
    if let Some(handover) = handover {
        pipeline.report_handover(handover)?;
    }
    Ok(pipeline.flush()?)
}

/// An `enforce_command` record for each `enforce release|allow|lock`
/// logged since the last look.
fn report_enforce_commands(pipeline: &mut Pipeline) -> Result<(), WatchError> {
    for command in enforcement::take_commands() {
        match command {
            Ok(command) => {
                pipeline.emit("enforce_command", None, &Body::EnforceCommand(command))?;
            }
            Err(unreadable) => warn!("a logged enforce command cannot be read: {unreadable}"),
        }
    }
    Ok(())
}

/// Detaches the programs, then delivers everything already captured: the
/// rings' remainder, the calls still in flight, the final loss counts.
fn shutdown(
    probes: kernel::Probes,
    mut rings: Rings,
    mut maps: Maps,
    mut collector: Collector,
    release_on_exit: bool,
) -> Result<(), WatchError> {
    let skipped_runs = kernel::skipped::skipped_runs(&probes.ebpf);
    drop(probes);
    collector.drain(&mut rings, &mut maps)?;
    collector.reap(&mut maps, |_| true)?;
    let pipeline = &mut collector.pipeline;
    let released = pipeline.analyses.finish_all();
    pipeline.finish_analysed(released)?;
    pipeline.report_summaries(None)?;
    collector.report_losses(&maps)?;
    let pipeline = &mut collector.pipeline;
    pipeline.close_all_alerts()?;
    let counts = collector.reported_losses.clone();
    let enforcement = pipeline.denial_totals()?;
    let enforcement_released = match pipeline.enforcement.take() {
        Some(enforcing) => {
            enforcing.finish(release_on_exit)?;
            Some(release_on_exit)
        }
        None => None,
    };
    let stop = Stop {
        events: pipeline.counts.clone(),
        aggregated: pipeline.summaries.totals.clone(),
        lost: LostTotals {
            total: counts.total(),
            counts,
        },
        skipped_runs,
        enforcement,
        enforcement_released,
    };
    pipeline.emit("stop", None, &Body::Stop(stop))?;
    Ok(pipeline.flush()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_syscall_tells_a_thread_in_the_call_from_one_past_it() {
        let blocked = "176 0x7f3a2c001000 0x800 0x0 0x0 0x0 0x0 0x7ffd8e1c2b18 0x7f3a2c1e2f2d\n";
        assert!(in_syscall(blocked, 176));
        // Blocked in another syscall, or in none (-1): past the call.
        assert!(!in_syscall(
            "202 0x55d 0x80 0x0 0x0 0x0 0x0 0x7ffd 0x7f3a\n",
            176
        ));
        assert!(!in_syscall("-1 0x7ffd8e1c2b18 0x55d1c0a1\n", 176));
        // A running thread cannot be told: it counts as in the call.
        assert!(in_syscall("running\n", 176));
        assert!(in_syscall("", 176));
    }

    fn policy(deny: &str) -> Policy {
        let text = format!(
            "[[rule]]\nid = \"d\"\nseverity = \"high\"\naction = \"deny\"\nwhen = {{ {deny} }}\n\
             [[rule]]\nid = \"a\"\nseverity = \"low\"\nwhen = {{ exe = \"/bin/x\" }}\n"
        );
        let context = policy::Context {
            kernel: "6.1.0-28-amd64".into(),
            check_owner: false,
        };
        Policy::from_text(&text, "p.toml", &context).unwrap()
    }

    #[test]
    fn an_enforced_reload_keeps_its_deny_rules_or_is_refused() {
        let enforced = deny_tables(&policy(r#"load = true, module = "udf""#)).unwrap();
        // Other rules may change; the new policy is then enforced too.
        let same = same_deny_rules(policy(r#"load = true, module = "udf""#), &enforced).unwrap();
        let record = serde_json::json!({"kind":"finit_module",
            "args":{"file":{"path":"/lib/modules/x/udf.ko"}}});
        let judged = same
            .evaluate(&crate::samples::complete(&record))
            .unwrap()
            .unwrap();
        assert!(!judged.would_deny, "{judged:?}");
        let refused = same_deny_rules(policy(r#"load = true, module = "rds""#), &enforced);
        assert_eq!(
            refused.err().as_deref(),
            Some("under --enforce the deny rules cannot change on SIGHUP: the kernel's tables are filled once; restart watch to change them")
        );
    }
}
