//! Policy evaluation cost per event: the embedded default policy, and a
//! 1,000-rule policy of the shapes people write (named deny lists, globs,
//! loader and path conditions, allow-lists).
use std::{fmt::Write as _, hint::black_box};

use criterion::{criterion_group, criterion_main, Criterion};
use modtrace::policy::{Context, Policy};
use serde_json::{json, Value};

fn context() -> Context {
    Context {
        kernel: "6.1.0-28-amd64".into(),
        check_owner: false,
    }
}

/// A finit_module of ext4 by modprobe from the module tree: an ordinary load
/// that most rules have to look at and reject.
fn ordinary_load() -> Value {
    json!({"kind":"finit_module","schema":1,"ts":"2026-11-27T21:00:00.123456789Z","seq":3,
        "host":"web1","duration_ns":81234,"exited":true,
        "process":{"pid":812,"tid":812,"ppid":790,"uid":0,"gid":0,"euid":0,"auid":1000,
            "session":3,"comm":"modprobe","exe":"/usr/bin/kmod","cmdline":["modprobe","ext4"],
            "cgroup_id":4242,"cgroup":"/user.slice/user-1000.slice/session-3.scope"},
        "parent":{"pid":790,"comm":"bash","exe":"/usr/bin/bash","cmdline":["-bash"]},
        "args":{"fd":3,"file":{"path":"/lib/modules/6.1.0-28-amd64/kernel/fs/ext4/ext4.ko",
            "truncated":false,"ino":131733,"unlinked":false,"memfd":false},
            "params":{"value":"","truncated":false},"flags":{"raw":0,"names":[]}},
        "result":{"ret":0,"errno":null,"ok":true},
        "module":{"name":"ext4","modinfo":{"signed":true,"intree":true,"license":"GPL"},"taint":""}})
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
