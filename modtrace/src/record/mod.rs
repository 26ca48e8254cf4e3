//! The output schema (docs/output.md): what one line of NDJSON holds. Every
//! stage may use it; it uses none of them.
use std::collections::BTreeMap;

use modtrace_common::{KIND_DELETE_MODULE, KIND_FINIT_MODULE, KIND_INIT_MODULE};
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

pub mod fields;
pub mod image;
pub mod judgement;

use self::{
    fields::{CallResult, Captured, Flags},
    image::ImageReport,
    judgement::{Alert, Evaluation, PolicyInfo, PolicyReload},
};

pub const SCHEMA_VERSION: u32 = 1;

/// A name the output takes from a fixed set: static as `watch` makes it,
/// owned when a record is read back.
pub type Text = Cow<'static, str>;

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
    pub policy: Option<&'a Evaluation>,
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
    Alert(Alert),
    PolicyReload(PolicyReload),
    Enforcement(Denials),
    EnforceCommand(EnforceCommand),
}

#[derive(Debug, Clone, Serialize)]
pub struct Start {
    pub modtrace_version: &'static str,
    pub kernel: String,
    pub boot_id: Option<String>,
    pub btf: bool,
    pub strategies: BTreeMap<&'static str, &'static str>,
    /// For each syscall, the better strategies passed over, best first, and
    /// why; empty when the best one serves it (or the one forced).
    pub refused_strategies: BTreeMap<&'static str, Vec<RefusedStrategy>>,
    /// Whether the kernel's module tracepoints (load, free, request) are
    /// attached; without them records carry no `module` object and no
    /// `request` records appear.
    pub module_events: bool,
    /// Modules already loaded when modtrace started, from /proc/modules.
    pub loaded_modules: Vec<PreloadedModule>,
    /// Fields this kernel cannot provide, rendered as null in every record.
    pub unavailable_fields: Vec<&'static str>,
    /// The policy in force: its source and sha256.
    pub policy: PolicyInfo,
    /// The window in which alerts of one rule from one process repeat into
    /// one (0: every alert is written); replay takes it from here.
    pub alert_window_s: u64,
    /// `watch --enforce`: the deny rules are enforced in the kernel.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub enforcing: bool,
}

/// An attach strategy that could not serve a syscall.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedStrategy {
    pub strategy: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
/// A module loaded before modtrace started, from /proc/modules.
pub struct PreloadedModule {
    pub name: String,
    pub size: u64,
    /// Taint letters as the kernel lists them, e.g. "OE"; empty when clean.
    pub taint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Call {
    pub duration_ns: Option<u64>,
    /// False when the exit was not seen: the task died inside the syscall,
    /// or the kernel skipped the exit program (`Stop::skipped_runs`).
    pub exited: bool,
    pub process: Process,
    pub parent: Parent,
    pub args: Args,
    pub result: Option<CallResult>,
    pub module: Option<ModuleInfo>,
    /// The autoload request this call serves, when the kernel started it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    /// Under `watch --enforce`: the call was denied in the kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<Enforcement>,
}

/// A load the kernel denied: which deny rule, at which LSM hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enforcement {
    pub denied: bool,
    pub rule: String,
    pub hook: String,
}

/// Denials counted in the kernel per deny rule: totals since `watch`
/// started, and, in an `enforcement` record, those since the last one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Denials {
    pub denials: BTreeMap<String, u64>,
    pub total: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<BTreeMap<String, u64>>,
    /// In the `enforcement` record a collector writes at start when it took
    /// over pinned enforcement: what was in force until then. `denials` and
    /// `total` are then that policy's, since it was switched in, and `new`
    /// those no collector had reported (made while none ran, or in the last
    /// fifth of a second of one that was killed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousEnforcement>,
}

/// An `enforce_command` record: one `modtrace enforce release|allow|lock`
/// (modtrace/src/enforcement.rs), as it logged itself; written by the
/// collector running then, or else by the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnforceCommand {
    /// When the command ran (RFC 3339).
    pub at: String,
    pub by_pid: u32,
    pub by_uid: u32,
    pub by_exe: Option<String>,
    #[serde(flatten)]
    pub command: EnforceCommandKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum EnforceCommandKind {
    /// Enforcement ended: the policy released and its denials since it was
    /// switched in.
    Release {
        policy_sha256: String,
        policy_source: String,
        denials: BTreeMap<String, u64>,
    },
    /// `module` may load until `until`, whatever denies it.
    Allow {
        module: String,
        until: String,
        seconds: u64,
    },
    /// Loading locked: only the `kept` modules (those loaded then, and
    /// `also`) may load from now on.
    Lock { kept: usize, also: Vec<String> },
}

/// The pinned enforcement a collector found at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PreviousEnforcement {
    /// When the programs were first pinned (RFC 3339).
    pub pinned_since: String,
    /// When the previous policy was switched in.
    pub active_since: String,
    pub policy_sha256: String,
    pub policy_source: String,
    /// Its programs came from another build of modtrace and were replaced
    /// (both denied meanwhile); otherwise this collector's policy was
    /// switched into them.
    pub replaced: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModuleInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub taint: Option<fields::Taint>,
    /// The kernel's taint (/proc/sys/kernel/tainted) when the record was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_taint: Option<fields::Taint>,
    /// delete_module: whether the module really left the kernel; a load:
    /// true when its init failed and the kernel freed it inside the call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freed: Option<bool>,
    /// init/finit_module: the image the call passed, identified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageReport>,
}

/// Which record a record is, independent of when it is written: the thread
/// that made the call and when it entered it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RecordId {
    pub tid: u32,
    pub enter_ns: u64,
}

impl RecordId {
    pub fn of(header: &modtrace_common::EventHeader, tid: u32) -> Self {
        Self {
            tid,
            enter_ns: header.enter_ns,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cause {
    /// The request record, until its seq is known.
    #[serde(skip)]
    pub request_id: RecordId,
    pub request_seq: u64,
    pub request: String,
    pub process: Requester,
    /// How the link was made: `cmdline` (modprobe's argument names the
    /// request) or `kernel-helper` (a modprobe started by the kernel while the
    /// request was the only one outstanding).
    pub matched_by: Text,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    pub container: Option<Container>,
    /// Its systemd service, as its cgroup path names it.
    pub systemd_unit: Option<String>,
    /// Absent from records of modtrace before 0.1's namespaces: unknown.
    #[serde(default)]
    pub namespaces: Namespaces,
    /// The `real_parent` chain from the parent up to pid 1, captured in the
    /// kernel at the call (at most 8 deep).
    #[serde(default)]
    pub ancestors: Vec<AncestorRecord>,
}

/// The container a process runs in, as its cgroup path names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// `docker`, `containerd`, `cri-o`, `podman`, or `unknown` for a
    /// Kubernetes container whose runtime the path does not name.
    pub runtime: Text,
    pub id: String,
    /// The Kubernetes pod uid, when the path shows one.
    pub pod_uid: Option<String>,
}

/// Namespace inode numbers, as `/proc/PID/ns/*` links show them
/// (`mnt:[4026531841]`); null when this kernel's BTF lacks a field on the way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Namespaces {
    pub mnt: Option<u32>,
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AncestorRecord {
    pub pid: u32,
    pub comm: String,
    pub uid: u32,
    /// From /proc, only while the pid still names this very process.
    pub exe: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Parent {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub cmdline: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileArg {
    pub path: Option<String>,
    pub truncated: bool,
    pub ino: Option<u64>,
    pub unlinked: bool,
    pub memfd: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Text>,
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
    /// Runs of each program the kernel skipped because another run of it
    /// was in progress on the same CPU (kernel/skipped.rs); null where the
    /// kernel does not count them (before 5.12).
    pub skipped_runs: Option<BTreeMap<String, u64>>,
    /// Under `watch --enforce`: whether enforcement ended with this run
    /// (`--release-on-exit`); otherwise it stays in force, pinned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforcement_released: Option<bool>,
    /// Under `watch --enforce`: the denials of the whole run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<Denials>,
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
