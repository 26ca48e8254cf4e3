//! The effective modprobe configuration, and rules that fire when a module it
//! disables loads anyway.
//!
//! `blacklist X` only stops loading through aliases, and `install X /bin/true`
//! only stops modprobe; insmod, a direct syscall or a dependency still load X.
//! When that happens the rule names which way around the directive was taken.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde_json::Value;
use tracing::warn;

use super::{
    condition::{Condition, Matcher, Pattern, TextField},
    event::{normalise_module_name, Event, LOAD_SYSCALLS},
    glob::{Glob, Globs},
    Action, Message, Rule, Severity,
};

/// kmod's configuration directories, highest priority first.
pub const SYSTEM_DIRS: [&str; 5] = [
    "/etc/modprobe.d",
    "/run/modprobe.d",
    "/usr/local/lib/modprobe.d",
    "/usr/lib/modprobe.d",
    "/lib/modprobe.d",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectiveKind {
    Blacklist,
    /// `install X <command>` with a command that loads nothing.
    InstallDisabled(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub kind: DirectiveKind,
    /// Normalised (`_` for `-`), as kmod compares names.
    pub module: String,
    pub file: PathBuf,
    pub line: usize,
}

/// The `.conf` files kmod would read, in the order it reads them: sorted by
/// file name, where a name in a higher-priority directory hides the same name
/// in lower ones (that is how /etc overrides a packaged file).
pub fn effective_files(dirs: &[String]) -> Vec<PathBuf> {
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".conf") {
                by_name.entry(name).or_insert_with(|| entry.path());
            }
        }
    }
    by_name.into_values().collect()
}

/// A line of modprobe.d that names a module, as the audit reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineKind {
    Blacklist,
    /// `install X <command>`, the command as written.
    Install(String),
    /// `options X <parameters>`.
    Options(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigLine {
    pub kind: LineKind,
    /// Normalised (`_` for `-`), as kmod compares names.
    pub module: String,
    pub file: PathBuf,
    pub line: usize,
}

impl ConfigLine {
    /// The directive this line is, when it disables its module.
    fn directive(self) -> Option<Directive> {
        let kind = match self.kind {
            LineKind::Blacklist => DirectiveKind::Blacklist,
            LineKind::Install(command) if loads_nothing(&command) => {
                DirectiveKind::InstallDisabled(command)
            }
            LineKind::Install(_) | LineKind::Options(_) => return None,
        };
        Some(Directive {
            kind,
            module: self.module,
            file: self.file,
            line: self.line,
        })
    }
}

/// The directives that disable modules, from every effective file.
pub fn read_config(dirs: &[String]) -> Vec<Directive> {
    read_lines(dirs)
        .into_iter()
        .filter_map(ConfigLine::directive)
        .collect()
}

/// Every line naming a module, from every effective file.
pub fn read_lines(dirs: &[String]) -> Vec<ConfigLine> {
    let mut lines = Vec::new();
    for file in effective_files(dirs) {
        // A file masked by a link to /dev/null reads as empty, as kmod wants.
        match fs::read_to_string(&file) {
            Ok(text) => lines.extend(parse_lines(&text, &file)),
            Err(err) => warn!("skipping modprobe configuration {}: {err}", file.display()),
        }
    }
    lines
}

/// The directives of one file's text.
pub fn parse(text: &str, file: &Path) -> Vec<Directive> {
    parse_lines(text, file)
        .into_iter()
        .filter_map(ConfigLine::directive)
        .collect()
}

/// Lines of one file, with `\` continuations joined and comments dropped.
pub fn parse_lines(text: &str, file: &Path) -> Vec<ConfigLine> {
    let mut lines = Vec::new();
    let mut pending = String::new();
    let mut first_line = 0;
    for (index, raw) in text.lines().enumerate() {
        if pending.is_empty() {
            first_line = index + 1;
        }
        match raw.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            None => pending.push_str(raw),
        }
        let line = std::mem::take(&mut pending);
        if let Some(config_line) = config_line(&line, file, first_line) {
            lines.push(config_line);
        }
    }
    lines
}

fn config_line(line: &str, file: &Path, line_no: usize) -> Option<ConfigLine> {
    let line = line.trim_start();
    if line.starts_with('#') {
        return None;
    }
    let mut words = line.split_whitespace();
    let command = words.next()?;
    let module = normalise_module_name(words.next()?).into_owned();
    let rest = words.collect::<Vec<&str>>().join(" ");
    let kind = match command {
        "blacklist" => LineKind::Blacklist,
        "install" => LineKind::Install(rest),
        "options" => LineKind::Options(rest),
        _ => return None,
    };
    Some(ConfigLine {
        kind,
        module,
        file: file.into(),
        line: line_no,
    })
}

/// `/bin/true`, `/bin/false` or the bare names, alone: commands that never
/// load the module.
pub fn loads_nothing(command: &str) -> bool {
    match command.split_whitespace().collect::<Vec<_>>()[..] {
        [program] => matches!(program.rsplit('/').next(), Some("true" | "false")),
        _ => false,
    }
}

/// One rule per directive.
pub fn rules(directives: &[Directive]) -> Vec<Rule> {
    directives
        .iter()
        .map(|d| {
            let (kind, what) = match &d.kind {
                DirectiveKind::Blacklist => ("blacklist", "blacklisted"),
                DirectiveKind::InstallDisabled(_) => ("install", "disabled by install"),
            };
            let globs =
                Glob::new(&d.module, TextField::Module).and_then(|glob| Globs::new(vec![glob]));
            let module_condition = match globs {
                Ok(globs) => Condition::Text {
                    field: TextField::Module,
                    pattern: Pattern {
                        source: vec![d.module.clone()],
                        matcher: Matcher::Glob(Box::new(globs)),
                    },
                },
                // A name no glob can hold matches nothing; keep the rule visible.
                Err(_) => Condition::Any(Vec::new()),
            };
            Rule::new(
                format!("modprobe.d:{kind}:{}", d.module),
                format!("module {what} in modprobe.d loaded anyway"),
                Severity::High,
                Action::Alert,
                Message::Bypass(d.clone()),
                Condition::All(vec![Condition::Syscall(LOAD_SYSCALLS), module_condition]),
                None,
                true,
            )
        })
        .collect()
}

/// Ways around a modprobe.d directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    InsmodByPath,
    DirectSyscall,
    /// modprobe loaded it for another module that depends on it.
    Dependency,
    /// modprobe was asked for this very module (a blacklist does not stop
    /// that; an install directive means modprobe ignored it).
    ExplicitModprobe,
}

impl Bypass {
    pub fn classify(event: &Event, module: &str) -> Self {
        let cmdline: Vec<&str> = event
            .at(&["process", "cmdline"])
            .and_then(Value::as_array)
            .map(|args| args.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let program = |s: &str| s.rsplit('/').next().unwrap_or(s).to_owned();
        let exe = event.str_at(&["process", "exe"]).map(program);
        let argv0 = cmdline.first().map(|a| program(a));
        let comm = event.str_at(&["process", "comm"]).map(program);
        let is = |name: &str| {
            [&exe, &argv0, &comm]
                .iter()
                .any(|n| n.as_deref() == Some(name))
        };
        if is("insmod") {
            return Bypass::InsmodByPath;
        }
        if !(is("kmod") || is("modprobe")) {
            return Bypass::DirectSyscall;
        }
        let asked_for = cmdline
            .iter()
            .skip(1)
            .any(|arg| normalise_module_name(arg) == module);
        if asked_for {
            Bypass::ExplicitModprobe
        } else {
            Bypass::Dependency
        }
    }
}

impl Directive {
    /// The directive as written in its file.
    fn written(&self) -> String {
        match &self.kind {
            DirectiveKind::Blacklist => format!("blacklist {}", self.module),
            DirectiveKind::InstallDisabled(cmd) => format!("install {} {cmd}", self.module),
        }
    }

    /// For a module already loaded when modtrace started: no load to
    /// classify, and the usual way around the directive is the initramfs.
    pub fn explain_preloaded(&self) -> String {
        format!(
            "{} was already loaded when modtrace started despite `{}` ({}:{}): loaded by the initramfs or early in boot, before modtrace ran or before the directive was written",
            self.module,
            self.written(),
            self.file.display(),
            self.line
        )
    }

    pub fn explain(&self, event: &Event) -> String {
        let how = match Bypass::classify(event, &self.module) {
            Bypass::InsmodByPath => "insmod by path, which never reads modprobe.d".to_owned(),
            Bypass::DirectSyscall => format!(
                "a direct {} by {}, which modprobe.d cannot stop",
                event.syscall.name(),
                event.str_at(&["process", "exe"]).unwrap_or("an unknown program")
            ),
            Bypass::Dependency => {
                "modprobe, as a dependency of another module (modprobe.d does not stop dependencies)"
                    .to_owned()
            }
            Bypass::ExplicitModprobe => match self.kind {
                DirectiveKind::Blacklist => {
                    "modprobe asked for it by name (blacklist only stops loading by alias)".to_owned()
                }
                DirectiveKind::InstallDisabled(_) => {
                    "modprobe asked for it by name, ignoring the install command (--ignore-install, or an initramfs whose modprobe.d lacks it)".to_owned()
                }
            },
        };
        let module = event.module().unwrap_or(&self.module);
        // Only a load that succeeded loaded anything; an attempt says how it
        // ended, as the default messages do.
        let what = match event.ok() {
            Some(true) => format!("{module} loaded"),
            _ => format!("load of {module}"),
        };
        format!(
            "{what} despite `{}` ({}:{}){}, via {how}",
            self.written(),
            self.file.display(),
            self.line,
            super::Outcome(event),
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policy::{event::ReadRecord, Policy};

    fn parsed(text: &str) -> Vec<Directive> {
        parse(text, Path::new("/etc/modprobe.d/x.conf"))
    }

    #[test]
    fn blacklist_and_disabling_install_lines_are_directives() {
        let found = parsed(
            "# comment\nblacklist usb-storage\ninstall sctp /bin/true\ninstall dccp   false\n\
             install rds /sbin/modprobe --ignore-install rds\noptions foo bar=1\n",
        );
        assert_eq!(
            found,
            vec![
                Directive {
                    kind: DirectiveKind::Blacklist,
                    module: "usb_storage".into(),
                    file: "/etc/modprobe.d/x.conf".into(),
                    line: 2
                },
                Directive {
                    kind: DirectiveKind::InstallDisabled("/bin/true".into()),
                    module: "sctp".into(),
                    file: "/etc/modprobe.d/x.conf".into(),
                    line: 3
                },
                Directive {
                    kind: DirectiveKind::InstallDisabled("false".into()),
                    module: "dccp".into(),
                    file: "/etc/modprobe.d/x.conf".into(),
                    line: 4
                },
            ]
        );
    }

    #[test]
    fn continuation_lines_join_and_keep_the_first_line_number() {
        let found = parsed("\ninstall tipc \\\n  /bin/false\n");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].line, 2);
        assert_eq!(
            found[0].kind,
            DirectiveKind::InstallDisabled("/bin/false".into())
        );
    }

    #[test]
    fn a_file_in_etc_hides_the_same_name_in_lib_and_order_is_by_name() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        let lib = root.path().join("lib");
        fs::create_dir_all(&etc).unwrap();
        fs::create_dir_all(&lib).unwrap();
        fs::write(etc.join("b.conf"), "blacklist from_etc\n").unwrap();
        fs::write(lib.join("b.conf"), "blacklist from_lib\n").unwrap();
        fs::write(lib.join("a.conf"), "blacklist first\n").unwrap();
        fs::write(lib.join("c.txt"), "blacklist ignored\n").unwrap();
        let dirs = [etc, lib].map(|d| d.display().to_string());
        let names: Vec<String> = read_config(&dirs).into_iter().map(|d| d.module).collect();
        assert_eq!(names, ["first", "from_etc"]);
    }

    fn load(exe: &str, cmdline: &[&str], kind: &str) -> serde_json::Value {
        json!({"kind": kind, "process": {"exe": exe, "comm": exe.rsplit('/').next(),
               "cmdline": cmdline, "pid": 7, "uid": 0},
               "args": {"file": {"path": "/lib/modules/k/kernel/usb-storage.ko"}}})
    }

    #[test]
    fn bypasses_are_named() {
        let cases = [
            (
                load(
                    "/usr/bin/kmod",
                    &["insmod", "/x/usb-storage.ko"],
                    "finit_module",
                ),
                Bypass::InsmodByPath,
            ),
            (
                load("/tmp/evil", &["/tmp/evil"], "finit_module"),
                Bypass::DirectSyscall,
            ),
            (
                load("/usr/bin/kmod", &["modprobe", "uas"], "finit_module"),
                Bypass::Dependency,
            ),
            (
                load(
                    "/usr/bin/kmod",
                    &["modprobe", "usb_storage"],
                    "finit_module",
                ),
                Bypass::ExplicitModprobe,
            ),
        ];
        for (record, expected) in cases {
            let record = crate::samples::complete(&record);
            let read = ReadRecord::from_json(&record).unwrap().unwrap();
            let event = Event::read(&record, &read);
            assert_eq!(
                Bypass::classify(&event, "usb_storage"),
                expected,
                "{record}"
            );
        }
    }

    /// A policy with `modprobe_d` switched on or off, reading one `cis.conf`.
    fn policy_reading(conf: &str, modprobe_d: bool) -> Policy {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cis.conf"), conf).unwrap();
        let text = format!(
            "[policy]\nmodprobe_d = {modprobe_d}\nmodprobe_d_dirs = [{:?}]\n",
            dir.path().display().to_string()
        );
        let context = crate::policy::Context {
            kernel: "k".into(),
            check_owner: false,
        };
        Policy::from_text(&text, "p.toml", &context).unwrap()
    }

    #[test]
    fn a_blacklisted_module_loaded_anyway_raises_a_bypass_match() {
        let policy = policy_reading("blacklist usb-storage\n", true);
        let record = load(
            "/usr/bin/kmod",
            &["insmod", "/x/usb-storage.ko"],
            "finit_module",
        );
        let evaluation = policy
            .evaluate(&crate::samples::complete(&record))
            .unwrap()
            .unwrap();
        assert_eq!(evaluation.matches.len(), 1, "{evaluation:?}");
        let m = &evaluation.matches[0];
        assert_eq!(m.rule, "modprobe.d:blacklist:usb_storage");
        assert!(m.message.contains("insmod by path"), "{}", m.message);
        assert!(m.message.contains("cis.conf:1"), "{}", m.message);
        let message = |result: serde_json::Value| {
            let mut record = record.clone();
            record["result"] = result;
            policy
                .evaluate(&crate::samples::complete(&record))
                .unwrap()
                .unwrap()
                .matches[0]
                .message
                .clone()
        };
        let loaded = message(json!({"ret":0,"errno":null,"ok":true}));
        assert!(
            loaded.starts_with("usb-storage loaded despite `blacklist usb_storage` ("),
            "{loaded}"
        );
        let refused = message(json!({"ret":-1,"errno":"EPERM","ok":false}));
        assert!(
            refused.starts_with("load of usb-storage despite `blacklist usb_storage` (")
                && refused.contains("cis.conf:1) failed (EPERM), via insmod by path"),
            "{refused}"
        );
        let other = load("/usr/bin/kmod", &["modprobe", "ext4"], "finit_module");
        let mut other = other;
        other["args"]["file"]["path"] = json!("/lib/modules/k/ext4.ko");
        assert!(policy
            .evaluate(&crate::samples::complete(&other))
            .unwrap()
            .unwrap()
            .matches
            .is_empty());
    }

    #[test]
    fn switched_off_reads_nothing() {
        let policy = policy_reading("blacklist usb-storage\n", false);
        assert!(policy.rules().is_empty());
    }

    #[test]
    fn modules_loaded_before_start_despite_a_directive_raise_alerts() {
        let policy = policy_reading("blacklist usb-storage\ninstall sctp /bin/true\n", true);
        let alerts = crate::policy::preloaded_alerts(&policy, ["ext4", "usb_storage", "sctp"], 0);
        let rules: Vec<&str> = alerts.iter().map(|a| a.rule.as_str()).collect();
        assert_eq!(
            rules,
            [
                "modprobe.d:blacklist:usb_storage",
                "modprobe.d:install:sctp"
            ]
        );
        let a = &alerts[0];
        assert_eq!((a.event_seq, a.event_kind.as_str()), (0, "start"));
        assert!(
            a.message.contains("already loaded when modtrace started")
                && a.message.contains("initramfs")
                && a.message.contains("`blacklist usb_storage` (")
                && a.message.contains("cis.conf:1"),
            "{}",
            a.message
        );
        assert!(crate::policy::preloaded_alerts(&policy, ["ext4"], 0).is_empty());
    }
}
