//! tests/vm/scenarios/enforce.sh: loads denied in the kernel by the BPF LSM,
//! checked against the kernel's own trace of each call, and the same loads
//! in audit mode.
use serde_json::{json, Value};

use super::{
    scenarios::{action, expect_rc, mtcall_report},
    watch::{watched, Watched},
    Checks, Ctx,
};
use crate::results::Action;

const EPERM: i64 = -1;

pub(crate) fn enforce(ctx: &mut Ctx) {
    if ctx.results.watches.contains_key("inactive") {
        check_inactive(ctx);
        return;
    }
    ground(ctx);
    if let Some(w) = watched(ctx, "cis") {
        check_cis(ctx, &w);
    }
    if let Some(w) = watched(ctx, "fileless") {
        check_fileless(ctx, &w);
    }
    if let Some(w) = watched(ctx, "audit") {
        check_audit(ctx, &w);
    }
    check_unlisted(ctx);
}

/// The loads of one action as the kernel traced them: (syscall, ret).
fn traced_loads(ctx: &Ctx, a: &Action) -> Vec<(String, Option<i64>)> {
    ctx.results
        .calls()
        .filter(|c| c.tgid == a.pid && c.syscall != "delete_module")
        .map(|c| (c.syscall.clone(), c.ret))
        .collect()
}

fn ground(ctx: &mut Ctx) {
    for label in ["modprobe_cis", "insmod_cis"] {
        let Some(a) = action(ctx, label) else {
            continue;
        };
        let loads = traced_loads(ctx, a);
        let g = &mut ctx.ground;
        g.check(
            a.rc.is_some_and(|rc| rc != 0) && a.stderr.contains("Operation not permitted"),
            format!(
                "{label}: fails with kmod's own EPERM message: rc {:?}, stderr {:?}",
                a.rc,
                a.stderr.trim()
            ),
        );
        g.check(
            loads.last().is_some_and(|(_, ret)| *ret == Some(EPERM)),
            format!("{label}: its last load syscall returned EPERM: {loads:?}"),
        );
    }
    for (label, ret) in [
        ("memfd_denied", EPERM),
        ("image_denied", EPERM),
        ("file_allowed", 0),
    ] {
        let Some(a) = action(ctx, label) else {
            continue;
        };
        let loads = traced_loads(ctx, a);
        if let Some(report) = mtcall_report(ctx, a) {
            ctx.ground.eq(
                &format!("{label}: mtcall ret"),
                report["ret"].as_i64(),
                Some(ret),
            );
        }
        ctx.ground.eq(&format!("{label}: traced"), loads.len(), 1);
    }
    for label in [
        "modprobe_allowed",
        "rmmod_allowed",
        "rmmod_file_allowed",
        "modprobe_audit",
        "rmmod_audit",
    ] {
        expect_rc(ctx, label, 0);
    }
    for label in ["memfd_audit", "image_audit"] {
        let Some(a) = action(ctx, label) else {
            continue;
        };
        if let Some(report) = mtcall_report(ctx, a) {
            ctx.ground.eq(
                &format!("{label}: mtcall ret"),
                report["ret"].as_i64(),
                Some(0),
            );
        }
    }
    // Denied at the request: the kernel never ran a modprobe that loaded.
    if let Some(socket) = action(ctx, "autoload_cis") {
        let r = ctx.results;
        let kernel_loads: Vec<_> = r
            .calls()
            .filter(|c| {
                c.comm == "modprobe" && c.tgid != socket.pid && c.syscall != "delete_module"
            })
            .filter(|c| r.action("modprobe_cis").is_none_or(|a| c.tgid != a.pid))
            .filter(|c| r.action("modprobe_allowed").is_none_or(|a| c.tgid != a.pid))
            .filter(|c| r.action("modprobe_audit").is_none_or(|a| c.tgid != a.pid))
            .collect();
        ctx.ground.check(
            kernel_loads.is_empty(),
            format!("autoload_cis: no load by a modprobe the kernel started: {kernel_loads:?}"),
        );
        if let Some(report) = mtcall_report(ctx, socket) {
            ctx.ground.check(
                report["ret"].as_i64().is_some_and(|ret| ret < 0),
                format!("autoload_cis: the SCTP socket failed: {report}"),
            );
        }
        ctx.ground.check(
            !r.modules_after.iter().any(|m| m == "sctp"),
            "sctp never loaded",
        );
    }
}

/// The record of the last load by action `label`, checked as denied by
/// `rule`; the hook depends on the syscall the loader chose.
fn check_denied(m: &mut Checks, w: &Watched, a: &Action, rule: &str) {
    let loads: Vec<&Value> = w
        .by_pid(a.pid)
        .into_iter()
        .filter(|r| r["kind"] != "delete_module")
        .collect();
    let Some(record) = loads.last() else {
        m.fail(format!("{}: no load record", a.label));
        return;
    };
    let hook = match record["kind"].as_str() {
        Some("finit_module") => "kernel_read_file",
        _ if rule == "deny-fileless" => "kernel_load_data",
        _ => "kernel_post_load_data",
    };
    let what = |field: &str| format!("{} ({}): {field}", a.label, record["kind"]);
    m.eq(
        &what("result.errno"),
        record["result"]["errno"].as_str(),
        Some("EPERM"),
    );
    m.eq(
        &what("enforcement"),
        &record["enforcement"],
        &json!({"denied": true, "rule": rule, "hook": hook}),
    );
    m.eq(
        &what("policy.verdict"),
        record["policy"]["verdict"].as_str(),
        Some("deny"),
    );
    m.eq(
        &what("policy.would_deny"),
        record["policy"].get("would_deny"),
        None,
    );
}

fn check_not_denied(m: &mut Checks, w: &Watched, a: &Action) {
    for record in w.by_pid(a.pid) {
        m.eq(
            &format!("{} ({}): no enforcement", a.label, record["kind"]),
            record.get("enforcement"),
            None,
        );
        m.eq(
            &format!("{} ({}): result ok", a.label, record["kind"]),
            record["result"]["ok"].as_bool(),
            Some(true),
        );
    }
}

fn denials(w: &Watched) -> Value {
    w.records
        .iter()
        .rev()
        .find(|r| r["kind"] == "stop")
        .map_or(Value::Null, |stop| stop["enforcement"]["denials"].clone())
}

fn check_cis(ctx: &mut Ctx, w: &Watched) {
    let r = ctx.results;
    let m = &mut ctx.modtrace;
    m.eq(
        "cis: start.enforcing",
        w.start().map(|s| s["enforcing"].clone()),
        Some(json!(true)),
    );
    for label in ["modprobe_cis", "insmod_cis"] {
        if let Some(a) = r.action(label) {
            check_denied(m, w, a, "cis-denied-module");
        }
    }
    if let Some(a) = r.action("modprobe_allowed") {
        check_not_denied(m, w, a);
    }
    // modprobe, insmod and the one request that names sctp.
    m.eq(
        "cis: stop.enforcement.denials",
        denials(w),
        json!({"cis-denied-module": 3}),
    );
    let periodic: u64 = w
        .records
        .iter()
        .filter(|r| r["kind"] == "enforcement")
        .filter_map(|r| r["new"]["cis-denied-module"].as_u64())
        .sum();
    m.eq("cis: denials in enforcement records", periodic, 3);
}

fn check_fileless(ctx: &mut Ctx, w: &Watched) {
    let r = ctx.results;
    let m = &mut ctx.modtrace;
    for label in ["memfd_denied", "image_denied"] {
        if let Some(a) = r.action(label) {
            check_denied(m, w, a, "deny-fileless");
        }
    }
    if let Some(a) = r.action("file_allowed") {
        check_not_denied(m, w, a);
    }
    m.eq(
        "fileless: stop.enforcement.denials",
        denials(w),
        json!({"cis-denied-module": 0, "deny-fileless": 2}),
    );
}

fn check_audit(ctx: &mut Ctx, w: &Watched) {
    let r = ctx.results;
    let m = &mut ctx.modtrace;
    m.eq(
        "audit: start.enforcing",
        w.start().and_then(|s| s.get("enforcing")),
        None,
    );
    for (label, rule) in [
        ("modprobe_audit", "cis-denied-module"),
        ("memfd_audit", "deny-fileless"),
        ("image_audit", "deny-fileless"),
    ] {
        let Some(a) = r.action(label) else { continue };
        let denied: Vec<&Value> = w
            .by_pid(a.pid)
            .into_iter()
            .filter(|rec| rec["policy"]["verdict"] == "deny")
            .collect();
        m.check(
            !denied.is_empty(),
            format!("{label}: a record with verdict deny"),
        );
        for record in denied {
            let what = |field: &str| format!("{label} ({}): {field}", record["kind"]);
            m.eq(
                &what("would_deny"),
                record["policy"]["would_deny"].as_bool(),
                Some(true),
            );
            m.eq(
                &what("result.ok"),
                record["result"]["ok"].as_bool(),
                Some(true),
            );
            m.eq(&what("enforcement"), record.get("enforcement"), None);
            let rules: Vec<&str> = record["policy"]["matches"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["rule"].as_str())
                .collect();
            m.check(
                rules.contains(&rule),
                format!("{}: matched {rule}: {rules:?}", what("rules")),
            );
        }
    }
    m.eq("audit: no enforcement in stop", denials(w), Value::Null);
}

/// Without /sys/kernel/security/lsm, --enforce refuses to start and says
/// why; plain `watch` starts.
fn check_unlisted(ctx: &mut Ctx) {
    let watches = &ctx.results.watches;
    match watches.get("unlisted") {
        Some(w) => ctx.modtrace.check(
            w.status.starts_with("failed")
                && w.stderr.contains("/sys/kernel/security/lsm cannot be read"),
            format!(
                "unlisted: --enforce refused: {:?} {:?}",
                w.status,
                w.stderr.trim()
            ),
        ),
        None => ctx.ground.fail("watch unlisted did not run"),
    }
    match watches.get("plain_unlisted") {
        Some(w) => ctx
            .modtrace
            .eq("plain_unlisted: status", w.status.trim(), "started"),
        None => ctx.ground.fail("watch plain_unlisted did not run"),
    }
}

/// A kernel booted without the BPF LSM: --enforce refuses, naming the
/// kernel's list and the parameter to add; plain `watch` starts.
fn check_inactive(ctx: &mut Ctx) {
    check_enforce_refused(ctx);
    match ctx.results.watches.get("plain_inactive") {
        Some(w) => ctx
            .modtrace
            .eq("plain_inactive: status", w.status.trim(), "started"),
        None => ctx.ground.fail("watch plain_inactive did not run"),
    }
}

/// The kernel's LSM list (action `lsm_list`) lacks bpf, and watch
/// `inactive` (`--enforce`) refused to start, naming that list and the
/// kernel parameter that adds bpf to it.
pub(crate) fn check_enforce_refused(ctx: &mut Ctx) {
    let Some(kernel_list) = action(ctx, "lsm_list").map(|a| a.stdout.trim().to_owned()) else {
        return;
    };
    ctx.ground.check(
        !kernel_list.is_empty() && !kernel_list.split(',').any(|l| l == "bpf"),
        format!("inactive: the kernel's LSM list lacks bpf: {kernel_list:?}"),
    );
    let Some(refused) = ctx.results.watches.get("inactive") else {
        ctx.ground.fail("watch inactive did not run");
        return;
    };
    let stderr = refused.stderr.trim();
    let list = stderr
        .split_once("(/sys/kernel/security/lsm: \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(list, _)| list.to_owned());
    ctx.modtrace.check(
        refused.status.starts_with("failed")
            && list.as_deref() == Some(kernel_list.as_str())
            && stderr.contains(&format!(
                "add `lsm={kernel_list},bpf` to the kernel command line"
            )),
        format!(
            "inactive: --enforce refused, naming the list and lsm=…,bpf: {:?} {stderr:?}",
            refused.status
        ),
    );
}
