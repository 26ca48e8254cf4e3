//! Any bytes given as a capture are replayed, refused as a newer schema, or
//! reported line by line as malformed: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modtrace::{
    replay::{PolicySource, Replay},
    sink::Format,
};

fuzz_target!(|data: &[u8]| {
    for format in [Format::Json, Format::Text] {
        let mut replay = Replay {
            file: "fuzz.ndjson",
            format,
            colour: false,
            out: std::io::sink(),
            diagnostics: std::io::sink(),
        };
        let source = PolicySource {
            path: None,
            check_owner: false,
        };
        let _ = replay.run(data, &source);
    }
});
