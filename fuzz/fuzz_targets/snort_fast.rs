#![no_main]
// The snort_fast alert parser (and its timestamp) never panics on any line.
use vmsentry::ids::{parse, Format};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else { return };
    if let Ok(Some(a)) = parse(Format::SnortFast, line) {
        assert_eq!(a.key.len(), 16);
        let _ = a.time(2026);
    }
});
