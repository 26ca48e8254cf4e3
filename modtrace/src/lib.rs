//! modtrace: an eBPF tracer of Linux kernel module loading.
//!
//! The data path, one module per stage: [`probes`] (attach the kernel programs)
//! → ring buffer → [`decode`] → [`enrich`] → [`record`] → [`sink`], driven by
//! [`watch`].
pub mod aggregates;
pub mod analysis;
pub mod btf;
pub mod cause;
pub mod cgroups;
pub mod clock;
pub mod container;
pub mod decode;
pub mod enrich;
pub mod execs;
pub mod fields;
pub mod module_image;
pub mod modules;
pub mod policy;
pub mod probes;
pub mod record;
pub mod replay;
#[cfg(any(test, feature = "samples"))]
pub mod samples;
pub mod sink;
pub mod snapshot;
pub mod watch;

/// The eBPF object built from `modtrace-ebpf` by build.rs for this very build.
pub const EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/modtrace"));
