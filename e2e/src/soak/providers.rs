//! How each provider builds and signs a delivery, written from the providers'
//! public documentation and independent of Hookline's code: if this and the
//! receiver read a scheme the same wrong way, the soak would not notice, so
//! nothing here comes from `hookline-api` or the receiver.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SecondsFormat};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// The providers with a preset, one soak endpoint each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Provider {
    Stripe,
    Github,
    Shopify,
    Slack,
    StandardWebhooks,
    Generic,
}

/// Where the generic example's allow-list lets a request come from (it trusts
/// one proxy hop, and the soak plays that proxy).
const GENERIC_CLIENT: &str = "203.0.113.7";

impl Provider {
    pub const ALL: [Provider; 6] = [
        Provider::Stripe,
        Provider::Github,
        Provider::Shopify,
        Provider::Slack,
        Provider::StandardWebhooks,
        Provider::Generic,
    ];

    /// The shipped manifest for this provider, in `examples/`.
    pub fn example(self) -> &'static str {
        match self {
            Provider::Stripe => "stripe.yaml",
            Provider::Github => "github.yaml",
            Provider::Shopify => "shopify.yaml",
            Provider::Slack => "slack.yaml",
            Provider::StandardWebhooks => "standard-webhooks.yaml",
            Provider::Generic => "generic.yaml",
        }
    }

    /// Whether its events name an object, so a projection row follows them.
    pub fn has_objects(self) -> bool {
        matches!(
            self,
            Provider::Stripe | Provider::Shopify | Provider::StandardWebhooks | Provider::Generic
        )
    }

    /// Whether the signed timestamp is the event's own time (Standard
    /// Webhooks): such an event cannot be delivered later than the receiver's
    /// tolerance (5 minutes) after it happened.
    pub fn signs_event_time(self) -> bool {
        self == Provider::StandardWebhooks
    }

    /// A signing secret in the provider's format, made from `random`.
    pub fn secret(self, random: &[u8; 24]) -> String {
        let hex = hex::encode(random);
        match self {
            Provider::Stripe => format!("whsec_{hex}"),
            Provider::Shopify => format!("shpss_{hex}"),
            Provider::StandardWebhooks => format!("whsec_{}", BASE64.encode(random)),
            Provider::Github | Provider::Slack | Provider::Generic => hex,
        }
    }

    /// The event id, in the provider's style, of the soak's event number `n`.
    pub fn event_id(self, n: usize) -> String {
        match self {
            Provider::Stripe => format!("evt_{n:08}"),
            Provider::Github => format!("5a0c8e1e-0d2f-11f0-8000-{n:012}"),
            Provider::Shopify => format!("b54557e4-bdd9-4b37-8a5f-{n:012}"),
            Provider::Slack => format!("Ev{n:010}"),
            Provider::StandardWebhooks => format!("msg_{n:08}"),
            Provider::Generic => format!("ptn-{n:08}"),
        }
    }

    /// The id of the soak's object number `n`, for providers with objects.
    pub fn object_id(self, n: usize) -> Option<String> {
        match self {
            Provider::Stripe => Some(format!("in_{n:06}")),
            // Shopify's ids are JSON numbers.
            Provider::Shopify => Some((820_982_911_946_154_000_u64 + n as u64).to_string()),
            Provider::StandardWebhooks => Some(format!("ord_{n:06}")),
            Provider::Generic => Some(format!("thing_{n:06}")),
            Provider::Github | Provider::Slack => None,
        }
    }
}

/// One event, as the provider knows it.
#[derive(Clone, Copy, Debug)]
pub struct EventData<'a> {
    pub id: &'a str,
    /// The object it is about, when the provider has objects.
    pub object: Option<&'a str>,
    /// When it happened, in unix seconds.
    pub time: i64,
    /// Carries a NUL character (`\u0000`): valid JSON the receiver accepts
    /// and `jsonb` cannot hold (the consumer keeps such a body as bytes).
    /// Its id starts `poison-`, which the soak's CHECK constraint on
    /// `hookline.events` refuses (see `fleet`), so it must end as a dead letter.
    pub poison: bool,
    /// Bytes of filler text, so bodies are not all one size.
    pub padding: usize,
}

/// The headers of one delivery attempt, and every signature value in them.
#[derive(Clone, Debug)]
pub struct Signed {
    pub headers: Vec<(&'static str, String)>,
    /// The MACs as sent (hex or base64): none may ever appear in a log.
    pub signatures: Vec<String>,
}

/// The body `provider` sends for `event`, byte for byte.
pub fn body(provider: Provider, event: &EventData<'_>) -> String {
    let filler = filler(event.padding);
    let mut body = match provider {
        Provider::Stripe => {
            let mut object = json!({
                "object": "invoice",
                "status": status(event.time),
                "amount_due": event.time % 10_000,
                "description": filler,
            });
            if let Some(id) = event.object {
                object["id"] = json!(id);
            }
            json!({
                "id": event.id,
                "object": "event",
                "api_version": "2024-06-20",
                "created": event.time,
                "type": pick(event.id, &["invoice.created", "invoice.updated", "invoice.paid"]),
                "livemode": false,
                "data": { "object": object },
            })
        }
        Provider::Github => json!({
            "action": pick(event.id, &["opened", "synchronize", "closed"]),
            "number": event.time % 1000,
            "repository": { "full_name": "hookline/soak" },
            "sender": { "login": "soak-bot" },
            "body": filler,
        }),
        Provider::Shopify => {
            let mut order = json!({
                "email": "soak@example.com",
                "updated_at": rfc3339(event.time),
                "financial_status": status(event.time),
                "note": filler,
            });
            if let Some(number) = event.object.and_then(|id| id.parse::<u64>().ok()) {
                order["id"] = json!(number);
            }
            order
        }
        Provider::Slack => json!({
            "team_id": "T0SOAK",
            "api_app_id": "A0SOAK",
            "type": "event_callback",
            "event_id": event.id,
            "event_time": event.time,
            "event": { "type": pick(event.id, &["message", "reaction_added"]), "channel": "C0SOAK", "text": filler },
        }),
        Provider::StandardWebhooks => {
            let mut data = json!({ "status": status(event.time), "note": filler });
            if let Some(id) = event.object {
                data["id"] = json!(id);
            }
            json!({
                "type": pick(event.id, &["order.created", "order.updated"]),
                "timestamp": rfc3339(event.time),
                "data": data,
            })
        }
        Provider::Generic => {
            let mut object = json!({ "note": filler });
            if let Some(id) = event.object {
                object["id"] = json!(id);
            }
            json!({
                "id": event.id,
                "type": "thing.updated",
                "occurred_at": event.time,
                "object": object,
            })
        }
    };
    if event.poison
        && let Value::Object(fields) = &mut body
    {
        fields.insert("poison".into(), json!("\u{0}"));
    }
    body.to_string()
}

/// One delivery of event `id` at `now` (unix seconds) as `provider` sends
/// it: the body and its signed headers. For tests that need one correctly
/// signed event of a provider, without writing its scheme again.
pub fn delivery(
    provider: Provider,
    secret: &str,
    id: &str,
    now: i64,
) -> (String, Vec<(String, String)>) {
    let object = provider.object_id(1);
    let event = EventData {
        id,
        object: object.as_deref(),
        time: now,
        poison: false,
        padding: 0,
    };
    let body = body(provider, &event);
    let headers = sign(provider, secret, &event, &body, now)
        .headers
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    (body, headers)
}

/// Signs one delivery attempt of `body` at `now` (unix seconds) as `provider` does.
pub fn sign(
    provider: Provider,
    secret: &str,
    event: &EventData<'_>,
    body: &str,
    now: i64,
) -> Signed {
    match provider {
        // Stripe-Signature: t=<time>,v1=<hex HMAC-SHA256 of "<time>.<body>">.
        Provider::Stripe => {
            let mac = hex::encode(hmac_sha256(
                secret.as_bytes(),
                &[&now.to_string(), ".", body],
            ));
            Signed {
                headers: vec![
                    ("Stripe-Signature", format!("t={now},v1={mac}")),
                    (
                        "User-Agent",
                        "Stripe/1.0 (+https://stripe.com/docs/webhooks)".into(),
                    ),
                ],
                signatures: vec![mac],
            }
        }
        // X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>.
        Provider::Github => {
            let mac = hex::encode(hmac_sha256(secret.as_bytes(), &[body]));
            let kind = pick(event.id, &["pull_request", "push", "issues"]);
            Signed {
                headers: vec![
                    ("X-Hub-Signature-256", format!("sha256={mac}")),
                    ("X-GitHub-Delivery", event.id.to_owned()),
                    ("X-GitHub-Event", kind.to_owned()),
                    ("User-Agent", "GitHub-Hookshot/soak".into()),
                ],
                signatures: vec![mac],
            }
        }
        // X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256 of the body>.
        Provider::Shopify => {
            let mac = BASE64.encode(hmac_sha256(secret.as_bytes(), &[body]));
            Signed {
                headers: vec![
                    ("X-Shopify-Hmac-Sha256", mac.clone()),
                    ("X-Shopify-Webhook-Id", event.id.to_owned()),
                    ("X-Shopify-Topic", "orders/updated".into()),
                    ("X-Shopify-Triggered-At", rfc3339(event.time)),
                    ("X-Shopify-Shop-Domain", "soak.myshopify.com".into()),
                ],
                signatures: vec![mac],
            }
        }
        // X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:<time>:<body>">.
        Provider::Slack => {
            let mac = hex::encode(hmac_sha256(
                secret.as_bytes(),
                &["v0:", &now.to_string(), ":", body],
            ));
            Signed {
                headers: vec![
                    ("X-Slack-Request-Timestamp", now.to_string()),
                    ("X-Slack-Signature", format!("v0={mac}")),
                ],
                signatures: vec![mac],
            }
        }
        // webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<time>.<body>">,
        // keyed with the base64-decoded part of `whsec_<base64>`; the time is the event's.
        Provider::StandardWebhooks => {
            let key = secret
                .strip_prefix("whsec_")
                .and_then(|encoded| BASE64.decode(encoded).ok())
                .unwrap_or_default();
            let time = event.time.to_string();
            let mac = BASE64.encode(hmac_sha256(&key, &[event.id, ".", &time, ".", body]));
            Signed {
                headers: vec![
                    ("webhook-id", event.id.to_owned()),
                    ("webhook-timestamp", time),
                    ("webhook-signature", format!("v1,{mac}")),
                ],
                signatures: vec![mac],
            }
        }
        // The generic example: X-Signature: sha256=<hex HMAC-SHA256 of
        // "<time>.<body>">, the time in X-Timestamp, behind one proxy hop.
        Provider::Generic => {
            let mac = hex::encode(hmac_sha256(
                secret.as_bytes(),
                &[&now.to_string(), ".", body],
            ));
            Signed {
                headers: vec![
                    ("X-Signature", format!("sha256={mac}")),
                    ("X-Timestamp", now.to_string()),
                    ("X-Forwarded-For", GENERIC_CLIENT.into()),
                ],
                signatures: vec![mac],
            }
        }
    }
}

fn hmac_sha256(key: &[u8], parts: &[&str]) -> Vec<u8> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return Vec::new();
    };
    for part in parts {
        mac.update(part.as_bytes());
    }
    mac.finalize().into_bytes().to_vec()
}

/// RFC 3339 in UTC, seconds precision, as Shopify and Standard Webhooks write times.
pub fn rfc3339(unix_seconds: i64) -> String {
    DateTime::from_timestamp(unix_seconds, 0)
        .map(|time| time.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// One of `choices`, the same for the same id.
fn pick<'a>(id: &str, choices: &[&'a str]) -> &'a str {
    let sum = id.bytes().map(usize::from).sum::<usize>();
    choices
        .get(sum % choices.len().max(1))
        .copied()
        .unwrap_or("")
}

fn status(time: i64) -> &'static str {
    ["draft", "open", "paid"][usize::try_from(time.rem_euclid(3)).unwrap_or(0)]
}

fn filler(bytes: usize) -> String {
    const TEXT: &str = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ";
    TEXT.chars().cycle().take(bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(poison: bool) -> EventData<'static> {
        EventData {
            id: "evt_1",
            object: Some("in_1"),
            time: 1_700_000_000,
            poison,
            padding: 10,
        }
    }

    #[test]
    fn stripe_signs_time_dot_body_in_hex() {
        // The example of Stripe's documentation, computed independently.
        let signed = sign(
            Provider::Stripe,
            "whsec_test",
            &event(false),
            "{}",
            1_700_000_000,
        );
        let expected = hex::encode(hmac_sha256(b"whsec_test", &["1700000000.{}"]));
        assert_eq!(
            signed.headers[0],
            ("Stripe-Signature", format!("t=1700000000,v1={expected}"))
        );
        assert_eq!(signed.signatures, [expected]);
    }

    #[test]
    fn standard_webhooks_keys_with_the_decoded_secret_and_signs_the_event_time() {
        let secret = Provider::StandardWebhooks.secret(&[7; 24]);
        let signed = sign(Provider::StandardWebhooks, &secret, &event(false), "{}", 42);
        let key = BASE64.decode(&secret["whsec_".len()..]).expect("base64");
        let expected = BASE64.encode(hmac_sha256(&key, &["evt_1.1700000000.{}"]));
        assert!(
            signed
                .headers
                .contains(&("webhook-signature", format!("v1,{expected}")))
        );
        assert!(
            signed
                .headers
                .contains(&("webhook-timestamp", "1700000000".into()))
        );
    }

    #[test]
    fn a_poison_body_is_valid_json_with_a_nul_character() {
        let body = body(Provider::Stripe, &event(true));
        let parsed: Value = serde_json::from_str(&body).expect("valid JSON");
        assert_eq!(parsed["poison"], "\u{0}");
        assert!(body.contains("\\u0000"));
    }

    #[test]
    fn shopify_objects_are_json_numbers() {
        let id = Provider::Shopify.object_id(3).expect("an object");
        let event = EventData {
            object: Some(&id),
            ..event(false)
        };
        let parsed: Value =
            serde_json::from_str(&body(Provider::Shopify, &event)).expect("valid JSON");
        assert_eq!(parsed["id"].to_string(), id);
    }
}
