//! The report for a person (a table grouped by section) and as a script of
//! the fixes.
use std::fmt::Write as _;

use owo_colors::{OwoColorize as _, Style};

use super::{Report, Section, Status};

fn status_style(status: Status) -> Style {
    match status {
        Status::Pass => Style::new().green(),
        Status::Warn => Style::new().yellow(),
        Status::Fail => Style::new().red().bold(),
        Status::Unknown => Style::new().magenta(),
    }
}

/// Evidence lines shown per finding on a terminal; JSON has them all.
const EVIDENCE_SHOWN: usize = 8;

pub fn table(report: &Report, colour: bool) -> String {
    let paint = |text: &str, style: Style| {
        if colour {
            text.style(style).to_string()
        } else {
            text.to_owned()
        }
    };
    let mut out = String::new();
    let kernel = report.kernel.as_deref().unwrap_or("unknown kernel");
    let _ = writeln!(out, "modtrace audit of {} ({kernel})", report.root);
    let mut section: Option<Section> = None;
    for finding in &report.findings {
        if section != Some(finding.section) {
            section = Some(finding.section);
            let _ = writeln!(
                out,
                "\n{}",
                paint(finding.section.title(), Style::new().bold())
            );
        }
        let outcome = &finding.outcome;
        let status = format!("{:<7}", outcome.status.name().to_uppercase());
        let _ = writeln!(
            out,
            "  {} {:<26} {}",
            paint(&status, status_style(outcome.status)),
            finding.id,
            outcome.summary
        );
        for evidence in outcome.evidence.iter().take(EVIDENCE_SHOWN) {
            let _ = writeln!(out, "          {}: {}", evidence.source, evidence.value);
        }
        if outcome.evidence.len() > EVIDENCE_SHOWN {
            let _ = writeln!(
                out,
                "          … {} more (--format json lists them)",
                outcome.evidence.len() - EVIDENCE_SHOWN
            );
        }
        for fix in &outcome.fix {
            let _ = writeln!(
                out,
                "          {} {fix}",
                paint("fix:", Style::new().cyan())
            );
        }
    }
    let c = report.counts;
    let _ = writeln!(
        out,
        "\n{} pass, {} warn, {} fail, {} unknown",
        c.pass, c.warn, c.fail, c.unknown
    );
    if !report.not_checked_without_root.is_empty() {
        let _ = writeln!(
            out,
            "not checked in full without root: {}",
            report.not_checked_without_root.join(", ")
        );
    }
    out
}

/// A shell script of every fix, finding by finding; the audit runs none.
pub fn fix_script(report: &Report) -> String {
    let mut out = String::from("#!/bin/sh\n");
    let _ = writeln!(
        out,
        "# Fixes from `modtrace audit` of {} ({}). Read before running.\nset -e",
        report.root,
        report.kernel.as_deref().unwrap_or("unknown kernel")
    );
    for finding in report.findings.iter().filter(|f| !f.outcome.fix.is_empty()) {
        let _ = writeln!(
            out,
            "\n# {} ({}): {}",
            finding.id,
            finding.outcome.status.name(),
            finding.outcome.summary
        );
        for fix in &finding.outcome.fix {
            let _ = writeln!(out, "{fix}");
        }
    }
    out
}
