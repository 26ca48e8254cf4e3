//! Failing calls and autoload requests, which any local user can make at
//! hundreds of thousands a second, are counted here instead of each filling
//! the ring buffer. Per process, kind and result in a window: the first
//! `aggregate_threshold` calls of each distinct argument digest are reported
//! in full and the rest counted; at most `aggregate_budget` distinct digests
//! are reported, so varying the arguments only moves calls from one counter
//! to another. Every call is either reported or counted, never both, never
//! neither (a full map falls back to a full report).
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{bindings::BPF_NOEXIST, macros::map, maps::HashMap};
use modtrace_common::{AggregateCount, AggregateKey, TaskInfo, AGGREGATE_CAPACITY};

// A plain hash map, not LRU: an evicted counter would lose calls silently.
// Userspace deletes the entries of closed windows as it reports them.
#[map]
static AGGREGATES: HashMap<AggregateKey, AggregateCount> =
    HashMap::with_max_entries(AGGREGATE_CAPACITY, 0);

/// A captured string folded into `hash`: its length and the prefix
/// `digest_bytes` reads. Bytes past the length are stale scratch data, but
/// the same for the same thread repeating a call: at worst two equal calls
/// count as distinct. Never 0, which is the process's own entry.
#[inline(always)]
pub(crate) fn digest_str<const N: usize>(hash: u64, bytes: &[u8; N], len: u32) -> u64 {
    digest_bytes(digest_word(hash, u64::from(len)), bytes) | 1
}

/// FNV-1a over the first `WORDS` 8-byte words of `bytes`, folded into `hash`.
/// A bounded prefix keeps the cost per call fixed; an attacker who varies
/// only what lies beyond it makes repeats, which are counted all the same.
#[inline(always)]
fn digest_bytes<const N: usize>(mut hash: u64, bytes: &[u8; N]) -> u64 {
    const WORDS: usize = 32;
    let words = if N / 8 < WORDS { N / 8 } else { WORDS };
    let mut i = 0;
    while i < words {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
        hash = digest_word(hash, u64::from_ne_bytes(word));
        i += 1;
    }
    hash
}

#[inline(always)]
pub(crate) fn digest_word(hash: u64, word: u64) -> u64 {
    (hash ^ word).wrapping_mul(0x0100_0000_01b3)
}

pub(crate) const DIGEST_SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// An atomic add: the BPF target has no `AtomicU64::fetch_add` (it lacks
/// compare-and-swap), but it has the add itself, which is all a counter needs.
#[inline(always)]
fn add(counter: &mut u64, n: u64) {
    // SAFETY: the counter lives in a map value, which outlives this program
    // run and is only ever written atomically by the programs.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

/// The entry of `key`, created empty when absent; `None` when the map is full.
#[inline(always)]
fn entry(key: &AggregateKey, task: &TaskInfo, now: u64) -> Option<&'static mut AggregateCount> {
    if let Some(found) = AGGREGATES.get_ptr_mut(key) {
        // SAFETY: a map value; shared counters are updated through `add`.
        return Some(unsafe { &mut *found });
    }
    let fresh = AggregateCount {
        elided: 0,
        reported: 0,
        first_ns: now,
        last_ns: now,
        start_ns: task.start_ns,
        uid: task.uid,
        _reserved: 0,
        comm: task.comm,
    };
    // Another CPU may create it first; either way it exists afterwards.
    let _ = AGGREGATES.insert(key, fresh, u64::from(BPF_NOEXIST));
    // SAFETY: as above.
    AGGREGATES
        .get_ptr_mut(key)
        .map(|found| unsafe { &mut *found })
}

/// Whether a failing call (or a request) is to be reported in full; when
/// not, it has been counted. `digest` is never 0.
#[inline(always)]
pub(crate) fn report_in_full(kind: u16, ret: i64, digest: u64, task: &TaskInfo, now: u64) -> bool {
    let window_ns = config!(aggregate_window_ns);
    if window_ns == 0 {
        return true;
    }
    let mut key = AggregateKey {
        tgid: task.pid,
        kind,
        _reserved: 0,
        ret,
        window: now / window_ns,
        digest: 0,
    };
    let Some(process) = entry(&key, task, now) else {
        return true;
    };
    key.digest = digest;
    if let Some(same) = AGGREGATES.get_ptr_mut(key) {
        // SAFETY: a map value; shared counters are updated through `add`.
        let same = unsafe { &mut *same };
        if same.reported < u64::from(config!(aggregate_threshold)) {
            add(&mut same.reported, 1);
            return true;
        }
        add(&mut same.elided, 1);
        same.last_ns = now;
        return false;
    }
    if process.reported < u64::from(config!(aggregate_budget)) {
        add(&mut process.reported, 1);
        // Without its entry the next repeat looks new: reported or counted
        // against the budget, so still counted once.
        if let Some(same) = entry(&key, task, now) {
            add(&mut same.reported, 1);
        }
        return true;
    }
    add(&mut process.elided, 1);
    process.last_ns = now;
    false
}
