//! tests/vm/scenarios/container.sh: the container and namespaces of a loader
//! started the way a container runtime starts one.
use serde_json::{json, Value};

use super::{
    scenarios::{expect_rc, mtcall_report},
    watch::{child_record, watched},
    Ctx,
};

pub(crate) fn container(ctx: &mut Ctx) {
    for label in ["container", "rmmod", "container_id"] {
        expect_rc(ctx, label, 0);
    }
    let r = ctx.results;
    let (Some(a), Some(id)) = (r.action("container"), r.action("container_id")) else {
        return;
    };
    let id = id.stdout.trim();
    let Some(report) = mtcall_report(ctx, a) else {
        return;
    };
    ctx.ground.check(
        report["pid"] == 1 && report["ret"] == 0,
        format!("mtcall is pid 1 of its own pid namespace and loaded dummy: {report}"),
    );
    ctx.ground.check(
        a.namespaces.as_ref().is_some_and(|outside| {
            outside["mnt"] != report["mnt_ns"] && outside["pid"] != report["pid_ns"]
        }),
        format!(
            "mtcall's namespaces {report} differ from the scenario's {:?}",
            a.namespaces
        ),
    );

    let Some(w) = watched(ctx, "main") else {
        return;
    };
    let m = &mut ctx.modtrace;
    // unshare forks mtcall: its parent is the action's process.
    let Some(record) = child_record(m, &w, a) else {
        return;
    };
    m.eq(
        "container: kind",
        record["kind"].as_str(),
        Some("finit_module"),
    );
    let p = &record["process"];
    m.eq(
        "container: process.namespaces (mtcall's own)",
        &p["namespaces"],
        &json!({"mnt": report["mnt_ns"], "pid": report["pid_ns"]}),
    );
    m.eq(
        "container: process.cgroup",
        p["cgroup"].as_str(),
        Some(format!("/system.slice/docker-{id}.scope").as_str()),
    );
    m.eq(
        "container: the policy's container rule matched",
        record
            .pointer("/policy/matches/0/rule")
            .and_then(Value::as_str),
        Some("load-in-container"),
    );
    m.eq(
        "container: process.container",
        &p["container"],
        &json!({"runtime": "docker", "id": id, "pod_uid": null}),
    );
    m.eq(
        "container: process.comm",
        p["comm"].as_str(),
        Some("mtcall"),
    );
    m.check(
        p["cmdline"].is_null(),
        format!("container: mtcall was gone when its record was read (cmdline null): {p}"),
    );
    m.eq(
        "container: process.exe (from the kernel's exec record)",
        p["exe"].as_str(),
        Some("/usr/bin/mtcall"),
    );
    m.check(
        p["pid"].as_u64().is_some_and(|pid| pid > 1),
        format!(
            "container: process.pid is the pid outside the container: {}",
            p["pid"]
        ),
    );
}
