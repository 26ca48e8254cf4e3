//! The loaded modules: how many, which are unused, unsigned, out of tree or
//! proprietary.
use rayon::prelude::*;
use serde_json::json;

use super::{host::PROC_MODULES, Check, Host, Outcome, Section, Status};
use crate::{
    enrich::module_image::{self, Limits},
    enrich::modules::ProcModule,
    policy::event::normalise_module_name,
};

pub(super) const COUNT: Check = Check {
    id: "modules.count",
    section: Section::Modules,
    title: "Loaded module count",
    run: count,
};

fn count(host: &Host) -> Outcome {
    let modules = match &host.modules {
        Ok(modules) => modules,
        Err(err) => return Outcome::unreadable(err),
    };
    Outcome::new(
        Status::Pass,
        format!("{} modules are loaded", modules.len()),
    )
    .evidence(PROC_MODULES, format!("{} lines", modules.len()))
    .data(json!({"count": modules.len()}))
}

pub(super) const UNUSED: Check = Check {
    id: "modules.unused",
    section: Section::Modules,
    title: "No loaded module is unused",
    run: unused,
};

fn unused(host: &Host) -> Outcome {
    let modules = match &host.modules {
        Ok(modules) => modules,
        Err(err) => return Outcome::unreadable(err),
    };
    let unused: Vec<&str> = modules
        .iter()
        .filter(|m| m.refcount == Some(0) && m.used_by.is_empty())
        .map(|m| m.name.as_str())
        .collect();
    let summary = format!(
        "{} loaded modules have refcount 0 and no holders: candidates for removal",
        unused.len()
    );
    removable(&unused, summary).data(json!({"unused": unused}))
}

/// A warning naming the loaded modules found, fixed by unloading each.
fn removable(found: &[&str], summary: String) -> Outcome {
    let outcome = Outcome::new(
        Status::pass_unless(!found.is_empty(), Status::Warn),
        summary,
    )
    .evidence(PROC_MODULES, found.join(" "));
    found
        .iter()
        .fold(outcome, |o, m| o.fix(format!("modprobe -r {m}")))
}

pub(super) const UNSIGNED: Check = Check {
    id: "modules.unsigned",
    section: Section::Modules,
    title: "Every loaded module is signed",
    run: unsigned,
};

/// What the module file that modinfo would show says about its signature.
enum FileSignature {
    Signed,
    Unsigned(String),
    NoFile,
    Unreadable(String),
}

fn file_signature(host: &Host, module: &ProcModule, files: &FileIndex) -> FileSignature {
    let Some(path) = files.get(&normalise_module_name(&module.name).into_owned()) else {
        return FileSignature::NoFile;
    };
    match module_image::analyze_file(&host.root.path(path), &Limits::default()) {
        Ok(analysis) if analysis.signature.signed => FileSignature::Signed,
        Ok(_) => FileSignature::Unsigned(path.display().to_string()),
        Err(err) => FileSignature::Unreadable(err.to_string()),
    }
}

type FileIndex = std::collections::BTreeMap<String, std::path::PathBuf>;

fn unsigned(host: &Host) -> Outcome {
    let modules = match &host.modules {
        Ok(modules) => modules,
        Err(err) => return Outcome::unreadable(err),
    };
    let files = match host.module_files() {
        Ok(files) => files,
        Err(err) => return Outcome::unreadable(&err),
    };
    let signatures: Vec<FileSignature> = modules
        .par_iter()
        .map(|m| file_signature(host, m, &files))
        .collect();
    let mut unsigned_files = Vec::new();
    let mut without_file = Vec::new();
    let mut unreadable = Vec::new();
    let mut outcome = Outcome::new(Status::Pass, "");
    for (module, signature) in modules.iter().zip(&signatures) {
        match signature {
            FileSignature::Signed => {}
            FileSignature::Unsigned(path) => {
                unsigned_files.push(module.name.as_str());
                outcome = outcome.evidence(path, format!("{}: no signature", module.name));
            }
            FileSignature::NoFile => {
                without_file.push(module.name.as_str());
                outcome = outcome.evidence(
                    "modules.dep",
                    format!("{}: no file (loaded from outside the tree)", module.name),
                );
            }
            FileSignature::Unreadable(err) => {
                unreadable.push(module.name.as_str());
                outcome = outcome.evidence(&module.name, err);
            }
        }
    }
    // The kernel's own view: E is set on a module loaded without a valid
    // signature, whatever file is on disk now.
    let loaded_unsigned: Vec<&str> = modules
        .iter()
        .filter(|m| m.taint.contains('E'))
        .map(|m| m.name.as_str())
        .collect();
    for name in &loaded_unsigned {
        outcome = outcome.evidence(
            format!("/sys/module/{name}/taint"),
            format!("{name}: E (loaded without a valid signature)"),
        );
    }
    let bad = unsigned_files.len() + without_file.len() + loaded_unsigned.len();
    outcome.status = if bad > 0 {
        Status::Fail
    } else if !unreadable.is_empty() {
        Status::Unknown
    } else {
        Status::Pass
    };
    outcome.summary = format!(
        "{} of {} loaded modules have no signed file, {} were loaded unsigned (taint E)",
        unsigned_files.len() + without_file.len(),
        modules.len(),
        loaded_unsigned.len()
    );
    for name in unsigned_files
        .iter()
        .chain(&without_file)
        .chain(&loaded_unsigned)
    {
        outcome = outcome.fix(format!("modprobe -r {name}"));
    }
    if bad > 0 {
        outcome = outcome.fix("# then refuse unsigned modules: see kernel.sig-enforce");
    }
    outcome.data(json!({
        "unsigned_files": unsigned_files,
        "without_file": without_file,
        "loaded_unsigned": loaded_unsigned,
        "unreadable": unreadable,
    }))
}

/// A check listing the loaded modules whose taint carries `letter`.
fn tainting(host: &Host, letter: char, what: &str) -> Outcome {
    let modules = match &host.modules {
        Ok(modules) => modules,
        Err(err) => return Outcome::unreadable(err),
    };
    let carriers: Vec<&str> = modules
        .iter()
        .filter(|m| m.taint.contains(letter))
        .map(|m| m.name.as_str())
        .collect();
    let summary = format!(
        "{} loaded modules are {what} (taint {letter})",
        carriers.len()
    );
    removable(&carriers, summary).data(json!({"modules": carriers}))
}

pub(super) const OUT_OF_TREE: Check = Check {
    id: "modules.out-of-tree",
    section: Section::Modules,
    title: "No out-of-tree module is loaded",
    run: |host| tainting(host, 'O', "out of tree"),
};

pub(super) const PROPRIETARY: Check = Check {
    id: "modules.proprietary",
    section: Section::Modules,
    title: "No proprietary module is loaded",
    run: |host| tainting(host, 'P', "proprietary"),
};
