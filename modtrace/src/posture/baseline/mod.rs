//! `modtrace baseline`: every module file on disk, recorded (path, size,
//! times, device and inode, sha256 of the file and of its decompressed
//! image, signer, owning Debian package) and verified later against the
//! disk and the package manager's own checksums.
//!
//! The file (docs/baseline.md) is JSON: `{"sha256": …, "baseline": {…}}`,
//! where `sha256` is that of the `baseline` object as serialised compactly,
//! so that an edited file is refused. It is written atomically, mode 0600.
mod create;
mod dpkg;
mod export;
#[cfg(test)]
mod tests;
mod verify;

use std::{
    io::Write as _,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub use create::{create, CreateOptions};
pub use export::export_ids;
pub use verify::{verify, Change, ChangeKind, Verification, VerifyOptions};

/// Where `create` writes and `verify` reads by default.
pub const DEFAULT_PATH: &str = "/var/lib/modtrace/baseline.json";
/// The `format` field, so that another program's JSON is told apart.
const FORMAT: &str = "modtrace-baseline";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseline {
    pub format: String,
    pub version: u32,
    pub created: String,
    /// The kernel releases whose module trees it holds.
    pub kernels: Vec<String>,
    pub files: Vec<FileRecord>,
}

/// A time as stat(2) gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: i64,
}

/// One module file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The host's path.
    pub path: String,
    pub size: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// st_dev split as the kernel's MAJOR/MINOR, which a kernel-side
    /// allow-list compares with its own dev_t.
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    pub sha256: String,
    pub decompressed_sha256: Option<String>,
    pub signer: Option<String>,
    /// The Debian package that ships it, from the dpkg database.
    pub package: Option<String>,
}

/// The stat fields that say a file may have changed: verify rehashes only
/// a file whose fields differ (unless `--full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
}

impl Stat {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        let dev = meta.dev();
        Stat {
            size: meta.size(),
            mtime: Timestamp {
                sec: meta.mtime(),
                nsec: meta.mtime_nsec(),
            },
            ctime: Timestamp {
                sec: meta.ctime(),
                nsec: meta.ctime_nsec(),
            },
            dev_major: libc::major(dev),
            dev_minor: libc::minor(dev),
            inode: meta.ino(),
        }
    }
}

impl FileRecord {
    pub fn stat(&self) -> Stat {
        Stat {
            size: self.size,
            mtime: self.mtime,
            ctime: self.ctime,
            dev_major: self.dev_major,
            dev_minor: self.dev_minor,
            inode: self.inode,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Insecure(#[from] crate::policy::secure_file::SecureFileError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a modtrace baseline: {detail}")]
    Foreign { path: PathBuf, detail: String },
    #[error("{path} is a baseline of version {found}; this modtrace reads version {VERSION}: run `modtrace baseline create` again")]
    Version { path: PathBuf, found: u64 },
    #[error("{path} was edited: its content's sha256 is {actual}, the file says {recorded}")]
    Edited {
        path: PathBuf,
        recorded: String,
        actual: String,
    },
    #[error("{path} holds the modules of {recorded}, not of the running kernel {running}: run `modtrace baseline create` for it")]
    OtherKernel {
        path: PathBuf,
        recorded: String,
        running: String,
    },
    #[error("no module directory {path}")]
    NoModules { path: PathBuf },
    #[error(transparent)]
    Host(#[from] super::ReadError),
}

impl BaselineError {
    /// The kind of the I/O error behind it, if one is.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        use crate::policy::secure_file::SecureFileError;
        match self {
            BaselineError::Read { source, .. }
            | BaselineError::Write { source, .. }
            | BaselineError::Insecure(SecureFileError::Read { source, .. }) => Some(source.kind()),
            BaselineError::Host(err) => Some(err.source.kind()),
            _ => None,
        }
    }
}

fn sha256_of(baseline: &serde_json::Value) -> String {
    let bytes = serde_json::to_vec(baseline).unwrap_or_default();
    crate::enrich::module_image::sha256_hex(&bytes)
}

/// Writes `baseline` to `path` atomically (a temporary file in the same
/// directory, then a rename), mode 0600, with its own sha256.
pub fn write(baseline: &Baseline, path: &Path) -> Result<(), BaselineError> {
    let write_error = |source| BaselineError::Write {
        path: path.into(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(write_error)?;
    let body = serde_json::to_value(baseline).map_err(|e| write_error(e.into()))?;
    let file = serde_json::json!({"sha256": sha256_of(&body), "baseline": body});
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(write_error)?;
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(write_error)?;
    serde_json::to_writer(&mut temp, &file).map_err(|e| write_error(e.into()))?;
    temp.write_all(b"\n").map_err(write_error)?;
    temp.as_file().sync_all().map_err(write_error)?;
    temp.persist(path).map_err(|e| write_error(e.error))?;
    Ok(())
}

/// Reads a baseline for verifying this host: checked as [`read`] does, and
/// holding the running kernel's tree.
pub fn load(
    root: &super::HostRoot,
    path: &Path,
    check_owner: bool,
) -> Result<Baseline, BaselineError> {
    let baseline = read(path, check_owner)?;
    verify::check_kernel(root, &baseline, path)?;
    Ok(baseline)
}

/// Reads and checks a baseline file: ours, our version, unedited. With
/// `check_owner`, only a file that root owns and no one else may write.
pub fn read(path: &Path, check_owner: bool) -> Result<Baseline, BaselineError> {
    let text = crate::policy::secure_file::read(path, check_owner)?;
    let foreign = |detail: String| BaselineError::Foreign {
        path: path.into(),
        detail,
    };
    let file: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| foreign(format!("not JSON: {e}")))?;
    let body = &file["baseline"];
    if body["format"] != FORMAT {
        return Err(foreign(format!(
            "its baseline.format is {}, not {FORMAT:?}",
            body["format"]
        )));
    }
    match body["version"].as_u64() {
        Some(v) if v == u64::from(VERSION) => {}
        found => {
            return Err(BaselineError::Version {
                path: path.into(),
                found: found.unwrap_or(0),
            })
        }
    }
    let recorded = file["sha256"].as_str().unwrap_or_default().to_owned();
    let actual = sha256_of(body);
    if recorded != actual {
        return Err(BaselineError::Edited {
            path: path.into(),
            recorded,
            actual,
        });
    }
    serde_json::from_value(body.clone()).map_err(|e| foreign(e.to_string()))
}
