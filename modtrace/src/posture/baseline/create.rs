//! Recording every module file: walked, then hashed in parallel.
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use tracing::warn;

use super::{dpkg::Dpkg, Baseline, BaselineError, FileRecord, Stat, FORMAT, VERSION};
use crate::{
    enrich::module_image::{self, Limits},
    posture::HostRoot,
};

/// Where every kernel's modules are (merged /usr: the same as /usr/lib/modules).
const MODULES_DIR: &str = "/lib/modules";

#[derive(Debug, Clone, Copy, Default)]
pub struct CreateOptions {
    /// Every tree under /lib/modules, not only the running kernel's.
    pub all_kernels: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// A module file by its name, as kmod finds them.
pub(super) fn is_module_file(path: &Path) -> bool {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

/// The kernel releases to record.
fn kernels(root: &HostRoot, all: bool) -> Result<Vec<String>, BaselineError> {
    if !all {
        return Ok(vec![root.kernel_release()?]);
    }
    let dir = root.path(MODULES_DIR);
    let entries = std::fs::read_dir(&dir).map_err(|source| BaselineError::Read {
        path: MODULES_DIR.into(),
        source,
    })?;
    let mut kernels: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    kernels.sort();
    Ok(kernels)
}

/// Every module file of the trees of `kernels`, by their paths under root.
pub(super) fn module_files(
    root: &HostRoot,
    kernels: &[String],
) -> Result<Vec<PathBuf>, BaselineError> {
    let mut files = Vec::new();
    for kernel in kernels {
        let dir = root.path(format!("{MODULES_DIR}/{kernel}"));
        if !dir.is_dir() {
            return Err(BaselineError::NoModules {
                path: root.host_path(&dir),
            });
        }
        for entry in walkdir::WalkDir::new(&dir) {
            let entry = entry.map_err(|e| BaselineError::Read {
                path: root.host_path(e.path().unwrap_or(&dir)),
                source: e.into(),
            })?;
            if entry.file_type().is_file() && is_module_file(entry.path()) {
                files.push(entry.into_path());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Hashes and reads one file.
pub(super) fn record(
    root: &HostRoot,
    path: &Path,
    dpkg: &Dpkg,
) -> Result<FileRecord, BaselineError> {
    let host_path = root.host_path(path);
    let read_error = |source| BaselineError::Read {
        path: host_path.clone(),
        source,
    };
    let meta = std::fs::symlink_metadata(path).map_err(read_error)?;
    let bytes = std::fs::read(path).map_err(read_error)?;
    let shown = host_path.display().to_string();
    let (sha256, decompressed_sha256, signer) =
        match module_image::analyze(&bytes, &Limits::default()) {
            Ok(analysis) => (
                analysis.sha256,
                analysis.decompressed_sha256,
                analysis.signature.signer,
            ),
            Err(err) => {
                warn!("{shown}: recorded by its hash only: {err}");
                (module_image::sha256_hex(&bytes), None, None)
            }
        };
    let stat = Stat::of(&meta);
    Ok(FileRecord {
        package: dpkg.owner(&shown).map(str::to_owned),
        path: shown,
        size: stat.size,
        mtime: stat.mtime,
        ctime: stat.ctime,
        dev_major: stat.dev_major,
        dev_minor: stat.dev_minor,
        inode: stat.inode,
        sha256,
        decompressed_sha256,
        signer,
    })
}

pub(super) fn progress_bar(len: usize, shown: bool) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} module files {eta}") {
        bar.set_style(style);
    }
    bar
}

pub fn create(root: &HostRoot, options: CreateOptions) -> Result<Baseline, BaselineError> {
    let kernels = kernels(root, options.all_kernels)?;
    let files = module_files(root, &kernels)?;
    let dpkg = Dpkg::read(root);
    let bar = progress_bar(files.len(), options.progress);
    let records = files
        .par_iter()
        .map(|path| {
            let record = record(root, path, &dpkg);
            bar.inc(1);
            record
        })
        .collect::<Result<Vec<_>, _>>()?;
    bar.finish_and_clear();
    Ok(Baseline {
        format: FORMAT.to_owned(),
        version: VERSION,
        created: crate::clock::Clock.rfc3339(None),
        kernels,
        files: records,
    })
}
