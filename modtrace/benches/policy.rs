//! Policy evaluation cost per event, from the record's JSON as `watch` and
//! `replay` hold it: the embedded default policy, and a 1,000-rule policy of
//! the shapes people write (named deny lists, globs, loader and path
//! conditions, allow-lists).
use std::{fmt::Write as _, hint::black_box};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use modtrace::policy::{Context, Policy};
use serde_json::{json, Value};

fn context() -> Context {
    Context {
        kernel: "6.1.0-28-amd64".into(),
        check_owner: false,
    }
}

/// A finit_module of ext4 by modprobe from the module tree, whole as `watch`
/// writes it (docs/output.md), module analysis included: an ordinary load
/// that most rules have to look at and reject.
fn ordinary_load() -> Value {
    json!({"kind":"finit_module","schema":1,"ts":"2026-11-27T21:00:00.123456789Z","seq":3,
        "host":"web1","duration_ns":81234,"exited":true,
        "process":{"pid":812,"tid":812,"ppid":790,"uid":0,"gid":0,"euid":0,"auid":1000,
            "session":3,"comm":"modprobe","exe":"/usr/bin/kmod","cmdline":["modprobe","ext4"],
            "cgroup_id":4242,"cgroup":"/user.slice/user-1000.slice/session-3.scope",
            "container":null,"systemd_unit":null,
            "ancestors":[{"pid":790,"comm":"bash","uid":0,"exe":"/usr/bin/bash"},
                {"pid":700,"comm":"sshd","uid":0,"exe":"/usr/sbin/sshd"},
                {"pid":1,"comm":"systemd","uid":0,"exe":"/usr/lib/systemd/systemd"}]},
        "parent":{"pid":790,"comm":"bash","exe":"/usr/bin/bash","cmdline":["-bash"]},
        "args":{"fd":3,"file":{"path":"/lib/modules/6.1.0-28-amd64/kernel/fs/ext4/ext4.ko",
            "truncated":false,"ino":131733,"unlinked":false,"memfd":false},
            "params":{"value":"","truncated":false},"flags":{"raw":0,"names":[]}},
        "result":{"ret":0,"errno":null,"ok":true},
        "module":{"name":"ext4","taint":{"raw":0,"letters":"","names":[]},
            "kernel_taint":{"raw":0,"letters":"","names":[]},
            "image":{"source":"fd","during_call":true,"sha256":"3f1c".repeat(16),
                "decompressed_sha256":null,"compression":null,"size":1138840,
                "modinfo":{"name":"ext4","license":"GPL","description":"Fourth Extended Filesystem",
                    "author":["Remy Card, Stephen Tweedie, Andrew Morton, Andreas Dilger, Theodore Ts'o and others"],
                    "version":null,"srcversion":"0AB1C2D3E4F5A6B7C8D9E0F","vermagic":"6.1.0-28-amd64 SMP preempt mod_unload modversions ",
                    "depends":["mbcache","jbd2","crc16"],"intree":true,"retpoline":true,
                    "other":{"alias":["fs-ext4","ext3","fs-ext3","ext2","fs-ext2"]}},
                "signature":{"signed":true,"signer":"Debian Secure Boot CA","sig_key":"4B:6E:F5",
                    "sig_hashalgo":"sha256","id_type":"PKCS#7","error":null},
                "this_module_name":"ext4","warnings":[]}}})
}

/// 1,000 rules: 700 naming modules, 100 module globs, 100 on loader or path,
/// 100 allow-lists on other fields.
fn thousand_rules() -> String {
    let mut text = String::new();
    for i in 0..1000 {
        let when = match i % 10 {
            0 => format!("{{ load = true, module = \"mod{i}_*\" }}"),
            1 => format!("{{ load = true, exe = \"/opt/tool{i}/**\" }}"),
            2 => format!(
                "{{ syscall = \"finit_module\", path_prefix = \"/srv/m{i}/\", uid = [{i}] }}"
            ),
            _ => format!("{{ load = true, module = [\"deny{i}\", \"deny-{i}-b\"] }}"),
        };
        let _ = writeln!(
            text,
            "[[rule]]\nid = \"r{i}\"\nseverity = \"medium\"\nwhen = {when}"
        );
        if i % 10 == 3 {
            let _ = writeln!(text, "allow = {{ comm = \"trusted{i}\" }}");
        }
    }
    text
}

fn bench(c: &mut Criterion) {
    let record = ordinary_load();
    let mut quiet_default = Policy::default_policy(&context());
    // The host's modprobe.d would change the count from one machine to the
    // next; measure the embedded rules alone.
    let rules: Vec<_> = quiet_default
        .rules()
        .iter()
        .filter(|r| !r.id.starts_with("modprobe.d:"))
        .cloned()
        .collect();
    quiet_default = Policy::from_rules(rules, "", "default");
    let large = Policy::from_text(&thousand_rules(), "bench", &context()).unwrap();
    assert_eq!(large.rules().len(), 1000);

    // What every evaluation pays before any rule: reading the record.
    let empty = Policy::from_rules(Vec::new(), "", "empty");
    c.bench_function("empty policy, ordinary load", |b| {
        b.iter(|| empty.evaluate(black_box(&record)))
    });
    c.bench_function("default policy, ordinary load", |b| {
        b.iter(|| quiet_default.evaluate(black_box(&record)))
    });
    // What `watch` and `replay` call: the evaluation written into a fresh
    // record as its `policy` object.
    c.bench_function(
        "default policy, ordinary load, judged into the record",
        |b| {
            b.iter_batched_ref(
                || record.clone(),
                |fresh| quiet_default.judge(black_box(fresh)),
                BatchSize::SmallInput,
            )
        },
    );
    c.bench_function("1000-rule policy, ordinary load", |b| {
        b.iter(|| large.evaluate(black_box(&record)))
    });
    let mut denied = record.clone();
    denied["module"]["name"] = json!("deny-5");
    c.bench_function("1000-rule policy, a denied module", |b| {
        b.iter(|| large.evaluate(black_box(&denied)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
