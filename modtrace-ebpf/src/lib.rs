//! Present only so that the userspace crate can name this package as a build
//! dependency; the programs are the `modtrace` binary target.
#![no_std]
