//! What /proc adds to a kernel record: executable, command line, cgroup path.
//! Read at the time the record arrives; if the process is gone or the pid now
//! belongs to a process that started after the call, the fields stay empty.
use std::{
    fs,
    io::{self, Read as _},
    path::{Path, PathBuf},
};

use crate::record::fields::escape_bytes;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub exe: Option<String>,
    pub cmdline: Option<Vec<String>>,
    pub cgroup: Option<String>,
}

/// Which of a process's details to read from /proc: those the kernel's own
/// records have not already settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Wanted {
    pub exe: bool,
    pub cmdline: bool,
    pub cgroup: bool,
}

impl Wanted {
    pub const ALL: Self = Self {
        exe: true,
        cmdline: true,
        cgroup: true,
    };

    fn any(self) -> bool {
        self.exe || self.cmdline || self.cgroup
    }
}

/// The /proc the details are read from: the host's, or in tests a
/// directory laid out like it.
#[derive(Debug, Clone)]
pub struct ProcRoot(PathBuf);

impl Default for ProcRoot {
    fn default() -> Self {
        Self(PathBuf::from("/proc"))
    }
}

impl ProcRoot {
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Reads the `wanted` details of `pid` if that pid still names the
    /// process that was running at `event_boot_ns` (CLOCK_BOOTTIME).
    ///
    /// The pid is checked once, after the reads: if it then names a live
    /// process that started by the event, that process held the pid from
    /// before the event until after the reads (two live processes never
    /// share a pid, and the dead do not come back), so the reads were of it.
    /// Otherwise they are dropped, whatever they read. A check before the
    /// reads as well cost a /proc read per record on the loop that delivers
    /// them. A process found gone by its first read ends the reading there.
    pub fn process(&self, pid: u32, event_boot_ns: u64, wanted: Wanted) -> ProcInfo {
        if !wanted.any() {
            return ProcInfo::default();
        }
        let dir = self.0.join(pid.to_string());
        // Set when a file every process has is missing: the process is gone.
        // Not by exe, which kernel threads lack.
        let mut gone = false;
        let cmdline = unless_gone(&mut gone, wanted.cmdline, || {
            read_proc_file(&dir.join("cmdline"))
        });
        let cgroup = unless_gone(&mut gone, wanted.cgroup, || {
            read_proc_file(&dir.join("cgroup"))
        });
        let mut exe_missing = false;
        let exe = unless_gone(&mut exe_missing, wanted.exe && !gone, || {
            fs::read_link(dir.join("exe"))
        });
        if gone || !self.started_by(pid, event_boot_ns) {
            return ProcInfo::default();
        }
        ProcInfo {
            exe: exe.map(|p| p.to_string_lossy().into_owned()),
            cmdline: cmdline.and_then(|raw| parse_cmdline(&raw)),
            cgroup: cgroup
                .and_then(|raw| String::from_utf8(raw).ok())
                .and_then(|s| parse_cgroup(&s)),
        }
    }

    /// Whether `pid` exists, is not exiting, and started no later than the
    /// event. An exiting process's /proc files can read partly torn down (a
    /// command line cut short was seen), so it counts as gone.
    pub fn started_by(&self, pid: u32, event_boot_ns: u64) -> bool {
        read_proc_text(&self.0.join(format!("{pid}/stat")))
            .and_then(|stat| live_start_ticks(&stat))
            .is_some_and(|ticks| ticks_to_ns(ticks) <= event_boot_ns)
    }

    /// The kernel's taint (sys/kernel/tainted) now, just after a load.
    pub fn kernel_taint(&self) -> Option<u64> {
        read_proc_text(&self.0.join("sys/kernel/tainted"))?
            .trim()
            .parse()
            .ok()
    }
}

/// Reads a /proc file whole, in as few reads as it takes: /proc gives its
/// files a length of 0, from which `fs::read` starts with a 32-byte probe
/// and grows, six reads and a statx for a 300-byte stat line. These reads
/// happen on the loop that delivers records, a few per record.
pub fn read_proc_file(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = fs::File::open(path)?;
    // A stat line, a status file or most command lines in one read.
    let mut chunk = [0u8; 4096];
    let mut bytes = Vec::new();
    loop {
        match file.read(&mut chunk) {
            Ok(0) => return Ok(bytes),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

/// [`read_proc_file`] as text; None if unreadable or not UTF-8.
pub fn read_proc_text(path: &Path) -> Option<String> {
    String::from_utf8(read_proc_file(path).ok()?).ok()
}

/// `read()` if `wanted` and no earlier read found the process gone; a
/// missing file marks it gone.
fn unless_gone<T>(
    gone: &mut bool,
    wanted: bool,
    read: impl FnOnce() -> io::Result<T>,
) -> Option<T> {
    if !wanted || *gone {
        return None;
    }
    match read() {
        Ok(value) => Some(value),
        Err(err) => {
            *gone = err.kind() == io::ErrorKind::NotFound;
            None
        }
    }
}

/// One process's details as a record needs them: which process (pid and
/// start time), which of its details, and its cgroup id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcKey {
    pub pid: u32,
    pub start_ns: u64,
    pub cgroup_id: Option<u64>,
    pub wanted: Wanted,
}

/// The details of processes that made failing calls, shared by the calls one
/// process makes within a second of each other, so that a flood of failing
/// calls costs one reading of /proc per process, not one per call. Loads
/// never use it: their details are read afresh.
#[derive(Default)]
pub struct ProcCache {
    /// Hashed with foldhash: SipHash of the key was 7 % of a flood's cost
    /// (nine look-ups a record, the caller's, its parent's, its ancestors').
    entries: foldhash::HashMap<ProcKey, (u64, ProcInfo)>,
}

impl ProcCache {
    const VALID_NS: u64 = 1_000_000_000;
    const CAPACITY: usize = 4096;

    /// The details read for a call within `VALID_NS` of `at_ns`. A key
    /// without a start time never matches: it cannot tell processes apart.
    pub fn get(&self, key: &ProcKey, at_ns: u64) -> Option<ProcInfo> {
        let (read_for, info) = self.entries.get(key).filter(|_| key.start_ns != 0)?;
        (read_for.abs_diff(at_ns) <= Self::VALID_NS).then(|| info.clone())
    }

    pub fn put(&mut self, key: ProcKey, at_ns: u64, info: &ProcInfo) {
        if key.start_ns == 0 {
            return;
        }
        // A flood of short-lived processes must not grow it without bound;
        // starting over costs one reading per process again.
        if self.entries.len() >= Self::CAPACITY {
            self.entries.clear();
        }
        self.entries.insert(key, (at_ns, info.clone()));
    }
}

/// The start time of a process that is not exiting, from its stat line.
fn live_start_ticks(stat: &str) -> Option<u64> {
    // include/linux/sched.h: the task is in do_exit().
    const PF_EXITING: u64 = 0x4;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let state = fields.first()?;
    let flags: u64 = fields.get(6)?.parse().ok()?;
    if flags & PF_EXITING != 0 || matches!(*state, "Z" | "X" | "x") {
        return None;
    }
    start_time_ticks(stat)
}

pub fn ticks_to_ns(ticks: u64) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks.saturating_mul(1_000_000_000 / per_sec)
}

/// Field 22 of /proc/PID/stat. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`.
pub fn start_time_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

pub fn parse_cmdline(raw: &[u8]) -> Option<Vec<String>> {
    if raw.is_empty() {
        // Kernel threads and zombies have no command line.
        return None;
    }
    let trimmed = raw.strip_suffix(b"\0").unwrap_or(raw);
    Some(trimmed.split(|&b| b == 0).map(escape_bytes).collect())
}

/// The cgroup v2 path (`0::/path`), or the first v1 hierarchy's if v2 is absent.
pub fn parse_cgroup(content: &str) -> Option<String> {
    let path_of = |line: &str| line.splitn(3, ':').nth(2).map(str::to_owned);
    content
        .lines()
        .find(|l| l.starts_with("0::"))
        .or_else(|| content.lines().next())
        .and_then(path_of)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_skips_a_command_name_with_spaces_and_parens() {
        let stat =
            "812 (we (ird) name) S 1 812 812 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 4242 1000 10";
        assert_eq!(start_time_ticks(stat), Some(4242));
        assert_eq!(start_time_ticks("garbage"), None);
        assert_eq!(start_time_ticks("1 (x) S"), None);
    }

    #[test]
    fn an_exiting_or_dead_process_has_no_live_start_time() {
        let live = "812 (insmod) S 1 812 812 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 4242 1000 10";
        assert_eq!(live_start_ticks(live), Some(4242));
        let exiting = live.replace(" 4194560 ", " 4194564 ");
        assert_eq!(live_start_ticks(&exiting), None);
        let zombie = live.replace(" S ", " Z ");
        assert_eq!(live_start_ticks(&zombie), None);
    }

    #[test]
    fn parses_cmdline_and_cgroup() {
        assert_eq!(
            parse_cmdline(b"modprobe\0-v\0sctp\0"),
            Some(vec!["modprobe".into(), "-v".into(), "sctp".into()])
        );
        assert_eq!(parse_cmdline(b""), None);
        assert_eq!(
            parse_cgroup("0::/user.slice/session-3.scope\n").as_deref(),
            Some("/user.slice/session-3.scope")
        );
        assert_eq!(
            parse_cgroup("12:cpu,cpuacct:/a\n1:name=systemd:/b\n").as_deref(),
            Some("/a")
        );
        assert_eq!(parse_cgroup(""), None);
    }

    #[test]
    fn reads_a_live_process_and_refuses_one_that_started_later() {
        let me = std::process::id();
        let now = boot_ns();
        let proc = ProcRoot::default();
        let info = proc.process(me, now, Wanted::ALL);
        assert_eq!(
            info.exe,
            Some(
                std::env::current_exe()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            )
        );
        assert!(info.cmdline.unwrap()[0].contains("modtrace"));
        assert!(info.cgroup.unwrap().starts_with('/'));
        // An event from before this process existed must not get its details.
        assert_eq!(proc.process(me, 0, Wanted::ALL), ProcInfo::default());
        assert_eq!(
            proc.process(u32::MAX - 1, now, Wanted::ALL),
            ProcInfo::default()
        );
        let only_cmdline = Wanted {
            exe: false,
            cmdline: true,
            cgroup: false,
        };
        let info = proc.process(me, now, only_cmdline);
        assert!(info.exe.is_none() && info.cgroup.is_none() && info.cmdline.is_some());
    }

    /// The details read are kept only if the pid, checked after the reads,
    /// names a live process that started by the event; a kernel thread
    /// (no exe) still has its other details; a process gone keeps none.
    #[test]
    fn the_check_after_the_reads_decides() {
        let dir = tempfile::tempdir().unwrap();
        let stat = |state: &str, flags: u32, start: u64| {
            format!("7 (x) {state} 1 7 7 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0")
        };
        let fake = |pid: u32, stat_line: &str, exe: bool| {
            let p = dir.path().join(pid.to_string());
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("stat"), stat_line).unwrap();
            std::fs::write(p.join("cmdline"), b"tool\0-v\0").unwrap();
            std::fs::write(p.join("cgroup"), "0::/a.slice\n").unwrap();
            if exe {
                std::os::unix::fs::symlink("/usr/bin/tool", p.join("exe")).unwrap();
            }
        };
        fake(10, &stat("S", 0, 1), true);
        fake(11, &stat("S", 0, 1), false);
        fake(12, &stat("S", 4, 1), true);
        fake(13, &stat("Z", 0, 1), true);
        // Started at tick 100: 1 s after boot at 100 ticks a second.
        fake(14, &stat("S", 0, 100), true);
        let proc = ProcRoot::at(dir.path());
        let at = ticks_to_ns(50);
        let live = proc.process(10, at, Wanted::ALL);
        assert_eq!(live.exe.as_deref(), Some("/usr/bin/tool"));
        assert_eq!(live.cmdline, Some(vec!["tool".into(), "-v".into()]));
        assert_eq!(live.cgroup.as_deref(), Some("/a.slice"));
        let kernel_thread = proc.process(11, at, Wanted::ALL);
        assert_eq!(kernel_thread.exe, None);
        assert!(kernel_thread.cmdline.is_some() && kernel_thread.cgroup.is_some());
        for (pid, why) in [
            (12, "exiting"),
            (13, "zombie"),
            (14, "started later"),
            (15, "gone"),
        ] {
            assert_eq!(
                proc.process(pid, at, Wanted::ALL),
                ProcInfo::default(),
                "{why}"
            );
        }
    }

    fn boot_ns() -> u64 {
        let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).unwrap();
        ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
    }
}
