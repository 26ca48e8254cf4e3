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
    DeleteModuleEvent, FinitModuleEvent, InitModuleEvent, LOSS_ENTRY_MISSING, LOSS_PENDING_FULL,
    LOSS_REASONS, LOSS_RINGBUF_FULL,
};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};
use tracing::warn;

use crate::{
    cause,
    cgroups::CgroupPaths,
    clock::Clock,
    decode::{self, Decoded, KernelEvent},
    enrich::{self, ProcInfo, Wanted},
    execs::{ExeAt, ExecTable},
    policy::{self, dedup::Dedup, Alert, Policy, PolicyReload, Syscall},
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
    pending_init: HashMap<MapData, u32, InitModuleEvent>,
    pending_finit: HashMap<MapData, u32, FinitModuleEvent>,
    pending_delete: HashMap<MapData, u32, DeleteModuleEvent>,
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
    fn in_call(&self, tid: u32, enter_ns: u64) -> bool {
        let init = self.pending_init.get(&tid, 0).map(|e| e.header.enter_ns);
        let finit = self.pending_finit.get(&tid, 0).map(|e| e.header.enter_ns);
        init.ok() == Some(enter_ns) || finit.ok() == Some(enter_ns)
    }

    fn take(ebpf: &mut aya::Ebpf) -> Result<Self, WatchError> {
        Ok(Self {
            losses: take_map(ebpf, "LOSSES")?,
            pending_init: take_map(ebpf, "PENDING_INIT")?,
            pending_finit: take_map(ebpf, "PENDING_FINIT")?,
            pending_delete: take_map(ebpf, "PENDING_DELETE")?,
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
}

impl Collector {
    fn emit(&mut self, kind: &str, boot_ns: Option<u64>, body: &Body) -> Result<(), WatchError> {
        let ts = self.clock.rfc3339(boot_ns);
        self.emitter.emit(kind, ts.clone(), body)?;
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
            self.emitter
                .emit("alert", ts.to_owned(), &Body::Alert(alert))?;
        }
        Ok(())
    }

    fn on_event(&mut self, event: &KernelEvent) -> Result<(), WatchError> {
        let header = event.header();
        let task = event.task();
        let own = self.process_info(
            task.pid,
            task.start_ns,
            header.enter_ns,
            Some(task.cgroup_id),
            Wanted::ALL,
        );
        // The parent's start time, which names it among processes that had
        // its pid, is the first ancestor's.
        let parent_start = task
            .ancestors
            .first()
            .filter(|a| task.ancestor_count > 0 && a.pid == task.ppid)
            .map_or(0, |a| a.start_ns);
        let parent = self.process_info(
            task.ppid,
            parent_start,
            header.enter_ns,
            None,
            Wanted {
                cgroup: false,
                ..Wanted::ALL
            },
        );
        let mut body = record::body(event, own, parent, self.module_events);
        let seq = self.emitter.next_seq();
        match &mut body {
            Body::Request(request) => self.requests.remember(seq, header.enter_ns, request),
            Body::Call(call) => {
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
                    let at = header.enter_ns;
                    ancestor.exe = self
                        .process_info(ancestor.pid, captured.start_ns, at, None, exe_only)
                        .exe;
                }

                if let Some(image) = enrich::module_image(event, file, snapshot) {
                    call.module.get_or_insert_with(Default::default).image = Some(image);
                }
            }
            _ => {}
        }
        let count = match event {
            KernelEvent::InitModule(_) => &mut self.counts.init_module,
            KernelEvent::FinitModule(_) => &mut self.counts.finit_module,
            KernelEvent::DeleteModule(_) => &mut self.counts.delete_module,
            KernelEvent::ModuleRequest(_) => &mut self.counts.request,
        };
        *count += 1;
        self.counts.total += 1;
        let ts = self.clock.rfc3339(Some(header.enter_ns));
        let mut json = self.emitter.render(event.kind(), ts.clone(), &body);
        let evaluation = match (&body, Syscall::from_name(event.kind())) {
            (Body::Call(call), Some(syscall)) => {
                Some(self.policy.judge_call(&mut json, syscall, &ts, call))
            }
            _ => None,
        };
        self.emitter.write(&json)?;
        let alerts = evaluation.map_or_else(Vec::new, |e| Alert::all_for(&json, &e));
        for alert in self.alerts.admit(&json, alerts) {
            self.emit("alert", None, &Body::Alert(alert))?;
        }
        Ok(())
    }

    /// Process `pid`'s details at `at_ns`: its exe and cgroup from what the
    /// kernel captured when it can, and from /proc only what is left of
    /// `from_proc`. No exe when the process has exec'd since the call: /proc
    /// would show the later program. `cgroup_id` is absent when the caller
    /// has no use for the cgroup.
    fn process_info(
        &mut self,
        pid: u32,
        start_ns: u64,
        at_ns: u64,
        cgroup_id: Option<u64>,
        from_proc: Wanted,
    ) -> ProcInfo {
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

    fn drain(&mut self, events: &mut RingBuf<MapData>, maps: &Maps) -> Result<(), WatchError> {
        while let Some(item) = events.next() {
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
        let mut stale = take_pending(
            &mut maps.pending_init,
            |e| KernelEvent::InitModule(Box::new(e)),
            &finished,
        );
        stale.extend(take_pending(
            &mut maps.pending_finit,
            |e| KernelEvent::FinitModule(Box::new(e)),
            &finished,
        ));
        stale.extend(take_pending(
            &mut maps.pending_delete,
            |e| KernelEvent::DeleteModule(Box::new(e)),
            &finished,
        ));
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

pub async fn run(options: WatchOptions) -> Result<(), WatchError> {
    let _lock = acquire_lock(&options.lock_file)?;
    let policy = Policy::load_or_default(options.policy.as_deref(), &policy_context())?;
    let file = match &options.output {
        Some(path) => Some((path.clone(), sink::open_output_file(path)?)),
        None => None,
    };
    let mut probes = probes::attach(&ProbeOptions {
        forced: options.strategy,
        btf_path: options.btf.clone(),
        ring_buffer_bytes: options.ring_buffer_bytes,
    })?;
    let ring: RingBuf<MapData> = take_map(&mut probes.ebpf, "EVENTS")?;
    let mut maps = Maps::take(&mut probes.ebpf)?;
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

    // SAFETY: the AsyncFd owns the ring buffer, whose fd stays open and the
    // same for as long as the AsyncFd lives.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .map_err(io("registering the ring buffer with epoll"))?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(io("waiting on the ring buffer"))?;
                collector.drain(guard.get_inner_mut(), &maps)?;
                guard.clear_ready();
            }
            _ = tick.tick() => {
                collector.drain(ring.get_mut(), &maps)?;
                collector.report_losses(&maps)?;
                let now = collector.clock.rfc3339(None);
                collector.close_alert_windows(&now, true)?;
                ticks += 1;
                if ticks.is_multiple_of(10) {
                    let now = Clock::boot_ns();
                    collector.reap(&mut maps, |e| task_died(e, now))?;
                }
            }
            _ = sighup.recv() => collector.reload_policy(options.policy.as_deref())?,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    shutdown(probes, ring.into_inner(), maps, collector)
}

/// Detaches the programs, then delivers everything already captured: the ring
/// buffer's remainder, the calls still in flight, the final loss counts.
fn shutdown(
    probes: probes::Probes,
    mut ring: RingBuf<MapData>,
    mut maps: Maps,
    mut collector: Collector,
) -> Result<(), WatchError> {
    drop(probes);
    collector.drain(&mut ring, &maps)?;
    collector.reap(&mut maps, |_| true)?;
    collector.report_losses(&maps)?;
    for alert in collector.alerts.close_all() {
        collector.emit("alert", None, &Body::Alert(alert))?;
    }
    let counts = collector.reported_losses.clone();
    let stop = Stop {
        events: collector.counts.clone(),
        lost: LostTotals {
            total: counts.total(),
            counts,
        },
    };
    collector.emit("stop", None, &Body::Stop(stop))
}
