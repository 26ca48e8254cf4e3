//! `modtrace watch` on this machine's kernel: real probes, real syscalls made
//! by `mtcall` through the raw syscall interface, every field of every record
//! checked against what the test knows independently.

use std::{fs, os::unix::fs::MetadataExt, path::Path, process::Command, time::Duration};

use crate::harness::{self, calls_of, mtcall, serial, Watch};
use serde_json::{json, Value};

fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path).unwrap().trim().to_owned()
}

/// What the kernel knows of this test process, which mtcall inherits.
struct Inherited {
    auid: u64,
    session: u64,
    cgroup: String,
    cgroup_id: u64,
    comm: String,
    mnt_ns: u64,
    pid_ns: u64,
}

/// The inode number of this process's namespace of `kind`.
fn namespace_inode(kind: &str) -> u64 {
    let link = fs::read_link(format!("/proc/self/ns/{kind}")).unwrap();
    let link = link.to_str().unwrap();
    link.strip_prefix(&format!("{kind}:["))
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected namespace link {link}"))
}

fn inherited() -> Inherited {
    let cgroup = fs::read_to_string("/proc/self/cgroup").unwrap();
    let cgroup = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("cgroup v2")
        .to_owned();
    // On cgroup v2 a cgroup's id is the inode number of its directory.
    let dir = format!("/sys/fs/cgroup{cgroup}");
    let cgroup_id = fs::metadata(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e} (is cgroup2 mounted at /sys/fs/cgroup?)"))
        .ino();
    Inherited {
        auid: read_trimmed("/proc/self/loginuid").parse().unwrap(),
        session: read_trimmed("/proc/self/sessionid").parse().unwrap(),
        cgroup,
        cgroup_id,
        // real_parent is the thread that forked, so its comm is the thread name.
        comm: read_trimmed("/proc/thread-self/comm"),
        mnt_ns: namespace_inode("mnt"),
        pid_ns: namespace_inode("pid"),
    }
}

/// The chain of parent pids from `pid` up to 1, walked through /proc.
fn proc_ancestors(pid: u32) -> Vec<u64> {
    let mut chain = Vec::new();
    let mut current = pid;
    while current > 1 && chain.len() < 8 {
        let stat = fs::read_to_string(format!("/proc/{current}/stat")).unwrap();
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        current = after_comm
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        if current == 0 {
            break;
        }
        chain.push(u64::from(current));
    }
    chain
}

/// Asserts the process and parent fields of `record` against mtcall's own
/// report of the call and against this test process.
fn assert_caller(record: &Value, call: &Value, args: &[&str]) {
    let me = inherited();
    let p = &record["process"];
    for field in ["pid", "tid", "ppid", "uid", "gid", "euid"] {
        assert_eq!(p[field], call[field], "process.{field}");
    }
    assert_eq!(p["ppid"], std::process::id());
    assert_eq!(p["auid"], me.auid);
    assert_eq!(p["session"], me.session);
    assert_eq!(p["comm"], "mtcall");
    assert_eq!(
        p["exe"],
        harness::mtcall_path()
            .canonicalize()
            .unwrap()
            .to_str()
            .unwrap()
    );
    let mut cmdline = vec![harness::mtcall_path().to_str().unwrap().to_owned()];
    cmdline.extend(args.iter().map(ToString::to_string));
    assert_eq!(p["cmdline"], json!(cmdline));
    assert_eq!(p["cgroup"], me.cgroup);
    assert_eq!(p["cgroup_id"], me.cgroup_id);
    assert_eq!(p["namespaces"], json!({"mnt": me.mnt_ns, "pid": me.pid_ns}));
    assert_eq!(call["mnt_ns"], me.mnt_ns);
    assert_eq!(call["pid_ns"], me.pid_ns);
    // Ancestry from the kernel: the parent first (the forking thread, so
    // this test's pid and thread name), then up to pid 1 as /proc has it.
    let ancestors = p["ancestors"].as_array().unwrap();
    let pids: Vec<u64> = ancestors
        .iter()
        .map(|a| a["pid"].as_u64().unwrap())
        .collect();
    let mut expected = vec![u64::from(std::process::id())];
    expected.extend(proc_ancestors(std::process::id()));
    expected.truncate(8);
    assert_eq!(pids, expected, "{record}");
    assert_eq!(ancestors[0]["comm"], me.comm);
    assert_eq!(ancestors[0]["uid"], 0);
    let parent = &record["parent"];
    assert_eq!(parent["pid"], std::process::id());
    assert_eq!(parent["comm"], me.comm);
    assert_eq!(
        parent["exe"],
        std::env::current_exe().unwrap().to_str().unwrap()
    );
    assert_eq!(parent["cmdline"][0], std::env::args().next().unwrap());
    assert_eq!(record["exited"], true);
    assert!(record["duration_ns"].as_u64().unwrap() > 0);
    assert_eq!(
        record["result"],
        json!({"ret": -38, "errno": "ENOSYS", "ok": false})
    );
    assert_eq!(call["errno"], "ENOSYS", "this kernel has no module support");
    chrono_like_rfc3339(record["ts"].as_str().unwrap());
}

fn chrono_like_rfc3339(ts: &str) {
    // 2026-11-27T21:05:21.643265220Z: date, time, nine fraction digits, Z.
    let (date, time) = ts.split_once('T').unwrap_or_else(|| panic!("ts {ts}"));
    assert_eq!(date.len(), 10, "ts {ts}");
    assert!(
        time.ends_with('Z') && time.split_once('.').unwrap().1.len() == 10,
        "ts {ts}"
    );
}

/// A real module from Debian's 6.1 kernel package (signed, uncompressed).
const DUMMY_KO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/modules/dummy-6.1.ko"
);

fn sha256sum(path: &str) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// The record identifies Debian's dummy.ko, read from `source`, even though
/// this kernel refused the load: what was attempted is what matters.
fn assert_identifies_dummy(record: &Value, source: &str) {
    let image = &record["module"]["image"];
    assert_eq!(image["source"], source, "{record}");
    // Whether the copy beat the call's return is a race here (ENOSYS returns
    // in microseconds); it must be stated either way.
    assert!(image["during_call"].is_boolean(), "{record}");
    assert_eq!(image["sha256"], sha256sum(DUMMY_KO));
    assert_eq!(image["size"], fs::metadata(DUMMY_KO).unwrap().len());
    assert_eq!(image["modinfo"]["name"], "dummy");
    assert_eq!(image["modinfo"]["license"], "GPL");
    assert_eq!(
        image["modinfo"]["vermagic"],
        "6.1.0-56-amd64 SMP preempt mod_unload modversions "
    );
    assert_eq!(image["signature"]["signed"], true);
    assert_eq!(
        image["signature"]["signer"],
        "Build time autogenerated kernel key"
    );
    assert_eq!(
        image["signature"]["sig_key"],
        "66:F5:4E:15:66:A0:43:CC:30:30:42:0E:18:1C:F8:50:FB:9F:42:AC"
    );
    assert_eq!(image["signature"]["sig_hashalgo"], "sha256");
}

/// Runs mtcall (lingering so /proc still shows it) and returns its one call
/// report and the tracer's one record of it.
fn traced_call(watch: &mut Watch, kind: &str, args: &[&str]) -> (Value, Value) {
    let mut full = vec!["--linger-ms", "1500"];
    full.extend_from_slice(args);
    let calls = mtcall(&full);
    assert_eq!(calls.len(), 1);
    let call = calls[0].clone();
    let record = watch.wait_for(
        |r| r["process"]["pid"] == call["pid"],
        Duration::from_secs(10),
    );
    assert_eq!(record["kind"], kind);
    assert_caller(&record, &call, &full);
    (call, record)
}

#[test]
fn init_module_records_image_and_parameters() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let long_params = dir.path().join("params");
    let long: String = (0..5000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    fs::write(&long_params, &long).unwrap();
    let image = DUMMY_KO;

    let mut watch = Watch::start(&[]);
    let (call, record) = traced_call(
        &mut watch,
        "init_module",
        &[
            "init-module",
            "--image",
            image,
            "--params",
            "debug=1 name=\"a b\"",
        ],
    );
    assert_eq!(
        record["args"]["image_len"],
        fs::metadata(DUMMY_KO).unwrap().len()
    );
    assert_identifies_dummy(&record, "caller-memory");
    assert_eq!(
        record["args"]["image_addr"],
        format!("{:#x}", call["image_addr"].as_u64().unwrap())
    );
    assert_eq!(
        record["args"]["params"],
        json!({"value": "debug=1 name=\"a b\"", "truncated": false})
    );

    let (_, record) = traced_call(
        &mut watch,
        "init_module",
        &[
            "init-module",
            "--image",
            image,
            "--params-file",
            long_params.to_str().unwrap(),
        ],
    );
    assert_eq!(
        record["args"]["params"],
        json!({"value": &long[..4095], "truncated": true})
    );

    let (_, record) = traced_call(
        &mut watch,
        "init_module",
        &["init-module", "--image", image, "--params-ptr", "bad"],
    );
    assert_eq!(
        record["args"]["params"],
        json!({"value": null, "truncated": false, "error": "unreadable"})
    );
    let records = watch.stop();
    let stop = records.last().unwrap();
    assert_eq!(
        stop["events"],
        json!({"init_module": 3, "finit_module": 0, "delete_module": 0, "request": 0, "total": 3})
    );
    assert_eq!(stop["lost"]["total"], 0);
}

#[test]
fn finit_module_resolves_files_memfds_and_bad_fds() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("dummy.ko");
    fs::copy(DUMMY_KO, &module).unwrap();
    let module_path = module.canonicalize().unwrap();
    let module_arg = module.to_str().unwrap();

    let mut watch = Watch::start(&[]);
    let (call, record) = traced_call(
        &mut watch,
        "finit_module",
        &[
            "finit-module",
            "--file",
            module_arg,
            "--params",
            "x=1",
            "--flags",
            "7",
        ],
    );
    let args = &record["args"];
    assert_eq!(args["fd"], call["fd"]);
    assert_eq!(
        args["file"],
        json!({
            "path": module_path.to_str().unwrap(), "truncated": false,
            "ino": fs::metadata(&module).unwrap().ino(), "unlinked": false, "memfd": false,
        })
    );
    assert_eq!(args["params"], json!({"value": "x=1", "truncated": false}));
    // Opened through /proc from the caller's fd: the very file the kernel got.
    assert_identifies_dummy(&record, "fd");
    assert_eq!(
        args["flags"],
        json!({"raw": 7, "names": [
        "MODULE_INIT_IGNORE_MODVERSIONS", "MODULE_INIT_IGNORE_VERMAGIC", "MODULE_INIT_COMPRESSED_FILE"]})
    );

    let (_, record) = traced_call(
        &mut watch,
        "finit_module",
        &["finit-module", "--memfd", module_arg, "--flags", "0x10"],
    );
    let file = &record["args"]["file"];
    assert_eq!(file["path"], "/memfd:mtcall");
    assert_eq!(
        (&file["memfd"], &file["unlinked"]),
        (&json!(true), &json!(true))
    );
    assert_eq!(
        record["args"]["flags"],
        json!({"raw": 16, "names": [], "unknown": 16})
    );
    assert_identifies_dummy(&record, "fd");

    let (_, record) = traced_call(
        &mut watch,
        "finit-module".replace('-', "_").as_str(),
        &["finit-module", "--fd", "-1"],
    );
    assert_eq!(record["args"]["fd"], -1);
    assert_eq!(
        record["args"]["file"],
        json!({"path": null, "truncated": false, "ino": null, "unlinked": false, "memfd": false, "error": "bad fd"})
    );

    // A deleted file stays open; its path is what it was, marked unlinked.
    let records = watch.stop();
    assert_eq!(records.last().unwrap()["events"]["finit_module"], 3);
    assert!(Path::new(&module).exists());
}

#[test]
fn delete_module_as_an_unprivileged_user() {
    let _serial = serial();
    let mut watch = Watch::start(&[]);
    let (call, record) = traced_call(
        &mut watch,
        "delete_module",
        &[
            "--uid",
            "1000",
            "--gid",
            "1000",
            "delete-module",
            "dummy",
            "--flags",
            "2048",
        ],
    );
    assert_eq!(
        (&call["uid"], &call["euid"], &call["gid"]),
        (&json!(1000), &json!(1000), &json!(1000))
    );
    assert_eq!(
        record["args"],
        json!({"name": {"value": "dummy", "truncated": false}, "flags": {"raw": 2048, "names": ["O_NONBLOCK"]}})
    );
    let (_, record) = traced_call(
        &mut watch,
        "delete_module",
        &[
            "delete-module",
            "a_module_name_far_longer_than_the_kernel_accepts_0123456789abcdef",
            "--flags",
            "2560",
        ],
    );
    assert_eq!(
        record["args"]["flags"]["names"],
        json!(["O_NONBLOCK", "O_TRUNC"])
    );
    // 63 bytes and the NUL fill the 64-byte capture (the kernel's own limit is 55).
    assert_eq!(
        record["args"]["name"],
        json!({"value": "a_module_name_far_longer_than_the_kernel_accepts_0123456789abcd", "truncated": true})
    );
    let records = watch.stop();
    let stop = records.last().unwrap();
    assert_eq!(
        stop["events"],
        json!({"init_module": 0, "finit_module": 0, "delete_module": 2, "request": 0, "total": 2})
    );
    assert_eq!(calls_of(&records, &call["pid"]).len(), 1);
}

#[test]
fn namespaces_of_a_caller_in_new_mount_and_pid_namespaces() {
    let _serial = serial();
    let mut watch = Watch::start(&[]);
    let unshare = Command::new("unshare")
        .args(["--mount", "--pid", "--fork"])
        .arg(harness::mtcall_path())
        .args(["delete-module", "modtrace_ns_probe", "--flags", "0"])
        .output()
        .expect("unshare (util-linux) runs");
    assert!(
        unshare.status.success(),
        "unshare failed: {}",
        String::from_utf8_lossy(&unshare.stderr)
    );
    let call: Value = serde_json::from_slice(&unshare.stdout).unwrap();
    // Inside its new pid namespace mtcall is pid 1; the record has the pid
    // the host sees, so find it by the name it passed.
    let record = watch.wait_for(
        |r| r["args"]["name"]["value"] == "modtrace_ns_probe",
        Duration::from_secs(10),
    );
    assert_eq!(call["pid"], 1, "mtcall ran in a new pid namespace");
    let me = inherited();
    let (mnt, pid) = (
        &record["process"]["namespaces"]["mnt"],
        &record["process"]["namespaces"]["pid"],
    );
    assert_eq!((mnt, pid), (&call["mnt_ns"], &call["pid_ns"]), "{record}");
    assert_ne!(mnt, me.mnt_ns);
    assert_ne!(pid, me.pid_ns);
    assert_ne!(record["process"]["pid"], 1);
    watch.stop();
}

#[test]
fn exes_of_processes_gone_before_their_record_is_read() {
    let _serial = serial();
    let mut watch = Watch::start(&[]);
    // While the tracer is stopped, a shell runs mtcall and both exit and are
    // reaped: by the time their record is read, /proc no longer has them. A
    // load (init_module) gets every ancestor's exe; this test's own process
    // exec'd before the tracer started, so /proc names it.
    watch.signal(libc::SIGSTOP);
    let mtcall = harness::mtcall_path().canonicalize().unwrap();
    let mut shell = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "{} init-module --image-len 64 --params ''; true",
            mtcall.display()
        ))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let shell_pid = shell.id();
    assert!(shell.wait().unwrap().success());
    assert!(!Path::new(&format!("/proc/{shell_pid}")).exists());
    watch.signal(libc::SIGCONT);
    let record = watch.wait_for(
        |r| r["kind"] == "init_module" && r["process"]["ppid"] == shell_pid,
        Duration::from_secs(10),
    );
    let sh = fs::canonicalize("/bin/sh").unwrap();
    let me = std::env::current_exe().unwrap();
    let p = &record["process"];
    assert!(p["cmdline"].is_null(), "mtcall was gone: {record}");
    // Its cgroup comes from the id the kernel captured, not from /proc.
    assert_eq!(p["cgroup"], inherited().cgroup, "{record}");
    assert_eq!(p["exe"], mtcall.to_str().unwrap(), "{record}");
    assert_eq!(record["parent"]["pid"], shell_pid);
    assert_eq!(record["parent"]["exe"], sh.to_str().unwrap(), "{record}");
    let ancestors = p["ancestors"].as_array().unwrap();
    assert_eq!(ancestors[0]["pid"], shell_pid);
    assert_eq!(ancestors[0]["exe"], sh.to_str().unwrap(), "{record}");
    assert_eq!(ancestors[1]["pid"], std::process::id());
    assert_eq!(ancestors[1]["exe"], me.to_str().unwrap(), "{record}");
    watch.stop();
}

/// How modtrace accounted for the calls of a flood's children.
#[derive(Debug)]
struct Tally {
    /// Records of the children's calls.
    reported: u64,
    /// Calls counted in the children's `summary` records.
    aggregated: u64,
    /// Calls counted lost by the whole watch (only the flood made calls).
    lost: u64,
}

/// Runs `mtcall flood` with `flood_args` (4 processes x 25,000 calls) under a
/// watch with `watch_args`, and checks the bookkeeping every watch must keep:
/// losses and summaries reported in-band agree with `stop`, and every call
/// the children made is reported, aggregated or lost, exactly once.
fn flood(watch_args: &[&str], flood_args: &[&str]) -> (Tally, Vec<Value>) {
    let watch = Watch::start(watch_args);
    let mut args = vec!["flood", "--procs", "4", "--calls", "25000"];
    args.extend(flood_args);
    let summary = &mtcall(&args)[0];
    assert_eq!(summary["total_calls"], 100_000);
    let children: Vec<&Value> = summary["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["pid"])
        .collect();
    let records = watch.stop();
    let of_children = |kind: &str, pid_at: &str| {
        records
            .iter()
            .filter(|r| r["kind"] == kind && children.contains(&&r[pid_at]["pid"]))
            .cloned()
            .collect::<Vec<Value>>()
    };
    let calls = of_children("delete_module", "process");
    let summaries = of_children("summary", "process");
    let stop = records.last().unwrap();
    let tally = Tally {
        reported: calls.len() as u64,
        aggregated: summaries.iter().map(|s| s["count"].as_u64().unwrap()).sum(),
        lost: stop["lost"]["total"].as_u64().unwrap(),
    };
    let loss_records: u64 = records
        .iter()
        .filter(|r| r["kind"] == "loss")
        .map(|r| r["total"].as_u64().unwrap())
        .sum();
    assert_eq!(
        loss_records, tally.lost,
        "every loss is reported in-band before stop"
    );
    assert_eq!(
        stop["events"]["delete_module"].as_u64().unwrap(),
        tally.reported
    );
    assert_eq!(
        stop["aggregated"]["delete_module"].as_u64().unwrap(),
        tally.aggregated
    );
    assert_eq!(
        tally.reported + tally.aggregated + tally.lost,
        100_000,
        "every call is reported, aggregated or lost exactly once: {tally:?}"
    );
    for s in &summaries {
        assert_eq!(s["syscall"], "delete_module", "{s}");
        assert_eq!(s["result"]["errno"], "ENOSYS", "{s}");
        assert_eq!(s["process"]["comm"], "mtcall", "{s}");
        match s["repeats_of"].as_u64() {
            // The summary names the record whose repeats it counts.
            Some(seq) => {
                let repeated = &records[seq as usize];
                assert_eq!(s["elided"], "repeats", "{s}");
                assert_eq!(repeated["kind"], "delete_module", "{repeated}");
                assert_eq!(
                    repeated["process"]["pid"], s["process"]["pid"],
                    "{repeated}"
                );
            }
            None => assert_eq!(s["elided"], "distinct", "{s}"),
        }
    }
    (tally, records)
}

fn summaries_of<'a>(records: &'a [Value], elided: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["kind"] == "summary" && r["elided"] == elided)
        .collect()
}

#[test]
fn flood_of_repeated_calls_is_counted_in_the_kernel() {
    let _serial = serial();
    // One page of ring buffer, which the same flood overflows without
    // aggregation (below): counted in the kernel, nothing is lost.
    let (tally, records) = flood(&["--ring-buffer-size", "4096"], &[]);
    assert_eq!(tally.lost, 0, "{tally:?}");
    // The first call of each process in each 10-second window is reported;
    // the flood may straddle one window boundary.
    assert!((4..=8).contains(&tally.reported), "{tally:?}");
    let repeats = summaries_of(&records, "repeats");
    assert!((4..=8).contains(&repeats.len()), "{repeats:?}");
    assert!(summaries_of(&records, "distinct").is_empty());
}

#[test]
fn flood_of_distinct_calls_degrades_to_counting() {
    let _serial = serial();
    // The default ring: a burst of 4 x 16 full reports fits it, not one page.
    let (tally, records) = flood(&[], &["--distinct"]);
    assert_eq!(tally.lost, 0, "{tally:?}");
    // 16 distinct calls per process and window are reported in full.
    assert!((4 * 16..=8 * 16).contains(&tally.reported), "{tally:?}");
    let distinct = summaries_of(&records, "distinct");
    assert!((4..=8).contains(&distinct.len()), "{distinct:?}");
    for s in distinct {
        assert_eq!(s["reported"], 16, "{s}");
    }
}

#[test]
fn flood_without_aggregation_every_call_is_reported_or_counted() {
    let _serial = serial();
    let (tally, _) = flood(
        &["--aggregate", "off", "--ring-buffer-size", "8388608"],
        &[],
    );
    assert_eq!(tally.aggregated, 0, "{tally:?}");
    // One page of ring buffer cannot keep up: losses must appear and add up.
    let (tally, _) = flood(&["--aggregate", "off", "--ring-buffer-size", "4096"], &[]);
    assert!(
        tally.lost > 0,
        "a one-page ring buffer must overflow under 100,000 calls: {tally:?}"
    );
}

#[test]
fn distinct_calls_under_a_flood_are_each_reported_in_full() {
    let _serial = serial();
    let mut watch = Watch::start(&[]);
    let flooding = std::thread::spawn(|| {
        mtcall(&["flood", "--procs", "4", "--calls", "500000", "--distinct"])
    });
    std::thread::sleep(Duration::from_millis(200));
    let calls: Vec<Value> = (0..20)
        .map(|i| {
            mtcall(&[
                "init-module",
                "--image-len",
                "64",
                "--params",
                &format!("call={i}"),
            ])[0]
                .clone()
        })
        .collect();
    assert!(
        !flooding.is_finished(),
        "the flood must still run while the 20 calls are made; make it longer"
    );
    for (i, call) in calls.iter().enumerate() {
        let record = watch.wait_for(
            |r| r["kind"] == "init_module" && r["process"]["pid"] == call["pid"],
            Duration::from_secs(60),
        );
        assert_eq!(
            record["args"]["params"]["value"],
            format!("call={i}"),
            "{record}"
        );
        assert_eq!(record["args"]["image_len"], 64, "{record}");
        assert_eq!(record["result"]["errno"], "ENOSYS", "{record}");
        assert_eq!(record["process"]["comm"], "mtcall", "{record}");
    }
    flooding.join().unwrap();
    let records = watch.stop();
    let stop = records.last().unwrap();
    assert_eq!(stop["lost"]["total"], 0, "{stop}");
}

#[test]
fn text_format_is_one_readable_line_per_record() {
    let _serial = serial();
    let mut child = harness::modtrace()
        .args([
            "watch",
            "--format",
            "text",
            "--lock-file",
            harness::LOCK_FILE,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let start = lines.next().unwrap().unwrap();
    assert!(start.contains(" start modtrace "), "{start}");
    let call = &mtcall(&["delete-module", "textmod", "--flags", "2048"])[0];
    let line = lines.next().unwrap().unwrap();
    assert!(line.contains("delete_module ENOSYS"), "{line}");
    assert!(
        line.contains(&format!("pid={}", call["pid"])) && line.contains("name=textmod"),
        "{line}"
    );
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success());
    let stop = lines.next().unwrap().unwrap();
    assert!(
        stop.contains(" stop events 1 aggregated 0 lost 0"),
        "{stop}"
    );
}

#[test]
fn output_file_gets_ndjson_with_mode_0600() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capture.ndjson");
    let watch = Watch::start(&["--output", path.to_str().unwrap()]);
    mtcall(&["delete-module", "filemod"]);
    std::thread::sleep(Duration::from_millis(500));
    let stdout_records = watch.stop();
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    let file_records: Vec<Value> = fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(file_records, stdout_records);
    // Appends, never truncates, and refuses a file others can read.
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = harness::modtrace()
        .args([
            "watch",
            "--output",
            path.to_str().unwrap(),
            "--lock-file",
            harness::LOCK_FILE,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("readable by others"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Image analysis (hashing and parsing, here of 200 MiB) runs off the
/// ring-buffer loop: while it goes on, the records of other calls are
/// written, and under a flood nothing is lost.
#[test]
fn a_large_image_is_analysed_while_other_records_flow() {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.ko");
    let mut bytes = fs::read(DUMMY_KO).unwrap();
    bytes.extend((0..200u32 << 18).flat_map(|i| i.wrapping_mul(2_654_435_761).to_ne_bytes()));
    fs::write(&big, &bytes).unwrap();
    let big_sha = sha256sum(big.to_str().unwrap());

    let mut watch = Watch::start(&[]);
    let flooding = std::thread::spawn(|| {
        mtcall(&["flood", "--procs", "2", "--calls", "300000", "--distinct"])
    });
    let done = Arc::new(AtomicBool::new(false));
    // Three callers, so that on a loaded machine, where starting a process
    // takes long, calls still come while the image is analysed.
    let small_callers: Vec<_> = (0..3)
        .map(|caller| {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut calls = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    let params = format!("caller={caller},call={}", calls.len());
                    calls.push(
                        mtcall(&["init-module", "--image-len", "64", "--params", &params])[0]
                            .clone(),
                    );
                }
                calls
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let big_call = mtcall(&[
        "--linger-ms",
        "2000",
        "init-module",
        "--image",
        big.to_str().unwrap(),
    ])[0]
        .clone();
    let big_record = watch.wait_for(
        |r| r["kind"] == "init_module" && r["process"]["pid"] == big_call["pid"],
        Duration::from_secs(60),
    );
    done.store(true, Ordering::Relaxed);
    let small_calls: Vec<Value> = small_callers
        .into_iter()
        .flat_map(|caller| caller.join().unwrap())
        .collect();
    flooding.join().unwrap();
    let image = &big_record["module"]["image"];
    assert_eq!(image["sha256"], big_sha, "{image}");
    assert_eq!(image["size"], bytes.len(), "{image}");
    let records = watch.stop();
    let mut written_during_analysis = 0;
    for call in &small_calls {
        let record = records
            .iter()
            .find(|r| r["kind"] == "init_module" && r["process"]["pid"] == call["pid"])
            .unwrap_or_else(|| panic!("no record of {call}"));
        assert_eq!(record["args"]["image_len"], 64, "{record}");
        // Entered after the large call, written before it.
        if record["ts"].as_str() > big_record["ts"].as_str()
            && record["seq"].as_u64() < big_record["seq"].as_u64()
        {
            written_during_analysis += 1;
        }
    }
    assert!(
        written_during_analysis > 0,
        "no call made after the large one was written before it: {} small calls",
        small_calls.len()
    );
    assert_eq!(records.last().unwrap()["lost"]["total"], 0);
}
