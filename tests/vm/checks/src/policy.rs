//! tests/vm/scenarios/policy.sh: verdicts and alerts of the default policy on
//! real loads, and a SIGHUP reload that must refuse a broken policy.
use serde_json::{json, Value};

use super::{
    scenarios::{expect_rc, one_record},
    watch::{watched, Watched},
    Checks, Ctx,
};

/// (action, the default policy's rules that must match its record).
const DEFAULT_POLICY: &[(&str, &[&str])] = &[
    (
        "insmod_blacklisted",
        &[
            "modprobe.d:blacklist:dummy",
            "modprobe.d:install:dummy",
            "module-outside-tree",
        ],
    ),
    ("rmmod_blacklisted", &["module-unload"]),
    (
        "memfd",
        &[
            "modprobe.d:blacklist:dummy",
            "modprobe.d:install:dummy",
            "fileless-load",
            "unexpected-loader",
        ],
    ),
    (
        "insmod_unsigned",
        &[
            "modprobe.d:blacklist:dummy",
            "modprobe.d:install:dummy",
            "unsigned-module",
            "tainting-module",
            "module-outside-tree",
        ],
    ),
    (
        "mtcall_file",
        &[
            "modprobe.d:blacklist:dummy",
            "modprobe.d:install:dummy",
            "module-outside-tree",
            "unexpected-loader",
        ],
    ),
];

/// (action, the one rule of the policy in force that must match).
const RELOADS: &[(&str, &str)] = &[
    ("reload_load1", "first-policy"),
    ("reload_load2", "first-policy"),
    ("reload_load3", "second-policy"),
];

pub(crate) fn policy(ctx: &mut Ctx) {
    let r = ctx.results;
    let labels = r
        .actions
        .iter()
        .map(|a| a.label.clone())
        .collect::<Vec<_>>();
    for label in &labels {
        // insmod ignores modprobe.d: the bypass the policy must catch.
        expect_rc(ctx, label, 0);
    }
    ctx.ground.check(
        r.modules_after.iter().any(|m| m == "udf"),
        "modprobe udf loaded udf",
    );
    if let Some(w) = watched(ctx, "default") {
        check_default_policy(ctx, &w);
    }
    if let Some(w) = watched(ctx, "reload") {
        check_reloads(ctx, &w);
    }
}

fn check_default_policy(ctx: &mut Ctx, w: &Watched) {
    let r = ctx.results;
    let m = &mut ctx.modtrace;
    m.eq(
        "default: start.policy.source",
        w.start().and_then(|s| s.pointer("/policy/source")),
        Some(&json!("default")),
    );
    let listed = w
        .start()
        .and_then(|s| s["loaded_modules"].as_array())
        .is_some_and(|mods| {
            mods.iter()
                .any(|m| m["name"] == "loop" && m["size"].as_u64().is_some_and(|s| s > 0))
        });
    m.check(
        listed,
        "default: start.loaded_modules lists loop, loaded before modtrace started",
    );
    // loop was loaded before modtrace started despite `blacklist loop`.
    let start_alerts: Vec<(&str, &str)> = w
        .records
        .iter()
        .filter(|a| a["kind"] == "alert" && a["event_kind"] == "start" && a["event_seq"] == 0)
        .map(|a| {
            (
                a["rule"].as_str().unwrap_or("?"),
                a["message"].as_str().unwrap_or(""),
            )
        })
        .collect();
    m.check(
        matches!(start_alerts.as_slice(), [("modprobe.d:blacklist:loop", message)]
            if message.contains("already loaded when modtrace started")),
        format!("default: one alert for loop, loaded before start despite its blacklist: {start_alerts:?}"),
    );
    // modprobe udf: udf itself is on the CIS list, its dependencies are not.
    if let Some(modprobe) = r.action("modprobe_cis") {
        let records = w.by_pid(modprobe.pid);
        m.check(!records.is_empty(), "modprobe_cis: records of modprobe udf");
        for record in records {
            let module = record.pointer("/module/name").and_then(Value::as_str);
            let expected: &[&str] = if module == Some("udf") {
                &["cis-denied-module"]
            } else {
                &[]
            };
            check_matches(
                m,
                &format!("modprobe_cis ({module:?})"),
                record,
                expected,
                w,
            );
            // Audit mode: the deny rule matched, the load went ahead.
            m.eq(
                &format!("modprobe_cis ({module:?}): policy.would_deny"),
                record.pointer("/policy/would_deny").cloned(),
                (module == Some("udf")).then_some(Value::Bool(true)),
            );
        }
    }
    for &(label, rules) in DEFAULT_POLICY {
        let Some(a) = r.action(label) else { continue };
        if let Some(record) = one_record(m, w, a) {
            check_matches(m, label, record, rules, w);
        }
    }
    if let Some(record) = r
        .action("insmod_blacklisted")
        .and_then(|a| w.by_pid(a.pid).first().copied())
    {
        let messages = matches(record)
            .into_iter()
            .filter(|(rule, _)| rule.starts_with("modprobe.d:"))
            .map(|(_, message)| message);
        for message in messages {
            m.check(
                message.contains("insmod by path") && message.contains("modtrace-test.conf"),
                format!("insmod_blacklisted: the bypass message names insmod by path and the file: {message}"),
            );
        }
    }
}

fn check_reloads(ctx: &mut Ctx, w: &Watched) {
    let r = ctx.results;
    let m = &mut ctx.modtrace;
    for &(label, rule) in RELOADS {
        let Some(a) = r.action(label) else { continue };
        if let Some(record) = one_record(m, w, a) {
            check_matches(m, label, record, &[rule], w);
        }
    }
    let reloads: Vec<&Value> = w
        .records
        .iter()
        .copied()
        .filter(|r| r["kind"] == "policy_reload")
        .collect();
    let [broken, fixed] = reloads.as_slice() else {
        m.fail(format!(
            "reload: two policy_reload records, got {reloads:?}"
        ));
        return;
    };
    let first = w.start().map(|s| &s["policy"]);
    m.check(
        broken["ok"] == false
            && broken["error"].as_str().is_some_and(|e| e.contains("policy.toml:1:"))
            && first.is_some_and(|p| broken["sha256"] == p["sha256"] && broken["rules"] == 1),
        format!("reload: the broken policy is refused with file:line and the first stays ({first:?}): {broken}"),
    );
    m.check(
        fixed["ok"] == true
            && fixed["rules"] == 1
            && first.is_some_and(|p| fixed["sha256"] != p["sha256"]),
        format!("reload: the second policy is taken: {fixed}"),
    );
}

/// (rule, message) of each match in the record's judgement.
fn matches(record: &Value) -> Vec<(&str, &str)> {
    record
        .pointer("/policy/matches")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|m| {
                    (
                        m["rule"].as_str().unwrap_or("?"),
                        m["message"].as_str().unwrap_or(""),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The record matched exactly `expected` (as a set), and each alert-action
/// match raised an `alert` record pointing back at it.
fn check_matches(m: &mut Checks, what: &str, record: &Value, expected: &[&str], w: &Watched) {
    let mut got: Vec<&str> = matches(record).into_iter().map(|(rule, _)| rule).collect();
    got.sort_unstable();
    let mut want = expected.to_vec();
    want.sort_unstable();
    m.eq(&format!("{what}: policy.matches rules"), &got, &want);
    // The default policy's one deny rule outranks its alert rules.
    let verdict = if want.contains(&"cis-denied-module") {
        "deny"
    } else if want.is_empty() {
        "none"
    } else {
        "alert"
    };
    m.eq(
        &format!("{what}: policy.verdict"),
        record.pointer("/policy/verdict").and_then(Value::as_str),
        Some(verdict),
    );
    let mut alerted: Vec<&str> = w
        .records
        .iter()
        .filter(|a| a["kind"] == "alert" && a["event_seq"] == record["seq"])
        .filter_map(|a| a["rule"].as_str())
        .collect();
    alerted.sort_unstable();
    m.eq(&format!("{what}: alert records"), alerted, want);
}
