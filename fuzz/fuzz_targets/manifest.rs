//! Reading a manifest and resolving it: never panics on any YAML; what it
//! accepts resolves to the same endpoint twice.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(resource) = hookline_api::parse_manifest(text)
        && let Ok(endpoint) = hookline_api::validate(&resource)
    {
        let again = hookline_api::validate(&resource).expect("resolving is deterministic");
        assert_eq!(endpoint, again);
    }
});
