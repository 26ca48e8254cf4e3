//! Shared harness of the host integration tests: runs the real `modtrace`
//! binary and the `mtcall` helper, and reads their JSON.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{mpsc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Each test runs alone: two tracers would each see the other test's calls.
static SERIAL: Mutex<()> = Mutex::new(());

pub(crate) fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) const LOCK_FILE: &str = "/tmp/modtrace-host-tests.lock";

pub(crate) fn modtrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_modtrace"))
}

/// `mtcall` from the same target directory and profile as this test, built
/// (once per run; a no-op when fresh) so that a stale one never runs.
pub(crate) fn mtcall_path() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let profile_dir = PathBuf::from(env!("CARGO_BIN_EXE_modtrace"))
        .parent()
        .unwrap()
        .to_owned();
    BUILT.call_once(|| {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--quiet", "--package", "mtcall"]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        assert!(build.status().unwrap().success(), "building mtcall failed");
    });
    profile_dir.join("mtcall")
}

/// Runs mtcall and returns the JSON objects it printed, one per call.
pub(crate) fn mtcall(args: &[&str]) -> Vec<Value> {
    let out = Command::new(mtcall_path()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "mtcall {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub(crate) struct Watch {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub(crate) records: Vec<Value>,
}

impl Watch {
    /// Starts `modtrace watch` and waits for its `start` record.
    pub(crate) fn start(extra: &[&str]) -> Watch {
        let mut child = modtrace()
            .args(["watch", "--format", "json", "--lock-file", LOCK_FILE])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning modtrace");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut watch = Watch {
            child,
            lines,
            records: Vec::new(),
        };
        let start = watch.wait_for(|r| r["kind"] == "start", Duration::from_secs(60));
        assert_eq!(start["seq"], 0, "start must be the first record");
        // This machine's kernel has no module support.
        assert_eq!(start["module_events"], false);
        assert_eq!(start["loaded_modules"], serde_json::json!([]));
        watch
    }

    fn receive(&mut self, timeout: Duration) -> Option<Value> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        let record: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        self.records.push(record.clone());
        Some(record)
    }

    pub(crate) fn wait_for(
        &mut self,
        matches: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        if let Some(found) = self.records.iter().find(|r| matches(r)) {
            return found.clone();
        }
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.receive(left) {
                Some(record) if matches(&record) => return record,
                Some(_) => {}
                None => break,
            }
        }
        panic!(
            "no matching record within {timeout:?}; got {:#?}",
            self.records
        );
    }

    /// Sends `signal` to the tracer (SIGHUP reloads its policy).
    pub(crate) fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// SIGTERM, then every remaining record; asserts a clean exit and that
    /// the last record is `stop`.
    pub(crate) fn stop(mut self) -> Vec<Value> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        while self.receive(Duration::from_secs(5)).is_some() {}
        assert!(status.success(), "modtrace exited with {status}");
        let last = self.records.last().expect("records");
        assert_eq!(last["kind"], "stop", "last record must be stop");
        for (i, record) in self.records.iter().enumerate() {
            assert_eq!(record["seq"], i as u64, "seq must count 0, 1, 2, …");
        }
        std::mem::take(&mut self.records)
    }
}

impl Drop for Watch {
    /// A failed test must not leave a tracer running (it would hold the lock
    /// and the output pipe of the next one).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Syscall records made by the process `pid`.
pub(crate) fn calls_of(records: &[Value], pid: &Value) -> Vec<Value> {
    records
        .iter()
        .filter(|r| &r["process"]["pid"] == pid)
        .cloned()
        .collect()
}
