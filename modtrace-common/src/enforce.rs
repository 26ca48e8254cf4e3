//! The ABI of enforcement: the maps userspace fills from the policy's deny
//! rules and the LSM programs read (modtrace-ebpf/src/enforce.rs), and the
//! settings the loader passes to those programs. Kept apart from the tracing
//! ABI and versioned on its own.
use core::mem::{offset_of, size_of};

use crate::KERNEL_MODULE_NAME_LEN;

/// Bumped whenever a type below, or the layout of the maps holding them,
/// changes shape. 2: the deny tables are held twice, one generation each
/// (pinned.rs), and the object is pinned with its state beside it.
pub const ENFORCE_ABI_VERSION: u16 = 2;

/// Deny clauses the kernel checks (a deny rule compiles to one or more: one
/// per alternative of its `any`s).
pub const DENY_CLAUSE_CAP: u32 = 64;
/// Deny rules with a denial counter of their own.
pub const DENY_RULE_CAP: u32 = 64;
/// Entries of `DENY_NAMES`: module names and request strings of all clauses.
pub const DENY_NAME_CAP: u32 = 16384;

/// Hooks a clause applies to (`DenyClause::hooks`).
/// `init_module`: `kernel_load_data` (LOADING_MODULE), and
/// `kernel_post_load_data` when the clause needs the image's module name.
pub const DENY_HOOK_INIT_MODULE: u32 = 1 << 0;
/// `finit_module`: `kernel_read_file` (READING_MODULE[_COMPRESSED]).
pub const DENY_HOOK_FINIT_MODULE: u32 = 1 << 1;
/// An autoload: `kernel_module_request`.
pub const DENY_HOOK_REQUEST: u32 = 1 << 2;

/// `DenyClause::memfd` / `unlinked`: the file property may be either, must
/// hold, or must not.
pub const DENY_FILE_ANY: u32 = 0;
pub const DENY_FILE_YES: u32 = 1;
pub const DENY_FILE_NO: u32 = 2;

/// `DenyKey::kind`: a module name (a finit file's basename without
/// `.ko[.xz|.zst|.gz]`, or an init_module image's own name), or a request
/// string. Both with `-` folded to `_`.
pub const DENY_KEY_MODULE: u32 = 0;
pub const DENY_KEY_REQUEST: u32 = 1;

/// `Denial::hook`, and the `enforcement.hook` userspace names after it.
pub const DENIED_AT_READ_FILE: u32 = 1;
pub const DENIED_AT_LOAD_DATA: u32 = 2;
pub const DENIED_AT_POST_LOAD_DATA: u32 = 3;
pub const DENIED_AT_MODULE_REQUEST: u32 = 4;

/// One conjunction of a deny rule, as the kernel checks it: every field that
/// is set must hold. A slot with `hooks` 0 is unused.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DenyClause {
    /// The rule's slot: its index in the rule table userspace keeps and in
    /// `DENIALS`.
    pub rule: u32,
    /// `DENY_HOOK_*` bits.
    pub hooks: u32,
    /// 1: a load's module name must be in `DENY_NAMES` under this clause
    /// and `DENY_KEY_MODULE`.
    pub match_module: u32,
    /// 1: a request must be in `DENY_NAMES` under this clause and
    /// `DENY_KEY_REQUEST`.
    pub match_request: u32,
    /// `DENY_FILE_*`: whether the finit file is a memfd.
    pub memfd: u32,
    /// `DENY_FILE_*`: whether the finit file has no link left.
    pub unlinked: u32,
}

/// Key of `DENY_NAMES`: a name one clause denies, NUL-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DenyKey {
    pub clause: u32,
    pub kind: u32,
    pub name: [u8; KERNEL_MODULE_NAME_LEN],
}

/// What the LSM programs learn from the running kernel's BTF: the values of
/// the enum constants they compare the hook's `id` with. `u32::MAX` marks a
/// constant this kernel lacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnforceConfig {
    /// `enum kernel_read_file_id`: READING_MODULE.
    pub reading_module: u32,
    /// READING_MODULE_COMPRESSED (newer kernels only).
    pub reading_module_compressed: u32,
    /// `enum kernel_load_data_id`: LOADING_MODULE.
    pub loading_module: u32,
    pub _reserved: u32,
}

impl EnforceConfig {
    /// Nothing known: the programs then deny nothing.
    pub const NONE: Self = Self {
        reading_module: u32::MAX,
        reading_module_compressed: u32::MAX,
        loading_module: u32::MAX,
        _reserved: 0,
    };
}

/// Value of `LAST_DENIAL`, keyed by thread id: the latest denial of the
/// thread's load, which userspace attaches to the call's record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Denial {
    pub rule: u32,
    /// `DENIED_AT_*`.
    pub hook: u32,
}

// SAFETY (all four): repr(C) plain old data whose every bit pattern is valid
// and which has no implicit padding (see the layout pins below).
#[cfg(feature = "user")]
unsafe impl aya::Pod for DenyClause {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for DenyKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for EnforceConfig {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Denial {}

const _: () = {
    assert!(size_of::<DenyClause>() == 24);
    assert!(offset_of!(DenyClause, unlinked) == 20);
    assert!(size_of::<DenyKey>() == 8 + KERNEL_MODULE_NAME_LEN);
    assert!(offset_of!(DenyKey, name) == 8);
    assert!(size_of::<EnforceConfig>() == 16);
    assert!(size_of::<Denial>() == 8);
};
