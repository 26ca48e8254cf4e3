//! `modtrace audit` and `modtrace baseline` as a user runs them: on fixture
//! trees given with `--root`, as root and not, through the real binary.
use std::{fs, os::unix::fs::PermissionsExt, os::unix::process::CommandExt, path::Path};

use serde_json::Value;

use crate::harness::modtrace;

const RELEASE: &str = "6.1.0-host-test";

/// A host tree with two modules loaded, one of them out of tree, and the
/// dummy fixture module as the only file of its module tree.
fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // World-readable like a host's /, so that another uid can walk it.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let write = |path: &str, bytes: &[u8]| {
        let path = dir.path().join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    };
    write(
        "proc/sys/kernel/osrelease",
        format!("{RELEASE}\n").as_bytes(),
    );
    write("proc/sys/kernel/tainted", b"4096\n");
    write("proc/sys/kernel/modules_disabled", b"0\n");
    write(
        "proc/modules",
        b"dummy 16384 0 - Live 0x0\nvbox 16384 1 - Live 0x0 (O)\n",
    );
    let dummy = fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/modules/dummy-6.1.ko"),
    )
    .unwrap();
    write(
        &format!("lib/modules/{RELEASE}/kernel/drivers/net/dummy.ko"),
        &dummy,
    );
    write(
        &format!("lib/modules/{RELEASE}/modules.dep"),
        b"kernel/drivers/net/dummy.ko:\n",
    );
    dir
}

fn run(args: &[&str], uid: Option<u32>) -> (Option<i32>, String, String) {
    let mut cmd = modtrace();
    cmd.args(args);
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn finding<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no finding {id} in {report}"))
}

#[test]
fn audit_of_a_tree_reports_json_and_exits_with_the_worst_status() {
    let dir = tree();
    let root = dir.path().to_str().unwrap();
    let (code, out, err) = run(&["audit", "--root", root, "--format", "json"], None);
    // The CIS list is not applied: a fail.
    assert_eq!(code, Some(2), "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["kernel"], RELEASE);
    assert_eq!(finding(&report, "modules.count")["data"]["count"], 2);
    assert_eq!(finding(&report, "kernel.taint")["data"]["letters"], "O");
    assert_eq!(
        finding(&report, "modules.unsigned")["data"]["without_file"],
        serde_json::json!(["vbox"])
    );

    let (code, out, _) = run(
        &[
            "audit",
            "--root",
            root,
            "--format",
            "json",
            "--check",
            "modules.count",
        ],
        None,
    );
    assert_eq!(code, Some(0));
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["findings"].as_array().unwrap().len(), 1);

    let (code, _, _) = run(&["audit", "--root", root, "--check", "kernel.taint"], None);
    assert_eq!(code, Some(1), "a tainted kernel warns");

    let (code, _, err) = run(&["audit", "--root", root, "--check", "no.such"], None);
    assert_eq!(code, Some(1));
    assert!(err.contains("no check no.such; the checks are: "), "{err}");
}

#[test]
fn the_fix_script_is_a_shell_script_sh_accepts() {
    let dir = tree();
    let (_, script, _) = run(
        &[
            "audit",
            "--root",
            dir.path().to_str().unwrap(),
            "--fix-script",
        ],
        None,
    );
    assert!(script.starts_with("#!/bin/sh\n"), "{script}");
    assert!(script.contains("echo 'install usb-storage /bin/true' >> /etc/modprobe.d/cis.conf"));
    let path = dir.path().join("fixes.sh");
    fs::write(&path, &script).unwrap();
    let status = std::process::Command::new("sh")
        .arg("-n")
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success(), "sh -n refuses the script:\n{script}");
}

#[test]
fn without_root_the_audit_names_the_checks_it_could_not_make() {
    let dir = tree();
    let tainted = dir.path().join("proc/sys/kernel/tainted");
    fs::set_permissions(&tainted, fs::Permissions::from_mode(0o600)).unwrap();
    let (_, out, err) = run(
        &[
            "audit",
            "--root",
            dir.path().to_str().unwrap(),
            "--format",
            "json",
        ],
        Some(65534),
    );
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
    assert_eq!(report["as_root"], false);
    assert_eq!(
        report["not_checked_without_root"],
        serde_json::json!(["kernel.taint"])
    );
    let taint = finding(&report, "kernel.taint");
    assert_eq!(taint["status"], "unknown");
    assert!(
        taint["summary"]
            .as_str()
            .unwrap()
            .contains("readable by root only"),
        "{taint}"
    );
}

#[test]
fn baseline_create_then_verify_through_the_binary() {
    let dir = tree();
    let root = dir.path().to_str().unwrap();
    let file = dir.path().join("out/baseline.json");
    let file = file.to_str().unwrap();
    let (code, _, err) = run(
        &["baseline", "create", "--root", root, "--output", file],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("1 module files of 6.1.0-host-test recorded in"),
        "{err}"
    );
    let (code, out, err) = run(
        &[
            "baseline", "verify", file, "--root", root, "--format", "json",
        ],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    let verification: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(verification["checked"], 1);
    assert_eq!(verification["rehashed"], 0);

    let planted = dir
        .path()
        .join(format!("lib/modules/{RELEASE}/extra/evil.ko"));
    fs::create_dir_all(planted.parent().unwrap()).unwrap();
    fs::write(&planted, b"evil").unwrap();
    let (code, out, _) = run(
        &[
            "baseline", "verify", file, "--root", root, "--format", "text",
        ],
        None,
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("added    UNEXPLAINED  /lib/modules/6.1.0-host-test/extra/evil.ko: no package ships this path"), "{out}");

    let ids = dir.path().join("ids.bin");
    // Not root-owned checks apply only to the live host's baseline, so the
    // export of a file under a test tree reads it as root would any file.
    let (code, _, err) = run(
        &[
            "baseline",
            "export-ids",
            file,
            "--output",
            ids.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    let bytes = fs::read(&ids).unwrap();
    assert_eq!(&bytes[..8], b"MTBLID01");
    assert_eq!(bytes.len(), 16 + 32);

    // Whitespace is no edit (the hash is of the content); a value is.
    let text = fs::read_to_string(file).unwrap();
    fs::write(file, text.replace("\"inode\":", "\"inode\": ")).unwrap();
    assert_eq!(
        run(&["baseline", "verify", file, "--root", root], None).0,
        Some(2)
    );
    fs::write(file, text.replace("\"inode\":", "\"inode\":1")).unwrap();
    let (code, _, err) = run(&["baseline", "verify", file, "--root", root], None);
    assert_eq!(code, Some(1));
    assert!(err.contains(&format!("{file} was edited")), "{err}");
}
