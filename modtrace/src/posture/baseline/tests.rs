use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use super::*;
use crate::posture::HostRoot;

const RELEASE: &str = "6.1.0-test-amd64";
const PACKAGE: &str = "linux-image-6.1.0-test-amd64";

/// A host with three modules, one of them a real signed one, all shipped
/// by one package whose md5sums the dpkg database holds.
fn host() -> (tempfile::TempDir, HostRoot) {
    let dir = tempfile::tempdir().unwrap();
    let root = HostRoot::new(dir.path());
    let write = |path: &str, bytes: &[u8]| {
        let path = root.path(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    };
    write(
        "/proc/sys/kernel/osrelease",
        format!("{RELEASE}\n").as_bytes(),
    );
    let dummy = fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/modules/dummy-6.1.ko"),
    )
    .unwrap();
    let modules = [
        ("kernel/drivers/net/dummy.ko", dummy.as_slice()),
        ("kernel/fs/udf/udf.ko", b"udf bytes"),
        ("kernel/net/sctp/sctp.ko.xz", b"sctp bytes"),
    ];
    let mut list = String::new();
    let mut md5sums = String::new();
    for (file, bytes) in modules {
        let path = format!("/lib/modules/{RELEASE}/{file}");
        write(&path, bytes);
        list.push_str(&format!("{path}\n"));
        let md5 = dpkg::md5_of(&root.path(&path)).unwrap();
        md5sums.push_str(&format!("{md5}  {}\n", &path[1..]));
    }
    write(
        &format!("/lib/modules/{RELEASE}/modules.dep"),
        b"not a module\n",
    );
    write(
        &format!("/var/lib/dpkg/info/{PACKAGE}.list"),
        list.as_bytes(),
    );
    write(
        &format!("/var/lib/dpkg/info/{PACKAGE}.md5sums"),
        md5sums.as_bytes(),
    );
    (dir, root)
}

fn module(root: &HostRoot, file: &str) -> std::path::PathBuf {
    root.path(format!("/lib/modules/{RELEASE}/{file}"))
}

fn kinds(verification: &Verification) -> Vec<(ChangeKind, &str, bool)> {
    verification
        .changes
        .iter()
        .map(|c| (c.kind, c.path.rsplit('/').next().unwrap(), c.by_package))
        .collect()
}

#[test]
fn create_records_every_module_with_its_package_signer_and_identity() {
    let (_dir, root) = host();
    let baseline = create(&root, CreateOptions::default()).unwrap();
    assert_eq!(baseline.kernels, [RELEASE]);
    let paths: Vec<&str> = baseline.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/lib/modules/6.1.0-test-amd64/kernel/drivers/net/dummy.ko",
            "/lib/modules/6.1.0-test-amd64/kernel/fs/udf/udf.ko",
            "/lib/modules/6.1.0-test-amd64/kernel/net/sctp/sctp.ko.xz",
        ]
    );
    let dummy = &baseline.files[0];
    assert_eq!(dummy.package.as_deref(), Some(PACKAGE));
    assert!(dummy.signer.is_some(), "{dummy:?}");
    let meta = fs::metadata(module(&root, "kernel/drivers/net/dummy.ko")).unwrap();
    assert_eq!(dummy.stat(), Stat::of(&meta));
    assert_eq!(
        baseline.files[1].sha256,
        crate::enrich::module_image::sha256_hex(b"udf bytes")
    );
}

#[test]
fn the_file_is_0600_carries_its_sha256_and_reads_back() {
    let (dir, root) = host();
    let baseline = create(&root, CreateOptions::default()).unwrap();
    let path = dir.path().join("out/baseline.json");
    write(&baseline, &path).unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(read(&path, false).unwrap(), baseline);
    assert_eq!(load(&root, &path, false).unwrap(), baseline);
}

#[test]
fn an_edited_foreign_old_or_other_kernels_baseline_is_refused_naming_the_file() {
    let (dir, root) = host();
    let baseline = create(&root, CreateOptions::default()).unwrap();
    let path = dir.path().join("baseline.json");
    write(&baseline, &path).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    let shown = path.display().to_string();

    fs::write(&path, text.replacen("\"size\":9", "\"size\":8", 1)).unwrap();
    let edited = read(&path, false).unwrap_err().to_string();
    assert!(
        edited.starts_with(&format!("{shown} was edited: its content's sha256 is ")),
        "{edited}"
    );

    fs::write(&path, "{\"files\": []}").unwrap();
    let foreign = read(&path, false).unwrap_err().to_string();
    assert!(
        foreign.starts_with(&format!("{shown} is not a modtrace baseline")),
        "{foreign}"
    );
    fs::write(&path, "garbage").unwrap();
    assert!(read(&path, false)
        .unwrap_err()
        .to_string()
        .contains("not JSON"));

    fs::write(&path, text.replacen("\"version\":1", "\"version\":0", 1)).unwrap();
    let old = read(&path, false).unwrap_err().to_string();
    assert!(old.contains("is a baseline of version 0"), "{old}");

    write(&baseline, &path).unwrap();
    fs::write(root.path("/proc/sys/kernel/osrelease"), "6.12.0-other\n").unwrap();
    let other = load(&root, &path, false).unwrap_err().to_string();
    assert_eq!(
        other,
        format!("{shown} holds the modules of {RELEASE}, not of the running kernel 6.12.0-other: run `modtrace baseline create` for it")
    );
}

#[test]
fn an_unchanged_tree_verifies_without_rehashing_unless_full() {
    let (_dir, root) = host();
    let baseline = create(&root, CreateOptions::default()).unwrap();
    let quick = verify(&root, &baseline, VerifyOptions::default()).unwrap();
    assert_eq!(
        (quick.checked, quick.rehashed, quick.exit_code()),
        (3, 0, 0)
    );
    let full = VerifyOptions {
        full: true,
        progress: false,
    };
    let all = verify(&root, &baseline, full).unwrap();
    assert_eq!((all.checked, all.rehashed, all.exit_code()), (3, 3, 0));
}

#[test]
fn a_planted_module_is_unexplained_and_a_package_upgrade_is_told_apart() {
    let (_dir, root) = host();
    let baseline = create(&root, CreateOptions::default()).unwrap();
    // A package upgrade: new bytes, and the package's md5sums say so.
    let udf = module(&root, "kernel/fs/udf/udf.ko");
    fs::write(&udf, b"udf bytes, version 2").unwrap();
    let md5sums = root.path(format!("/var/lib/dpkg/info/{PACKAGE}.md5sums"));
    let text = fs::read_to_string(&md5sums).unwrap();
    let new_md5 = dpkg::md5_of(&udf).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.ends_with("udf.ko") {
                format!("{new_md5}  {}\n", l.split_once("  ").unwrap().1)
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(&md5sums, text).unwrap();
    // Planted: sctp replaced, a new module added, dummy removed.
    fs::write(module(&root, "kernel/net/sctp/sctp.ko.xz"), b"rootkit").unwrap();
    fs::create_dir_all(module(&root, "kernel/extra")).unwrap();
    fs::write(module(&root, "kernel/extra/evil.ko"), b"evil").unwrap();
    fs::remove_file(module(&root, "kernel/drivers/net/dummy.ko")).unwrap();
    let verification = verify(&root, &baseline, VerifyOptions::default()).unwrap();
    assert_eq!(
        kinds(&verification),
        [
            (ChangeKind::Removed, "dummy.ko", false),
            (ChangeKind::Added, "evil.ko", false),
            (ChangeKind::Changed, "udf.ko", true),
            (ChangeKind::Changed, "sctp.ko.xz", false),
        ]
    );
    assert_eq!(verification.exit_code(), 2);
    let sctp = &verification.changes[3];
    assert!(sctp.why.contains("no package explains it"), "{}", sctp.why);
    assert!(verification.changes[0]
        .why
        .contains("still ships it: removed by hand"));
    assert!(verification.text().contains("UNEXPLAINED"));
}

#[test]
fn the_identity_export_has_its_documented_layout() {
    let (_dir, root) = host();
    let baseline = create(&root, CreateOptions::default()).unwrap();
    let bytes = export_ids(&baseline);
    assert_eq!(&bytes[..8], export::MAGIC);
    assert_eq!(u64::from_le_bytes(bytes[8..16].try_into().unwrap()), 3);
    assert_eq!(bytes.len(), 16 + 3 * export::RECORD_LEN);
    let first = &bytes[16..16 + export::RECORD_LEN];
    let inode = u64::from_le_bytes(first[8..16].try_into().unwrap());
    assert!(baseline.files.iter().any(|f| f.inode == inode));
}
