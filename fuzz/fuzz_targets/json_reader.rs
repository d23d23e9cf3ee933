//! The sparse JSON reader against serde_json's full parse: it accepts exactly
//! what the full parse accepts, and answers every pointer the same way.
#![no_main]

use hookline_receiver::json::JsonReader;
use libfuzzer_sys::fuzz_target;

/// The pointers of the presets (Stripe, Slack, Standard Webhooks, Shopify).
const POINTERS: [&str; 8] = [
    "/id",
    "/type",
    "/created",
    "/data/object/id",
    "/event_id",
    "/event/type",
    "/event_time",
    "/data/id",
];

fuzz_target!(|data: &[u8]| {
    let sparse = JsonReader::new(POINTERS, false).parse(data);
    let full = serde_json::from_slice::<serde_json::Value>(data);
    match (&sparse, &full) {
        (Ok(sparse), Ok(full)) => {
            for pointer in POINTERS {
                assert_eq!(sparse.pointer(pointer), full.pointer(pointer), "{pointer}");
            }
        }
        (Err(_), Err(_)) => {}
        _ => panic!("sparse {:?} but full {:?}", sparse.is_ok(), full.is_ok()),
    }
});
