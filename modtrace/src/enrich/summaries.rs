//! The kernel side's counts of failing calls it did not report one by one
//! (modtrace-ebpf/src/aggregate.rs), read back as `summary` records once
//! their window has closed.
use aya::maps::{HashMap, MapData, MapError};
use modtrace_common::{
    kind_name, AggregateCount, AggregateKey, EventHeader, KIND_MODULE_REQUEST, RET_UNSEEN,
};

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
    reported: foldhash::HashMap<AggregateKey, u64>,
    /// What the summaries so far have counted, for `stop`.
    pub totals: EventCounts,
}

impl Summaries {
    /// `window_ns` 0: aggregation is off, and the map stays empty.
    pub fn new(map: HashMap<MapData, AggregateKey, AggregateCount>, window_ns: u64) -> Self {
        Self {
            map,
            window_ns,
            reported: foldhash::HashMap::default(),
            totals: EventCounts::default(),
        }
    }

    /// Notes a failing call (or request) reported in full as record `seq`,
    /// so that the summary of its repeats can name it.
    pub fn remember(&mut self, header: &EventHeader, tgid: u32, seq: u64) {
        if self.window_ns == 0 || header.digest == 0 {
            return;
        }
        self.reported
            .insert(repeats_key(header, tgid, self.window_ns), seq);
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
            result: (key.kind != KIND_MODULE_REQUEST && key.ret != RET_UNSEEN)
                .then(|| fields::call_result(key.ret)),
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

/// The key the kernel side counts the repeats of a call reported in full
/// under: by the call's exit, or, for a call whose exit it skipped, under
/// `RET_UNSEEN` by its entry (modtrace-ebpf/src/calls.rs).
fn repeats_key(header: &EventHeader, tgid: u32, window_ns: u64) -> AggregateKey {
    let (ret, at_ns) = match header.exit_ns {
        0 => (RET_UNSEEN, header.enter_ns),
        exit_ns => (header.ret, exit_ns),
    };
    AggregateKey {
        tgid,
        kind: header.kind,
        _reserved: 0,
        ret,
        window: at_ns / window_ns,
        digest: header.digest,
    }
}

#[cfg(test)]
mod tests {
    use modtrace_common::{ABI_VERSION, KIND_DELETE_MODULE};

    use super::*;

    fn header(enter_ns: u64, exit_ns: u64, ret: i64) -> EventHeader {
        EventHeader {
            kind: KIND_DELETE_MODULE,
            abi_version: ABI_VERSION,
            size: 0,
            enter_ns,
            exit_ns,
            ret,
            digest: 7,
        }
    }

    #[test]
    fn a_finished_call_is_keyed_by_its_result_in_the_window_of_its_exit() {
        let key = repeats_key(&header(9_000, 21_000, -2), 42, 10_000);
        assert_eq!((key.tgid, key.ret, key.window, key.digest), (42, -2, 2, 7));
    }

    #[test]
    fn a_call_whose_exit_was_skipped_is_keyed_apart_in_the_window_of_its_entry() {
        let key = repeats_key(&header(9_000, 0, 0), 42, 10_000);
        assert_eq!((key.ret, key.window), (RET_UNSEEN, 0));
    }
}
