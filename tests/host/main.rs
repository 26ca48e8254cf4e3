//! The host integration tests, one binary with one harness: `modtrace watch`
//! on this machine's kernel (which has no module support, so every module
//! syscall fails with ENOSYS and only the `raw-syscalls` strategy exists),
//! driven by real calls from `mtcall`.
//!
//! Tests that start a tracer hold `harness::serial()` for their whole run: two
//! tracers at once would each see the other test's calls. Each tracer also
//! holds `harness::LOCK_FILE`, its own single-instance lock, apart from the
//! `/run/modtrace.lock` of a real instance.
mod harness;

mod enforce;
mod errors;
mod policy;
mod posture;
mod watch;
