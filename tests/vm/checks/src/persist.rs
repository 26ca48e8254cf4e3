//! tests/vm/scenarios/persist.sh: enforcement that outlives the collector,
//! checked against the kernel's trace of each call: denials go on after
//! SIGKILL and SIGTERM, through a collector's restart with another policy
//! (every load of a loop across it denied), are counted across collectors,
//! and end with `enforce release` or `--release-on-exit`.
use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{
    enforce::check_enforce_refused,
    scenarios::{action, expect_rc, mtcall_report},
    watch::{watched, watched_across_start, watched_killed, Watched},
    Checks, Ctx,
};
use crate::results::{Action, TraceItem};

const EPERM: i64 = -1;
const CIS: &str = "cis-denied-module";
const LOCK: &str = "lock-after-boot";

pub(crate) fn persist(ctx: &mut Ctx) {
    if ctx.results.watches.contains_key("inactive") {
        // No BPF LSM: enforcement cannot start, so it cannot outlive anything.
        check_enforce_refused(ctx);
        return;
    }
    ground(ctx);
    let loop_calls = loop_calls(ctx);
    let first = watched_killed(ctx, "first");
    let second = watched_across_start(ctx, "second");
    if let Some(w) = &first {
        check_first(ctx, w);
    }
    if let Some(w) = &second {
        check_second(ctx, w, &loop_calls);
    }
    check_statuses(ctx, first.as_ref(), second.as_ref());
    if let Some(w) = watched(ctx, "third") {
        check_release_logged(ctx, &w);
    }
    if let Some(w) = watched(ctx, "fourth") {
        check_release_on_exit(ctx, &w);
    }
    if let Some(w) = watched(ctx, "lock") {
        check_lock(ctx, &w);
    }
}

/// The load syscalls of process `pid`, as the kernel traced them.
fn traced_loads(ctx: &Ctx, pid: Option<u32>) -> Vec<Option<i64>> {
    ctx.results
        .calls()
        .filter(|c| pid.is_some() && c.tgid == pid && c.syscall != "delete_module")
        .map(|c| c.ret)
        .collect()
}

fn ground(ctx: &mut Ctx) {
    for label in [
        "modprobe_first",
        "modprobe_orphan",
        "modprobe_after_term",
        "modprobe_fourth",
    ] {
        let Some(a) = action(ctx, label) else {
            continue;
        };
        let loads = traced_loads(ctx, a.pid);
        ctx.ground.check(
            a.rc.is_some_and(|rc| rc != 0)
                && a.stderr.contains("Operation not permitted")
                && loads.last() == Some(&Some(EPERM)),
            format!(
                "{label}: denied (rc {:?}, stderr {:?}, traced {loads:?})",
                a.rc,
                a.stderr.trim()
            ),
        );
    }
    for (label, ret) in [("dummy_allowed", 0), ("dummy_denied", EPERM)] {
        expect_mtcall_ret(ctx, label, ret);
    }
    for label in [
        "rmmod_dummy",
        "status_orphan",
        "status_after_term",
        "status_text",
        "release",
        "status_released",
        "modprobe_released",
        "rmmod_released",
        "status_fourth",
        "modprobe_after_fourth",
        "rmmod_after_fourth",
    ] {
        expect_rc(ctx, label, 0);
    }
}

/// mtcall's call of action `label` returned `ret` (ground truth).
fn expect_mtcall_ret(ctx: &mut Ctx, label: &str, ret: i64) {
    let Some(a) = action(ctx, label) else {
        return;
    };
    if let Some(report) = mtcall_report(ctx, a) {
        ctx.ground.eq(
            &format!("{label}: mtcall ret"),
            report["ret"].as_i64(),
            Some(ret),
        );
    }
}

/// One load of the loop: its process, and whether it came inside watch
/// `second`'s window (after that watch had switched its policy in).
struct LoopCall {
    pid: u32,
    after_switch: bool,
}

/// The loop's loads, each checked denied by the kernel (ground truth).
fn loop_calls(ctx: &mut Ctx) -> Vec<LoopCall> {
    let Some(a) = action(ctx, "loop") else {
        return Vec::new();
    };
    let r = ctx.results;
    let window: Vec<u32> = r
        .watch_window("second")
        .into_iter()
        .filter_map(|item| match item {
            TraceItem::Call(c) => c.tgid,
            _ => None,
        })
        .collect();
    let mut calls = Vec::new();
    for line in a.stdout.lines() {
        let parsed = line.split_once(' ').and_then(|(pid, report)| {
            Some((
                pid.parse::<u32>().ok()?,
                serde_json::from_str::<Value>(report).ok()?,
            ))
        });
        let Some((pid, report)) = parsed else {
            ctx.ground
                .fail(format!("loop: line {line:?} is not `PID REPORT`"));
            continue;
        };
        let loads = traced_loads(ctx, Some(pid));
        ctx.ground.check(
            report["ret"].as_i64() == Some(EPERM) && loads == [Some(EPERM)],
            format!("loop: load by pid {pid} denied: mtcall {report}, traced {loads:?}"),
        );
        calls.push(LoopCall {
            pid,
            after_switch: window.contains(&pid),
        });
    }
    let after = calls.iter().filter(|c| c.after_switch).count();
    ctx.ground.check(
        after > 0 && after < calls.len(),
        format!(
            "loop: its {} loads span the restart ({after} after the new watch's start)",
            calls.len()
        ),
    );
    calls
}

fn enforcement_records<'a>(w: &Watched<'a>) -> Vec<&'a Value> {
    w.records
        .iter()
        .copied()
        .filter(|r| r["kind"] == "enforcement")
        .collect()
}

/// The sum of one rule's `new` over the periodic `enforcement` records.
fn reported_new(w: &Watched, rule: &str) -> u64 {
    enforcement_records(w)
        .iter()
        .filter(|r| r.get("previous").is_none())
        .filter_map(|r| r["new"][rule].as_u64())
        .sum()
}

fn policy_sha(w: &Watched) -> Option<String> {
    w.start()
        .and_then(|s| s["policy"]["sha256"].as_str())
        .map(str::to_owned)
}

fn check_first(ctx: &mut Ctx, w: &Watched) {
    let m = &mut ctx.modtrace;
    m.eq(
        "first: start.enforcing",
        w.start().map(|s| s["enforcing"].clone()),
        Some(json!(true)),
    );
    m.eq(
        "first: no enforcement taken over (nothing was pinned)",
        enforcement_records(w)
            .iter()
            .filter(|r| r.get("previous").is_some())
            .count(),
        0,
    );
    m.eq(
        "first: denials reported before SIGKILL",
        reported_new(w, CIS),
        1,
    );
}

fn check_second(ctx: &mut Ctx, w: &Watched, loop_calls: &[LoopCall]) {
    let first_sha = ctx
        .results
        .watches
        .get("first")
        .and_then(|f| f.lines.first()?.as_ref().ok())
        .and_then(|s| s["policy"]["sha256"].as_str())
        .map(str::to_owned);
    let m = &mut ctx.modtrace;
    let handover: Vec<&Value> = enforcement_records(w)
        .into_iter()
        .filter(|r| r.get("previous").is_some())
        .collect();
    m.eq(
        "second: one enforcement record of the takeover",
        handover.len(),
        1,
    );
    let stop = w.records.last().copied();
    let stop_denials = stop.map(|s| s["enforcement"]["denials"].clone());
    let after_switch = loop_calls.iter().filter(|c| c.after_switch).count() as u64;
    let this_run = stop_denials.as_ref().and_then(|d| d[CIS].as_u64());
    m.eq(
        "second: stop's dummy denials",
        stop_denials.as_ref().map(|d| d["deny-dummy"].clone()),
        Some(json!(1)),
    );
    m.check(
        this_run.is_some_and(|n| n >= after_switch),
        format!("second: its {CIS} denials {this_run:?} include the {after_switch} loop loads in its window"),
    );
    if let Some(record) = handover.first() {
        let previous = &record["previous"];
        m.eq(
            "second: takeover previous.policy_sha256 is the first watch's",
            previous["policy_sha256"].as_str().map(str::to_owned),
            first_sha,
        );
        m.eq(
            "second: takeover adopted, not replaced",
            previous["replaced"].as_bool(),
            Some(false),
        );
        let before = record["denials"][CIS].as_u64();
        // modprobe_first, modprobe_orphan and every loop load: once each,
        // in the old generation or the new.
        let loads = 2 + loop_calls.len() as u64;
        m.eq(
            &format!("second: denials before the switch + after = the {loads} denied loads"),
            before.zip(this_run).map(|(b, a)| b + a),
            Some(loads),
        );
        m.eq(
            "second: takeover new = all but the first watch's reported one",
            record["new"][CIS].as_u64(),
            before.map(|b| b - 1),
        );
    }
    for a in loop_calls.iter().filter(|c| c.after_switch) {
        for record in w.by_pid(Some(a.pid)) {
            m.eq(
                &format!("second: loop load by pid {}: enforcement", a.pid),
                &record["enforcement"],
                &json!({"denied": true, "rule": CIS, "hook": "kernel_read_file"}),
            );
        }
    }
    if let Some(a) = ctx.results.action("dummy_denied") {
        check_denied_record(m, w, a, "deny-dummy");
    }
    m.eq(
        "second: stop.enforcement_released",
        stop.map(|s| s["enforcement_released"].clone()),
        Some(json!(false)),
    );
}

/// The last load record of action `a` says it was denied by `rule`, at the
/// hook of the syscall the loader chose.
fn check_denied_record(m: &mut Checks, w: &Watched, a: &Action, rule: &str) {
    let records = w.by_pid(a.pid);
    let Some(record) = records.iter().rev().find(|r| r["kind"] != "delete_module") else {
        m.fail(format!("{}: no load record", a.label));
        return;
    };
    let hook = match record["kind"].as_str() {
        Some("finit_module") => "kernel_read_file",
        _ => "kernel_post_load_data",
    };
    m.eq(
        &format!("{}: enforcement", a.label),
        &record["enforcement"],
        &json!({"denied": true, "rule": rule, "hook": hook}),
    );
}

fn status(ctx: &mut Ctx, label: &str) -> Option<Value> {
    let a = ctx.results.action(label)?;
    match serde_json::from_str::<Value>(a.stdout.trim()) {
        Ok(v) => Some(v),
        Err(e) => {
            ctx.modtrace
                .fail(format!("{label}: status is not JSON ({e}): {:?}", a.stdout));
            None
        }
    }
}

fn rule_denials(status: &Value) -> BTreeMap<String, u64> {
    status["deny_rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["id"].as_str()?.to_owned(), r["denials"].as_u64()?)))
        .collect()
}

/// Status `s` (action `label`) says enforcement goes on with no collector.
fn enforcing_orphaned(m: &mut Checks, label: &str, s: &Value) {
    m.eq(
        &format!("{label}: enforcing"),
        s["enforcing"].as_bool(),
        Some(true),
    );
    m.eq(
        &format!("{label}: no collector attached"),
        s["collector"]["attached"].as_bool(),
        Some(false),
    );
}

fn check_statuses(ctx: &mut Ctx, first: Option<&Watched>, second: Option<&Watched>) {
    let orphan = status(ctx, "status_orphan");
    let after_term = status(ctx, "status_after_term");
    let released = status(ctx, "status_released");
    let m = &mut ctx.modtrace;
    if let Some(s) = &orphan {
        enforcing_orphaned(m, "status_orphan", s);
        m.eq(
            "status_orphan: denials",
            rule_denials(s),
            BTreeMap::from([(CIS.to_owned(), 2)]),
        );
        m.eq(
            "status_orphan: the first watch's policy",
            s["policy"]["sha256"].as_str().map(str::to_owned),
            first.and_then(policy_sha),
        );
    }
    if let Some(s) = &after_term {
        enforcing_orphaned(m, "status_after_term", s);
        m.eq(
            "status_after_term: the second watch's policy",
            s["policy"]["sha256"].as_str().map(str::to_owned),
            second.and_then(policy_sha),
        );
        let stop = second.and_then(|w| w.records.last().copied());
        let cis = stop.and_then(|s| s["enforcement"]["denials"][CIS].as_u64());
        m.eq(
            "status_after_term: denials (the second watch's and modprobe_after_term)",
            rule_denials(s),
            BTreeMap::from([
                (CIS.to_owned(), cis.unwrap_or(0) + 1),
                ("deny-dummy".to_owned(), 1),
            ]),
        );
        m.eq(
            "status_after_term: pinned since the first watch",
            &s["since"],
            &orphan.as_ref().map_or(Value::Null, |o| o["since"].clone()),
        );
    }
    if let Some(a) = ctx.results.action("status_text") {
        m.check(
            a.stdout.starts_with("enforcing since ")
                && a.stdout.contains("collector: none attached")
                && a.stdout.contains("deny-dummy"),
            format!(
                "status_text: says enforcing, no collector, each rule: {:?}",
                a.stdout
            ),
        );
    }
    if let Some(s) = &released {
        m.eq("status_released", s, &json!({"enforcing": false}));
    }
}

fn check_release_logged(ctx: &mut Ctx, w: &Watched) {
    let after_term = status(ctx, "status_after_term");
    let m = &mut ctx.modtrace;
    let releases = commands(w, "release");
    m.eq("third: one release record", releases.len(), 1);
    let Some(release) = releases.first() else {
        return;
    };
    m.eq("third: release.by_uid", release["by_uid"].as_u64(), Some(0));
    if let Some(s) = &after_term {
        m.eq(
            "third: release names the policy released",
            &release["policy_sha256"],
            &s["policy"]["sha256"],
        );
        let denials: BTreeMap<String, u64> =
            serde_json::from_value(release["denials"].clone()).unwrap_or_default();
        m.eq("third: release.denials", denials, rule_denials(s));
    }
}

/// The `enforce_command` records of `command`.
fn commands<'a>(w: &Watched<'a>, command: &str) -> Vec<&'a Value> {
    w.records
        .iter()
        .copied()
        .filter(|r| r["kind"] == "enforce_command" && r["command"] == command)
        .collect()
}

fn check_lock(ctx: &mut Ctx, w: &Watched) {
    for (label, ret) in [
        ("lock_denied", EPERM),
        ("lock_allowed", 0),
        ("lock_expired", EPERM),
    ] {
        expect_mtcall_ret(ctx, label, ret);
    }
    for label in [
        "modprobe_loop",
        "lock",
        "rmmod_loop_locked",
        "modprobe_loop_locked",
        "allow",
        "status_allowed",
        "rmmod_lock_allowed",
        "status_expired",
    ] {
        expect_rc(ctx, label, 0);
    }
    let allowed = status(ctx, "status_allowed");
    let expired = status(ctx, "status_expired");
    let r = ctx.results;
    let m = &mut ctx.modtrace;
    for label in ["lock_denied", "lock_expired"] {
        if let Some(a) = r.action(label) {
            check_denied_record(m, w, a, LOCK);
        }
    }
    for label in ["lock_allowed", "modprobe_loop_locked"] {
        if let Some(a) = r.action(label) {
            for record in w.by_pid(a.pid) {
                m.eq(
                    &format!("{label}: not denied"),
                    record.get("enforcement"),
                    None,
                );
            }
        }
    }
    m.eq(
        "lock: stop.enforcement.denials of the lock",
        w.records
            .last()
            .map(|s| s["enforcement"]["denials"][LOCK].clone()),
        Some(json!(2)),
    );
    let locks = commands(w, "lock");
    m.check(
        locks.len() == 1 && locks[0]["kept"].as_u64().is_some_and(|n| n > 0),
        format!("lock: one enforce_command lock keeping the modules loaded: {locks:?}"),
    );
    let allows = commands(w, "allow");
    m.check(
        allows.len() == 1 && allows[0]["module"] == "dummy" && allows[0]["seconds"] == 10,
        format!("lock: one enforce_command allow of dummy for 10 s: {allows:?}"),
    );
    if let Some(s) = &allowed {
        m.eq("status_allowed: locked", s["locked"].as_bool(), Some(true));
        let allows = s["temporary_allows"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        m.check(
            allows.len() == 1
                && allows[0]["module"] == "dummy"
                && allows[0]["seconds_left"]
                    .as_u64()
                    .is_some_and(|n| (1..=10).contains(&n)),
            format!("status_allowed: dummy allowed for at most 10 s more: {allows:?}"),
        );
    }
    if let Some(s) = &expired {
        m.eq("status_expired: locked", s["locked"].as_bool(), Some(true));
        m.eq(
            "status_expired: no allow left",
            &s["temporary_allows"],
            &json!([]),
        );
    }
}

fn check_release_on_exit(ctx: &mut Ctx, w: &Watched) {
    let fourth_status = status(ctx, "status_fourth");
    let m = &mut ctx.modtrace;
    if let Some(a) = ctx.results.action("modprobe_fourth") {
        check_denied_record(m, w, a, CIS);
    }
    m.eq(
        "fourth: nothing taken over (released before)",
        enforcement_records(w)
            .iter()
            .filter(|r| r.get("previous").is_some())
            .count(),
        0,
    );
    m.eq(
        "fourth: stop.enforcement_released",
        w.records.last().map(|s| s["enforcement_released"].clone()),
        Some(json!(true)),
    );
    if let Some(s) = &fourth_status {
        m.eq("status_fourth", s, &json!({"enforcing": false}));
    }
}
