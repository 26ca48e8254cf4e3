//! tests/vm/scenarios/posture.sh: every number the hardening guide's audit
//! script prints agrees with `modtrace audit --format json` on the same
//! host, in each of four states; and each state shows in the audit as it
//! should.
use std::collections::BTreeMap;

use serde_json::Value;

use super::{scenarios::action, Ctx};

const STATES: [&str; 4] = ["plain", "cis", "tainting", "modules_disabled"];
/// The script's `head -10` of unsigned modules.
const SCRIPT_LIST_LIMIT: usize = 10;
const TAINT_UNSIGNED: u64 = 1 << 13;

/// The script's output: `== Header ==` → the lines under it.
fn sections(stdout: &str) -> BTreeMap<String, Vec<String>> {
    let mut sections: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in stdout.lines() {
        if let Some(header) = line.strip_prefix("== ").and_then(|l| l.strip_suffix(" ==")) {
            current = header.to_owned();
            sections.entry(current.clone()).or_default();
        } else {
            sections
                .entry(current.clone())
                .or_default()
                .push(line.trim().to_owned());
        }
    }
    sections
}

fn finding<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["findings"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["id"] == id))
        .unwrap_or(&Value::Null)
}

/// The script's single number under `header`.
fn number(script: &BTreeMap<String, Vec<String>>, header: &str) -> Option<u64> {
    script.get(header)?.first()?.parse().ok()
}

pub(crate) fn posture(ctx: &mut Ctx) {
    if let Some(modinfo) = action(ctx, "modinfo_sctp") {
        let signed = modinfo.stdout.lines().any(|l| l.starts_with("sig_id:"));
        ctx.ground.check(
            signed,
            format!(
                "the guest's modinfo shows sctp's signature (sig_id), as the script needs: stderr {:?}",
                modinfo.stderr.trim()
            ),
        );
    }
    for state in STATES {
        compare(ctx, state);
    }
    states(ctx);
}

/// The audit's report of `state`, when the audit ran and printed JSON.
fn report(ctx: &mut Ctx, state: &str) -> Option<Value> {
    let audit = action(ctx, &format!("audit_{state}"))?;
    let parsed: Result<Value, _> = serde_json::from_str(&audit.stdout);
    let m = &mut ctx.modtrace;
    m.check(
        parsed.is_ok(),
        format!(
            "{state}: modtrace audit printed one JSON report (stderr {:?})",
            audit.stderr.trim()
        ),
    );
    parsed.ok()
}

fn compare(ctx: &mut Ctx, state: &str) {
    let Some(script) = action(ctx, &format!("script_{state}")) else {
        return;
    };
    let script = sections(&script.stdout);
    ctx.ground.eq(
        &format!("{state}: the guide's script printed its six sections"),
        script.len(),
        6,
    );
    let Some(report) = report(ctx, state) else {
        return;
    };
    let m = &mut ctx.modtrace;
    m.eq(
        &format!("{state}: loaded module count, script vs modules.count"),
        number(&script, "Loaded modules count"),
        finding(&report, "modules.count")["data"]["count"].as_u64(),
    );
    m.eq(
        &format!("{state}: /proc/sys/kernel/tainted, script vs kernel.taint"),
        number(&script, "Tainted?"),
        finding(&report, "kernel.taint")["data"]["raw"].as_u64(),
    );
    let lockdown = &finding(&report, "kernel.lockdown")["data"];
    let script_lockdown = script.get("Lockdown").and_then(|l| l.first()).cloned();
    m.eq(
        &format!("{state}: lockdown, script vs kernel.lockdown"),
        script_lockdown.as_deref(),
        Some(lockdown["raw"].as_str().unwrap_or("n/a")),
    );
    m.eq(
        &format!("{state}: modules_disabled, script vs kernel.modules-disabled"),
        number(&script, "Modules-disabled"),
        finding(&report, "kernel.modules-disabled")["data"]["modules_disabled"].as_u64(),
    );
    // ausearch finds nothing without an audit log, and grep -c then says 0.
    let events = &finding(&report, "audit.module-syscalls")["data"]["events_today"];
    m.eq(
        &format!("{state}: audit events today, script vs audit.module-syscalls"),
        number(&script, "Recently loaded (audit)"),
        Some(events.as_u64().unwrap_or(0)),
    );
    let unsigned = &finding(&report, "modules.unsigned")["data"];
    let mut by_file: Vec<String> = ["unsigned_files", "without_file"]
        .iter()
        .flat_map(|k| unsigned[k].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    by_file.sort();
    by_file.truncate(SCRIPT_LIST_LIMIT);
    let mut listed = script
        .get("Unsigned loaded modules")
        .cloned()
        .unwrap_or_default();
    listed.sort();
    m.eq(
        &format!("{state}: unsigned modules (first 10), script vs modules.unsigned"),
        listed,
        by_file,
    );
}

/// What each state must change in the audit.
fn states(ctx: &mut Ctx) {
    let reports: BTreeMap<&str, Value> = STATES
        .iter()
        .filter_map(|s| Some((*s, report(ctx, s)?)))
        .collect();
    let status = |state: &str, id: &str| {
        reports.get(state).map(|r| {
            finding(r, id)["status"]
                .as_str()
                .unwrap_or("absent")
                .to_owned()
        })
    };
    let tainting_rc = action(ctx, "audit_tainting").and_then(|a| a.rc);
    let m = &mut ctx.modtrace;
    m.eq(
        "plain: the CIS list is not applied",
        status("plain", "deny.cis-list").as_deref(),
        Some("fail"),
    );
    m.eq(
        "cis: the guide's CIS file passes deny.cis-list",
        status("cis", "deny.cis-list").as_deref(),
        Some("pass"),
    );
    let loaded = reports
        .get("cis")
        .map(|r| finding(r, "deny.loaded")["data"]["modules"].clone());
    m.eq(
        "cis: sctp, loaded before the file, is a denied module loaded now",
        loaded,
        Some(serde_json::json!(["sctp"])),
    );
    if let Some(r) = reports.get("tainting") {
        let taint = &finding(r, "kernel.taint")["data"];
        m.check(
            taint["raw"]
                .as_u64()
                .is_some_and(|raw| raw & TAINT_UNSIGNED != 0),
            format!("tainting: the kernel's taint has E: {}", taint["raw"]),
        );
        let e_carriers = taint["flags"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["letter"] == "E"))
            .map(|f| f["modules"].clone());
        m.eq(
            "tainting: E is carried by dummy",
            e_carriers,
            Some(serde_json::json!(["dummy"])),
        );
        let loaded_unsigned = finding(r, "modules.unsigned")["data"]["loaded_unsigned"].clone();
        m.eq(
            "tainting: modules.unsigned names dummy as loaded unsigned (taint E), which the script's modinfo cannot see",
            loaded_unsigned,
            serde_json::json!(["dummy"]),
        );
        m.eq("tainting: exit code 2 (a fail)", tainting_rc, Some(2));
    }
    m.eq(
        "modules_disabled: kernel.modules-disabled passes",
        status("modules_disabled", "kernel.modules-disabled").as_deref(),
        Some("pass"),
    );
    m.eq(
        "plain: modules_disabled 0 warns",
        status("plain", "kernel.modules-disabled").as_deref(),
        Some("warn"),
    );
}
