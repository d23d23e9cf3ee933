//! The secret file parser for every format and algorithm: never panics.
#![no_main]

use hookline_api::spec::HmacAlgorithm;
use hookline_api::validated::SecretFormat;
use hookline_receiver::secrets::SecretSet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for format in [SecretFormat::Raw, SecretFormat::StandardWebhooks] {
        for algorithm in [HmacAlgorithm::Sha256, HmacAlgorithm::Sha512, HmacAlgorithm::Sha1] {
            let _ = SecretSet::parse(text, format, algorithm);
        }
    }
});
