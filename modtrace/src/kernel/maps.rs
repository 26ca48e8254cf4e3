//! The maps userspace reads, taken out of the object so that they outlive the
//! programs: after detaching, the rings are still drained and the calls in
//! flight still reported.
use std::{
    collections::HashSet,
    os::fd::{AsRawFd, RawFd},
};

use aya::maps::{HashMap, MapData, PerCpuArray, RingBuf};
use modtrace_common::{
    DeleteModuleEvent, FinitModuleEvent, InitModuleEvent, KernelEvent, LOSS_ENTRY_MISSING,
    LOSS_PENDING_FULL, LOSS_REASONS, LOSS_RINGBUF_FULL,
};
use tokio::io::{
    unix::{AsyncFd, AsyncFdReadyGuard},
    Interest,
};

use crate::record::LossCounts;

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("the eBPF object lacks map {0}: it and the collector come from different builds")]
    Missing(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
}

/// Takes map `name` out of the object, as a `T`.
pub fn take_map<T>(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<T, MapsError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(MapsError::Missing(name))?;
    T::try_from(map).map_err(|source| MapsError::Map { name, source })
}

/// The three ring buffers (modtrace-ebpf/src/calls.rs says what each carries).
pub struct Rings {
    pub events: RingBuf<MapData>,
    pub loads: RingBuf<MapData>,
    pub notices: RingBuf<MapData>,
}

impl Rings {
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, MapsError> {
        Ok(Self {
            events: take_map(ebpf, "EVENTS")?,
            loads: take_map(ebpf, "LOADS")?,
            notices: take_map(ebpf, "NOTICES")?,
        })
    }
}

/// Epoll registrations of the rings' fds, apart from the rings themselves.
pub struct Wakers {
    fds: [AsyncFd<RawFd>; 3],
}

impl Wakers {
    pub fn new(rings: &Rings) -> std::io::Result<Self> {
        let register = |ring: &RingBuf<MapData>| {
            // SAFETY: the fd is the ring's, which the watch keeps open until
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
    pub async fn readable(&self) -> std::io::Result<AsyncFdReadyGuard<'_, RawFd>> {
        let [notices, loads, events] = &self.fds;
        tokio::select! {
            guard = notices.readable() => guard,
            guard = loads.readable() => guard,
            guard = events.readable() => guard,
        }
    }
}

/// The loss counters and the calls in flight.
pub struct Maps {
    losses: PerCpuArray<MapData, u64>,
    /// Calls of callers holding CAP_SYS_MODULE, then of the others.
    pending_init: [HashMap<MapData, u32, InitModuleEvent>; 2],
    pending_finit: [HashMap<MapData, u32, FinitModuleEvent>; 2],
    pending_delete: [HashMap<MapData, u32, DeleteModuleEvent>; 2],
    /// (tid, entry time) of privileged calls reported while still in their
    /// map, their exit having been skipped by the kernel: the kernel
    /// delivers each again at its thread's next call, or the reaper takes
    /// it when the thread dies, and that repeat is dropped.
    reported_in_map: HashSet<(u32, u64)>,
    /// Calls seen past their exit once, reported if seen so again.
    seen_past_exit: HashSet<(u32, u64)>,
}

impl Maps {
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, MapsError> {
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
            reported_in_map: HashSet::new(),
            seen_past_exit: HashSet::new(),
        })
    }

    /// Whether thread `tid`'s load call that entered at `enter_ns` is still
    /// in the kernel (its entry record is pending).
    /// Only privileged callers' loads send the notice this answers.
    pub fn in_call(&self, tid: u32, enter_ns: u64) -> bool {
        let init = self.pending_init[0].get(&tid, 0).map(|e| e.header.enter_ns);
        let finit = self.pending_finit[0]
            .get(&tid, 0)
            .map(|e| e.header.enter_ns);
        init.ok() == Some(enter_ns) || finit.ok() == Some(enter_ns)
    }

    /// Per-reason totals of the kernel's loss counters, summed over CPUs.
    pub fn losses(&self) -> Result<LossCounts, MapsError> {
        let mut totals = [0u64; LOSS_REASONS as usize];
        for (reason, total) in (0u32..).zip(totals.iter_mut()) {
            let per_cpu = self
                .losses
                .get(&reason, 0)
                .map_err(|source| MapsError::Map {
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

    /// Removes the pending calls that `finished` selects and returns them.
    /// Removing before reporting means a record is reported once even if
    /// the exit probe races us (it then finds no entry and counts a loss).
    pub fn take_pending(&mut self, finished: impl Fn(&KernelEvent) -> bool) -> Vec<KernelEvent> {
        let mut taken = self.remove_pending(finished);
        taken.retain(|event| !self.is_repeat(event));
        taken
    }

    /// The privileged calls that `skipped` selects at two calls in a row,
    /// at most `budget` of them, left in their maps and remembered, so that
    /// each is reported once. Only privileged calls: the kernel then
    /// delivers a repeat on the loads ring, which no flood can fill, so the
    /// repeat is never counted as lost. An unprivileged call stays for the
    /// kernel or the reaper to deliver.
    pub fn report_in_map(
        &mut self,
        budget: u64,
        skipped: impl Fn(&KernelEvent) -> bool,
    ) -> Vec<KernelEvent> {
        if budget == 0 {
            self.seen_past_exit.clear();
            return Vec::new();
        }
        let mut found: Vec<KernelEvent> = Vec::new();
        found.extend(values_of(&self.pending_init[0], |e| {
            KernelEvent::InitModule(Box::new(e))
        }));
        found.extend(values_of(&self.pending_finit[0], |e| {
            KernelEvent::FinitModule(Box::new(e))
        }));
        found.extend(values_of(&self.pending_delete[0], |e| {
            KernelEvent::DeleteModule(Box::new(e))
        }));
        found.retain(|event| !self.reported_in_map.contains(&call_key(event)) && skipped(event));
        let seen_before = std::mem::take(&mut self.seen_past_exit);
        self.seen_past_exit = found.iter().map(call_key).collect();
        found.retain(|event| seen_before.contains(&call_key(event)));
        found.sort_by_key(|event| event.header().enter_ns);
        found.truncate(usize::try_from(budget).unwrap_or(usize::MAX));
        for event in &found {
            self.seen_past_exit.remove(&call_key(event));
            self.reported_in_map.insert(call_key(event));
        }
        found
    }

    /// Whether `event`, read from a ring, is a call already reported from
    /// its map (see `report_in_map`); forgets it then.
    pub fn is_repeat(&mut self, event: &KernelEvent) -> bool {
        event.header().exit_ns == 0 && self.reported_in_map.remove(&call_key(event))
    }

    fn remove_pending(&mut self, finished: impl Fn(&KernelEvent) -> bool) -> Vec<KernelEvent> {
        let mut taken = Vec::new();
        for map in &mut self.pending_init {
            taken.extend(take_from(
                map,
                |e| KernelEvent::InitModule(Box::new(e)),
                &finished,
            ));
        }
        for map in &mut self.pending_finit {
            taken.extend(take_from(
                map,
                |e| KernelEvent::FinitModule(Box::new(e)),
                &finished,
            ));
        }
        for map in &mut self.pending_delete {
            taken.extend(take_from(
                map,
                |e| KernelEvent::DeleteModule(Box::new(e)),
                &finished,
            ));
        }
        taken
    }
}

fn call_key(event: &KernelEvent) -> (u32, u64) {
    (event.task().tid, event.header().enter_ns)
}

fn values_of<'m, V: aya::Pod>(
    map: &'m HashMap<MapData, u32, V>,
    wrap: impl Fn(V) -> KernelEvent + 'm,
) -> impl Iterator<Item = KernelEvent> + 'm {
    map.iter()
        .filter_map(Result::ok)
        .map(move |(_, value)| wrap(value))
}

/// The calls of `map` that `finished` selects, removed. The map's key is
/// the thread the call's task record names.
fn take_from<V: aya::Pod>(
    map: &mut HashMap<MapData, u32, V>,
    wrap: impl Fn(V) -> KernelEvent,
    finished: &impl Fn(&KernelEvent) -> bool,
) -> Vec<KernelEvent> {
    let selected: Vec<KernelEvent> = values_of(map, wrap).filter(finished).collect();
    selected
        .into_iter()
        .filter(|event| map.remove(&event.task().tid).is_ok())
        .collect()
}
