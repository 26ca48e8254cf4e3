//! Records of typical calls, built as `watch` builds them, for tests and
//! benchmarks: the typed record and, from it, its JSON.
use serde_json::Value;

use modtrace_common::Syscall;

use crate::record::{
    fields::{self, Captured},
    image::{Analysis, ImageReport, Modinfo, Signature},
    AncestorRecord, Args, Body, Call, Cause, Container, FileArg, ModuleInfo, Namespaces, Parent,
    Process, Record, RecordId, Requester, SCHEMA_VERSION,
};

/// The time of every sample record.
pub const TS: &str = "2026-11-28T04:30:00.123456789Z";

pub fn captured(value: Option<&str>) -> Captured {
    Captured {
        value: value.map(Into::into),
        truncated: false,
        error: None,
    }
}

/// `call` as `watch` renders it (sink.rs), at [`TS`].
pub fn render(syscall: Syscall, call: &Call) -> Value {
    let body = Body::Call(Box::new(call.clone()));
    serde_json::to_value(Record {
        kind: syscall.name(),
        schema: SCHEMA_VERSION,
        ts: TS,
        seq: 7,
        host: "web1",
        body: &body,
        policy: None,
    })
    .expect("records serialize to JSON")
}

/// A finit_module of ext4 by modprobe from the module tree, signed and
/// untainting, autoloaded for a mount in a container: every field a policy
/// condition reads is set, and the default policy flags nothing.
pub fn ordinary_finit() -> Call {
    Call {
        duration_ns: Some(81234),
        exited: true,
        process: Process {
            pid: 812,
            tid: 812,
            start_ns: Some(5_000_000_000),
            ppid: Some(790),
            uid: 0,
            gid: 0,
            euid: Some(0),
            auid: Some(1000),
            session: Some(3),
            comm: "modprobe".into(),
            exe: Some("/usr/bin/kmod".into()),
            cmdline: Some(vec!["modprobe".into(), "ext4".into()]),
            cgroup_id: 4242,
            cgroup: Some("/system.slice/docker-abc.scope".into()),
            container: Some(Container {
                runtime: "docker".into(),
                id: "abc".into(),
                pod_uid: None,
            }),
            systemd_unit: None,
            namespaces: Namespaces {
                mnt: Some(4026531841),
                pid: None,
            },
            ancestors: vec![
                AncestorRecord {
                    pid: 790,
                    comm: "bash".into(),
                    uid: 0,
                    exe: Some("/usr/bin/bash".into()),
                },
                AncestorRecord {
                    pid: 700,
                    comm: "gone".into(),
                    uid: 0,
                    exe: None,
                },
                AncestorRecord {
                    pid: 1,
                    comm: "systemd".into(),
                    uid: 0,
                    exe: Some("/usr/lib/systemd/systemd".into()),
                },
            ],
        },
        parent: Parent {
            pid: Some(790),
            comm: Some("bash".into()),
            exe: Some("/usr/bin/bash".into()),
            cmdline: None,
        },
        args: Args::Finit {
            fd: 3,
            file: FileArg {
                path: Some("/lib/modules/6.1.0-28-amd64/kernel/fs/ext4/ext4.ko".into()),
                truncated: false,
                ino: Some(131733),
                unlinked: false,
                memfd: false,
                error: None,
            },
            params: captured(Some("debug=1")),
            flags: fields::decode_flags(0, fields::FINIT_FLAGS),
        },
        result: Some(fields::call_result(0)),
        module: Some(ModuleInfo {
            name: Some("ext4".into()),
            taint: Some(fields::taint(0)),
            kernel_taint: Some(fields::taint(1)),
            freed: None,
            image: Some(ImageReport {
                source: "fd".into(),
                during_call: true,
                analysis: Some(Analysis {
                    sha256: "3f".repeat(32),
                    decompressed_sha256: None,
                    compression: None,
                    size: 1138840,
                    modinfo: Modinfo {
                        license: Some("GPL".into()),
                        intree: true,
                        ..Modinfo::default()
                    },
                    signature: Signature {
                        signed: true,
                        signer: Some("Debian Secure Boot CA".into()),
                        ..Signature::default()
                    },
                    this_module_name: Some("ext4".into()),
                    warnings: Vec::new(),
                }),
                error: None,
            }),
        }),
        cause: Some(Cause {
            request_id: RecordId::default(),
            request_seq: 2,
            request: "fs-ext4".into(),
            process: Requester {
                pid: 600,
                comm: "mount".into(),
                uid: 0,
                exe: None,
                cgroup: None,
            },
            matched_by: "cmdline".into(),
        }),
        enforcement: None,
    }
}

/// `partial` (a syscall record with only the fields a test cares about)
/// made a whole record of the schema: each field it lacks takes the value
/// of a call that says nothing (no exe, no module, uid 0), so that the
/// record deserialises and only the test's own fields decide rules.
pub fn complete(partial: &Value) -> Value {
    let kind = partial["kind"].as_str().unwrap_or("finit_module");
    let args = match kind {
        "init_module" => {
            serde_json::json!({"image_addr":"0x0","image_len":0,"params":{"value":null,"truncated":false}})
        }
        "delete_module" => serde_json::json!({"name":{"value":null,"truncated":false},
            "flags":{"raw":0,"names":[]}}),
        _ => serde_json::json!({"fd":3,"file":{"path":null,"truncated":false,"ino":null,
            "unlinked":false,"memfd":false},"params":{"value":null,"truncated":false},
            "flags":{"raw":0,"names":[]}}),
    };
    let mut whole = serde_json::json!({"kind":kind,"schema":SCHEMA_VERSION,"ts":TS,"seq":0,
        "host":"h","duration_ns":null,"exited":true,
        "process":{"pid":1,"tid":1,"ppid":null,"uid":0,"gid":0,"euid":null,"auid":null,
            "session":null,"comm":"","exe":null,"cmdline":null,"cgroup_id":0,"cgroup":null,
            "container":null,"systemd_unit":null,"namespaces":{"mnt":null,"pid":null},
            "ancestors":[]},
        "parent":{"pid":null,"comm":null,"exe":null,"cmdline":null},
        "args":args,"result":null,"module":null});
    // The objects that a test names in part are filled in as well.
    if partial["module"].is_object() {
        whole["module"] = serde_json::json!({});
        if partial["module"]["image"].is_object() {
            whole["module"]["image"] = serde_json::json!({"source":"path","during_call":false,
                "sha256":"","decompressed_sha256":null,"compression":null,"size":0,
                "modinfo":Modinfo::default(),"signature":Signature::default(),
                "this_module_name":null,"warnings":[]});
        }
    }
    if partial["cause"].is_object() {
        whole["cause"] = serde_json::json!({"request_seq":0,"request":"",
            "process":{"pid":0,"comm":"","uid":0,"exe":null,"cgroup":null},"matched_by":"cmdline"});
    }
    merge(&mut whole, partial);
    whole
}

/// Writes `over` onto `base`, object by object.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                match base.get_mut(key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (slot, value) => *slot = value.clone(),
    }
}
