//! The mistakes users make get an error that names the fix.

use std::os::unix::process::CommandExt;

use crate::harness::{modtrace, serial, Watch, LOCK_FILE};

fn stderr_of(mut cmd: std::process::Command) -> (Option<i32>, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unprivileged_user_is_told_to_use_root() {
    let mut cmd = modtrace();
    cmd.args(["watch", "--lock-file", "/tmp/modtrace-unprivileged.lock"])
        .uid(1000)
        .gid(1000);
    // std drops root's supplementary groups itself when it sets the uid.
    let (code, stderr) = stderr_of(cmd);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("needs root") && stderr.contains("CAP_BPF"),
        "{stderr}"
    );
}

#[test]
fn second_instance_is_refused() {
    let _serial = serial();
    let first = Watch::start(&[]);
    let mut cmd = modtrace();
    cmd.args(["watch", "--lock-file", LOCK_FILE]);
    let (code, stderr) = stderr_of(cmd);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("already running"), "{stderr}");
    first.stop();
}

#[test]
fn missing_btf_explains_what_it_costs() {
    let _serial = serial();
    let mut cmd = modtrace();
    cmd.args([
        "watch",
        "--lock-file",
        LOCK_FILE,
        "--btf",
        "/nonexistent/vmlinux",
    ]);
    let (code, stderr) = stderr_of(cmd);
    // This kernel has no syscall tracepoints for the module syscalls, so
    // without BTF no strategy remains; the error must say why for each.
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/vmlinux"), "{stderr}");
    assert!(
        stderr.contains("no attach strategy works for init_module"),
        "{stderr}"
    );
    assert!(stderr.contains("fentry: no kernel BTF"), "{stderr}");
    assert!(
        stderr.contains("raw-syscalls: the pt_regs layout is unknown"),
        "{stderr}"
    );
}

#[test]
fn bad_arguments_are_rejected_before_anything_loads() {
    let mut cmd = modtrace();
    cmd.args(["watch", "--ring-buffer-size", "1000"]);
    let (code, stderr) = stderr_of(cmd);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("must be a power of two"), "{stderr}");
    let mut cmd = modtrace();
    cmd.args(["watch", "--strategy", "uprobe"]);
    let (code, stderr) = stderr_of(cmd);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("unknown strategy `uprobe`"), "{stderr}");
    assert!(
        stderr.contains("kprobe, fentry, syscall-tracepoints, raw-syscalls"),
        "{stderr}"
    );
    let mut cmd = modtrace();
    cmd.args(["watch", "--strategy", "init_module=kprobe,init=fentry"]);
    let (code, stderr) = stderr_of(cmd);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("unknown syscall `init`"), "{stderr}");
}

#[test]
fn each_cause_is_printed_once() {
    let _serial = serial();
    let mut cmd = modtrace();
    cmd.args(["watch", "--lock-file", LOCK_FILE, "--output", "/etc"]);
    let (code, stderr) = stderr_of(cmd);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot open output file /etc"), "{stderr}");
    assert_eq!(stderr.matches("Is a directory").count(), 1, "{stderr}");
}
