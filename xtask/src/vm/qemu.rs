//! Boots one guest per scenario and brings its results back over the second serial
//! port (`/dev/ttyS1`), which carries nothing but the framed, base64-encoded tar.gz.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::sh::status;

const BEGIN: &str = "MODTRACE-RESULTS-BEGIN";
const END: &str = "MODTRACE-RESULTS-END";
/// Lines of the guest console shown when a boot fails.
const CONSOLE_TAIL: usize = 60;

pub(crate) struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    pub scenario: &'a str,
    /// More of the kernel command line (`modtrace.NAME=VALUE` for the scenario).
    pub append: &'a str,
    pub timeout: Duration,
    /// Receives console.log, results.txt and the unpacked results.
    pub out_dir: &'a Path,
}

/// Boots the guest, waits for it to power off, and unpacks its results into
/// `out_dir/results`. Fails (showing the console) on timeout, panic or no results.
pub(crate) fn run(boot: &Boot) -> Result<(PathBuf, Duration)> {
    let _ = fs::remove_dir_all(boot.out_dir);
    fs::create_dir_all(boot.out_dir)?;
    let console = boot.out_dir.join("console.log");
    let channel = boot.out_dir.join("results.txt");
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            // Single-threaded TCG: with one host thread per vCPU, QEMU can run
            // a stale translation of kernel text another vCPU just patched
            // (seen: an int3 oops in syscall_exit_to_user_mode_prepare while
            // tracepoints were toggled). Two guest CPUs are kept for the
            // per-CPU maps and the races the scenarios exercise.
            "-accel",
            "tcg,thread=single",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "1024",
        ])
        .args(["-nographic", "-no-reboot", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", channel.display()))
        .arg("-kernel")
        .arg(boot.vmlinuz)
        .arg("-initrd")
        .arg(boot.initramfs)
        .arg("-append")
        .arg(format!(
            // no_timer_check: under TCG on a loaded host the IO-APIC timer
            // check can miss its ticks and panic the boot (seen on 6.1).
            "console=ttyS0 panic=-1 loglevel=4 no_timer_check modtrace.scenario={} {}",
            boot.scenario, boot.append
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let exit = loop {
        if let Some(exit) = child.try_wait()? {
            break exit;
        }
        if started.elapsed() > boot.timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "guest timed out after {:?}\n{}",
                boot.timeout,
                console_tail(&console)
            );
        }
        sleep(Duration::from_millis(100));
    };
    let elapsed = started.elapsed();
    if !exit.success() {
        bail!("qemu exited with {exit}\n{}", console_tail(&console));
    }
    let results = boot.out_dir.join("results");
    unpack_results(&channel, &results)
        .with_context(|| format!("reading the results channel\n{}", console_tail(&console)))?;
    Ok((results, elapsed))
}

/// Extracts the base64 tar.gz between the markers and unpacks it.
fn unpack_results(channel: &Path, dest: &Path) -> Result<()> {
    let raw = fs::read(channel).with_context(|| format!("reading {}", channel.display()))?;
    let text = String::from_utf8_lossy(&raw);
    let payload = framed_payload(&text).with_context(|| {
        format!(
            "{} holds no complete results (the guest did not finish)",
            channel.display()
        )
    })?;
    let encoded = channel.with_extension("b64");
    fs::write(&encoded, payload)?;
    let tar = channel.with_extension("tar.gz");
    let decoded = Command::new("base64")
        .arg("-d")
        .arg(&encoded)
        .output()
        .context("running base64 -d")?;
    if !decoded.status.success() {
        bail!(
            "base64 -d {} failed: {}",
            encoded.display(),
            String::from_utf8_lossy(&decoded.stderr)
        );
    }
    fs::write(&tar, decoded.stdout)?;
    fs::create_dir_all(dest)?;
    status(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tar)
            .arg("-C")
            .arg(dest),
    )
}

fn framed_payload(text: &str) -> Option<String> {
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    lines.by_ref().find(|l| *l == BEGIN)?;
    let mut payload = String::new();
    for line in lines {
        if line == END {
            return Some(payload);
        }
        payload.push_str(line);
        payload.push('\n');
    }
    None
}

fn console_tail(console: &Path) -> String {
    let text = fs::read(console)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(CONSOLE_TAIL)..].join("\n");
    format!(
        "--- guest console ({}), last {CONSOLE_TAIL} lines ---\n{tail}",
        console.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_needs_both_markers() {
        assert_eq!(
            framed_payload("x\r\nMODTRACE-RESULTS-BEGIN\r\nQUJD\r\nMODTRACE-RESULTS-END\r\n")
                .as_deref(),
            Some("QUJD\n")
        );
        assert_eq!(framed_payload("MODTRACE-RESULTS-BEGIN\nQUJD\n"), None);
        assert_eq!(framed_payload("QUJD\nMODTRACE-RESULTS-END\n"), None);
    }
}
