//! What the enforcement object keeps for userspace across collectors
//! (modtrace-common/src/pinned.rs): the programs read only the active
//! generation; the other maps are pinned with them and only userspace reads
//! and writes them.
use aya_ebpf::{macros::map, maps::Array};
use modtrace_common::{
    enforce::DENY_CLAUSE_CAP,
    pinned::{CollectorInfo, Generation, PinInfo, RuleId, DENY_GENERATIONS, DENY_RULE_SLOTS},
};

/// The generation of the deny tables in force: one u32, which userspace
/// switches in one write once the other generation is filled.
#[map]
static ACTIVE_GENERATION: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static PIN_INFO: Array<PinInfo> = Array::with_max_entries(1, 0);
#[map]
static GENERATIONS: Array<Generation> = Array::with_max_entries(DENY_GENERATIONS, 0);
#[map]
static RULE_IDS: Array<RuleId> = Array::with_max_entries(DENY_RULE_SLOTS, 0);
/// Denials of each rule slot a collector has reported, so that the next one
/// reports those made while none ran.
#[map]
static REPORTED: Array<u64> = Array::with_max_entries(DENY_RULE_SLOTS, 0);
#[map]
static COLLECTOR: Array<CollectorInfo> = Array::with_max_entries(1, 0);

/// The first `DENY_CLAUSES` slot of the generation in force.
#[inline(always)]
pub(crate) fn active_clause_base() -> u32 {
    let generation = ACTIVE_GENERATION.get(0).copied().unwrap_or(0);
    // Masked rather than trusted, so the verifier sees the bound.
    (generation & (DENY_GENERATIONS - 1)) * DENY_CLAUSE_CAP
}
