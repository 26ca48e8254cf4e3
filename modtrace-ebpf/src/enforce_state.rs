//! What the enforcement object keeps for userspace across collectors
//! (modtrace-common/src/pinned.rs): the programs read only the active
//! generation; the other maps are pinned with them and only userspace reads
//! and writes them.
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap},
};
use modtrace_common::{
    enforce::DENY_CLAUSE_CAP,
    pinned::{
        CollectorInfo, Generation, PinInfo, RuleId, ALLOW_CAP, DENY_GENERATIONS, LOCK_KEEP_CAP,
        RULE_SLOTS,
    },
    KERNEL_MODULE_NAME_LEN,
};

type Name = [u8; KERNEL_MODULE_NAME_LEN];

/// The generation of the deny tables in force: one u32, which userspace
/// switches in one write once the other generation is filled.
#[map]
static ACTIVE_GENERATION: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static PIN_INFO: Array<PinInfo> = Array::with_max_entries(1, 0);
#[map]
static GENERATIONS: Array<Generation> = Array::with_max_entries(DENY_GENERATIONS, 0);
#[map]
static RULE_IDS: Array<RuleId> = Array::with_max_entries(RULE_SLOTS, 0);
/// Denials of each rule slot a collector has reported, so that the next one
/// reports those made while none ran.
#[map]
static REPORTED: Array<u64> = Array::with_max_entries(RULE_SLOTS, 0);
#[map]
static COLLECTOR: Array<CollectorInfo> = Array::with_max_entries(1, 0);

/// The first `DENY_CLAUSES` slot of the generation in force.
#[inline(always)]
pub(crate) fn active_clause_base() -> u32 {
    let generation = ACTIVE_GENERATION.get(0).copied().unwrap_or(0);
    // Masked rather than trusted, so the verifier sees the bound.
    (generation & (DENY_GENERATIONS - 1)) * DENY_CLAUSE_CAP
}
/// `enforce allow NAME --for D`: module name (folded, NUL-padded) → the
/// CLOCK_MONOTONIC ns (`bpf_ktime_get_ns`) until which it may load whatever
/// denies it; it expires here, with or without a collector.
#[map]
static ALLOWS: HashMap<Name, u64> = HashMap::with_max_entries(ALLOW_CAP, 0);
/// 1 once `enforce lock` (or `watch --lock-after-unit`) locked module
/// loading: then only names in `LOCK_KEEP` load.
#[map]
static LOCK: Array<u32> = Array::with_max_entries(1, 0);
/// BPF_F_NO_PREALLOC: filled once, at the lock, with the modules loaded then.
#[map]
static LOCK_KEEP: HashMap<Name, u8> = HashMap::with_max_entries(LOCK_KEEP_CAP, 1);

/// Whether `name` is allowed for now by `enforce allow`.
#[inline(always)]
pub(crate) fn allowed_for_now(name: &Name) -> bool {
    // SAFETY: the value is copied out at once.
    let until = unsafe { ALLOWS.get(name) }.copied();
    // SAFETY: a helper without arguments.
    until.is_some_and(|until| unsafe { bpf_ktime_get_ns() } < until)
}

/// Whether loading is locked and `name` (`None`: a load whose module name
/// is unknown) is not among the modules that may still load.
#[inline(always)]
pub(crate) fn locked_out(name: Option<&Name>) -> bool {
    if LOCK.get(0).copied().unwrap_or(0) == 0 {
        return false;
    }
    // SAFETY: the value is only tested for presence.
    name.is_none_or(|name| unsafe { LOCK_KEEP.get(name) }.is_none())
}
