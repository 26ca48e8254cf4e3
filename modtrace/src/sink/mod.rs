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
    line: Vec<u8>,
}

impl Emitter {
    pub fn new(stdout_format: Format, colour: bool, file: Option<(PathBuf, File)>) -> Self {
        const BUFFER: usize = 256 * 1024;
        Self {
            stdout_format,
            colour,
            file: file.map(|(path, f)| (path, io::BufWriter::with_capacity(BUFFER, f))),
            stdout: io::BufWriter::with_capacity(BUFFER, io::stdout()),
            line: Vec::with_capacity(4096),
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
        let line = &mut self.line;
        line.clear();
        serde_json::to_writer(&mut *line, record).expect("records serialize to JSON");
        line.push(b'\n');
        let line = &self.line;
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
