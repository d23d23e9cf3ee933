//! The timestamp parsers (signature times and event times): never panic, and
//! a parsed event time is RFC 3339.
#![no_main]

use hookline_receiver::checks::signature::parse_unix_seconds;
use hookline_receiver::event::normalize_timestamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_unix_seconds(text);
    if let Some(normalized) = normalize_timestamp(text) {
        assert!(normalized.ends_with('Z'), "{text:?} became {normalized:?}");
    }
});
