//! tests/vm/scenarios/identity.sh: the module's file, hashes, signature and
//! taint, and the ancestry of loaders whose parents are gone.
use serde_json::Value;

use super::{
    scenarios::{expect_kmod_load, expect_rc, kmod_load, kmod_tool, one_record},
    watch::{check_flags, check_process, child_record, watched, Watched},
    Checks, Ctx,
};
use crate::results::Action;

const FIXTURES: &str = "/lib/modtrace-fixtures";
/// TAINT_UNSIGNED_MODULE, bit 13 of /proc/sys/kernel/tainted.
const TAINT_E: u64 = 1 << 13;

/// (action, file loaded, the sha256 action of that file, kmod's modinfo of
/// what it decompresses to, the size action of the file).
const LOADS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "insmod_plain",
        "dummy.ko",
        "sha_plain",
        "modinfo_plain",
        "size_plain",
    ),
    (
        "insmod_xz",
        "dummy.ko.xz",
        "sha_xz",
        "modinfo_plain",
        "size_xz",
    ),
    (
        "insmod_unsigned",
        "dummy-unsigned.ko",
        "sha_unsigned",
        "modinfo_unsigned",
        "size_unsigned",
    ),
];

pub(crate) fn identity(ctx: &mut Ctx) {
    for label in [
        "init_comm",
        "modinfo_plain",
        "modinfo_unsigned",
        "size_plain",
        "size_xz",
        "size_unsigned",
        "sha_plain",
        "sha_xz",
        "sha_unsigned",
        "tainted_before",
        "tainted_after",
        "rmmod_plain",
        "rmmod_xz",
        "rmmod_unsigned",
        "short_parent",
        "rmmod_short_parent",
        "gone_parent",
        "rmmod_gone_parent",
        "orphan_parent",
        "orphan_pid",
        "rmmod_orphan",
    ] {
        expect_rc(ctx, label, 0);
    }
    let r = ctx.results;
    for &(label, file, ..) in LOADS {
        expect_rc(ctx, label, 0);
        expect_kmod_load(ctx, label, &format!("{FIXTURES}/{file}"), 0);
    }
    let first_word = |label: &str| {
        r.action(label)
            .and_then(|a| a.stdout.split_whitespace().next())
            .map(str::to_owned)
    };
    let taint = |label: &str| first_word(label).and_then(|t| t.parse::<u64>().ok());
    let (before, after) = (taint("tainted_before"), taint("tainted_after"));
    ctx.ground.check(
        before.is_some_and(|t| t & TAINT_E == 0) && after.is_some_and(|t| t & TAINT_E != 0),
        format!("the unsigned dummy set taint E: tainted {before:?} before, {after:?} after"),
    );
    let orphan = first_word("orphan_pid").and_then(|p| p.parse::<u32>().ok());
    if let Some(call) = expect_one_orphan_call(ctx, orphan) {
        ctx.ground
            .eq("orphan: the loader's comm", call, "insmod".to_owned());
    }

    let Some(w) = watched(ctx, "main") else {
        return;
    };
    let m = &mut ctx.modtrace;
    for &(label, file, sha, modinfo, size) in LOADS {
        let Some(a) = r.action(label) else { continue };
        let Some(record) = one_record(m, &w, a) else {
            continue;
        };
        check_process(m, label, record, &kmod_tool(a, "insmod"));
        let load = kmod_load(file, r);
        m.eq(
            &format!("{label}: kind (how this kmod loads {file})"),
            record["kind"].as_str(),
            Some(load.syscall),
        );
        if load.syscall == "finit_module" {
            check_flags(
                m,
                &format!("{label}: args.flags"),
                &record["args"]["flags"],
                load.flags.0,
                load.flags.1,
            );
        }
        check_image(
            m,
            label,
            record,
            file,
            first_word(sha),
            first_word("sha_plain"),
        );
        if let Some(modinfo) = r.action(modinfo) {
            check_modinfo(m, label, &record["module"]["image"], &modinfo.stdout);
        }
        // Through init_module kmod passes the image it decompressed: no file size to compare.
        if record["kind"] == "finit_module" {
            m.eq(
                &format!("{label}: module.image.size = wc -c {file}"),
                record.pointer("/module/image/size").and_then(Value::as_u64),
                first_word(size).and_then(|s| s.parse().ok()),
            );
        }
    }
    if let Some(record) = r
        .action("insmod_plain")
        .and_then(|a| w.by_pid(a.pid).first().copied())
    {
        m.eq(
            "insmod_plain: module.kernel_taint.raw (nothing tainted since boot)",
            record
                .pointer("/module/kernel_taint/raw")
                .and_then(Value::as_u64),
            before,
        );
    }
    if let Some(record) = r
        .action("insmod_unsigned")
        .and_then(|a| w.by_pid(a.pid).first().copied())
    {
        m.eq(
            "insmod_unsigned: module.kernel_taint.raw is /proc/sys/kernel/tainted after it",
            record
                .pointer("/module/kernel_taint/raw")
                .and_then(Value::as_u64),
            after,
        );
        m.check(
            record
                .pointer("/module/taint/letters")
                .and_then(Value::as_str)
                .is_some_and(|l| l.contains('E')),
            format!(
                "insmod_unsigned: module.taint has E: {}",
                record["module"]["taint"]
            ),
        );
    }
    let init_comm = first_word("init_comm").unwrap_or_default();
    if let Some(a) = r.action("short_parent") {
        check_short_parent(m, &w, a);
    }
    if let Some(a) = r.action("gone_parent") {
        check_gone_parent(m, &w, a);
    }
    check_orphan(m, &w, orphan, &init_comm);
}

/// The image's modinfo and signature against kmod's `modinfo` of the same
/// module, an independent reading of the same bytes.
fn check_modinfo(m: &mut Checks, label: &str, image: &Value, kmod: &str) {
    let values = |key: &str| -> Vec<&str> {
        kmod.lines()
            .filter_map(|line| line.split_once(':'))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.trim_start())
            .collect()
    };
    let first = |key: &str| values(key).first().copied();
    let text = |path: &str| image.pointer(path).and_then(Value::as_str);
    for (path, key) in [
        ("/modinfo/name", "name"),
        ("/modinfo/license", "license"),
        ("/modinfo/description", "description"),
        ("/modinfo/srcversion", "srcversion"),
        ("/modinfo/version", "version"),
        ("/modinfo/vermagic", "vermagic"),
        ("/signature/signer", "signer"),
        ("/signature/sig_key", "sig_key"),
        ("/signature/sig_hashalgo", "sig_hashalgo"),
        ("/signature/id_type", "sig_id"),
    ] {
        m.eq(
            &format!("{label}: module.image{path} = modinfo's {key}"),
            text(path),
            first(key),
        );
    }
    for (path, key) in [
        ("/modinfo/intree", "intree"),
        ("/modinfo/retpoline", "retpoline"),
    ] {
        m.eq(
            &format!("{label}: module.image{path} = modinfo's {key}"),
            image.pointer(path).and_then(Value::as_bool),
            Some(first(key) == Some("Y")),
        );
    }
    let list = |path: &str| -> Vec<&str> {
        image
            .pointer(path)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    };
    let depends: Vec<&str> = first("depends")
        .map(|d| d.split(',').filter(|d| !d.is_empty()).collect())
        .unwrap_or_default();
    m.eq(
        &format!("{label}: module.image.modinfo.depends"),
        list("/modinfo/depends"),
        depends,
    );
    m.eq(
        &format!("{label}: module.image.modinfo.author"),
        list("/modinfo/author"),
        values("author"),
    );
    m.eq(
        &format!("{label}: module.image.modinfo.other.alias"),
        list("/modinfo/other/alias"),
        values("alias"),
    );
}

/// The one load traced for the orphaned loader; returns its comm.
fn expect_one_orphan_call(ctx: &mut Ctx, pid: Option<u32>) -> Option<String> {
    let calls: Vec<_> = ctx
        .results
        .calls()
        .filter(|c| pid.is_some() && c.tgid == pid)
        .collect();
    let ok = calls.len() == 1 && calls[0].syscall == "finit_module" && calls[0].ret == Some(0);
    ctx.ground.check(
        ok,
        format!("orphan pid {pid:?}: one finit_module returning 0, got {calls:?}"),
    );
    ok.then(|| calls[0].comm.clone())
}

/// The image is the file insmod was given: its hash, and for a compressed file
/// loaded through its fd, the hash of what it decompresses to.
fn check_image(
    m: &mut Checks,
    label: &str,
    record: &Value,
    file: &str,
    file_sha: Option<String>,
    plain_sha: Option<String>,
) {
    let image = &record["module"]["image"];
    let field = |name: &str| image.get(name).and_then(Value::as_str).map(str::to_owned);
    let path = format!("{FIXTURES}/{file}");
    if record["kind"] == "finit_module" {
        m.eq(
            &format!("{label}: args.file.path"),
            record.pointer("/args/file/path").and_then(Value::as_str),
            Some(path.as_str()),
        );
        m.eq(
            &format!("{label}: module.image.sha256 = sha256sum {path}"),
            field("sha256"),
            file_sha,
        );
        let decompressed = file.ends_with(".xz").then_some(plain_sha).flatten();
        m.eq(
            &format!("{label}: module.image.decompressed_sha256"),
            field("decompressed_sha256"),
            decompressed,
        );
    } else {
        // kmod decompressed the file itself and passed the result.
        m.eq(
            &format!("{label}: module.image.sha256 (the image kmod decompressed from {path})"),
            field("sha256"),
            plain_sha,
        );
    }
    m.eq(
        &format!("{label}: module.image.signature.signed"),
        image.pointer("/signature/signed").and_then(Value::as_bool),
        Some(!file.contains("unsigned")),
    );
    m.eq(
        &format!("{label}: module.name"),
        record.pointer("/module/name").and_then(Value::as_str),
        Some("dummy"),
    );
}

/// Names an insmod and its shell, both gone before modtrace read their
/// record, with the executables the kernel saw them exec.
fn check_gone_parent(m: &mut Checks, w: &Watched, a: &Action) {
    let Some(record) = child_record(m, w, a) else {
        return;
    };
    let p = &record["process"];
    m.check(
        p["cmdline"].is_null(),
        format!("gone_parent: insmod was gone when its record was read (cmdline null): {p}"),
    );
    m.eq(
        "gone_parent: (process.exe, parent.exe)",
        (
            p["exe"].as_str(),
            record.pointer("/parent/exe").and_then(Value::as_str),
        ),
        (Some("/usr/bin/kmod"), Some("/bin/busybox")),
    );
    let chain: Vec<(Option<u64>, Option<&str>)> = p["ancestors"]
        .as_array()
        .map(|c| {
            c.iter()
                .take(2)
                .map(|a| (a["pid"].as_u64(), a["exe"].as_str()))
                .collect()
        })
        .unwrap_or_default();
    m.eq(
        "gone_parent: process.ancestors[..2] (pid, exe)",
        chain,
        vec![
            (a.pid.map(u64::from), Some("/bin/busybox")),
            (a.ppid.map(u64::from), Some("/bin/busybox")),
        ],
    );
}

/// insmod's parent, a shell that exits right after it, and that shell's
/// parent, the scenario shell, head the kernel-captured chain.
fn check_short_parent(m: &mut Checks, w: &Watched, a: &Action) {
    let Some(record) = child_record(m, w, a) else {
        return;
    };
    m.eq(
        "short_parent: process.comm",
        record.pointer("/process/comm").and_then(Value::as_str),
        Some("insmod"),
    );
    let chain: Vec<(Option<u64>, Option<&str>)> = ancestors(record).into_iter().take(2).collect();
    m.eq(
        "short_parent: process.ancestors[..2] (pid, comm)",
        chain,
        vec![
            (a.pid.map(u64::from), Some("sh")),
            (a.ppid.map(u64::from), Some("sh")),
        ],
    );
}

/// A loader whose parent exited before the load belongs to init by then.
fn check_orphan(m: &mut Checks, w: &Watched, pid: Option<u32>, init_comm: &str) {
    let records = w.by_pid(pid);
    let [record] = records.as_slice() else {
        m.fail(format!(
            "orphan pid {pid:?}: one record, got {}",
            records.len()
        ));
        return;
    };
    m.eq(
        "orphan: process.ppid",
        record.pointer("/process/ppid").and_then(Value::as_u64),
        Some(1),
    );
    m.eq(
        "orphan: parent (pid, comm)",
        (
            record.pointer("/parent/pid").and_then(Value::as_u64),
            record.pointer("/parent/comm").and_then(Value::as_str),
        ),
        (Some(1), Some(init_comm)),
    );
    m.eq(
        "orphan: process.ancestors (pid, comm)",
        ancestors(record),
        vec![(Some(1), Some(init_comm))],
    );
}

fn ancestors(record: &Value) -> Vec<(Option<u64>, Option<&str>)> {
    record
        .pointer("/process/ancestors")
        .and_then(Value::as_array)
        .map(|chain| {
            chain
                .iter()
                .map(|a| (a["pid"].as_u64(), a["comm"].as_str()))
                .collect()
        })
        .unwrap_or_default()
}
