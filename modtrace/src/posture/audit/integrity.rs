//! The module files on disk against the baseline, when one exists.
use std::io::ErrorKind;

use serde_json::json;

use super::{Check, Host, Outcome, Section, Status};
use crate::posture::baseline::{self, VerifyOptions};

pub(super) const BASELINE: Check = Check {
    id: "integrity.baseline",
    section: Section::Integrity,
    title: "The module files match the baseline",
    run: check,
};

fn check(host: &Host) -> Outcome {
    let path = host.root.path(baseline::DEFAULT_PATH);
    let as_root = nix::unistd::geteuid().is_root();
    // The owner rule holds for the live host's file, not a test tree's.
    let check_owner = as_root && host.root.dir() == std::path::Path::new("/");
    let recorded = match baseline::load(&host.root, &path, check_owner) {
        Ok(recorded) => recorded,
        Err(err) if err.io_kind() == Some(ErrorKind::NotFound) => {
            return Outcome::new(
                Status::Warn,
                "no baseline: a replaced .ko would go unnoticed",
            )
            .evidence(baseline::DEFAULT_PATH, "absent")
            .fix("modtrace baseline create")
            .data(json!({"baseline": null}));
        }
        Err(err) => {
            let needs_root = err.io_kind() == Some(ErrorKind::PermissionDenied);
            let mut outcome = Outcome::new(
                if needs_root {
                    Status::Unknown
                } else {
                    Status::Fail
                },
                err.to_string(),
            )
            .evidence(baseline::DEFAULT_PATH, err.to_string())
            .fix("modtrace baseline create");
            outcome.needs_root = needs_root;
            return outcome;
        }
    };
    let verification = match baseline::verify(&host.root, &recorded, VerifyOptions::default()) {
        Ok(verification) => verification,
        Err(err) => return Outcome::new(Status::Unknown, err.to_string()),
    };
    let mut outcome = Outcome::new(
        match verification.exit_code() {
            0 => Status::Pass,
            1 => Status::Warn,
            _ => Status::Fail,
        },
        format!(
            "{} files checked: {} changes by packages, {} unexplained",
            verification.checked, verification.by_package, verification.unexplained
        ),
    );
    for change in &verification.changes {
        outcome = outcome.evidence(&change.path, &change.why);
    }
    if verification.unexplained > 0 {
        outcome = outcome
            .fix("modtrace baseline verify   # review each unexplained change")
            .fix("# reinstall the package of a replaced file: apt-get install --reinstall PACKAGE");
    } else if verification.by_package > 0 {
        outcome = outcome.fix("modtrace baseline create   # record the upgraded packages' files");
    }
    outcome.data(json!({
        "baseline": baseline::DEFAULT_PATH,
        "checked": verification.checked,
        "by_package": verification.by_package,
        "unexplained": verification.unexplained,
    }))
}
