//! Files that decide what the root collector alerts on (the policy, hash
//! lists) must be as trustworthy as the collector: owned by root and writable
//! by no one else, or anyone who can edit them can blind it. sshd refuses
//! such files for the same reason.
use std::{
    fs::File,
    io::{self, Read},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum SecureFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path} is larger than {limit} bytes; no policy or hash list is that big")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("refusing {path}: it is owned by uid {uid}, not root, so that user could change what modtrace alerts on; run `chown root {path}`")]
    NotRootOwned { path: PathBuf, uid: u32 },
    #[error("refusing {path}: its mode {mode:04o} lets group or others write it, so they could change what modtrace alerts on; run `chmod go-w {path}`")]
    Writable { path: PathBuf, mode: u32 },
}

/// Reads `path` whole; with `check_owner`, only if root owns it and neither
/// group nor others may write it. The checks use the opened file, so the file
/// cannot be swapped between check and read.
pub fn read(path: &Path, check_owner: bool) -> Result<String, SecureFileError> {
    read_at_most(path, check_owner, MAX_BYTES)
}

fn read_at_most(path: &Path, check_owner: bool, limit: u64) -> Result<String, SecureFileError> {
    let read_error = |source| SecureFileError::Read {
        path: path.into(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(SecureFileError::NotAFile { path: path.into() });
    }
    if check_owner {
        check(path, meta.uid(), meta.mode())?;
    }
    let mut text = String::new();
    (&mut file)
        .take(limit + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > limit {
        return Err(SecureFileError::TooLarge {
            path: path.into(),
            limit,
        });
    }
    Ok(text)
}

/// Largest policy or hash-list file read: a million sha256 lines fit.
const MAX_BYTES: u64 = 128 << 20;

/// The ownership rule alone, for callers that only want to warn.
pub fn check(path: &Path, uid: u32, mode: u32) -> Result<(), SecureFileError> {
    if uid != 0 {
        return Err(SecureFileError::NotRootOwned {
            path: path.into(),
            uid,
        });
    }
    if mode & 0o022 != 0 {
        return Err(SecureFileError::Writable {
            path: path.into(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_over_the_limit_is_refused_without_reading_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.toml");
        std::fs::write(&path, "x".repeat(11)).unwrap();
        assert_eq!(read_at_most(&path, false, 11).unwrap().len(), 11);
        let text = read_at_most(&path, false, 10).unwrap_err().to_string();
        assert!(text.contains("larger than 10 bytes"), "{text}");
    }

    #[test]
    fn root_owned_and_not_writable_by_others_is_accepted() {
        assert!(check(Path::new("/p"), 0, 0o100644).is_ok());
        assert!(check(Path::new("/p"), 0, 0o100600).is_ok());
    }

    #[test]
    fn other_owners_are_refused_with_the_fix() {
        let err = check(Path::new("/etc/p.toml"), 1000, 0o100644).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("owned by uid 1000, not root"), "{text}");
        assert!(text.contains("chown root /etc/p.toml"), "{text}");
    }

    #[test]
    fn group_or_other_writable_is_refused_with_the_fix() {
        for mode in [0o100664, 0o100646, 0o100666] {
            let text = check(Path::new("/p"), 0, mode).unwrap_err().to_string();
            assert!(text.contains("lets group or others write it"), "{text}");
            assert!(text.contains("chmod go-w /p"), "{text}");
        }
    }

    #[test]
    fn directories_are_not_policies() {
        let err = read(Path::new("/"), false).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}
