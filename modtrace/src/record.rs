//! The output schema (docs/output.md): what one line of NDJSON holds.
use std::collections::BTreeMap;

use modtrace_common::{
    FinitModuleEvent, LoadedModule, ModuleRequestEvent, TaskInfo, FILE_BAD_FD, FILE_INTERNAL_MOUNT,
    FILE_RESOLVED, FILE_UNLINKED, KIND_DELETE_MODULE, KIND_FINIT_MODULE, KIND_INIT_MODULE,
    MISSING_AUID, MISSING_EUID, MISSING_MNT_NS, MISSING_PARENT, MISSING_PID_NS, MISSING_SESSION,
    STR_TRUNCATED,
};
use serde::Serialize;

use crate::{
    decode::KernelEvent,
    enrich::ProcInfo,
    fields::{self, call_result, captured, CallResult, Captured, Flags},
};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub kind: &'a str,
    pub schema: u32,
    pub ts: &'a str,
    pub seq: u64,
    pub host: &'a str,
    #[serde(flatten)]
    pub body: &'a Body,
    /// The policy's judgement of a syscall record, last (docs/policy.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<&'a crate::policy::Evaluation>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Body {
    Start(Start),
    Call(Box<Call>),
    Request(Box<Request>),
    Loss(Loss),
    Summary(Summary),
    Stop(Stop),
    Alert(crate::policy::Alert),
    PolicyReload(crate::policy::PolicyReload),
}

#[derive(Debug, Clone, Serialize)]
pub struct Start {
    pub modtrace_version: &'static str,
    pub kernel: String,
    pub boot_id: Option<String>,
    pub btf: bool,
    pub strategies: BTreeMap<&'static str, &'static str>,
    /// Whether the kernel's module tracepoints (load, free, request) are
    /// attached; without them records carry no `module` object and no
    /// `request` records appear.
    pub module_events: bool,
    /// Modules already loaded when modtrace started, from /proc/modules.
    pub loaded_modules: Vec<crate::modules::LoadedModule>,
    /// Fields this kernel cannot provide, rendered as null in every record.
    pub unavailable_fields: Vec<&'static str>,
    /// The policy in force: its source and sha256.
    pub policy: crate::policy::PolicyInfo,
    /// The window in which alerts of one rule from one process repeat into
    /// one (0: every alert is written); replay takes it from here.
    pub alert_window_s: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Call {
    pub duration_ns: Option<u64>,
    /// False when the task died inside the syscall: no result exists.
    pub exited: bool,
    pub process: Process,
    pub parent: Parent,
    pub args: Args,
    pub result: Option<CallResult>,
    pub module: Option<ModuleInfo>,
    /// The autoload request this call serves, when the kernel started it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ModuleInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub taint: Option<fields::Taint>,
    /// The kernel's taint (/proc/sys/kernel/tainted) when the record was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_taint: Option<fields::Taint>,
    /// delete_module: whether the module really left the kernel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freed: Option<bool>,
    /// init/finit_module: the image the call passed, identified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<crate::enrich::ImageReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cause {
    pub request_seq: u64,
    pub request: String,
    pub process: Requester,
    /// How the link was made: `cmdline` (modprobe's argument names the
    /// request) or `kernel-helper` (a modprobe started by the kernel while the
    /// request was the only one outstanding).
    pub matched_by: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Requester {
    pub pid: u32,
    pub comm: String,
    pub uid: u32,
    pub exe: Option<String>,
    pub cgroup: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Request {
    pub process: Process,
    pub parent: Parent,
    pub name: Captured,
    pub wait: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Process {
    pub pid: u32,
    pub tid: u32,
    /// When the calling thread started (`task_struct.start_boottime`, ns of
    /// CLOCK_BOOTTIME), null when unknown: with the pid, which process of
    /// all that had the pid this is.
    pub start_ns: Option<u64>,
    pub ppid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    pub euid: Option<u32>,
    /// 4294967295 is the kernel's "unset" (no login session).
    pub auid: Option<u32>,
    pub session: Option<u32>,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Option<Vec<String>>,
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    /// The container the process runs in, as its cgroup path names it.
    pub container: Option<crate::container::Container>,
    /// Its systemd service, as its cgroup path names it.
    pub systemd_unit: Option<String>,
    pub namespaces: Namespaces,
    /// The `real_parent` chain from the parent up to pid 1, captured in the
    /// kernel at the call (at most 8 deep).
    pub ancestors: Vec<AncestorRecord>,
}

/// Namespace inode numbers, as `/proc/PID/ns/*` links show them
/// (`mnt:[4026531841]`); null when this kernel's BTF lacks a field on the way.
#[derive(Debug, Clone, Serialize)]
pub struct Namespaces {
    pub mnt: Option<u32>,
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AncestorRecord {
    pub pid: u32,
    pub comm: String,
    pub uid: u32,
    /// From /proc, only while the pid still names this very process.
    pub exe: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Parent {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub cmdline: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Args {
    Init {
        image_addr: String,
        image_len: u64,
        params: Captured,
    },
    Finit {
        fd: i32,
        file: FileArg,
        params: Captured,
        flags: Flags,
    },
    Delete {
        name: Captured,
        flags: Flags,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileArg {
    pub path: Option<String>,
    pub truncated: bool,
    pub ino: Option<u64>,
    pub unlinked: bool,
    pub memfd: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LossCounts {
    pub ringbuf_full: u64,
    pub entry_missing: u64,
    pub pending_full: u64,
}

impl LossCounts {
    pub fn total(&self) -> u64 {
        self.ringbuf_full + self.entry_missing + self.pending_full
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Loss {
    pub lost: LossCounts,
    pub total: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EventCounts {
    pub init_module: u64,
    pub finit_module: u64,
    pub delete_module: u64,
    pub request: u64,
    pub total: u64,
}

impl EventCounts {
    /// Adds `calls` of `EventHeader::kind` `kind` (a request unless a syscall).
    pub fn add(&mut self, kind: u16, calls: u64) {
        let slot = match kind {
            KIND_INIT_MODULE => &mut self.init_module,
            KIND_FINIT_MODULE => &mut self.finit_module,
            KIND_DELETE_MODULE => &mut self.delete_module,
            _ => &mut self.request,
        };
        *slot += calls;
        self.total += calls;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LostTotals {
    #[serde(flatten)]
    pub counts: LossCounts,
    pub total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stop {
    pub events: EventCounts,
    /// Calls counted in the kernel and reported in `summary` records instead
    /// of one by one: with `events` and `lost`, every call made.
    pub aggregated: EventCounts,
    pub lost: LostTotals,
}

/// Calls of one process counted in the kernel instead of reported, over one
/// aggregation window (docs/output.md, `summary`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The kind of the calls: a syscall, or `request`.
    pub syscall: &'static str,
    pub process: SummaryProcess,
    /// The result every call counted here had; null for requests.
    pub result: Option<CallResult>,
    /// `repeats`: calls with the same arguments as record `repeats_of`;
    /// `distinct`: calls with other arguments than any reported, past the
    /// process's budget of full reports.
    pub elided: &'static str,
    pub count: u64,
    /// The seq of the record these calls repeat; null when that record was
    /// lost, or for `distinct`.
    pub repeats_of: Option<u64>,
    /// Calls reported in full under this key in the window: the repeated
    /// call's reports, or for `distinct` the distinct calls reported.
    pub reported: u64,
    pub first: String,
    pub last: String,
    pub window_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SummaryProcess {
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
}

pub fn file_arg(event: &FinitModuleEvent) -> FileArg {
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
            error: Some(error),
        };
    }
    let unlinked = event.file_flags & FILE_UNLINKED != 0;
    let path = captured(&event.path);
    let truncated = event.path.state == STR_TRUNCATED;
    let rebuilt = path.value.is_some().then(|| {
        let len = (event.path.len as usize).min(event.path.bytes.len());
        fields::path_from_leaf_first(&event.path.bytes[..len], truncated)
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
        name: Some(fields::c_name(&module.name)),
        taint: Some(fields::taint(module.taints)),
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
        comm: fields::c_name(&task.comm),
        exe: own.exe,
        cmdline: own.cmdline,
        cgroup_id: task.cgroup_id,
        container: own
            .cgroup
            .as_deref()
            .and_then(crate::container::container_of),
        systemd_unit: own
            .cgroup
            .as_deref()
            .and_then(crate::container::systemd_unit),
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
                comm: fields::c_name(&a.comm),
                uid: a.uid,
                exe: None,
            })
            .collect(),
    };
    let parent = Parent {
        pid: has_parent.then_some(task.ppid),
        comm: has_parent.then(|| fields::c_name(&task.parent_comm)),
        exe: parent.exe,
        cmdline: parent.cmdline,
    };
    (process, parent)
}

/// The record body for a kernel event, from the kernel's capture and what
/// /proc gave.
pub fn body(event: &KernelEvent, own: ProcInfo, parent: ProcInfo, module_events: bool) -> Body {
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
    }))
}
