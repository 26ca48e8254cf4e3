//! One test per condition type and combinator, and one per error message of
//! `policy check`.
use serde_json::{json, Value};

use super::*;
use crate::{policy::event::ReadRecord, samples::complete};

fn context() -> Context {
    Context {
        kernel: "6.1.0-28-amd64".into(),
        check_owner: false,
    }
}

fn policy(text: &str) -> Policy {
    Policy::from_text(text, "p.toml", &context()).unwrap_or_else(|e| panic!("{e}"))
}

/// A policy of one rule with `when` as given (TOML inline table body).
fn rule(when: &str) -> Policy {
    policy(&format!(
        "[[rule]]\nid = \"r\"\nseverity = \"high\"\nwhen = {{ {when} }}\n"
    ))
}

/// The judgement of `record`, a syscall record of which the test gives only
/// the fields it cares about (the rest: [`complete`]).
fn evaluate(policy: &Policy, record: &Value) -> Evaluation {
    policy
        .evaluate(&complete(record))
        .unwrap_or_else(|err| panic!("{err}: {record}"))
        .expect("a syscall record")
}

fn hits(policy: &Policy, record: &Value) -> bool {
    !evaluate(policy, record).matches.is_empty()
}

/// A finit_module of sctp by modprobe, as docs/output.md shows it, with the
/// module object of issue #4.
fn finit() -> Value {
    json!({"kind":"finit_module","schema":1,"ts":"2026-11-27T21:30:00.123456789Z","seq":3,
        "host":"web1","duration_ns":81234,
        "process":{"pid":812,"tid":812,"ppid":790,"uid":0,"gid":0,"euid":0,"auid":1000,
            "session":3,"comm":"modprobe","exe":"/usr/bin/kmod","cmdline":["modprobe","sctp"],
            "cgroup_id":4242,"cgroup":"/user.slice/user-1000.slice/session-3.scope",
            "container":{"runtime":"docker","id":"abc123","pod_uid":null},
            "ancestors":[{"pid":790,"comm":"bash","uid":0,"exe":"/usr/bin/bash"},
                {"pid":700,"comm":"sshd","uid":0,"exe":"/usr/sbin/sshd"}]},
        "parent":{"pid":790,"comm":"bash","exe":"/usr/bin/bash","cmdline":["-bash"]},
        "args":{"fd":3,"file":{"path":"/lib/modules/6.1.0-28-amd64/kernel/net/sctp/sctp.ko",
            "truncated":false,"ino":131733,"unlinked":false,"memfd":false},
            "params":{"value":"debug=1","truncated":false},"flags":{"raw":0,"names":[]}},
        "result":{"ret":0,"errno":null,"ok":true},
        "module":{"name":"sctp","taint":{"raw":12288,"letters":"OE","names":[]},
            "image":{"sha256":"AB".repeat(32),
                "modinfo":{"license":"GPL","intree":true},
                "signature":{"signer":"Debian Secure Boot CA","signed":true}}},
        "cause":{"request":"net-pf-10-proto-132"}})
}

fn without(mut record: Value, path: &[&str]) -> Value {
    let (last, parents) = path.split_last().unwrap();
    let mut object = &mut record;
    for key in parents {
        object = &mut object[*key];
    }
    object.as_object_mut().unwrap().remove(*last);
    record
}

#[test]
fn syscall_and_load() {
    assert!(hits(&rule("syscall = \"finit_module\""), &finit()));
    assert!(hits(
        &rule("syscall = [\"init_module\", \"finit_module\"]"),
        &finit()
    ));
    assert!(!hits(&rule("syscall = \"delete_module\""), &finit()));
    assert!(hits(&rule("load = true"), &finit()));
    assert!(!hits(&rule("load = false"), &finit()));
}

#[test]
fn module_glob_treats_dash_and_underscore_alike() {
    let mut record = finit();
    record["module"]["name"] = json!("usb_storage");
    assert!(hits(&rule("module = \"usb-storage\""), &record));
    assert!(hits(&rule("module = \"usb?stor*\""), &record));
    assert!(hits(&rule("module = [\"ext4\", \"usb-*\"]"), &record));
    record["module"]["name"] = json!("usb-storage");
    assert!(hits(&rule("module = \"usb_storage\""), &record));
    assert!(!hits(&rule("module = \"usb\""), &record));
    // A character class keeps its range meaning.
    record["module"]["name"] = json!("hfsplus");
    assert!(hits(&rule("module = \"hfs[a-z]*\""), &record));
}

#[test]
fn module_regex_is_anchored_and_dash_insensitive() {
    let mut record = finit();
    record["module"]["name"] = json!("firewire_core");
    assert!(hits(
        &rule("module_regex = \"firewire-(core|ohci)\""),
        &record
    ));
    assert!(!hits(&rule("module_regex = \"firewire\""), &record));
    assert!(hits(&rule("module_regex = \"[a-z]+_core\""), &record));
}

#[test]
fn module_absent_is_no_match() {
    let record = json!({"kind":"init_module","args":{"image_len":5}});
    assert!(!hits(&rule("module = \"*\""), &record));
    assert!(hits(&rule("not = { module = \"*\" }"), &record));
}

#[test]
fn text_fields_match_their_paths() {
    let cases = [
        (
            "path = \"/lib/modules/*/kernel/**/sctp.ko\"",
            "path = \"/lib/modules/*/sctp.ko\"",
        ),
        ("exe = \"/usr/bin/kmod\"", "exe = \"/usr/bin/*/kmod\""),
        ("exe_regex = \"/usr/bin/k.*\"", "exe_regex = \"k.*\""),
        ("comm = \"mod*\"", "comm = \"insmod\""),
        ("parent_exe = \"**/bash\"", "parent_exe = \"**/sshd\""),
        ("ancestor_exe = \"**/sshd\"", "ancestor_exe = \"**/cron\""),
        (
            "cgroup = \"/user.slice/**\"",
            "cgroup = \"/system.slice/**\"",
        ),
        ("container = \"abc*\"", "container = \"def*\""),
        ("request = \"net-pf-10-*\"", "request = \"fs-*\""),
        ("params = \"debug=*\"", "params = \"\""),
        ("params_regex = \"debug=[0-9]\"", "params_regex = \"debug\""),
        ("signer = \"Debian*\"", "signer = \"Evil*\""),
        (
            "license = [\"GPL\", \"Dual *\"]",
            "license = \"Proprietary\"",
        ),
    ];
    for (yes, no) in cases {
        assert!(hits(&rule(yes), &finit()), "{yes}");
        assert!(!hits(&rule(no), &finit()), "{no}");
    }
}

#[test]
fn absent_text_fields_do_not_match() {
    let record = without(finit(), &["cause"]);
    assert!(!hits(&rule("request = \"*\""), &record));
    let record = without(finit(), &["module"]);
    assert!(!hits(&rule("signer = \"*\""), &record));
}

#[test]
fn path_prefix_substitutes_the_kernel() {
    assert!(hits(
        &rule("path_prefix = \"/lib/modules/{kernel}/\""),
        &finit()
    ));
    let other = Policy::from_text(
        "[[rule]]\nid = \"r\"\nseverity = \"low\"\nwhen = { path_prefix = \"/lib/modules/{kernel}/\" }\n",
        "p",
        &Context {
            kernel: "6.12.0".into(),
            check_owner: false,
        },
    )
    .unwrap();
    assert!(!hits(&other, &finit()));
}

#[test]
fn flags_match_only_when_present() {
    assert!(hits(&rule("signed = true"), &finit()));
    assert!(!hits(&rule("signed = false"), &finit()));
    assert!(hits(&rule("intree = true"), &finit()));
    assert!(hits(&rule("memfd = false"), &finit()));
    assert!(hits(&rule("unlinked = false"), &finit()));
    let record = without(finit(), &["module"]);
    assert!(!hits(&rule("signed = false"), &record));
    assert!(!hits(&rule("signed = true"), &record));
}

#[test]
fn ids_match_one_of_a_list() {
    assert!(hits(&rule("uid = 0"), &finit()));
    assert!(hits(&rule("auid = [0, 1000]"), &finit()));
    assert!(!hits(&rule("euid = 1000"), &finit()));
    let mut record = finit();
    record["process"]["auid"] = Value::Null;
    assert!(!hits(&rule("auid = 1000"), &record));
}

#[test]
fn taint_matches_any_letter_in_either_form() {
    assert!(hits(&rule("taint = \"POE\""), &finit()));
    assert!(!hits(&rule("taint = \"P\""), &finit()));
    let mut record = finit();
    record["module"]["taint"] = json!(["P"]);
    assert!(hits(&rule("taint = \"P\""), &record));
    // As watch writes it (fields::Taint).
    record["module"]["taint"] =
        json!({"raw": 12288, "letters": "OE", "names": ["oot", "unsigned"]});
    assert!(hits(&rule("taint = \"E\""), &record));
    assert!(!hits(&rule("taint = \"P\""), &record));
}

#[test]
fn sha256_in_a_set_or_a_file() {
    let hash = "ab".repeat(32);
    assert!(hits(&rule(&format!("sha256 = \"{hash}\"")), &finit()));
    assert!(!hits(
        &rule(&format!("sha256 = \"{}\"", "cd".repeat(32))),
        &finit()
    ));
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("hashes");
    std::fs::write(
        &list,
        format!("# baseline\n{hash}  /lib/modules/x/sctp.ko\n"),
    )
    .unwrap();
    assert!(hits(
        &rule(&format!("sha256_file = {:?}", list.display().to_string())),
        &finit()
    ));
}

#[test]
fn result_ok_error_or_errno() {
    assert!(hits(&rule("result = \"ok\""), &finit()));
    assert!(!hits(&rule("result = \"error\""), &finit()));
    let mut record = finit();
    record["result"] = json!({"ret":-38,"errno":"ENOSYS","ok":false});
    assert!(hits(&rule("result = \"error\""), &record));
    assert!(hits(&rule("result = [\"EPERM\", \"ENOSYS\"]"), &record));
    record["result"] = Value::Null;
    assert!(!hits(&rule("result = \"error\""), &record));
}

#[test]
fn time_windows_wrap_midnight_and_filter_days() {
    // finit() is a Friday, 21:30 UTC.
    assert!(hits(
        &rule("time = { from = \"21:00\", to = \"22:00\" }"),
        &finit()
    ));
    assert!(hits(
        &rule("time = { from = \"20:00\", to = \"06:00\" }"),
        &finit()
    ));
    assert!(!hits(
        &rule("time = { from = \"06:00\", to = \"20:00\" }"),
        &finit()
    ));
    assert!(hits(&rule("time = { days = [\"fri\"] }"), &finit()));
    assert!(!hits(
        &rule("time = { days = [\"sat\", \"sun\"] }"),
        &finit()
    ));
}

#[test]
fn all_any_not_combine() {
    assert!(hits(
        &rule("all = [{ comm = \"modprobe\" }, { uid = 0 }]"),
        &finit()
    ));
    assert!(!hits(
        &rule("all = [{ comm = \"modprobe\" }, { uid = 1 }]"),
        &finit()
    ));
    assert!(hits(
        &rule("any = [{ comm = \"insmod\" }, { uid = 0 }]"),
        &finit()
    ));
    assert!(!hits(
        &rule("any = [{ comm = \"insmod\" }, { uid = 1 }]"),
        &finit()
    ));
    assert!(hits(&rule("not = { comm = \"insmod\" }"), &finit()));
    assert!(!hits(&rule("not = { comm = \"modprobe\" }"), &finit()));
    // Keys of one table must all hold.
    assert!(!hits(&rule("comm = \"modprobe\", uid = 1"), &finit()));
    assert!(hits(
        &rule("any = [{ not = { any = [{ uid = 1 }] } }]"),
        &finit()
    ));
}

#[test]
fn allow_lists_fire_for_what_they_do_not_allow() {
    let only = policy(
        "[[rule]]\nid = \"only-known\"\nseverity = \"medium\"\nwhen = { load = true }\n\
         allow = { module = [\"ext4\", \"xfs\"], path_prefix = \"/lib/modules/{kernel}/\" }\n",
    );
    assert!(hits(&only, &finit()), "sctp is not allowed");
    let mut ext4 = finit();
    ext4["module"]["name"] = json!("ext4");
    assert!(!hits(&only, &ext4));
    ext4["args"]["file"]["path"] = json!("/tmp/ext4.ko");
    assert!(hits(&only, &ext4), "allowed name, but not from the tree");
}

#[test]
fn verdict_is_the_highest_action_and_matches_keep_rule_order() {
    let p = policy(
        "[[rule]]\nid = \"a\"\nseverity = \"info\"\naction = \"ignore\"\n\
         [[rule]]\nid = \"b\"\nseverity = \"low\"\naction = \"log\"\nwhen = { module = \"sctp\" }\n\
         [[rule]]\nid = \"c\"\nseverity = \"low\"\naction = \"log\"\nwhen = { uid = 5 }\n",
    );
    let evaluation = evaluate(&p, &finit());
    assert_eq!(evaluation.verdict, Verdict::Log);
    let ids: Vec<_> = evaluation.matches.iter().map(|m| m.rule.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(evaluation.alerts().count(), 0);
    let none = policy("[[rule]]\nid = \"x\"\nseverity = \"low\"\nwhen = { uid = 5 }\n");
    assert_eq!(evaluate(&none, &finit()).verdict, Verdict::None);
}

#[test]
fn disabled_rules_never_match() {
    let p = policy("[[rule]]\nid = \"a\"\nseverity = \"low\"\nenabled = false\n");
    assert!(!hits(&p, &finit()));
}

#[test]
fn messages_use_templates_or_describe_the_event() {
    let p = policy(
        "[[rule]]\nid = \"t\"\nseverity = \"low\"\nmessage = \"{rule}: {module} via {syscall} by {exe} ({comm}, pid {pid}, uid {uid}) {path}\"\n\
         [[rule]]\nid = \"d\"\ndescription = \"CIS module\"\nseverity = \"low\"\n",
    );
    let m = evaluate(&p, &finit()).matches;
    assert_eq!(
        m[0].message,
        "t: sctp via finit_module by /usr/bin/kmod (modprobe, pid 812, uid 0) /lib/modules/6.1.0-28-amd64/kernel/net/sctp/sctp.ko"
    );
    assert_eq!(
        m[1].message,
        "CIS module: finit_module sctp by /usr/bin/kmod (pid 812, uid 0)"
    );
}

#[test]
fn a_record_read_back_is_judged_into_its_policy_object() {
    let p = rule("module = \"sctp\"");
    let record = complete(&finit());
    let read = ReadRecord::from_json(&record).unwrap().unwrap();
    let evaluation = serde_json::to_value(p.judge_read(&record, &read)).unwrap();
    assert_eq!(evaluation["verdict"], "alert");
    assert_eq!(
        evaluation["matches"][0],
        json!({"rule":"r","severity":"high","action":"alert",
               "message":"r: finit_module sctp by /usr/bin/kmod (pid 812, uid 0)"})
    );
    assert!(ReadRecord::from_json(&json!({"kind":"start"}))
        .unwrap()
        .is_none());
}

#[test]
fn explain_marks_each_condition_with_the_value_seen() {
    let p = rule("comm = \"insmod\", uid = 0");
    let explained = p.explain(&complete(&finit())).unwrap().unwrap();
    let (id, matched, lines) = &explained[0];
    assert_eq!(id, "r");
    assert!(!matched);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("[no ] comm matches glob") && l.contains("\"modprobe\"")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("[yes] uid in [0]") && l.contains("(value: 0)")),
        "{lines:?}"
    );
}

#[test]
fn indexed_and_scanned_rules_give_the_same_answers() {
    let rules = "[[rule]]\nid = \"named\"\nseverity = \"low\"\nwhen = { module = [\"usb-storage\", \"sctp\"] }\n\
         [[rule]]\nid = \"globbed\"\nseverity = \"low\"\nwhen = { module = \"sct*\" }\n";
    let scanned = policy(rules);
    assert!(
        scanned.indexes.is_empty(),
        "two rules are checked one by one"
    );
    // Enough other rules on module names for an index to pay.
    let padding: String = (0..MIN_INDEXED_RULES)
        .map(|i| {
            format!(
                "[[rule]]\nid = \"pad{i}\"\nseverity = \"low\"\nwhen = {{ module = \"pad{i}\" }}\n"
            )
        })
        .collect();
    let indexed = policy(&format!("{rules}{padding}"));
    assert_eq!(indexed.indexes.len(), 1);
    assert!(indexed.scan.is_empty());
    let mut record = finit();
    for (name, expected) in [
        ("sctp", 2),
        ("usb_storage", 1),
        ("usb-storage", 1),
        ("ext4", 0),
    ] {
        record["module"]["name"] = json!(name);
        for p in [&scanned, &indexed] {
            assert_eq!(evaluate(p, &record).matches.len(), expected, "{name}");
        }
    }
}

#[test]
fn include_default_keeps_default_rules_and_lets_ids_override() {
    let p = policy(
        "[policy]\ninclude_default = true\n[[rule]]\nid = \"module-unload\"\nseverity = \"info\"\naction = \"log\"\nwhen = { syscall = \"delete_module\" }\n",
    );
    let unload = p.rules().iter().filter(|r| r.id == "module-unload").count();
    assert_eq!(unload, 1);
    assert!(p.rules().iter().any(|r| r.id == "cis-denied-module"));
    let r = p.rules().iter().find(|r| r.id == "module-unload").unwrap();
    assert_eq!(r.severity, Severity::Info);
}

// ---- The default policy ----

fn default() -> Policy {
    Policy::default_policy(&context())
}

fn default_rules_for(record: &Value) -> Vec<String> {
    evaluate(&default(), record)
        .matches
        .into_iter()
        .map(|m| m.rule)
        .filter(|r| !r.starts_with("modprobe.d:"))
        .collect()
}

#[test]
fn default_policy_is_quiet_for_a_signed_in_tree_module_from_modprobe() {
    let mut record = finit();
    record["module"]["name"] = json!("ext4");
    record["module"]["taint"] = json!("");
    record["args"]["file"]["path"] = json!("/usr/lib/modules/6.1.0-28-amd64/kernel/fs/ext4.ko");
    assert_eq!(default_rules_for(&record), Vec::<String>::new());
}

#[test]
fn default_policy_flags_cis_modules_unsigned_and_taint() {
    let mut record = finit();
    record["module"]["taint"] = json!("");
    assert_eq!(default_rules_for(&record), ["cis-denied-module"]);
    record["module"]["name"] = json!("usb_storage");
    assert_eq!(default_rules_for(&record), ["cis-denied-module"]);
    record["module"]["name"] = json!("ext4");
    record["module"]["image"]["signature"]["signed"] = json!(false);
    record["module"]["taint"] = json!("E");
    assert_eq!(
        default_rules_for(&record),
        ["unsigned-module", "tainting-module"]
    );
}

#[test]
fn default_policy_flags_fileless_loads() {
    let init = json!({"kind":"init_module","process":{"exe":"/tmp/x","comm":"x","pid":1,"uid":0},
        "args":{"image_addr":"0x1","image_len":9,"params":{"value":"","truncated":false}}});
    assert_eq!(
        default_rules_for(&init),
        ["fileless-load", "unexpected-loader"]
    );
    let mut by_kmod = init.clone();
    by_kmod["process"]["exe"] = json!("/usr/bin/kmod");
    assert_eq!(default_rules_for(&by_kmod), Vec::<String>::new());
    let mut memfd = without(finit(), &["module"]);
    memfd["args"]["file"] =
        json!({"path":"/memfd:x","truncated":false,"ino":1,"unlinked":true,"memfd":true});
    assert_eq!(default_rules_for(&memfd), ["fileless-load"]);
    let mut deleted = without(finit(), &["module"]);
    deleted["args"]["file"]["path"] = json!("/lib/modules/6.1.0-28-amd64/extra/x.ko");
    deleted["args"]["file"]["unlinked"] = json!(true);
    assert_eq!(default_rules_for(&deleted), ["fileless-load"]);
}

#[test]
fn default_policy_flags_modules_outside_the_tree_and_odd_loaders() {
    let mut record = without(finit(), &["module"]);
    record["args"]["file"]["path"] = json!("/tmp/rootkit.ko");
    record["process"]["exe"] = json!("/tmp/loader");
    assert_eq!(
        default_rules_for(&record),
        ["module-outside-tree", "unexpected-loader"]
    );
    // A process gone before /proc was read is judged by its comm.
    record["args"]["file"]["path"] = json!("/lib/modules/6.1.0-28-amd64/x.ko");
    record["process"]["exe"] = Value::Null;
    record["process"]["comm"] = json!("modprobe");
    assert_eq!(default_rules_for(&record), Vec::<String>::new());
    record["process"]["comm"] = json!("loader");
    assert_eq!(default_rules_for(&record), ["unexpected-loader"]);
}

fn delete(result: &Value) -> Value {
    json!({"kind":"delete_module","process":{"exe":"/usr/bin/kmod","pid":7,"uid":0},
        "args":{"name":{"value":"dummy","truncated":false},"flags":{"raw":0,"names":[]}},
        "result":result})
}

#[test]
fn default_policy_notes_unloads_and_attempts_apart() {
    let done = delete(&json!({"ret":0,"errno":null,"ok":true}));
    let evaluation = evaluate(&default(), &done);
    assert_eq!(default_rules_for(&done), ["module-unload"]);
    assert_eq!(evaluation.matches[0].severity, Severity::Low);
    assert_eq!(
        evaluation.matches[0].message,
        "module unloaded: delete_module dummy by /usr/bin/kmod (pid 7, uid 0)"
    );

    let failed = delete(&json!({"ret":-2,"errno":"ENOENT","ok":false}));
    let evaluation = evaluate(&default(), &failed);
    assert_eq!(default_rules_for(&failed), ["module-unload-attempt"]);
    assert_eq!(evaluation.matches[0].severity, Severity::Info);
    assert_eq!(
        evaluation.matches[0].message,
        "module unload attempt failed (ENOENT): delete_module dummy by /usr/bin/kmod (pid 7, uid 0)"
    );

    // A call whose task died inside it may or may not have unloaded.
    let unfinished = delete(&Value::Null);
    let evaluation = evaluate(&default(), &unfinished);
    assert_eq!(default_rules_for(&unfinished), ["module-unload-attempt"]);
    assert_eq!(
        evaluation.matches[0].message,
        "module unload attempt (no result: the call had not returned): delete_module dummy by /usr/bin/kmod (pid 7, uid 0)"
    );
}

#[test]
fn no_default_message_calls_a_failed_call_a_load_or_an_unload() {
    let failed_load = |mut record: Value| {
        record["result"] = json!({"ret":-1,"errno":"EPERM","ok":false});
        record
    };
    let mut unsigned = finit();
    unsigned["module"]["image"]["signature"]["signed"] = json!(false);
    unsigned["process"]["exe"] = json!("/tmp/loader");
    unsigned["args"]["file"]["path"] = json!("/tmp/x.ko");
    let init = json!({"kind":"init_module","process":{"exe":"/tmp/x","comm":"x","pid":1,"uid":0},
        "args":{"image_addr":"0x1","image_len":9,"params":{"value":"","truncated":false}}});
    let records = [
        failed_load(finit()),
        failed_load(unsigned),
        failed_load(init),
        delete(&json!({"ret":-38,"errno":"ENOSYS","ok":false})),
    ];
    let mut rules = std::collections::BTreeSet::new();
    for record in records {
        for m in evaluate(&default(), &record).matches {
            let errno = record["result"]["errno"].as_str().unwrap();
            assert!(
                m.message.contains(&format!(" failed ({errno}): ")),
                "{}: {}",
                m.rule,
                m.message
            );
            assert!(
                !m.message.contains("loaded") && !m.message.contains("unloaded"),
                "{}: {}",
                m.rule,
                m.message
            );
            rules.insert(m.rule);
        }
    }
    // Every default rule but the successful unload's was seen failing.
    let all: std::collections::BTreeSet<String> = default()
        .rules()
        .iter()
        .map(|r| r.id.clone())
        .filter(|id| id != "module-unload" && !id.starts_with("modprobe.d:"))
        .collect();
    assert_eq!(rules, all);
}

#[test]
fn templates_name_the_result() {
    let p = policy(
        "[[rule]]\nid = \"t\"\nseverity = \"low\"\nmessage = \"{syscall} {module}: {result}\"\n",
    );
    let message = |result: Value| {
        let mut record = finit();
        record["result"] = result;
        evaluate(&p, &record).matches[0].message.clone()
    };
    assert_eq!(
        message(json!({"ret":0,"errno":null,"ok":true})),
        "finit_module sctp: ok"
    );
    assert_eq!(
        message(json!({"ret":-17,"errno":"EEXIST","ok":false})),
        "finit_module sctp: EEXIST"
    );
    assert_eq!(message(Value::Null), "finit_module sctp: no result");
}

// ---- Every error message of `policy check` ----

fn errors(text: &str) -> Vec<String> {
    match Policy::from_text(text, "p.toml", &context()) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(PolicyError::Invalid(errors)) => errors.iter().map(ToString::to_string).collect(),
        Err(other) => panic!("{other}"),
    }
}

fn one_error(text: &str) -> String {
    let all = errors(text);
    assert_eq!(all.len(), 1, "{all:?}");
    all.into_iter().next().unwrap()
}

const HEAD: &str = "[[rule]]\nid = \"r\"\nseverity = \"low\"\n";

#[test]
fn toml_syntax_errors_have_a_position() {
    let err = one_error("[[rule]]\nid = \"r\nseverity = 1\n");
    assert!(err.starts_with("p.toml:2:8: "), "{err}");
    assert!(err.contains("string"), "{err}");
}

#[test]
fn unknown_keys_are_named_with_a_suggestion() {
    assert_eq!(
        one_error(&format!("{HEAD}severty = \"low\"\n")),
        "p.toml:4:1: unknown key `severty` in [[rule]]; did you mean `severity`?"
    );
    assert_eq!(
        one_error("rules = []\n"),
        "p.toml:1:1: unknown key `rules` at the top level; did you mean `rule`?"
    );
    assert_eq!(
        one_error("[policy]\nmodprobe = true\n"),
        "p.toml:2:1: unknown key `modprobe` in [policy]; did you mean `modprobe_d`?"
    );
    assert_eq!(
        one_error(&format!("{HEAD}when = {{ modul = \"x\" }}\n")),
        "p.toml:4:10: unknown key `modul` as a condition; did you mean `module`?"
    );
    assert_eq!(
        one_error(&format!(
            "{HEAD}when = {{ time = {{ start = \"01:00\" }} }}\n"
        )),
        "p.toml:4:19: unknown key `start` in time"
    );
}

#[test]
fn wrong_types_say_what_was_expected() {
    assert_eq!(
        one_error(&format!("{HEAD}when = {{ uid = \"root\" }}\n")),
        "p.toml:4:16: expected an integer, found string"
    );
    assert_eq!(
        one_error(&format!("{HEAD}when = {{ module = 5 }}\n")),
        "p.toml:4:19: expected a string or an array of strings, found integer"
    );
    assert_eq!(
        one_error(&format!("{HEAD}when = {{ module = [\"a\", 5] }}\n")),
        "p.toml:4:25: expected a string, found integer"
    );
    assert_eq!(
        one_error(&format!("{HEAD}when = {{ signed = \"no\" }}\n")),
        "p.toml:4:19: expected true or false, found string"
    );
    assert_eq!(
        one_error(&format!("{HEAD}when = \"always\"\n")),
        "p.toml:4:8: expected a table of conditions, found string"
    );
    assert_eq!(
        one_error("rule = 1\n"),
        "p.toml:1:8: expected [[rule]], found integer"
    );
    assert_eq!(
        one_error("policy = 1\n"),
        "p.toml:1:10: expected [policy], found integer"
    );
    assert_eq!(
        one_error("rule = [1]\n"),
        "p.toml:1:9: expected a [[rule]], found integer"
    );
    assert_eq!(
        one_error(&format!("{HEAD}when = {{ any = {{ uid = 0 }} }}\n")),
        "p.toml:4:16: expected an array of condition tables, found table"
    );
    assert_eq!(
        one_error(&format!("{HEAD}when = {{ time = \"night\" }}\n")),
        "p.toml:4:17: expected a table such as { from = \"22:00\", to = \"06:00\" }, found string"
    );
}

#[test]
fn bad_globs_and_regexes_are_errors_at_the_pattern() {
    let glob = one_error(&format!("{HEAD}when = {{ module = [\"ok\", \"a[b\"] }}\n"));
    assert!(
        glob.starts_with("p.toml:4:26: bad glob \"a[b\": "),
        "{glob}"
    );
    let regex = one_error(&format!("{HEAD}when = {{ exe_regex = \"(a\" }}\n"));
    assert!(
        regex.starts_with("p.toml:4:22: bad regex \"(a\": "),
        "{regex}"
    );
    assert!(regex.contains("unclosed group"), "{regex}");
}

#[test]
fn duplicate_ids_point_at_both() {
    assert_eq!(
        one_error(&format!("{HEAD}{HEAD}")),
        "p.toml:5:6: duplicate rule id \"r\" (first defined on line 2)"
    );
}

#[test]
fn rule_fields_are_checked() {
    assert_eq!(
        one_error("[[rule]]\nseverity = \"low\"\n"),
        "p.toml:1:1: rule lacks `id`"
    );
    assert_eq!(
        one_error("[[rule]]\nid = \"r\"\n"),
        "p.toml:1:1: rule lacks `severity` (info, low, medium, high or critical)"
    );
    assert_eq!(
        one_error("[[rule]]\nid = \"r\"\nseverity = \"urgent\"\n"),
        "p.toml:3:12: severity \"urgent\" is not one of info, low, medium, high, critical"
    );
    assert_eq!(
        one_error(&format!("{HEAD}action = \"block\"\n")),
        "p.toml:4:10: action \"block\" is not one of deny, alert, log, ignore"
    );
    assert_eq!(
        one_error("[[rule]]\nid = \"a b\"\nseverity = \"low\"\n"),
        "p.toml:2:6: rule id \"a b\" may only hold letters, digits, `-`, `_`, `.` and `:`"
    );
    assert_eq!(
        one_error("[policy]\nversion = 2\n"),
        "p.toml:2:11: policy version 2 is not supported; this modtrace reads version 1"
    );
}

#[test]
fn condition_values_are_checked() {
    let cases = [
        (
            "syscall = \"open\"",
            "p.toml:4:20: unknown syscall \"open\"; use init_module, finit_module or delete_module",
        ),
        (
            "result = \"fine\"",
            "p.toml:4:19: result \"fine\" is not `ok`, `error` or an errno name such as \"ENOENT\"",
        ),
        (
            "taint = \"oe\"",
            "p.toml:4:18: taint \"oe\" must be kernel taint letters such as \"POE\"",
        ),
        (
            "sha256 = \"abc\"",
            "p.toml:4:19: \"abc\" is not a sha256 (64 hex digits)",
        ),
        (
            "uid = -1",
            "p.toml:4:16: -1 is not a user id (0 to 4294967295)",
        ),
        ("uid = []", "p.toml:4:16: the list is empty"),
        ("module = []", "p.toml:4:19: the list is empty"),
        (
            "any = []",
            "p.toml:4:16: `any` needs at least one condition table",
        ),
        (
            "time = { from = \"25:00\" }",
            "p.toml:4:26: time \"25:00\" is not HH:MM (UTC)",
        ),
        (
            "time = { days = [\"someday\"] }",
            "p.toml:4:27: \"someday\" is not a day; use mon, tue, wed, thu, fri, sat or sun",
        ),
        (
            "sha256_file = \"/nonexistent/h\"",
            "p.toml:4:24: cannot read /nonexistent/h: No such file or directory (os error 2)",
        ),
    ];
    for (when, expected) in cases {
        assert_eq!(
            one_error(&format!("{HEAD}when = {{ {when} }}\n")),
            expected,
            "{when}"
        );
    }
}

#[test]
fn a_bad_line_in_a_hash_list_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("h");
    std::fs::write(&list, "\nnot-a-hash  /x\n").unwrap();
    let err = one_error(&format!(
        "{HEAD}when = {{ sha256_file = {:?} }}\n",
        list.display().to_string()
    ));
    assert!(
        err.ends_with(&format!(
            "{}:2: \"not-a-hash\" is not a sha256 (64 hex digits)",
            list.display()
        )),
        "{err}"
    );
}

#[test]
fn every_mistake_is_listed_in_one_run() {
    let all = errors("[[rule]]\nid = \"a\"\nseverity = \"bad\"\n[[rule]]\nid = \"b\"\nseverity = \"low\"\nwhen = { nope = 1 }\n");
    assert_eq!(all.len(), 2, "{all:?}");
}

#[test]
fn line_and_column_count_characters() {
    assert_eq!(line_column("ab\ncd", 4), (2, 2));
    assert_eq!(line_column("é\nx", 3), (2, 1));
    assert_eq!(line_column("é=1", 2), (1, 2));
    assert_eq!(line_column("", 10), (1, 1));
}

#[test]
fn default_policy_parses() {
    let p = default();
    assert!(p.rules().len() >= 7);
    assert_eq!(p.source, "default");
    assert_eq!(p.sha256, sha256_hex(defaults::DEFAULT_POLICY.as_bytes()));
}

#[test]
fn a_regex_too_large_for_the_set_is_an_error_not_a_dropped_condition() {
    // `\w{300}` compiles alone under the regex crate's default limit but not
    // under the set's: the condition used to vanish, and this allow-list to
    // allow everything.
    let err = one_error(&format!(
        "{HEAD}when = {{ load = true }}\nallow = {{ module_regex = \"\\\\w{{300}}\" }}\n"
    ));
    assert!(
        err.starts_with("p.toml:5:26: bad regex \"\\\\w{300}\": "),
        "{err}"
    );
    let err = one_error(&format!(
        "{HEAD}when = {{ exe_regex = [\"\\\\w{{40}}\", \"\\\\w{{41}}\", \"\\\\w{{42}}\"] }}\n"
    ));
    assert!(
        err.starts_with("p.toml:4:22: these regexes are too large together: "),
        "{err}"
    );
}

#[test]
fn the_kernel_release_is_a_literal_in_globs() {
    let in_tree = "[[rule]]\nid = \"r\"\nseverity = \"low\"\nwhen = { path = \"/lib/modules/{kernel}/**\" }\n";
    let mut record = finit();
    record["args"]["file"]["path"] = json!("/lib/modules/6.1*[x/a.ko");
    for (kernel, hit) in [("6.1*[x", true), ("6.1*", false), ("6.1?[x", false)] {
        let context = Context {
            kernel: kernel.into(),
            check_owner: false,
        };
        let policy = Policy::from_text(in_tree, "p", &context).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hits(&policy, &record), hit, "{kernel}");
    }
}

#[test]
fn a_deny_match_says_would_deny_unless_the_policy_is_enforced() {
    let mut policy = Policy::default_policy(&context());
    let audit = evaluate(&policy, &finit());
    assert_eq!(audit.verdict, Verdict::Deny);
    assert!(audit.would_deny);
    // A deny rule raises its alert too.
    assert!(audit.alerts().any(|m| m.rule == "cis-denied-module"));
    let rendered = serde_json::to_value(&audit).unwrap();
    assert_eq!(rendered["would_deny"], true);
    policy.set_enforced(true);
    let enforced = evaluate(&policy, &finit());
    assert_eq!(enforced.verdict, Verdict::Deny);
    assert!(!enforced.would_deny);
    assert!(serde_json::to_value(&enforced)
        .unwrap()
        .get("would_deny")
        .is_none());
    // Without a deny match there is nothing to say.
    let other = finit().to_string().replace("sctp", "dummy");
    let other = evaluate(&policy, &serde_json::from_str(&other).unwrap());
    assert!(!other.would_deny && other.verdict != Verdict::Deny);
}
