//! Fuzz the module image analyzer with the input as a whole file: any bytes
//! must give a result or an error, never a panic, hang or runaway allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modtrace::enrich::module_image::{analyze, Limits};

/// Small limits, so that a bomb hits them quickly and runs stay fast.
const LIMITS: Limits = Limits {
    max_file: 1 << 20,
    max_decompressed: 4 << 20,
    max_sections: 4096,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(analysis) = analyze(data, &LIMITS) {
        // Serialization is part of what the collector does with the result.
        let _ = serde_json::to_string(&analysis);
    }
});
