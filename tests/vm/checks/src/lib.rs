//! Host-side assertions over one scenario run of the VM matrix (the scenarios are
//! `tests/vm/scenarios/*.sh`, run in a guest by `cargo xtask vm-test`): first the
//! kernel's ground truth (exit codes, /proc/modules, ftrace's record of every module
//! syscall, mtcall's reports), then modtrace's NDJSON against that truth and
//! docs/output.md. modtrace checks never pass vacuously: a watch that did not start is
//! a failure that says why.
//!
//! The runner hands over the directory the guest's results were unpacked into
//! ([`ScenarioResults::load`]) and what it built for the guest ([`Built`]);
//! [`run`] gives the [`Outcome`].
mod cause;
mod container;
mod enforce;
mod flood;
mod identity;
mod inflight;
mod pending;
mod persist;
mod policy;
mod posture;
mod replay;
pub mod results;
mod scenarios;
mod strategies;
#[cfg(test)]
mod tests;
mod watch;

use std::fmt::{self, Debug};

pub use results::{LoadError, ScenarioResults};

/// What the runner built for the guest, as far as the checks need to know it.
pub struct Built {
    /// Whether mtcall built, so that the guest has it.
    pub mtcall: bool,
    /// The first line of `kmod --version` of the kmod the image holds, the
    /// kernel's release's (`kmod version 28`).
    pub kmod_version: String,
}

/// The result of one (kernel, scenario) run.
pub struct Outcome {
    label: String,
    ground: Checks,
    modtrace: Checks,
    vm_error: Option<String>,
}

struct Finding {
    ok: bool,
    what: String,
}

impl Outcome {
    /// A run that gave no results to check; `error` says why.
    pub fn vm_failed(label: &str, error: String) -> Self {
        Self {
            label: label.to_owned(),
            ground: Checks::default(),
            modtrace: Checks::default(),
            vm_error: Some(error),
        }
    }

    /// Whether the run gave results, both areas ran checks, and every check held.
    pub fn passed(&self) -> bool {
        self.vm_error.is_none()
            && !self.ground.findings.is_empty()
            && !self.modtrace.findings.is_empty()
            && self
                .ground
                .findings
                .iter()
                .chain(&self.modtrace.findings)
                .all(|f| f.ok)
    }
}

/// The verdict, then for each area its count of checks and failures, each failed
/// finding and what could not be checked: one line each, every line ended.
impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        if let Some(err) = &self.vm_error {
            return writeln!(f, "{verdict} {}: the VM run failed: {err}", self.label);
        }
        for (area, checks) in [("ground truth", &self.ground), ("modtrace", &self.modtrace)] {
            let findings = &checks.findings;
            let failed: Vec<_> = findings.iter().filter(|finding| !finding.ok).collect();
            writeln!(
                f,
                "{verdict} {} {area}: {} checks, {} failed{}",
                self.label,
                findings.len(),
                failed.len(),
                if findings.is_empty() {
                    " (no checks ran: that is a failure)"
                } else {
                    ""
                }
            )?;
            for finding in failed {
                writeln!(f, "    - {}", finding.what)?;
            }
            for note in &checks.unchecked {
                writeln!(f, "    not checked: {note}")?;
            }
        }
        Ok(())
    }
}

/// Collects findings for one area (ground truth or modtrace).
#[derive(Default)]
pub(crate) struct Checks {
    findings: Vec<Finding>,
    /// What a check could not be run on, and why: shown with the outcome,
    /// never counted as a check, so it cannot make a run pass.
    unchecked: Vec<String>,
}

impl Checks {
    pub(crate) fn check(&mut self, ok: bool, what: impl Into<String>) {
        self.findings.push(Finding {
            ok,
            what: what.into(),
        });
    }

    pub(crate) fn fail(&mut self, what: impl Into<String>) {
        self.check(false, what);
    }

    pub(crate) fn not_checked(&mut self, what: impl Into<String>) {
        self.unchecked.push(what.into());
    }

    #[expect(
        clippy::needless_pass_by_value,
        reason = "the values compared are mostly temporaries read out of a record; by value, each of the hundred call sites reads got-then-expected without a `&`"
    )]
    pub(crate) fn eq<T: PartialEq + Debug>(&mut self, what: &str, actual: T, expected: T) {
        let ok = actual == expected;
        self.check(ok, format!("{what}: got {actual:?}, expected {expected:?}"));
    }
}

/// Ground truth and modtrace checks of one scenario.
pub(crate) struct Ctx<'a> {
    pub results: &'a ScenarioResults,
    pub ground: Checks,
    pub modtrace: Checks,
}

/// Checks the results of scenario `scenario` (a file name of tests/vm/scenarios/
/// without .sh) against its assertions in `scenarios::find`; `label` names the run.
pub fn run(label: &str, scenario: &str, results: &ScenarioResults, built: &Built) -> Outcome {
    let mut ctx = Ctx {
        results,
        ground: Checks::default(),
        modtrace: Checks::default(),
    };
    common_ground(&mut ctx, built);
    match scenarios::find(scenario) {
        Some(check) => check(&mut ctx),
        None => ctx.ground.fail(format!(
            "no assertions are written for scenario {scenario} (tests/vm/checks/src/scenarios.rs)"
        )),
    }
    Outcome {
        label: label.to_owned(),
        ground: ctx.ground,
        modtrace: ctx.modtrace,
        vm_error: None,
    }
}

/// What every run must show regardless of scenario.
fn common_ground(ctx: &mut Ctx, built: &Built) {
    let r = ctx.results;
    let g = &mut ctx.ground;
    g.check(
        r.scenario_rc == Some(0),
        format!(
            "scenario script exits 0: got {:?}; {}/scenario.log ends: {}",
            r.scenario_rc,
            r.dir.display(),
            r.scenario_log
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        ),
    );
    g.check(
        r.trace_enable_failed.is_empty(),
        format!(
            "ftrace events that could not be enabled: {}",
            r.trace_enable_failed.trim()
        ),
    );
    g.eq("ftrace overruns (lost ground truth)", r.trace_overruns, 0);
    g.check(
        r.calls().all(|c| c.ret.is_some()),
        "every traced module syscall has a traced exit",
    );
    if !built.mtcall {
        g.fail("mtcall did not build: target/release/mtcall is not in the guest");
    }
    g.eq(
        "the kmod that ran in the guest (meta kmod) is the release's",
        r.meta.get("kmod").map(String::as_str),
        Some(built.kmod_version.as_str()),
    );
    for action in &r.actions {
        let uses_mtcall = action.argv.first().is_some_and(|a| a.ends_with("/mtcall"));
        if uses_mtcall {
            let report = action.json_lines();
            g.check(
                report.as_ref().is_ok_and(|lines| !lines.is_empty()),
                format!(
                    "mtcall in action {} printed its JSON report (stdout {:?}, stderr {:?})",
                    action.label, action.stdout, action.stderr
                ),
            );
        }
    }
}
