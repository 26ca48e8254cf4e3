//! modtrace: an eBPF tracer of Linux kernel module loading.
//!
//! The data path, one folder or module per stage:
//!
//! ```text
//!  kernel/   eBPF programs loaded and attached; their maps and ring buffers
//!    │ ring-buffer bytes
//!  decode    bytes → modtrace_common::KernelEvent (length, kind, ABI checked)
//!    │ KernelEvent
//!  enrich/   event → record: /proc, exec records, cgroups, cause, module image
//!    │ record::Body
//!  policy/   judges the typed record → record::judgement::Evaluation
//!    │ record + evaluation
//!  sink/     renders (json, text) and writes
//! ```
//!
//! `record/` is the output schema every stage shares; it depends on none of
//! them, and no stage depends on another (a test reads the `use` lines).
//! [`pipeline`] joins the stages, [`watch`] schedules them (epoll, timers,
//! signals), [`replay`] runs a capture through the same policy. [`posture`]
//! (`audit`, `baseline`) is beside the path: it reads the host with the
//! stages' readers.
pub mod clock;
pub mod decode;
pub mod enforcement;
pub mod enrich;
pub mod kernel;
pub mod pipeline;
pub mod policy;
pub mod posture;
pub mod record;
pub mod replay;
#[cfg(any(test, feature = "samples"))]
pub mod samples;
pub mod sink;
#[cfg(test)]
mod stages;
pub mod watch;
