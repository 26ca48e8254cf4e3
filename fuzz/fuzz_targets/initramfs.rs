//! Fuzz the initramfs reader with the input as a whole image: any bytes must
//! give the archives' entries or an error naming an offset, never a panic,
//! hang or runaway allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modtrace::posture::initramfs::{read, Limits};

/// Small limits, so that a bomb hits them quickly and runs stay fast.
const LIMITS: Limits = Limits {
    max_decompressed: 4 << 20,
    max_kept_file: 4096,
};

fuzz_target!(|data: &[u8]| {
    match read(data, &LIMITS, &|name| name.ends_with(".conf")) {
        Ok(found) => {
            for entry in &found.entries {
                assert!(entry.data.as_ref().is_none_or(|d| d.len() == entry.size as usize));
            }
        }
        Err(err) => assert!(err.to_string().contains("offset ")),
    }
});
