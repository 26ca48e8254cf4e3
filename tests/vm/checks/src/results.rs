//! What a guest sent back (layout written by `tests/vm/init` and `scenarios/lib.sh`),
//! parsed into types the checks use.
use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use serde_json::Value;

/// Why a results directory could not be read. A missing file is not an error:
/// it reads as empty, and the checks report what is absent.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An entry of a directory listing that could not be read.
    #[error(transparent)]
    Listing(#[from] io::Error),
}

pub struct ScenarioResults {
    pub dir: PathBuf,
    /// `kernel`, `kmod`, `compression`, `btf`, `modtrace`, `mtcall` from the guest.
    pub meta: BTreeMap<String, String>,
    pub scenario_rc: Option<i32>,
    pub scenario_log: String,
    /// Module names in /proc/modules before and after the scenario.
    pub modules_before: Vec<String>,
    pub modules_after: Vec<String>,
    pub actions: Vec<Action>,
    pub trace: Vec<TraceItem>,
    /// Events ftrace dropped; the ground truth is incomplete when non-zero.
    pub trace_overruns: u64,
    pub trace_enable_failed: String,
    pub watches: BTreeMap<String, Watch>,
}

/// One command a scenario ran via `act`.
pub struct Action {
    pub label: String,
    pub argv: Vec<String>,
    pub pid: Option<u32>,
    pub ppid: Option<u32>,
    pub stdout: String,
    pub stderr: String,
    pub rc: Option<i32>,
    /// `{"mnt": N, "pid": N}`: the namespaces the command ran in.
    pub namespaces: Option<Value>,
}

impl Action {
    /// mtcall's report: one JSON object per line of stdout.
    pub fn json_lines(&self) -> Result<Vec<Value>, String> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| format!("{l:?} is not JSON: {e}")))
            .collect()
    }
}

/// One `modtrace watch` run of a scenario.
pub struct Watch {
    pub label: String,
    /// `started`, or `missing: …` / `failed: …` from lib.sh.
    pub status: String,
    pub argv: Vec<String>,
    pub lines: Vec<Result<Value, String>>,
    pub stderr: String,
    pub exit_code: Option<i32>,
    /// `modtrace replay` of the capture, run by lib.sh once the watch stopped.
    pub replay: Replayed,
    /// Seconds from the spawn of `modtrace watch` to lib.sh seeing its start
    /// record (read from /proc/uptime, polled every 50 ms); None when it never started.
    pub startup_s: Option<f64>,
}

/// A capture re-judged by `modtrace replay --format json`.
pub struct Replayed {
    pub lines: Vec<Result<Value, String>>,
    pub stderr: String,
    /// None when the replay did not run (the watch never started).
    pub exit_code: Option<i32>,
}

/// A module syscall as the kernel's ftrace saw it (entry and exit paired per thread).
#[derive(Clone, Debug, PartialEq)]
pub struct TracedCall {
    /// `init_module`, `finit_module` or `delete_module`.
    pub syscall: String,
    pub comm: String,
    pub tid: u32,
    pub tgid: Option<u32>,
    /// Argument name to value (ftrace prints them in hex).
    pub args: BTreeMap<String, u64>,
    /// None when the exit was not traced.
    pub ret: Option<i64>,
    /// The `module_load` event inside this call: the module's name and its
    /// taint letters as ftrace prints them (`dummy OE` → "OE").
    pub loaded: Option<(String, String)>,
    /// The name of the `module_free` event inside this call.
    pub freed: Option<String>,
    /// Where the exit came in the trace: the index the next item took.
    pub exit_at: Option<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TraceItem {
    Call(TracedCall),
    ModuleLoad(String),
    ModuleFree(String),
    Marker(String),
}

impl ScenarioResults {
    /// Reads `dir`, where the runner unpacked the guest's /results.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let read = |name: &str| read_text(&dir.join(name));
        Ok(Self {
            dir: dir.to_path_buf(),
            meta: read("meta")?
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            scenario_rc: read("scenario_rc")?.trim().parse().ok(),
            scenario_log: read("scenario.log")?,
            modules_before: module_names(&read("modules_before")?),
            modules_after: module_names(&read("modules_after")?),
            actions: load_actions(&dir.join("actions"))?,
            trace: parse_trace(&read("trace")?),
            trace_overruns: overruns(&read("trace_stats")?),
            trace_enable_failed: read("trace_enable_failed")?,
            watches: load_watches(&dir.join("watch"))?,
        })
    }

    pub fn action(&self, label: &str) -> Option<&Action> {
        self.actions.iter().find(|a| a.label == label)
    }

    pub fn calls(&self) -> impl Iterator<Item = &TracedCall> {
        self.trace.iter().filter_map(|item| match item {
            TraceItem::Call(call) => Some(call),
            _ => None,
        })
    }

    /// Whether `call` returned after watch `label` had ended (it was still in
    /// the kernel when modtrace stopped).
    pub fn returned_after(&self, call: &TracedCall, label: &str) -> bool {
        let end = self.marker("watch-end", label);
        matches!((call.exit_at, end), (Some(exit), Some(end)) if exit > end)
    }

    /// Whether `call` returned between `watch-pause LABEL` and the next
    /// `watch-resume LABEL` (lib.sh's `watch_pause`, `watch_resume`).
    pub fn returned_while_paused(&self, call: &TracedCall, label: &str) -> bool {
        let (Some(exit), Some(paused)) = (call.exit_at, self.marker("watch-pause", label)) else {
            return false;
        };
        let resumed = self
            .marker("watch-resume", label)
            .unwrap_or(self.trace.len());
        paused < exit && exit <= resumed
    }

    /// Whether `call` entered before watch `label` began and returned while it
    /// ran.
    pub fn straddles_start(&self, call: &TracedCall, label: &str) -> bool {
        let entered = self
            .trace
            .iter()
            .position(|item| matches!(item, TraceItem::Call(c) if c == call));
        match (
            entered,
            call.exit_at,
            self.marker("watch-begin", label),
            self.marker("watch-end", label),
        ) {
            (Some(entered), Some(exit), Some(begin), Some(end)) => {
                entered < begin && begin < exit && exit <= end
            }
            _ => false,
        }
    }

    /// Calls in the kernel while watch `label` attached its programs: each
    /// entered before `watch-begin LABEL` and returned after `watch-spawn
    /// LABEL`, with whether it returned after `watch-begin`, that is surely
    /// after the programs were attached (its `start` was out by then).
    pub fn calls_across_start(&self, label: &str) -> Vec<(&TracedCall, bool)> {
        let (Some(spawn), Some(begin)) = (
            self.marker("watch-spawn", label),
            self.marker("watch-begin", label),
        ) else {
            return Vec::new();
        };
        self.trace[..begin]
            .iter()
            .filter_map(|item| match item {
                TraceItem::Call(call) => Some((call, call.exit_at?)),
                _ => None,
            })
            .filter(|(_, exit)| *exit > spawn)
            .map(|(call, exit)| (call, exit > begin))
            .collect()
    }

    /// Where lib.sh marked `watch-begin LABEL`, `watch-end LABEL` (or
    /// `watch-pause`, `watch-resume`) in the trace.
    fn marker(&self, phase: &str, label: &str) -> Option<usize> {
        let marker = TraceItem::Marker(format!("{phase} {label}"));
        self.trace.iter().position(|item| *item == marker)
    }

    /// Trace items between `watch-spawn LABEL` (written just before the
    /// watch is started) and `watch-begin LABEL` (once its `start` is out).
    pub fn startup_window(&self, label: &str) -> Vec<&TraceItem> {
        let (Some(spawn), Some(begin)) = (
            self.marker("watch-spawn", label),
            self.marker("watch-begin", label),
        ) else {
            return Vec::new();
        };
        self.trace
            .get(spawn + 1..begin)
            .unwrap_or_default()
            .iter()
            .collect()
    }

    /// Trace items between `watch-begin LABEL` and `watch-end LABEL` (or the
    /// trace's end, when the watch was never stopped).
    pub fn watch_window(&self, label: &str) -> Vec<&TraceItem> {
        let Some(begin) = self.marker("watch-begin", label) else {
            return Vec::new();
        };
        let end = self.marker("watch-end", label).unwrap_or(self.trace.len());
        self.trace
            .get(begin + 1..end)
            .unwrap_or_default()
            .iter()
            .collect()
    }
}

/// A missing file reads as empty: the checks then report what is absent.
fn read_text(path: &Path) -> Result<String, LoadError> {
    match fs::read(path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(LoadError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn sorted_subdirs(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut dirs: Vec<PathBuf> = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    dirs.sort();
    Ok(dirs)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

fn lines_of(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

fn load_actions(dir: &Path) -> Result<Vec<Action>, LoadError> {
    sorted_subdirs(dir)?
        .into_iter()
        .map(|d| {
            let read = |name: &str| read_text(&d.join(name));
            let name = file_name(&d);
            Ok(Action {
                // Directories are NNN-LABEL.
                label: name
                    .split_once('-')
                    .map_or(name.clone(), |(_, l)| l.to_owned()),
                argv: lines_of(&read("argv")?),
                pid: read("pid")?.trim().parse().ok(),
                ppid: read("ppid")?.trim().parse().ok(),
                stdout: read("stdout")?,
                stderr: read("stderr")?,
                rc: read("rc")?.trim().parse().ok(),
                namespaces: namespaces(&read("namespaces")?),
            })
        })
        .collect()
}

/// `mnt:[4026531841]` and `pid:[4026531836]` lines (readlink of /proc/PID/ns/*)
/// as the record's `process.namespaces` would show them.
fn namespaces(links: &str) -> Option<Value> {
    let inode = |kind: &str| -> Option<u64> {
        links.lines().find_map(|l| {
            l.trim()
                .strip_prefix(kind)?
                .strip_prefix(":[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
    };
    Some(serde_json::json!({"mnt": inode("mnt")?, "pid": inode("pid")?}))
}

fn load_watches(dir: &Path) -> Result<BTreeMap<String, Watch>, LoadError> {
    sorted_subdirs(dir)?
        .into_iter()
        .map(|d| {
            let read = |name: &str| read_text(&d.join(name));
            let label = file_name(&d);
            let watch = Watch {
                label: label.clone(),
                status: read("status")?.trim().to_owned(),
                argv: lines_of(&read("argv")?),
                lines: ndjson(&read("out.ndjson")?),
                stderr: read("stderr")?,
                exit_code: read("exit_code")?.trim().parse().ok(),
                replay: Replayed {
                    lines: ndjson(&read("replayed.ndjson")?),
                    stderr: read("replay.stderr")?,
                    exit_code: read("replay_exit_code")?.trim().parse().ok(),
                },
                startup_s: startup(&read("startup")?),
            };
            Ok((label, watch))
        })
        .collect()
}

/// `SPAWNED SEEN`, two /proc/uptime readings in seconds, as their difference.
fn startup(text: &str) -> Option<f64> {
    let mut uptimes = text.split_whitespace().map(|t| t.parse::<f64>().ok());
    let (spawned, seen) = (uptimes.next()??, uptimes.next()??);
    (seen >= spawned).then_some(seen - spawned)
}

/// Each line parsed, or why it is not JSON.
fn ndjson(text: &str) -> Vec<Result<Value, String>> {
    text.lines()
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{l:?}: {e}")))
        .collect()
}

fn module_names(proc_modules: &str) -> Vec<String> {
    proc_modules
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Sums the `overrun:` counters of every CPU's ftrace stats.
fn overruns(stats: &str) -> u64 {
    stats
        .lines()
        .filter_map(|l| l.strip_prefix("overrun:"))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum()
}

/// The taint letters after the name in module_load's `dummy OE` (the event's
/// format is `"%s %s", name, show_module_flags(taints)`); empty when untainted.
fn taint_letters(text: &str) -> String {
    text.split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// Parses ftrace's text output (with `record-tgid`) and pairs each syscall entry
/// with the next exit of the same thread.
pub fn parse_trace(text: &str) -> Vec<TraceItem> {
    let mut items = Vec::new();
    let mut open: BTreeMap<u32, usize> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((comm, tid, tgid, message)) = split_trace_line(line) else {
            continue;
        };
        if let Some(text) = message.strip_prefix("module_load: ") {
            let load = (first_word(text), taint_letters(text));
            if let Some(TraceItem::Call(call)) = open.get(&tid).and_then(|&i| items.get_mut(i)) {
                call.loaded = Some(load);
            }
            items.push(TraceItem::ModuleLoad(first_word(text)));
        } else if let Some(name) = message.strip_prefix("module_free: ") {
            if let Some(TraceItem::Call(call)) = open.get(&tid).and_then(|&i| items.get_mut(i)) {
                call.freed = Some(first_word(name));
            }
            items.push(TraceItem::ModuleFree(first_word(name)));
        } else if let Some(text) = message.strip_prefix("tracing_mark_write: ") {
            items.push(TraceItem::Marker(text.trim().to_owned()));
        } else if let Some((syscall, ret)) = parse_exit(message) {
            if let Some(index) = open.remove(&tid) {
                let exit_at = items.len();
                if let TraceItem::Call(call) = &mut items[index] {
                    if call.syscall == syscall {
                        call.ret = Some(ret);
                        call.exit_at = Some(exit_at);
                    }
                }
            }
        } else if let Some((syscall, args)) = parse_enter(message) {
            open.insert(tid, items.len());
            items.push(TraceItem::Call(TracedCall {
                syscall,
                comm: comm.to_owned(),
                tid,
                tgid,
                args,
                ret: None,
                loaded: None,
                freed: None,
                exit_at: None,
            }));
        }
    }
    items
}

fn first_word(s: &str) -> String {
    s.split_whitespace().next().unwrap_or_default().to_owned()
}

/// `   insmod-95  (   95) [000] ..... 3.123: MESSAGE` → (comm, tid, tgid, MESSAGE).
fn split_trace_line(line: &str) -> Option<(&str, u32, Option<u32>, &str)> {
    let (head, rest) = line.split_once(" [")?;
    let (_, message) = rest.split_once(": ")?;
    let (task, tgid) = match head.trim().rsplit_once('(') {
        Some((task, tgid)) => (task.trim(), tgid.trim_end_matches(')').trim().parse().ok()),
        None => (head.trim(), None),
    };
    let (comm, tid) = task.rsplit_once('-')?;
    Some((comm, tid.parse().ok()?, tgid, message))
}

/// `sys_finit_module(fd: 3, uargs: 55d0, flags: 0)`.
fn parse_enter(message: &str) -> Option<(String, BTreeMap<String, u64>)> {
    let (name, args) = message.strip_prefix("sys_")?.split_once('(')?;
    let args = args
        .trim_end_matches(')')
        .split(", ")
        .filter_map(|arg| arg.split_once(": "))
        .filter_map(|(k, v)| {
            Some((
                k.to_owned(),
                u64::from_str_radix(v.trim_start_matches("0x"), 16).ok()?,
            ))
        })
        .collect();
    Some((name.to_owned(), args))
}

/// `sys_finit_module -> 0xffffffffffffffef` (ret as the signed value).
fn parse_exit(message: &str) -> Option<(String, i64)> {
    let (name, ret) = message.strip_prefix("sys_")?.split_once(" -> ")?;
    let ret = u64::from_str_radix(ret.trim().trim_start_matches("0x"), 16).ok()?;
    Some((name.to_owned(), ret as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_read_as_empty_and_unreadable_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let results = ScenarioResults::load(dir.path()).unwrap();
        assert_eq!(
            (
                results.scenario_rc,
                results.actions.len(),
                results.watches.len()
            ),
            (None, 0, 0)
        );
        fs::create_dir(dir.path().join("meta")).unwrap();
        let Err(err) = ScenarioResults::load(dir.path()) else {
            panic!("a directory named meta was read as a file");
        };
        assert_eq!(
            err.to_string(),
            format!("reading {}", dir.path().join("meta").display())
        );
        assert!(matches!(err, LoadError::Read { .. }), "{err:?}");
    }

    #[test]
    fn pairs_entry_and_exit_per_thread() {
        let trace = "\
# tracer: nop
          insmod-95      (     95) [001] .....     3.100000: sys_finit_module(fd: 3, uargs: 55d0, flags: 0)
          rmmod-96       (     96) [000] .....     3.100001: sys_delete_module(name_user: 7ff0, flags: 800)
          rmmod-96       (     96) [000] .....     3.100002: sys_delete_module -> 0xfffffffffffffffe
          insmod-95      (     95) [001] .....     3.100003: module_load: dummy OE
          insmod-95      (     95) [001] .....     3.100004: sys_finit_module -> 0x0
";
        let items = parse_trace(trace);
        assert_eq!(items.len(), 3);
        let TraceItem::Call(finit) = &items[0] else {
            panic!("{items:?}")
        };
        assert_eq!(
            (finit.syscall.as_str(), finit.tid, finit.tgid, finit.ret),
            ("finit_module", 95, Some(95), Some(0))
        );
        assert_eq!(finit.args["fd"], 3);
        assert_eq!(finit.loaded, Some(("dummy".into(), "OE".into())));
        let TraceItem::Call(delete) = &items[1] else {
            panic!("{items:?}")
        };
        assert_eq!((delete.args["flags"], delete.ret), (0x800, Some(-2)));
        assert_eq!(items[2], TraceItem::ModuleLoad("dummy".into()));
    }
}
