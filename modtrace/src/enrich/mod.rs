//! Stage 3: a kernel event becomes a record. The kernel's capture comes
//! first; /proc, the kernel's exec records and the cgroup hierarchy fill in
//! what it could not capture; a load's module image is taken while the
//! caller still holds it, and identified off the ring-buffer loop.
pub mod analysis;
mod build;
mod capture;
mod cause;
mod cgroups;
mod container;
pub mod execs;
pub mod image;
pub mod module_image;
pub mod modules;
pub mod process;
mod snapshot;
pub mod summaries;

use modtrace_common::{EventHeader, KernelEvent, LoadEntryEvent};

use self::{
    cause::{Loader, RecentRequests},
    cgroups::CgroupPaths,
    execs::{ExeAt, ExecTable},
    image::TakenImage,
    process::{ProcCache, ProcInfo, ProcKey, ProcRoot, Wanted},
    snapshot::Snapshots,
};
use crate::record::{fields, Args, Body, RecordId};

/// A record made from a kernel event, before it is judged and written.
pub struct Made {
    pub header: EventHeader,
    pub tgid: u32,
    pub tid: u32,
    pub body: Body,
}

impl Made {
    /// How records name this one (`cause` names the request it serves).
    pub fn id(&self) -> RecordId {
        RecordId::of(&self.header, self.tid)
    }
}

/// Whether a record's process details must be read for it alone.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reading {
    Fresh,
    Shared,
}

/// Everything enrichment remembers between events: the kernel's exec
/// records, the cgroup index, images taken during calls, recent autoload
/// requests, and the details of processes whose failing calls repeat.
pub struct Enricher {
    proc: ProcRoot,
    module_events: bool,
    execs: ExecTable,
    cgroups: CgroupPaths,
    snapshots: Snapshots,
    requests: RecentRequests,
    proc_cache: ProcCache,
}

impl Enricher {
    /// `module_events`: whether the kernel's module tracepoints are
    /// attached (without them records have no `module` object).
    pub fn new(proc: ProcRoot, module_events: bool, execs: ExecTable) -> Self {
        Self {
            cgroups: CgroupPaths::new(&proc),
            proc,
            module_events,
            execs,
            snapshots: Snapshots::default(),
            requests: RecentRequests::default(),
            proc_cache: ProcCache::default(),
        }
    }

    /// Takes the image of a load that has just begun; `still_in_call` asks
    /// the kernel whether the call is still in progress once it is taken.
    pub fn load_began(
        &mut self,
        notice: &LoadEntryEvent,
        still_in_call: impl Fn(u32, u64) -> bool,
    ) {
        self.snapshots.take(notice, still_in_call);
    }

    /// The record of `event`, and the module image its load passed, which
    /// [`TakenImage::analyze`] identifies (off the loop) before it is written.
    pub fn enrich(&mut self, event: &KernelEvent) -> (Made, Option<TakenImage>) {
        let header = event.header();
        let task = event.task();
        // A failing call may be one of a flood: its process's details are
        // shared with its other calls of the moment.
        let failed = header.exit_ns != 0 && header.ret != 0;
        let reading = if failed && !matches!(event, KernelEvent::ModuleRequest(_)) {
            Reading::Shared
        } else {
            Reading::Fresh
        };
        let own = self.process_info(
            ProcKey {
                pid: task.pid,
                start_ns: task.start_ns,
                cgroup_id: Some(task.cgroup_id),
                wanted: Wanted::ALL,
            },
            header.enter_ns,
            reading,
        );
        // The parent's start time, which names it among processes that had
        // its pid, is the first ancestor's.
        let parent_start = task
            .ancestors
            .first()
            .filter(|a| task.ancestor_count > 0 && a.pid == task.ppid)
            .map_or(0, |a| a.start_ns);
        let parent = self.process_info(
            ProcKey {
                pid: task.ppid,
                start_ns: parent_start,
                cgroup_id: None,
                wanted: Wanted {
                    cgroup: false,
                    ..Wanted::ALL
                },
            },
            header.enter_ns,
            reading,
        );
        let mut made = Made {
            header: *header,
            tgid: task.pid,
            tid: task.tid,
            body: build::body(event, own, parent, self.module_events),
        };
        let image = match &mut made.body {
            Body::Call(call) => {
                call.cause = Loader::of(event, call)
                    .and_then(|loader| self.requests.cause_of(header.enter_ns, &loader));
                self.add_ancestor_exes(event, call, reading);
                // Loads are rare and worth the read; floods of failing
                // unloads are not.
                if let Some(module) = call.module.as_mut().filter(|m| m.taint.is_some()) {
                    module.kernel_taint = self.proc.kernel_taint().map(fields::taint);
                }
                let file = match &call.args {
                    Args::Finit { file, .. } => Some(file),
                    _ => None,
                };
                let snapshot = self.snapshots.claim(task.tid, header.enter_ns);
                image::take_image(&self.proc, event, file, snapshot)
            }
            Body::Request(request) => {
                self.requests
                    .remember(RecordId::of(header, task.tid), header.enter_ns, request);
                None
            }
            _ => None,
        };
        (made, image)
    }

    /// The exes of the caller's ancestors: from the kernel's exec records,
    /// which are cheap to ask, and from /proc for loads only.
    fn add_ancestor_exes(
        &mut self,
        event: &KernelEvent,
        call: &mut crate::record::Call,
        reading: Reading,
    ) {
        let task = event.task();
        let is_load = matches!(
            event,
            KernelEvent::InitModule(_) | KernelEvent::FinitModule(_)
        );
        let exe_only = Wanted {
            exe: is_load,
            cmdline: false,
            cgroup: false,
        };
        for (ancestor, captured) in call.process.ancestors.iter_mut().zip(&task.ancestors) {
            let key = ProcKey {
                pid: ancestor.pid,
                start_ns: captured.start_ns,
                cgroup_id: None,
                wanted: exe_only,
            };
            ancestor.exe = self.process_info(key, event.header().enter_ns, reading).exe;
        }
    }

    /// Process `pid`'s details at `at_ns`: its exe and cgroup from what the
    /// kernel captured when it can, and from /proc only what is left of
    /// `key.wanted`. No exe when the process has exec'd since the call:
    /// /proc would show the later program. `key.cgroup_id` is absent when
    /// the caller has no use for the cgroup.
    fn process_info(&mut self, key: ProcKey, at_ns: u64, reading: Reading) -> ProcInfo {
        if reading == Reading::Shared {
            if let Some(info) = self.proc_cache.get(&key, at_ns) {
                return info;
            }
        }
        let info = self.read_process(key, at_ns);
        if reading == Reading::Shared {
            self.proc_cache.put(key, at_ns, &info);
        }
        info
    }

    fn read_process(&mut self, key: ProcKey, at_ns: u64) -> ProcInfo {
        let ProcKey {
            pid,
            start_ns,
            cgroup_id,
            wanted: from_proc,
        } = key;
        let cgroup = cgroup_id.and_then(|id| self.cgroups.path_of(id));
        let exe = self.execs.exe_at(pid, start_ns, at_ns);
        let mut info = self.proc.process(
            pid,
            at_ns,
            Wanted {
                exe: from_proc.exe && exe == ExeAt::NotSeen,
                cgroup: from_proc.cgroup && cgroup.is_none(),
                ..from_proc
            },
        );
        match exe {
            ExeAt::Known(path) => info.exe = Some(path),
            ExeAt::ExecdSince => info.exe = None,
            ExeAt::NotSeen => {}
        }
        if cgroup.is_some() {
            info.cgroup = cgroup;
        }
        info
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::symlink, path::Path};

    use modtrace_common::{
        BoundedStr, DeleteModuleEvent, EventHeader, ModuleRequestEvent, TaskInfo, ABI_VERSION,
        KIND_DELETE_MODULE, KIND_MODULE_REQUEST, STR_OK,
    };

    use super::*;
    use crate::record::{Call, Request};

    /// A process in the fake /proc: started at boot, as far as its stat says.
    fn fake_process(proc: &Path, pid: u32, exe: &str, cmdline: &[&str], cgroup: &str) {
        let dir = proc.join(pid.to_string());
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("stat"),
            format!("{pid} (x) S 1 {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0"),
        )
        .unwrap();
        symlink(exe, dir.join("exe")).unwrap();
        let mut raw = cmdline.join("\0");
        raw.push('\0');
        fs::write(dir.join("cmdline"), raw).unwrap();
        fs::write(dir.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
    }

    fn name<const N: usize>(text: &str) -> BoundedStr<N> {
        let mut bytes = [0u8; N];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        BoundedStr {
            len: text.len() as u32,
            state: STR_OK,
            bytes,
        }
    }

    fn comm(text: &str) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        bytes
    }

    fn header(kind: u16, enter_ns: u64, ret: i64) -> EventHeader {
        // SAFETY: plain data, every bit pattern valid.
        let mut header: EventHeader = unsafe { std::mem::zeroed() };
        header.kind = kind;
        header.abi_version = ABI_VERSION;
        header.enter_ns = enter_ns;
        header.exit_ns = enter_ns + 1000;
        header.ret = ret;
        header
    }

    fn task(pid: u32, ppid: u32, name: &str, parent: &str) -> TaskInfo {
        // SAFETY: plain data, every bit pattern valid.
        let mut task: TaskInfo = unsafe { std::mem::zeroed() };
        task.pid = pid;
        task.tid = pid;
        task.ppid = ppid;
        task.start_ns = 1;
        task.cgroup_id = 7;
        task.comm = comm(name);
        task.parent_comm = comm(parent);
        task
    }

    fn enricher(proc: &Path) -> Enricher {
        fs::create_dir_all(proc.join("sys/kernel")).unwrap();
        fs::write(proc.join("sys/kernel/tainted"), "0\n").unwrap();
        Enricher::new(ProcRoot::at(proc), true, ExecTable::new(None))
    }

    fn call(made: Made) -> Call {
        match made.body {
            Body::Call(call) => *call,
            _ => panic!("a syscall record"),
        }
    }

    #[test]
    fn a_call_gets_its_process_and_parent_from_proc_and_the_rest_from_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        fake_process(
            dir.path(),
            40,
            "/usr/bin/kmod",
            &["rmmod", "dummy"],
            "/user.slice/s.scope",
        );
        fake_process(
            dir.path(),
            30,
            "/usr/bin/bash",
            &["-bash"],
            "/user.slice/s.scope",
        );
        let mut enricher = enricher(dir.path());
        // SAFETY: plain data, every bit pattern valid.
        let mut event: DeleteModuleEvent = unsafe { std::mem::zeroed() };
        event.header = header(KIND_DELETE_MODULE, 5_000_000_000, -2);
        event.task = task(40, 30, "rmmod", "bash");
        event.name = name("dummy");
        let (made, image) = enricher.enrich(&KernelEvent::DeleteModule(Box::new(event)));
        assert!(image.is_none(), "an unload passes no image");
        assert_eq!((made.tgid, made.tid), (40, 40));
        let call = call(made);
        assert_eq!(call.process.exe.as_deref(), Some("/usr/bin/kmod"));
        assert_eq!(
            call.process.cmdline,
            Some(vec!["rmmod".to_owned(), "dummy".to_owned()])
        );
        assert_eq!(call.process.cgroup.as_deref(), Some("/user.slice/s.scope"));
        assert_eq!(call.process.comm, "rmmod");
        assert_eq!(call.parent.exe.as_deref(), Some("/usr/bin/bash"));
        assert_eq!(call.parent.comm.as_deref(), Some("bash"));
        assert_eq!(call.result.map(|r| r.errno), Some(Some("ENOENT".into())));
        let module = call.module.expect("module events are on");
        assert_eq!(
            (module.name.as_deref(), module.freed),
            (Some("dummy"), Some(false))
        );
    }

    #[test]
    fn a_process_that_started_after_the_call_lends_it_nothing() {
        let dir = tempfile::tempdir().unwrap();
        fake_process(dir.path(), 40, "/usr/bin/kmod", &["rmmod"], "/");
        let mut enricher = enricher(dir.path());
        // SAFETY: plain data, every bit pattern valid.
        let mut event: DeleteModuleEvent = unsafe { std::mem::zeroed() };
        // Entered at boot time 0: before the fake process's start.
        event.header = header(KIND_DELETE_MODULE, 0, 0);
        event.task = task(40, 30, "rmmod", "bash");
        let (made, _) = enricher.enrich(&KernelEvent::DeleteModule(Box::new(event)));
        let call = call(made);
        assert_eq!((call.process.exe, call.process.cmdline), (None, None));
        assert_eq!(call.parent.exe, None);
    }

    #[test]
    fn a_load_by_the_kernels_modprobe_names_the_request_it_serves() {
        let dir = tempfile::tempdir().unwrap();
        fake_process(dir.path(), 50, "/usr/bin/python3", &["python3"], "/");
        fake_process(
            dir.path(),
            60,
            "/usr/bin/kmod",
            &["/sbin/modprobe", "-q", "--", "net-pf-10"],
            "/",
        );
        let mut enricher = enricher(dir.path());
        // SAFETY: plain data, every bit pattern valid.
        let mut request: ModuleRequestEvent = unsafe { std::mem::zeroed() };
        request.header = header(KIND_MODULE_REQUEST, 5_000_000_000, 0);
        request.task = task(50, 1, "python3", "systemd");
        request.name = name("net-pf-10");
        request.wait = 1;
        let (made, _) = enricher.enrich(&KernelEvent::ModuleRequest(Box::new(request)));
        let request_id = made.id();
        assert!(
            matches!(&made.body, Body::Request(r) if matches!(**r, Request { wait: true, .. }))
        );
        // A delete_module is no load: no cause.
        // SAFETY: plain data, every bit pattern valid.
        let mut unload: DeleteModuleEvent = unsafe { std::mem::zeroed() };
        unload.header = header(KIND_DELETE_MODULE, 5_100_000_000, 0);
        unload.task = task(60, 2, "modprobe", "kworker/u4:1");
        let (made, _) = enricher.enrich(&KernelEvent::DeleteModule(Box::new(unload)));
        assert!(call(made).cause.is_none());
        // SAFETY: plain data, every bit pattern valid.
        let mut load: modtrace_common::InitModuleEvent = unsafe { std::mem::zeroed() };
        load.header = header(modtrace_common::KIND_INIT_MODULE, 5_200_000_000, 0);
        load.task = task(60, 2, "modprobe", "kworker/u4:1");
        // The kernel started modprobe after the request.
        load.task.start_ns = 5_100_000_000;
        let (made, _) = enricher.enrich(&KernelEvent::InitModule(Box::new(load)));
        let cause = call(made).cause.expect("the request is the cause");
        assert_eq!(cause.request, "net-pf-10");
        assert_eq!(cause.request_id, request_id);
        assert_eq!(cause.matched_by, "cmdline");
        assert_eq!(cause.process.exe.as_deref(), Some("/usr/bin/python3"));
    }

    /// A finit_module by the kernel's modprobe as the kernel side captures it
    /// at entry: its parent a kernel thread, its command line out of its
    /// memory.
    fn kernel_modprobe_load(pid: u32, start_ns: u64, enter_ns: u64, request: &str) -> KernelEvent {
        // SAFETY: plain data, every bit pattern valid.
        let mut load: modtrace_common::FinitModuleEvent = unsafe { std::mem::zeroed() };
        load.header = header(modtrace_common::KIND_FINIT_MODULE, enter_ns, 0);
        load.task = task(pid, 2, "modprobe", "kworker/u4:1");
        load.task.start_ns = start_ns;
        let argv = format!("/sbin/modprobe\0-q\0--\0{request}\0");
        load.invocation.parent = modtrace_common::PARENT_KERNEL_THREAD;
        load.invocation.argv = name(&argv);
        KernelEvent::FinitModule(Box::new(load))
    }

    fn request_by(pid: u32, enter_ns: u64, request: &str) -> KernelEvent {
        // SAFETY: plain data, every bit pattern valid.
        let mut event: ModuleRequestEvent = unsafe { std::mem::zeroed() };
        event.header = header(KIND_MODULE_REQUEST, enter_ns, 0);
        event.task = task(pid, 1, "mtcall", "sh");
        event.name = name(request);
        event.wait = 1;
        KernelEvent::ModuleRequest(Box::new(event))
    }

    /// Read late: both modprobes have exited (no /proc entry), and two
    /// requests are outstanding. The kernel's capture still names each
    /// load's request.
    #[test]
    fn loads_of_modprobes_gone_from_proc_name_their_requests() {
        let dir = tempfile::tempdir().unwrap();
        let mut enricher = enricher(dir.path());
        let (sctp, _) = enricher.enrich(&request_by(50, 1_000_000_000, "net-pf-2-proto-132"));
        let (tipc, _) = enricher.enrich(&request_by(51, 2_000_000_000, "net-pf-30"));
        let expected = [
            (
                60,
                1_100_000_000,
                1_500_000_000,
                "net-pf-2-proto-132",
                sctp.id(),
            ),
            (
                60,
                1_100_000_000,
                1_600_000_000,
                "net-pf-2-proto-132",
                sctp.id(),
            ),
            (61, 2_100_000_000, 2_500_000_000, "net-pf-30", tipc.id()),
        ];
        for (pid, start_ns, enter_ns, request, id) in expected {
            let load = kernel_modprobe_load(pid, start_ns, enter_ns, request);
            let (made, _) = enricher.enrich(&load);
            let call = call(made);
            assert_eq!(call.process.cmdline, None, "gone from /proc");
            let cause = call.cause.expect("a cause");
            assert_eq!(
                (
                    cause.request.as_str(),
                    cause.request_id,
                    cause.matched_by.as_ref()
                ),
                (request, id, "kernel-argv")
            );
        }
        // The same command line from a process a user started: no cause.
        let KernelEvent::FinitModule(mut manual) =
            kernel_modprobe_load(62, 2_100_000_000, 2_600_000_000, "net-pf-30")
        else {
            unreachable!()
        };
        manual.invocation.parent = modtrace_common::PARENT_PROCESS;
        let (made, _) = enricher.enrich(&KernelEvent::FinitModule(manual));
        assert!(call(made).cause.is_none());
    }
}
