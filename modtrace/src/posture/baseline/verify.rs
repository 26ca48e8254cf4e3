//! Comparing the disk with a baseline, and each change with what the
//! package manager shipped.
use std::collections::{BTreeMap, BTreeSet};

use rayon::prelude::*;
use serde::Serialize;

use super::{
    create::{module_files, progress_bar, record},
    dpkg::{md5_of, Dpkg},
    Baseline, BaselineError, FileRecord, Stat,
};
use crate::posture::HostRoot;

#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions {
    /// Rehash every file, not only those whose stat changed.
    pub full: bool,
    pub progress: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Added,
    Removed,
    Changed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub kind: ChangeKind,
    pub path: String,
    /// The package that ships the path now (for a removed file: that
    /// shipped it when the baseline was made).
    pub package: Option<String>,
    /// A package explains the change: the file's md5 is the one its package
    /// shipped, or a removed file is no longer in any package.
    pub by_package: bool,
    pub why: String,
    pub baseline_sha256: Option<String>,
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub kernels: Vec<String>,
    /// Files on disk compared.
    pub checked: usize,
    /// Of those, how many were read and hashed again.
    pub rehashed: usize,
    pub changes: Vec<Change>,
    pub by_package: usize,
    pub unexplained: usize,
}

impl Verification {
    /// 0 when nothing changed, 1 when every change is a package's, 2 when
    /// any change is unexplained.
    pub fn exit_code(&self) -> u8 {
        if self.unexplained > 0 {
            2
        } else if self.changes.is_empty() {
            0
        } else {
            1
        }
    }
}

/// What one file on disk is against the baseline.
enum Seen {
    Unchanged { rehashed: bool },
    Differs(Box<FileRecord>),
    New(Box<FileRecord>),
}

fn compare(
    root: &HostRoot,
    path: &std::path::Path,
    old: Option<&FileRecord>,
    full: bool,
    dpkg: &Dpkg,
) -> Result<Seen, BaselineError> {
    if let Some(old) = old {
        if !full {
            let meta = std::fs::symlink_metadata(path).map_err(|source| BaselineError::Read {
                path: root.host_path(path),
                source,
            })?;
            if Stat::of(&meta) == old.stat() {
                return Ok(Seen::Unchanged { rehashed: false });
            }
        }
    }
    let now = record(root, path, dpkg)?;
    Ok(match old {
        Some(old) if old.sha256 == now.sha256 => Seen::Unchanged { rehashed: true },
        Some(_) => Seen::Differs(Box::new(now)),
        None => Seen::New(Box::new(now)),
    })
}

/// Whether the file's package shipped exactly these bytes.
fn explain(root: &HostRoot, dpkg: &Dpkg, path: &str) -> (Option<String>, bool, String) {
    let Some(package) = dpkg.owner(path) else {
        return (None, false, "no package ships this path".to_owned());
    };
    let shipped = dpkg.shipped_md5(package, path);
    let actual = md5_of(&root.path(path)).ok();
    let (by_package, why) = match (shipped, actual) {
        (Some(shipped), Some(actual)) if shipped == actual => {
            (true, format!("as {package} ships it (md5 {actual})"))
        }
        (Some(shipped), Some(actual)) => (
            false,
            format!("md5 {actual}, but {package} shipped md5 {shipped}: no package explains it"),
        ),
        (None, _) => (
            false,
            format!("{package} lists it but has no md5sum for it"),
        ),
        (_, None) => (
            false,
            "cannot read it to compare with its package".to_owned(),
        ),
    };
    (Some(package.to_owned()), by_package, why)
}

pub fn verify(
    root: &HostRoot,
    baseline: &Baseline,
    options: VerifyOptions,
) -> Result<Verification, BaselineError> {
    let dpkg = Dpkg::read(root);
    let old: BTreeMap<&str, &FileRecord> = baseline
        .files
        .iter()
        .map(|f| (f.path.as_str(), f))
        .collect();
    let mut present = Vec::new();
    for kernel in &baseline.kernels {
        match module_files(root, std::slice::from_ref(kernel)) {
            Ok(files) => present.extend(files),
            // A removed kernel: its files show as removed.
            Err(BaselineError::NoModules { .. }) => {}
            Err(err) => return Err(err),
        }
    }
    let bar = progress_bar(present.len(), options.progress);
    let seen = present
        .par_iter()
        .map(|path| {
            let shown = root.host_path(path).display().to_string();
            let seen = compare(
                root,
                path,
                old.get(shown.as_str()).copied(),
                options.full,
                &dpkg,
            );
            bar.inc(1);
            seen.map(|s| (shown, s))
        })
        .collect::<Result<Vec<_>, _>>()?;
    bar.finish_and_clear();
    let mut changes = Vec::new();
    let mut rehashed = 0;
    let on_disk: BTreeSet<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
    for (path, seen) in &seen {
        let (kind, now) = match seen {
            Seen::Unchanged { rehashed: again } => {
                rehashed += usize::from(*again);
                continue;
            }
            Seen::Differs(now) => (ChangeKind::Changed, now),
            Seen::New(now) => (ChangeKind::Added, now),
        };
        rehashed += 1;
        let (package, by_package, why) = explain(root, &dpkg, path);
        changes.push(Change {
            kind,
            path: path.clone(),
            package,
            by_package,
            why,
            baseline_sha256: old.get(path.as_str()).map(|f| f.sha256.clone()),
            sha256: Some(now.sha256.clone()),
        });
    }
    for (path, record) in &old {
        if on_disk.contains(path) {
            continue;
        }
        let still_shipped = dpkg.owner(path);
        changes.push(Change {
            kind: ChangeKind::Removed,
            path: (*path).to_owned(),
            package: record.package.clone(),
            by_package: still_shipped.is_none() && record.package.is_some(),
            why: match (still_shipped, &record.package) {
                (Some(package), _) => format!("{package} still ships it: removed by hand"),
                (None, Some(package)) => format!("{package} no longer ships it"),
                (None, None) => "no package shipped it".to_owned(),
            },
            baseline_sha256: Some(record.sha256.clone()),
            sha256: None,
        });
    }
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    let by_package = changes.iter().filter(|c| c.by_package).count();
    Ok(Verification {
        kernels: baseline.kernels.clone(),
        checked: seen.len(),
        rehashed,
        unexplained: changes.len() - by_package,
        by_package,
        changes,
    })
}

/// The baseline must hold the running kernel's tree.
pub(super) fn check_kernel(
    root: &HostRoot,
    baseline: &Baseline,
    path: &std::path::Path,
) -> Result<(), BaselineError> {
    let running = root.kernel_release()?;
    if baseline.kernels.contains(&running) {
        return Ok(());
    }
    Err(BaselineError::OtherKernel {
        path: path.into(),
        recorded: baseline.kernels.join(", "),
        running,
    })
}

impl Verification {
    /// One line per change, then the totals.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for change in &self.changes {
            let kind = match change.kind {
                ChangeKind::Added => "added",
                ChangeKind::Removed => "removed",
                ChangeKind::Changed => "changed",
            };
            let verdict = if change.by_package {
                "package"
            } else {
                "UNEXPLAINED"
            };
            out.push_str(&format!(
                "{kind:<8} {verdict:<12} {}: {}\n",
                change.path, change.why
            ));
        }
        out.push_str(&format!(
            "{} files checked ({} hashed again), {} changes: {} by packages, {} unexplained\n",
            self.checked,
            self.rehashed,
            self.changes.len(),
            self.by_package,
            self.unexplained
        ));
        out
    }
}
