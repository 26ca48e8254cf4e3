//! Which Debian package ships a module file, and the checksum it shipped
//! with, from the dpkg database (`/var/lib/dpkg/info/PKG.list` and
//! `PKG.md5sums`).
use std::{
    collections::HashMap,
    fs,
    io::Read as _,
    path::{Path, PathBuf},
};

use md5::{Digest as _, Md5};

use crate::posture::HostRoot;

const INFO_DIR: &str = "/var/lib/dpkg/info";

#[derive(Debug, Default)]
pub(super) struct Dpkg {
    info_dir: PathBuf,
    /// Module path (merged-/usr form) → package.
    owners: HashMap<String, String>,
}

/// Debian ships modules under /lib before trixie, /usr/lib after; with a
/// merged /usr both are one file, so both compare as /lib.
fn merged(path: &str) -> &str {
    path.strip_prefix("/usr")
        .filter(|p| p.starts_with("/lib/"))
        .unwrap_or(path)
}

impl Dpkg {
    /// The owners of every file under a `modules/` directory; none without
    /// a dpkg database.
    pub(super) fn read(root: &HostRoot) -> Self {
        let info_dir = root.path(INFO_DIR);
        let mut owners = HashMap::new();
        let Ok(entries) = fs::read_dir(&info_dir) else {
            return Self::default();
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(package) = name.strip_suffix(".list") else {
                continue;
            };
            let Ok(text) = fs::read_to_string(entry.path()) else {
                continue;
            };
            for line in text.lines().filter(|l| l.contains("/modules/")) {
                owners.insert(merged(line).to_owned(), package.to_owned());
            }
        }
        Self { info_dir, owners }
    }

    pub(super) fn owner(&self, path: &str) -> Option<&str> {
        self.owners.get(merged(path)).map(String::as_str)
    }

    /// The md5 `package` shipped `path` with.
    pub(super) fn shipped_md5(&self, package: &str, path: &str) -> Option<String> {
        let text = fs::read_to_string(self.info_dir.join(format!("{package}.md5sums"))).ok()?;
        text.lines().find_map(|line| {
            let (md5, file) = line.split_once("  ")?;
            (merged(&format!("/{file}")) == merged(path)).then(|| md5.to_owned())
        })
    }
}

/// md5 of a file, as md5sum prints it.
pub(super) fn md5_of(path: &Path) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Md5::new();
    let mut buffer = vec![0; 1 << 16];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
