//! modtrace's enforcement object: the BPF LSM programs that deny module
//! loads, and the tables they read. An object of its own, apart from the
//! tracing programs (main.rs), so that it is loaded, pinned under
//! /sys/fs/bpf/modtrace/ and adopted by the next collector on its own: it
//! must outlive a collector, which the tracing object (with its rings and
//! pending maps) need not, and a collector's restart must not reload it.
#![no_std]
#![no_main]
#![expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand each program its context by value"
)]

#[macro_use]
mod config;
mod enforce;
mod enforce_state;
mod kread;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: nothing in these programs can panic; the verifier would reject a
    // program whose panic path were reachable and looped.
    unsafe { core::hint::unreachable_unchecked() }
}
