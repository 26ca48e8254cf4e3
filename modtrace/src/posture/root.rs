//! The filesystem a posture command reads: `/` on a live host, or a
//! directory standing for it (`--root`: an image, a test's fixture tree).
use std::{
    io,
    path::{Path, PathBuf},
};

#[derive(Debug, Clone)]
pub struct HostRoot {
    dir: PathBuf,
}

/// A file of the host that could not be read, by its path on the host.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct ReadError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl ReadError {
    /// Root could have read it.
    pub fn needs_root(&self) -> bool {
        self.source.kind() == io::ErrorKind::PermissionDenied
    }

    pub fn not_found(&self) -> bool {
        self.source.kind() == io::ErrorKind::NotFound
    }
}

impl HostRoot {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the host's absolute `path` is under this root.
    pub fn path(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        self.dir.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// The host's path of `path` (a path under this root), as findings name it.
    pub fn host_path(&self, path: &Path) -> PathBuf {
        match path.strip_prefix(&self.dir) {
            Ok(rest) => Path::new("/").join(rest),
            Err(_) => path.to_path_buf(),
        }
    }

    pub fn read(&self, path: &str) -> Result<String, ReadError> {
        std::fs::read_to_string(self.path(path)).map_err(|source| ReadError {
            path: path.into(),
            source,
        })
    }

    pub fn read_bytes(&self, path: &str) -> Result<Vec<u8>, ReadError> {
        std::fs::read(self.path(path)).map_err(|source| ReadError {
            path: path.into(),
            source,
        })
    }

    /// The running kernel's release (`uname -r`), from the root's procfs so
    /// that a fixture tree names its own kernel.
    pub fn kernel_release(&self) -> Result<String, ReadError> {
        Ok(self.read("/proc/sys/kernel/osrelease")?.trim().to_owned())
    }

    /// Each of the host's `dirs` under this root, as the strings the
    /// modprobe.d reader takes.
    pub fn dirs(&self, dirs: &[&str]) -> Vec<String> {
        dirs.iter()
            .map(|d| self.path(d).display().to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_both_ways() {
        let root = HostRoot::new("/tmp/img");
        assert_eq!(
            root.path("/etc/modprobe.d"),
            Path::new("/tmp/img/etc/modprobe.d")
        );
        assert_eq!(
            root.host_path(Path::new("/tmp/img/etc/x.conf")),
            Path::new("/etc/x.conf")
        );
        assert_eq!(HostRoot::new("/").path("/proc"), Path::new("/proc"));
    }
}
