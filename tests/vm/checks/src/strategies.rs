//! tests/vm/scenarios/strategies.sh: the automatic choice of attach strategy
//! costs other syscalls nothing, each strategy forced (for all syscalls, per
//! syscall, by flag and by environment) serves what it was asked to, and every
//! strategy's records carry the same captured fields.
use std::time::Duration;

use serde_json::{json, Value};

use super::{
    scenarios::{expect_rc, kernel_at_least, one_record},
    watch::{watched, Watched, SYSCALL_KINDS},
    Ctx,
};

/// Best first, as modtrace tries them.
const ORDER: [&str; 4] = ["kprobe", "fentry", "syscall-tracepoints", "raw-syscalls"];
/// The strategies that put no other syscall on a slow path: the automatic
/// choice must be one of them on every kernel of the matrix.
const UNTAXED: [&str; 2] = ["kprobe", "fentry"];

/// Each watch of the scenario and the strategy it forces per syscall (in
/// the order of `SYSCALL_KINDS`), `None` where the choice is automatic.
const RUNS: [(&str, [Option<&str>; 3]); 7] = [
    ("default", [None; 3]),
    ("fentry", [Some("fentry"); 3]),
    ("kprobe", [Some("kprobe"); 3]),
    ("syscall-tracepoints", [Some("syscall-tracepoints"); 3]),
    ("raw-syscalls", [Some("raw-syscalls"); 3]),
    ("per-syscall", [None, Some("kprobe"), Some("raw-syscalls")]),
    ("env", [Some("syscall-tracepoints"); 3]),
];

pub(crate) fn strategies(ctx: &mut Ctx) {
    ctx.ground.eq(
        "BTF present (fentry and kprobe possible)",
        ctx.results.meta.get("btf").map(String::as_str),
        Some("yes"),
    );
    for (label, _) in RUNS {
        expect_rc(ctx, &format!("{label}_load"), 0);
        expect_rc(ctx, &format!("{label}_unload"), 0);
    }
    let Some(default) = watched(ctx, "default") else {
        return;
    };
    loaded_once(ctx);
    let Some(automatic) = automatic_choice(ctx, &default) else {
        return;
    };
    let reference = records(ctx, &default, "default");
    for (label, forced) in &RUNS[1..] {
        let refusal = refused_here(&automatic, forced).or_else(|| known_refusal(ctx, forced));
        if let Some(why) = refusal {
            failed_as_refused(ctx, label, &why);
            continue;
        }
        let Some(w) = watched(ctx, label) else {
            continue;
        };
        check_start(ctx, label, &w, forced, &automatic);
        let got = records(ctx, &w, label);
        for (kind, (expected, actual)) in ["load", "unload"].iter().zip(reference.iter().zip(&got))
        {
            if let (Some(expected), Some(actual)) = (expected, actual) {
                let differences = differences("", &captured(actual), &captured(expected));
                ctx.modtrace.check(
                    differences.is_empty(),
                    format!("{label}: the {kind} record's captured fields are the default run's; differ: {differences:?}"),
                );
            }
        }
    }
}

/// The object is loaded once, however many strategies fail: a failed
/// strategy costs the verifying of its own programs, not a reload (5.10's
/// three failed fentry loads used to reload the object three times). The
/// figures of the start-up's steps are logged beside, for the report.
fn loaded_once(ctx: &mut Ctx) {
    let Some(watch) = ctx.results.watches.get("default") else {
        return;
    };
    let step = |name: &str| -> Vec<Option<Duration>> {
        let marker = format!("start-up: {name} after ");
        watch
            .stderr
            .lines()
            .filter_map(|line| line.split_once(&marker))
            .map(|(_, rest)| rest.split_whitespace().next().and_then(duration))
            .collect()
    };
    let (loads, attached) = (step("maps made"), step("attached"));
    let loaded_to_attached = match (loads.as_slice(), attached.as_slice()) {
        ([Some(loaded)], [Some(attached)]) => Some(attached.saturating_sub(*loaded)),
        _ => None,
    };
    ctx.modtrace.check(
        loaded_to_attached.is_some(),
        format!("default: the object is loaded once and attached (logged at debug): loaded after {loads:?}, attached after {attached:?}, {loaded_to_attached:?} from one to the other"),
    );
}

/// A `Duration` as its `Debug` prints it: `1.5s`, `312.4ms`, `80µs`, `7ns`.
fn duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (value, unit) = text.split_at(split);
    let value: f64 = value.parse().ok()?;
    let per_second = match unit {
        "s" => 1.0,
        "ms" => 1e3,
        "µs" => 1e6,
        "ns" => 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(value / per_second))
}

/// What the default run chose per syscall, and the strategies it passed
/// over with their reasons; checks that it chose one that costs other
/// syscalls nothing and passed over exactly the better ones, saying why.
struct Choice {
    strategy: String,
    refused: Vec<(String, String)>,
}

fn automatic_choice(ctx: &mut Ctx, w: &Watched) -> Option<Vec<Choice>> {
    let m = &mut ctx.modtrace;
    let start = w.start()?;
    m.eq("default: start.btf", start["btf"].as_bool(), Some(true));
    let mut choices = Vec::new();
    for syscall in SYSCALL_KINDS {
        let strategy = start["strategies"][syscall].as_str().unwrap_or_default();
        m.check(
            UNTAXED.contains(&strategy),
            format!("default: start.strategies.{syscall} costs other syscalls nothing (one of {UNTAXED:?}): got {strategy:?}"),
        );
        let refused = refusals(&start["refused_strategies"][syscall]);
        let better: Vec<&str> = ORDER
            .iter()
            .copied()
            .take_while(|s| *s != strategy)
            .collect();
        m.eq(
            &format!("default: start.refused_strategies.{syscall} names the strategies better than {strategy}"),
            refused.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
            better,
        );
        for (refused_strategy, reason) in &refused {
            m.check(
                !reason.is_empty(),
                format!("default: {refused_strategy} for {syscall} is refused with a reason: {reason:?}"),
            );
        }
        choices.push(Choice {
            strategy: strategy.to_owned(),
            refused,
        });
    }
    Some(choices)
}

fn refusals(list: &Value) -> Vec<(String, String)> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let field = |name: &str| r[name].as_str().unwrap_or_default().to_owned();
            (field("strategy"), field("reason"))
        })
        .collect()
}

/// The reason the automatic choice gave for refusing a strategy this run
/// forces, if it did: forced, it must then fail.
fn refused_here(automatic: &[Choice], forced: &[Option<&str>; 3]) -> Option<String> {
    automatic.iter().zip(forced).find_map(|(choice, forced)| {
        let forced = (*forced)?;
        choice
            .refused
            .iter()
            .find(|(strategy, _)| strategy == forced)
            .map(|(_, reason)| reason.clone())
    })
}

/// The verifier's words for a strategy this run forces that the matrix has
/// measured to fail on this kernel, though the automatic choice, satisfied
/// by a better strategy, never tried it: 5.10's BTF declares the syscall
/// wrappers' `pt_regs` only forward, so no fentry program on them loads.
fn known_refusal(ctx: &Ctx, forced: &[Option<&str>; 3]) -> Option<String> {
    let fentry_forced = forced.contains(&Some("fentry"));
    (fentry_forced && !kernel_at_least(ctx.results, (5, 11)))
        .then(|| "arg0 type FWD is not a struct".to_owned())
}

/// A strategy that failed here when chosen automatically must not start when
/// forced, and must say why, as the automatic choice did.
fn failed_as_refused(ctx: &mut Ctx, label: &str, why: &str) {
    let Some(watch) = ctx.results.watches.get(label) else {
        ctx.modtrace
            .fail(format!("watch {label}: the scenario never started it"));
        return;
    };
    ctx.modtrace.check(
        watch.status != "started" && watch.stderr.contains(why),
        format!(
            "{label}: forcing a strategy the automatic choice refused fails, saying {why:?}: status {:?}, stderr {:?}",
            watch.status,
            watch.stderr.trim()
        ),
    );
}

fn check_start(
    ctx: &mut Ctx,
    label: &str,
    w: &Watched,
    forced: &[Option<&str>; 3],
    automatic: &[Choice],
) {
    let m = &mut ctx.modtrace;
    let Some(start) = w.start() else { return };
    m.eq(
        &format!("{label}: start.btf"),
        start["btf"].as_bool(),
        Some(true),
    );
    for ((syscall, forced), automatic) in SYSCALL_KINDS.iter().zip(forced).zip(automatic) {
        let expected = forced.unwrap_or(&automatic.strategy);
        m.eq(
            &format!("{label}: start.strategies.{syscall}"),
            start["strategies"][syscall].as_str(),
            Some(expected),
        );
        let refused = refusals(&start["refused_strategies"][syscall]);
        let expected: Vec<&str> = match forced {
            Some(_) => Vec::new(),
            None => automatic.refused.iter().map(|(s, _)| s.as_str()).collect(),
        };
        m.eq(
            &format!("{label}: start.refused_strategies.{syscall}"),
            refused.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
            expected,
        );
    }
}

/// The load's and the unload's one record each, checked against the
/// kernel's own trace by `watched`.
fn records<'a>(ctx: &mut Ctx, w: &Watched<'a>, label: &str) -> [Option<&'a Value>; 2] {
    ["load", "unload"].map(|action| {
        let a = ctx.results.action(&format!("{label}_{action}"))?;
        one_record(&mut ctx.modtrace, w, a)
    })
}

/// Where two values differ, as JSON pointers with both values.
fn differences(at: &str, actual: &Value, expected: &Value) -> Vec<String> {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => {
            let mut keys: Vec<&String> = a.keys().chain(e.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|k| {
                    let (a, e) = (
                        a.get(k).unwrap_or(&Value::Null),
                        e.get(k).unwrap_or(&Value::Null),
                    );
                    differences(&format!("{at}/{k}"), a, e)
                })
                .collect()
        }
        _ if actual == expected => Vec::new(),
        _ => vec![format!("{at}: {actual} instead of {expected}")],
    }
}

/// The fields of a record that must not depend on the strategy: all but
/// those that differ from one run to the next whatever the strategy (times
/// and sequence numbers; the new process's pid, tid and start time, which
/// the policy's messages name; init_module's buffer address, which address
/// space randomisation moves; the command lines and ancestors' exes read
/// from /proc after the call, which a process already gone has lost; and
/// whether the image was copied while the call was still in the kernel).
fn captured(record: &Value) -> Value {
    let process = &record["process"];
    let ancestors: Vec<Value> = process["ancestors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| json!({"pid": a["pid"], "comm": a["comm"], "uid": a["uid"]}))
        .collect();
    json!({
        "kind": record["kind"],
        "exited": record["exited"],
        "process": {
            "ppid": process["ppid"], "uid": process["uid"], "gid": process["gid"],
            "euid": process["euid"], "auid": process["auid"], "session": process["session"],
            "comm": process["comm"], "exe": process["exe"], "cgroup_id": process["cgroup_id"],
            "cgroup": process["cgroup"], "container": process["container"],
            "systemd_unit": process["systemd_unit"], "namespaces": process["namespaces"],
            "ancestors": ancestors,
        },
        "parent": {"pid": record["parent"]["pid"], "comm": record["parent"]["comm"], "exe": record["parent"]["exe"]},
        "args": without(&record["args"], "/image_addr"),
        "result": record["result"],
        "module": without(&record["module"], "/image/during_call"),
        "policy": {
            "verdict": record["policy"]["verdict"],
            "rules": record["policy"]["matches"].as_array().into_iter().flatten().map(|m| m["rule"].clone()).collect::<Vec<_>>(),
        },
    })
}

/// `value` without the field at `pointer` (when it has one).
fn without(value: &Value, pointer: &str) -> Value {
    let mut value = value.clone();
    if let Some((parent, field)) = pointer.rsplit_once('/') {
        if let Some(Value::Object(parent)) = value.pointer_mut(parent) {
            parent.remove(field);
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_durations_as_debug_prints_them() {
        for (text, expected) in [
            ("1.5s", Duration::from_millis(1500)),
            ("312.5ms", Duration::from_micros(312_500)),
            ("80µs", Duration::from_micros(80)),
            ("7ns", Duration::from_nanos(7)),
        ] {
            assert_eq!(duration(text), Some(expected), "{text}");
        }
        assert_eq!(duration("12"), None);
        assert_eq!(duration("12min"), None);
        assert_eq!(duration("ms"), None);
    }
}
