//! Enforcement: BPF LSM programs that deny a module load before it happens.
//!
//! Each decides from what its hook hands it (the opened file, the image the
//! kernel copied, the request string) and from the tables userspace filled
//! from the policy's deny rules (`DENY_CLAUSES`, `DENY_NAMES`); nothing waits
//! for userspace. Every denial is counted per rule in `DENIALS`, which no
//! full ring can lose, and noted per thread in `LAST_DENIAL` for the call's
//! record. Loaded and attached only under `watch --enforce`.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    macros::{lsm, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::LsmContext,
};
use modtrace_common::{
    enforce::{
        Denial, DenyClause, DenyKey, EnforceConfig, DENIED_AT_LOAD_DATA, DENIED_AT_MODULE_REQUEST,
        DENIED_AT_POST_LOAD_DATA, DENIED_AT_READ_FILE, DENY_CLAUSE_CAP, DENY_FILE_NO,
        DENY_FILE_YES, DENY_HOOK_FINIT_MODULE, DENY_HOOK_INIT_MODULE, DENY_HOOK_REQUEST,
        DENY_KEY_MODULE, DENY_KEY_REQUEST, DENY_NAME_CAP,
    },
    pinned::{DENY_CLAUSE_SLOTS, LOCK_RULE_SLOT, RULE_SLOTS},
    KERNEL_MODULE_NAME_LEN,
};

use crate::{
    enforce_state::{active_clause_base, allowed_for_now, locked_out},
    kread::{read_at, read_ptr},
};

/// Rewritten by the loader (`.rodata`): the hook ids of this kernel, from BTF.
#[unsafe(no_mangle)]
pub(crate) static MODTRACE_ENFORCE: EnforceConfig = EnforceConfig::NONE;

#[map]
static DENY_CLAUSES: Array<DenyClause> = Array::with_max_entries(DENY_CLAUSE_SLOTS, 0);
/// BPF_F_NO_PREALLOC: the table is sized for large policies, most are small.
#[map]
static DENY_NAMES: HashMap<DenyKey, u8> = HashMap::with_max_entries(DENY_NAME_CAP, 1);
#[map]
static DENIALS: PerCpuArray<u64> = PerCpuArray::with_max_entries(RULE_SLOTS, 0);
#[map]
static LAST_DENIAL: LruHashMap<u32, Denial> = LruHashMap::with_max_entries(4096, 0);

const EPERM: i32 = 1;

type Name = [u8; KERNEL_MODULE_NAME_LEN];

macro_rules! enforce_config {
    ($field:ident) => {
        // SAFETY: the pointer is to a field of a live static; volatile so that
        // the loader's value is read, not the default folded in.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(MODTRACE_ENFORCE.$field)) }
    };
}

/// `security_kernel_read_file(file, id, contents)`: finit_module's read of
/// the file (`kernel_read_file_from_fd` → `kernel_read_file`, which has taken
/// `deny_write_access` on the file before calling the hook).
#[lsm(hook = "kernel_read_file")]
pub(crate) fn lsm_kernel_read_file(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(3);
    if earlier != 0 {
        return earlier;
    }
    let id: u32 = ctx.arg(1);
    if id != enforce_config!(reading_module) && id != enforce_config!(reading_module_compressed) {
        return 0;
    }
    let file: *const u8 = ctx.arg(0);
    let subject = Subject {
        hook: DENY_HOOK_FINIT_MODULE,
        kind: DENY_KEY_MODULE,
        name: module_name_of_file(file),
        memfd: is_memfd(file),
        unlinked: is_unlinked(file),
    };
    verdict(&subject, DENIED_AT_READ_FILE)
}

/// `security_kernel_load_data(id, contents)`: init_module, before the image
/// is copied. Decides the clauses that need no module name.
#[lsm(hook = "kernel_load_data")]
pub(crate) fn lsm_kernel_load_data(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(2);
    if earlier != 0 {
        return earlier;
    }
    let id: u32 = ctx.arg(0);
    if id != enforce_config!(loading_module) {
        return 0;
    }
    verdict(&Subject::image(None), DENIED_AT_LOAD_DATA)
}

/// `security_kernel_post_load_data(buf, size, id, description)`: init_module
/// once the kernel holds its own copy of the image, whose name the caller can
/// no longer change.
#[lsm(hook = "kernel_post_load_data")]
pub(crate) fn lsm_kernel_post_load_data(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(4);
    if earlier != 0 {
        return earlier;
    }
    let id: u32 = ctx.arg(2);
    if id != enforce_config!(loading_module) {
        return 0;
    }
    let image: *const u8 = ctx.arg(0);
    let size: u64 = ctx.arg(1);
    match image_module_name(image, size) {
        Some(name) => verdict(&Subject::image(Some(name)), DENIED_AT_POST_LOAD_DATA),
        None => 0,
    }
}

/// `security_kernel_module_request(kmod_name)`: an autoload, before the
/// kernel starts modprobe.
#[lsm(hook = "kernel_module_request")]
pub(crate) fn lsm_kernel_module_request(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(1);
    if earlier != 0 {
        return earlier;
    }
    let request: *const u8 = ctx.arg(0);
    let mut name: Name = [0; KERNEL_MODULE_NAME_LEN];
    // SAFETY: the helper bounds the copy to the buffer and reports faults.
    if unsafe { bpf_probe_read_kernel_str_bytes(request, &mut name) }.is_err() {
        return 0;
    }
    fold(&mut name);
    let subject = Subject {
        hook: DENY_HOOK_REQUEST,
        kind: DENY_KEY_REQUEST,
        name: Some(name),
        memfd: false,
        unlinked: false,
    };
    verdict(&subject, DENIED_AT_MODULE_REQUEST)
}

/// What a hook knows about the load.
struct Subject {
    hook: u32,
    kind: u32,
    name: Option<Name>,
    memfd: bool,
    unlinked: bool,
}

impl Subject {
    fn image(name: Option<Name>) -> Self {
        Self {
            hook: DENY_HOOK_INIT_MODULE,
            kind: DENY_KEY_MODULE,
            name,
            memfd: false,
            unlinked: false,
        }
    }
}

#[inline(always)]
fn verdict(subject: &Subject, at: u32) -> i32 {
    let Some(rule) = denying_rule(subject).or_else(|| lock_rule(subject, at)) else {
        return 0;
    };
    if subject.name.as_ref().is_some_and(allowed_for_now) {
        return 0;
    }
    if let Some(count) = DENIALS.get_ptr_mut(rule) {
        // SAFETY: per-CPU slot, not shared with another CPU.
        unsafe { *count += 1 };
    }
    // For the syscall's record; a request has none (the kernel's
    // module_request tracepoint comes after this hook).
    if at != DENIED_AT_MODULE_REQUEST {
        let tid = bpf_get_current_pid_tgid() as u32;
        let _ = LAST_DENIAL.insert(tid, Denial { rule, hook: at }, 0);
    }
    -EPERM
}

/// The lock's slot when loading is locked and this load is not of a module
/// that may still load. Not at `kernel_load_data`, which has no name yet
/// (`kernel_post_load_data` decides), nor for requests (the load modprobe
/// then makes is decided).
#[inline(always)]
fn lock_rule(subject: &Subject, at: u32) -> Option<u32> {
    let decidable = subject.kind == DENY_KEY_MODULE && at != DENIED_AT_LOAD_DATA;
    (decidable && locked_out(subject.name.as_ref())).then_some(LOCK_RULE_SLOT)
}

/// The rule of the first clause of the generation in force that holds for
/// `subject`; clause and rule slots are the generation's own, as userspace
/// wrote them.
#[inline(always)]
fn denying_rule(subject: &Subject) -> Option<u32> {
    let base = active_clause_base();
    for offset in 0..DENY_CLAUSE_CAP {
        let index = base + offset;
        let clause = DENY_CLAUSES.get(index)?;
        if clause.hooks & subject.hook == 0
            || !file_matches(clause.memfd, subject.memfd)
            || !file_matches(clause.unlinked, subject.unlinked)
        {
            continue;
        }
        let needs_name = if subject.kind == DENY_KEY_MODULE {
            clause.match_module
        } else {
            clause.match_request
        };
        if needs_name != 0 {
            let Some(name) = subject.name else {
                continue;
            };
            let key = DenyKey {
                clause: index,
                kind: subject.kind,
                name,
            };
            // SAFETY: the value is only tested for presence.
            if unsafe { DENY_NAMES.get(key) }.is_none() {
                continue;
            }
        }
        return Some(clause.rule);
    }
    None
}

#[inline(always)]
fn file_matches(wanted: u32, actual: bool) -> bool {
    match wanted {
        DENY_FILE_YES => actual,
        DENY_FILE_NO => !actual,
        _ => true,
    }
}

/// `-` and `_` are one character in module names, as the kernel and kmod
/// treat them.
#[inline(always)]
fn fold(name: &mut Name) {
    for byte in name.iter_mut() {
        if *byte == b'-' {
            *byte = b'_';
        }
    }
}

/// Zeroes everything from the first NUL on (and the last byte, which the
/// kernel's own name always has), as the keys userspace writes are padded.
#[inline(always)]
fn terminate(name: &mut Name) {
    name[KERNEL_MODULE_NAME_LEN - 1] = 0;
    let mut ended = false;
    for byte in name.iter_mut() {
        ended |= *byte == 0;
        if ended {
            *byte = 0;
        }
    }
}

/// The basename of `file` without `.ko[.xz|.zst|.gz]`, folded; `None` for a
/// file not named like a module (userspace names it the same way).
#[inline(always)]
fn module_name_of_file(file: *const u8) -> Option<Name> {
    let f_path = config!(offsets.file_f_path);
    let dentry = read_ptr(file, f_path.wrapping_add(config!(offsets.path_dentry)))?;
    let d_name = config!(offsets.dentry_d_name);
    let text = read_ptr(dentry, d_name.wrapping_add(config!(offsets.qstr_name)))?;
    // A module name (< 56 bytes) and its longest suffix fit.
    let mut base = [0u8; 64];
    // SAFETY: the helper bounds the copy to the buffer and reports faults.
    unsafe { bpf_probe_read_kernel_str_bytes(text, &mut base) }.ok()?;
    let dot = base.iter().position(|&b| b == b'.' || b == 0)?;
    if dot == 0 || dot >= KERNEL_MODULE_NAME_LEN || !module_suffix_at(&base, dot) {
        return None;
    }
    let mut name: Name = [0; KERNEL_MODULE_NAME_LEN];
    for (i, byte) in name.iter_mut().enumerate() {
        if i >= dot {
            break;
        }
        *byte = base[i];
    }
    fold(&mut name);
    Some(name)
}

/// Whether `base` from `dot` on is `.ko`, `.ko.xz`, `.ko.zst` or `.ko.gz`
/// and its NUL.
#[inline(always)]
fn module_suffix_at(base: &[u8; 64], dot: usize) -> bool {
    const SUFFIXES: [&[u8]; 4] = [b".ko\0", b".ko.xz\0", b".ko.zst\0", b".ko.gz\0"];
    SUFFIXES.iter().any(|suffix| {
        suffix
            .iter()
            .enumerate()
            .all(|(i, &want)| base.get(dot + i) == Some(&want))
    })
}

/// A memfd: a pseudo file (its dentry is its own parent without being its
/// mount's root) named `memfd:…`, as userspace tells them (enrich/build.rs).
#[inline(always)]
fn is_memfd(file: *const u8) -> bool {
    let f_path = config!(offsets.file_f_path);
    let (Some(dentry), Some(vfsmount)) = (
        read_ptr(file, f_path.wrapping_add(config!(offsets.path_dentry))),
        read_ptr(file, f_path.wrapping_add(config!(offsets.path_mnt))),
    ) else {
        return false;
    };
    let pseudo = read_ptr(dentry, config!(offsets.dentry_d_parent)) == Some(dentry)
        && read_ptr(vfsmount, config!(offsets.vfsmount_mnt_root)) != Some(dentry);
    let d_name = config!(offsets.dentry_d_name);
    let Some(text) = read_ptr(dentry, d_name.wrapping_add(config!(offsets.qstr_name))) else {
        return false;
    };
    let mut prefix = [0u8; 7];
    // SAFETY: the helper bounds the copy to the buffer and reports faults.
    let named = unsafe { bpf_probe_read_kernel_str_bytes(text, &mut prefix) }
        .is_ok_and(|read| read == b"memfd:");
    pseudo && named
}

#[inline(always)]
fn is_unlinked(file: *const u8) -> bool {
    read_ptr(file, config!(offsets.file_f_inode))
        .and_then(|inode| read_at::<u32>(inode, config!(offsets.inode_i_nlink)))
        == Some(0)
}

/// Sections looked at for `.gnu.linkonce.this_module` (Debian's modules
/// have fewer than 100).
const MAX_SECTIONS: u32 = 256;
/// `.gnu.linkonce.this_module\0`, as the words it is compared in.
const THIS_MODULE: (u64, u64, u64, u16) = (
    u64::from_le_bytes(*b".gnu.lin"),
    u64::from_le_bytes(*b"konce.th"),
    u64::from_le_bytes(*b"is_modul"),
    u16::from_le_bytes(*b"e\0"),
);

/// The name in the image's `struct module` (`.gnu.linkonce.this_module`),
/// which the kernel registers the module under; read at `struct module`'s
/// `name` offset from BTF. `None` for anything that is not a well-formed
/// ELF64 image of this kernel's modules.
#[inline(always)]
fn image_module_name(image: *const u8, size: u64) -> Option<Name> {
    let at = |offset: u64| image.wrapping_add(offset as usize);
    // SAFETY (every read below): bpf_probe_read_kernel tolerates any address
    // and reports faults; offsets are checked against the image's size.
    let read =
        |offset: u64, len: u64| -> bool { offset.checked_add(len).is_some_and(|e| e <= size) };
    if !read(0, 64) {
        return None;
    }
    let shoff: u64 = unsafe { bpf_probe_read_kernel(at(0x28) as *const u64) }.ok()?;
    let shentsize: u16 = unsafe { bpf_probe_read_kernel(at(0x3a) as *const u16) }.ok()?;
    let shnum: u16 = unsafe { bpf_probe_read_kernel(at(0x3c) as *const u16) }.ok()?;
    let shstrndx: u16 = unsafe { bpf_probe_read_kernel(at(0x3e) as *const u16) }.ok()?;
    if shentsize != 64 || !read(shoff, u64::from(shnum) * 64) || shstrndx >= shnum {
        return None;
    }
    let strtab_header = shoff + u64::from(shstrndx) * 64;
    let strtab: u64 =
        unsafe { bpf_probe_read_kernel(at(strtab_header + 0x18) as *const u64) }.ok()?;
    for index in 0..MAX_SECTIONS {
        if index >= u32::from(shnum) {
            return None;
        }
        let header = shoff + u64::from(index) * 64;
        let name_at: u32 = unsafe { bpf_probe_read_kernel(at(header) as *const u32) }.ok()?;
        let name = strtab.wrapping_add(u64::from(name_at));
        if !read(name, 26) {
            continue;
        }
        let words = unsafe {
            (
                bpf_probe_read_kernel(at(name) as *const u64).ok()?,
                bpf_probe_read_kernel(at(name + 8) as *const u64).ok()?,
                bpf_probe_read_kernel(at(name + 16) as *const u64).ok()?,
                bpf_probe_read_kernel(at(name + 24) as *const u16).ok()?,
            )
        };
        if words != THIS_MODULE {
            continue;
        }
        let section: u64 =
            unsafe { bpf_probe_read_kernel(at(header + 0x18) as *const u64) }.ok()?;
        let name_offset = config!(offsets.module_name);
        if name_offset == modtrace_common::OFFSET_NONE {
            return None;
        }
        let field = section.wrapping_add(u64::from(name_offset));
        if !read(field, KERNEL_MODULE_NAME_LEN as u64) {
            return None;
        }
        let mut name: Name = unsafe { bpf_probe_read_kernel(at(field) as *const Name) }.ok()?;
        terminate(&mut name);
        fold(&mut name);
        return Some(name);
    }
    None
}
