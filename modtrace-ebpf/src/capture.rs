//! Reading the calling task and the syscall's arguments. Every kernel structure
//! is read at an offset taken from the running kernel's BTF (`config!`); a field
//! whose offset is `OFFSET_NONE` is reported missing, never guessed.
pub(crate) use crate::kread::{read_at, read_ptr};
use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_current_uid_gid,
        generated::{
            self, bpf_probe_read_kernel_str, bpf_probe_read_user, bpf_probe_read_user_str,
        },
    },
};
use modtrace_common::{
    BoundedStr, Invocation, TaskInfo, ARGV_CAP, COMM_LEN, FILE_BAD_FD, FILE_INTERNAL_MOUNT,
    FILE_RESOLVED, FILE_UNLINKED, MISSING_AUID, MISSING_EUID, MISSING_MNT_NS, MISSING_PARENT,
    MISSING_PID_NS, MISSING_SESSION, NAME_MAX, OFFSET_NONE, PARENT_KERNEL_THREAD, PARENT_PROCESS,
    PARENT_UNKNOWN, PATH_CAP, PATH_MAX_COMPONENTS, STR_ABSENT, STR_NULL, STR_OK, STR_TRUNCATED,
    STR_UNREADABLE,
};

#[inline(always)]
pub(crate) fn fill_task(task_info: &mut TaskInfo) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    task_info.pid = (pid_tgid >> 32) as u32;
    task_info.tid = pid_tgid as u32;
    task_info.uid = uid_gid as u32;
    task_info.gid = (uid_gid >> 32) as u32;
    // SAFETY: helper calls without pointer arguments.
    task_info.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    task_info.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    task_info.missing = 0;

    // SAFETY: as above.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    task_info.start_ns = start_ns(task);
    let cred = read_ptr(task, config!(offsets.task_cred));
    match cred.and_then(|cred| read_at::<u32>(cred, config!(offsets.cred_euid))) {
        Some(euid) => task_info.euid = euid,
        None => task_info.missing |= MISSING_EUID,
    }
    match read_at::<u32>(task, config!(offsets.task_loginuid)) {
        Some(auid) => task_info.auid = auid,
        None => task_info.missing |= MISSING_AUID,
    }
    match read_at::<u32>(task, config!(offsets.task_sessionid)) {
        Some(session) => task_info.session = session,
        None => task_info.missing |= MISSING_SESSION,
    }
    let parent = read_ptr(task, config!(offsets.task_real_parent));
    let ppid = parent.and_then(|p| read_at::<u32>(p, config!(offsets.task_tgid)));
    let parent_comm = parent.and_then(|p| read_at::<[u8; COMM_LEN]>(p, config!(offsets.task_comm)));
    match (ppid, parent_comm) {
        (Some(ppid), Some(comm)) => {
            task_info.ppid = ppid;
            task_info.parent_comm = comm;
        }
        _ => task_info.missing |= MISSING_PARENT,
    }
    fill_namespaces(task, task_info);
    fill_ancestors(task, task_info);
}

/// The namespaces `/proc/PID/ns/{mnt,pid}` name: the mount namespace in the
/// task's nsproxy, and the pid namespace its pid was allocated in
/// (`task_active_pid_ns`), which `nsproxy.pid_ns_for_children` is not after
/// an `unshare(CLONE_NEWPID)`.
#[inline(always)]
fn fill_namespaces(task: *const u8, task_info: &mut TaskInfo) {
    let mnt_ns = read_ptr(task, config!(offsets.task_nsproxy))
        .and_then(|nsproxy| read_ptr(nsproxy, config!(offsets.nsproxy_mnt_ns)))
        .and_then(|ns| ns_inum(ns, config!(offsets.mnt_namespace_ns)));
    task_info.mnt_ns = mnt_ns.unwrap_or(0);
    if mnt_ns.is_none() {
        task_info.missing |= MISSING_MNT_NS;
    }
    let pid_ns = read_ptr(task, config!(offsets.task_thread_pid))
        .and_then(active_pid_ns)
        .and_then(|ns| ns_inum(ns, config!(offsets.pid_namespace_ns)));
    task_info.pid_ns = pid_ns.unwrap_or(0);
    if pid_ns.is_none() {
        task_info.missing |= MISSING_PID_NS;
    }
}

/// `pid->numbers[pid->level].ns`: the innermost pid namespace of a `struct pid`.
#[inline(always)]
fn active_pid_ns(pid: *const u8) -> Option<*const u8> {
    let level = read_at::<u32>(pid, config!(offsets.pid_level))?;
    let (numbers, stride) = (config!(offsets.pid_numbers), config!(offsets.upid_size));
    if numbers == OFFSET_NONE || stride == OFFSET_NONE {
        return None;
    }
    let upid = numbers.checked_add(level.checked_mul(stride)?)?;
    read_ptr(pid, upid.checked_add(config!(offsets.upid_ns))?)
}

/// The inode number of a namespace whose `struct ns_common` sits at
/// `ns_common_at` in its own struct.
#[inline(always)]
fn ns_inum(ns: *const u8, ns_common_at: u32) -> Option<u32> {
    if ns_common_at == OFFSET_NONE {
        return None;
    }
    read_at::<u32>(
        ns,
        ns_common_at.checked_add(config!(offsets.ns_common_inum))?,
    )
}

/// When `task` started (CLOCK_BOOTTIME), 0 when unknown: with its pid, the
/// identity userspace matches exec records against.
#[inline(always)]
pub(crate) fn start_ns(task: *const u8) -> u64 {
    read_at::<u64>(task, config!(offsets.task_start_boottime)).unwrap_or(0)
}

/// The `real_parent` chain from the parent up, to pid 1 or the idle task, at
/// most `MAX_ANCESTORS` long. An ancestor whose fields cannot all be read
/// ends the chain: it is cut, never padded with guesses.
#[inline(always)]
fn fill_ancestors(task: *const u8, task_info: &mut TaskInfo) {
    task_info.ancestor_count = 0;
    let mut current = task;
    for (depth, slot) in task_info.ancestors.iter_mut().enumerate() {
        let Some(parent) = read_ptr(current, config!(offsets.task_real_parent)) else {
            return;
        };
        let Some(pid) = read_at::<u32>(parent, config!(offsets.task_tgid)) else {
            return;
        };
        // The idle task (pid 0) is its own parent: the chain is complete.
        if parent == current || pid == 0 {
            return;
        }
        let cred = read_ptr(parent, config!(offsets.task_cred));
        let uid = cred.and_then(|cred| read_at::<u32>(cred, config!(offsets.cred_uid)));
        let comm = read_at::<[u8; COMM_LEN]>(parent, config!(offsets.task_comm));
        let (Some(uid), Some(comm)) = (uid, comm) else {
            return;
        };
        slot.pid = pid;
        slot.uid = uid;
        slot.comm = comm;
        slot.start_ns = start_ns(parent);
        task_info.ancestor_count = depth as u32 + 1;
        if pid == 1 {
            return;
        }
        current = parent;
    }
}

/// How the current task was started: whether its parent is a kernel thread
/// (which has no `mm`; only the kernel's usermode helper starts a process
/// from one), and its command line out of its own memory. Taken at a load's
/// entry, while the caller is alive and in its call: /proc may no longer
/// have it by the time userspace reads the record.
#[inline(always)]
pub(crate) fn fill_invocation(invocation: &mut Invocation) {
    // SAFETY: helper call without arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let task_mm = config!(offsets.task_mm);
    invocation.parent = match read_ptr(task, config!(offsets.task_real_parent))
        .and_then(|parent| read_at::<u64>(parent, task_mm))
    {
        Some(0) => PARENT_KERNEL_THREAD,
        Some(_) => PARENT_PROCESS,
        None => PARENT_UNKNOWN,
    };
    invocation._reserved = 0;
    read_argv(task, &mut invocation.argv);
}

/// Reads the argv of the current task again if it was unreadable at entry.
#[inline(always)]
pub(crate) fn retry_argv(invocation: &mut Invocation) {
    if invocation.argv.state == STR_UNREADABLE {
        // SAFETY: helper call without arguments.
        let task = unsafe { bpf_get_current_task() } as *const u8;
        read_argv(task, &mut invocation.argv);
    }
}

/// `mm->arg_start..arg_end` of `task` (the current one): all of it, or its
/// last `ARGV_CAP` bytes when it is longer, where the last argument is.
#[inline(always)]
fn read_argv(task: *const u8, argv: &mut BoundedStr<ARGV_CAP>) {
    argv.len = 0;
    let mm = read_ptr(task, config!(offsets.task_mm));
    let start = mm.and_then(|mm| read_at::<u64>(mm, config!(offsets.mm_arg_start)));
    let end = mm.and_then(|mm| read_at::<u64>(mm, config!(offsets.mm_arg_end)));
    let (Some(start), Some(end)) = (start, end) else {
        argv.state = STR_ABSENT;
        return;
    };
    if start == 0 || end <= start {
        argv.state = STR_ABSENT;
        return;
    }
    let whole = end - start;
    let (from, len, state) = if whole > ARGV_CAP as u64 {
        (end - ARGV_CAP as u64, ARGV_CAP as u32, STR_TRUNCATED)
    } else {
        (start, whole as u32, STR_OK)
    };
    if User::read(argv.bytes.as_mut_ptr() as *mut c_void, len, from) != 0 {
        argv.state = STR_UNREADABLE;
        return;
    }
    argv.len = len;
    argv.state = state;
}

/// Where a string is read from: the two memories have their own helpers.
trait Memory {
    /// Copies a NUL-terminated string; bytes copied (with the NUL) or < 0.
    fn read_str(dst: *mut c_void, size: u32, src: u64) -> i64;
    /// Copies `size` bytes; 0 or < 0.
    fn read(dst: *mut c_void, size: u32, src: u64) -> i64;
}

struct User;
struct Kernel;

impl Memory for User {
    #[inline(always)]
    fn read_str(dst: *mut c_void, size: u32, src: u64) -> i64 {
        // SAFETY: the helper bounds the copy to `size` and reports faults.
        unsafe { bpf_probe_read_user_str(dst, size, src as *const c_void) }
    }
    #[inline(always)]
    fn read(dst: *mut c_void, size: u32, src: u64) -> i64 {
        // SAFETY: as above.
        unsafe { bpf_probe_read_user(dst, size, src as *const c_void) }
    }
}

impl Memory for Kernel {
    #[inline(always)]
    fn read_str(dst: *mut c_void, size: u32, src: u64) -> i64 {
        // SAFETY: as above.
        unsafe { bpf_probe_read_kernel_str(dst, size, src as *const c_void) }
    }
    #[inline(always)]
    fn read(dst: *mut c_void, size: u32, src: u64) -> i64 {
        // SAFETY: as above.
        unsafe { generated::bpf_probe_read_kernel(dst, size, src as *const c_void) }
    }
}

/// Copies a NUL-terminated user string into `out`, recording whether it was
/// cut: the kernel itself accepts longer parameter strings than we keep.
#[inline(always)]
pub(crate) fn user_str<const N: usize>(src: u64, out: &mut BoundedStr<N>) {
    bounded_str::<N, User>(src, out);
}

/// The same for a string in kernel memory.
#[inline(always)]
pub(crate) fn kernel_str<const N: usize>(src: u64, out: &mut BoundedStr<N>) {
    bounded_str::<N, Kernel>(src, out);
}

#[inline(always)]
fn bounded_str<const N: usize, M: Memory>(src: u64, out: &mut BoundedStr<N>) {
    out.len = 0;
    if src == 0 {
        out.state = STR_NULL;
        return;
    }
    let copied = M::read_str(out.bytes.as_mut_ptr() as *mut c_void, N as u32, src);
    if copied < 0 {
        out.state = STR_UNREADABLE;
        return;
    }
    // `copied` counts the NUL the helper writes, except for an empty string,
    // for which some kernels (6.1, 6.12 seen in the VM matrix) return 0.
    out.len = (copied as u64).saturating_sub(1) as u32;
    out.state = if copied as usize == N && byte_follows::<M>(src + N as u64 - 1) {
        STR_TRUNCATED
    } else {
        STR_OK
    };
}

/// Reads a user string again if it was unreadable at entry: by the syscall's
/// exit the kernel has copied it, so its page is resident.
#[inline(always)]
pub(crate) fn retry_user_str<const N: usize>(src: u64, out: &mut BoundedStr<N>) {
    if out.state == STR_UNREADABLE {
        user_str(src, out);
    }
}

/// Whether the byte at `addr` is readable and not NUL, i.e. the string we
/// just copied went on past our capacity.
#[inline(always)]
fn byte_follows<M: Memory>(addr: u64) -> bool {
    let mut byte = 0u8;
    let rc = M::read(&mut byte as *mut u8 as *mut c_void, 1, addr);
    rc == 0 && byte != 0
}

/// What `resolve_fd` found.
pub(crate) struct FileInfo {
    pub flags: u32,
    pub ino: u64,
}

/// Resolves `fd` of the current task to its path, written into `path` leaf
/// first (`name\0parent\0…`), which userspace reverses. Crosses mount points
/// the way d_path does, up to `PATH_MAX_COMPONENTS` components.
#[inline(always)]
pub(crate) fn resolve_fd<const N: usize>(fd: i32, path: &mut BoundedStr<N>) -> FileInfo {
    path.len = 0;
    path.state = modtrace_common::STR_ABSENT;
    let Some(file) = fd_file(fd) else {
        return FileInfo {
            flags: FILE_BAD_FD,
            ino: 0,
        };
    };
    let mut info = FileInfo {
        flags: FILE_RESOLVED,
        ino: 0,
    };
    if let Some(inode) = read_ptr(file, config!(offsets.file_f_inode)) {
        info.ino = read_at::<u64>(inode, config!(offsets.inode_i_ino)).unwrap_or(0);
        if read_at::<u32>(inode, config!(offsets.inode_i_nlink)) == Some(0) {
            info.flags |= FILE_UNLINKED;
        }
    }
    if file_path(file, path) {
        info.flags |= FILE_INTERNAL_MOUNT;
    }
    info
}

/// Writes the path of `file` into `path`, leaf first. Returns true for a
/// pseudo file on an internal mount (see `walk_path`).
#[inline(always)]
pub(crate) fn file_path<const N: usize>(file: *const u8, path: &mut BoundedStr<N>) -> bool {
    path.len = 0;
    let f_path = config!(offsets.file_f_path);
    let (Some(dentry), Some(vfsmount)) = (
        read_ptr(file, f_path.wrapping_add(config!(offsets.path_dentry))),
        read_ptr(file, f_path.wrapping_add(config!(offsets.path_mnt))),
    ) else {
        path.state = STR_UNREADABLE;
        return false;
    };
    walk_path(dentry, vfsmount, path)
}

#[inline(always)]
fn fd_file(fd: i32) -> Option<*const u8> {
    if fd < 0 {
        return None;
    }
    // SAFETY: helper call without arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files = read_ptr(task, config!(offsets.task_files))?;
    let fdt = read_ptr(files, config!(offsets.files_fdt))?;
    let max_fds = read_at::<u32>(fdt, config!(offsets.fdtable_max_fds))?;
    if fd as u32 >= max_fds {
        return None;
    }
    let fd_array = read_ptr(fdt, config!(offsets.fdtable_fd))?;
    read_ptr(fd_array, (fd as u32).wrapping_mul(8))
}

/// Walks from `dentry` up to the root, crossing mounts. Returns true when the
/// walk ended on a dentry that is its own parent without being a mount root: a
/// pseudo file such as a memfd, whose name is then the whole path.
#[inline(always)]
fn walk_path<const N: usize>(
    mut dentry: *const u8,
    vfsmount: *const u8,
    path: &mut BoundedStr<N>,
) -> bool {
    let mount_mnt = config!(offsets.mount_mnt);
    if mount_mnt == OFFSET_NONE {
        path.state = STR_UNREADABLE;
        return false;
    }
    let mut mount = vfsmount.wrapping_sub(mount_mnt as usize);
    let mut mnt_root = read_ptr(vfsmount, config!(offsets.vfsmount_mnt_root));
    path.state = STR_OK;
    for _ in 0..PATH_MAX_COMPONENTS {
        if Some(dentry) == mnt_root {
            let Some(parent_mount) = read_ptr(mount, config!(offsets.mount_mnt_parent)) else {
                break;
            };
            if parent_mount == mount {
                return false;
            }
            let Some(mountpoint) = read_ptr(mount, config!(offsets.mount_mnt_mountpoint)) else {
                break;
            };
            dentry = mountpoint;
            mount = parent_mount;
            mnt_root = read_ptr(
                mount.wrapping_add(mount_mnt as usize),
                config!(offsets.vfsmount_mnt_root),
            );
            continue;
        }
        let parent = read_ptr(dentry, config!(offsets.dentry_d_parent));
        if !append_component(dentry, path) {
            return false;
        }
        match parent {
            Some(parent) if parent != dentry => dentry = parent,
            _ => return true,
        }
    }
    // Components left over: the path is longer than we walk.
    path.state = STR_TRUNCATED;
    false
}

/// Appends `dentry`'s name and its NUL at `path.len`. Returns false (and marks
/// the path truncated or unreadable) when it cannot.
#[inline(always)]
fn append_component<const N: usize>(dentry: *const u8, path: &mut BoundedStr<N>) -> bool {
    // The write position lives in map memory and is read back volatile, so
    // LLVM cannot prove a range for it and keep the mask out: the verifier
    // needs the mask to see that the copy stays inside `bytes`
    // (start < PATH_CAP - NAME_MAX and a copy is at most NAME_MAX bytes).
    // SAFETY: `path.len` is a valid, aligned field.
    let start = (unsafe { core::ptr::read_volatile(&path.len) } as usize) & (PATH_CAP - 1);
    if start >= PATH_CAP - NAME_MAX {
        path.state = STR_TRUNCATED;
        return false;
    }
    let d_name = config!(offsets.dentry_d_name);
    let Some(name) = read_ptr(dentry, d_name.wrapping_add(config!(offsets.qstr_name))) else {
        path.state = STR_UNREADABLE;
        return false;
    };
    // SAFETY: start + NAME_MAX <= PATH_CAP <= N, see above; the helper bounds
    // the copy to NAME_MAX bytes.
    let copied = unsafe {
        bpf_probe_read_kernel_str(
            path.bytes.as_mut_ptr().wrapping_add(start) as *mut c_void,
            NAME_MAX as u32,
            name as *const c_void,
        )
    };
    if copied <= 0 {
        path.state = STR_UNREADABLE;
        return false;
    }
    // The helper's NUL ends the component; no byte is written at a
    // computed offset, which older verifiers (6.1) cannot bound.
    let copied = (copied as usize) & (2 * NAME_MAX - 1);
    path.len = (start + copied) as u32;
    true
}
