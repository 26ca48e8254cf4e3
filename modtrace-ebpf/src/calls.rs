//! Entry and exit of the three module syscalls, joined in the kernel, and the
//! kernel's own module events joined to them.
//!
//! At entry the record is built in a per-CPU scratch slot (records are far
//! larger than the 512-byte stack) and stored in a bounded per-thread pending
//! map; at exit the return value is added and the record goes to the ring
//! buffer. Every record that cannot be delivered is counted in `LOSSES`.
use aya_ebpf::{
    helpers::generated::bpf_ktime_get_boot_ns,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use modtrace_common::{
    DeleteModuleEvent, EventHeader, FinitModuleEvent, InitModuleEvent, LoadEntryEvent,
    LoadedModule, ModuleRequestEvent, ABI_VERSION, KERNEL_MODULE_NAME_LEN, KIND_DELETE_MODULE,
    KIND_FINIT_MODULE, KIND_INIT_MODULE, KIND_LOAD_ENTRY, KIND_MODULE_REQUEST, LOSS_ENTRY_MISSING,
    LOSS_PENDING_FULL, LOSS_REASONS, LOSS_RINGBUF_FULL, PENDING_CAPACITY,
};

use crate::capture;

#[derive(Clone, Copy)]
/// The traced module syscalls.
pub enum Syscall {
    Init,
    Finit,
    Delete,
}

impl Syscall {
    /// Maps a syscall number to ours, using the numbers the loader wrote for
    /// the running architecture.
    #[inline(always)]
    pub fn from_nr(nr: i64) -> Option<Self> {
        let nr = u32::try_from(nr).ok()?;
        if nr == config!(nr_finit_module) {
            Some(Self::Finit)
        } else if nr == config!(nr_init_module) {
            Some(Self::Init)
        } else if nr == config!(nr_delete_module) {
            Some(Self::Delete)
        } else {
            None
        }
    }
}

/// Sized by the loader (`set_max_entries`) from the command line.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

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
    }
}

#[inline(always)]
fn current_tid() -> u32 {
    aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32
}

#[inline(always)]
pub fn on_enter(call: Syscall, args: [u64; 3]) {
    match call {
        Syscall::Init => enter_init(args),
        Syscall::Finit => enter_finit(args),
        Syscall::Delete => enter_delete(args),
    }
}

#[inline(always)]
pub fn on_exit(call: Syscall, ret: i64) {
    match call {
        Syscall::Init => complete(&PENDING_INIT, ret, |e| {
            capture::retry_user_str(e.params_addr, &mut e.params);
            &mut e.header
        }),
        Syscall::Finit => complete(&PENDING_FINIT, ret, |e| {
            capture::retry_user_str(e.params_addr, &mut e.params);
            &mut e.header
        }),
        Syscall::Delete => complete(&PENDING_DELETE, ret, |e| {
            capture::retry_user_str(e.name_addr, &mut e.name);
            &mut e.header
        }),
    }
}

/// Stores the scratch record of the current thread as pending.
#[inline(always)]
fn stash<T>(pending: &HashMap<u32, T>, record: &T) {
    let tid = current_tid();
    if pending.insert(tid, record, 0).is_err() {
        count_loss(LOSS_PENDING_FULL);
        let _ = OVERFLOWED.insert(tid, 1, 0);
    } else {
        // A mark left by a call whose exit was never seen (its task died)
        // must not swallow a later loss of this thread.
        let _ = OVERFLOWED.remove(tid);
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
    // The scratch slot is reused: clear what only module_load fills in.
    event.module.seen = 0;
    event.module.taints = 0;
    capture::user_str(params, &mut event.params);
    notify_load_entry(
        KIND_INIT_MODULE,
        -1,
        image_addr,
        image_len,
        &event.header,
        &event.task,
    );
    stash(&PENDING_INIT, event);
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
    event.module.taints = 0;
    capture::user_str(params, &mut event.params);
    let file = capture::resolve_fd(event.fd, &mut event.path);
    event.file_flags = file.flags;
    event.ino = file.ino;
    notify_load_entry(
        KIND_FINIT_MODULE,
        event.fd,
        0,
        0,
        &event.header,
        &event.task,
    );
    stash(&PENDING_FINIT, event);
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
    stash(&PENDING_DELETE, event);
}

/// Adds the return value to the current thread's pending record and delivers
/// it. `finish` completes what entry could not capture and gives the header.
#[inline(always)]
fn complete<T>(pending: &HashMap<u32, T>, ret: i64, finish: impl Fn(&mut T) -> &mut EventHeader) {
    let tid = current_tid();
    let Some(record) = pending.get_ptr_mut(tid) else {
        if OVERFLOWED.remove(tid).is_err() {
            count_loss(LOSS_ENTRY_MISSING);
        }
        return;
    };
    // SAFETY: the entry belongs to this thread, which is in this syscall.
    let record = unsafe { &mut *record };
    let head = finish(record);
    // SAFETY: helper call without arguments.
    head.exit_ns = unsafe { bpf_ktime_get_boot_ns() };
    head.ret = ret;
    if EVENTS.output::<T>(&*record, 0).is_err() {
        count_loss(LOSS_RINGBUF_FULL);
    }
    let _ = pending.remove(tid);
}

/// `module_load` fires inside the loading syscall, after the kernel has named
/// the module: record the name it registered and the module's taints in the
/// current thread's pending call.
#[inline(always)]
pub fn on_module_load(module: *const u8) {
    let tid = current_tid();
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

/// `module_free` inside delete_module: the module really left the kernel.
#[inline(always)]
pub fn on_module_free() {
    if let Some(event) = PENDING_DELETE.get_ptr_mut(current_tid()) {
        // SAFETY: the entry belongs to this thread, which is in the syscall.
        unsafe { (*event).freed = 1 };
    }
}

/// `module_request`: the kernel is about to run modprobe for `name` on behalf
/// of the current task. Delivered at once; there is no exit to wait for.
#[inline(always)]
pub fn on_module_request(name: u64, wait: bool) {
    let Some(mut entry) = EVENTS.reserve::<ModuleRequestEvent>(0) else {
        count_loss(LOSS_RINGBUF_FULL);
        return;
    };
    // SAFETY: the reservation is exclusively ours until submitted.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    event.header = header(
        KIND_MODULE_REQUEST,
        core::mem::size_of::<ModuleRequestEvent>(),
    );
    event.header.exit_ns = event.header.enter_ns;
    capture::fill_task(&mut event.task);
    event.wait = wait as u32;
    event._reserved = 0;
    capture::kernel_str(name, &mut event.name);
    entry.submit(0);
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
    task: &modtrace_common::TaskInfo,
) {
    let Some(mut entry) = EVENTS.reserve::<LoadEntryEvent>(0) else {
        return;
    };
    // SAFETY: the reservation is exclusively ours until submitted.
    let notice = unsafe { &mut *entry.as_mut_ptr() };
    notice.header = header(KIND_LOAD_ENTRY, core::mem::size_of::<LoadEntryEvent>());
    // The call's own entry time: with the tid, it names the record to come.
    notice.header.enter_ns = call.enter_ns;
    notice.pid = task.pid;
    notice.tid = task.tid;
    notice.syscall = syscall as u32;
    notice.fd = fd;
    notice.image_addr = image_addr;
    notice.image_len = image_len;
    entry.submit(0);
}
