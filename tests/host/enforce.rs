//! `watch --enforce` on this machine, where module syscalls fail with ENOSYS
//! before any LSM hook: the refusals when the BPF LSM is not active or not
//! listed, and audit mode (`would_deny`) on real calls.

use std::{
    fs,
    os::unix::fs::{chown, PermissionsExt},
    process::Command,
    time::Duration,
};

use crate::harness::{self, mtcall, serial, Watch, LOCK_FILE};

/// `modtrace watch --enforce` in a mount namespace of its own where
/// /sys/kernel/security is a tmpfs holding `lsm` (none when `None`): its exit
/// code and stderr.
fn enforce_with_lsm_list(lsm: Option<&str>) -> (Option<i32>, String) {
    let write = lsm.map_or(String::new(), |list| {
        format!("printf '%s' '{list}' > /sys/kernel/security/lsm && ")
    });
    let script = format!(
        "mount -t tmpfs none /sys/kernel/security && {write}exec \"$0\" watch --enforce --lock-file {LOCK_FILE}"
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(env!("CARGO_BIN_EXE_modtrace"))
        .output()
        .expect("running unshare");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn without_the_bpf_lsm_enforce_names_the_list_and_the_parameter() {
    let _serial = serial();
    // Debian 11's list, booted without lsm=…,bpf.
    let (code, stderr) = enforce_with_lsm_list(Some("capability,yama,apparmor,tomoyo"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("(/sys/kernel/security/lsm: \"capability,yama,apparmor,tomoyo\")")
            && stderr.contains(
                "add `lsm=capability,yama,apparmor,tomoyo,bpf` to the kernel command line"
            ),
        "{stderr}"
    );
}

#[test]
fn without_the_lsm_list_enforce_says_what_to_mount() {
    let _serial = serial();
    let (code, stderr) = enforce_with_lsm_list(None);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("/sys/kernel/security/lsm cannot be read")
            && stderr.contains("mount -t securityfs"),
        "{stderr}"
    );
}

#[test]
fn a_deny_rule_without_enforce_alerts_and_says_would_deny() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("cramfs.ko");
    fs::write(&module, b"not an ELF image").unwrap();
    // The default policy: its CIS rule is a deny rule.
    let mut watch = Watch::start(&[]);
    let call = &mtcall(&[
        "finit-module",
        "--file",
        module.to_str().unwrap(),
        "--params",
        "",
        "--flags",
        "0",
    ])[0];
    let record = watch.wait_for(
        |r| r["kind"] == "finit_module" && r["process"]["pid"] == call["pid"],
        Duration::from_secs(10),
    );
    assert_eq!(record["result"]["errno"], "ENOSYS", "{record}");
    assert_eq!(record["policy"]["verdict"], "deny", "{record}");
    assert_eq!(record["policy"]["would_deny"], true, "{record}");
    assert!(record.get("enforcement").is_none(), "{record}");
    let seq = record["seq"].clone();
    watch.wait_for(
        |r| r["kind"] == "alert" && r["event_seq"] == seq && r["rule"] == "cis-denied-module",
        Duration::from_secs(10),
    );
    let records = watch.stop();
    let start = &records[0];
    assert!(start.get("enforcing").is_none(), "{start}");
    let stop = records.iter().find(|r| r["kind"] == "stop").unwrap();
    assert!(stop.get("enforcement").is_none(), "{stop}");
}

#[test]
fn policy_check_refuses_an_undecidable_deny_rule_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    fs::write(
        &path,
        "[[rule]]\nid = \"d\"\nseverity = \"high\"\naction = \"deny\"\nwhen = { load = true, signer = \"x\" }\n",
    )
    .unwrap();
    chown(&path, Some(0), Some(0)).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let out = harness::modtrace()
        .args(["policy", "check", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:5:23: condition \"signer\" cannot be decided before the load; use action = \"alert\"",
            path.display()
        )),
        "{stderr}"
    );
}
