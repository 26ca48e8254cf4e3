//! The kernel side's counts of failing calls it did not report one by one
//! (modtrace-ebpf/src/aggregate.rs), read back as `summary` records once
//! their window has closed.
use std::collections::HashMap as StdHashMap;

use aya::maps::{HashMap, MapData, MapError};
use modtrace_common::{kind_name, AggregateCount, AggregateKey, EventHeader, KIND_MODULE_REQUEST};

use super::capture::c_name;
use crate::{
    clock::Clock,
    record::{fields, EventCounts, Summary, SummaryProcess},
};

/// A window is read once the next one has closed too: a program that took
/// its window's number just before the boundary has long finished by then.
const GRACE_WINDOWS: u64 = 1;

pub struct Summaries {
    map: HashMap<MapData, AggregateKey, AggregateCount>,
    window_ns: u64,
    /// Seq of each failing record reported in full, by the key its repeats
    /// are counted under, until its window is read.
    reported: StdHashMap<AggregateKey, u64>,
    /// What the summaries so far have counted, for `stop`.
    pub totals: EventCounts,
}

impl Summaries {
    /// `window_ns` 0: aggregation is off, and the map stays empty.
    pub fn new(map: HashMap<MapData, AggregateKey, AggregateCount>, window_ns: u64) -> Self {
        Self {
            map,
            window_ns,
            reported: StdHashMap::new(),
            totals: EventCounts::default(),
        }
    }

    /// Notes a failing call (or request) reported in full as record `seq`,
    /// so that the summary of its repeats can name it.
    pub fn remember(&mut self, header: &EventHeader, tgid: u32, seq: u64) {
        if self.window_ns == 0 || header.digest == 0 {
            return;
        }
        let key = AggregateKey {
            tgid,
            kind: header.kind,
            _reserved: 0,
            ret: header.ret,
            // As the kernel side keys it: by the call's exit.
            window: header.exit_ns / self.window_ns,
            digest: header.digest,
        };
        self.reported.insert(key, seq);
    }

    /// Takes the counts of every window closed before `now_boot_ns` (of
    /// every window, with `None`: the programs are detached) out of the
    /// kernel's map, as summaries in the order of their first call.
    pub fn take_closed(
        &mut self,
        now_boot_ns: Option<u64>,
        clock: &Clock,
    ) -> Result<Vec<(u64, Summary)>, MapError> {
        if self.window_ns == 0 {
            return Ok(Vec::new());
        }
        let window_ns = self.window_ns;
        let closed = move |key: &AggregateKey| match now_boot_ns {
            None => true,
            Some(now) => key.window + 1 + GRACE_WINDOWS <= now / window_ns,
        };
        let keys: Vec<AggregateKey> = self
            .map
            .keys()
            .filter_map(Result::ok)
            .filter(closed)
            .collect();
        let mut summaries = Vec::new();
        for key in keys {
            let count = self.map.get(&key, 0)?;
            self.map.remove(&key)?;
            let repeats_of = self.reported.remove(&key);
            if count.elided > 0 {
                self.totals.add(key.kind, count.elided);
                summaries.push((count.last_ns, self.summary(&key, &count, repeats_of, clock)));
            }
        }
        self.reported.retain(|key, _| !closed(key));
        summaries.sort_by_key(|(last_ns, _)| *last_ns);
        Ok(summaries)
    }

    fn summary(
        &self,
        key: &AggregateKey,
        count: &AggregateCount,
        repeats_of: Option<u64>,
        clock: &Clock,
    ) -> Summary {
        Summary {
            syscall: kind_name(key.kind),
            process: SummaryProcess {
                pid: key.tgid,
                uid: count.uid,
                comm: c_name(&count.comm),
            },
            result: (key.kind != KIND_MODULE_REQUEST).then(|| fields::call_result(key.ret)),
            elided: if key.digest == 0 {
                "distinct"
            } else {
                "repeats"
            },
            count: count.elided,
            repeats_of,
            reported: count.reported,
            first: clock.rfc3339(Some(count.first_ns)),
            last: clock.rfc3339(Some(count.last_ns)),
            window_seconds: self.window_ns as f64 / 1e9,
        }
    }
}
