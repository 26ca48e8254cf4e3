//! The initramfs image as the kernel unpacks it: newc cpio archives one
//! after another, zero padding between them, and any part compressed (on
//! Debian an uncompressed early archive with CPU microcode, then the main
//! archive compressed with zstd or gzip).
//!
//! The image is hostile input as far as this reader goes (a corrupt or
//! truncated file, a crafted one): sizes come from headers, so nothing is
//! allocated from them, decompression is bounded, and every failure says
//! where in the image it was found.
use std::io::{self, Cursor, Read};

use crate::enrich::module_image::{self, Compression};

/// A file of the image: its path (without a leading `/` or `./`), its mode
/// and, for the files asked for, its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub mode: u32,
    pub size: u32,
    pub data: Option<Vec<u8>>,
}

impl Entry {
    pub fn is_file(&self) -> bool {
        self.mode & 0o170000 == 0o100000
    }
}

/// One archive of the image, and how it was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Offset in the image (for a compressed part, of the compressed data).
    pub offset: u64,
    pub compression: Option<Compression>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Initramfs {
    pub parts: Vec<Part>,
    pub entries: Vec<Entry>,
}

/// What is wrong with an image, and where.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("{place}: not a cpio archive nor compressed data: bytes {magic}")]
    UnknownData { place: String, magic: String },
    #[error("{place}: {format}-compressed, which modtrace cannot decompress")]
    UnsupportedCompression { place: String, format: &'static str },
    #[error("{place}: cpio entry {index}: {detail}")]
    Cpio {
        place: String,
        index: usize,
        detail: String,
    },
    #[error("{place}: {source}")]
    Decompress {
        place: String,
        source: module_image::ImageError,
    },
    #[error("{place}: a compressed archive inside a compressed archive, which the kernel does not unpack")]
    NestedCompression { place: String },
}

/// Bounds on one reading.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest decompressed part.
    pub max_decompressed: u64,
    /// Largest file whose bytes are kept (the files asked for).
    pub max_kept_file: u32,
}

impl Default for Limits {
    /// Debian's largest initramfs images (every module) unpack to some
    /// hundreds of MiB; configuration files are small.
    fn default() -> Self {
        Limits {
            max_decompressed: 2 << 30,
            max_kept_file: 1 << 20,
        }
    }
}

/// Reads every archive of `image`, keeping the bytes of the files `keep`
/// selects by name.
pub fn read(
    image: &[u8],
    limits: &Limits,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Initramfs, InitramfsError> {
    let mut found = Initramfs::default();
    let mut reader = Reader {
        limits,
        keep,
        found: &mut found,
    };
    reader.parts(image, None)?;
    Ok(found)
}

struct Reader<'a> {
    limits: &'a Limits,
    keep: &'a dyn Fn(&str) -> bool,
    found: &'a mut Initramfs,
}

/// Where in the image: `offset 1024` or `offset 96 of the zstd part at offset 1024`.
fn place(offset: usize, within: Option<Part>) -> String {
    match within {
        None => format!("offset {offset}"),
        Some(part) => {
            let format = part
                .compression
                .map_or_else(|| "uncompressed".to_owned(), |c| c.to_string());
            format!(
                "offset {offset} of the {format} part at offset {}",
                part.offset
            )
        }
    }
}

impl Reader<'_> {
    /// The archives of `data` (the image, or a decompressed part of it).
    fn parts(&mut self, data: &[u8], within: Option<Part>) -> Result<(), InitramfsError> {
        let mut at = 0;
        loop {
            // The kernel skips zeros between archives (alignment padding).
            while data.get(at) == Some(&0) {
                at += 1;
            }
            let rest = &data[at..];
            if rest.is_empty() {
                return Ok(());
            }
            if rest.starts_with(b"070701") || rest.starts_with(b"070702") {
                if within.is_none() {
                    self.found.parts.push(Part {
                        offset: at as u64,
                        compression: None,
                    });
                }
                at += self.archive(rest, &place(at, within))?;
                continue;
            }
            if let Some(format) = Compression::detect(rest) {
                if within.is_some() {
                    return Err(InitramfsError::NestedCompression {
                        place: place(at, within),
                    });
                }
                let part = Part {
                    offset: at as u64,
                    compression: Some(format),
                };
                self.found.parts.push(part);
                let unpacked = module_image::decompress(format, rest, self.limits.max_decompressed)
                    .map_err(|source| InitramfsError::Decompress {
                        place: place(at, within),
                        source,
                    })?;
                // A compressed part runs to the end of the image: its
                // decoder reads every stream that follows.
                return self.parts(&unpacked, Some(part));
            }
            return Err(match unsupported_compression(rest) {
                Some(format) => InitramfsError::UnsupportedCompression {
                    place: place(at, within),
                    format,
                },
                None => InitramfsError::UnknownData {
                    place: place(at, within),
                    magic: hex(&rest[..rest.len().min(8)]),
                },
            });
        }
    }

    /// One cpio archive up to and including its trailer; returns its length.
    fn archive(&mut self, data: &[u8], place: &str) -> Result<usize, InitramfsError> {
        let mut cursor = Cursor::new(data);
        for index in 0.. {
            let error = |e: io::Error| InitramfsError::Cpio {
                place: place.to_owned(),
                index,
                detail: match e.kind() {
                    io::ErrorKind::UnexpectedEof => {
                        "truncated: the data ends inside the entry, before the archive's TRAILER!!!"
                            .to_owned()
                    }
                    _ => e.to_string(),
                },
            };
            let mut entry = cpio::newc::Reader::new(cursor).map_err(error)?;
            let header = entry.entry();
            if header.is_trailer() {
                cursor = entry.finish().map_err(error)?;
                break;
            }
            let name = header
                .name()
                .trim_start_matches("./")
                .trim_start_matches('/')
                .to_owned();
            let (mode, size) = (header.mode(), header.file_size());
            let start = entry.offset().map_err(error)?;
            if start.saturating_add(size.into()) > data.len() as u64 {
                return Err(error(io::ErrorKind::UnexpectedEof.into()));
            }
            let data = if size <= self.limits.max_kept_file && (self.keep)(&name) {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).map_err(error)?;
                Some(bytes)
            } else {
                None
            };
            cursor = entry.skip().map_err(error)?;
            self.found.entries.push(Entry {
                name,
                mode,
                size,
                data,
            });
        }
        Ok(usize::try_from(cursor.position()).unwrap_or(data.len()))
    }
}

/// Formats the kernel can unpack that the module readers do not.
fn unsupported_compression(bytes: &[u8]) -> Option<&'static str> {
    const FORMATS: [(&[u8], &str); 5] = [
        (b"BZh", "bzip2"),
        (b"\x5d\x00\x00", "lzma"),
        (b"\x02\x21\x4c\x18", "lz4"),
        (b"\x04\x22\x4d\x18", "lz4"),
        (b"\x89LZO", "lzo"),
    ];
    FORMATS
        .iter()
        .find(|(magic, _)| bytes.starts_with(magic))
        .map(|(_, name)| *name)
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
pub(crate) mod tests;
