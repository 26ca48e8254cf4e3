//! The `module.image` object of a load record: where the image came from
//! and what it is (the enrichment stage reads and parses it).
use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

use super::Text;

/// Where the module image of a load was read from, and what it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageReport {
    /// `caller-memory` (init_module's buffer), `fd` (finit_module's fd,
    /// through /proc) or `path` (the file by its name, after the call).
    pub source: Text,
    /// Whether it was taken while the call was in progress (see `snapshot`):
    /// after the call, the caller may have freed, closed or replaced it.
    pub during_call: bool,
    #[serde(flatten)]
    pub analysis: Option<Analysis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Compression of a module file, detected by magic bytes, not by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Xz,
    Zstd,
    Gzip,
}

impl Compression {
    /// The format whose magic `bytes` start with, if any.
    pub fn detect(bytes: &[u8]) -> Option<Compression> {
        const XZ: &[u8] = b"\xfd7zXZ\x00";
        const ZSTD: &[u8] = b"\x28\xb5\x2f\xfd";
        const GZIP: &[u8] = b"\x1f\x8b";
        if bytes.starts_with(XZ) {
            Some(Compression::Xz)
        } else if bytes.starts_with(ZSTD) {
            Some(Compression::Zstd)
        } else if bytes.starts_with(GZIP) {
            Some(Compression::Gzip)
        } else {
            None
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
        })
    }
}

/// What one module image is: the record's `module` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Analysis {
    /// SHA-256 (lowercase hex) of the bytes given: the file as on disk.
    pub sha256: String,
    /// SHA-256 of the decompressed image, for a compressed file.
    pub decompressed_sha256: Option<String>,
    pub compression: Option<Compression>,
    /// Size of the bytes given.
    pub size: u64,
    pub modinfo: Modinfo,
    pub signature: Signature,
    /// The name in the image's `struct module` (`.gnu.linkonce.this_module`),
    /// which is the name the kernel registers; `modinfo.name` can differ in a
    /// crafted module.
    pub this_module_name: Option<String>,
    /// Problems that left the analysis partial (for example no `.modinfo`).
    pub warnings: Vec<String>,
}

/// What `.modinfo` says. Text that is not UTF-8 appears as `\xNN`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Modinfo {
    pub name: Option<String>,
    pub license: Option<String>,
    pub description: Option<String>,
    /// Every `author=` entry, in order (modules often have several).
    pub author: Vec<String>,
    pub version: Option<String>,
    pub srcversion: Option<String>,
    pub vermagic: Option<String>,
    /// `depends=`, split at commas; empty when the module depends on none.
    pub depends: Vec<String>,
    /// `intree` is present: the kernel then does not taint with O.
    pub intree: bool,
    /// `retpoline` is present: built with retpoline mitigations.
    pub retpoline: bool,
    /// Every other key (`alias`, `parm`, `parmtype`, `import_ns`, …), and
    /// repeats of the keys above, with all their values in order.
    pub other: BTreeMap<String, Vec<String>>,
}

/// Whether a signature is appended and, when it can be read, by whom.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The image ends with the "~Module signature appended~" trailer.
    pub signed: bool,
    /// Issuer common name of the signing certificate (modinfo's `signer`).
    pub signer: Option<String>,
    /// Certificate serial number (or key id), uppercase hex joined by ':'.
    pub sig_key: Option<String>,
    /// Digest algorithm, as OpenSSL names it (`sha256`, `sha512`, …).
    pub sig_hashalgo: Option<String>,
    /// modinfo's `sig_id`: `PKCS#7` (or `PGP`, `X509` in old formats).
    pub id_type: Option<String>,
    /// Why a present signature could not be read in full.
    pub error: Option<String>,
}
