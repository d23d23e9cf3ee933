//! The two encodings providers disagree on, decoded one way everywhere: base64
//! with or without padding, and unix times in seconds or milliseconds.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};

/// Unix times above this are milliseconds: read as seconds they would be after
/// the year 5000, and no sender signs or dates an event that far ahead.
const MILLISECONDS_ABOVE: f64 = 1e11;

/// Standard base64, padded or not (providers send both).
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(text)
        .or_else(|_| STANDARD_NO_PAD.decode(text))
        .ok()
}

/// Whether a unix time is given in milliseconds rather than seconds (see
/// `MILLISECONDS_ABOVE`).
pub fn is_unix_millis(number: f64) -> bool {
    number.abs() > MILLISECONDS_ABOVE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_with_and_without_padding() {
        assert_eq!(decode_base64("aGk="), Some(b"hi".to_vec()));
        assert_eq!(decode_base64("aGk"), Some(b"hi".to_vec()));
        assert_eq!(decode_base64("not base64!"), None);
    }

    #[test]
    fn large_unix_times_are_milliseconds() {
        assert!(!is_unix_millis(1_700_000_000.0));
        assert!(is_unix_millis(1_700_000_000_123.0));
        assert!(is_unix_millis(-1_700_000_000_123.0));
    }
}
