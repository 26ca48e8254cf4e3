//! Entry and exit of the three module syscalls, joined in the kernel, and the
//! kernel's own module events joined to them.
//!
//! At entry the record is built in a per-CPU scratch slot (records are far
//! larger than the 512-byte stack) and stored in a bounded per-thread pending
//! map; at exit the return value is added and the record is delivered. Every
//! record that cannot be delivered is counted in `LOSSES`.
//!
//! Delivery is split so that no flood can hide a load: a call that succeeded
//! (only a holder of CAP_SYS_MODULE can make one) goes to `LOADS`, which
//! nothing else writes; failing calls and requests go to `EVENTS`, through
//! `aggregate`, which counts their repeats. Callers with and without
//! CAP_SYS_MODULE have pending maps of their own.
use aya_ebpf::{
    helpers::generated::bpf_ktime_get_boot_ns,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use modtrace_common::{
    BoundedStr, DeleteModuleEvent, EventHeader, FinitModuleEvent, InitModuleEvent, Invocation,
    LoadEntryEvent, LoadedModule, ModuleRequestEvent, Syscall, TaskInfo, ABI_VERSION,
    KERNEL_MODULE_NAME_LEN, KIND_DELETE_MODULE, KIND_FINIT_MODULE, KIND_INIT_MODULE,
    KIND_LOAD_ENTRY, KIND_MODULE_REQUEST, LOSS_ENTRY_MISSING, LOSS_PENDING_FULL, LOSS_REASONS,
    LOSS_RINGBUF_FULL, PENDING_CAPACITY, RET_UNSEEN, UNPRIVILEGED_PENDING_CAPACITY,
};

use crate::{
    aggregate::{self, digest_str, digest_word, DIGEST_SEED},
    capture,
};

/// Which syscalls the raw `sys_enter`/`sys_exit` programs report, indexed by
/// the syscall's place in `Syscall::ALL`: nonzero for those the loader gave
/// to the `raw-syscalls` strategy, zero for those another strategy reports,
/// so that no call is reported twice. A map rather than a setting, because
/// the loader decides after the object is loaded, as other strategies'
/// programs load or fail.
#[map]
static RAW_SYSCALLS: Array<u32> = Array::with_max_entries(Syscall::ALL.len() as u32, 0);

/// The traced syscall that number `nr` is, by the numbers the loader wrote
/// for the running architecture, when the raw programs report it.
#[inline(always)]
pub(crate) fn raw_syscall_of_nr(nr: i64) -> Option<Syscall> {
    let nr = u32::try_from(nr).ok()?;
    let call = if nr == config!(nr_finit_module) {
        Syscall::FinitModule
    } else if nr == config!(nr_init_module) {
        Syscall::InitModule
    } else if nr == config!(nr_delete_module) {
        Syscall::DeleteModule
    } else {
        return None;
    };
    RAW_SYSCALLS
        .get(call as u32)
        .is_some_and(|enabled| *enabled != 0)
        .then_some(call)
}

/// Failing calls reported in full, and autoload requests. Sized by the
/// loader (`set_max_entries`) from the command line.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);
/// Calls that succeeded: loads and unloads, which only a caller holding
/// CAP_SYS_MODULE can make, so no unprivileged flood can fill it.
#[map]
static LOADS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);
/// Notices that a privileged caller's load began (`LoadEntryEvent`).
#[map]
static NOTICES: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map]
static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_REASONS, 0);

// Plain hash maps, not LRU: an LRU map would evict in-flight calls silently,
// while a full plain map refuses the insert, which is counted. Entries of
// tasks that died inside a syscall are reaped by userspace.
#[map]
static PENDING_INIT: HashMap<u32, InitModuleEvent> = HashMap::with_max_entries(PENDING_CAPACITY, 0);
#[map]
static PENDING_FINIT: HashMap<u32, FinitModuleEvent> =
    HashMap::with_max_entries(PENDING_CAPACITY, 0);
#[map]
static PENDING_DELETE: HashMap<u32, DeleteModuleEvent> =
    HashMap::with_max_entries(PENDING_CAPACITY, 0);
#[map]
static PENDING_INIT_UNPRIVILEGED: HashMap<u32, InitModuleEvent> =
    HashMap::with_max_entries(UNPRIVILEGED_PENDING_CAPACITY, 0);
#[map]
static PENDING_FINIT_UNPRIVILEGED: HashMap<u32, FinitModuleEvent> =
    HashMap::with_max_entries(UNPRIVILEGED_PENDING_CAPACITY, 0);
#[map]
static PENDING_DELETE_UNPRIVILEGED: HashMap<u32, DeleteModuleEvent> =
    HashMap::with_max_entries(UNPRIVILEGED_PENDING_CAPACITY, 0);

/// A syscall's two pending maps: for callers with and without CAP_SYS_MODULE.
struct Pending<T: 'static> {
    privileged: &'static HashMap<u32, T>,
    unprivileged: &'static HashMap<u32, T>,
}

impl<T> Pending<T> {
    #[inline(always)]
    fn for_caller(&self, privileged: bool) -> &'static HashMap<u32, T> {
        if privileged {
            self.privileged
        } else {
            self.unprivileged
        }
    }

    /// The current thread's pending call and the map that holds it.
    #[inline(always)]
    fn find(&self, tid: u32) -> Option<(&'static HashMap<u32, T>, &'static mut T)> {
        let (map, record) = match self.privileged.get_ptr_mut(tid) {
            Some(record) => (self.privileged, record),
            None => (self.unprivileged, self.unprivileged.get_ptr_mut(tid)?),
        };
        // SAFETY: the entry belongs to this thread, which is in the syscall.
        Some((map, unsafe { &mut *record }))
    }
}

// Built where they are used, never stored: a BPF program names a map only
// through the instruction that loads its address.
macro_rules! pending {
    ($privileged:ident, $unprivileged:ident) => {
        Pending {
            privileged: &$privileged,
            unprivileged: &$unprivileged,
        }
    };
}

/// Threads whose call entered while its pending map was full: that loss is
/// counted once, as `pending_full`, so their exit must not count it again as
/// `entry_missing`.
#[map]
static OVERFLOWED: LruHashMap<u32, u8> = LruHashMap::with_max_entries(PENDING_CAPACITY, 0);

#[map]
static SCRATCH_INIT: PerCpuArray<InitModuleEvent> = PerCpuArray::with_max_entries(1, 0);
#[map]
static SCRATCH_FINIT: PerCpuArray<FinitModuleEvent> = PerCpuArray::with_max_entries(1, 0);
#[map]
static SCRATCH_DELETE: PerCpuArray<DeleteModuleEvent> = PerCpuArray::with_max_entries(1, 0);
#[map]
static SCRATCH_REQUEST: PerCpuArray<ModuleRequestEvent> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn count_loss(reason: u32) {
    if let Some(counter) = LOSSES.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot, not shared with another CPU.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn header(kind: u16, size: usize) -> EventHeader {
    EventHeader {
        kind,
        abi_version: ABI_VERSION,
        size: size as u32,
        // SAFETY: helper call without arguments.
        enter_ns: unsafe { bpf_ktime_get_boot_ns() },
        exit_ns: 0,
        ret: 0,
        digest: 0,
    }
}

#[inline(always)]
fn current_tid() -> u32 {
    aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32
}

#[inline(always)]
pub(crate) fn on_enter(call: Syscall, args: [u64; 3]) {
    match call {
        Syscall::InitModule => enter_init(args),
        Syscall::FinitModule => enter_finit(args),
        Syscall::DeleteModule => enter_delete(args),
    }
}

#[inline(always)]
pub(crate) fn on_exit(call: Syscall, ret: i64) {
    match call {
        Syscall::InitModule => complete(&pending!(PENDING_INIT, PENDING_INIT_UNPRIVILEGED), ret),
        Syscall::FinitModule => complete(&pending!(PENDING_FINIT, PENDING_FINIT_UNPRIVILEGED), ret),
        Syscall::DeleteModule => {
            complete(&pending!(PENDING_DELETE, PENDING_DELETE_UNPRIVILEGED), ret);
        }
    }
}

/// Whether the current task holds CAP_SYS_MODULE in the initial user
/// namespace, as the kernel's `capable()` requires of every module syscall.
/// When the kernel's layout is unknown every caller counts as privileged:
/// delivery is then as before the split, never worse.
#[inline(always)]
fn caller_is_privileged() -> bool {
    let bit = config!(cap_sys_module);
    if bit >= 64 {
        return true;
    }
    // SAFETY: helper call without arguments.
    let task = unsafe { aya_ebpf::helpers::generated::bpf_get_current_task() } as *const u8;
    let Some(cred) = capture::read_ptr(task, config!(offsets.task_cred)) else {
        return true;
    };
    let Some(caps) = capture::read_at::<u64>(cred, config!(offsets.cred_cap_effective)) else {
        return true;
    };
    if (caps >> bit) & 1 == 0 {
        return false;
    }
    let level = capture::read_ptr(cred, config!(offsets.cred_user_ns))
        .and_then(|ns| capture::read_at::<u32>(ns, config!(offsets.user_namespace_level)));
    level.is_none_or(|level| level == 0)
}

/// Stores the scratch record of the current thread as pending, in the map
/// for its caller's privilege.
#[inline(always)]
fn stash<T: PendingCall>(pending: &Pending<T>, privileged: bool, record: &T) {
    let tid = current_tid();
    deliver_stale(pending, tid);
    if pending
        .for_caller(privileged)
        .insert(tid, record, 0)
        .is_err()
    {
        count_loss(LOSS_PENDING_FULL);
        let _ = OVERFLOWED.insert(tid, 1, 0);
    } else {
        // A mark left by a call whose exit was never seen (its task died)
        // must not swallow a later loss of this thread.
        let _ = OVERFLOWED.remove(tid);
    }
}

/// A thread has no call pending when it enters one, unless the kernel
/// skipped modtrace's exit program for its last call (modtrace/src/kernel/
/// skipped.rs): that call is delivered now, without its result, rather than
/// overwritten. Only a call whose module events show that it changed the
/// kernel's modules goes to `LOADS`: a privileged caller's failing calls can
/// repeat without bound, and with their exits skipped they would otherwise
/// fill the ring that no flood may fill. Userspace may have reported a
/// privileged call already, from the map, and drops the repeat by (tid,
/// entry time).
#[inline(always)]
fn deliver_stale<T: PendingCall>(pending: &Pending<T>, tid: u32) {
    // Both maps: a thread that dropped CAP_SYS_MODULE between its calls
    // has its last one in the other.
    deliver_stale_from(pending.privileged, tid);
    deliver_stale_from(pending.unprivileged, tid);
}

#[inline(always)]
fn deliver_stale_from<T: PendingCall>(map: &HashMap<u32, T>, tid: u32) {
    let Some(stale) = map.get_ptr_mut(tid) else {
        return;
    };
    // SAFETY: the entry belongs to this thread, which is in the syscall.
    let stale = unsafe { &mut *stale };
    let delivered = if stale.changed_modules() {
        LOADS.output::<T>(&*stale, 0).is_ok()
    } else if unseen_in_full(stale) {
        EVENTS.output::<T>(&*stale, 0).is_ok()
    } else {
        true
    };
    if !delivered {
        count_loss(LOSS_RINGBUF_FULL);
    }
    let _ = map.remove(tid);
}

/// Whether a call whose exit was skipped, and which changed no module, is
/// reported in full: its repeats are counted like failing calls', apart
/// from them (its result is unknown), in the window of its entry, as a
/// flood whose exits the kernel skips is still a flood. Its strings are
/// not read again: the caller's memory has moved on to its next call.
#[inline(always)]
fn unseen_in_full<T: PendingCall>(stale: &mut T) -> bool {
    let (head, task) = stale.keyed();
    aggregate::report_in_full(head.kind, RET_UNSEEN, head.digest, task, head.enter_ns)
}

/// A pending call's record, completed at its exit or when its exit was
/// skipped.
trait PendingCall {
    /// Reads again, in the caller's memory, what entry could not (a page
    /// not yet faulted in).
    fn retry_capture(&mut self);
    /// Sets the digest of the call's arguments, under which its repeats
    /// are counted, and gives the header and the caller.
    fn keyed(&mut self) -> (&mut EventHeader, &TaskInfo);
    /// Whether the kernel's module events inside the call saw a module
    /// created or freed: only a successful delete_module frees, and only a
    /// load that got as far as its init creates (a failing init frees too).
    fn changed_modules(&self) -> bool;
}

/// What both loads read again at exit: their parameters and the caller's
/// command line.
#[inline(always)]
fn retry_load_capture<const N: usize>(
    params_addr: u64,
    params: &mut BoundedStr<N>,
    invocation: &mut Invocation,
) {
    capture::retry_user_str(params_addr, params);
    capture::retry_argv(invocation);
}

/// Whether a load's module events saw its module created or freed.
#[inline(always)]
fn loaded_or_freed(module: &LoadedModule) -> bool {
    module.seen != 0 || module.freed != 0
}

impl PendingCall for InitModuleEvent {
    #[inline(always)]
    fn retry_capture(&mut self) {
        retry_load_capture(self.params_addr, &mut self.params, &mut self.invocation);
    }

    #[inline(always)]
    fn keyed(&mut self) -> (&mut EventHeader, &TaskInfo) {
        let hash = digest_word(DIGEST_SEED, self.image_len);
        self.header.digest = digest_str(hash, &self.params.bytes, self.params.len);
        (&mut self.header, &self.task)
    }

    #[inline(always)]
    fn changed_modules(&self) -> bool {
        loaded_or_freed(&self.module)
    }
}

impl PendingCall for FinitModuleEvent {
    #[inline(always)]
    fn retry_capture(&mut self) {
        retry_load_capture(self.params_addr, &mut self.params, &mut self.invocation);
    }

    #[inline(always)]
    fn keyed(&mut self) -> (&mut EventHeader, &TaskInfo) {
        let hash = digest_word(DIGEST_SEED, self.ino);
        let hash = digest_word(hash, u64::from(self.flags));
        let hash = digest_str(hash, &self.path.bytes, self.path.len);
        self.header.digest = digest_str(hash, &self.params.bytes, self.params.len);
        (&mut self.header, &self.task)
    }

    #[inline(always)]
    fn changed_modules(&self) -> bool {
        loaded_or_freed(&self.module)
    }
}

impl PendingCall for DeleteModuleEvent {
    #[inline(always)]
    fn retry_capture(&mut self) {
        capture::retry_user_str(self.name_addr, &mut self.name);
    }

    #[inline(always)]
    fn keyed(&mut self) -> (&mut EventHeader, &TaskInfo) {
        let hash = digest_word(DIGEST_SEED, u64::from(self.flags));
        self.header.digest = digest_str(hash, &self.name.bytes, self.name.len);
        (&mut self.header, &self.task)
    }

    #[inline(always)]
    fn changed_modules(&self) -> bool {
        self.freed != 0
    }
}

#[inline(always)]
fn enter_init([image_addr, image_len, params]: [u64; 3]) {
    let Some(event) = SCRATCH_INIT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch slot, used by one program at a time.
    let event = unsafe { &mut *event };
    event.header = header(KIND_INIT_MODULE, core::mem::size_of::<InitModuleEvent>());
    capture::fill_task(&mut event.task);
    event.image_addr = image_addr;
    event.image_len = image_len;
    event.params_addr = params;
    // The scratch slot is reused: clear what only module_load and
    // module_free fill in.
    event.module.seen = 0;
    event.module.freed = 0;
    event.module.taints = 0;
    capture::user_str(params, &mut event.params);
    capture::fill_invocation(&mut event.invocation);
    let privileged = caller_is_privileged();
    if privileged {
        notify_load_entry(
            KIND_INIT_MODULE,
            -1,
            image_addr,
            image_len,
            &event.header,
            &event.task,
        );
    }
    stash(
        &pending!(PENDING_INIT, PENDING_INIT_UNPRIVILEGED),
        privileged,
        event,
    );
}

#[inline(always)]
fn enter_finit([fd, params, flags]: [u64; 3]) {
    let Some(event) = SCRATCH_FINIT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as above.
    let event = unsafe { &mut *event };
    event.header = header(KIND_FINIT_MODULE, core::mem::size_of::<FinitModuleEvent>());
    capture::fill_task(&mut event.task);
    event.fd = fd as i32;
    event.flags = flags as u32;
    event.params_addr = params;
    event.module.seen = 0;
    event.module.freed = 0;
    event.module.taints = 0;
    capture::user_str(params, &mut event.params);
    let file = capture::resolve_fd(event.fd, &mut event.path);
    event.file_flags = file.flags;
    event.ino = file.ino;
    capture::fill_invocation(&mut event.invocation);
    let privileged = caller_is_privileged();
    if privileged {
        notify_load_entry(
            KIND_FINIT_MODULE,
            event.fd,
            0,
            0,
            &event.header,
            &event.task,
        );
    }
    stash(
        &pending!(PENDING_FINIT, PENDING_FINIT_UNPRIVILEGED),
        privileged,
        event,
    );
}

#[inline(always)]
fn enter_delete([name, flags, _]: [u64; 3]) {
    let Some(event) = SCRATCH_DELETE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as above.
    let event = unsafe { &mut *event };
    event.header = header(
        KIND_DELETE_MODULE,
        core::mem::size_of::<DeleteModuleEvent>(),
    );
    capture::fill_task(&mut event.task);
    event.flags = flags as u32;
    event.freed = 0;
    event.name_addr = name;
    capture::user_str(name, &mut event.name);
    let privileged = caller_is_privileged();
    stash(
        &pending!(PENDING_DELETE, PENDING_DELETE_UNPRIVILEGED),
        privileged,
        event,
    );
}

/// Adds the return value to the current thread's pending record and delivers
/// it, with what entry could not capture and the digest of its arguments.
#[inline(always)]
fn complete<T: PendingCall>(pending: &Pending<T>, ret: i64) {
    let tid = current_tid();
    let Some((map, record)) = pending.find(tid) else {
        if OVERFLOWED.remove(tid).is_err() {
            count_loss(LOSS_ENTRY_MISSING);
        }
        return;
    };
    record.retry_capture();
    let (head, task) = record.keyed();
    // SAFETY: helper call without arguments.
    head.exit_ns = unsafe { bpf_ktime_get_boot_ns() };
    head.ret = ret;
    // A failing call is counted in the window of its exit: one held in the
    // kernel for longer than a window must not add to one that userspace is
    // already reading.
    let delivered = if ret == 0 {
        LOADS.output::<T>(&*record, 0).is_ok()
    } else if aggregate::report_in_full(head.kind, ret, head.digest, task, head.exit_ns) {
        EVENTS.output::<T>(&*record, 0).is_ok()
    } else {
        true
    };
    if !delivered {
        count_loss(LOSS_RINGBUF_FULL);
    }
    let _ = map.remove(tid);
}

/// `module_load` fires inside the loading syscall, after the kernel has named
/// the module: record the name it registered and the module's taints in the
/// current thread's pending call.
#[inline(always)]
pub(crate) fn on_module_load(module: *const u8) {
    let tid = current_tid();
    // Only a privileged caller loads, so only its maps are looked at.
    let target = match PENDING_FINIT.get_ptr_mut(tid) {
        // SAFETY: the entry belongs to this thread, which is in the syscall.
        Some(event) => unsafe { &mut (*event).module },
        None => match PENDING_INIT.get_ptr_mut(tid) {
            // SAFETY: as above.
            Some(event) => unsafe { &mut (*event).module },
            // A load by a call that began before we attached: nothing to join.
            None => return,
        },
    };
    fill_loaded_module(module, target);
}

#[inline(always)]
fn fill_loaded_module(module: *const u8, target: &mut LoadedModule) {
    target.taints = capture::read_at::<u64>(module, config!(offsets.module_taints)).unwrap_or(0);
    if let Some(name) =
        capture::read_at::<[u8; KERNEL_MODULE_NAME_LEN]>(module, config!(offsets.module_name))
    {
        target.name = name;
        target.seen = 1;
    }
}

/// `module_free` inside delete_module: the module really left the kernel;
/// inside a load: its init failed. Either tells how the call ended when the
/// kernel skips the exit program.
#[inline(always)]
pub(crate) fn on_module_free() {
    let tid = current_tid();
    // SAFETY (all three): the entry belongs to this thread, which is in the
    // syscall.
    if let Some(event) = PENDING_DELETE.get_ptr_mut(tid) {
        unsafe { (*event).freed = 1 };
    } else if let Some(event) = PENDING_FINIT.get_ptr_mut(tid) {
        unsafe { (*event).module.freed = 1 };
    } else if let Some(event) = PENDING_INIT.get_ptr_mut(tid) {
        unsafe { (*event).module.freed = 1 };
    }
}

/// `module_request`: the kernel is about to run modprobe for `name` on behalf
/// of the current task. There is no exit to wait for; any local user can
/// cause requests (a socket of an unloaded protocol), so they are aggregated
/// like failing calls.
#[inline(always)]
pub(crate) fn on_module_request(name: u64, wait: bool) {
    let Some(event) = SCRATCH_REQUEST.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch slot, used by one program at a time.
    let event = unsafe { &mut *event };
    event.header = header(
        KIND_MODULE_REQUEST,
        core::mem::size_of::<ModuleRequestEvent>(),
    );
    event.header.exit_ns = event.header.enter_ns;
    capture::fill_task(&mut event.task);
    event.wait = u32::from(wait);
    event._reserved = 0;
    capture::kernel_str(name, &mut event.name);
    let hash = aggregate::digest_word(aggregate::DIGEST_SEED, u64::from(event.wait));
    event.header.digest = aggregate::digest_str(hash, &event.name.bytes, event.name.len);
    let head = &event.header;
    if aggregate::report_in_full(head.kind, 0, head.digest, &event.task, head.exit_ns)
        && EVENTS.output::<ModuleRequestEvent>(&*event, 0).is_err()
    {
        count_loss(LOSS_RINGBUF_FULL);
    }
}

/// Tells userspace a load has begun, so that it can copy the image (or open
/// the fd) while the caller still holds it. Best effort: without the notice
/// the record still comes, with its image read afterwards or reported gone.
#[inline(always)]
fn notify_load_entry(
    syscall: u16,
    fd: i32,
    image_addr: u64,
    image_len: u64,
    call: &EventHeader,
    task: &TaskInfo,
) {
    let Some(mut entry) = NOTICES.reserve::<LoadEntryEvent>(0) else {
        return;
    };
    // SAFETY: the reservation is exclusively ours until submitted.
    let notice = unsafe { &mut *entry.as_mut_ptr() };
    notice.header = header(KIND_LOAD_ENTRY, core::mem::size_of::<LoadEntryEvent>());
    // The call's own entry time: with the tid, it names the record to come.
    notice.header.enter_ns = call.enter_ns;
    notice.pid = task.pid;
    notice.tid = task.tid;
    notice.syscall = u32::from(syscall);
    notice.fd = fd;
    notice.image_addr = image_addr;
    notice.image_len = image_len;
    entry.submit(0);
}
