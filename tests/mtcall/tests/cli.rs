//! Runs the built mtcall on this host and checks what it reports against what
//! the kernel really did.
//!
//! Expected errnos depend on the kernel: without CONFIG_MODULES (no
//! /proc/modules) every module syscall is `sys_ni_syscall` and returns ENOSYS for
//! everyone, privileged or not. With modules, the well-defined outcomes are
//! asserted instead (EPERM without CAP_SYS_MODULE, ENOENT/EBADF as root).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

const MTCALL: &str = env!("CARGO_BIN_EXE_mtcall");

fn modules_supported() -> bool {
    Path::new("/proc/modules").exists()
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

struct Run {
    pid: u32,
    out: Output,
    lines: Vec<Value>,
}

fn mtcall(args: &[&str]) -> Run {
    let child = Command::new(MTCALL)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn mtcall");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for mtcall");
    let lines = String::from_utf8(out.stdout.clone())
        .expect("stdout is UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect();
    Run { pid, out, lines }
}

/// Runs mtcall expecting success and exactly `n` JSON lines.
fn ok(args: &[&str], n: usize) -> (u32, Vec<Value>) {
    let r = mtcall(args);
    assert!(
        r.out.status.success(),
        "mtcall {args:?} failed: {}",
        String::from_utf8_lossy(&r.out.stderr)
    );
    assert_eq!(r.lines.len(), n, "mtcall {args:?} printed {:?}", r.lines);
    (r.pid, r.lines)
}

/// The identity fields every line carries, checked against the process the test
/// really started.
fn check_identity(line: &Value, pid: u32, uid: u32) {
    assert_eq!(line["pid"], pid, "{line}");
    assert_eq!(line["tid"], pid, "single-threaded: tid == pid: {line}");
    assert_eq!(line["ppid"], std::process::id(), "{line}");
    assert_eq!(line["uid"], uid, "{line}");
    assert_eq!(line["euid"], uid, "{line}");
    assert_eq!(line["comm"], "mtcall", "{line}");
    let (enter, exit) = (line["enter_ns"].as_u64(), line["exit_ns"].as_u64());
    if line["op"] != "flood" {
        assert!(enter.is_some() && exit >= enter, "{line}");
    }
}

fn check_failed_with(line: &Value, errno: &str) {
    assert_eq!(line["ret"], -1, "{line}");
    assert_eq!(line["errno"], errno, "{line}");
    let num = line["errno_num"].as_i64().expect("errno_num");
    let want = match errno {
        "ENOSYS" => libc::ENOSYS,
        "EPERM" => libc::EPERM,
        "ENOENT" => libc::ENOENT,
        "EBADF" => libc::EBADF,
        other => panic!("test does not know {other}"),
    };
    assert_eq!(num, i64::from(want), "{line}");
}

/// What an unprivileged-or-root module syscall must return here, when the
/// outcome is fully determined by privilege and kernel configuration.
fn expected(root_errno: &'static str) -> &'static str {
    match (modules_supported(), is_root()) {
        (false, _) => "ENOSYS",
        (true, false) => "EPERM",
        (true, true) => root_errno,
    }
}

fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("mtcall-test-{}-{name}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn delete_module_reports_the_kernel_outcome() {
    let (pid, lines) = ok(
        &["delete-module", "mtcall_nonexistent", "--flags", "0x800"],
        1,
    );
    let l = &lines[0];
    check_identity(l, pid, unsafe { libc::getuid() });
    assert_eq!(l["op"], "delete_module");
    assert_eq!(l["name"], "mtcall_nonexistent");
    assert_eq!(l["flags"], libc::O_NONBLOCK);
    check_failed_with(l, expected("ENOENT"));
}

#[test]
fn finit_module_bad_fd() {
    let (pid, lines) = ok(&["finit-module", "--fd", "-1", "--flags", "3"], 1);
    let l = &lines[0];
    check_identity(l, pid, unsafe { libc::getuid() });
    assert_eq!(l["op"], "finit_module");
    assert_eq!(l["fd"], -1);
    assert_eq!(l["fd_source"], "raw");
    assert_eq!(l["fd_link"], Value::Null);
    assert_eq!(l["flags"], 3);
    assert_eq!(l["params_len"], 0);
    // Flags 3 (ignore modversions and vermagic) are valid, so with modules root
    // gets to the fd lookup.
    check_failed_with(l, expected("EBADF"));
}

#[test]
fn finit_module_file_and_memfd_name_what_the_kernel_sees() {
    let ko = scratch("file.ko", b"\x7fELF not really a module");
    let ko_str = ko.to_str().unwrap();

    let (pid, lines) = ok(
        &["finit-module", "--file", ko_str, "--params", "x=1 y=2"],
        1,
    );
    let l = &lines[0];
    check_identity(l, pid, unsafe { libc::getuid() });
    assert_eq!(l["fd_source"], "file");
    assert_eq!(l["file"], ko_str);
    assert_eq!(
        l["fd_link"],
        std::fs::canonicalize(&ko).unwrap().to_str().unwrap()
    );
    assert!(l["fd"].as_i64().unwrap() >= 3, "{l}");
    assert_eq!(l["params"], "x=1 y=2");
    assert_eq!(l["params_len"], 7);
    assert_eq!(l["ret"], -1, "garbage is never loaded: {l}");
    if !modules_supported() {
        check_failed_with(l, "ENOSYS");
    }

    let (_, lines) = ok(&["finit-module", "--memfd", ko_str], 1);
    let l = &lines[0];
    assert_eq!(l["fd_source"], "memfd");
    assert_eq!(l["memfd_name"], "mtcall");
    // The link text is the kernel's own name for the fd: proof it is a memfd.
    assert_eq!(l["fd_link"], "/memfd:mtcall (deleted)", "{l}");
    assert_eq!(l["ret"], -1, "{l}");
    std::fs::remove_file(ko).unwrap();
}

#[test]
fn init_module_image_params_file_and_bad_pointer() {
    let image = scratch("image.ko", &[0u8; 1234]);
    let params: String = (0..5000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let params_file = scratch("params", params.as_bytes());
    let (pid, lines) = ok(
        &[
            "init-module",
            "--image",
            image.to_str().unwrap(),
            "--params-file",
            params_file.to_str().unwrap(),
        ],
        1,
    );
    let l = &lines[0];
    check_identity(l, pid, unsafe { libc::getuid() });
    assert_eq!(l["op"], "init_module");
    assert_eq!(l["image_len"], 1234);
    assert_eq!(l["params_len"], 5000);
    assert_eq!(l["params"], params);
    assert_eq!(l["ret"], -1, "{l}");
    if !modules_supported() {
        check_failed_with(l, "ENOSYS");
    }

    let (_, lines) = ok(
        &["init-module", "--image-len", "64", "--params-ptr", "bad"],
        1,
    );
    let l = &lines[0];
    assert_eq!(l["image_len"], 64);
    assert_eq!(l["image"], Value::Null);
    assert_eq!(l["params_len"], Value::Null);
    assert!(
        l["params_ptr"].as_str().unwrap().starts_with("bad:0x"),
        "{l}"
    );
    assert_eq!(l["ret"], -1, "{l}");
    if !modules_supported() {
        check_failed_with(l, "ENOSYS");
    }
    std::fs::remove_file(image).unwrap();
    std::fs::remove_file(params_file).unwrap();
}

/// On this host (no CONFIG_MODULES) an unprivileged caller gets ENOSYS, not
/// EPERM: the syscalls are `sys_ni_syscall`, which checks nothing.
#[test]
fn uid_drop_really_changes_credentials() {
    let r = mtcall(&[
        "--uid",
        "1000",
        "--gid",
        "1000",
        "delete-module",
        "mtcall_x",
    ]);
    if !is_root() {
        assert_eq!(r.out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&r.out.stderr);
        assert!(err.contains("setgid(1000) failed"), "{err}");
        assert!(r.lines.is_empty());
        return;
    }
    assert!(
        r.out.status.success(),
        "{}",
        String::from_utf8_lossy(&r.out.stderr)
    );
    let l = &r.lines[0];
    check_identity(l, r.pid, 1000);
    assert_eq!(l["gid"], 1000);
    assert_eq!(l["egid"], 1000);
    check_failed_with(
        l,
        if modules_supported() {
            "EPERM"
        } else {
            "ENOSYS"
        },
    );

    // Every module op, not just delete_module, as uid 1000.
    let (_, lines) = ok(&["--uid", "1000", "finit-module", "--fd", "-1"], 1);
    assert_eq!(lines[0]["euid"], 1000);
    assert_eq!(lines[0]["gid"], 0, "--gid not given: gid unchanged");
    check_failed_with(
        &lines[0],
        if modules_supported() {
            "EPERM"
        } else {
            "ENOSYS"
        },
    );
    let (_, lines) = ok(&["--uid", "1000", "init-module", "--image-len", "16"], 1);
    assert_eq!(lines[0]["euid"], 1000);
    check_failed_with(
        &lines[0],
        if modules_supported() {
            "EPERM"
        } else {
            "ENOSYS"
        },
    );
}

#[test]
fn repeat_makes_that_many_calls_in_one_process() {
    let (pid, lines) = ok(&["delete-module", "mtcall_r", "--repeat", "3"], 3);
    let mut last_exit = 0;
    for (i, l) in lines.iter().enumerate() {
        check_identity(l, pid, unsafe { libc::getuid() });
        assert_eq!(l["call"], i);
        let enter = l["enter_ns"].as_u64().unwrap();
        assert!(enter >= last_exit, "calls are sequential: {l}");
        last_exit = l["exit_ns"].as_u64().unwrap();
    }
    // --repeat before the op works too.
    ok(&["--repeat", "2", "socket-sctp"], 2);
}

#[test]
fn flood_counts_add_up() {
    let (pid, lines) = ok(&["flood", "--procs", "4", "--calls", "500"], 1);
    let l = &lines[0];
    check_identity(l, pid, unsafe { libc::getuid() });
    assert_eq!(l["op"], "flood");
    assert_eq!(l["total_calls"], 2000);
    assert!(l["elapsed_ns"].as_u64().is_some_and(|ns| ns > 0), "{l}");
    assert_eq!(l["all_children_ok"], true);
    let children = l["children"].as_array().unwrap();
    assert_eq!(children.len(), 4);
    let mut pids: Vec<u64> = children
        .iter()
        .map(|c| c["pid"].as_u64().unwrap())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 4, "distinct children: {l}");
    assert!(!pids.contains(&u64::from(pid)));
    let bucket = expected("ENOENT");
    for c in children {
        assert_eq!(c["calls"], 500, "{c}");
        assert_eq!(c["exit_status"], 0, "{c}");
        let counts = c["errno_counts"].as_object().unwrap();
        let sum: u64 = counts.values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(sum, 500, "{c}");
        assert_eq!(counts[bucket], 500, "{c}");
    }
}

#[test]
fn socket_ops_match_a_direct_call() {
    for (op, domain, kind, protocol) in [
        (
            "socket-sctp",
            libc::AF_INET,
            libc::SOCK_STREAM,
            libc::IPPROTO_SCTP,
        ),
        ("socket-key", libc::AF_KEY, libc::SOCK_RAW, 2),
    ] {
        // SAFETY: plain socket call; a returned fd is closed.
        let (ret, errno) = unsafe {
            let fd = libc::socket(domain, kind, protocol);
            let e = std::io::Error::last_os_error().raw_os_error().unwrap();
            if fd >= 0 {
                libc::close(fd);
            }
            (fd, e)
        };
        let (_, lines) = ok(&[op], 1);
        let l = &lines[0];
        assert_eq!(l["op"], op.replace('-', "_"), "{l}");
        assert_eq!(
            (&l["domain"], &l["type"], &l["protocol"]),
            (&json!(domain), &json!(kind), &json!(protocol)),
            "{l}"
        );
        if ret >= 0 {
            assert!(l["ret"].as_i64().unwrap() >= 0, "{l}");
            assert_eq!(l["errno"], Value::Null);
        } else {
            assert_eq!(l["ret"], -1, "{l}");
            assert_eq!(l["errno_num"], errno, "{l}");
        }
    }
}

#[test]
fn bad_usage_exits_2_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "no op given"),
        (&["frobnicate"], "unknown op `frobnicate`"),
        (&["delete-module"], "exactly one NAME"),
        (&["delete-module", "a", "b"], "exactly one NAME"),
        (
            &["delete-module", "a", "--flags", "lots"],
            "`lots` is not a number",
        ),
        (
            &["delete-module", "a", "--image", "x"],
            "does not take --image",
        ),
        (&["finit-module"], "needs one of --file, --memfd, --fd"),
        (
            &["finit-module", "--fd", "1", "--file", "x"],
            "only one of --file",
        ),
        (&["finit-module", "--fd"], "--fd needs a value"),
        (&["finit-module", "--fd", "99999999999"], "out of range"),
        (&["init-module"], "exactly one of --image, --image-len"),
        (
            &[
                "init-module",
                "--image-len",
                "4",
                "--params",
                "a",
                "--params-ptr",
                "bad",
            ],
            "only one of --params",
        ),
        (
            &["init-module", "--image-len", "4", "--params-ptr", "good"],
            "takes `bad`",
        ),
        (&["flood", "--procs", "2"], "flood needs --calls"),
        (&["--uid", "x", "socket-sctp"], "--uid: `x` is not a number"),
        (&["--bogus", "socket-sctp"], "unknown option --bogus"),
        (&["socket-sctp", "--repeat", "0"], "at least 1"),
        (
            &["delete-module", "a", "--flags", "1", "--flags", "2"],
            "--flags given twice",
        ),
    ];
    for (args, msg) in cases {
        let r = mtcall(args);
        let err = String::from_utf8_lossy(&r.out.stderr);
        assert_eq!(r.out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(msg), "{args:?}: stderr {err:?} lacks {msg:?}");
        assert!(err.contains("usage: mtcall"), "{args:?}: {err}");
        assert!(r.lines.is_empty(), "{args:?} made a call");
    }
}

#[test]
fn setup_failures_exit_1_naming_the_file() {
    for args in [
        &["finit-module", "--file", "/nonexistent/m.ko"][..],
        &["finit-module", "--memfd", "/nonexistent/m.ko"],
        &["init-module", "--image", "/nonexistent/m.ko"],
        &[
            "init-module",
            "--image-len",
            "1",
            "--params-file",
            "/nonexistent/m.ko",
        ],
    ] {
        let r = mtcall(args);
        let err = String::from_utf8_lossy(&r.out.stderr);
        assert_eq!(r.out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("/nonexistent/m.ko"), "{args:?}: {err}");
        assert!(r.lines.is_empty());
    }
}
