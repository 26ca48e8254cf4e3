//! The state enforcement keeps pinned beside its programs, so that it
//! outlives the collector (modtrace/src/kernel/pinned.rs): two generations of
//! deny tables, the index of the one the programs read, what each generation
//! was made from, and which denials a collector has reported. The LSM
//! programs read only the active generation's index; the rest is for
//! userspace, across collectors.
use core::mem::{offset_of, size_of};

use crate::enforce::{DENY_CLAUSE_CAP, DENY_RULE_CAP};

/// Deny tables held at once: the one in force and the one a new policy is
/// written into before it is switched to, so that the switch is one write
/// and nothing is unenforced meanwhile.
pub const DENY_GENERATIONS: u32 = 2;
/// Slots of `DENY_CLAUSES` (generation `g` owns `g * DENY_CLAUSE_CAP ..`).
pub const DENY_CLAUSE_SLOTS: u32 = DENY_CLAUSE_CAP * DENY_GENERATIONS;
/// Slots of `DENIALS`, `RULE_IDS` and `REPORTED` (generation `g` owns
/// `g * DENY_RULE_CAP ..`).
pub const DENY_RULE_SLOTS: u32 = DENY_RULE_CAP * DENY_GENERATIONS;

/// The `DENIALS`, `RULE_IDS` and `REPORTED` slot of the lock after boot
/// (`LOCK`), past both generations': it outlives a policy's switch.
pub const LOCK_RULE_SLOT: u32 = DENY_RULE_SLOTS;
/// The rule id denials of the lock are reported under.
pub const LOCK_RULE_ID: &str = "lock-after-boot";
/// Slots of `DENIALS`, `RULE_IDS` and `REPORTED`: the generations' and the
/// lock's.
pub const RULE_SLOTS: u32 = DENY_RULE_SLOTS + 1;
/// Entries of `ALLOWS`: module names allowed for a while (`enforce allow`).
pub const ALLOW_CAP: u32 = 256;
/// Entries of `LOCK_KEEP`: module names that may still load once locked.
pub const LOCK_KEEP_CAP: u32 = 8192;

/// Bytes of a rule id kept in the kernel.
pub const RULE_ID_CAP: usize = 128;
/// Bytes of a policy source kept in the kernel.
pub const POLICY_SOURCE_CAP: usize = 256;

/// Value of `PIN_INFO` (one entry): what the pinned programs are.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinInfo {
    /// `ENFORCE_ABI_VERSION` of the object that made the pins.
    pub abi_version: u32,
    /// 1 once the programs are attached and pinned.
    pub pinned: u32,
    /// When they were first pinned: seconds since the epoch (CLOCK_REALTIME).
    pub pinned_unix_s: u64,
    /// sha256 of the BPF object: a collector with another object replaces
    /// the programs rather than adopting them.
    pub object_sha256: [u8; 32],
}

/// Value of `GENERATIONS`, one per generation: the policy its tables were
/// compiled from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation {
    /// When it became active: seconds since the epoch.
    pub active_since_unix_s: u64,
    /// Its deny rules: `RULE_IDS[g * DENY_RULE_CAP ..][..rules]`.
    pub rules: u32,
    /// Bytes of the policy's source name; more than `POLICY_SOURCE_CAP`
    /// when `source` holds only its start.
    pub source_len: u32,
    /// sha256 of the policy text.
    pub policy_sha256: [u8; 32],
    /// The policy file, or `default`.
    pub source: [u8; POLICY_SOURCE_CAP],
}

/// Value of `RULE_IDS`: one deny rule's id, NUL-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleId {
    pub id: [u8; RULE_ID_CAP],
}

/// Value of `COLLECTOR` (one entry): the collector that reports the
/// denials, 0 when none has said so.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CollectorInfo {
    pub pid: u32,
    pub _reserved: u32,
    /// Its start time, in clock ticks after boot (/proc/PID/stat field 22),
    /// so that a reused pid is not taken for it.
    pub start_ticks: u64,
}

// SAFETY (all four): repr(C) plain old data whose every bit pattern is valid
// and which has no implicit padding (see the layout pins below).
#[cfg(feature = "user")]
unsafe impl aya::Pod for PinInfo {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Generation {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for RuleId {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for CollectorInfo {}

const _: () = {
    assert!(size_of::<PinInfo>() == 48);
    assert!(offset_of!(PinInfo, object_sha256) == 16);
    assert!(size_of::<Generation>() == 16 + 32 + POLICY_SOURCE_CAP);
    assert!(offset_of!(Generation, source) == 48);
    assert!(size_of::<RuleId>() == RULE_ID_CAP);
    assert!(size_of::<CollectorInfo>() == 16);
};
