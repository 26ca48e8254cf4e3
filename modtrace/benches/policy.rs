//! Policy evaluation cost per event: the embedded default policy, and a
//! 1,000-rule policy of the shapes people write (named deny lists, globs,
//! loader and path conditions, allow-lists). Each as `watch` evaluates a
//! record it has just made (its values taken from the record in memory), and
//! as `replay` evaluates one read back (the line deserialised into the same
//! typed record, then judged).
use std::{fmt::Write as _, hint::black_box};

use criterion::{criterion_group, criterion_main, Criterion};
use modtrace::{
    policy::{
        event::{Event, ReadRecord},
        Context, Policy, Syscall,
    },
    record::Call,
    replay::{PolicySource, Replay},
    samples::{ordinary_finit, render, TS},
    sink::Format,
};
use serde_json::{json, Value};

fn context() -> Context {
    Context {
        kernel: "6.1.0-28-amd64".into(),
        check_owner: false,
    }
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

/// What `watch` pays: the event made from the record in memory, evaluated.
fn live(policy: &Policy, json: &Value, call: &Call) -> usize {
    // The JSON is rendered only for a matched rule's message, as in watch.
    let render = || json.clone();
    let event = Event::live(&render, Syscall::FinitModule, TS, call);
    policy.evaluate_event(&event).matches.len()
}

/// What `replay` pays for a syscall line once read: the record deserialised
/// from the line, then judged.
fn read_back(policy: &Policy, line: &str) -> usize {
    let read = ReadRecord::from_line(Syscall::FinitModule, line, TS.to_owned(), 3).unwrap();
    policy.judge_line(line, &read).matches.len()
}

/// `modtrace replay` of a capture of `lines` syscall records after its
/// `start`, with the default policy, output discarded; per line.
fn replay_capture(capture: &[u8]) -> u64 {
    let mut replay = Replay {
        file: "bench",
        format: Format::Json,
        colour: false,
        out: std::io::sink(),
        diagnostics: std::io::sink(),
        alert_window_s: None,
    };
    let source = PolicySource {
        path: None,
        check_owner: false,
    };
    replay.run(capture, &source).unwrap().events
}

fn bench(c: &mut Criterion) {
    // A finit_module of ext4 by modprobe from the module tree, module analysis
    // included: an ordinary load that most rules have to look at and reject.
    let call = ordinary_finit();
    let record = render(Syscall::FinitModule, &call);
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
    let empty = Policy::from_rules(Vec::new(), "", "empty");
    assert_eq!(live(&quiet_default, &record, &call), 0);

    // What every evaluation pays before any rule: making the event.
    c.bench_function("empty policy, ordinary load, as watch", |b| {
        b.iter(|| live(&empty, black_box(&record), black_box(&call)));
    });
    let line = record.to_string();
    c.bench_function(
        "empty policy, ordinary load, from its line as replay",
        |b| {
            b.iter(|| read_back(&empty, black_box(&line)));
        },
    );
    c.bench_function("default policy, ordinary load, as watch", |b| {
        b.iter(|| live(&quiet_default, black_box(&record), black_box(&call)));
    });
    c.bench_function(
        "default policy, ordinary load, from its line as replay",
        |b| {
            b.iter(|| read_back(&quiet_default, black_box(&line)));
        },
    );
    // What `watch` calls: the evaluation, written as the record's `policy`
    // object (serialized with the line).
    c.bench_function(
        "default policy, ordinary load, judged into the record as watch",
        |b| {
            let render = || record.clone();
            b.iter(|| {
                let evaluation =
                    quiet_default.judge_call(Syscall::FinitModule, TS, black_box(&call), &render);
                serde_json::to_vec(&evaluation).map(|bytes| bytes.len())
            });
        },
    );
    c.bench_function("1000-rule policy, ordinary load, as watch", |b| {
        b.iter(|| live(&large, black_box(&record), black_box(&call)));
    });
    c.bench_function(
        "1000-rule policy, ordinary load, from its line as replay",
        |b| b.iter(|| read_back(&large, black_box(&line))),
    );
    let mut denied_call = call.clone();
    if let Some(module) = &mut denied_call.module {
        module.name = Some("deny-5-b".into());
    }
    let denied = render(Syscall::FinitModule, &denied_call);
    assert_eq!(denied["module"]["name"], json!("deny-5-b"));
    assert_eq!(live(&large, &denied, &denied_call), 1);
    c.bench_function("1000-rule policy, a denied module, as watch", |b| {
        b.iter(|| live(&large, black_box(&denied), black_box(&denied_call)));
    });
    // The whole of `modtrace replay`, per 1,000 lines: reading each line,
    // judging it, writing it (to nowhere) with its new judgement.
    let mut capture = format!(
        "{{\"kind\":\"start\",\"schema\":1,\"ts\":\"{TS}\",\"seq\":0,\"host\":\"h\",\"kernel\":\"6.1.0-28-amd64\"}}\n"
    );
    for _ in 0..1000 {
        capture.push_str(&line);
        capture.push('\n');
    }
    c.bench_function("replay of 1,000 ordinary loads, default policy", |b| {
        b.iter(|| replay_capture(black_box(capture.as_bytes())));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
