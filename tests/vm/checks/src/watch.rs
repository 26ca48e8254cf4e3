//! Checks of one `modtrace watch` run shared by all scenarios: the envelope of
//! docs/output.md, a one-to-one match between modtrace's syscall records and the
//! module syscalls the kernel's ftrace saw while the watch ran, and the replay of
//! its capture agreeing with its live judgement (`replay.rs`).
use serde_json::{json, Value};

use super::{replay::check_replay, Checks, Ctx};
use crate::results::{Action, ScenarioResults, TraceItem, TracedCall, Watch};

pub(super) const SYSCALL_KINDS: &[&str] = &["init_module", "finit_module", "delete_module"];
/// The comm of flooders whose calls ftrace does not record (tests/vm/scenarios
/// /flood.sh filters them out: millions of calls would overrun the trace).
/// Their records and summaries are checked against their own counts instead.
pub(crate) const UNTRACED_COMM: &str = "flooder";

/// A watch whose output passed the envelope checks, with the ground-truth calls
/// made while it ran.
pub(crate) struct Watched<'a> {
    pub records: Vec<&'a Value>,
    pub calls: Vec<&'a TracedCall>,
}

impl<'a> Watched<'a> {
    pub(crate) fn start(&self) -> Option<&'a Value> {
        self.records
            .first()
            .copied()
            .filter(|r| r["kind"] == "start")
    }

    /// Syscall records made by process `pid`, in output order.
    pub(crate) fn by_pid(&self, pid: Option<u32>) -> Vec<&'a Value> {
        self.records
            .iter()
            .copied()
            .filter(|r| pid.is_some() && r.pointer("/process/pid") == Some(&json!(pid)))
            .collect()
    }
}

/// Runs the shared checks of watch `label` and returns its records for the scenario's
/// own checks, or records why modtrace could not be checked (never a silent pass).
/// It must have reported no loss.
pub(crate) fn watched<'a>(ctx: &mut Ctx<'a>, label: &str) -> Option<Watched<'a>> {
    checked_watch(ctx, label, Losses::None, Ending::Stopped)
}

/// `watched` for a watch whose scenario provokes losses and checks them itself.
pub(crate) fn watched_with_losses<'a>(ctx: &mut Ctx<'a>, label: &str) -> Option<Watched<'a>> {
    checked_watch(ctx, label, Losses::Expected, Ending::Stopped)
}

/// `watched` for a watch started while loads were in the kernel
/// (tests/vm/scenarios/persist.sh loads in a loop across a restart): a call
/// that entered before the entry programs were attached and returned after
/// the exit programs were is counted `entry_missing`, and only such a call.
pub(crate) fn watched_across_start<'a>(ctx: &mut Ctx<'a>, label: &str) -> Option<Watched<'a>> {
    let watched = checked_watch(ctx, label, Losses::AtStart, Ending::Stopped)?;
    check_losses_at_start(ctx, label, &watched);
    Some(watched)
}

/// `watched` for a watch the scenario killed with SIGKILL (`watch_kill`),
/// long enough after its last call that every call has its record: no
/// `stop`, exit status 137.
pub(crate) fn watched_killed<'a>(ctx: &mut Ctx<'a>, label: &str) -> Option<Watched<'a>> {
    checked_watch(ctx, label, Losses::None, Ending::Killed)
}

#[derive(Clone, Copy, PartialEq)]
enum Losses {
    None,
    /// Only of calls in flight while the programs were attached.
    AtStart,
    Expected,
}

/// How the scenario ended the watch.
#[derive(Clone, Copy, PartialEq)]
enum Ending {
    Stopped,
    Killed,
}

fn checked_watch<'a>(
    ctx: &mut Ctx<'a>,
    label: &str,
    losses: Losses,
    ending: Ending,
) -> Option<Watched<'a>> {
    let r = ctx.results;
    let m = &mut ctx.modtrace;
    let Some(watch) = r.watches.get(label) else {
        m.fail(format!("watch {label}: the scenario never started it"));
        return None;
    };
    if watch.status != "started" {
        m.fail(format!(
            "watch {label}: modtrace binary missing/failed to start: {} (argv {:?}, stderr: {})",
            watch.status,
            watch.argv,
            watch.stderr.trim()
        ));
        return None;
    }
    let records = envelope(m, watch, r.meta.get("kernel"), losses, ending)?;
    check_replay(m, watch, &records);
    let calls = r
        .watch_window(label)
        .into_iter()
        .filter_map(|item| match item {
            TraceItem::Call(call) if call.comm != "modtrace" => Some(call),
            _ => None,
        })
        .collect();
    // Calls without a record are fine only as far as modtrace counted them lost.
    let lost = match losses {
        Losses::None | Losses::AtStart => 0,
        Losses::Expected => records
            .last()
            .and_then(|stop| stop.pointer("/lost/total"))
            .and_then(Value::as_u64)
            .unwrap_or(0),
    };
    let watched = Watched { records, calls };
    match_calls(m, label, &watched, lost, r);
    Some(watched)
}

/// The `entry_missing` of watch `label` is no fewer than the calls in flight
/// at its start that returned once it ran and have no record, and no more
/// than all calls in flight at its start without one; nothing else is lost.
fn check_losses_at_start(ctx: &mut Ctx, label: &str, watched: &Watched) {
    let has_record = |call: &TracedCall| {
        watched.records.iter().any(|r| {
            r["kind"] == call.syscall.as_str()
                && r.pointer("/process/tid") == Some(&json!(call.tid))
                && r.pointer("/result/ret") == Some(&json!(call.ret))
        })
    };
    let unrecorded: Vec<(&TracedCall, bool)> = ctx
        .results
        .calls_across_start(label)
        .into_iter()
        .filter(|(call, _)| !has_record(call))
        .collect();
    let surely_seen_exits = unrecorded.iter().filter(|(_, surely)| *surely).count() as u64;
    let lost = watched.records.last().map(|stop| &stop["lost"]);
    let count = |reason: &str| lost.and_then(|l| l[reason].as_u64());
    let entry_missing = count("entry_missing");
    ctx.modtrace.check(
        entry_missing.is_some_and(|n| {
            (surely_seen_exits..=unrecorded.len() as u64).contains(&n)
        }),
        format!(
            "watch {label}: stop.lost.entry_missing {entry_missing:?} counts the calls in flight at its start without a record ({surely_seen_exits} surely seen returning, {} in all): {unrecorded:?}",
            unrecorded.len()
        ),
    );
    ctx.modtrace.eq(
        &format!("watch {label}: stop.lost (ringbuf_full, pending_full)"),
        (count("ringbuf_full"), count("pending_full")),
        (Some(0), Some(0)),
    );
}

fn envelope<'a>(
    m: &mut Checks,
    watch: &'a Watch,
    kernel: Option<&String>,
    losses: Losses,
    ending: Ending,
) -> Option<Vec<&'a Value>> {
    let label = &watch.label;
    let (signal, status, last) = match ending {
        Ending::Stopped => ("SIGTERM", 0, "stop"),
        Ending::Killed => ("SIGKILL", 128 + 9, "not stop"),
    };
    m.eq(
        &format!("watch {label}: exit status after {signal}"),
        watch.exit_code,
        Some(status),
    );
    let mut records = Vec::new();
    for line in &watch.lines {
        match line {
            Ok(record) => records.push(record),
            Err(err) => m.fail(format!("watch {label}: output line is not JSON: {err}")),
        }
    }
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or("?"))
        .collect();
    m.check(
        kinds.first() == Some(&"start")
            && (kinds.last() == Some(&"stop")) == (ending == Ending::Stopped),
        format!("watch {label}: first record start and last {last}, got kinds {kinds:?}"),
    );
    for (seq, record) in records.iter().enumerate() {
        let fields_ok = record["schema"] == 1
            && record["seq"] == seq
            && record["host"] == "modtrace-vm"
            && record["ts"]
                .as_str()
                .is_some_and(|ts| ts.ends_with('Z') && ts.contains('T'));
        m.check(fields_ok, format!("watch {label}: record {seq} has schema 1, seq {seq}, host modtrace-vm, RFC 3339 ts: {record}"));
    }
    let loss: Vec<_> = records.iter().filter(|r| r["kind"] == "loss").collect();
    if losses == Losses::None {
        m.check(
            loss.is_empty(),
            format!("watch {label}: no loss records, got {loss:?}"),
        );
    }
    let start = records.first().filter(|r| r["kind"] == "start")?;
    m.eq(
        &format!("watch {label}: start.module_events (every kernel here has module support)"),
        start["module_events"].as_bool(),
        Some(true),
    );
    m.eq(
        &format!("watch {label}: start.kernel"),
        start["kernel"].as_str(),
        kernel.map(String::as_str),
    );
    if ending == Ending::Killed {
        return Some(records);
    }
    let stop = records.last().filter(|r| r["kind"] == "stop")?;
    for kind in SYSCALL_KINDS {
        let count = kinds.iter().filter(|k| *k == kind).count();
        m.eq(
            &format!("watch {label}: stop.events.{kind}"),
            stop["events"][kind].as_u64(),
            Some(count as u64),
        );
        let summarised: u64 = records
            .iter()
            .filter(|r| r["kind"] == "summary" && r["syscall"] == *kind)
            .filter_map(|r| r["count"].as_u64())
            .sum();
        m.eq(
            &format!("watch {label}: stop.aggregated.{kind} = its summaries' counts"),
            stop["aggregated"][kind].as_u64(),
            Some(summarised),
        );
    }
    Some(records)
}

/// Every traced call has exactly one record (same syscall, tid, return value, or
/// `"exited": false` for a call still in the kernel when the watch stopped, or
/// one whose exit program the kernel skipped), or is among the `lost` that
/// modtrace counted, and every syscall record has a traced call. Records whose
/// exit was skipped are no more than the skipped exit runs `stop` counts.
fn match_calls(m: &mut Checks, label: &str, watched: &Watched, lost: u64, r: &ScenarioResults) {
    let returned_after = |call: &TracedCall| r.returned_after(call, label);
    let mut unmatched: Vec<&Value> = watched
        .records
        .iter()
        .copied()
        .filter(|r| SYSCALL_KINDS.iter().any(|k| r["kind"] == *k))
        .filter(|r| r.pointer("/process/comm") != Some(&json!(UNTRACED_COMM)))
        .collect();
    let mut aggregated = Aggregated::of(&watched.records);
    let mut missing = Vec::new();
    let mut exit_skipped = Vec::new();
    for call in &watched.calls {
        let found = unmatched.iter().position(|r| {
            r["kind"] == call.syscall.as_str()
                && r.pointer("/process/tid") == Some(&json!(call.tid))
                && r.pointer("/result/ret") == Some(&json!(call.ret))
        });
        let in_flight = || {
            unmatched.iter().position(|r| {
                r["kind"] == call.syscall.as_str()
                    && r.pointer("/process/tid") == Some(&json!(call.tid))
                    && r["exited"] == false
            })
        };
        match found {
            Some(index) => {
                let read_late = r.returned_while_paused(call, label);
                record_matches_call(m, label, unmatched.remove(index), call, read_late);
            }
            None if returned_after(call) => match in_flight() {
                Some(index) => record_without_exit(
                    m,
                    label,
                    unmatched.remove(index),
                    call,
                    "in flight at the stop",
                ),
                None => missing.push(call),
            },
            None if aggregated.take(call) => {}
            None => match in_flight() {
                Some(index) => {
                    exit_skipped.push(call);
                    let record = unmatched.remove(index);
                    let why = "its exit program skipped by the kernel";
                    record_without_exit(m, label, record, call, why);
                    m.eq(
                        &format!("watch {label}: {} by tid {}, exit skipped: its module events tell whether it returned 0 having loaded or freed a module", call.syscall, call.tid),
                        ended_well(record),
                        // Since 6.4 a finit of a file being loaded waits for that
                        // load and returns its result without a module of
                        // its own: no events tell its 0.
                        call.ret == Some(0)
                            && (call.syscall == "delete_module" || call.loaded.is_some()),
                    );
                }
                None => missing.push(call),
            },
        }
    }
    let skipped_exits = skipped_exit_runs(&watched.records);
    m.check(
        exit_skipped.len() as u64 <= skipped_exits,
        format!(
            "watch {label}: {} calls that returned while watched have a record without their exit, no more than the {skipped_exits} exit runs the kernel skipped (stop.skipped_runs): {:?}",
            exit_skipped.len(),
            exit_skipped.iter().take(20).collect::<Vec<_>>()
        ),
    );
    aggregated.check_consumed(m, label, &watched.calls);
    m.check(
        missing.len() as u64 <= lost,
        format!(
            "watch {label}: {} of {} traced syscalls have a record, {lost} counted lost; missing: {:?}",
            watched.calls.len() - missing.len(),
            watched.calls.len(),
            missing.iter().take(20).collect::<Vec<_>>()
        ),
    );
    // A call made while the watch was starting (tests/vm/scenarios
    // /persist.sh loads in a loop across a restart) may have its record once
    // the probes were attached, though it came before `start`.
    let startup: Vec<&TracedCall> = r
        .startup_window(label)
        .into_iter()
        .filter_map(|item| match item {
            TraceItem::Call(call) => Some(call),
            _ => None,
        })
        .collect();
    unmatched.retain(|record| {
        !startup.iter().any(|call| {
            record["kind"] == call.syscall.as_str()
                && record.pointer("/process/tid") == Some(&json!(call.tid))
                && record.pointer("/result/ret") == Some(&json!(call.ret))
        })
    });
    m.check(
        unmatched.is_empty(),
        format!("watch {label}: records the kernel never traced: {unmatched:?}"),
    );
}

/// What a record's module events say of how its call ended (docs/output.md,
/// `module`): a load that named its module and did not free it, or an
/// unload that freed it, returned 0.
pub(crate) fn ended_well(record: &Value) -> bool {
    let freed = record.pointer("/module/freed") == Some(&Value::Bool(true));
    if record["kind"] == "delete_module" {
        freed
    } else {
        record.pointer("/module/name").is_some_and(Value::is_string) && !freed
    }
}

/// The runs of modtrace's exit programs the kernel skipped, by `stop`.
pub(crate) fn skipped_exit_runs(records: &[&Value]) -> u64 {
    records
        .last()
        .and_then(|stop| stop["skipped_runs"].as_object())
        .map_or(0, |skipped| {
            skipped
                .iter()
                .filter(|(program, _)| {
                    program.starts_with("fexit_")
                        || program.starts_with("tp_exit_")
                        || program.as_str() == "raw_sys_exit"
                })
                .filter_map(|(_, runs)| runs.as_u64())
                .sum()
        })
}

/// The calls `summary` records counted, by (syscall, pid, ret), as traced
/// calls without a record of their own use them up. `ret` is `None` for a
/// summary of calls whose exit the kernel skipped (`result` null): it counts
/// calls of its process and syscall whatever they returned.
struct Aggregated(std::collections::BTreeMap<(String, u64, Option<i64>), u64>);

impl Aggregated {
    fn of(records: &[&Value]) -> Self {
        let mut counts = std::collections::BTreeMap::new();
        for summary in records.iter().filter(|r| r["kind"] == "summary") {
            let key = (
                summary["syscall"].as_str().unwrap_or("?").to_owned(),
                summary
                    .pointer("/process/pid")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                match summary["syscall"] == "request" {
                    true => Some(0),
                    false => summary.pointer("/result/ret").and_then(Value::as_i64),
                },
            );
            *counts.entry(key).or_default() += summary["count"].as_u64().unwrap_or(0);
        }
        Self(counts)
    }

    /// Whether a summary counted `call`, which then is no longer available.
    /// A summary of its result is used first, then one of unseen results.
    fn take(&mut self, call: &TracedCall) -> bool {
        let (syscall, pid) = (call.syscall.clone(), call.tgid.map_or(0, u64::from));
        [call.ret.or(Some(i64::MIN)), None].into_iter().any(|ret| {
            match self.0.get_mut(&(syscall.clone(), pid, ret)) {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    true
                }
                _ => false,
            }
        })
    }

    /// Summaries of a traced process must count exactly its calls that have
    /// no record: none more.
    fn check_consumed(&self, m: &mut Checks, label: &str, calls: &[&TracedCall]) {
        let overcounted: Vec<_> = self
            .0
            .iter()
            .filter(|((_, pid, _), left)| {
                **left > 0 && calls.iter().any(|c| c.tgid.map(u64::from) == Some(*pid))
            })
            .collect();
        m.check(
            overcounted.is_empty(),
            format!("watch {label}: summaries count more calls than the kernel traced without a record: {overcounted:?}"),
        );
    }
}

/// A call modtrace saw enter but not return, because it stopped first.
/// A record without the call's exit: `why` it has none.
fn record_without_exit(m: &mut Checks, label: &str, record: &Value, call: &TracedCall, why: &str) {
    let what = format!(
        "watch {label}: {} by tid {} ({}), {why}",
        call.syscall, call.tid, call.comm
    );
    m.eq(
        &format!("{what}: process.pid"),
        record.pointer("/process/pid").cloned(),
        call.tgid.map(|p| json!(p)),
    );
    m.check(
        record["result"].is_null() && record["duration_ns"].is_null(),
        format!("{what}: no result or duration: {record}"),
    );
}

/// `read_late`: the call returned while the watch was paused (SIGSTOP).
fn record_matches_call(
    m: &mut Checks,
    label: &str,
    record: &Value,
    call: &TracedCall,
    read_late: bool,
) {
    let what = |field: &str| {
        format!(
            "watch {label}: {} by tid {} ({}): {field}",
            call.syscall, call.tid, call.comm
        )
    };
    m.eq(
        &what("process.pid"),
        record.pointer("/process/pid").cloned(),
        call.tgid.map(|p| json!(p)),
    );
    let ret = call.ret.unwrap_or(i64::MIN);
    let errno = errno_name(ret);
    m.check(
        result_matches(&record["result"], ret, errno),
        format!(
            "{}: expected ret {ret} errno {errno:?} ok {}, got {}",
            what("result"),
            ret >= 0,
            record["result"]
        ),
    );
    let namespaces = record.pointer("/process/namespaces");
    m.check(
        namespaces.is_some_and(|ns| ns["mnt"].is_u64() && ns["pid"].is_u64()),
        format!(
            "{}: both inode numbers: {namespaces:?}",
            what("process.namespaces")
        ),
    );
    check_module(m, &what("module"), record, call, read_late);
    check_ancestors(m, &what("process.ancestors"), record);
    let arg = |name: &str| call.args.get(name).copied();
    match call.syscall.as_str() {
        "finit_module" => {
            // ftrace prints the int fd as an unsigned hex word.
            let fd = arg("fd").map(|fd| json!(fd as u32 as i32));
            m.eq(&what("args.fd"), record.pointer("/args/fd").cloned(), fd);
            m.eq(
                &what("args.flags.raw"),
                record.pointer("/args/flags/raw").and_then(Value::as_u64),
                arg("flags"),
            );
        }
        "init_module" => {
            m.eq(
                &what("args.image_len"),
                record.pointer("/args/image_len").and_then(Value::as_u64),
                arg("len"),
            );
        }
        _ => {
            m.eq(
                &what("args.flags.raw"),
                record.pointer("/args/flags/raw").and_then(Value::as_u64),
                arg("flags"),
            );
        }
    }
}

/// The kernel-captured chain starts at the parent and, when shorter than its
/// limit of 8, ends at init (pid 1) or kthreadd (pid 2, for the kernel's own
/// modprobe).
fn check_ancestors(m: &mut Checks, what: &str, record: &Value) {
    let chain = record
        .pointer("/process/ancestors")
        .and_then(Value::as_array);
    let Some(chain) = chain.filter(|c| !c.is_empty()) else {
        m.fail(format!("{what}: missing or empty: {record}"));
        return;
    };
    m.eq(
        &format!("{what}[0].pid"),
        chain[0].get("pid"),
        record.pointer("/parent/pid"),
    );
    m.eq(
        &format!("{what}[0].comm"),
        chain[0].get("comm"),
        record.pointer("/parent/comm"),
    );
    let last = chain.last().and_then(|a| a["pid"].as_u64());
    m.check(
        chain.len() == 8 || matches!(last, Some(1 | 2)),
        format!("{what}: a chain shorter than 8 ends at pid 1 or 2: {chain:?}"),
    );
}

/// The `module` object against the kernel's own module_load/module_free
/// events inside the same call. A loader that exited while modtrace was
/// paused may have taken its image with it (init_module's buffer): the
/// record must then say the image is gone, never show another.
fn check_module(m: &mut Checks, what: &str, record: &Value, call: &TracedCall, read_late: bool) {
    let module = &record["module"];
    match (call.syscall.as_str(), &call.loaded) {
        ("delete_module", _) => m.eq(
            &format!("{what}.freed"),
            module["freed"].as_bool(),
            Some(call.freed.is_some()),
        ),
        (_, Some((name, letters))) => {
            m.eq(
                &format!("{what}.name"),
                module["name"].as_str(),
                Some(name.as_str()),
            );
            // ftrace lists a subset of flags in its own order: compare as sets.
            let sorted = |s: &str| {
                let mut chars: Vec<char> = s.chars().collect();
                chars.sort_unstable();
                chars
            };
            let got = module
                .pointer("/taint/letters")
                .and_then(Value::as_str)
                .map(sorted);
            m.eq(&format!("{what}.taint.letters"), got, Some(sorted(letters)));
            // The image modtrace captured is the module the kernel registered.
            let image = &module["image"];
            if read_late && image.get("sha256").is_none() {
                m.check(
                    image["during_call"] == false
                        && image["error"].as_str().is_some_and(|e| !e.is_empty())
                        && image.get("modinfo").is_none(),
                    format!("{what}.image of a loader gone while modtrace was paused is an error: {image}"),
                );
                return;
            }
            for field in ["/modinfo/name", "/this_module_name"] {
                m.eq(
                    &format!("{what}.image{field}"),
                    image.pointer(field).and_then(Value::as_str),
                    Some(name.as_str()),
                );
            }
            // The kernel taints with E when it found no valid signature; every
            // module here is either signed with Debian's key or not signed at all.
            m.eq(
                &format!("{what}.image.signature.signed (the kernel's taint: {letters:?})"),
                image.pointer("/signature/signed").and_then(Value::as_bool),
                Some(!letters.contains('E')),
            );
            m.check(
                image["sha256"].as_str().is_some_and(|h| h.len() == 64),
                format!("{what}.image.sha256 is a sha256: {image}"),
            );
        }
        (_, None) => m.check(
            module.get("name").is_none() && module.get("taint").is_none(),
            format!(
                "{what}: no module_load in this call, so no module name or taint: got {module}"
            ),
        ),
    }
}

fn result_matches(result: &Value, ret: i64, errno: Option<&str>) -> bool {
    let ok = ret >= 0;
    let errno_ok = match errno {
        // Linux gives 11 two names; either is the truth.
        Some("EAGAIN") => result["errno"] == "EAGAIN" || result["errno"] == "EWOULDBLOCK",
        Some(name) => result["errno"] == name,
        None => result["errno"].is_null(),
    };
    result["ret"] == ret && result["ok"] == ok && errno_ok
}

/// Names of the errnos these scenarios provoke; an unknown one fails the comparison.
pub(crate) fn errno_name(ret: i64) -> Option<&'static str> {
    Some(match -ret {
        n if n <= 0 => return None,
        1 => "EPERM",
        2 => "ENOENT",
        8 => "ENOEXEC",
        9 => "EBADF",
        11 => "EAGAIN",
        14 => "EFAULT",
        16 => "EBUSY",
        17 => "EEXIST",
        22 => "EINVAL",
        _ => "unknown errno",
    })
}

/// The process block of a record: who made the call.
pub(crate) struct Who<'a> {
    pub pid: Option<u32>,
    pub ppid: Option<u32>,
    pub uid: u32,
    pub comm: &'a str,
    pub parent_comm: Option<&'a str>,
    pub cmdline: Option<&'a [String]>,
    /// The namespaces the process was started in (`{"mnt": N, "pid": N}`).
    pub namespaces: Option<&'a Value>,
}

pub(crate) fn check_process(m: &mut Checks, what: &str, record: &Value, who: &Who) {
    let p = &record["process"];
    m.eq(
        &format!("{what}: process.pid"),
        p["pid"].as_u64(),
        who.pid.map(u64::from),
    );
    m.eq(
        &format!("{what}: process.ppid"),
        p["ppid"].as_u64(),
        who.ppid.map(u64::from),
    );
    m.eq(
        &format!("{what}: process.uid"),
        p["uid"].as_u64(),
        Some(u64::from(who.uid)),
    );
    m.eq(
        &format!("{what}: process.comm"),
        p["comm"].as_str(),
        Some(who.comm),
    );
    if let Some(parent) = who.parent_comm {
        m.eq(
            &format!("{what}: parent.comm"),
            record.pointer("/parent/comm").and_then(Value::as_str),
            Some(parent),
        );
        m.eq(
            &format!("{what}: parent.pid"),
            record.pointer("/parent/pid").and_then(Value::as_u64),
            who.ppid.map(u64::from),
        );
    }
    m.check(
        who.namespaces.is_some_and(|ns| p["namespaces"] == *ns),
        format!(
            "{what}: process.namespaces are those it was started in, {:?}: got {}",
            who.namespaces, p["namespaces"]
        ),
    );
    if let Some(cmdline) = who.cmdline {
        // docs/output.md: fields read from /proc are null once the process is gone
        // (insmod and rmmod often exit first); a value, when present, must be exact.
        let got = &p["cmdline"];
        m.check(
            got.is_null() || *got == json!(cmdline),
            format!("{what}: process.cmdline is {cmdline:?} (or null if the process was gone): got {got}"),
        );
    }
}

/// The one record of a process that action `a`'s process started.
pub(crate) fn child_record<'a>(m: &mut Checks, w: &Watched<'a>, a: &Action) -> Option<&'a Value> {
    let records: Vec<&Value> = w
        .records
        .iter()
        .copied()
        .filter(|r| a.pid.is_some() && r.pointer("/process/ppid") == Some(&json!(a.pid)))
        .collect();
    match records.as_slice() {
        [record] => Some(record),
        _ => {
            m.fail(format!(
                "{}: one record with ppid {:?}, got {records:?}",
                a.label, a.pid
            ));
            None
        }
    }
}

/// A captured string: `{"value": …, "truncated": false}`.
pub(crate) fn check_string(m: &mut Checks, what: &str, captured: &Value, expected: &str) {
    m.eq(
        what,
        captured,
        &json!({"value": expected, "truncated": false}),
    );
}

pub(crate) fn check_flags(m: &mut Checks, what: &str, flags: &Value, raw: u64, names: &[&str]) {
    m.eq(what, flags, &json!({"raw": raw, "names": names}));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_must_carry_the_kernels_errno() {
        let eexist = json!({"ret": -17, "errno": "EEXIST", "ok": false});
        assert!(result_matches(&eexist, -17, errno_name(-17)));
        assert!(!result_matches(&eexist, -2, errno_name(-2)));
        assert!(!result_matches(
            &json!({"ret": 0, "errno": null, "ok": false}),
            0,
            None
        ));
        assert!(result_matches(
            &json!({"ret": -11, "errno": "EWOULDBLOCK", "ok": false}),
            -11,
            errno_name(-11)
        ));
    }
}
