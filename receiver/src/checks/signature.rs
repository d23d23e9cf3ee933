//! Signature (401): verification over the raw body bytes, driven entirely by
//! the endpoint's [`Verification`] data (provider presets are just data), with
//! constant-time comparisons and a replay window in both directions.

use axum::http::HeaderMap;
use ed25519_dalek::Signature;
use hookline_api::validated::{
    PayloadPart, SignatureEncoding, SignatureFormat, TimestampSource, Verification,
};
use subtle::ConstantTimeEq;

use crate::encoding::{decode_base64, is_unix_millis};
use crate::secrets::{Key, SecretSet};

/// Why a request's signature was refused (all are 401). The messages name
/// headers, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing signature header {0}")]
    MissingSignature(String),
    #[error("signature header {0} is malformed")]
    Malformed(String),
    #[error("header {0} appears more than once")]
    Repeated(String),
    #[error("missing signing timestamp ({0})")]
    MissingTimestamp(String),
    #[error("signing timestamp ({0}) is not a unix time")]
    BadTimestamp(String),
    #[error("signing timestamp is outside the tolerance of {0} s")]
    OutsideTolerance(u64),
    #[error("missing delivery id header {0}")]
    MissingId(String),
    #[error("signature does not match")]
    Mismatch,
}

/// One signature offered by the request.
enum Candidate {
    Mac(Vec<u8>),
    Ed25519(Signature),
}

/// Checks requests against one endpoint's scheme.
#[derive(Debug, Clone)]
pub struct Verifier {
    scheme: Verification,
}

/// The one value of `name` (trimmed; empty or not text counts as absent).
/// A header the request repeats is refused: which copy a proxy or a parser
/// would pick is anyone's guess, and no provider sends two.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, VerifyError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(VerifyError::Repeated(name.to_owned()));
    }
    Ok(first
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty()))
}

impl Verifier {
    pub fn new(scheme: Verification) -> Verifier {
        Verifier { scheme }
    }

    pub fn scheme(&self) -> &Verification {
        &self.scheme
    }

    /// Verifies `body` as received with `headers`; `now` is unix seconds.
    /// Passes when any signature matches any key.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        secrets: &SecretSet,
        now: i64,
    ) -> Result<(), VerifyError> {
        let scheme = &self.scheme;
        let name = &scheme.signature_header;
        let value =
            header(headers, name)?.ok_or_else(|| VerifyError::MissingSignature(name.clone()))?;
        let (candidates, signature_timestamp) = self.candidates(value);
        if candidates.is_empty() {
            return Err(VerifyError::Malformed(name.clone()));
        }

        let timestamp = match &scheme.timestamp {
            None => None,
            Some(TimestampSource::Header(ts_header)) => Some(
                header(headers, ts_header)?
                    .ok_or_else(|| VerifyError::MissingTimestamp(ts_header.clone()))?,
            ),
            Some(TimestampSource::SignatureField(field)) => Some(
                signature_timestamp
                    .ok_or_else(|| VerifyError::MissingTimestamp(format!("{name} {field}=")))?,
            ),
        };
        if let Some(text) = timestamp {
            let signed_at = parse_unix_seconds(text)
                .ok_or_else(|| VerifyError::BadTimestamp(text.chars().take(32).collect()))?;
            let tolerance = scheme.tolerance.as_secs();
            if signed_at.abs_diff(now) > tolerance {
                return Err(VerifyError::OutsideTolerance(tolerance));
            }
        }

        let mut id = None;
        if scheme.signed_payload.contains(&PayloadPart::Id) {
            let id_header = scheme.id_header.as_deref().unwrap_or("webhook-id");
            id = Some(
                header(headers, id_header)?
                    .ok_or_else(|| VerifyError::MissingId(id_header.to_owned()))?,
            );
        }
        let parts: Vec<&[u8]> = scheme
            .signed_payload
            .iter()
            .map(|part| match part {
                PayloadPart::Literal(text) => text.as_bytes(),
                PayloadPart::Body => body,
                PayloadPart::Timestamp => timestamp.unwrap_or_default().as_bytes(),
                PayloadPart::Id => id.unwrap_or_default().as_bytes(),
            })
            .collect();

        let mut message = None;
        for key in &secrets.keys {
            match key {
                Key::Hmac(mac) => {
                    let expected = mac.mac(&parts);
                    let matched = candidates.iter().any(|candidate| match candidate {
                        Candidate::Mac(offered) => bool::from(expected.ct_eq(offered)),
                        Candidate::Ed25519(_) => false,
                    });
                    if matched {
                        return Ok(());
                    }
                }
                Key::Ed25519(public) => {
                    let message = message.get_or_insert_with(|| parts.concat());
                    let matched = candidates.iter().any(|candidate| match candidate {
                        Candidate::Ed25519(signature) => {
                            public.verify_strict(message, signature).is_ok()
                        }
                        Candidate::Mac(_) => false,
                    });
                    if matched {
                        return Ok(());
                    }
                }
            }
        }
        Err(VerifyError::Mismatch)
    }

    /// The signatures in the header (undecodable ones dropped), and the
    /// timestamp field of a key=value header.
    fn candidates<'a>(&self, value: &'a str) -> (Vec<Candidate>, Option<&'a str>) {
        let scheme = &self.scheme;
        let decode = |text: &str| match scheme.encoding {
            SignatureEncoding::Hex => hex::decode(text).ok(),
            SignatureEncoding::Base64 => decode_base64(text),
        };
        match scheme.format {
            SignatureFormat::Single => {
                let encoded = value.strip_prefix(scheme.prefix.as_str());
                let candidates = encoded.and_then(decode).map(Candidate::Mac);
                (candidates.into_iter().collect(), None)
            }
            SignatureFormat::StripeKeyValue => {
                let field = match &scheme.timestamp {
                    Some(TimestampSource::SignatureField(field)) => field.as_str(),
                    _ => "t",
                };
                let mut timestamp = None;
                let mut candidates = Vec::new();
                for pair in value.split(',') {
                    let Some((key, text)) = pair.trim().split_once('=') else {
                        continue;
                    };
                    if key == field {
                        timestamp = Some(text);
                    } else if key == "v1"
                        && let Some(mac) = decode(text)
                    {
                        candidates.push(Candidate::Mac(mac));
                    }
                }
                (candidates, timestamp)
            }
            SignatureFormat::StandardWebhooks => {
                let candidates = value
                    .split_ascii_whitespace()
                    .filter_map(|entry| {
                        let (version, encoded) = entry.split_once(',')?;
                        let bytes = decode_base64(encoded)?;
                        match version {
                            "v1" => Some(Candidate::Mac(bytes)),
                            "v1a" => Signature::from_slice(&bytes).ok().map(Candidate::Ed25519),
                            _ => None,
                        }
                    })
                    .collect();
                (candidates, None)
            }
        }
    }
}

/// Unix seconds from a signing-time header, which may give milliseconds
/// (see [`is_unix_millis`]).
pub fn parse_unix_seconds(text: &str) -> Option<i64> {
    let number: i64 = text.trim().parse().ok()?;
    Some(if is_unix_millis(number as f64) {
        number / 1000
    } else {
        number
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use hookline_api::resolve::preset;
    use hookline_api::validated::{HmacAlgorithm, Provider, SecretFormat};

    fn verifier(provider: Provider) -> Verifier {
        Verifier::new(
            preset(provider)
                .verification
                .expect("preset has verification"),
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    /// Slack's documented example ("Verifying requests from Slack").
    #[test]
    fn slack_documented_example_verifies() {
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let secrets = SecretSet::parse(
            "8f742231b10e8888abcd99yyyzzz85a5",
            SecretFormat::Raw,
            HmacAlgorithm::Sha256,
        );
        let request = headers(&[
            ("x-slack-request-timestamp", "1531420618"),
            (
                "x-slack-signature",
                "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
            ),
        ]);
        let slack = verifier(Provider::Slack);
        assert_eq!(
            slack.verify(&request, body.as_bytes(), &secrets, 1531420618 + 10),
            Ok(())
        );
        assert_eq!(
            slack.verify(&request, body.as_bytes(), &secrets, 1531420618 + 301),
            Err(VerifyError::OutsideTolerance(300))
        );
        assert_eq!(
            slack.verify(&request, b"tampered", &secrets, 1531420618),
            Err(VerifyError::Mismatch)
        );
    }

    /// The Standard Webhooks reference example (also the Svix docs' example).
    #[test]
    fn standard_webhooks_documented_example_verifies() {
        let secrets = SecretSet::parse(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            SecretFormat::StandardWebhooks,
            HmacAlgorithm::Sha256,
        );
        let request = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,bm9ldHUjKzFob2VudXRob2VodWUzMjRvdWVvdW9ldQo= v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        let sw = verifier(Provider::StandardWebhooks);
        assert_eq!(
            sw.verify(&request, br#"{"test": 2432232314}"#, &secrets, 1614265330),
            Ok(())
        );
        assert_eq!(
            sw.verify(
                &request,
                br#"{"test": 2432232314}"#,
                &secrets,
                1614265330 - 400
            ),
            Err(VerifyError::OutsideTolerance(300))
        );
    }

    #[test]
    fn stripe_header_without_v1_is_malformed() {
        let secrets = SecretSet::parse("whsec_x", SecretFormat::Raw, HmacAlgorithm::Sha256);
        let request = headers(&[("stripe-signature", "t=1614265330,v0=abcd")]);
        assert_eq!(
            verifier(Provider::Stripe).verify(&request, b"{}", &secrets, 1614265330),
            Err(VerifyError::Malformed("stripe-signature".into()))
        );
    }

    #[test]
    fn missing_signature_header_is_named() {
        let secrets = SecretSet::parse("s", SecretFormat::Raw, HmacAlgorithm::Sha256);
        assert_eq!(
            verifier(Provider::Github).verify(&HeaderMap::new(), b"{}", &secrets, 0),
            Err(VerifyError::MissingSignature("x-hub-signature-256".into()))
        );
    }

    #[test]
    fn a_repeated_signature_header_is_refused() {
        let secrets = SecretSet::parse("s", SecretFormat::Raw, HmacAlgorithm::Sha256);
        let mut request = HeaderMap::new();
        request.append(
            "x-hub-signature-256",
            HeaderValue::from_static(
                "sha256=12b2bf8bf38eaf4ec3bdc8ac4d3a1c7a6b0b4cbd7a0e1f7e6d5c4b3a29180706",
            ),
        );
        request.append("x-hub-signature-256", HeaderValue::from_static("sha256=00"));
        assert_eq!(
            verifier(Provider::Github).verify(&request, b"{}", &secrets, 0),
            Err(VerifyError::Repeated("x-hub-signature-256".into()))
        );
    }

    #[test]
    fn milliseconds_are_read_as_seconds() {
        assert_eq!(parse_unix_seconds("1614265330000"), Some(1614265330));
        assert_eq!(parse_unix_seconds(" 1614265330 "), Some(1614265330));
        assert_eq!(parse_unix_seconds("yesterday"), None);
    }
}
