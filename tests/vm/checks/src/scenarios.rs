//! One assertion set per scenario file in tests/vm/scenarios/: ground truth first,
//! then the modtrace records of each watch.
use serde_json::Value;

use super::{
    cause::check_cause,
    watch::{check_flags, check_process, check_string, errno_name, watched, Who},
    Checks, Ctx,
};
use crate::results::{Action, ScenarioResults, TraceItem, TracedCall};

pub(crate) fn find(scenario: &str) -> Option<fn(&mut Ctx)> {
    Some(match scenario {
        "modprobe_sctp" => modprobe_sctp,
        "insmod_params" => insmod_params,
        "failures" => failures,
        "fileless" => fileless,
        "autoload" => autoload,
        "autoload_late" => super::cause::autoload_late,
        "concurrency" => concurrency,
        "strategies" => super::strategies::strategies,
        "identity" => super::identity::identity,
        "policy" => super::policy::policy,
        "container" => super::container::container,
        "inflight" => super::inflight::inflight,
        "pending" => super::pending::pending,
        "flood" => super::flood::flood,
        "enforce" => super::enforce::enforce,
        "persist" => super::persist::persist,
        "posture" => super::posture::posture,
        _ => return None,
    })
}

const O_NONBLOCK: u64 = 0o4000;
const MODULE_INIT_COMPRESSED_FILE: u64 = 4;

/// The action, or a ground-truth failure saying the scenario did not run it.
pub(super) fn action<'a>(ctx: &mut Ctx<'a>, label: &str) -> Option<&'a Action> {
    let found = ctx.results.action(label);
    if found.is_none() {
        ctx.ground.fail(format!("action {label} did not run"));
    }
    found
}

pub(super) fn expect_rc(ctx: &mut Ctx, label: &str, rc: i32) {
    if let Some(a) = action(ctx, label) {
        ctx.ground.check(
            a.rc == Some(rc),
            format!(
                "{label} {:?} exits {rc}: got {:?}, stderr {:?}",
                a.argv,
                a.rc,
                a.stderr.trim()
            ),
        );
    }
}

/// Module syscalls the kernel traced for process `pid`.
fn calls_of(r: &ScenarioResults, pid: Option<u32>) -> Vec<&TracedCall> {
    r.calls()
        .filter(|c| pid.is_some() && c.tgid == pid)
        .collect()
}

/// How the guest's kmod hands a module file to the kernel, as kmod's
/// `kmod_module_insert_module` decides: an uncompressed file by fd
/// (finit_module, flags 0); a compressed one by fd with
/// MODULE_INIT_COMPRESSED_FILE when kmod is 31 or later and the kernel
/// decompresses that format itself (/sys/module/compression, meta
/// `compression`); otherwise kmod decompresses it and calls init_module.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct KmodLoad {
    pub syscall: &'static str,
    /// finit_module's flags, with their names as modtrace renders them.
    pub flags: (u64, &'static [&'static str]),
}

pub(super) fn kmod_load(path: &str, r: &ScenarioResults) -> KmodLoad {
    let meta = |key: &str| r.meta.get(key).map(String::as_str);
    kmod_load_by(path, meta("kmod"), meta("compression"))
}

/// [`kmod_load`] for `kmod --version`'s first line and /sys/module/compression.
fn kmod_load_by(path: &str, kmod: Option<&str>, kernel_compression: Option<&str>) -> KmodLoad {
    const BY_FD: KmodLoad = KmodLoad {
        syscall: "finit_module",
        flags: (0, &[]),
    };
    let Some(format) = compression_of(path) else {
        return BY_FD;
    };
    let kernel_decompresses = kernel_compression.map(str::trim) == Some(format);
    if kmod.and_then(kmod_major).is_some_and(|major| major >= 31) && kernel_decompresses {
        KmodLoad {
            syscall: "finit_module",
            flags: (
                MODULE_INIT_COMPRESSED_FILE,
                &["MODULE_INIT_COMPRESSED_FILE"],
            ),
        }
    } else {
        KmodLoad {
            syscall: "init_module",
            flags: (0, &[]),
        }
    }
}

/// The major version in `kmod --version`'s first line (`kmod version 34.2` → 34).
fn kmod_major(version_line: &str) -> Option<u32> {
    let version = version_line.split_whitespace().last()?;
    version.split('.').next()?.parse().ok()
}

/// Whether the guest's kernel (meta `kernel`, `uname -r`) is at least `version`.
pub(super) fn kernel_at_least(r: &ScenarioResults, version: (u32, u32)) -> bool {
    let release = r.meta.get("kernel").map(String::as_str).unwrap_or_default();
    let mut parts = release
        .split(['.', '-', '+'])
        .map(|p| p.parse::<u32>().ok());
    matches!((parts.next(), parts.next()), (Some(Some(major)), Some(Some(minor))) if (major, minor) >= version)
}

/// The compression of a module file as /sys/module/compression names it.
fn compression_of(path: &str) -> Option<&'static str> {
    [(".ko.xz", "xz"), (".ko.zst", "zstd"), (".ko.gz", "gzip")]
        .into_iter()
        .find_map(|(suffix, format)| path.ends_with(suffix).then_some(format))
}

/// `.../crc32c-intel.ko.xz` → `crc32c_intel` (the name /proc/modules shows).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// Exactly one traced call by the action's process, with this syscall and return.
pub(super) fn expect_one_call<'a>(
    ctx: &mut Ctx<'a>,
    label: &str,
    syscall: &str,
    ret: i64,
) -> Option<&'a TracedCall> {
    let a = action(ctx, label)?;
    let calls = calls_of(ctx.results, a.pid);
    let ok = calls.len() == 1 && calls[0].syscall == syscall && calls[0].ret == Some(ret);
    ctx.ground.check(
        ok,
        format!(
            "{label}: one {syscall} returning {ret} ({:?}) traced for pid {:?}, got {calls:?}",
            errno_name(ret),
            a.pid
        ),
    );
    ok.then(|| calls[0])
}

/// Exactly one traced load of `path` by the action's process, made the way the
/// guest's kmod makes it ([`kmod_load`]): its syscall, its finit_module flags
/// as the kernel traced them, and this return.
pub(super) fn expect_kmod_load<'a>(
    ctx: &mut Ctx<'a>,
    label: &str,
    path: &str,
    ret: i64,
) -> Option<&'a TracedCall> {
    let load = kmod_load(path, ctx.results);
    let call = expect_one_call(ctx, label, load.syscall, ret)?;
    if load.syscall == "finit_module" {
        ctx.ground.eq(
            &format!("{label}: finit_module flags of {path} as traced"),
            call.args.get("flags").copied(),
            Some(load.flags.0),
        );
    }
    Some(call)
}

fn expect_no_call(ctx: &mut Ctx, label: &str) {
    if let Some(a) = action(ctx, label) {
        let calls = calls_of(ctx.results, a.pid);
        ctx.ground.check(
            calls.is_empty(),
            format!("{label}: kmod refuses in userspace, no syscall traced; got {calls:?}"),
        );
    }
}

pub(super) fn loaded(r: &ScenarioResults, before: bool, module: &str) -> bool {
    let list = if before {
        &r.modules_before
    } else {
        &r.modules_after
    };
    list.iter().any(|m| m == module)
}

/// The single report line mtcall printed for one call.
pub(super) fn mtcall_report(ctx: &mut Ctx, a: &Action) -> Option<Value> {
    match a.json_lines() {
        Ok(lines) if lines.len() == 1 => Some(lines[0].clone()),
        other => {
            ctx.ground.fail(format!(
                "{}: mtcall printed one JSON report, got {other:?}",
                a.label
            ));
            None
        }
    }
}

/// The mtcall call's report agrees with the kernel's trace: pid, uid and errno.
fn expect_mtcall(ctx: &mut Ctx, label: &str, syscall: &str, ret: i64, uid: u32) -> Option<Value> {
    let a = action(ctx, label)?;
    let report = mtcall_report(ctx, a)?;
    expect_one_call(ctx, label, syscall, ret);
    let g = &mut ctx.ground;
    g.eq(
        &format!("{label}: mtcall pid"),
        report["pid"].as_u64(),
        a.pid.map(u64::from),
    );
    g.eq(
        &format!("{label}: mtcall uid"),
        report["uid"].as_u64(),
        Some(u64::from(uid)),
    );
    let errno = errno_name(ret);
    g.check(
        report["errno"].as_str() == errno
            || (errno == Some("EAGAIN") && report["errno"] == "EWOULDBLOCK"),
        format!(
            "{label}: mtcall errno {} is the kernel's {errno:?}",
            report["errno"]
        ),
    );
    Some(report)
}

/// The one modtrace record of the action's process.
pub(super) fn one_record<'a>(
    m: &mut Checks,
    w: &super::watch::Watched<'a>,
    a: &Action,
) -> Option<&'a Value> {
    let records = w.by_pid(a.pid);
    m.check(
        records.len() == 1,
        format!(
            "{}: one modtrace record for pid {:?}, got {}",
            a.label,
            a.pid,
            records.len()
        ),
    );
    records.first().copied()
}

/// The one record of action `a`, an mtcall run by root from the scenario
/// shell, with its process fields checked.
fn root_mtcall_record<'a>(
    m: &mut Checks,
    w: &super::watch::Watched<'a>,
    a: &Action,
) -> Option<&'a Value> {
    let record = one_record(m, w, a)?;
    check_process(
        m,
        &a.label,
        record,
        &Who {
            pid: a.pid,
            ppid: a.ppid,
            uid: 0,
            comm: "mtcall",
            parent_comm: Some("sh"),
            cmdline: Some(&a.argv),
            namespaces: a.namespaces.as_ref(),
        },
    );
    Some(record)
}

/// A kmod tool run by the scenario shell.
pub(super) fn kmod_tool<'a>(a: &'a Action, comm: &'a str) -> Who<'a> {
    Who {
        pid: a.pid,
        ppid: a.ppid,
        uid: 0,
        comm,
        parent_comm: Some("sh"),
        cmdline: Some(&a.argv),
        namespaces: a.namespaces.as_ref(),
    }
}

fn modprobe_sctp(ctx: &mut Ctx) {
    expect_rc(ctx, "show_depends", 0);
    expect_rc(ctx, "modprobe", 0);
    let r = ctx.results;
    let (Some(plan), Some(modprobe)) = (r.action("show_depends"), r.action("modprobe")) else {
        return;
    };
    // modprobe skips what is already loaded; the rest load in --show-depends order.
    let paths: Vec<&str> = plan
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("insmod ")?.split_whitespace().next())
        .filter(|p| !loaded(r, true, &module_name(p)))
        .collect();
    let names: Vec<String> = paths.iter().map(|p| module_name(p)).collect();
    ctx.ground.check(
        names.len() >= 2 && names.last().is_some_and(|n| n == "sctp"),
        format!("--show-depends sctp plans sctp after its dependencies: {names:?}"),
    );
    let loads: Vec<String> = r
        .trace
        .iter()
        .filter_map(|i| {
            if let TraceItem::ModuleLoad(n) = i {
                Some(n.clone())
            } else {
                None
            }
        })
        .collect();
    ctx.ground
        .eq("modules the kernel loaded, in order", &loads, &names);
    ctx.ground.check(
        names.iter().all(|n| loaded(r, false, n)),
        format!("all of {names:?} in /proc/modules after"),
    );
    let calls = calls_of(r, modprobe.pid);
    let expected: Vec<(&str, Option<u64>, Option<i64>)> = paths
        .iter()
        .map(|p| {
            let load = kmod_load(p, r);
            let flags = (load.syscall == "finit_module").then_some(load.flags.0);
            (load.syscall, flags, Some(0))
        })
        .collect();
    let got: Vec<(&str, Option<u64>, Option<i64>)> = calls
        .iter()
        .map(|c| (c.syscall.as_str(), c.args.get("flags").copied(), c.ret))
        .collect();
    ctx.ground.eq(
        "modprobe's load syscalls (one per module: syscall, flags, return)",
        got,
        expected,
    );

    let Some(w) = watched(ctx, "main") else {
        return;
    };
    let m = &mut ctx.modtrace;
    let records = w.by_pid(modprobe.pid);
    m.eq("modtrace records of modprobe", records.len(), paths.len());
    for (record, path) in records.iter().zip(&paths) {
        let what = format!("modprobe load of {path}");
        let load = kmod_load(path, r);
        m.eq(
            &format!("{what}: kind"),
            record["kind"].as_str(),
            Some(load.syscall),
        );
        check_process(m, &what, record, &kmod_tool(modprobe, "modprobe"));
        m.eq(
            &format!("{what}: process.exe"),
            record.pointer("/process/exe").and_then(Value::as_str),
            Some("/usr/bin/kmod"),
        );
        check_string(
            m,
            &format!("{what}: args.params"),
            &record["args"]["params"],
            "",
        );
        if record["kind"] == "finit_module" {
            m.eq(
                &format!("{what}: args.file.path"),
                record.pointer("/args/file/path").and_then(Value::as_str),
                Some(*path),
            );
            m.eq(
                &format!("{what}: args.file.memfd"),
                record.pointer("/args/file/memfd"),
                Some(&Value::Bool(false)),
            );
            check_flags(
                m,
                &format!("{what}: args.flags"),
                &record["args"]["flags"],
                load.flags.0,
                load.flags.1,
            );
        }
    }
}

fn insmod_params(ctx: &mut Ctx) {
    for label in [
        "insmod",
        "net_devices",
        "rmmod",
        "modprobe_loop",
        "loop_max_loop",
        "modprobe_r",
    ] {
        expect_rc(ctx, label, 0);
    }
    let r = ctx.results;
    if let Some(devices) = r.action("net_devices") {
        let names: Vec<&str> = devices.stdout.split_whitespace().collect();
        ctx.ground.check(
            names.contains(&"dummy0") && names.contains(&"dummy1") && !names.contains(&"dummy2"),
            format!("numdummies=2 made dummy0 and dummy1 only: {names:?}"),
        );
    }
    if let Some(max_loop) = r.action("loop_max_loop") {
        ctx.ground
            .eq("loop's max_loop parameter", max_loop.stdout.trim(), "3");
    }
    let dummy_path = r
        .action("insmod")
        .and_then(|a| a.argv.get(1))
        .cloned()
        .unwrap_or_default();
    expect_kmod_load(ctx, "insmod", &dummy_path, 0);
    for label in ["rmmod", "modprobe_r"] {
        if let Some(call) = expect_one_call(ctx, label, "delete_module", 0) {
            ctx.ground.eq(
                &format!("{label}: delete_module flags"),
                call.args.get("flags").copied(),
                Some(O_NONBLOCK),
            );
        }
    }
    ctx.ground.check(
        !loaded(r, false, "dummy") && !loaded(r, false, "loop"),
        "dummy and loop unloaded at the end",
    );

    let Some(w) = watched(ctx, "main") else {
        return;
    };
    let m = &mut ctx.modtrace;
    let expectations = [
        (
            "insmod",
            "insmod",
            Some(r#"numdummies=2 note="hello world""#),
            None,
        ),
        ("modprobe_loop", "modprobe", Some("max_loop=3"), None),
        ("rmmod", "rmmod", None, Some("dummy")),
        ("modprobe_r", "modprobe", None, Some("loop")),
    ];
    for (label, comm, params, deleted) in expectations {
        let Some(a) = r.action(label) else { continue };
        let Some(record) = one_record(m, &w, a) else {
            continue;
        };
        check_process(m, label, record, &kmod_tool(a, comm));
        if let Some(params) = params {
            check_string(
                m,
                &format!("{label}: args.params"),
                &record["args"]["params"],
                params,
            );
        }
        if let Some(name) = deleted {
            check_string(
                m,
                &format!("{label}: args.name"),
                &record["args"]["name"],
                name,
            );
            check_flags(
                m,
                &format!("{label}: args.flags"),
                &record["args"]["flags"],
                O_NONBLOCK,
                &["O_NONBLOCK"],
            );
        }
    }
}

/// (action, exit status, the traced syscall's return value; None: no syscall).
const KMOD_FAILURES: &[(&str, i32, Option<i64>)] = &[
    ("load_first", 0, Some(0)),
    ("load_twice", 1, Some(-17)),
    ("unload_first", 0, Some(0)),
    // Unknown parameters are ignored by the kernel (with a printk), not refused.
    ("unknown_param", 0, Some(0)),
    ("unload_unknown_param", 0, Some(0)),
    ("bad_value", 1, Some(-22)),
    // Unresolved symbols (sctp's dependencies not loaded).
    ("missing_dependency", 1, Some(-2)),
    // kmod checks holders and /sys/module first and never calls delete_module.
    ("rmmod_in_use", 1, None),
    ("rmmod_absent", 1, None),
];

fn failures(ctx: &mut Ctx) {
    let r = ctx.results;
    let dummy_path = r
        .action("load_first")
        .and_then(|a| a.argv.get(1))
        .cloned()
        .unwrap_or_default();
    let sctp_path = r
        .action("missing_dependency")
        .and_then(|a| a.argv.get(1))
        .cloned()
        .unwrap_or_default();
    for &(label, rc, ret) in KMOD_FAILURES {
        expect_rc(ctx, label, rc);
        let loaded_path = match label {
            l if l.starts_with("unload") => None,
            "missing_dependency" => Some(&sctp_path),
            _ => Some(&dummy_path),
        };
        match (ret, loaded_path) {
            (Some(ret), Some(path)) => drop(expect_kmod_load(ctx, label, path, ret)),
            (Some(ret), None) => drop(expect_one_call(ctx, label, "delete_module", ret)),
            (None, _) => expect_no_call(ctx, label),
        }
    }
    expect_rc(ctx, "load_sctp", 0);
    expect_rc(ctx, "sctp_depends", 0);
    let in_use = r
        .action("sctp_depends")
        .and_then(|a| a.stdout.trim().split(',').next())
        .unwrap_or_default();
    ctx.ground.check(
        !in_use.is_empty(),
        "modinfo -F depends sctp names a module sctp uses",
    );
    expect_mtcall(ctx, "delete_in_use", "delete_module", -11, 0);
    expect_mtcall(ctx, "delete_absent", "delete_module", -2, 0);

    let Some(w) = watched(ctx, "main") else {
        return;
    };
    let m = &mut ctx.modtrace;
    for &(label, _, ret) in KMOD_FAILURES {
        let (Some(a), Some(_)) = (r.action(label), ret) else {
            continue;
        };
        let comm = if label.starts_with("unload") {
            "rmmod"
        } else {
            "insmod"
        };
        if let Some(record) = one_record(m, &w, a) {
            check_process(m, label, record, &kmod_tool(a, comm));
        }
    }
    if let Some(a) = r.action("unknown_param") {
        if let Some(record) = w.by_pid(a.pid).first() {
            check_string(
                m,
                "unknown_param: args.params",
                &record["args"]["params"],
                "bogus_param=1",
            );
        }
    }
    for (label, name) in [("delete_in_use", in_use), ("delete_absent", "nosuchmodule")] {
        let Some(a) = r.action(label) else { continue };
        let Some(record) = root_mtcall_record(m, &w, a) else {
            continue;
        };
        check_string(
            m,
            &format!("{label}: args.name"),
            &record["args"]["name"],
            name,
        );
        check_flags(
            m,
            &format!("{label}: args.flags"),
            &record["args"]["flags"],
            O_NONBLOCK,
            &["O_NONBLOCK"],
        );
    }
}

fn fileless(ctx: &mut Ctx) {
    let compressed = ctx.results.action("memfd_compressed").is_some();
    let mut loads = vec![
        ("memfd_plain", "finit_module", 0),
        ("memfd_untouched", "finit_module", 0),
        ("image", "init_module", 0),
        ("bad_fd", "finit_module", -9),
    ];
    if compressed {
        loads.push(("memfd_compressed", "finit_module", 0));
    }
    for &(label, syscall, ret) in &loads {
        expect_mtcall(ctx, label, syscall, ret, 0);
    }
    for label in [
        "unload_memfd_plain",
        "unload_memfd_untouched",
        "unload_image",
    ]
    .into_iter()
    .chain(compressed.then_some("unload_memfd_compressed"))
    {
        expect_rc(ctx, label, 0);
    }

    expect_rc(ctx, "sha_plain", 0);
    expect_rc(ctx, "sha_compressed", 0);
    let r = ctx.results;
    let sha = |label: &str| {
        r.action(label)
            .and_then(|a| a.stdout.split_whitespace().next())
            .map(str::to_owned)
    };
    let (plain_sha, compressed_sha) = (sha("sha_plain"), sha("sha_compressed"));

    let Some(w) = watched(ctx, "main") else {
        return;
    };
    let m = &mut ctx.modtrace;
    for &(label, _, _) in &loads {
        let Some(a) = r.action(label) else { continue };
        let Some(record) = root_mtcall_record(m, &w, a) else {
            continue;
        };
        // The image is the file the memfd or buffer was filled from.
        let image = &record["module"]["image"];
        let hash = |name: &str| image.get(name).and_then(Value::as_str).map(str::to_owned);
        let (sha256, decompressed) = match label {
            "bad_fd" => (None, None),
            "memfd_compressed" => (compressed_sha.clone(), plain_sha.clone()),
            _ => (plain_sha.clone(), None),
        };
        m.eq(
            &format!("{label}: module.image.sha256"),
            hash("sha256"),
            sha256,
        );
        m.eq(
            &format!("{label}: module.image.decompressed_sha256"),
            hash("decompressed_sha256"),
            decompressed,
        );
        let file = &record["args"]["file"];
        match label {
            "bad_fd" => {
                m.eq(
                    "bad_fd: args.fd",
                    record.pointer("/args/fd").and_then(Value::as_i64),
                    Some(-1),
                );
                m.eq(
                    "bad_fd: args.file",
                    file,
                    &serde_json::json!({"path": null, "truncated": false, "ino": null,
                        "unlinked": false, "memfd": false, "error": "bad fd"}),
                );
            }
            "image" => check_string(
                m,
                "image: args.params",
                &record["args"]["params"],
                "numdummies=1",
            ),
            _ => {
                let memfd = file["memfd"] == true
                    && file["unlinked"] == true
                    && file["path"].as_str().is_some_and(|p| p == "/memfd:mtcall");
                m.check(
                    memfd,
                    format!("{label}: args.file is a deleted memfd: {file}"),
                );
                // The untouched page is resident only once the kernel's own
                // copy has faulted it in: modtrace must read it at exit.
                let params = if label == "memfd_untouched" {
                    ""
                } else {
                    "numdummies=1"
                };
                check_string(
                    m,
                    &format!("{label}: args.params"),
                    &record["args"]["params"],
                    params,
                );
                let (raw, names): (u64, &[&str]) = if label == "memfd_compressed" {
                    (
                        MODULE_INIT_COMPRESSED_FILE,
                        &["MODULE_INIT_COMPRESSED_FILE"],
                    )
                } else {
                    (0, &[])
                };
                check_flags(
                    m,
                    &format!("{label}: args.flags"),
                    &record["args"]["flags"],
                    raw,
                    names,
                );
            }
        }
    }
}

/// The kernel's own modprobe runs (call_modprobe: `modprobe -q -- ALIAS`).
fn is_kernel_modprobe(call: &TracedCall, socket: &Action) -> bool {
    call.comm == "modprobe" && call.tgid != socket.pid
}

fn autoload(ctx: &mut Ctx) {
    let r = ctx.results;
    ctx.ground.check(
        !loaded(r, true, "sctp") && loaded(r, false, "sctp"),
        "sctp absent before and loaded after the socket call",
    );
    let Some(socket) = action(ctx, "socket") else {
        return;
    };
    if let Some(report) = mtcall_report(ctx, socket) {
        ctx.ground
            .eq("socket: mtcall uid", report["uid"].as_u64(), Some(1000));
        ctx.ground.check(
            report["ret"].as_i64().is_some_and(|fd| fd >= 0),
            format!("socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) succeeded: {report}"),
        );
    }
    let loads: Vec<&TracedCall> = r
        .calls()
        .filter(|c| c.syscall != "delete_module" && c.ret == Some(0))
        .collect();
    let module_loads = r
        .trace
        .iter()
        .filter(|i| matches!(i, TraceItem::ModuleLoad(_)))
        .count();
    ctx.ground.check(
        !loads.is_empty() && loads.iter().all(|c| is_kernel_modprobe(c, socket)),
        format!("every load came from the kernel's modprobe: {loads:?}"),
    );
    ctx.ground.eq(
        "successful load syscalls = module_load events",
        loads.len(),
        module_loads,
    );

    let Some(asked) = super::cause::asked(ctx, socket, "sctp_aliases") else {
        return;
    };
    let Some(w) = watched(ctx, "main") else {
        return;
    };
    let m = &mut ctx.modtrace;
    for call in loads {
        let Some(record) = w.records.iter().find(|rec| {
            rec.pointer("/process/tid").and_then(Value::as_u64) == Some(u64::from(call.tid))
        }) else {
            continue;
        };
        let what = format!("autoload by tid {}", call.tid);
        m.eq(
            &format!("{what}: process.comm"),
            record.pointer("/process/comm").and_then(Value::as_str),
            Some("modprobe"),
        );
        m.eq(
            &format!("{what}: process.uid"),
            record.pointer("/process/uid").and_then(Value::as_u64),
            Some(0),
        );
        let cmdline: Vec<&str> = record
            .pointer("/process/cmdline")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let ok = cmdline.len() == 4
            && cmdline[..3] == ["/sbin/modprobe", "-q", "--"]
            && cmdline[3].starts_with("net-pf-2-proto-132");
        m.check(ok, format!("{what}: process.cmdline is the kernel's modprobe -q -- net-pf-2-proto-132…: {cmdline:?}"));
        // The load points back to the request that the socket call made.
        check_cause(m, &w, &what, record, &asked);
        let request = record.pointer("/cause/request_seq").and_then(|seq| {
            w.records
                .iter()
                .find(|r| r["kind"] == "request" && r.get("seq") == Some(seq))
        });
        if let Some(request) = request {
            m.eq(
                &format!("{what}: request.process.comm"),
                request.pointer("/process/comm").and_then(Value::as_str),
                Some("mtcall"),
            );
            m.eq(
                &format!("{what}: the request names modprobe's last argument"),
                request.pointer("/name/value").and_then(Value::as_str),
                cmdline.last().copied(),
            );
        }
    }
}

fn concurrency(ctx: &mut Ctx) {
    expect_rc(ctx, "race", 0);
    let r = ctx.results;
    let count = |syscall: &str, comm: &str, ok: bool| {
        r.calls()
            .filter(|c| c.syscall == syscall && c.comm == comm && (c.ret == Some(0)) == ok)
            .count()
    };
    let loads = r.calls().filter(|c| c.comm == "insmod").count();
    // kmod's insmod always makes the syscall (EEXIST when another process won).
    ctx.ground
        .eq("load syscalls from 4 x 50 insmod", loads, 200);
    let loads_ok = r
        .calls()
        .filter(|c| c.comm == "insmod" && c.ret == Some(0))
        .count();
    let unloads_ok = count("delete_module", "rmmod", true);
    ctx.ground
        .check(loads_ok > 0, "at least one racing insmod loaded dummy");
    let module_loads = r
        .trace
        .iter()
        .filter(|i| matches!(i, TraceItem::ModuleLoad(_)))
        .count();
    ctx.ground.eq(
        "module_load events = successful unloads (dummy absent at the end)",
        module_loads,
        unloads_ok,
    );
    // Since 6.4 concurrent finit_module calls of one file wait for the first
    // and return its result (idempotent_init_module): several 0s, one load.
    let shares_finit = kernel_at_least(r, (6, 4))
        && r.calls()
            .any(|c| c.comm == "insmod" && c.syscall == "finit_module");
    if shares_finit {
        ctx.ground.check(
            loads_ok >= module_loads,
            format!("successful insmods ({loads_ok}) cover every module_load ({module_loads})"),
        );
    } else {
        ctx.ground.eq(
            "successful insmods = module_load events",
            loads_ok,
            module_loads,
        );
    }
    ctx.ground
        .check(!loaded(r, false, "dummy"), "dummy unloaded at the end");
    if let Some(flood) = action(ctx, "flood") {
        if let Some(report) = mtcall_report(ctx, flood) {
            check_flood(&mut ctx.ground, r, &report);
        }
    }

    let Some(w) = watched(ctx, "main") else {
        return;
    };
    let events = w
        .records
        .iter()
        .filter(|rec| rec["kind"].as_str().is_some_and(|k| k.ends_with("_module")))
        .count() as u64;
    let aggregated = w
        .records
        .last()
        .and_then(|stop| stop.pointer("/aggregated/total"))
        .and_then(Value::as_u64);
    ctx.modtrace.eq(
        "events + aggregated = syscalls the kernel traced",
        aggregated.map(|a| a + events),
        Some(w.calls.len() as u64),
    );
}

/// mtcall's flood summary (4 children x 50 failing delete_module calls) against
/// the calls the kernel traced for those children.
fn check_flood(g: &mut Checks, r: &ScenarioResults, report: &Value) {
    g.eq(
        "flood: total_calls",
        report["total_calls"].as_u64(),
        Some(200),
    );
    let children: Vec<&Value> = report["children"]
        .as_array()
        .map(|c| c.iter().collect())
        .unwrap_or_default();
    g.eq("flood: children", children.len(), 4);
    for child in &children {
        g.eq(
            "flood: child's ENOENT count",
            child
                .pointer("/errno_counts/ENOENT")
                .and_then(Value::as_u64),
            Some(50),
        );
        let pid = child["pid"].as_u64().and_then(|p| u32::try_from(p).ok());
        let traced = calls_of(r, pid);
        let all_enoent = traced
            .iter()
            .all(|c| c.syscall == "delete_module" && c.ret == Some(-2));
        g.check(
            traced.len() == 50 && all_enoent,
            format!(
                "flood child {pid:?}: 50 traced delete_module calls returning ENOENT, got {}",
                traced.len()
            ),
        );
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmod_load_follows_each_releases_kmod_and_kernel() {
        let by_fd = |flags| KmodLoad {
            syscall: "finit_module",
            flags,
        };
        let decompressed = KmodLoad {
            syscall: "init_module",
            flags: (0, &[]),
        };
        let compressed = by_fd((4, &["MODULE_INIT_COMPRESSED_FILE"]));
        let xz = "/lib/modules/x/kernel/net/sctp/sctp.ko.xz";
        // bullseye: kmod 28, 5.10 has no in-kernel decompression.
        assert_eq!(
            kmod_load_by(xz, Some("kmod version 28"), Some("")),
            decompressed
        );
        // bookworm's kmod 30 decompresses even where the kernel could.
        assert_eq!(
            kmod_load_by(xz, Some("kmod version 30"), Some("xz")),
            decompressed
        );
        // trixie and sid: kmod 34.2 hands the kernel the compressed file.
        assert_eq!(
            kmod_load_by(xz, Some("kmod version 34.2"), Some("xz\n")),
            compressed
        );
        assert_eq!(
            kmod_load_by("/m/dummy.ko.zst", Some("kmod version 34.2"), Some("xz")),
            decompressed
        );
        assert_eq!(kmod_load_by(xz, None, Some("xz")), decompressed);
        assert_eq!(
            kmod_load_by("/m/dummy.ko", Some("kmod version 34.2"), Some("xz")),
            by_fd((0, &[]))
        );
    }
}
