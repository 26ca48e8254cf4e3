//! tests/vm/scenarios/flood.sh: 50 real load/unload cycles while flooders
//! make failing delete_module calls at full speed. Every load and unload is
//! reported in full and nothing is lost; every flooder call is reported or
//! counted in a summary, exactly once, against the flooder's own counts.
use serde_json::Value;

use super::{
    scenarios::{action, expect_rc, mtcall_report},
    watch::{ended_well, skipped_exit_runs, watched, Watched, SYSCALL_KINDS, UNTRACED_COMM},
    Checks, Ctx,
};

const CYCLES: usize = 50;

/// Each flood action: its label, the errno its calls get, and whether each
/// call passes a new name (so that calls past the budget are `distinct`).
const FLOODS: &[(&str, &str, bool)] = &[
    ("same_name", "EPERM", false),
    ("new_names", "EPERM", true),
    ("root_new_names", "ENOENT", true),
];

pub(crate) fn flood(ctx: &mut Ctx) {
    for label in [
        "cycles",
        "flooding",
        "same_name",
        "new_names",
        "root_new_names",
    ] {
        expect_rc(ctx, label, 0);
    }
    let r = ctx.results;
    let successes = |syscall: &str| {
        r.calls()
            .filter(|c| c.syscall == syscall && c.ret == Some(0) && c.comm != UNTRACED_COMM)
            .count()
    };
    let loads = successes("init_module") + successes("finit_module");
    ctx.ground.eq("successful loads traced", loads, CYCLES);
    ctx.ground.eq(
        "successful unloads traced",
        successes("delete_module"),
        CYCLES,
    );
    let reports: Vec<(&str, &str, bool, Value)> = FLOODS
        .iter()
        .filter_map(|&(label, errno, distinct)| {
            let a = action(ctx, label)?;
            Some((label, errno, distinct, mtcall_report(ctx, a)?))
        })
        .collect();

    // No loss at all: `watched` fails on any loss record.
    let Some(w) = watched(ctx, "main") else {
        return;
    };
    let m = &mut ctx.modtrace;
    check_cycles(m, &w);
    for (label, errno, distinct, report) in &reports {
        check_flooder(m, &w, label, errno, *distinct, report);
    }
}

/// Every successful load and unload is a full record naming dummy: with its
/// result, or, where the kernel skipped the exit program (no more records
/// than `stop` counts skipped exit runs), with module events that say it
/// returned 0.
fn check_cycles(m: &mut Checks, w: &Watched) {
    let without_exit = |r: &&&Value| r["exited"] == false && ended_well(r);
    let ok = |r: &&&Value| r.pointer("/result/ret") == Some(&Value::from(0)) || without_exit(r);
    let skipped = w
        .records
        .iter()
        .filter(|r| SYSCALL_KINDS.iter().any(|k| r["kind"] == *k) && r["exited"] == false)
        .count() as u64;
    m.check(
        skipped <= skipped_exit_runs(&w.records),
        format!("records without their exit ({skipped}, flooders' included) are no more than the exit runs the kernel skipped"),
    );
    let loads: Vec<_> = w
        .records
        .iter()
        .filter(|r| r["kind"] == "init_module" || r["kind"] == "finit_module")
        .filter(ok)
        .collect();
    m.eq("successful load records", loads.len(), CYCLES);
    m.check(
        loads
            .iter()
            .all(|r| r.pointer("/module/name") == Some(&Value::from("dummy"))),
        "every successful load record names dummy",
    );
    let unloads: Vec<_> = w
        .records
        .iter()
        .filter(|r| r["kind"] == "delete_module")
        .filter(ok)
        .collect();
    m.eq("successful unload records", unloads.len(), CYCLES);
    m.check(
        unloads
            .iter()
            .all(|r| r.pointer("/module/freed") == Some(&Value::Bool(true))),
        "every successful unload record says the module was freed",
    );
}

/// A flood action's children: each one's calls are its records plus its
/// summaries' counts, all with the errno the flooder saw.
fn check_flooder(
    m: &mut Checks,
    w: &Watched,
    label: &str,
    errno: &str,
    distinct: bool,
    report: &Value,
) {
    let children = report["children"].as_array().cloned().unwrap_or_default();
    m.check(
        !children.is_empty(),
        format!("{label}: mtcall reported its children"),
    );
    for child in children {
        let pid = &child["pid"];
        let calls = child["calls"].as_u64().unwrap_or(0);
        m.eq(
            &format!("{label} child {pid}: every call failed with {errno}"),
            child["errno_counts"][errno].as_u64(),
            Some(calls),
        );
        let of_child = |kind: &str| -> Vec<&Value> {
            w.records
                .iter()
                .copied()
                .filter(|r| r["kind"] == kind && r.pointer("/process/pid") == Some(pid))
                .collect()
        };
        let records = of_child("delete_module");
        let summaries = of_child("summary");
        let counted: u64 = summaries.iter().filter_map(|s| s["count"].as_u64()).sum();
        m.eq(
            &format!("{label} child {pid}: records + summarised = its {calls} calls"),
            records.len() as u64 + counted,
            calls,
        );
        // A record without its exit (the kernel skipped the exit program,
        // which `check_cycles` bounds) has no errno to carry.
        m.check(
            records.iter().all(|r| {
                r.pointer("/result/errno") == Some(&Value::from(errno)) || r["exited"] == false
            }),
            format!("{label} child {pid}: its records carry {errno}"),
        );
        let elided = if distinct { "distinct" } else { "repeats" };
        m.check(
            summaries.iter().any(|s| s["elided"] == elided),
            format!("{label} child {pid}: a summary of {elided} calls: {summaries:?}"),
        );
    }
}
