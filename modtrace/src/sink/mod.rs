//! Stage 5: where records go: stdout as NDJSON or readable text, and
//! optionally an NDJSON file. It renders any record; it knows no schema
//! beyond the field names the text view shows. Every line is rendered whole
//! and written with one call, so a reader never sees half a record.
use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use serde::Serialize;

mod text;

pub use self::text::text_line;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Text,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot open output file {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("output file {path} is readable by others (mode {mode:o}); run `chmod 600 {path}` or choose another file")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("cannot write to {what}: {source}")]
    Write { what: String, source: io::Error },
}

/// Opens `path` for appending, creating it with mode 0600: captures name
/// processes and command lines, which other users should not read.
pub fn open_output_file(path: &Path) -> Result<File, SinkError> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| SinkError::Open {
            path: path.into(),
            source,
        })?;
    let mode = file
        .metadata()
        .map_err(|source| SinkError::Open {
            path: path.into(),
            source,
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(SinkError::Permissions {
            path: path.into(),
            mode,
        });
    }
    Ok(file)
}

/// Lines are buffered and written out by [`Emitter::flush`], which the
/// watch loop calls once per wake-up: one write for a batch of records
/// instead of one per line, and no record waits longer than that wake-up.
pub struct Emitter {
    stdout_format: Format,
    colour: bool,
    file: Option<(PathBuf, io::BufWriter<File>)>,
    stdout: io::BufWriter<io::Stdout>,
    /// The line being rendered, kept between records: a fresh buffer per
    /// record grew four times, copying, for a 1.3 KB line.
    line: Line,
}

/// A line being rendered. serde_json writes a record as a hundred or so
/// short pieces (quotes, keys, numbers, short values), and `Vec`'s own
/// `write_all` makes each a call to memcpy: a quarter of the rendering of a
/// syscall record. Pieces of up to 16 bytes are copied here as two
/// overlapping words instead (the same bytes: only how they are copied).
struct Line {
    /// Zeroed past `len`, with room for 16 more bytes than the pieces so far.
    bytes: Vec<u8>,
    len: usize,
}

impl Line {
    const INITIAL: usize = 4096;

    fn new() -> Self {
        Self {
            bytes: vec![0; Self::INITIAL],
            len: 0,
        }
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Write for Line {
    fn write(&mut self, piece: &[u8]) -> io::Result<usize> {
        self.write_all(piece)?;
        Ok(piece.len())
    }

    // Always inlined: most pieces are of a length known where they are
    // written (a quote, a comma), and then the copy folds to a store.
    #[inline(always)]
    fn write_all(&mut self, piece: &[u8]) -> io::Result<()> {
        let n = piece.len();
        match self.bytes.get_mut(self.len..self.len + 16) {
            Some(out) if n <= 16 => copy_short(piece, out),
            _ => self.write_long(piece),
        }
        self.len += n;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Line {
    /// A piece too long for [`copy_short`], or one that needs more room.
    #[inline(never)]
    fn write_long(&mut self, piece: &[u8]) {
        let end = self.len + piece.len();
        if end + 16 > self.bytes.len() {
            self.bytes.resize((end + 16).next_power_of_two(), 0);
        }
        self.bytes[self.len..end].copy_from_slice(piece);
    }
}

/// Copies a piece of at most 16 bytes to the start of `out` (16 bytes) as
/// at most two overlapping words.
#[inline(always)]
fn copy_short(piece: &[u8], out: &mut [u8]) {
    let n = piece.len();
    match n {
        0 => {}
        1..=3 => {
            out[0] = piece[0];
            out[n / 2] = piece[n / 2];
            out[n - 1] = piece[n - 1];
        }
        4..=7 => {
            out[..4].copy_from_slice(&piece[..4]);
            out[n - 4..n].copy_from_slice(&piece[n - 4..]);
        }
        _ => {
            out[..8].copy_from_slice(&piece[..8]);
            out[n - 8..n].copy_from_slice(&piece[n - 8..]);
        }
    }
}

impl Emitter {
    pub fn new(stdout_format: Format, colour: bool, file: Option<(PathBuf, File)>) -> Self {
        const BUFFER: usize = 256 * 1024;
        Self {
            stdout_format,
            colour,
            file: file.map(|(path, f)| (path, io::BufWriter::with_capacity(BUFFER, f))),
            stdout: io::BufWriter::with_capacity(BUFFER, io::stdout()),
            line: Line::new(),
        }
    }

    /// Writes out what [`Emitter::write`] buffered.
    pub fn flush(&mut self) -> Result<(), SinkError> {
        if let Some((path, file)) = &mut self.file {
            file.flush().map_err(|source| SinkError::Write {
                what: path.display().to_string(),
                source,
            })?;
        }
        self.stdout.flush().map_err(|source| SinkError::Write {
            what: "stdout".into(),
            source,
        })
    }

    /// Writes one record to every sink. An `alert` record in the text view
    /// goes to stderr, where a person watching cannot miss it among events.
    pub fn write(&mut self, record: &impl Serialize, alert: bool) -> Result<(), SinkError> {
        // Straight to bytes: no JSON tree is built for an NDJSON line.
        self.line.clear();
        serde_json::to_writer(&mut self.line, record).expect("records serialize to JSON");
        self.line
            .write_all(b"\n")
            .expect("a line takes every piece");
        let line = self.line.as_bytes();
        let text = (self.stdout_format == Format::Text).then(|| {
            let json = serde_json::to_value(record).expect("records serialize to JSON");
            text_line(&json, self.colour)
        });
        if let Some((path, file)) = &mut self.file {
            file.write_all(line).map_err(|source| SinkError::Write {
                what: path.display().to_string(),
                source,
            })?;
        }
        let (what, result) = match text {
            Some(text) if alert => {
                let mut err = io::stderr().lock();
                (
                    "stderr",
                    err.write_all(text.as_bytes()).and_then(|()| err.flush()),
                )
            }
            Some(text) => ("stdout", self.stdout.write_all(text.as_bytes())),
            None => ("stdout", self.stdout.write_all(line)),
        };
        result.map_err(|source| SinkError::Write {
            what: what.into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_holds_every_piece_as_written_whatever_its_length() {
        let mut line = Line::new();
        let mut expected = Vec::new();
        // Past the initial size, so that growing keeps what was written.
        for round in 0..100u8 {
            for n in 0..40 {
                let piece: Vec<u8> = (0..n).map(|i| round.wrapping_mul(31) ^ i).collect();
                line.write_all(&piece).unwrap();
                expected.extend_from_slice(&piece);
            }
        }
        assert!(expected.len() > Line::INITIAL);
        assert_eq!(line.as_bytes(), expected.as_slice());
        line.clear();
        line.write_all(b"{}").unwrap();
        assert_eq!(line.as_bytes(), b"{}");
    }

    #[test]
    fn a_record_renders_as_serde_json_renders_it() {
        let call = crate::samples::ordinary_finit();
        let json = crate::samples::render(modtrace_common::Syscall::FinitModule, &call);
        let mut line = Line::new();
        serde_json::to_writer(&mut line, &json).unwrap();
        assert_eq!(
            line.as_bytes(),
            serde_json::to_vec(&json).unwrap().as_slice()
        );
    }
}
