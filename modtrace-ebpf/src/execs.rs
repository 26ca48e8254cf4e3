//! The executable of every process that execs while modtrace runs, kept in an
//! LRU map keyed by pid, so that userspace can name the exe of a loader or of
//! an ancestor that has exited before its record is read.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, generated::bpf_ktime_get_boot_ns},
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use modtrace_common::{ExecEntry, EXEC_CAPACITY};

use crate::capture;

#[map]
static EXECS: LruHashMap<u32, ExecEntry> = LruHashMap::with_max_entries(EXEC_CAPACITY, 0);

#[map]
static SCRATCH_EXEC: PerCpuArray<ExecEntry> = PerCpuArray::with_max_entries(1, 0);

/// `sched_process_exec`: the current task has just exec'd `bprm->file`.
#[inline(always)]
pub(crate) fn on_exec(bprm: *const u8) {
    let Some(file) = capture::read_ptr(bprm, config!(offsets.linux_binprm_file)) else {
        return;
    };
    let Some(entry) = SCRATCH_EXEC.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; programs do not migrate while they run.
    let entry = unsafe { &mut *entry };
    // SAFETY: helper calls without pointer arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    entry.start_ns = capture::start_ns(task);
    // SAFETY: as above.
    entry.exec_ns = unsafe { bpf_ktime_get_boot_ns() };
    capture::file_path(file, &mut entry.path);
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // An entry that cannot be stored leaves userspace to /proc: the records
    // themselves are not affected.
    let _ = EXECS.insert(pid, entry, 0);
}
