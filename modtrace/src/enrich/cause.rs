//! Linking a load to the autoload request that caused it.
//!
//! For `request_module(NAME)` the kernel runs `modprobe -q -- NAME` from a
//! kernel helper thread; every init/finit_module call of that modprobe serves
//! the request. The link is made on modprobe's command line when it is still
//! readable, else on being a kernel-started modprobe while exactly one request
//! is outstanding, and never on a guess between several.
use std::collections::VecDeque;

use crate::record::{Args, Call, Cause, RecordId, Request, Requester};

/// How long a request may wait for its modprobe.
const WINDOW_NS: u64 = 30_000_000_000;
const MAX_REMEMBERED: usize = 256;

struct Remembered {
    id: RecordId,
    boot_ns: u64,
    name: String,
    requester: Requester,
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
        });
    }

    /// The request `call` serves, if it is a load by the kernel's modprobe.
    pub(super) fn cause_of(&mut self, boot_ns: u64, call: &Call) -> Option<Cause> {
        self.recent
            .retain(|r| boot_ns.saturating_sub(r.boot_ns) <= WINDOW_NS);
        if !matches!(call.args, Args::Init { .. } | Args::Finit { .. }) {
            return None;
        }
        let in_window = || self.recent.iter().filter(|r| r.boot_ns <= boot_ns);
        let by_cmdline = call.process.cmdline.as_ref().and_then(|argv| {
            let requested = argv.last()?;
            in_window().rfind(|r| &r.name == requested)
        });
        let (matched, how) = match by_cmdline {
            Some(r) => (r, "cmdline"),
            None if started_by_kernel(call) => {
                let mut candidates = in_window();
                match (candidates.next(), candidates.next()) {
                    (Some(only), None) => (only, "kernel-helper"),
                    _ => return None,
                }
            }
            None => return None,
        };
        Some(Cause {
            request_id: matched.id,
            // The request's seq once it is written (`pipeline`).
            request_seq: 0,
            request: matched.name.clone(),
            process: matched.requester.clone(),
            matched_by: how.into(),
        })
    }
}

/// The kernel starts modprobe from a kworker thread (call_usermodehelper),
/// so its parent is a kernel thread: no exe.
fn started_by_kernel(call: &Call) -> bool {
    call.process.comm == "modprobe"
        && call.parent.exe.is_none()
        && call
            .parent
            .comm
            .as_deref()
            .is_some_and(|c| c.starts_with("kworker") || c == "kthreadd")
}
