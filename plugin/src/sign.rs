//! A test delivery for an endpoint, signed as its provider signs: the body,
//! the headers the endpoint reads its event from, and the signature the
//! receiver checks. Driven by the endpoint's resolved [`Verification`](hookline_api::validated::Verification) (the
//! provider presets and a generic endpoint's settings are the same data the
//! receiver verifies with), so every scheme the receiver takes can be sent.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hmac::{Hmac, Mac};
use hookline_api::ValidatedEndpoint;
use hookline_api::validated::{
    FieldSource, HmacAlgorithm, PayloadPart, Provider, SecretFormat, SignatureEncoding,
    SignatureFormat, TimestampSource,
};
use serde_json::{Value, json};

/// Why no delivery could be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("the signing secret is empty")]
    EmptySecret,
    #[error(
        "the signing secret is an ed25519 public key (whpk_): only the sender's private key can sign"
    )]
    PublicKey,
    #[error("the signing secret is not base64 after whsec_ (Standard Webhooks)")]
    NotBase64,
}

/// What to send, besides the endpoint.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The event type (`invoice.paid`); the provider's usual one when absent.
    pub event_type: Option<String>,
    /// A body to send instead of the sample, byte for byte.
    pub body: Option<Vec<u8>>,
    /// Sign with a wrong key, so the receiver must answer 401.
    pub forge: bool,
    /// Signing time, unix seconds.
    pub now: i64,
    /// The event id; a fresh one in the provider's style when absent.
    pub event_id: Option<String>,
}

/// One request, ready to POST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    /// The event id the receiver will find (from the body or the headers).
    pub event_id: String,
    pub event_type: String,
}

impl Delivery {
    /// The value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn set_header(&mut self, name: &str, value: String) {
        match self
            .headers
            .iter_mut()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
        {
            Some(entry) => entry.1 = value,
            None => self.headers.push((name.to_owned(), value)),
        }
    }
}

/// The first usable line of a Secret's value: several lines are keys being
/// rotated, and the first is the current one.
pub fn first_secret(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|line| !line.is_empty())
}

/// Builds and signs a delivery for `endpoint` with `secret` (the Secret's value).
pub fn delivery(
    endpoint: &ValidatedEndpoint,
    secret: &str,
    options: &Options,
) -> Result<Delivery, SignError> {
    let scheme = &endpoint.verification;
    let key = key(
        first_secret(secret).ok_or(SignError::EmptySecret)?,
        scheme.secret_format,
    )?;
    let event_type = options
        .event_type
        .clone()
        .unwrap_or_else(|| default_type(endpoint.provider).to_owned());
    let fields = &endpoint.event;
    let now = options.now;
    let (body, event_id) = match &options.body {
        Some(bytes) => {
            let parsed: Option<Value> = serde_json::from_slice(bytes).ok();
            let found = fields
                .id
                .as_ref()
                .filter(|source| matches!(source, FieldSource::JsonPointer(_)))
                .and_then(|source| source.read(|_| None, parsed.as_ref()));
            let id = found
                .or_else(|| options.event_id.clone())
                .unwrap_or_else(|| new_id(endpoint.provider));
            (bytes.clone(), id)
        }
        None => {
            let id = options
                .event_id
                .clone()
                .unwrap_or_else(|| new_id(endpoint.provider));
            let mut body = sample_body(endpoint.provider, &id, &event_type, now);
            let values = [
                (&fields.id, json!(id)),
                (&fields.event_type, json!(event_type)),
                (&fields.timestamp, json!(now)),
            ];
            for (source, value) in values {
                if let Some(FieldSource::JsonPointer(pointer)) = source {
                    set_pointer(&mut body, pointer, value);
                }
            }
            if let Some(FieldSource::JsonPointer(pointer)) = &fields.object_id
                && body.pointer(pointer).is_none()
            {
                set_pointer(&mut body, pointer, json!(format!("obj_{}", short_random())));
            }
            (body.to_string().into_bytes(), id)
        }
    };
    let content_type = if serde_json::from_slice::<Value>(&body).is_ok() {
        "application/json"
    } else {
        "application/octet-stream"
    };
    let mut delivery = Delivery {
        body,
        headers: vec![
            ("Content-Type".into(), content_type.into()),
            ("User-Agent".into(), "kubectl-hookline".into()),
        ],
        event_id: event_id.clone(),
        event_type: event_type.clone(),
    };
    // Where the endpoint reads the event from headers, they carry it; the
    // signing time's header carries unix seconds, any other time RFC 3339.
    let signing_header = match &scheme.timestamp {
        Some(TimestampSource::Header(name)) => Some(name.as_str()),
        _ => None,
    };
    if let Some(FieldSource::Header(name)) = &fields.id {
        delivery.set_header(name, event_id.clone());
    } else if fields.id.is_none() {
        // No id in the request: the receiver takes `Idempotency-Key` next.
        delivery.set_header("Idempotency-Key", event_id.clone());
    }
    if let Some(FieldSource::Header(name)) = &fields.event_type {
        delivery.set_header(name, event_type);
    }
    if let Some(FieldSource::Header(name)) = &fields.timestamp {
        let value = if Some(name.as_str()) == signing_header {
            now.to_string()
        } else {
            rfc3339(now)
        };
        delivery.set_header(name, value);
    }
    if let Some(name) = signing_header {
        delivery.set_header(name, now.to_string());
    }
    let timestamp = match &scheme.timestamp {
        Some(TimestampSource::Header(name)) => delivery.header(name).unwrap_or_default().to_owned(),
        _ => now.to_string(),
    };
    let id_header = scheme.id_header.as_deref().unwrap_or("webhook-id");
    if scheme.signed_payload.contains(&PayloadPart::Id) && delivery.header(id_header).is_none() {
        delivery.set_header(id_header, event_id);
    }
    let id = delivery.header(id_header).unwrap_or_default().to_owned();
    let parts: Vec<&[u8]> = scheme
        .signed_payload
        .iter()
        .map(|part| match part {
            PayloadPart::Literal(text) => text.as_bytes(),
            PayloadPart::Body => delivery.body.as_slice(),
            PayloadPart::Timestamp => timestamp.as_bytes(),
            PayloadPart::Id => id.as_bytes(),
        })
        .collect();
    let key = if options.forge {
        [key.as_slice(), b"-forged"].concat()
    } else {
        key
    };
    let mac = mac(scheme.algorithm, &key, &parts);
    let encoded = match scheme.encoding {
        SignatureEncoding::Hex => hex::encode(mac),
        SignatureEncoding::Base64 => STANDARD.encode(mac),
    };
    let value = match scheme.format {
        SignatureFormat::Single => format!("{}{encoded}", scheme.prefix),
        SignatureFormat::StripeKeyValue => {
            let field = match &scheme.timestamp {
                Some(TimestampSource::SignatureField(field)) => field.as_str(),
                _ => "t",
            };
            format!("{field}={timestamp},v1={encoded}")
        }
        SignatureFormat::StandardWebhooks => format!("v1,{encoded}"),
    };
    delivery.set_header(&scheme.signature_header, value);
    Ok(delivery)
}

/// The HMAC key a secret line stands for, as the receiver reads it.
fn key(line: &str, format: SecretFormat) -> Result<Vec<u8>, SignError> {
    match format {
        SecretFormat::Raw => Ok(line.as_bytes().to_vec()),
        SecretFormat::StandardWebhooks => {
            if line.starts_with("whpk_") || line.starts_with("whsk_") {
                return Err(SignError::PublicKey);
            }
            let encoded = line.strip_prefix("whsec_").unwrap_or(line);
            STANDARD
                .decode(encoded)
                .or_else(|_| STANDARD_NO_PAD.decode(encoded))
                .map_err(|_| SignError::NotBase64)
        }
    }
}

fn mac(algorithm: HmacAlgorithm, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        // HMAC takes keys of any length: `new_from_slice` cannot fail.
        let Ok(mut mac) = <M as Mac>::new_from_slice(key) else {
            return Vec::new();
        };
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }
    match algorithm {
        HmacAlgorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, parts),
        HmacAlgorithm::Sha512 => run::<Hmac<sha2::Sha512>>(key, parts),
        HmacAlgorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts),
    }
}

/// The event type a provider's sample carries unless `--type` says otherwise.
pub fn default_type(provider: Provider) -> &'static str {
    match provider {
        Provider::Stripe => "invoice.paid",
        Provider::Github => "push",
        Provider::Shopify => "orders/create",
        Provider::Slack => "message",
        Provider::StandardWebhooks => "order.created",
        Provider::Generic => "test.event",
    }
}

/// A fresh event id in the provider's style.
pub fn new_id(provider: Provider) -> String {
    let random = short_random();
    match provider {
        Provider::Stripe => format!("evt_test_{random}"),
        Provider::Github | Provider::Shopify => {
            let bytes: [u8; 16] = rand::random();
            let hex = hex::encode(bytes);
            format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..32]
            )
        }
        Provider::Slack => format!("Ev{}", random.to_ascii_uppercase()),
        Provider::StandardWebhooks => format!("msg_{random}"),
        Provider::Generic => format!("test_{random}"),
    }
}

fn short_random() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// The body the provider would send, in its documented shape.
fn sample_body(provider: Provider, id: &str, event_type: &str, now: i64) -> Value {
    match provider {
        Provider::Stripe => json!({
            "id": id,
            "object": "event",
            "api_version": "2024-06-20",
            "created": now,
            "type": event_type,
            "livemode": false,
            "data": {"object": {"id": format!("in_test_{}", short_random()), "object": "invoice", "status": "paid"}},
        }),
        Provider::Github => json!({
            "ref": "refs/heads/main",
            "repository": {"full_name": "hookline/test"},
            "sender": {"login": "kubectl-hookline"},
        }),
        Provider::Shopify => json!({
            "id": 820_982_911_946_154_508_u64,
            "email": "test@example.com",
            "created_at": rfc3339(now),
            "financial_status": "paid",
        }),
        Provider::Slack => json!({
            "team_id": "T0TEST",
            "api_app_id": "A0TEST",
            "type": "event_callback",
            "event_id": id,
            "event_time": now,
            "event": {"type": event_type, "channel": "C0TEST", "text": "sent by kubectl hookline"},
        }),
        Provider::StandardWebhooks => json!({
            "type": event_type,
            "timestamp": rfc3339(now),
            "data": {"id": format!("ord_{}", short_random()), "status": "created"},
        }),
        Provider::Generic => {
            json!({"id": id, "type": event_type, "occurred_at": now, "object": {}})
        }
    }
}

/// Sets `value` at the JSON pointer, making the objects on the way.
fn set_pointer(target: &mut Value, pointer: &str, value: Value) {
    if pointer.is_empty() {
        return;
    }
    let mut current = target;
    let tokens: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|token| token.replace("~1", "/").replace("~0", "~"))
        .collect();
    for (index, token) in tokens.iter().enumerate() {
        if !current.is_object() {
            *current = json!({});
        }
        let Value::Object(map) = current else { return };
        if index + 1 == tokens.len() {
            map.insert(token.clone(), value);
            return;
        }
        current = map.entry(token.clone()).or_insert_with(|| json!({}));
    }
}

fn rfc3339(unix_seconds: i64) -> String {
    chrono::DateTime::from_timestamp(unix_seconds, 0)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(provider: &str) -> ValidatedEndpoint {
        let text = format!(
            "apiVersion: hookline.io/v1alpha1\nkind: WebhookEndpoint\nmetadata: {{name: t, namespace: default}}\nspec:\n  provider: {provider}\n  secretRef: {{name: s}}\n"
        );
        hookline_api::validate(&hookline_api::parse_manifest(&text).expect("manifest"))
            .expect("valid")
    }

    fn options() -> Options {
        Options {
            now: 1_700_000_000,
            event_id: Some("evt_1".into()),
            ..Options::default()
        }
    }

    #[test]
    fn stripe_signs_time_dot_body_in_hex() {
        let sent =
            delivery(&endpoint("stripe"), "whsec_test\nwhsec_old", &options()).expect("signed");
        let body = String::from_utf8(sent.body.clone()).expect("text");
        let expected = hex::encode(mac(
            HmacAlgorithm::Sha256,
            b"whsec_test",
            &[b"1700000000.", body.as_bytes()],
        ));
        assert_eq!(
            sent.header("stripe-signature"),
            Some(format!("t=1700000000,v1={expected}").as_str())
        );
        let parsed: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(parsed["id"], "evt_1");
        assert_eq!(parsed["type"], "invoice.paid");
    }

    #[test]
    fn github_carries_event_and_delivery_headers() {
        let sent = delivery(
            &endpoint("github"),
            "s3cret",
            &Options {
                event_type: Some("pull_request".into()),
                ..options()
            },
        )
        .expect("signed");
        assert_eq!(sent.header("x-github-delivery"), Some("evt_1"));
        assert_eq!(sent.header("x-github-event"), Some("pull_request"));
        let expected = hex::encode(mac(HmacAlgorithm::Sha256, b"s3cret", &[&sent.body]));
        assert_eq!(
            sent.header("x-hub-signature-256"),
            Some(format!("sha256={expected}").as_str())
        );
    }

    #[test]
    fn standard_webhooks_keys_with_the_decoded_secret() {
        let secret = format!("whsec_{}", STANDARD.encode([7u8; 24]));
        let sent = delivery(&endpoint("standardWebhooks"), &secret, &options()).expect("signed");
        assert_eq!(sent.header("webhook-id"), Some("evt_1"));
        assert_eq!(sent.header("webhook-timestamp"), Some("1700000000"));
        let mut signed = b"evt_1.1700000000.".to_vec();
        signed.extend_from_slice(&sent.body);
        let expected = STANDARD.encode(mac(HmacAlgorithm::Sha256, &[7u8; 24], &[&signed]));
        assert_eq!(
            sent.header("webhook-signature"),
            Some(format!("v1,{expected}").as_str())
        );
    }

    #[test]
    fn a_forged_delivery_is_well_formed_but_differs() {
        let good = delivery(&endpoint("shopify"), "shpss_x", &options()).expect("signed");
        let forged = delivery(
            &endpoint("shopify"),
            "shpss_x",
            &Options {
                forge: true,
                body: Some(good.body.clone()),
                ..options()
            },
        )
        .expect("signed");
        let (good, forged) = (
            good.header("x-shopify-hmac-sha256").expect("signature"),
            forged.header("x-shopify-hmac-sha256").expect("signature"),
        );
        assert_ne!(good, forged);
        assert_eq!(good.len(), forged.len());
    }

    #[test]
    fn a_given_body_keeps_its_own_id() {
        let sent = delivery(
            &endpoint("stripe"),
            "whsec_x",
            &Options {
                body: Some(br#"{"id":"evt_mine","type":"charge.failed"}"#.to_vec()),
                ..options()
            },
        )
        .expect("signed");
        assert_eq!(sent.event_id, "evt_mine");
        assert_eq!(sent.body, br#"{"id":"evt_mine","type":"charge.failed"}"#);
    }

    #[test]
    fn a_public_key_cannot_sign() {
        let err = delivery(&endpoint("standardWebhooks"), "whpk_abc", &options());
        assert_eq!(err, Err(SignError::PublicKey));
    }

    #[test]
    fn pointers_make_their_objects() {
        let mut value = json!({"a": 1});
        set_pointer(&mut value, "/b/c~1d", json!("x"));
        assert_eq!(value, json!({"a": 1, "b": {"c/d": "x"}}));
    }
}
