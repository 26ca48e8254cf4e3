//! `modtrace watch`: probes → ring buffer → decoder → enrichment → sinks.
//!
//! The ring buffer is read on epoll wake-ups (tokio `AsyncFd`). A short timer
//! reports kernel-side losses as soon as they appear and reaps calls whose task
//! died inside the syscall, so that no observed call goes unreported.
use std::{
    fs::File,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::maps::{HashMap, MapData, PerCpuArray, RingBuf};
use modtrace_common::{
    DeleteModuleEvent, EventHeader, FinitModuleEvent, InitModuleEvent, LOSS_ENTRY_MISSING,
    LOSS_PENDING_FULL, LOSS_REASONS, LOSS_RINGBUF_FULL,
};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};
use tracing::warn;

use crate::{
    aggregates::Aggregates,
    analysis::Analyses,
    cause,
    cgroups::CgroupPaths,
    clock::Clock,
    decode::{self, Decoded, KernelEvent},
    enrich::{self, ImageReport, ProcCache, ProcInfo, ProcKey, Wanted},
    execs::{ExeAt, ExecTable},
    policy::{
        self,
        dedup::{Alerted, Dedup},
        Alert, Policy, PolicyReload, Syscall,
    },
    probes::{self, ProbeOptions, Strategy},
    record::{self, Body, EventCounts, Loss, LossCounts, LostTotals, Start, Stop},
    sink::{self, Emitter, Format, SinkError},
    snapshot::Snapshots,
};

#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub format: Format,
    pub colour: bool,
    pub output: Option<PathBuf>,
    pub strategy: Option<Strategy>,
    pub btf: PathBuf,
    pub ring_buffer_bytes: u32,
    pub aggregation: probes::Aggregation,
    pub lock_file: PathBuf,
    /// The policy file; the embedded default policy when absent.
    pub policy: Option<PathBuf>,
    /// Seconds in which one rule's alerts from one process repeat into one.
    pub alert_window_s: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Probe(#[from] probes::ProbeError),
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
    #[error("the eBPF object lacks map {0}: it and the collector come from different builds")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
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

/// The maps userspace reads, taken out of the object so that they outlive the
/// programs: after detaching, the ring buffer is still drained.
struct Maps {
    losses: PerCpuArray<MapData, u64>,
    /// Calls of callers holding CAP_SYS_MODULE, then of the others.
    pending_init: [HashMap<MapData, u32, InitModuleEvent>; 2],
    pending_finit: [HashMap<MapData, u32, FinitModuleEvent>; 2],
    pending_delete: [HashMap<MapData, u32, DeleteModuleEvent>; 2],
}

fn take_map<T>(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<T, WatchError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(WatchError::MissingMap(name))?;
    T::try_from(map).map_err(|source| WatchError::Map { name, source })
}

impl Maps {
    /// Whether thread `tid`'s load call that entered at `enter_ns` is still
    /// in the kernel (its entry record is pending).
    /// Only privileged callers' loads send the notice this answers.
    fn in_call(&self, tid: u32, enter_ns: u64) -> bool {
        let init = self.pending_init[0].get(&tid, 0).map(|e| e.header.enter_ns);
        let finit = self.pending_finit[0]
            .get(&tid, 0)
            .map(|e| e.header.enter_ns);
        init.ok() == Some(enter_ns) || finit.ok() == Some(enter_ns)
    }

    fn take(ebpf: &mut aya::Ebpf) -> Result<Self, WatchError> {
        Ok(Self {
            losses: take_map(ebpf, "LOSSES")?,
            pending_init: [
                take_map(ebpf, "PENDING_INIT")?,
                take_map(ebpf, "PENDING_INIT_UNPRIVILEGED")?,
            ],
            pending_finit: [
                take_map(ebpf, "PENDING_FINIT")?,
                take_map(ebpf, "PENDING_FINIT_UNPRIVILEGED")?,
            ],
            pending_delete: [
                take_map(ebpf, "PENDING_DELETE")?,
                take_map(ebpf, "PENDING_DELETE_UNPRIVILEGED")?,
            ],
        })
    }
}

/// Per-reason totals of the kernel's loss counters, summed over CPUs.
fn read_losses(losses: &PerCpuArray<MapData, u64>) -> Result<LossCounts, WatchError> {
    let mut totals = [0u64; LOSS_REASONS as usize];
    for (reason, total) in totals.iter_mut().enumerate() {
        let per_cpu = losses
            .get(&(reason as u32), 0)
            .map_err(|source| WatchError::Map {
                name: "LOSSES",
                source,
            })?;
        *total = per_cpu.iter().sum();
    }
    Ok(LossCounts {
        ringbuf_full: totals[LOSS_RINGBUF_FULL as usize],
        entry_missing: totals[LOSS_ENTRY_MISSING as usize],
        pending_full: totals[LOSS_PENDING_FULL as usize],
    })
}

struct Collector {
    emitter: Emitter,
    clock: Clock,
    counts: EventCounts,
    reported_losses: LossCounts,
    module_events: bool,
    requests: cause::RecentRequests,
    snapshots: Snapshots,
    policy: Policy,
    alerts: Dedup,
    execs: ExecTable,
    cgroups: CgroupPaths,
    aggregates: Aggregates,
    proc_cache: ProcCache,
    analyses: Analyses<Made>,
}

/// A record made from a kernel event, before it is judged and written.
struct Made {
    header: EventHeader,
    tgid: u32,
    body: Body,
}

/// Whether a record's process details must be read for it alone.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reading {
    Fresh,
    Shared,
}

impl Collector {
    fn emit(&mut self, kind: &str, boot_ns: Option<u64>, body: &Body) -> Result<(), WatchError> {
        let ts = self.clock.rfc3339(boot_ns);
        self.emitter.emit(kind, &ts, body)?;
        self.close_alert_windows(&ts, false)
    }

    /// Writes the closing alerts of the windows that time `ts` ends (that of
    /// a record just written, or the timer's), with that `ts`: replay,
    /// reading it, closes the same windows.
    fn close_alert_windows(&mut self, ts: &str, timer: bool) -> Result<(), WatchError> {
        let closing = if timer {
            self.alerts.due(ts)
        } else {
            self.alerts.observe(ts)
        };
        for alert in closing {
            self.emitter.emit("alert", ts, &Body::Alert(alert))?;
        }
        Ok(())
    }

    fn on_event(&mut self, event: &KernelEvent) -> Result<(), WatchError> {
        let header = event.header();
        let task = event.task();
        // A failing call may be one of a flood: its process's details are
        // shared with its other calls of the moment.
        let failed = header.exit_ns != 0 && header.ret != 0;
        let reading = if failed && !matches!(event, KernelEvent::ModuleRequest(_)) {
            Reading::Shared
        } else {
            Reading::Fresh
        };
        let own = self.process_info(
            ProcKey {
                pid: task.pid,
                start_ns: task.start_ns,
                cgroup_id: Some(task.cgroup_id),
                wanted: Wanted::ALL,
            },
            header.enter_ns,
            reading,
        );
        // The parent's start time, which names it among processes that had
        // its pid, is the first ancestor's.
        let parent_start = task
            .ancestors
            .first()
            .filter(|a| task.ancestor_count > 0 && a.pid == task.ppid)
            .map_or(0, |a| a.start_ns);
        let parent = self.process_info(
            ProcKey {
                pid: task.ppid,
                start_ns: parent_start,
                cgroup_id: None,
                wanted: Wanted {
                    cgroup: false,
                    ..Wanted::ALL
                },
            },
            header.enter_ns,
            reading,
        );
        let mut body = record::body(event, own, parent, self.module_events);
        let mut image = None;
        if let Body::Call(call) = &mut body {
            call.cause = self.requests.cause_of(header.enter_ns, call);
            let file = match &call.args {
                record::Args::Finit { file, .. } => Some(file),
                _ => None,
            };
            let snapshot = self.snapshots.claim(event.task().tid, header.enter_ns);
            // Loads are rare and worth the /proc reads; floods of failing
            // unloads are not.
            if let Some(module) = call.module.as_mut().filter(|m| m.taint.is_some()) {
                module.kernel_taint = enrich::kernel_taint().map(crate::fields::taint);
            }
            // The kernel's exec records are cheap to ask; /proc only for loads.
            let is_load = file.is_some() || matches!(event, KernelEvent::InitModule(_));
            let exe_only = Wanted {
                exe: is_load,
                cmdline: false,
                cgroup: false,
            };
            for (ancestor, captured) in call.process.ancestors.iter_mut().zip(&task.ancestors) {
                let key = ProcKey {
                    pid: ancestor.pid,
                    start_ns: captured.start_ns,
                    cgroup_id: None,
                    wanted: exe_only,
                };
                ancestor.exe = self.process_info(key, header.enter_ns, reading).exe;
            }
            image = enrich::take_image(event, file, snapshot);
        }
        let made = Made {
            header: *header,
            tgid: task.pid,
            body,
        };
        match image {
            Some(image) => self.analyses.submit(task.tid, made, image),
            None => {
                if let Some(made) = self.analyses.pass(task.tid, made) {
                    self.finish(made)?;
                }
            }
        }
        Ok(())
    }

    /// Records let go by image analysis, the analysed ones with their image.
    fn finish_analysed(
        &mut self,
        released: Vec<(Made, Option<ImageReport>)>,
    ) -> Result<(), WatchError> {
        for (mut made, image) in released {
            if let (Body::Call(call), Some(image)) = (&mut made.body, image) {
                call.module.get_or_insert_with(Default::default).image = Some(image);
            }
            self.finish(made)?;
        }
        Ok(())
    }

    /// Counts, judges and writes a record; its seq is the next one now.
    fn finish(&mut self, made: Made) -> Result<(), WatchError> {
        let Made { header, tgid, body } = made;
        let kind = decode::kind_name(header.kind);
        let seq = self.emitter.next_seq();
        self.aggregates.remember(&header, tgid, seq);
        if let Body::Request(request) = &body {
            self.requests.remember(seq, header.enter_ns, request);
        }
        self.counts.add(header.kind, 1);
        let ts = self.clock.rfc3339(Some(header.enter_ns));
        let evaluation = match (&body, Syscall::from_name(kind)) {
            (Body::Call(call), Some(syscall)) => {
                let render = || self.emitter.json_of(kind, &ts, &body);
                Some(self.policy.judge_call(syscall, &ts, call, &render))
            }
            _ => None,
        };
        self.emitter
            .emit_judged(kind, &ts, &body, evaluation.as_ref())?;
        let alerts = evaluation.map_or_else(Vec::new, |e| Alert::for_event(seq, kind, &e));
        let written = match &body {
            Body::Call(call) if !alerts.is_empty() => {
                let module = policy::event::module_of(call, kind);
                let alerted = Alerted {
                    seq,
                    kind,
                    ts: &ts,
                    failed: call.result.as_ref().is_some_and(|r| !r.ok),
                    pid: Some(u64::from(call.process.pid)),
                    start_ns: call.process.start_ns,
                    module,
                };
                self.alerts.admit_alerted(&alerted, alerts)
            }
            // Its time may still end windows.
            _ => self.alerts.observe(&ts),
        };
        for alert in written {
            self.emit("alert", None, &Body::Alert(alert))?;
        }
        Ok(())
    }

    /// Process `pid`'s details at `at_ns`: its exe and cgroup from what the
    /// kernel captured when it can, and from /proc only what is left of
    /// `from_proc`. No exe when the process has exec'd since the call: /proc
    /// would show the later program. `cgroup_id` is absent when the caller
    /// has no use for the cgroup.
    fn process_info(&mut self, key: ProcKey, at_ns: u64, reading: Reading) -> ProcInfo {
        if reading == Reading::Shared {
            if let Some(info) = self.proc_cache.get(&key, at_ns) {
                return info;
            }
        }
        let info = self.read_process(key, at_ns);
        if reading == Reading::Shared {
            self.proc_cache.put(key, at_ns, &info);
        }
        info
    }

    fn read_process(&mut self, key: ProcKey, at_ns: u64) -> ProcInfo {
        let ProcKey {
            pid,
            start_ns,
            cgroup_id,
            wanted: from_proc,
        } = key;
        let cgroup = cgroup_id.and_then(|id| self.cgroups.path_of(id));
        let exe = self.execs.exe_at(pid, start_ns, at_ns);
        let mut info = enrich::process(
            pid,
            at_ns,
            Wanted {
                exe: from_proc.exe && exe == ExeAt::NotSeen,
                cgroup: from_proc.cgroup && cgroup.is_none(),
                ..from_proc
            },
        );
        match exe {
            ExeAt::Known(path) => info.exe = Some(path),
            ExeAt::ExecdSince => info.exe = None,
            ExeAt::NotSeen => {}
        }
        if cgroup.is_some() {
            info.cgroup = cgroup;
        }
        info
    }

    /// SIGHUP: a policy that fails to load is reported and the one in force
    /// stays, so a typo never leaves the host unwatched.
    fn reload_policy(&mut self, path: Option<&Path>) -> Result<(), WatchError> {
        let reload = match Policy::load_or_default(path, &policy_context()) {
            Ok(policy) => {
                self.policy = policy;
                PolicyReload {
                    policy: self.policy.info(),
                    ok: true,
                    error: None,
                }
            }
            Err(err) => {
                warn!("policy reload rejected, keeping the policy in force: {err}");
                PolicyReload {
                    policy: self.policy.info(),
                    ok: false,
                    error: Some(err.to_string()),
                }
            }
        };
        self.emit("policy_reload", None, &Body::PolicyReload(reload))
    }

    /// Reads every ring, the notices first (their loads are in progress),
    /// then the loads, then at most `EVENTS_PER_PASS` of the failing calls,
    /// until all are empty: a flood in `EVENTS` never delays a load.
    fn drain(&mut self, rings: &mut Rings, maps: &Maps) -> Result<(), WatchError> {
        const EVENTS_PER_PASS: usize = 4096;
        loop {
            self.drain_ring(&mut rings.notices, maps, usize::MAX)?;
            self.drain_ring(&mut rings.loads, maps, usize::MAX)?;
            if self.drain_ring(&mut rings.events, maps, EVENTS_PER_PASS)? < EVENTS_PER_PASS {
                return Ok(());
            }
        }
    }

    /// Reads up to `limit` items of `ring`; returns how many it read.
    fn drain_ring(
        &mut self,
        ring: &mut RingBuf<MapData>,
        maps: &Maps,
        limit: usize,
    ) -> Result<usize, WatchError> {
        let mut read = 0;
        while read < limit {
            let Some(item) = ring.next() else { break };
            read += 1;
            let decoded = decode::decode(&item);
            drop(item);
            match decoded {
                Ok(Decoded::Record(event)) => self.on_event(&event)?,
                Ok(Decoded::LoadEntry(notice)) => self
                    .snapshots
                    .take(&notice, |tid, enter_ns| maps.in_call(tid, enter_ns)),
                // A record we cannot read is still a lost event: say so.
                Err(err) => warn!("dropping an unreadable kernel record: {err}"),
            }
        }
        Ok(read)
    }

    /// Writes the summaries of closed aggregation windows (of all, at
    /// shutdown, with `now` None).
    fn report_summaries(&mut self, now: Option<u64>) -> Result<(), WatchError> {
        let summaries = self
            .aggregates
            .take_closed(now, &self.clock)
            .map_err(|source| WatchError::Map {
                name: "AGGREGATES",
                source,
            })?;
        for (last_ns, summary) in summaries {
            self.emit("summary", Some(last_ns), &Body::Summary(summary))?;
        }
        Ok(())
    }

    fn report_losses(&mut self, maps: &Maps) -> Result<(), WatchError> {
        let now = read_losses(&maps.losses)?;
        let delta = LossCounts {
            ringbuf_full: now.ringbuf_full - self.reported_losses.ringbuf_full,
            entry_missing: now.entry_missing - self.reported_losses.entry_missing,
            pending_full: now.pending_full - self.reported_losses.pending_full,
        };
        if delta.total() > 0 {
            let total = delta.total();
            self.reported_losses = now;
            self.emit("loss", None, &Body::Loss(Loss { lost: delta, total }))?;
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
        let mut stale = Vec::new();
        for map in &mut maps.pending_init {
            stale.extend(take_pending(
                map,
                |e| KernelEvent::InitModule(Box::new(e)),
                &finished,
            ));
        }
        for map in &mut maps.pending_finit {
            stale.extend(take_pending(
                map,
                |e| KernelEvent::FinitModule(Box::new(e)),
                &finished,
            ));
        }
        for map in &mut maps.pending_delete {
            stale.extend(take_pending(
                map,
                |e| KernelEvent::DeleteModule(Box::new(e)),
                &finished,
            ));
        }
        stale.iter().try_for_each(|event| self.on_event(event))
    }
}

/// Removes the entries of `map` that `finished` selects and returns them.
/// Removing before reporting means a record is reported once even if the exit
/// probe races us (it then finds no entry and counts a loss).
fn take_pending<V: aya::Pod>(
    map: &mut HashMap<MapData, u32, V>,
    wrap: impl Fn(V) -> KernelEvent,
    finished: &impl Fn(&KernelEvent) -> bool,
) -> Vec<KernelEvent> {
    let selected: Vec<(u32, KernelEvent)> = map
        .iter()
        .filter_map(Result::ok)
        .map(|(tid, value)| (tid, wrap(value)))
        .filter(|(_, event)| finished(event))
        .collect();
    selected
        .into_iter()
        .filter(|(tid, _)| map.remove(tid).is_ok())
        .map(|(_, event)| event)
        .collect()
}

/// A pending call whose thread no longer exists (or whose tid now belongs to
/// a thread started after the call) will never reach the exit probe.
fn task_died(event: &KernelEvent, now_boot_ns: u64) -> bool {
    const GRACE_NS: u64 = 1_000_000_000;
    let header = event.header();
    let task = event.task();
    if now_boot_ns.saturating_sub(header.enter_ns) < GRACE_NS {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{}/task/{}/stat", task.pid, task.tid));
    match stat.ok().and_then(|s| enrich::start_time_ticks(&s)) {
        None => true,
        Some(ticks) => enrich::ticks_to_ns(ticks) > header.enter_ns,
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

fn start_body(probes: &probes::Probes, policy: &Policy, alert_window_s: u64) -> Start {
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
        module_events: probes.module_events,
        loaded_modules: crate::modules::loaded(),
        unavailable_fields: probes.unavailable_fields.clone(),
        policy: policy.info(),
        alert_window_s,
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

pub async fn run(options: WatchOptions) -> Result<(), WatchError> {
    let _lock = acquire_lock(&options.lock_file)?;
    raise_priority();
    let policy = Policy::load_or_default(options.policy.as_deref(), &policy_context())?;
    let file = match &options.output {
        Some(path) => Some((path.clone(), sink::open_output_file(path)?)),
        None => None,
    };
    let mut probes = probes::attach(&ProbeOptions {
        forced: options.strategy,
        btf_path: options.btf.clone(),
        ring_buffer_bytes: options.ring_buffer_bytes,
        aggregation: options.aggregation,
    })?;
    // Attaching parsed the kernel's BTF (tens of MiB, freed by now);
    // the allocator would keep it for the life of the process otherwise.
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    let mut rings = Rings {
        events: take_map(&mut probes.ebpf, "EVENTS")?,
        loads: take_map(&mut probes.ebpf, "LOADS")?,
        notices: take_map(&mut probes.ebpf, "NOTICES")?,
    };
    let mut maps = Maps::take(&mut probes.ebpf)?;
    let aggregates = Aggregates::new(
        take_map(&mut probes.ebpf, "AGGREGATES")?,
        options.aggregation.window_ns(),
    );
    let execs = ExecTable::new(if probes.exec_tracking {
        Some(take_map(&mut probes.ebpf, "EXECS")?)
    } else {
        None
    });
    let mut collector = Collector {
        emitter: Emitter::new(hostname(), options.format, options.colour, file),
        clock: Clock,
        counts: EventCounts::default(),
        reported_losses: LossCounts::default(),
        module_events: probes.module_events,
        requests: cause::RecentRequests::default(),
        snapshots: Snapshots::default(),
        policy,
        alerts: Dedup::new(options.alert_window_s),
        execs,
        cgroups: CgroupPaths::new(),
        aggregates,
        proc_cache: ProcCache::default(),
        analyses: Analyses::start().map_err(|source| WatchError::Io {
            what: "starting the image analysis thread",
            source,
        })?,
    };
    // Handlers go in before `start` is written: whoever waits for `start`
    // and then signals must not kill us with the default action.
    let io = |what| move |source| WatchError::Io { what, source };
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(io("installing the SIGTERM handler"))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(io("installing the SIGINT handler"))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(io("installing the SIGHUP handler"))?;
    let start = start_body(&probes, &collector.policy, options.alert_window_s);
    let preloaded = policy::preloaded_alerts(
        &collector.policy,
        start.loaded_modules.iter().map(|m| m.name.as_str()),
        collector.emitter.next_seq(),
    );
    collector.emit("start", None, &Body::Start(start))?;
    for alert in preloaded {
        collector.emit("alert", None, &Body::Alert(alert))?;
    }
    collector.emitter.flush()?;

    // Epoll only wakes the loop; every wake-up drains all rings in their
    // order, so the rings themselves stay with the collector.
    let wakers = Wakers::new(&rings).map_err(io("registering the ring buffers with epoll"))?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            ready = wakers.readable() => {
                let mut guard = ready.map_err(io("waiting on the ring buffers"))?;
                collector.drain(&mut rings, &maps)?;
                guard.clear_ready();
            }
            _ = tick.tick() => {
                collector.drain(&mut rings, &maps)?;
                collector.report_losses(&maps)?;
                let now = collector.clock.rfc3339(None);
                collector.close_alert_windows(&now, true)?;
                ticks += 1;
                if ticks.is_multiple_of(5) {
                    collector.report_summaries(Some(Clock::boot_ns()))?;
                }
                if ticks.is_multiple_of(10) {
                    let now = Clock::boot_ns();
                    collector.reap(&mut maps, |e| task_died(e, now))?;
                }
            }
            released = collector.analyses.next(), if collector.analyses.busy() => {
                collector.finish_analysed(released)?;
            }
            _ = sighup.recv() => collector.reload_policy(options.policy.as_deref())?,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        collector.emitter.flush()?;
    }
    drop(wakers);
    shutdown(probes, rings, maps, collector)
}

/// The three ring buffers (modtrace-ebpf/src/calls.rs says what each carries).
struct Rings {
    events: RingBuf<MapData>,
    loads: RingBuf<MapData>,
    notices: RingBuf<MapData>,
}

/// Epoll registrations of the rings' fds, apart from the rings themselves.
struct Wakers {
    fds: [AsyncFd<std::os::fd::RawFd>; 3],
}

impl Wakers {
    fn new(rings: &Rings) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let register = |ring: &RingBuf<MapData>| {
            // SAFETY: the fd is the ring's, which `run` keeps open until
            // after these registrations are dropped.
            unsafe { AsyncFd::register_with_interest(ring.as_raw_fd(), Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
        };
        Ok(Self {
            fds: [
                register(&rings.notices)?,
                register(&rings.loads)?,
                register(&rings.events)?,
            ],
        })
    }

    /// Waits until any ring has data.
    async fn readable(
        &self,
    ) -> std::io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, std::os::fd::RawFd>> {
        let [notices, loads, events] = &self.fds;
        tokio::select! {
            guard = notices.readable() => guard,
            guard = loads.readable() => guard,
            guard = events.readable() => guard,
        }
    }
}

/// Detaches the programs, then delivers everything already captured: the ring
/// buffer's remainder, the calls still in flight, the final loss counts.
fn shutdown(
    probes: probes::Probes,
    mut rings: Rings,
    mut maps: Maps,
    mut collector: Collector,
) -> Result<(), WatchError> {
    drop(probes);
    collector.drain(&mut rings, &maps)?;
    collector.reap(&mut maps, |_| true)?;
    let released = collector.analyses.finish_all();
    collector.finish_analysed(released)?;
    collector.report_summaries(None)?;
    collector.report_losses(&maps)?;
    for alert in collector.alerts.close_all() {
        collector.emit("alert", None, &Body::Alert(alert))?;
    }
    let counts = collector.reported_losses.clone();
    let stop = Stop {
        events: collector.counts.clone(),
        aggregated: collector.aggregates.totals.clone(),
        lost: LostTotals {
            total: counts.total(),
            counts,
        },
    };
    collector.emit("stop", None, &Body::Stop(stop))?;
    Ok(collector.emitter.flush()?)
}
