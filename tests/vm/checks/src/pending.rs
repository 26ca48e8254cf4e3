//! tests/vm/scenarios/pending.sh: more calls in flight at once than the
//! pending map holds; each is reported or counted lost, exactly once.
use serde_json::Value;

use super::{
    scenarios::{action, expect_rc, mtcall_report},
    watch::watched_with_losses,
    Ctx,
};

const THREADS: u64 = 4200;
/// `PENDING_CAPACITY` of modtrace-common.
const PENDING_CAPACITY: u64 = 4096;

pub(crate) fn pending(ctx: &mut Ctx) {
    expect_rc(ctx, "overflow", 0);
    expect_rc(ctx, "in_kernel", 0);
    let r = ctx.results;
    let Some(a) = action(ctx, "overflow") else {
        return;
    };
    if let Some(report) = mtcall_report(ctx, a) {
        ctx.ground.eq(
            "overflow: every thread's delete_module failed with ENOENT",
            report["results"]["ENOENT"].as_u64(),
            Some(THREADS),
        );
    }
    let in_kernel = r
        .action("in_kernel")
        .and_then(|a| a.stdout.trim().parse::<u64>().ok());
    ctx.ground.eq(
        "threads inside delete_module at once",
        in_kernel,
        Some(THREADS),
    );
    let traced = r
        .calls()
        .filter(|c| a.pid.is_some() && c.tgid == a.pid && c.syscall == "delete_module")
        .count() as u64;
    ctx.ground.eq("delete_module calls traced", traced, THREADS);

    let Some(w) = watched_with_losses(ctx, "main") else {
        return;
    };
    let m = &mut ctx.modtrace;
    let reported = w.by_pid(a.pid).len() as u64;
    let lost = |reason: &str| {
        w.records
            .last()
            .and_then(|stop| stop["lost"][reason].as_u64())
    };
    let pending_full = lost("pending_full").unwrap_or(0);
    m.check(
        reported <= PENDING_CAPACITY && pending_full >= THREADS - PENDING_CAPACITY,
        format!("at most {PENDING_CAPACITY} calls fit the pending map: {reported} reported, {pending_full} counted pending_full"),
    );
    m.eq(
        "records + pending_full = calls made, nothing counted twice",
        reported + pending_full,
        THREADS,
    );
    m.eq(
        "stop.lost (entry_missing, ringbuf_full)",
        (lost("entry_missing"), lost("ringbuf_full")),
        (Some(0), Some(0)),
    );
    let reported_in_loss_records: u64 = w
        .records
        .iter()
        .filter(|rec| rec["kind"] == "loss")
        .filter_map(|rec| rec.pointer("/lost/pending_full").and_then(Value::as_u64))
        .sum();
    m.eq(
        "pending_full in loss records = in stop",
        reported_in_loss_records,
        pending_full,
    );
}
