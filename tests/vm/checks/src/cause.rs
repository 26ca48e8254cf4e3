//! Loads by the kernel's own modprobe and the autoload requests they serve:
//! `autoload_late`, and the `cause` checks `autoload` shares with it.
use std::collections::BTreeMap;

use serde_json::Value;

use super::{
    scenarios::{action, loaded, mtcall_report},
    watch::{watched, Watched},
    Checks, Ctx,
};
use crate::results::{Action, TracedCall};

/// The request a kernel modprobe serves, as the ground truth knows it: the
/// action whose socket call made it, and the aliases of the module that
/// modprobe was asked for (depmod's modules.alias), one of which it names.
pub(super) struct Asked<'a> {
    pub by: &'a Action,
    pub aliases: Vec<&'a str>,
}

/// The aliases listed by action `label` (lib.sh's `aliases_of MODULE`).
pub(super) fn asked<'a>(ctx: &mut Ctx<'a>, by: &'a Action, label: &str) -> Option<Asked<'a>> {
    let listed = action(ctx, label)?;
    let aliases: Vec<&str> = listed.stdout.lines().map(str::trim).collect();
    ctx.ground.check(
        listed.rc == Some(0) && !aliases.is_empty(),
        format!(
            "{label}: modinfo lists aliases: rc {:?}, {aliases:?}",
            listed.rc
        ),
    );
    Some(Asked { by, aliases })
}

/// `record`, a load by the kernel's modprobe, cites the request `asked`
/// made, by the command line the kernel captured at the load's entry.
pub(super) fn check_cause(m: &mut Checks, w: &Watched, what: &str, record: &Value, asked: &Asked) {
    let requests: Vec<&Value> = w
        .records
        .iter()
        .copied()
        .filter(|r| {
            r["kind"] == "request"
                && r.pointer("/process/pid").and_then(Value::as_u64) == asked.by.pid.map(u64::from)
                && r.pointer("/name/value")
                    .and_then(Value::as_str)
                    .is_some_and(|n| asked.aliases.contains(&n))
        })
        .collect();
    let [request] = requests[..] else {
        m.fail(format!(
            "{what}: one request naming an alias in {:?} by pid {:?} ({}), got {requests:?}",
            asked.aliases, asked.by.pid, asked.by.label
        ));
        return;
    };
    let field = |path: &str| record.pointer(&format!("/cause/{path}"));
    m.eq(
        &format!("{what}: cause.request_seq"),
        field("request_seq"),
        request.get("seq"),
    );
    m.eq(
        &format!("{what}: cause.request"),
        field("request"),
        request.pointer("/name/value"),
    );
    m.eq(
        &format!("{what}: cause.process.pid"),
        field("process/pid").and_then(Value::as_u64),
        asked.by.pid.map(u64::from),
    );
    m.eq(
        &format!("{what}: cause.process.uid"),
        field("process/uid").and_then(Value::as_u64),
        Some(1000),
    );
    m.eq(
        &format!("{what}: cause.matched_by"),
        field("matched_by").and_then(Value::as_str),
        Some("kernel-argv"),
    );
}

/// Successful loads, by the process that made them, in trace order.
fn loads_by_process<'a>(
    calls: impl Iterator<Item = &'a TracedCall>,
) -> BTreeMap<Option<u32>, Vec<&'a TracedCall>> {
    let mut by_process: BTreeMap<Option<u32>, Vec<&TracedCall>> = BTreeMap::new();
    for call in calls.filter(|c| c.syscall != "delete_module" && c.ret == Some(0)) {
        by_process.entry(call.tgid).or_default().push(call);
    }
    by_process
}

pub(super) fn autoload_late(ctx: &mut Ctx) {
    let r = ctx.results;
    for module in ["sctp", "af_key"] {
        ctx.ground.check(
            !loaded(r, true, module) && loaded(r, false, module),
            format!("{module} absent before and loaded after the socket calls"),
        );
    }
    let (Some(sctp), Some(key)) = (action(ctx, "sctp"), action(ctx, "key")) else {
        return;
    };
    for socket in [sctp, key] {
        if let Some(report) = mtcall_report(ctx, socket) {
            ctx.ground.eq(
                &format!("{}: mtcall uid", socket.label),
                report["uid"].as_u64(),
                Some(1000),
            );
        }
    }
    if let Some(comms) = action(ctx, "comms_at_resume") {
        ctx.ground.check(
            comms.rc == Some(0) && !comms.stdout.lines().any(|c| c == "modprobe"),
            format!(
                "no modprobe is alive when modtrace resumes: rc {:?}, comms {:?}",
                comms.rc, comms.stdout
            ),
        );
    }
    let (Some(sctp), Some(key)) = (
        asked(ctx, sctp, "sctp_aliases"),
        asked(ctx, key, "af_key_aliases"),
    ) else {
        return;
    };
    let by_process = loads_by_process(r.calls());
    // Each modprobe, by the module it was asked for: the last it loads,
    // after that module's dependencies.
    let mut served = Vec::new();
    let mut asked_for = [(sctp, "sctp"), (key, "af_key")].map(Some);
    for (pid, calls) in &by_process {
        let modules: Vec<&str> = calls
            .iter()
            .filter_map(|c| c.loaded.as_ref().map(|(name, _)| name.as_str()))
            .collect();
        let Some(asked) = asked_for
            .iter_mut()
            .find(|a| a.as_ref().is_some_and(|(_, m)| modules.last() == Some(m)))
            .and_then(Option::take)
            .map(|(asked, _)| asked)
        else {
            ctx.ground.fail(format!(
                "loads by pid {pid:?} end with neither sctp nor af_key: {calls:?}"
            ));
            continue;
        };
        ctx.ground.check(
            calls.iter().all(|c| c.comm == "modprobe"),
            format!("the loads of {modules:?} are the kernel's modprobe's: {calls:?}"),
        );
        served.push((asked, calls));
    }
    ctx.ground
        .eq("modprobes that loaded modules", served.len(), 2);

    let Some(w) = watched(ctx, "main") else {
        return;
    };
    let m = &mut ctx.modtrace;
    for (asked, calls) in served {
        for call in calls {
            let what = format!(
                "{} load {:?} by tid {}",
                asked.by.label,
                call.loaded.as_ref().map(|(name, _)| name),
                call.tid
            );
            let Some(record) = w.records.iter().find(|rec| {
                rec.pointer("/process/tid").and_then(Value::as_u64) == Some(u64::from(call.tid))
                    && rec["kind"] == call.syscall.as_str()
            }) else {
                m.fail(format!("{what}: no record"));
                continue;
            };
            check_cause(m, &w, &what, record, &asked);
        }
    }
}
