//! The module image of a load, taken while the call is in progress.
//!
//! The kernel notices a load's entry (`LoadEntryEvent`); at once userspace
//! copies init_module's buffer out of the caller, or opens finit_module's fd
//! through /proc. A caller that frees its buffer or closes its fd right after
//! the call (kmod does both) can then no longer hide the image, and an open
//! fd keeps exactly the file the kernel reads, even a memfd or a file
//! unlinked or replaced since.
use std::{collections::HashMap, fs::File};

use modtrace_common::{LoadEntryEvent, KIND_INIT_MODULE};

use super::{image::read_caller_memory, module_image::Limits};

/// What was taken at the call's entry notice, or why nothing could be.
pub struct Snapshot {
    pub taken: Taken,
    /// The call was still in the kernel after the copy (its pending entry
    /// still there), so the copy is of what the call itself passed.
    pub during_call: bool,
}

pub enum Taken {
    Memory(Result<Vec<u8>, String>),
    Fd(Result<File, String>),
}

/// Bounded: each snapshot may hold an image of up to `Limits::max_file`.
const MAX_HELD: usize = 16;

#[derive(Default)]
pub(super) struct Snapshots {
    /// By thread: a thread is in one syscall at a time.
    held: HashMap<u32, (u64, Snapshot)>,
}

impl Snapshots {
    /// Takes the image now; `still_in_call` asks the kernel's pending map
    /// whether the call is still in progress once the copy is made.
    pub(super) fn take(
        &mut self,
        notice: &LoadEntryEvent,
        still_in_call: impl Fn(u32, u64) -> bool,
    ) {
        let taken = if notice.syscall == u32::from(KIND_INIT_MODULE) {
            Taken::Memory(read_caller_memory(
                notice.pid,
                notice.image_addr,
                notice.image_len,
                &Limits::default(),
            ))
        } else {
            Taken::Fd(open_caller_fd(notice.pid, notice.fd))
        };
        let during_call = still_in_call(notice.tid, notice.header.enter_ns);
        let snapshot = Snapshot { taken, during_call };
        if self.held.len() >= MAX_HELD {
            // The oldest call is the likeliest to have been lost.
            if let Some(&oldest) = self
                .held
                .iter()
                .min_by_key(|(_, (ns, _))| *ns)
                .map(|(tid, _)| tid)
            {
                self.held.remove(&oldest);
            }
        }
        self.held
            .insert(notice.tid, (notice.header.enter_ns, snapshot));
    }

    /// The snapshot of the call that thread `tid` entered at `enter_ns`.
    pub(super) fn claim(&mut self, tid: u32, enter_ns: u64) -> Option<Snapshot> {
        match self.held.remove(&tid) {
            Some((ns, snapshot)) if ns == enter_ns => Some(snapshot),
            Some(other) => {
                self.held.insert(tid, other);
                None
            }
            None => None,
        }
    }
}

fn open_caller_fd(pid: u32, fd: i32) -> Result<File, String> {
    if fd < 0 {
        return Err(format!("fd {fd} names no file"));
    }
    let link = format!("/proc/{pid}/fd/{fd}");
    File::open(&link).map_err(|e| format!("opening {link} during the call: {e}"))
}
