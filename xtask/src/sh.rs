//! Running host tools with errors that name the command.
use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// Runs the command and returns its stdout; a non-zero exit is an error carrying stderr.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    output_bytes(cmd).map(|out| String::from_utf8_lossy(&out).into_owned())
}

/// `output` for binary stdout.
pub(crate) fn output_bytes(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Runs the command with inherited output; a non-zero exit is an error.
pub(crate) fn status(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
