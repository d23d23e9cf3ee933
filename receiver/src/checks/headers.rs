//! Header size (431): the request line and headers together are bounded, so
//! what a sender puts in its headers can neither take the receiver's memory
//! nor make the stored message too large (the copies kept in the message are
//! bounded separately, see [`crate::event::message_headers`]).

use axum::http::request::Parts;

use crate::Rejection;

/// The most bytes the request line and headers may take, as sent on the wire.
/// nginx's default (four buffers of 8 KiB): what an Ingress in front would
/// take anyway, and some eight times what any provider sends. Larger requests
/// get 431 with the JSON error body; past
/// [`crate::connections::HEADER_PARSE_LIMIT`] the HTTP parser answers 431
/// itself, without a body.
pub const MAX_REQUEST_HEADER_BYTES: usize = 32 * 1024;

/// Refuses a request whose line and headers take more than
/// [`MAX_REQUEST_HEADER_BYTES`].
pub fn check_header_size(parts: &Parts) -> Result<(), Rejection> {
    if header_bytes(parts) > MAX_REQUEST_HEADER_BYTES {
        return Err(Rejection::HeadersTooLarge {
            limit: MAX_REQUEST_HEADER_BYTES,
        });
    }
    Ok(())
}

/// The size of the request line and headers as HTTP/1.1 sends them:
/// `METHOD target HTTP/1.1\r\n`, each `name: value\r\n`, and the blank line.
fn header_bytes(parts: &Parts) -> usize {
    let target = parts
        .uri
        .path_and_query()
        .map_or(1, |target| target.as_str().len());
    let request_line = parts.method.as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let fields: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    request_line + fields + 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut request = Request::post("/hooks?x=1");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).expect("request").into_parts().0
    }

    #[test]
    fn counts_the_request_line_and_every_field_as_sent() {
        let request = parts(&[("host", "example.com"), ("x-a", "1")]);
        let wire = "POST /hooks?x=1 HTTP/1.1\r\nhost: example.com\r\nx-a: 1\r\n\r\n";
        assert_eq!(header_bytes(&request), wire.len());
    }

    #[test]
    fn past_the_bound_is_431() {
        let big = "x".repeat(MAX_REQUEST_HEADER_BYTES);
        let error = check_header_size(&parts(&[("x-big", &big)])).expect_err("too large");
        assert_eq!(error.status().as_u16(), 431);
        let fits = "x".repeat(MAX_REQUEST_HEADER_BYTES - 100);
        assert!(check_header_size(&parts(&[("x-big", &fits)])).is_ok());
    }
}
