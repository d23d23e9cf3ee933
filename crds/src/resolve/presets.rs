//! Each provider's built-in signature scheme and event layout, as data.

use super::parse::parse_template;
use crate::defaults;
use crate::spec::{HmacAlgorithm, Provider, SignatureEncoding};
use crate::validated::{
    EventFields, FieldSource, SecretFormat, SignatureFormat, TimestampSource, UrlChallenge,
    Verification,
};

/// A provider's built-in verification and event layout, before user overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preset {
    pub verification: Option<Verification>,
    pub event: EventFields,
    /// The provider's check of the URL, answered and not stored.
    pub url_challenge: Option<UrlChallenge>,
    /// Whether `secretRef.generate` makes sense: we choose the secret, not the provider.
    pub secret_chosen_by_us: bool,
}

fn header(name: &str) -> Option<FieldSource> {
    Some(FieldSource::Header(name.to_ascii_lowercase()))
}

fn json(pointer: &str) -> Option<FieldSource> {
    Some(FieldSource::JsonPointer(pointer.to_owned()))
}

/// An HMAC-SHA256 scheme; `generic` endpoints start from one over `{body}`.
pub(super) fn hmac(
    signature_header: &str,
    format: SignatureFormat,
    encoding: SignatureEncoding,
    prefix: &str,
    template: &str,
    timestamp: Option<TimestampSource>,
) -> Verification {
    Verification {
        signature_header: signature_header.to_ascii_lowercase(),
        format,
        algorithm: HmacAlgorithm::Sha256,
        encoding,
        prefix: prefix.to_owned(),
        // The templates here are constants known to parse.
        signed_payload: parse_template(template).unwrap_or_default(),
        timestamp,
        id_header: None,
        tolerance: defaults::TOLERANCE,
        secret_format: SecretFormat::Raw,
    }
}

/// The built-in settings of `provider`.
pub fn preset(provider: Provider) -> Preset {
    use SignatureEncoding::{Base64, Hex};
    match provider {
        Provider::Stripe => Preset {
            verification: Some(hmac(
                "Stripe-Signature",
                SignatureFormat::StripeKeyValue,
                Hex,
                "",
                "{timestamp}.{body}",
                Some(TimestampSource::SignatureField("t".into())),
            )),
            event: EventFields {
                id: json("/id"),
                event_type: json("/type"),
                timestamp: json("/created"),
                object_id: json("/data/object/id"),
            },
            url_challenge: None,
            secret_chosen_by_us: false,
        },
        Provider::Github => Preset {
            verification: Some(hmac(
                "X-Hub-Signature-256",
                SignatureFormat::Single,
                Hex,
                "sha256=",
                "{body}",
                None,
            )),
            event: EventFields {
                id: header("X-GitHub-Delivery"),
                event_type: header("X-GitHub-Event"),
                timestamp: None,
                object_id: None,
            },
            url_challenge: None,
            secret_chosen_by_us: true,
        },
        Provider::Shopify => Preset {
            verification: Some(hmac(
                "X-Shopify-Hmac-Sha256",
                SignatureFormat::Single,
                Base64,
                "",
                "{body}",
                None,
            )),
            event: EventFields {
                id: header("X-Shopify-Webhook-Id"),
                event_type: header("X-Shopify-Topic"),
                timestamp: header("X-Shopify-Triggered-At"),
                object_id: json("/id"),
            },
            url_challenge: None,
            secret_chosen_by_us: false,
        },
        Provider::Slack => Preset {
            verification: Some(hmac(
                "X-Slack-Signature",
                SignatureFormat::Single,
                Hex,
                "v0=",
                "v0:{timestamp}:{body}",
                Some(TimestampSource::Header("x-slack-request-timestamp".into())),
            )),
            event: EventFields {
                id: json("/event_id"),
                event_type: json("/event/type"),
                timestamp: json("/event_time"),
                object_id: None,
            },
            // Slack checks a new URL with a signed `url_verification` event
            // whose `challenge` it expects back.
            url_challenge: Some(UrlChallenge {
                marker_pointer: "/type".into(),
                marker_value: "url_verification".into(),
                value_pointer: "/challenge".into(),
                answer_key: "challenge".into(),
            }),
            secret_chosen_by_us: false,
        },
        Provider::StandardWebhooks => Preset {
            verification: Some(Verification {
                id_header: Some("webhook-id".into()),
                secret_format: SecretFormat::StandardWebhooks,
                ..hmac(
                    "webhook-signature",
                    SignatureFormat::StandardWebhooks,
                    Base64,
                    "",
                    "{id}.{timestamp}.{body}",
                    Some(TimestampSource::Header("webhook-timestamp".into())),
                )
            }),
            event: EventFields {
                id: header("webhook-id"),
                event_type: json("/type"),
                timestamp: header("webhook-timestamp"),
                object_id: json("/data/id"),
            },
            url_challenge: None,
            secret_chosen_by_us: true,
        },
        Provider::Generic => Preset {
            verification: None,
            event: EventFields {
                id: None,
                event_type: None,
                timestamp: None,
                object_id: None,
            },
            url_challenge: None,
            secret_chosen_by_us: true,
        },
    }
}
