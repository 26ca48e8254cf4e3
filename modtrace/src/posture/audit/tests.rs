//! Every check against fixture trees that stand for a host.
use std::{fs, path::Path};

use serde_json::Value;

use super::*;
use crate::posture::HostRoot;

const RELEASE: &str = "6.1.0-test-amd64";

/// A host tree: a release, /proc/modules, and whatever a test adds.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new(proc_modules: &str) -> Self {
        let tree = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        tree.write("/proc/sys/kernel/osrelease", format!("{RELEASE}\n"));
        tree.write("/proc/modules", proc_modules);
        tree.write("/proc/sys/kernel/tainted", "0\n");
        tree.write("/proc/sys/kernel/modules_disabled", "0\n");
        tree
    }

    fn path(&self, path: &str) -> std::path::PathBuf {
        HostRoot::new(self.dir.path()).path(path)
    }

    fn write(&self, path: &str, content: impl AsRef<[u8]>) {
        let path = self.path(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn check(&self, id: &str) -> Finding {
        let host = Host::read(HostRoot::new(self.dir.path()));
        let checks = select(&[id.to_owned()]).unwrap();
        run(&host, &checks).findings.remove(0)
    }
}

fn evidence(finding: &Finding) -> String {
    finding
        .outcome
        .evidence
        .iter()
        .map(|e| format!("{}: {}\n", e.source, e.value))
        .collect()
}

const MODULES: &str = "sctp 434176 0 - Live 0xffffffffc0a00000\n\
                       udp_tunnel 32768 1 sctp, Live 0xffffffffc0900000\n\
                       vboxdrv 700416 2 - Live 0xffffffffc0800000 (OE)\n";

#[test]
fn lockdown_mode_is_the_bracketed_word() {
    assert_eq!(
        kernel::lockdown_mode("none [integrity] confidentiality\n"),
        Some("integrity")
    );
    let tree = Tree::new("");
    tree.write(kernel::LOCKDOWN_FILE, "[none] integrity confidentiality\n");
    let finding = tree.check("kernel.lockdown");
    assert_eq!(finding.outcome.status, Status::Warn);
    assert_eq!(finding.outcome.data["mode"], "none");
    assert!(finding.outcome.fix[0].contains("echo integrity > /sys/kernel/security/lockdown"));
    tree.write(kernel::LOCKDOWN_FILE, "none integrity [confidentiality]\n");
    assert_eq!(tree.check("kernel.lockdown").outcome.status, Status::Pass);
    fs::remove_file(tree.path(kernel::LOCKDOWN_FILE)).unwrap();
    assert_eq!(
        tree.check("kernel.lockdown").outcome.status,
        Status::Unknown
    );
}

#[test]
fn secure_boot_reads_the_efivar_byte_after_its_attributes() {
    let tree = Tree::new("");
    assert_eq!(tree.check("boot.secure-boot").outcome.status, Status::Warn);
    let var = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";
    tree.write(var, [6, 0, 0, 0, 1]);
    let on = tree.check("boot.secure-boot");
    assert_eq!(on.outcome.status, Status::Pass, "{on:?}");
    tree.write(var, [6, 0, 0, 0, 0]);
    assert_eq!(tree.check("boot.secure-boot").outcome.status, Status::Warn);
    tree.write(var, [6, 0]);
    let short = tree.check("boot.secure-boot");
    assert_eq!(short.outcome.status, Status::Unknown);
    assert!(short.outcome.summary.contains("is 2 bytes"), "{short:?}");
}

#[test]
fn sig_enforce_passes_when_lockdown_enforces_signatures() {
    let tree = Tree::new("");
    tree.write("/sys/module/module/parameters/sig_enforce", "N\n");
    assert_eq!(
        tree.check("kernel.sig-enforce").outcome.status,
        Status::Warn
    );
    tree.write(kernel::LOCKDOWN_FILE, "none [integrity] confidentiality\n");
    assert_eq!(
        tree.check("kernel.sig-enforce").outcome.status,
        Status::Pass
    );
    tree.write(kernel::LOCKDOWN_FILE, "[none] integrity confidentiality\n");
    tree.write("/sys/module/module/parameters/sig_enforce", "Y\n");
    assert_eq!(
        tree.check("kernel.sig-enforce").outcome.status,
        Status::Pass
    );
}

#[test]
fn modules_disabled_by_sysctl_at_boot_is_the_guides_pitfall() {
    let tree = Tree::new("");
    assert_eq!(
        tree.check("kernel.modules-disabled").outcome.status,
        Status::Warn
    );
    tree.write("/proc/sys/kernel/modules_disabled", "1\n");
    assert_eq!(
        tree.check("kernel.modules-disabled").outcome.status,
        Status::Pass
    );
    tree.write(
        "/etc/sysctl.d/99-modules.conf",
        "# lock down\nkernel.modules_disabled = 1\n",
    );
    let early = tree.check("kernel.modules-disabled");
    assert_eq!(early.outcome.status, Status::Warn);
    assert_eq!(
        early.outcome.data["set_by_sysctl"][0],
        "/etc/sysctl.d/99-modules.conf:2"
    );
    assert!(
        early.outcome.fix[0].starts_with("sed -i '2s/^/# "),
        "{:?}",
        early.outcome.fix
    );
}

#[test]
fn taint_names_every_letter_and_the_modules_that_carry_it() {
    let tree = Tree::new(MODULES);
    // P? no: O (bit 12), E (bit 13), W (bit 9), and an unnamed bit 30.
    tree.write(
        "/proc/sys/kernel/tainted",
        format!("{}\n", (1u64 << 12) | (1 << 13) | (1 << 9) | (1 << 30)),
    );
    let finding = tree.check("kernel.taint");
    assert_eq!(finding.outcome.status, Status::Warn);
    let data = &finding.outcome.data;
    assert_eq!(data["letters"], "WOE");
    assert_eq!(data["unknown_bits"], 1u64 << 30);
    let flags: Vec<(String, Vec<String>)> = data["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["letter"].as_str().unwrap().to_owned(),
                serde_json::from_value(f["modules"].clone()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        flags,
        [
            ("W".into(), vec![]),
            ("O".into(), vec!["vboxdrv".to_owned()]),
            ("E".into(), vec!["vboxdrv".to_owned()]),
        ]
    );
    assert!(evidence(&finding).contains("W warn: no loaded module carries it"));
}

#[test]
fn count_unused_and_tainting_modules_come_from_proc_modules() {
    let tree = Tree::new(MODULES);
    assert_eq!(tree.check("modules.count").outcome.data["count"], 3);
    let unused = tree.check("modules.unused");
    assert_eq!(unused.outcome.data["unused"], serde_json::json!(["sctp"]));
    assert_eq!(unused.outcome.fix, ["modprobe -r sctp"]);
    let out_of_tree = tree.check("modules.out-of-tree");
    assert_eq!(out_of_tree.outcome.status, Status::Warn);
    assert_eq!(
        out_of_tree.outcome.data["modules"],
        serde_json::json!(["vboxdrv"])
    );
    assert_eq!(
        tree.check("modules.proprietary").outcome.status,
        Status::Pass
    );
}

fn fixture_module() -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/modules");
    fs::read(dir.join("dummy-6.1.ko")).unwrap()
}

/// The module without its signature: the ELF part the image reader finds.
fn unsigned(image: &[u8]) -> Vec<u8> {
    let parsed =
        crate::enrich::module_image::ModuleImage::parse(image, &Default::default()).unwrap();
    image[..parsed.elf_len].to_vec()
}

#[test]
fn unsigned_loaded_modules_are_found_by_their_file_and_by_taint_e() {
    let tree = Tree::new(
        "dummy 16384 0 - Live 0x0\n\
         sctp 434176 0 - Live 0x0\n\
         rootkit 16384 0 - Live 0x0 (OE)\n\
         nf_dup_ipv6 16384 0 - Live 0x0 (E)\n",
    );
    let dir = format!("/lib/modules/{RELEASE}");
    tree.write(
        &format!("{dir}/kernel/drivers/net/dummy.ko"),
        fixture_module(),
    );
    tree.write(
        &format!("{dir}/kernel/net/sctp/sctp.ko"),
        unsigned(&fixture_module()),
    );
    let dup = fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/modules/nf_dup_ipv6-6.1.ko"),
    )
    .unwrap();
    tree.write(&format!("{dir}/kernel/net/nf_dup_ipv6.ko"), dup);
    tree.write(
        &format!("{dir}/modules.dep"),
        "kernel/drivers/net/dummy.ko:\nkernel/net/sctp/sctp.ko:\nkernel/net/nf_dup_ipv6.ko:\n",
    );
    let finding = tree.check("modules.unsigned");
    assert_eq!(finding.outcome.status, Status::Fail, "{finding:?}");
    let data = &finding.outcome.data;
    assert_eq!(data["unsigned_files"], serde_json::json!(["sctp"]));
    assert_eq!(data["without_file"], serde_json::json!(["rootkit"]));
    // nf_dup_ipv6's file is signed, but the kernel says the loaded one was not.
    assert_eq!(
        data["loaded_unsigned"],
        serde_json::json!(["rootkit", "nf_dup_ipv6"])
    );
    assert!(evidence(&finding)
        .contains("/lib/modules/6.1.0-test-amd64/kernel/net/sctp/sctp.ko: sctp: no signature"));
}

const CIS_FILE: &str = "install cramfs /bin/true\ninstall freevxfs /bin/true\ninstall jffs2 /bin/true\n\
install hfs /bin/true\ninstall hfsplus /bin/true\ninstall squashfs /bin/true\ninstall udf /bin/true\n\
install usb-storage /bin/true\ninstall dccp /bin/true\ninstall sctp /bin/true\ninstall rds /bin/true\n\
install tipc /bin/true\ninstall firewire-core /bin/true\nblacklist cramfs\nblacklist freevxfs\n\
blacklist jffs2\nblacklist hfs\nblacklist hfsplus\nblacklist squashfs\nblacklist udf\n\
blacklist usb-storage\nblacklist dccp\nblacklist sctp\nblacklist rds\nblacklist tipc\n\
blacklist firewire-core\n";

#[test]
fn the_guides_cis_file_passes_every_deny_check() {
    let tree = Tree::new("ext4 1 1 - Live 0x0\n");
    tree.write("/etc/modprobe.d/CIS.conf", CIS_FILE);
    for id in [
        "deny.cis-list",
        "deny.install-false",
        "deny.blacklist-only",
        "deny.loaded",
        "deny.contradictions",
    ] {
        let finding = tree.check(id);
        assert_eq!(finding.outcome.status, Status::Pass, "{finding:?}");
    }
    assert_eq!(tree.check("deny.cis-list").outcome.data["denied"], 13);
}

#[test]
fn each_deny_pitfall_is_named_with_its_line_and_fix() {
    let tree = Tree::new("udf 1 0 - Live 0x0\nsctp 1 0 - Live 0x0\n");
    let cis = CIS_FILE
        .replace("install udf /bin/true", "install udf /bin/false")
        .replace("install sctp /bin/true\n", "")
        .replace("blacklist hfs\n", "");
    tree.write("/lib/modprobe.d/CIS.conf", cis);
    tree.write(
        "/etc/modprobe.d/local.conf",
        "options sctp addip_enable=1\n",
    );
    tree.write("/etc/modules-load.d/net.conf", "# boot\nsctp\n");
    tree.write("/etc/modules", "udf\n");

    let list = tree.check("deny.cis-list");
    assert_eq!(list.outcome.status, Status::Warn, "{list:?}");
    assert_eq!(
        (
            &list.outcome.data["denied"],
            &list.outcome.data["partly"],
            &list.outcome.data["missing"]
        ),
        (&10.into(), &3.into(), &0.into())
    );
    assert!(list
        .outcome
        .fix
        .contains(&"echo 'install sctp /bin/true' >> /etc/modprobe.d/cis.conf".to_owned()));
    assert!(list
        .outcome
        .fix
        .contains(&"echo 'blacklist hfs' >> /etc/modprobe.d/cis.conf".to_owned()));

    let false_ = tree.check("deny.install-false");
    assert_eq!(false_.outcome.data["modules"], serde_json::json!(["udf"]));
    assert_eq!(
        false_.outcome.fix,
        ["sed -i '7s|false|true|' /lib/modprobe.d/CIS.conf"]
    );

    let only = tree.check("deny.blacklist-only");
    assert_eq!(only.outcome.data["modules"], serde_json::json!(["sctp"]));

    let loaded = tree.check("deny.loaded");
    assert_eq!(loaded.outcome.status, Status::Fail);
    assert_eq!(
        loaded.outcome.data["modules"],
        serde_json::json!(["sctp", "udf"])
    );
    assert!(evidence(&loaded).contains("udf is loaded, denied by install /bin/false (/lib/modprobe.d/CIS.conf:7), blacklist (/lib/modprobe.d/CIS.conf:18), the CIS deny list"), "{}", evidence(&loaded));

    let contradictions = tree.check("deny.contradictions");
    assert_eq!(contradictions.outcome.status, Status::Warn);
    let found: Vec<&str> = contradictions.outcome.data["contradictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["at"].as_str().unwrap())
        .collect();
    assert_eq!(
        found,
        [
            "/etc/modules-load.d/net.conf:2",
            "/etc/modules:1",
            "/etc/modprobe.d/local.conf:1"
        ]
    );
}

#[test]
fn a_file_in_etc_masks_the_packaged_cis_file() {
    let tree = Tree::new("");
    tree.write("/usr/lib/modprobe.d/CIS.conf", CIS_FILE);
    assert_eq!(tree.check("deny.cis-list").outcome.status, Status::Pass);
    tree.write("/etc/modprobe.d/CIS.conf", "");
    let masked = tree.check("deny.cis-list");
    assert_eq!(masked.outcome.status, Status::Fail);
    assert_eq!(masked.outcome.data["missing"], 13);
}

fn initramfs_image(conf: &[u8]) -> Vec<u8> {
    let mut image =
        crate::posture::initramfs::tests::archive(&[("kernel/x86/microcode/x.bin", b"u")]);
    image.extend(
        zstd::encode_all(
            &crate::posture::initramfs::tests::archive(&[
                ("etc/modprobe.d/cis.conf", conf),
                (
                    &format!("usr/lib/modules/{RELEASE}/kernel/fs/udf/udf.ko"),
                    b"\x7fELF",
                ),
                (
                    &format!("usr/lib/modules/{RELEASE}/kernel/fs/ext4/ext4.ko.zst"),
                    b"x",
                ),
            ])[..],
            3,
        )
        .unwrap(),
    );
    image
}

fn set_mtime(path: &Path, seconds_ago: u64) {
    let time = std::time::SystemTime::now() - std::time::Duration::from_secs(seconds_ago);
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(time)
        .unwrap();
}

#[test]
fn an_initramfs_older_than_modprobe_d_is_stale() {
    let tree = Tree::new("");
    let image = format!("/boot/initrd.img-{RELEASE}");
    tree.write(&image, initramfs_image(b""));
    tree.write("/etc/modprobe.d/cis.conf", "blacklist udf\n");
    set_mtime(&tree.path("/etc/modprobe.d/cis.conf"), 10);
    let dir = tree.path("/etc/modprobe.d");
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(100);
    fs::File::open(&dir).unwrap().set_modified(old).unwrap();
    set_mtime(&tree.path(&image), 50);
    let stale = tree.check("initramfs.fresh");
    assert_eq!(stale.outcome.status, Status::Fail, "{stale:?}");
    assert_eq!(
        stale.outcome.data["newest_config"],
        "/etc/modprobe.d/cis.conf"
    );
    assert_eq!(
        stale.outcome.fix,
        [format!("update-initramfs -u -k {RELEASE}")]
    );
    set_mtime(&tree.path(&image), 1);
    assert_eq!(tree.check("initramfs.fresh").outcome.status, Status::Pass);
}

#[test]
fn denied_modules_in_the_initramfs_are_named_and_its_own_config_read() {
    let tree = Tree::new("");
    let image = format!("/boot/initrd.img-{RELEASE}");
    tree.write(&image, initramfs_image(b"# nothing\n"));
    let open = tree.check("initramfs.denied-modules");
    assert_eq!(open.outcome.status, Status::Fail, "{open:?}");
    assert_eq!(open.outcome.data["unhindered"], serde_json::json!(["udf"]));
    assert_eq!(open.outcome.data["files"], 4);
    tree.write(&image, initramfs_image(b"install udf /bin/true\n"));
    let closed = tree.check("initramfs.denied-modules");
    assert_eq!(closed.outcome.status, Status::Warn);
    assert_eq!(
        closed.outcome.data["denied_inside"],
        serde_json::json!(["udf"])
    );
}

#[test]
fn a_corrupt_initramfs_is_unknown_naming_the_file_and_offset() {
    let tree = Tree::new("");
    let image = format!("/boot/initrd.img-{RELEASE}");
    let mut bytes = initramfs_image(b"");
    bytes.truncate(bytes.len() - 20);
    tree.write(&image, bytes);
    let finding = tree.check("initramfs.denied-modules");
    assert_eq!(finding.outcome.status, Status::Unknown);
    assert!(
        finding
            .outcome
            .summary
            .starts_with(&format!("{image}: offset ")),
        "{}",
        finding.outcome.summary
    );
}

#[test]
fn audit_rules_files_and_todays_log_are_read() {
    let tree = Tree::new("");
    let warn = tree.check("audit.module-syscalls");
    assert_eq!(warn.outcome.status, Status::Warn);
    assert!(warn.outcome.fix[0].contains("-S init_module,delete_module,finit_module -k modules"));
    tree.write(
        "/etc/audit/rules.d/modules.rules",
        "-a always,exit -F arch=b64 -S init_module,delete_module,finit_module -k modules\n",
    );
    let now = chrono::Utc::now().timestamp();
    tree.write(
        "/var/log/audit/audit.log",
        format!(
            "type=SYSCALL msg=audit({now}.100:5): arch=c000003e syscall=313 key=\"modules\"\n\
             type=PATH msg=audit({now}.100:5): key=\"modules\"\n\
             type=SYSCALL msg=audit(1000.0:1): syscall=313 key=\"modules\"\n\
             type=SYSCALL msg=audit({now}.2:6): syscall=2 key=\"files\"\n"
        ),
    );
    let pass = tree.check("audit.module-syscalls");
    assert_eq!(pass.outcome.status, Status::Pass, "{pass:?}");
    assert_eq!(pass.outcome.data["events_today"], 1);
}

#[test]
fn exit_codes_follow_the_worst_status_and_unknown_ids_are_refused() {
    let report = |statuses: &[Status]| Report {
        version: REPORT_VERSION,
        root: "/".into(),
        kernel: None,
        as_root: true,
        not_checked_without_root: vec![],
        counts: Counts::default(),
        findings: statuses
            .iter()
            .map(|s| Finding {
                id: "x",
                section: Section::Kernel,
                title: "x",
                outcome: Outcome::new(*s, ""),
            })
            .collect(),
    };
    assert_eq!(report(&[Status::Pass]).exit_code(), 0);
    assert_eq!(report(&[Status::Pass, Status::Unknown]).exit_code(), 1);
    assert_eq!(report(&[Status::Warn, Status::Pass]).exit_code(), 1);
    assert_eq!(report(&[Status::Warn, Status::Fail]).exit_code(), 2);
    let err = select(&["kernel.nope".to_owned()]).unwrap_err().to_string();
    assert!(
        err.starts_with("no check kernel.nope; the checks are: boot.secure-boot, "),
        "{err}"
    );
}

#[test]
fn the_report_serialises_as_documented() {
    let tree = Tree::new(MODULES);
    let host = Host::read(HostRoot::new(tree.dir.path()));
    let report = run(&host, &select(&[]).unwrap());
    let json: Value = serde_json::to_value(&report).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["kernel"], RELEASE);
    let finding = &json["findings"][0];
    for key in [
        "id",
        "section",
        "title",
        "status",
        "summary",
        "evidence",
        "fix",
        "data",
        "needs_root",
    ] {
        assert!(finding.get(key).is_some(), "{key} in {finding}");
    }
    let ids: Vec<&str> = CHECKS.iter().map(|c| c.id).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids, unique);
    let script = fix_script(&report);
    assert!(script.starts_with("#!/bin/sh\n"));
    assert!(
        script.contains("\n# modules.out-of-tree (warn): "),
        "{script}"
    );
    assert!(script.contains("\nmodprobe -r vboxdrv\n"), "{script}");
    let text = table(&report, false);
    assert!(text.contains("Loaded modules\n"), "{text}");
    assert!(text.contains("  WARN    modules.out-of-tree"), "{text}");
}
