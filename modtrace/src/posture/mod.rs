//! Host posture, beside the data path: `modtrace audit` answers the
//! hardening guide's questions about this host (Secure Boot, lockdown,
//! signatures, taint, the CIS deny list, the initramfs, audit rules) and
//! `modtrace baseline` records and verifies every module file on disk.
//!
//! Every reader takes a [`HostRoot`], so that the tests run the same code
//! against fixture trees and `--root` reads an image.
pub mod audit;
pub mod baseline;
pub mod initramfs;
mod root;

pub use root::{HostRoot, ReadError};
