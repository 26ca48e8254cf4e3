//! Module image analyzer: which module, which file, which hash, signed by whom.
//!
//! Given the bytes of a kernel module file (`.ko`, or `.ko.xz` / `.ko.zst` /
//! `.ko.gz`) or an image read from a caller's memory, [`analyze`] hashes it,
//! decompresses it when compressed, finds the `.modinfo` section of the ELF
//! and parses the appended module signature, giving the values that
//! `modinfo(8)` prints for the same file.
//!
//! The input is hostile: anybody who can call `init_module` chooses these
//! bytes. Every size taken from the input is checked against the input before
//! use, nothing is allocated from a header field, decompression streams with
//! an output limit, and the section count is capped ([`Limits`]). Each failure
//! is an [`ImageError`] naming what and where; a damaged signature or a missing
//! `.modinfo` still gives a partial [`Analysis`].
//!
//! Crates, and why each:
//! - `sha2` (RustCrypto): SHA-256 of the file and of the decompressed image;
//!   pure Rust, constant memory, the de-facto standard implementation.
//! - `object`: ELF header and section table parsing, zero-copy and bounds
//!   checked (no allocation from `e_shnum`), already in the tree through aya.
//! - `liblzma`: `.ko.xz`, through the xz project's own liblzma (the library
//!   kmod and the kernel's tools use), with a decoder memory limit and
//!   concatenated streams like kmod; the maintained successor of `xz2`.
//! - `zstd`: `.ko.zst`, through the reference libzstd, which lets us cap the
//!   window size a frame may ask for.
//! - `flate2` (pure-Rust miniz_oxide backend): `.ko.gz`, multi-member gzip as
//!   zlib's `gzread` reads it.
//! - `cms`, `der`, `x509-cert` (RustCrypto): the PKCS#7 SignedData of the
//!   signature, decoded as strict DER (what `sign-file` writes) to get the
//!   issuer, serial number and digest algorithm of the first signer.
//! - `thiserror`, `serde`: typed errors, and the record's `module` object.

mod decompress;
mod elf;
mod modinfo;
mod signature;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use crate::record::image::{Analysis, Compression, Modinfo, Signature};
/// Bounded decompression, for other readers of compressed kernel files
/// (the initramfs).
pub use decompress::decompress;

/// Bounds on what one analysis may read, decompress and walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest input (file on disk, or image from memory) in bytes.
    pub max_file: u64,
    /// Largest decompressed image in bytes; decompression stops past it.
    pub max_decompressed: u64,
    /// Largest ELF section count accepted.
    pub max_sections: usize,
}

impl Default for Limits {
    /// The largest in-tree modules are tens of MiB uncompressed (amdgpu with
    /// debug info is ~100 MiB), and the kernel's `e_shnum` is a u16.
    fn default() -> Self {
        Limits {
            max_file: 256 << 20,
            max_decompressed: 512 << 20,
            max_sections: 65535,
        }
    }
}

/// A parsed (decompressed) module image: its modinfo, signature and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleImage {
    pub modinfo: Modinfo,
    pub signature: Signature,
    pub this_module_name: Option<String>,
    /// Length of the ELF part: the image without the appended signature.
    pub elf_len: usize,
    pub warnings: Vec<String>,
}

impl ModuleImage {
    /// Parse an uncompressed module image (ELF, possibly with a signature).
    pub fn parse(image: &[u8], limits: &Limits) -> Result<ModuleImage, ImageError> {
        // The kernel strips the signature before it reads the ELF; so do we,
        // unless the trailer is malformed, in which case the whole image is
        // the best guess.
        let (signature, elf_len) = signature::read(image);
        let elf_len = elf_len.unwrap_or(image.len());
        let elf = elf::read(&image[..elf_len], limits)?;
        let mut warnings = elf.warnings;
        let modinfo = match elf.modinfo {
            Some(section) => {
                let (modinfo, warning) = modinfo::parse(section.data, section.offset);
                warnings.extend(warning);
                modinfo
            }
            None => {
                warnings.push("no .modinfo section".to_string());
                Modinfo::default()
            }
        };
        Ok(ModuleImage {
            modinfo,
            signature,
            this_module_name: elf.this_module_name,
            elf_len,
            warnings,
        })
    }
}

/// Errors of [`analyze`]; each names what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: cannot {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: not a regular file but a {kind}")]
    NotRegularFile { path: PathBuf, kind: &'static str },
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("{what} is empty (0 bytes)")]
    Empty { what: &'static str },
    #[error("{what} is neither ELF nor xz/zstd/gzip: bytes at offset 0 are {magic}")]
    UnknownFormat { what: &'static str, magic: String },
    #[error(
        "{format} data is corrupt near compressed offset {input_offset} \
         (after {output_len} decompressed bytes): {detail}"
    )]
    Decompress {
        format: Compression,
        input_offset: u64,
        output_len: u64,
        detail: String,
    },
    #[error(
        "{format} data expands past max_decompressed ({limit} bytes) \
         near compressed offset {input_offset}"
    )]
    DecompressedTooLarge {
        format: Compression,
        input_offset: u64,
        limit: u64,
    },
    #[error("ELF {what} at offset {offset:#x}: {detail}")]
    Elf {
        what: &'static str,
        offset: u64,
        detail: String,
    },
    #[error(
        "ELF e_type {e_type} (offset 0x10) is not ET_REL: \
         a kernel module is a relocatable object"
    )]
    NotRelocatable { e_type: u16 },
    #[error(
        "ELF section count {count} (section headers at offset {offset:#x}) \
         is over max_sections {limit}"
    )]
    TooManySections {
        count: u64,
        offset: u64,
        limit: usize,
    },
    #[error(
        "section {name} (index {index}): data at offset {offset:#x} size {size:#x} \
         lies outside the {len}-byte image"
    )]
    SectionOutOfBounds {
        name: String,
        index: usize,
        offset: u64,
        size: u64,
        len: usize,
    },
    #[error("signature trailer (struct module_signature at offset {offset:#x}): {detail}")]
    SignatureTrailer { offset: u64, detail: String },
    #[error("PKCS#7 signature at offset {offset:#x}: {detail}")]
    Pkcs7 { offset: u64, detail: String },
}

/// Analyze a module image given as bytes (file contents or memory image).
pub fn analyze(bytes: &[u8], limits: &Limits) -> Result<Analysis, ImageError> {
    check_size("input", bytes.len() as u64, limits.max_file)?;
    if bytes.is_empty() {
        return Err(ImageError::Empty { what: "input" });
    }
    let sha256 = sha256_hex(bytes);
    let compression = Compression::detect(bytes);
    let image = match compression {
        Some(format) => Cow::Owned(decompress::decompress(
            format,
            bytes,
            limits.max_decompressed,
        )?),
        None => Cow::Borrowed(bytes),
    };
    let decompressed_sha256 = compression.map(|_| sha256_hex(&image));
    let what = if compression.is_some() {
        "decompressed image"
    } else {
        "input"
    };
    if image.is_empty() {
        return Err(ImageError::Empty { what });
    }
    if !image.starts_with(elf::MAGIC) {
        return Err(ImageError::UnknownFormat {
            what,
            magic: hex_bytes(&image[..image.len().min(8)], " "),
        });
    }
    let parsed = ModuleImage::parse(&image, limits)?;
    Ok(Analysis {
        sha256,
        decompressed_sha256,
        compression,
        size: bytes.len() as u64,
        modinfo: parsed.modinfo,
        signature: parsed.signature,
        this_module_name: parsed.this_module_name,
        warnings: parsed.warnings,
    })
}

/// Analyze the module file at `path`, reading at most `limits.max_file`
/// bytes. Only regular files are read: a FIFO or device could block or never
/// end.
pub fn analyze_file(path: &Path, limits: &Limits) -> Result<Analysis, ImageError> {
    let bytes = read_file(path, limits.max_file)?;
    analyze(&bytes, limits)
}

fn read_file(path: &Path, max: u64) -> Result<Vec<u8>, ImageError> {
    let io_err = |op, source| ImageError::Io {
        path: path.to_path_buf(),
        op,
        source,
    };
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| io_err("open", e))?;
    let meta = file.metadata().map_err(|e| io_err("stat", e))?;
    if !meta.is_file() {
        return Err(ImageError::NotRegularFile {
            path: path.to_path_buf(),
            kind: file_kind(&meta.file_type()),
        });
    }
    check_size("file", meta.len(), max)?;
    // The file can grow between stat and read: read one byte past the limit
    // to notice, never more.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| io_err("read", e))?;
    check_size("file", bytes.len() as u64, max)?;
    Ok(bytes)
}

fn file_kind(file_type: &std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "directory"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

fn check_size(what: &'static str, size: u64, limit: u64) -> Result<(), ImageError> {
    if size > limit {
        return Err(ImageError::TooLarge { what, size, limit });
    }
    Ok(())
}

/// SHA-256 of `bytes` as lowercase hex, as `sha256sum` prints it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex_bytes(&Sha256::digest(bytes), "").to_lowercase()
}

/// Uppercase hex of `bytes` joined by `sep`, as modinfo prints key ids.
fn hex_bytes(bytes: &[u8], sep: &str) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(sep)
}
