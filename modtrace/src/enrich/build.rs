//! A kernel event made into a record: the kernel's capture, and what /proc
//! gave, in the output schema.
use modtrace_common::{
    FinitModuleEvent, KernelEvent, LoadedModule, ModuleRequestEvent, TaskInfo, FILE_BAD_FD,
    FILE_INTERNAL_MOUNT, FILE_RESOLVED, FILE_UNLINKED, MISSING_AUID, MISSING_EUID, MISSING_MNT_NS,
    MISSING_PARENT, MISSING_PID_NS, MISSING_SESSION, STR_TRUNCATED,
};

use super::{
    capture::{c_name, captured, path_from_leaf_first},
    container,
    process::ProcInfo,
};
use crate::record::{
    fields::{self, call_result},
    AncestorRecord, Args, Body, Call, FileArg, ModuleInfo, Namespaces, Parent, Process, Request,
};

pub(super) fn file_arg(event: &FinitModuleEvent) -> FileArg {
    if event.file_flags & FILE_BAD_FD != 0 || event.file_flags & FILE_RESOLVED == 0 {
        let error = if event.file_flags & FILE_BAD_FD != 0 {
            "bad fd"
        } else {
            "unresolved"
        };
        return FileArg {
            path: None,
            truncated: false,
            ino: None,
            unlinked: false,
            memfd: false,
            error: Some(error.into()),
        };
    }
    let unlinked = event.file_flags & FILE_UNLINKED != 0;
    let path = captured(&event.path);
    let truncated = event.path.state == STR_TRUNCATED;
    let rebuilt = path.value.is_some().then(|| {
        let len = (event.path.len as usize).min(event.path.bytes.len());
        path_from_leaf_first(&event.path.bytes[..len], truncated)
    });
    let memfd = event.file_flags & FILE_INTERNAL_MOUNT != 0
        && rebuilt.as_deref().is_some_and(|p| p.starts_with("/memfd:"));
    FileArg {
        path: rebuilt,
        truncated,
        ino: Some(event.ino),
        unlinked,
        memfd,
        error: path.error,
    }
}

/// The syscall's arguments, or the request itself for a `request` event,
/// which has none.
fn args(event: &KernelEvent) -> Result<Args, &ModuleRequestEvent> {
    Ok(match event {
        KernelEvent::InitModule(e) => Args::Init {
            image_addr: format!("{:#x}", e.image_addr),
            image_len: e.image_len,
            params: captured(&e.params),
        },
        KernelEvent::FinitModule(e) => Args::Finit {
            fd: e.fd,
            file: file_arg(e),
            params: captured(&e.params),
            flags: fields::decode_flags(e.flags, fields::FINIT_FLAGS),
        },
        KernelEvent::DeleteModule(e) => Args::Delete {
            name: captured(&e.name),
            flags: fields::decode_flags(e.flags, fields::DELETE_FLAGS),
        },
        KernelEvent::ModuleRequest(request) => return Err(request),
    })
}

fn loaded(module: &LoadedModule) -> Option<ModuleInfo> {
    (module.seen != 0).then(|| ModuleInfo {
        name: Some(c_name(&module.name)),
        taint: Some(fields::taint(module.taints)),
        // Only a failed init frees the module inside its load.
        freed: (module.freed != 0).then_some(true),
        ..ModuleInfo::default()
    })
}

/// What the kernel's module events add to a syscall record.
fn module_info(event: &KernelEvent, module_events: bool) -> Option<ModuleInfo> {
    if !module_events {
        return None;
    }
    match event {
        KernelEvent::InitModule(e) => loaded(&e.module),
        KernelEvent::FinitModule(e) => loaded(&e.module),
        KernelEvent::DeleteModule(e) => Some(ModuleInfo {
            name: captured(&e.name).value,
            freed: Some(e.freed != 0),
            ..ModuleInfo::default()
        }),
        KernelEvent::ModuleRequest(_) => None,
    }
}

fn present(task: &TaskInfo, bit: u32, value: u32) -> Option<u32> {
    (task.missing & bit == 0).then_some(value)
}

fn caller(task: &TaskInfo, own: ProcInfo, parent: ProcInfo) -> (Process, Parent) {
    let has_parent = task.missing & MISSING_PARENT == 0;
    let process = Process {
        pid: task.pid,
        tid: task.tid,
        start_ns: (task.start_ns != 0).then_some(task.start_ns),
        ppid: present(task, MISSING_PARENT, task.ppid),
        uid: task.uid,
        gid: task.gid,
        euid: present(task, MISSING_EUID, task.euid),
        auid: present(task, MISSING_AUID, task.auid),
        session: present(task, MISSING_SESSION, task.session),
        comm: c_name(&task.comm),
        exe: own.exe,
        cmdline: own.cmdline,
        cgroup_id: task.cgroup_id,
        container: own.cgroup.as_deref().and_then(container::container_of),
        systemd_unit: own.cgroup.as_deref().and_then(container::systemd_unit),
        cgroup: own.cgroup,
        namespaces: Namespaces {
            mnt: present(task, MISSING_MNT_NS, task.mnt_ns),
            pid: present(task, MISSING_PID_NS, task.pid_ns),
        },
        ancestors: task
            .ancestors
            .iter()
            .take(task.ancestor_count as usize)
            .map(|a| AncestorRecord {
                pid: a.pid,
                comm: c_name(&a.comm),
                uid: a.uid,
                exe: None,
            })
            .collect(),
    };
    let parent = Parent {
        pid: has_parent.then_some(task.ppid),
        comm: has_parent.then(|| c_name(&task.parent_comm)),
        exe: parent.exe,
        cmdline: parent.cmdline,
    };
    (process, parent)
}

/// The record body for a kernel event, from the kernel's capture and what
/// /proc gave.
pub(super) fn body(
    event: &KernelEvent,
    own: ProcInfo,
    parent: ProcInfo,
    module_events: bool,
) -> Body {
    let (process, parent) = caller(event.task(), own, parent);
    let args = match args(event) {
        Ok(args) => args,
        Err(request) => {
            return Body::Request(Box::new(Request {
                process,
                parent,
                name: captured(&request.name),
                wait: request.wait != 0,
            }))
        }
    };
    let header = event.header();
    let exited = header.exit_ns != 0;
    Body::Call(Box::new(Call {
        duration_ns: exited.then(|| header.exit_ns.saturating_sub(header.enter_ns)),
        exited,
        process,
        parent,
        args,
        result: exited.then(|| call_result(header.ret)),
        module: module_info(event, module_events),
        cause: None,
        enforcement: None,
    }))
}
