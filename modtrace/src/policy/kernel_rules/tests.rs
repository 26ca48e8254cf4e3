//! The compiler's tables for each decidable condition, and every refusal of
//! the decidability check and of the compiler, message by message.
use std::collections::BTreeSet;

use modtrace_common::enforce::{
    DenyClause, DENY_FILE_ANY, DENY_FILE_NO, DENY_FILE_YES, DENY_HOOK_FINIT_MODULE,
    DENY_HOOK_INIT_MODULE, DENY_HOOK_REQUEST, DENY_KEY_MODULE, DENY_KEY_REQUEST,
};

use super::*;
use crate::policy::{Context, Policy, PolicyError};

const ALL: u32 = DENY_HOOK_INIT_MODULE | DENY_HOOK_FINIT_MODULE | DENY_HOOK_REQUEST;

fn context() -> Context {
    Context {
        kernel: "6.1.0-28-amd64".into(),
        check_owner: false,
    }
}

fn tree() -> ModuleTree {
    ModuleTree::parse(
        "kernel/net/rds/rds.ko.xz: kernel/lib/x.ko\n\
         kernel/net/rds/rds_tcp.ko.xz: kernel/net/rds/rds.ko.xz\n\
         kernel/fs/udf/udf.ko:\n\
         kernel/drivers/usb/storage/usb-storage.ko.zst:\n",
        "# Aliases extracted from modules themselves.\n\
         alias net-pf-21 rds\n\
         alias fs-udf udf\n\
         alias usb:v*p*d*dc*dsc*dp*ic08isc06ip50in* usb_storage\n\
         alias devname:loop-control loop\n",
    )
}

fn deny(when: &str) -> String {
    format!("[[rule]]\nid = \"d\"\nseverity = \"high\"\naction = \"deny\"\nwhen = {{ {when} }}\n")
}

fn tables(text: &str) -> DenyTables {
    let policy = Policy::from_text(text, "p.toml", &context()).unwrap_or_else(|e| panic!("{e}"));
    compile(policy.deny_rules(), &tree()).unwrap_or_else(|e| panic!("{e}"))
}

/// Per clause: the clause and its names of each kind.
/// Why the compiler refuses the deny rules of `text`.
fn refusal(text: &str) -> String {
    let policy = Policy::from_text(text, "p.toml", &context()).expect("parses");
    compile(policy.deny_rules(), &tree())
        .expect_err("the compiler refuses it")
        .to_string()
}

fn names(tables: &DenyTables, clause: u32, kind: u32) -> BTreeSet<String> {
    tables
        .keys
        .iter()
        .filter(|k| k.clause == clause && k.kind == kind)
        .map(|k| {
            let end = k.name.iter().position(|&b| b == 0).unwrap_or(k.name.len());
            String::from_utf8_lossy(&k.name[..end]).into_owned()
        })
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn errors(text: &str) -> Vec<String> {
    match Policy::from_text(text, "p.toml", &context()) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(PolicyError::Invalid(errors)) => errors.iter().map(ToString::to_string).collect(),
        Err(other) => panic!("{other}"),
    }
}

#[test]
fn the_tree_gives_module_names_and_exact_aliases_folded() {
    let tree = tree();
    assert_eq!(tree.modules, set(&["rds", "rds_tcp", "udf", "usb_storage"]));
    assert_eq!(tree.aliases["net_pf_21"], set(&["rds"]));
    assert_eq!(tree.aliases["devname:loop_control"], set(&["loop"]));
    assert!(tree.aliases.keys().all(|a| !a.contains('*')));
}

#[test]
fn a_load_rule_on_names_denies_loads_and_the_requests_that_resolve_to_them() {
    let t = tables(&deny(
        r#"load = true, module = ["rds", "usb-storage", "cramfs"]"#,
    ));
    assert_eq!(t.rules, ["d"]);
    assert_eq!(
        t.clauses,
        [DenyClause {
            rule: 0,
            hooks: ALL,
            match_module: 1,
            match_request: 1,
            memfd: DENY_FILE_ANY,
            unlinked: DENY_FILE_ANY,
        }]
    );
    assert_eq!(
        names(&t, 0, DENY_KEY_MODULE),
        set(&["cramfs", "rds", "usb_storage"])
    );
    // usb-storage's aliases all have wildcards; the name itself still counts.
    assert_eq!(
        names(&t, 0, DENY_KEY_REQUEST),
        set(&["cramfs", "net_pf_21", "rds", "usb_storage"])
    );
}

#[test]
fn a_wildcard_module_glob_is_expanded_against_the_tree() {
    let t = tables(&deny(r#"load = true, module = "rds*""#));
    assert_eq!(names(&t, 0, DENY_KEY_MODULE), set(&["rds", "rds_tcp"]));
}

#[test]
fn one_syscall_is_one_hook_and_no_request() {
    let t = tables(&deny(r#"syscall = "finit_module", module = "udf""#));
    assert_eq!(t.clauses[0].hooks, DENY_HOOK_FINIT_MODULE);
    assert_eq!(names(&t, 0, DENY_KEY_REQUEST), BTreeSet::new());
    let t = tables(&deny(r#"syscall = "init_module""#));
    assert_eq!(t.clauses[0].hooks, DENY_HOOK_INIT_MODULE);
    assert_eq!(t.clauses[0].match_module, 0);
}

#[test]
fn a_request_rule_denies_those_requests_only() {
    let t = tables(&deny(r#"request = ["net-pf-21", "fs-udf"]"#));
    assert_eq!(t.clauses[0].hooks, DENY_HOOK_REQUEST);
    assert_eq!(t.clauses[0].match_module, 0);
    assert_eq!(
        names(&t, 0, DENY_KEY_REQUEST),
        set(&["fs_udf", "net_pf_21"])
    );
    // With a module too: the listed requests that resolve to it.
    let t = tables(&deny(
        r#"request = ["net-pf-21", "fs-udf"], module = "udf""#,
    ));
    assert_eq!(names(&t, 0, DENY_KEY_REQUEST), set(&["fs_udf"]));
}

#[test]
fn fileless_alternatives_become_one_clause_each() {
    let t = tables(&deny(
        r#"any = [{ syscall = "init_module" }, { syscall = "finit_module", memfd = true }, { load = true, unlinked = true }]"#,
    ));
    let shape: Vec<(u32, u32, u32)> = t
        .clauses
        .iter()
        .map(|c| (c.hooks, c.memfd, c.unlinked))
        .collect();
    assert_eq!(
        shape,
        [
            (DENY_HOOK_INIT_MODULE, DENY_FILE_ANY, DENY_FILE_ANY),
            (DENY_HOOK_FINIT_MODULE, DENY_FILE_YES, DENY_FILE_ANY),
            (DENY_HOOK_FINIT_MODULE, DENY_FILE_ANY, DENY_FILE_YES),
        ]
    );
    assert!(t.clauses.iter().all(|c| c.rule == 0));
}

#[test]
fn contradictions_leave_no_clause() {
    let t = tables(&deny(
        r#"syscall = "finit_module", all = [{ memfd = true }, { memfd = false }]"#,
    ));
    assert_eq!(t.clauses, []);
    let t = tables(&deny(r#"syscall = "init_module", memfd = false"#));
    assert_eq!(t.clauses, []);
    let t = tables(&deny(
        r#"load = true, module = "udf", all = [{ module = "rds" }]"#,
    ));
    assert_eq!(t.clauses, []);
    assert_eq!(t.rules, ["d"], "the rule keeps its slot and its counter");
    let t = tables(&deny(r#"syscall = "finit_module", memfd = false"#));
    assert_eq!(t.clauses[0].memfd, DENY_FILE_NO);
}

#[test]
fn rules_get_slots_in_order_and_alert_rules_none() {
    let text = format!(
        "{}[[rule]]\nid = \"a\"\nseverity = \"low\"\nwhen = {{ exe = \"x\" }}\n{}",
        deny(r#"load = true, module = "udf""#),
        deny(r#"request = "fs-udf""#).replace("\"d\"", "\"e\""),
    );
    let t = tables(&text);
    assert_eq!(t.rules, ["d", "e"]);
    assert_eq!(t.clauses[1].rule, 1);
}

#[test]
fn the_default_policy_denies_the_cis_list() {
    let policy = Policy::default_policy(&context());
    let t = compile(policy.deny_rules(), &tree()).expect("compiles");
    assert_eq!(t.rules, ["cis-denied-module"]);
    assert_eq!(
        names(&t, 0, DENY_KEY_MODULE),
        set(&[
            "cramfs",
            "freevxfs",
            "jffs2",
            "hfs",
            "hfsplus",
            "squashfs",
            "udf",
            "usb_storage",
            "dccp",
            "sctp",
            "rds",
            "tipc",
            "firewire_core",
        ])
    );
    assert!(names(&t, 0, DENY_KEY_REQUEST).contains("net_pf_21"));
}

// The compiler's own refusals.

#[test]
fn a_name_too_long_for_the_kernel_is_refused() {
    let long = "m".repeat(56);
    assert_eq!(
        refusal(&deny(&format!("load = true, module = \"{long}\""))),
        format!("rule \"d\": \"{long}\" is longer than the 55 bytes of a kernel module name")
    );
}

#[test]
fn too_many_rules_clauses_or_names_are_refused() {
    let many: String = (0..65)
        .map(|n| deny(r#"syscall = "init_module""#).replace("\"d\"", &format!("\"d{n}\"")))
        .collect();
    assert_eq!(
        refusal(&many),
        "65 deny rules; the kernel counts denials for at most 64"
    );
    let alternatives: Vec<String> = (0..65)
        .map(|n| format!("{{ request = \"r{n}\" }}"))
        .collect();
    assert_eq!(
        refusal(&deny(&format!("any = [{}]", alternatives.join(", ")))),
        "the deny rules make 65 clauses (one per alternative of each `any`); the kernel checks at most 64"
    );
    let names: Vec<String> = (0..8200).map(|n| format!("\"m{n}\"")).collect();
    assert_eq!(
        refusal(&deny(&format!(
            "load = true, module = [{}]",
            names.join(", ")
        ))),
        "the deny rules name 16400 module names and requests; the kernel holds at most 16384"
    );
}

#[test]
fn a_rule_built_without_the_check_is_refused_by_the_compiler() {
    // `Rule::new` does not run the parser's check (modprobe.d rules are
    // made this way); the compiler still names what it cannot decide.
    let policy = Policy::from_text(
        "[[rule]]\nid = \"x\"\nseverity = \"low\"\nwhen = { load = true, exe = \"/bin/x\" }\n",
        "p.toml",
        &context(),
    )
    .expect("parses");
    assert_eq!(
        compile(policy.rules(), &tree()).unwrap_err().to_string(),
        "rule \"x\": condition `exe matches glob [\"/bin/x\"]` cannot be decided in the kernel"
    );
}

// The decidability check of `policy check`, each message with its place.

#[test]
fn an_undecidable_condition_is_named_with_its_place() {
    assert_eq!(
        errors(&deny(r#"load = true, signer = "x""#)),
        ["p.toml:5:23: condition \"signer\" cannot be decided before the load; use action = \"alert\""]
    );
    assert_eq!(
        errors(&deny(r#"load = true, module_regex = "x.*""#)),
        ["p.toml:5:23: condition \"module_regex\" cannot be decided before the load; use action = \"alert\", or \"module\" with globs, which can"]
    );
    assert_eq!(
        errors(&deny(r#"load = true, any = [{ module = "a" }, { not = { exe = "b" } }]"#)),
        ["p.toml:5:50: condition \"not\" cannot be decided before the load; use action = \"alert\""]
    );
}

#[test]
fn an_allow_list_in_a_deny_rule_is_refused() {
    let text = format!("{}allow = {{ module = \"udf\" }}\n", deny("load = true"));
    assert_eq!(
        errors(&text),
        ["p.toml:6:1: condition \"allow\" cannot be decided before the load; use action = \"alert\""]
    );
}

#[test]
fn unloads_cannot_be_denied() {
    let message =
        "a deny rule stops loads and autoloads only; use action = \"alert\" for delete_module";
    assert_eq!(
        errors(&deny(r#"syscall = ["finit_module", "delete_module"]"#)),
        [format!("p.toml:5:37: {message}")]
    );
    assert_eq!(
        errors(&deny("load = false")),
        [format!("p.toml:5:17: {message}")]
    );
}

#[test]
fn a_request_glob_is_refused() {
    assert_eq!(
        errors(&deny(r#"request = ["fs-udf", "net-pf-*"]"#)),
        ["p.toml:5:31: request \"net-pf-*\" cannot be decided before the load: the kernel compares whole request strings, so list them"]
    );
}

#[test]
fn a_deny_rule_must_name_the_loads_it_stops() {
    let message = "a deny rule must say which loads it stops: give `load = true`, `syscall = \"init_module\"` or `\"finit_module\"`, or `request`, in `when` or in each of its `any` alternatives";
    assert_eq!(
        errors(&deny(r#"module = "udf""#)),
        [format!("p.toml:5:1: {message}")]
    );
    assert_eq!(
        errors(&deny(r#"any = [{ load = true }, { module = "udf" }]"#)),
        [format!("p.toml:5:1: {message}")]
    );
    assert_eq!(
        errors("[[rule]]\nid = \"d\"\nseverity = \"high\"\naction = \"deny\"\n"),
        [format!("p.toml:1:1: {message}")]
    );
}

#[test]
fn decidable_deny_rules_pass_the_check() {
    for when in [
        r#"load = true, module = "udf""#,
        r#"request = "fs-udf""#,
        r#"all = [{ syscall = "finit_module" }, { memfd = true }]"#,
        r#"any = [{ syscall = "init_module" }, { load = true, unlinked = true }]"#,
    ] {
        Policy::from_text(&deny(when), "p.toml", &context())
            .unwrap_or_else(|e| panic!("{when}: {e}"));
    }
}
