//! The data path's shape, checked: every stage uses only the output schema
//! (`record`) and the clock, never another stage, so that no stage reaches
//! upstream (or around) the path. The modules that join and run the stages
//! (`pipeline`, `watch`, `replay`, `main`) may use all of them.
use std::{
    fs,
    path::{Path, PathBuf},
};

/// Each stage, and the modules of the crate it may use besides itself.
const STAGES: &[(&str, &[&str])] = &[
    ("kernel", &["record"]),
    ("decode", &[]),
    ("enrich", &["record", "clock"]),
    ("record", &[]),
    ("policy", &["record"]),
    ("sink", &[]),
    ("clock", &[]),
];

/// Modules that are not stages: they join the stages, run them (`watch`,
/// `replay`, and `enforcement`'s commands on the pinned state), or give tests
/// and benchmarks their records, or (posture) read the host with the
/// stages' readers beside the data path.
const JOINERS: &[&str] = &[
    "lib",
    "main",
    "pipeline",
    "watch",
    "replay",
    "enforcement",
    "samples",
    "stages",
    "posture",
];

/// `src/enrich/build.rs` → ("enrich", 2): the top-level module a file is
/// in, and how deep its module is (for `super::`).
fn module_of(src: &Path, file: &Path) -> (String, usize) {
    let relative = file.strip_prefix(src).expect("a file under src");
    let parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    let depth = parts.len() - usize::from(parts.last().is_some_and(|p| p == "mod"));
    (parts[0].clone(), depth)
}

/// The top-level modules of the crate that `text` (a file at module depth
/// `depth`) names by `crate::` or by enough `super::` to reach the root.
fn crate_modules_used(text: &str, depth: usize) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let mut used = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = find_path_start(rest) {
        let (prefix_len, reaches_root) = path_prefix(&rest[at..], depth);
        rest = &rest[at + prefix_len..];
        if reaches_root {
            used.extend(first_segments(rest));
        }
    }
    used
}

/// Where the next `crate::` or `super::` starts that is not part of a longer
/// identifier.
fn find_path_start(text: &str) -> Option<usize> {
    let mut from = 0;
    loop {
        let at = ["crate::", "super::"]
            .iter()
            .filter_map(|p| text[from..].find(p).map(|i| from + i))
            .min()?;
        let before = text[..at].chars().next_back();
        if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return Some(at);
        }
        from = at + 1;
    }
}

/// The length of the `crate::` or `super::super::…` prefix at the start of
/// `text`, and whether it names the crate root.
fn path_prefix(text: &str, depth: usize) -> (usize, bool) {
    if text.starts_with("crate::") {
        return ("crate::".len(), true);
    }
    let supers = text
        .as_bytes()
        .chunks(7)
        .take_while(|chunk| *chunk == b"super::")
        .count();
    (supers * 7, supers >= depth)
}

/// The first segment of a path, or of each path of a `{…}` group.
fn first_segments(text: &str) -> Vec<String> {
    let ident = |s: &str| {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect::<String>()
    };
    let Some(group) = text.strip_prefix('{') else {
        // `use super::*;` names no module.
        return vec![ident(text)]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
    };
    let mut segments = Vec::new();
    let mut depth = 0;
    let mut item_start = 0;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                segments.push(ident(&group[item_start..i]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                segments.push(ident(&group[item_start..i]));
                item_start = i + 1;
            }
            _ => {}
        }
    }
    segments.retain(|s| !s.is_empty() && s != "self");
    segments
}

/// The code of a file without its unit tests, which may use test records
/// (`samples`) and sit one module deeper than the file.
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod tests")
        .map_or(text, |at| &text[..at])
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("src is readable").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("tests.rs") {
            files.push(path);
        }
    }
    files
}

/// Every use of another stage, as `file: stage uses module`.
fn violations(src: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for file in rust_files(src) {
        let (module, depth) = module_of(src, &file);
        if JOINERS.contains(&module.as_str()) {
            continue;
        }
        let Some((_, allowed)) = STAGES.iter().find(|(stage, _)| *stage == module) else {
            found.push(format!(
                "{}: module `{module}` is neither a stage nor a joiner (src/stages.rs)",
                file.display()
            ));
            continue;
        };
        let text = fs::read_to_string(&file).expect("source is readable");
        for used in crate_modules_used(without_tests(&text), depth) {
            if used != module && !allowed.contains(&used.as_str()) {
                found.push(format!(
                    "{}: stage `{module}` uses `{used}`",
                    file.display()
                ));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn no_stage_uses_another() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_check_sees_every_way_of_naming_a_module() {
    assert_eq!(
        crate_modules_used("use crate::{policy::Policy, record::{self, Body}};", 1),
        ["policy", "record"]
    );
    assert_eq!(
        crate_modules_used("let x = crate::sink::Format::Json;", 2),
        ["sink"]
    );
    // In enrich/build.rs, `super::` is enrich itself; in enrich/mod.rs, the root.
    assert!(crate_modules_used("use super::capture;", 2).is_empty());
    assert_eq!(crate_modules_used("use super::policy;", 1), ["policy"]);
    assert_eq!(
        crate_modules_used("use super::super::decode;", 2),
        ["decode"]
    );
    assert!(crate_modules_used("// use crate::policy;\nlet my_crate::x = 1;", 1).is_empty());
    assert!(crate_modules_used("use super::*;", 1).is_empty());
    assert_eq!(
        without_tests("use crate::record;\n#[cfg(test)]\nmod tests {\nuse crate::samples;\n}"),
        "use crate::record;\n"
    );
}

#[test]
fn a_stage_that_uses_another_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    fs::create_dir(src.join("policy")).unwrap();
    fs::write(src.join("policy/mod.rs"), "use crate::record::Call;\n").unwrap();
    fs::write(src.join("policy/event.rs"), "use crate::enrich::Made;\n").unwrap();
    fs::write(src.join("record.rs"), "use crate::policy::Policy;\n").unwrap();
    fs::write(src.join("pipeline.rs"), "use crate::{enrich, policy};\n").unwrap();
    let found = violations(src);
    let expected = [
        format!(
            "{}: stage `policy` uses `enrich`",
            src.join("policy/event.rs").display()
        ),
        format!(
            "{}: stage `record` uses `policy`",
            src.join("record.rs").display()
        ),
    ];
    assert_eq!(found, expected);
}
