//! Linking a load to the autoload request that caused it.
//!
//! For `request_module(NAME)` the kernel runs `modprobe -q -- NAME` from a
//! kernel thread (the usermode helper); every init/finit_module call of that
//! modprobe serves the request. At each load's entry the kernel side notes
//! whether the caller's parent is a kernel thread and copies the caller's
//! command line out of its memory (`Invocation`), so the link never depends
//! on modprobe still being alive when userspace reads the record. /proc's
//! command line is the fallback where that capture is missing, and "the only
//! request outstanding" the last resort; several candidates give no cause,
//! never a guess.
use std::collections::VecDeque;

use modtrace_common::{
    Invocation, KernelEvent, PARENT_KERNEL_THREAD, PARENT_PROCESS, STR_OK, STR_TRUNCATED,
};

use crate::record::{Call, Cause, RecordId, Request, Requester};

/// How long a request may wait for its modprobe.
const WINDOW_NS: u64 = 30_000_000_000;
const MAX_REMEMBERED: usize = 256;

/// Where the name of the request a load serves came from (`matched_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MatchedBy {
    /// The last argument of the caller's command line, copied by the kernel
    /// side at the call's entry.
    KernelArgv,
    /// The same, read from /proc when the kernel's copy is missing.
    Cmdline,
    /// No name at all: the only request outstanding.
    KernelHelper,
}

impl MatchedBy {
    fn name(self) -> &'static str {
        match self {
            Self::KernelArgv => "kernel-argv",
            Self::Cmdline => "cmdline",
            Self::KernelHelper => "kernel-helper",
        }
    }
}

/// A process, by pid and start time.
type ProcessId = (u32, u64);

struct Remembered {
    id: RecordId,
    boot_ns: u64,
    name: String,
    requester: Requester,
    /// The modprobe whose loads were linked to it: the kernel runs one per
    /// request, so no other modprobe serves it.
    served_by: Option<ProcessId>,
}

/// What a load says about the process that made it.
pub(super) struct Loader {
    process: ProcessId,
    /// When the caller started (its call's entry when that is unknown): the
    /// request it serves was made before.
    started_ns: u64,
    started_by_kernel: bool,
    /// The request its last argument names, and where that came from.
    named: Option<(String, MatchedBy)>,
}

impl Loader {
    /// The loader of `call`, made by `event`; None for anything but a load.
    pub(super) fn of(event: &KernelEvent, call: &Call) -> Option<Self> {
        let invocation = event.invocation()?;
        let task = event.task();
        let started_by_kernel = match invocation.parent {
            PARENT_KERNEL_THREAD => true,
            PARENT_PROCESS => false,
            _ => looks_started_by_kernel(call),
        };
        let named = match last_argument(invocation) {
            Some(name) => Some((name, MatchedBy::KernelArgv)),
            None => call
                .process
                .cmdline
                .as_ref()
                .and_then(|argv| argv.last())
                .map(|name| (name.clone(), MatchedBy::Cmdline)),
        };
        Some(Self {
            process: (task.pid, task.start_ns),
            started_ns: if task.start_ns != 0 {
                task.start_ns
            } else {
                event.header().enter_ns
            },
            started_by_kernel,
            named,
        })
    }
}

/// The last argument of the command line the kernel copied, when it holds
/// that argument whole: all of the command line, or a tail that reaches back
/// past the argument's start.
fn last_argument(invocation: &Invocation) -> Option<String> {
    let argv = &invocation.argv;
    let whole = match argv.state {
        STR_OK => true,
        STR_TRUNCATED => false,
        _ => return None,
    };
    let bytes = &argv.bytes[..(argv.len as usize).min(argv.bytes.len())];
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    let last = match bytes.iter().rposition(|&b| b == 0) {
        Some(nul) => &bytes[nul + 1..],
        None if whole => bytes,
        // Cut: its start is not in the tail.
        None => return None,
    };
    // No request has an empty name.
    (!last.is_empty()).then(|| crate::record::fields::escape_bytes(last))
}

#[derive(Default)]
pub(super) struct RecentRequests {
    recent: VecDeque<Remembered>,
}

impl RecentRequests {
    /// Notes request record `id`, made at `boot_ns`, for the loads it may
    /// cause.
    pub(super) fn remember(&mut self, id: RecordId, boot_ns: u64, request: &Request) {
        let Some(name) = request.name.value.clone() else {
            return;
        };
        if self.recent.len() == MAX_REMEMBERED {
            self.recent.pop_front();
        }
        let p = &request.process;
        self.recent.push_back(Remembered {
            id,
            boot_ns,
            name,
            requester: Requester {
                pid: p.pid,
                comm: p.comm.clone(),
                uid: p.uid,
                exe: p.exe.clone(),
                cgroup: p.cgroup.clone(),
            },
            served_by: None,
        });
    }

    /// The request served by `loader`'s load, which entered at `enter_ns`:
    /// the one request made before the loader started, within the window,
    /// not served by another modprobe, and named by the loader's last
    /// argument (any name when it has none).
    pub(super) fn cause_of(&mut self, enter_ns: u64, loader: &Loader) -> Option<Cause> {
        self.recent
            .retain(|r| enter_ns.saturating_sub(r.boot_ns) <= WINDOW_NS);
        if !loader.started_by_kernel {
            return None;
        }
        let open = |r: &Remembered| {
            r.boot_ns <= loader.started_ns
                && r.served_by.is_none_or(|other| other == loader.process)
        };
        let (matched, how) = match &loader.named {
            Some((name, how)) => (
                only(
                    self.recent
                        .iter_mut()
                        .filter(|r| open(r) && &r.name == name),
                )?,
                *how,
            ),
            None => (
                only(self.recent.iter_mut().filter(|r| open(r)))?,
                MatchedBy::KernelHelper,
            ),
        };
        matched.served_by = Some(loader.process);
        Some(Cause {
            request_id: matched.id,
            // The request's seq once it is written (`pipeline`).
            request_seq: 0,
            request: matched.name.clone(),
            process: matched.requester.clone(),
            matched_by: how.name().into(),
        })
    }
}

/// The one item, or None when there are none or several.
fn only<T>(mut items: impl Iterator<Item = T>) -> Option<T> {
    let first = items.next()?;
    items.next().is_none().then_some(first)
}

/// Without the kernel's word on the parent (no BTF): the kernel starts
/// modprobe from a kworker thread, or from kthreadd, which have no exe.
fn looks_started_by_kernel(call: &Call) -> bool {
    call.process.comm == "modprobe"
        && call.parent.exe.is_none()
        && call
            .parent
            .comm
            .as_deref()
            .is_some_and(|c| c.starts_with("kworker") || c == "kthreadd")
}

#[cfg(test)]
mod tests {
    use modtrace_common::{BoundedStr, ARGV_CAP, STR_UNREADABLE};

    use super::*;
    use crate::record::fields::Captured;

    fn invocation(bytes: &[u8], state: u32) -> Invocation {
        let mut argv = BoundedStr::<ARGV_CAP> {
            len: bytes.len() as u32,
            state,
            bytes: [0; ARGV_CAP],
        };
        argv.bytes[..bytes.len()].copy_from_slice(bytes);
        Invocation {
            parent: PARENT_KERNEL_THREAD,
            _reserved: 0,
            argv,
        }
    }

    #[test]
    fn the_last_argument_only_when_captured_whole() {
        let modprobe = b"/sbin/modprobe\0-q\0--\0net-pf-10\0";
        let last = |bytes: &[u8], state| last_argument(&invocation(bytes, state));
        assert_eq!(last(modprobe, STR_OK).as_deref(), Some("net-pf-10"));
        // A tail that reaches back past the last argument's start.
        assert_eq!(
            last(b"-q\0--\0sctp\0", STR_TRUNCATED).as_deref(),
            Some("sctp")
        );
        // A tail inside one long argument: its start is not there.
        assert_eq!(last(b"aaaaaaaaaaaa\0", STR_TRUNCATED), None);
        // A whole command line of one argument, with or without its NUL.
        assert_eq!(
            last(b"/sbin/modprobe\0", STR_OK).as_deref(),
            Some("/sbin/modprobe")
        );
        assert_eq!(last(b"net-pf-10", STR_OK).as_deref(), Some("net-pf-10"));
        assert_eq!(last(b"", STR_OK), None);
        assert_eq!(last(b"", STR_UNREADABLE), None);
        assert_eq!(last(modprobe, STR_UNREADABLE), None);
    }

    fn request(name: &str, pid: u32) -> Request {
        let mut process: crate::record::Process = serde_json::from_value(serde_json::json!({
            "pid": pid, "tid": pid, "start_ns": null, "ppid": 1, "uid": 1000, "gid": 1000,
            "euid": 1000, "auid": null, "session": null, "comm": "mtcall", "exe": null,
            "cmdline": null, "cgroup_id": 1, "container": null, "systemd_unit": null,
            "cgroup": null, "namespaces": {"mnt": null, "pid": null}, "ancestors": []
        }))
        .expect("a process record");
        process.exe = Some("/usr/bin/mtcall".into());
        Request {
            process,
            parent: crate::record::Parent {
                pid: Some(1),
                comm: Some("init".into()),
                exe: None,
                cmdline: None,
            },
            name: Captured {
                value: Some(name.into()),
                truncated: false,
                error: None,
            },
            wait: true,
        }
    }

    /// Requests made at 1 s (`net-pf-2-proto-132-type-1`, by pid 50) and
    /// 2 s (`net-pf-30`, by pid 51).
    fn two_outstanding() -> (RecentRequests, RecordId, RecordId) {
        let mut recent = RecentRequests::default();
        let sctp = RecordId {
            tid: 50,
            enter_ns: 1_000_000_000,
        };
        let tipc = RecordId {
            tid: 51,
            enter_ns: 2_000_000_000,
        };
        recent.remember(
            sctp,
            sctp.enter_ns,
            &request("net-pf-2-proto-132-type-1", 50),
        );
        recent.remember(tipc, tipc.enter_ns, &request("net-pf-30", 51));
        (recent, sctp, tipc)
    }

    fn modprobe(pid: u32, started_ns: u64, named: Option<(&str, MatchedBy)>) -> Loader {
        Loader {
            process: (pid, started_ns),
            started_ns,
            started_by_kernel: true,
            named: named.map(|(name, how)| (name.to_owned(), how)),
        }
    }

    const LATE: u64 = 5_000_000_000;

    #[test]
    fn each_modprobe_gets_the_request_its_argument_names() {
        let (mut recent, sctp, tipc) = two_outstanding();
        let second = modprobe(
            61,
            2_100_000_000,
            Some(("net-pf-30", MatchedBy::KernelArgv)),
        );
        let cause = recent.cause_of(LATE, &second).expect("tipc's request");
        assert_eq!(cause.request_id, tipc);
        assert_eq!(cause.request, "net-pf-30");
        assert_eq!(cause.process.pid, 51);
        assert_eq!(cause.process.exe.as_deref(), Some("/usr/bin/mtcall"));
        assert_eq!(cause.matched_by, "kernel-argv");
        let first = modprobe(
            60,
            1_100_000_000,
            Some(("net-pf-2-proto-132-type-1", MatchedBy::KernelArgv)),
        );
        assert_eq!(recent.cause_of(LATE, &first).unwrap().request_id, sctp);
        // The next load of the same modprobe (the module after its
        // dependency) serves the same request.
        assert_eq!(recent.cause_of(LATE + 1, &first).unwrap().request_id, sctp);
        // /proc's command line names it the same way, and says so.
        let by_proc = modprobe(61, 2_100_000_000, Some(("net-pf-30", MatchedBy::Cmdline)));
        assert_eq!(
            recent.cause_of(LATE, &by_proc).unwrap().matched_by,
            "cmdline"
        );
    }

    #[test]
    fn no_cause_rather_than_a_guess() {
        let (mut recent, _, tipc) = two_outstanding();
        // A process a user started, whatever its arguments.
        let mut manual = modprobe(
            70,
            2_100_000_000,
            Some(("net-pf-30", MatchedBy::KernelArgv)),
        );
        manual.started_by_kernel = false;
        assert!(recent.cause_of(LATE, &manual).is_none());
        // A modprobe that started before the request was made.
        let early = modprobe(
            71,
            1_500_000_000,
            Some(("net-pf-30", MatchedBy::KernelArgv)),
        );
        assert!(recent.cause_of(LATE, &early).is_none());
        // A name no request had.
        let other = modprobe(
            72,
            2_100_000_000,
            Some(("net-pf-99", MatchedBy::KernelArgv)),
        );
        assert!(recent.cause_of(LATE, &other).is_none());
        // No name and two requests outstanding.
        let unnamed = modprobe(73, 2_100_000_000, None);
        assert!(recent.cause_of(LATE, &unnamed).is_none());
        // Two requests of one name before the modprobe started.
        recent.remember(
            RecordId {
                tid: 52,
                enter_ns: 2_500_000_000,
            },
            2_500_000_000,
            &request("net-pf-30", 52),
        );
        let late = modprobe(
            74,
            2_600_000_000,
            Some(("net-pf-30", MatchedBy::KernelArgv)),
        );
        assert!(recent.cause_of(LATE, &late).is_none());
        // Once one of them is served, the other is the only candidate.
        let first = modprobe(
            61,
            2_100_000_000,
            Some(("net-pf-30", MatchedBy::KernelArgv)),
        );
        assert_eq!(recent.cause_of(LATE, &first).unwrap().request_id, tipc);
        assert_eq!(
            recent.cause_of(LATE, &late).unwrap().request_id.tid,
            52,
            "the request made after the first modprobe's"
        );
        // Past the window, nothing is outstanding.
        let stale = modprobe(
            75,
            2_600_000_000,
            Some(("net-pf-30", MatchedBy::KernelArgv)),
        );
        assert!(recent.cause_of(LATE + WINDOW_NS, &stale).is_none());
    }

    #[test]
    fn without_a_name_the_only_request_outstanding() {
        let (mut recent, sctp, tipc) = two_outstanding();
        let named = modprobe(
            60,
            2_100_000_000,
            Some(("net-pf-30", MatchedBy::KernelArgv)),
        );
        assert_eq!(recent.cause_of(LATE, &named).unwrap().request_id, tipc);
        // The tipc request is served: sctp's is the only one left.
        let unnamed = modprobe(61, 2_100_000_000, None);
        let cause = recent.cause_of(LATE, &unnamed).expect("the one left");
        assert_eq!(
            (cause.request_id, cause.matched_by.as_ref()),
            (sctp, "kernel-helper")
        );
    }
}
