//! tests/vm/scenarios/inflight.sh: calls held in the kernel across modtrace's
//! stop and start are reported or counted, never lost silently.
use serde_json::Value;

use super::{
    scenarios::{action, expect_rc, mtcall_report},
    watch::{watched, watched_with_losses},
    Ctx,
};
use crate::results::TracedCall;

const PATH: &str = "/lib/modtrace-fixtures/dummy.ko";

pub(crate) fn inflight(ctx: &mut Ctx) {
    for label in ["rmmod_held_at_stop", "rmmod_held_at_start"] {
        expect_rc(ctx, label, 0);
    }
    let r = ctx.results;
    let at_stop = held_call(ctx, "held_at_stop");
    if let Some(call) = &at_stop {
        ctx.ground.check(
            r.returned_after(call, "stopped_during_call"),
            format!("held_at_stop returned after modtrace stopped: {call:?}"),
        );
    }
    if let Some(call) = held_call(ctx, "held_at_start") {
        ctx.ground.check(
            r.straddles_start(&call, "started_during_call"),
            format!(
                "held_at_start entered before modtrace started and returned while it ran: {call:?}"
            ),
        );
    }

    if let Some(w) = watched(ctx, "stopped_during_call") {
        let m = &mut ctx.modtrace;
        let records = r
            .action("held_at_stop")
            .map(|a| w.by_pid(a.pid))
            .unwrap_or_default();
        let ok = matches!(records.as_slice(), [record]
            if record["kind"] == "finit_module"
                && record["exited"] == false
                && record.pointer("/args/file/path").and_then(Value::as_str) == Some(PATH));
        m.check(
            ok,
            format!("stopped_during_call: the held finit_module of {PATH} is reported at the stop with exited false: {records:?}"),
        );
    }
    if let Some(w) = watched_with_losses(ctx, "started_during_call") {
        let m = &mut ctx.modtrace;
        let records = r
            .action("held_at_start")
            .map(|a| w.by_pid(a.pid))
            .unwrap_or_default();
        m.check(
            records.is_empty(),
            format!("started_during_call: no record invented for a call whose entry was not seen: {records:?}"),
        );
        let counted = |reason: &str| -> u64 {
            w.records
                .iter()
                .filter(|rec| rec["kind"] == "loss")
                .filter_map(|rec| rec["lost"][reason].as_u64())
                .sum()
        };
        m.eq(
            "started_during_call: loss records (entry_missing, ringbuf_full, pending_full)",
            (
                counted("entry_missing"),
                counted("ringbuf_full"),
                counted("pending_full"),
            ),
            (1, 0, 0),
        );
        let stop = w.records.last().map(|s| &s["lost"]);
        m.eq(
            "started_during_call: stop.lost (entry_missing, total)",
            stop.map(|l| (l["entry_missing"].as_u64(), l["total"].as_u64())),
            Some((Some(1), Some(1))),
        );
    }
}

/// The held mtcall loaded dummy in the end, its fault was held, and the
/// kernel traced its one call.
fn held_call(ctx: &mut Ctx, label: &str) -> Option<TracedCall> {
    expect_rc(ctx, label, 0);
    let a = action(ctx, label)?;
    ctx.ground.check(
        a.stderr.contains("fault held") && a.stderr.contains("released"),
        format!(
            "{label}: mtcall's parameters page fault was held, then released: {:?}",
            a.stderr
        ),
    );
    let report = mtcall_report(ctx, a)?;
    ctx.ground.eq(
        &format!("{label}: mtcall ret"),
        report["ret"].as_i64(),
        Some(0),
    );
    let calls: Vec<&TracedCall> = ctx
        .results
        .calls()
        .filter(|c| a.pid.is_some() && c.tgid == a.pid)
        .collect();
    match calls.as_slice() {
        [call] if call.syscall == "finit_module" && call.ret == Some(0) => Some((*call).clone()),
        _ => {
            ctx.ground.fail(format!(
                "{label}: one finit_module returning 0 traced, got {calls:?}"
            ));
            None
        }
    }
}
