//! The kernel/user ABI of modtrace: every record the eBPF programs write and the
//! settings the loader passes to them. One definition, used by both sides.
//!
//! Rules: `#[repr(C)]`, fixed-width fields, no `bool`, no implicit padding. Layouts
//! are pinned by `const` assertions below, which compile on the BPF target and on
//! the host alike, so a change that moves a field breaks both builds at once.
#![no_std]

#[cfg(feature = "user")]
extern crate alloc;

pub mod enforce;
#[cfg(feature = "user")]
mod event;
pub mod pinned;
#[cfg(feature = "user")]
pub use event::KernelEvent;

use core::mem::{offset_of, size_of};

/// Bumped whenever any record below changes shape. Userspace refuses records of
/// another version instead of misreading them.
pub const ABI_VERSION: u16 = 7;

/// Record kinds. Values are never reused.
pub const KIND_INIT_MODULE: u16 = 1;
pub const KIND_FINIT_MODULE: u16 = 2;
pub const KIND_DELETE_MODULE: u16 = 3;
/// The kernel asked for a module by itself (request_module: autoload).
pub const KIND_MODULE_REQUEST: u16 = 4;
/// A load syscall has begun: userspace copies the image (or opens the fd)
/// while the call is in progress, before the caller can free or close it.
pub const KIND_LOAD_ENTRY: u16 = 5;

/// The traced module syscalls: the one definition the kernel side, the
/// loader, the decoder and the policy share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Syscall {
    InitModule,
    FinitModule,
    DeleteModule,
}

impl Syscall {
    pub const ALL: [Syscall; 3] = [
        Syscall::InitModule,
        Syscall::FinitModule,
        Syscall::DeleteModule,
    ];

    /// Its name in the kernel (`__x64_sys_NAME`, `sys_enter_NAME`) and as
    /// records name their kind.
    pub const fn name(self) -> &'static str {
        match self {
            Syscall::InitModule => "init_module",
            Syscall::FinitModule => "finit_module",
            Syscall::DeleteModule => "delete_module",
        }
    }

    /// Its number on x86_64 (arch/x86/entry/syscalls/syscall_64.tbl).
    #[cfg(target_arch = "x86_64")]
    pub const fn x86_64_nr(self) -> u32 {
        match self {
            Syscall::InitModule => 175,
            Syscall::FinitModule => 313,
            Syscall::DeleteModule => 176,
        }
    }

    /// The `EventHeader::kind` of its records.
    pub const fn kind(self) -> u16 {
        match self {
            Syscall::InitModule => KIND_INIT_MODULE,
            Syscall::FinitModule => KIND_FINIT_MODULE,
            Syscall::DeleteModule => KIND_DELETE_MODULE,
        }
    }

    pub fn from_kind(kind: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.kind() == kind)
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The record kind a syscall record's or request's `EventHeader::kind` has in
/// the output.
pub fn kind_name(kind: u16) -> &'static str {
    Syscall::from_kind(kind).map_or("request", Syscall::name)
}

/// Capacity of the module parameter string, including its NUL.
pub const PARAMS_CAP: usize = 4096;
/// Largest path the kernel reconstructs for a finit_module fd.
pub const PATH_CAP: usize = 4096;
/// Slack after `PATH_CAP` so that the last component copy stays in bounds for the
/// verifier (a component is at most `NAME_MAX` bytes).
pub const NAME_MAX: usize = 256;
pub const PATH_BUF: usize = PATH_CAP + NAME_MAX;
/// Capacity of the delete_module name (the kernel's MODULE_NAME_LEN is 56).
pub const MODULE_NAME_CAP: usize = 64;
/// `MODULE_NAME_LEN` on 64-bit kernels: the size of `struct module::name`.
pub const KERNEL_MODULE_NAME_LEN: usize = 56;
pub const COMM_LEN: usize = 16;
/// Largest number of path components walked before the path is marked truncated.
pub const PATH_MAX_COMPONENTS: u32 = 48;

/// State of a bounded string copied from user or kernel memory.
pub const STR_OK: u32 = 0;
/// The source was longer than the capacity; `bytes` holds its first part.
pub const STR_TRUNCATED: u32 = 1;
/// The source pointer could not be read (fault or unmapped).
pub const STR_UNREADABLE: u32 = 2;
/// The source pointer was NULL.
pub const STR_NULL: u32 = 3;
/// Nothing was captured (for example the fd did not name an open file).
pub const STR_ABSENT: u32 = 4;

/// A string with its length and how it was captured. `len` excludes any NUL.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BoundedStr<const N: usize> {
    pub len: u32,
    pub state: u32,
    pub bytes: [u8; N],
}

/// Bits of `TaskInfo::missing`: fields the kernel could not provide. Userspace
/// renders them as null instead of inventing a value.
pub const MISSING_EUID: u32 = 1 << 0;
pub const MISSING_AUID: u32 = 1 << 1;
pub const MISSING_SESSION: u32 = 1 << 2;
pub const MISSING_PARENT: u32 = 1 << 3;
pub const MISSING_MNT_NS: u32 = 1 << 4;
pub const MISSING_PID_NS: u32 = 1 << 5;

/// How many ancestors (parent, grandparent, …) each record carries.
pub const MAX_ANCESTORS: usize = 8;

/// One process up the caller's `real_parent` chain.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ancestor {
    pub pid: u32,
    pub uid: u32,
    pub comm: [u8; COMM_LEN],
    /// `task_struct.start_boottime`: with the pid, which process this is.
    pub start_ns: u64,
}

/// The calling task, captured in the kernel at syscall entry so that the record
/// stands even if the process is gone when userspace reads it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TaskInfo {
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub auid: u32,
    pub session: u32,
    pub cgroup_id: u64,
    pub missing: u32,
    /// Valid entries of `ancestors`, nearest first (the parent).
    pub ancestor_count: u32,
    pub comm: [u8; COMM_LEN],
    pub parent_comm: [u8; COMM_LEN],
    /// Inode numbers of the task's mount and pid namespaces, as
    /// `/proc/PID/ns/mnt` and `/proc/PID/ns/pid` show them.
    pub mnt_ns: u32,
    pub pid_ns: u32,
    /// `task_struct.start_boottime` (CLOCK_BOOTTIME), 0 when unknown.
    pub start_ns: u64,
    /// Taken at entry, so the chain stands even when the loader's parents
    /// have exited by the time userspace reads the record.
    pub ancestors: [Ancestor; MAX_ANCESTORS],
}

/// Common start of every record.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EventHeader {
    pub kind: u16,
    pub abi_version: u16,
    /// Size of the whole record in bytes, for a length check before decoding.
    pub size: u32,
    /// CLOCK_BOOTTIME at syscall entry and exit; `exit_ns == 0` means the call
    /// never reached the exit probe (its task died inside the syscall).
    pub enter_ns: u64,
    pub exit_ns: u64,
    /// The syscall's return value (valid when `exit_ns != 0`).
    pub ret: i64,
    /// A hash of the call's arguments (never 0 once set): with the caller,
    /// the syscall and the result, the key under which its repeats are
    /// counted in `AGGREGATES` instead of reported.
    pub digest: u64,
}

/// Capacity of `Invocation::argv`. A request name (`request_module`) is at
/// most `KERNEL_MODULE_NAME_LEN` bytes with its NUL, so the last bytes of any
/// command line hold its last argument whole when that names a request.
pub const ARGV_CAP: usize = 256;

/// Values of `Invocation::parent`. 0 is what an unset record holds.
pub const PARENT_UNKNOWN: u32 = 0;
/// The parent is a process: it has an address space.
pub const PARENT_PROCESS: u32 = 1;
/// The parent is a kernel thread (no `mm`): the caller was started by the
/// kernel's usermode helper, as the modprobe of `request_module` is.
pub const PARENT_KERNEL_THREAD: u32 = 2;

/// How a load's caller was started, captured at the call's entry: what ties
/// a load by the kernel's own modprobe (`modprobe -q -- NAME`) to the request
/// for NAME, even when modprobe has exited before userspace reads the record.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Invocation {
    /// `PARENT_*`.
    pub parent: u32,
    pub _reserved: u32,
    /// The caller's command line as its memory holds it (`mm->arg_start` to
    /// `arg_end`, each argument ended by its NUL): all of it (`STR_OK`), or
    /// when longer its last `ARGV_CAP` bytes (`STR_TRUNCATED`).
    pub argv: BoundedStr<ARGV_CAP>,
}

/// The module as the kernel registered it, from the `module_load` tracepoint,
/// which fires inside the loading syscall.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LoadedModule {
    /// 1 once `module_load` fired for this call; 0 (a failed load, or no
    /// module tracepoints on this kernel) leaves the other fields unset.
    pub seen: u32,
    /// 1 once `module_free` fired inside this call: the module's init
    /// failed and the kernel freed it again.
    pub freed: u32,
    /// `struct module::taints`: bit N is the kernel's taint flag N.
    pub taints: u64,
    pub name: [u8; KERNEL_MODULE_NAME_LEN],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct InitModuleEvent {
    pub header: EventHeader,
    pub task: TaskInfo,
    pub image_addr: u64,
    pub image_len: u64,
    /// Kept so that a string unreadable at entry (its page not resident, which
    /// a BPF program cannot fault in) is read again at exit, after the kernel's
    /// own copy has brought it in.
    pub params_addr: u64,
    pub module: LoadedModule,
    pub params: BoundedStr<PARAMS_CAP>,
    pub invocation: Invocation,
}

/// Bits of `FinitModuleEvent::file_flags`.
pub const FILE_RESOLVED: u32 = 1 << 0;
/// The fd was negative, out of range or not open.
pub const FILE_BAD_FD: u32 = 1 << 1;
/// The inode had no links left (memfd, or a file deleted after open).
pub const FILE_UNLINKED: u32 = 1 << 2;
/// The walk reached a mount whose parent is itself without reaching the
/// namespace root: an internal mount such as memfd's or an anonymous one.
pub const FILE_INTERNAL_MOUNT: u32 = 1 << 3;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct FinitModuleEvent {
    pub header: EventHeader,
    pub task: TaskInfo,
    pub fd: i32,
    pub flags: u32,
    pub ino: u64,
    pub file_flags: u32,
    pub _reserved: u32,
    pub params_addr: u64,
    pub module: LoadedModule,
    pub params: BoundedStr<PARAMS_CAP>,
    /// Path components from the leaf up to the root, each ended by its NUL
    /// (`sctp.ko\0sctp\0net\0…`), reversed by userspace. Leaf-first copies
    /// at increasing offsets, and the helper's own NUL as separator, keep
    /// every write bounded for the verifier.
    pub path: BoundedStr<PATH_BUF>,
    pub invocation: Invocation,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct DeleteModuleEvent {
    pub header: EventHeader,
    pub task: TaskInfo,
    pub flags: u32,
    /// 1 when the `module_free` tracepoint fired inside this call: the module
    /// really left the kernel.
    pub freed: u32,
    pub name_addr: u64,
    pub name: BoundedStr<MODULE_NAME_CAP>,
}

/// A `request_module` call (the kernel will run modprobe for `name`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleRequestEvent {
    pub header: EventHeader,
    pub task: TaskInfo,
    /// Whether the requester waits for modprobe to finish.
    pub wait: u32,
    pub _reserved: u32,
    pub name: BoundedStr<MODULE_NAME_CAP>,
}

/// Sent at the entry of init_module and finit_module, ahead of the full
/// record (which needs the exit). Not a record of its own: a notice that is
/// not delivered only costs the early copy of the image.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LoadEntryEvent {
    pub header: EventHeader,
    pub pid: u32,
    pub tid: u32,
    /// `KIND_INIT_MODULE` or `KIND_FINIT_MODULE`.
    pub syscall: u32,
    pub fd: i32,
    pub image_addr: u64,
    pub image_len: u64,
}

/// The last executable a process ran, written at each exec into an LRU map
/// keyed by pid, so that the exe of a loader or ancestor that has exited by
/// the time userspace reads its record is still known.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEntry {
    /// The process's `start_boottime`: a reused pid has another.
    pub start_ns: u64,
    /// CLOCK_BOOTTIME of the exec: a later exec than the record's call does
    /// not say what ran at the call.
    pub exec_ns: u64,
    /// `bprm->file`'s path, leaf first like `FinitModuleEvent::path`.
    pub path: BoundedStr<PATH_BUF>,
}

/// Indexes of the per-CPU loss counters. Every event the kernel side could not
/// deliver is counted under exactly one of them.
pub const LOSS_RINGBUF_FULL: u32 = 0;
/// An exit arrived whose entry record was gone (evicted from the bounded
/// pending map, or the call began before the probes were attached).
pub const LOSS_ENTRY_MISSING: u32 = 1;
/// The entry record could not be stored in the pending map.
pub const LOSS_PENDING_FULL: u32 = 2;
pub const LOSS_REASONS: u32 = 3;

/// Number of in-flight calls of callers holding CAP_SYS_MODULE tracked at
/// once (per syscall kind).
pub const PENDING_CAPACITY: u32 = 4096;
/// The same for callers without it, in maps of their own so that they cannot
/// take a privileged call's place. Their calls fail at the kernel's first
/// check, so few are ever in flight at once.
pub const UNPRIVILEGED_PENDING_CAPACITY: u32 = 1024;
/// Entries of `AGGREGATES`. When it is full, a failing call is reported in
/// full rather than left uncounted.
pub const AGGREGATE_CAPACITY: u32 = 16384;
/// Processes whose last exec the kernel side remembers (`ExecEntry`, 4.4 KiB
/// each): the least recently exec'd are forgotten first.
pub const EXEC_CAPACITY: u32 = 1024;

/// Field offsets read from the running kernel's BTF at start and passed to the
/// programs as a global. `OFFSET_NONE` marks a field this kernel lacks.
pub const OFFSET_NONE: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    pub task_cred: u32,
    pub task_loginuid: u32,
    pub task_sessionid: u32,
    pub task_files: u32,
    pub cred_euid: u32,
    pub cred_uid: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_f_path: u32,
    pub file_f_inode: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_name: u32,
    pub qstr_len: u32,
    pub qstr_name: u32,
    pub inode_i_ino: u32,
    pub inode_i_nlink: u32,
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    pub vfsmount_mnt_root: u32,
    pub pt_regs_di: u32,
    pub pt_regs_si: u32,
    pub pt_regs_dx: u32,
    pub pt_regs_orig_ax: u32,
    pub module_name: u32,
    pub module_taints: u32,
    pub task_nsproxy: u32,
    pub task_thread_pid: u32,
    pub nsproxy_mnt_ns: u32,
    pub mnt_namespace_ns: u32,
    pub pid_namespace_ns: u32,
    pub ns_common_inum: u32,
    pub pid_level: u32,
    pub pid_numbers: u32,
    pub upid_ns: u32,
    /// `sizeof(struct upid)`: the stride of `pid.numbers[]`.
    pub upid_size: u32,
    pub task_start_boottime: u32,
    pub linux_binprm_file: u32,
    pub cred_cap_effective: u32,
    pub cred_user_ns: u32,
    pub user_namespace_level: u32,
    pub task_mm: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
}

impl KernelOffsets {
    /// Every field marked absent: the programs then capture only what BPF helpers
    /// give without BTF (pid, uid, gid, comm, cgroup id, arguments).
    pub const NONE: Self = Self {
        task_real_parent: OFFSET_NONE,
        task_tgid: OFFSET_NONE,
        task_comm: OFFSET_NONE,
        task_cred: OFFSET_NONE,
        task_loginuid: OFFSET_NONE,
        task_sessionid: OFFSET_NONE,
        task_files: OFFSET_NONE,
        cred_euid: OFFSET_NONE,
        cred_uid: OFFSET_NONE,
        files_fdt: OFFSET_NONE,
        fdtable_max_fds: OFFSET_NONE,
        fdtable_fd: OFFSET_NONE,
        file_f_path: OFFSET_NONE,
        file_f_inode: OFFSET_NONE,
        path_mnt: OFFSET_NONE,
        path_dentry: OFFSET_NONE,
        dentry_d_parent: OFFSET_NONE,
        dentry_d_name: OFFSET_NONE,
        qstr_len: OFFSET_NONE,
        qstr_name: OFFSET_NONE,
        inode_i_ino: OFFSET_NONE,
        inode_i_nlink: OFFSET_NONE,
        mount_mnt: OFFSET_NONE,
        mount_mnt_parent: OFFSET_NONE,
        mount_mnt_mountpoint: OFFSET_NONE,
        vfsmount_mnt_root: OFFSET_NONE,
        pt_regs_di: OFFSET_NONE,
        pt_regs_si: OFFSET_NONE,
        pt_regs_dx: OFFSET_NONE,
        pt_regs_orig_ax: OFFSET_NONE,
        module_name: OFFSET_NONE,
        module_taints: OFFSET_NONE,
        task_nsproxy: OFFSET_NONE,
        task_thread_pid: OFFSET_NONE,
        nsproxy_mnt_ns: OFFSET_NONE,
        mnt_namespace_ns: OFFSET_NONE,
        pid_namespace_ns: OFFSET_NONE,
        ns_common_inum: OFFSET_NONE,
        pid_level: OFFSET_NONE,
        pid_numbers: OFFSET_NONE,
        upid_ns: OFFSET_NONE,
        upid_size: OFFSET_NONE,
        task_start_boottime: OFFSET_NONE,
        linux_binprm_file: OFFSET_NONE,
        cred_cap_effective: OFFSET_NONE,
        cred_user_ns: OFFSET_NONE,
        user_namespace_level: OFFSET_NONE,
        task_mm: OFFSET_NONE,
        mm_arg_start: OFFSET_NONE,
        mm_arg_end: OFFSET_NONE,
    };
}

/// Settings the loader writes into the programs' read-only globals.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    pub offsets: KernelOffsets,
    /// Syscall numbers on this architecture, used by the raw_syscalls strategy.
    pub nr_init_module: u32,
    pub nr_finit_module: u32,
    pub nr_delete_module: u32,
    /// Offsets in the `syscalls:sys_enter_*` record of the first argument and in
    /// `sys_exit_*` of `ret`, read from the tracepoints' format files.
    pub tp_enter_args: u32,
    pub tp_exit_ret: u32,
    /// The bit of CAP_SYS_MODULE in `cred.cap_effective`; `u32::MAX` when
    /// unknown, and then every caller counts as privileged.
    pub cap_sys_module: u32,
    /// Full reports of each distinct failing call (same caller, syscall,
    /// arguments and result) per window; its further repeats are counted.
    pub aggregate_threshold: u32,
    /// Full reports of failing calls with distinct arguments per process,
    /// syscall and result per window; beyond it they are only counted.
    pub aggregate_budget: u32,
    /// Length of an aggregation window; 0 reports every call in full.
    pub aggregate_window_ns: u64,
}

impl ProbeConfig {
    pub const DEFAULT: Self = Self {
        offsets: KernelOffsets::NONE,
        nr_init_module: u32::MAX,
        nr_finit_module: u32::MAX,
        nr_delete_module: u32::MAX,
        tp_enter_args: OFFSET_NONE,
        tp_exit_ret: OFFSET_NONE,
        cap_sys_module: u32::MAX,
        aggregate_threshold: 1,
        aggregate_budget: 16,
        aggregate_window_ns: 0,
    };
}

/// `AggregateKey::ret` of calls whose exit the kernel skipped (delivered
/// when their thread made its next call): their result is unknown, and no
/// syscall returns this.
pub const RET_UNSEEN: i64 = i64::MIN;

/// Key of `AGGREGATES`: failing calls (and autoload requests, with `ret` 0;
/// calls whose exit was skipped, with `RET_UNSEEN`) of one process, kind and
/// result in one window. `digest` 0 is the
/// process's own entry, which counts its full reports against the budget and
/// the calls elided beyond it; any other digest counts the repeats of one
/// reported call.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AggregateKey {
    pub tgid: u32,
    /// `KIND_INIT_MODULE`, `KIND_FINIT_MODULE`, `KIND_DELETE_MODULE` or
    /// `KIND_MODULE_REQUEST`.
    pub kind: u16,
    pub _reserved: u16,
    pub ret: i64,
    /// `exit_ns / aggregate_window_ns` of the calls counted (`enter_ns`'s
    /// for calls whose exit was skipped).
    pub window: u64,
    pub digest: u64,
}

/// Value of `AGGREGATES`. Counters are added to atomically: threads of one
/// process on several CPUs share an entry.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AggregateCount {
    /// Calls counted here instead of reported.
    pub elided: u64,
    /// Calls reported in full under this key.
    pub reported: u64,
    /// CLOCK_BOOTTIME of the entry's first call and of its last elided one.
    pub first_ns: u64,
    pub last_ns: u64,
    /// The process's `start_boottime`, uid and comm at its first call.
    pub start_ns: u64,
    pub uid: u32,
    pub _reserved: u32,
    pub comm: [u8; COMM_LEN],
}

// SAFETY (all eight): repr(C) plain old data whose every bit pattern is valid and
// which has no implicit padding (see the layout pins below).
#[cfg(feature = "user")]
unsafe impl aya::Pod for ProbeConfig {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for InitModuleEvent {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FinitModuleEvent {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for DeleteModuleEvent {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ModuleRequestEvent {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ExecEntry {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for AggregateKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for AggregateCount {}

// Layout pins, checked on both the BPF and the host build. `T` is what the
// namespaces and ancestors add to `TaskInfo`.
const _: () = {
    const T: usize = 16 + 32 * MAX_ANCESTORS;
    assert!(size_of::<EventHeader>() == 40);
    assert!(offset_of!(EventHeader, digest) == 32);
    assert!(offset_of!(EventHeader, enter_ns) == 8);
    assert!(offset_of!(EventHeader, ret) == 24);
    assert!(size_of::<Ancestor>() == 32);
    assert!(size_of::<TaskInfo>() == 80 + T);
    assert!(offset_of!(TaskInfo, mnt_ns) == 80);
    assert!(offset_of!(TaskInfo, start_ns) == 88);
    assert!(offset_of!(TaskInfo, ancestors) == 96);
    assert!(size_of::<ExecEntry>() == 16 + 8 + PATH_BUF);
    assert!(offset_of!(TaskInfo, cgroup_id) == 32);
    assert!(offset_of!(TaskInfo, comm) == 48);
    assert!(offset_of!(TaskInfo, parent_comm) == 64);
    assert!(size_of::<BoundedStr<PARAMS_CAP>>() == 8 + PARAMS_CAP);
    assert!(size_of::<LoadedModule>() == 16 + KERNEL_MODULE_NAME_LEN);
    assert!(offset_of!(InitModuleEvent, module) == 144 + T);
    assert!(offset_of!(InitModuleEvent, params) == 144 + T + 72);
    assert!(size_of::<Invocation>() == 16 + ARGV_CAP);
    assert!(offset_of!(Invocation, argv) == 8);
    assert!(offset_of!(InitModuleEvent, invocation) == 144 + T + 72 + 8 + PARAMS_CAP);
    assert!(size_of::<InitModuleEvent>() == 144 + T + 72 + 8 + PARAMS_CAP + 16 + ARGV_CAP);
    assert!(offset_of!(FinitModuleEvent, fd) == 120 + T);
    assert!(offset_of!(FinitModuleEvent, ino) == 128 + T);
    assert!(offset_of!(FinitModuleEvent, params_addr) == 144 + T);
    assert!(offset_of!(FinitModuleEvent, module) == 152 + T);
    assert!(offset_of!(FinitModuleEvent, params) == 152 + T + 72);
    assert!(offset_of!(FinitModuleEvent, path) == 152 + T + 72 + 8 + PARAMS_CAP);
    assert!(
        offset_of!(FinitModuleEvent, invocation) == 152 + T + 72 + 8 + PARAMS_CAP + 8 + PATH_BUF
    );
    assert!(
        size_of::<FinitModuleEvent>()
            == 152 + T + 72 + 8 + PARAMS_CAP + 8 + PATH_BUF + 16 + ARGV_CAP
    );
    assert!(offset_of!(DeleteModuleEvent, flags) == 120 + T);
    assert!(offset_of!(DeleteModuleEvent, name_addr) == 128 + T);
    assert!(offset_of!(DeleteModuleEvent, name) == 136 + T);
    assert!(size_of::<DeleteModuleEvent>() == 136 + T + 8 + MODULE_NAME_CAP);
    assert!(offset_of!(ModuleRequestEvent, name) == 128 + T);
    assert!(size_of::<LoadEntryEvent>() == 40 + 32);
    assert!(size_of::<ModuleRequestEvent>() == 128 + T + 8 + MODULE_NAME_CAP);
    assert!(size_of::<KernelOffsets>() == 50 * 4);
    assert!(size_of::<ProbeConfig>() == 50 * 4 + 32 + 8);
    assert!(offset_of!(ProbeConfig, aggregate_window_ns) == 50 * 4 + 32);
    assert!(size_of::<AggregateKey>() == 32);
    assert!(size_of::<AggregateCount>() == 48 + COMM_LEN);
    assert!(PARAMS_CAP.is_power_of_two() && PATH_CAP.is_power_of_two());
};
