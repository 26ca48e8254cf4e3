//! The executables processes ran, as the kernel side recorded them at each
//! exec (modtrace-ebpf/src/execs.rs). /proc only knows the exe of a process
//! that is still alive; a loader or a shell that has exited by the time its
//! record is read is still named here.
use aya::maps::{HashMap, MapData};
use modtrace_common::{ExecEntry, PATH_CAP, STR_OK, STR_TRUNCATED};

use super::capture;

/// What the kernel's exec records say about one process at one moment.
#[derive(Debug, PartialEq, Eq)]
pub enum ExeAt {
    /// Its last exec, which happened before that moment.
    Known(String),
    /// It exec'd again since: neither its record nor /proc says what ran then.
    ExecdSince,
    /// No record of it (it exec'd before modtrace started, was forgotten, or
    /// the kernel could not say which process it was).
    NotSeen,
}

/// The kernel's `EXECS` map, absent when its program could not be attached.
pub struct ExecTable {
    map: Option<HashMap<MapData, u32, ExecEntry>>,
}

impl ExecTable {
    pub fn new(map: Option<HashMap<MapData, u32, ExecEntry>>) -> Self {
        Self { map }
    }

    /// The exe of process `pid` that started at `start_ns`, at `at_ns`
    /// (both CLOCK_BOOTTIME).
    pub fn exe_at(&self, pid: u32, start_ns: u64, at_ns: u64) -> ExeAt {
        match &self.map {
            Some(map) => map
                .get(&pid, 0)
                .map_or(ExeAt::NotSeen, |entry| judge(&entry, start_ns, at_ns)),
            None => ExeAt::NotSeen,
        }
    }
}

fn judge(entry: &ExecEntry, start_ns: u64, at_ns: u64) -> ExeAt {
    // An unknown start time (0) cannot tell this process from another that
    // had the same pid.
    if start_ns == 0 || entry.start_ns != start_ns {
        return ExeAt::NotSeen;
    }
    if entry.exec_ns > at_ns {
        return ExeAt::ExecdSince;
    }
    let path = &entry.path;
    if !matches!(path.state, STR_OK | STR_TRUNCATED) {
        return ExeAt::NotSeen;
    }
    let len = (path.len as usize).min(PATH_CAP);
    ExeAt::Known(capture::path_from_leaf_first(
        &path.bytes[..len],
        path.state == STR_TRUNCATED,
    ))
}

#[cfg(test)]
mod tests {
    use modtrace_common::{BoundedStr, PATH_BUF, STR_UNREADABLE};

    use super::*;

    fn entry(start_ns: u64, exec_ns: u64, leaf_first: &[u8], state: u32) -> ExecEntry {
        let mut path = BoundedStr::<PATH_BUF> {
            len: leaf_first.len() as u32,
            state,
            bytes: [0; PATH_BUF],
        };
        path.bytes[..leaf_first.len()].copy_from_slice(leaf_first);
        ExecEntry {
            start_ns,
            exec_ns,
            path,
        }
    }

    #[test]
    fn names_the_exe_of_that_very_process_at_that_time() {
        let e = entry(100, 200, b"kmod\0bin\0usr\0", STR_OK);
        assert_eq!(judge(&e, 100, 300), ExeAt::Known("/usr/bin/kmod".into()));
        assert_eq!(judge(&e, 100, 200), ExeAt::Known("/usr/bin/kmod".into()));
        // Another process that had the pid, or no way to tell.
        assert_eq!(judge(&e, 101, 300), ExeAt::NotSeen);
        assert_eq!(judge(&e, 0, 300), ExeAt::NotSeen);
        // The same process exec'd something else after the call.
        assert_eq!(judge(&e, 100, 150), ExeAt::ExecdSince);
    }

    #[test]
    fn unreadable_and_truncated_paths() {
        let e = entry(1, 1, b"", STR_UNREADABLE);
        assert_eq!(judge(&e, 1, 2), ExeAt::NotSeen);
        let e = entry(1, 1, b"tool\0deep\0", STR_TRUNCATED);
        assert_eq!(judge(&e, 1, 2), ExeAt::Known("deep/tool".into()));
    }
}
