//! Every provider's signature check on arbitrary headers and body: never
//! panics, whatever the header says (garbage, huge, thousands of `v1=`,
//! overflowing `t=`).
#![no_main]

use std::sync::OnceLock;

use hookline_api::spec::{Provider, VerificationSpec, WebhookEndpointSpec};
use hookline_api::validated::SecretFormat;
use hookline_receiver::checks::signature::Verifier;
use hookline_receiver::secrets::SecretSet;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

/// A verifier and its keys for each provider (generic: HMAC over `{timestamp}.{body}`).
fn verifiers() -> &'static [(Verifier, SecretSet)] {
    static ALL: OnceLock<Vec<(Verifier, SecretSet)>> = OnceLock::new();
    ALL.get_or_init(|| {
        Provider::ALL
            .into_iter()
            .map(|provider| {
                let mut spec = WebhookEndpointSpec::new(provider, "s");
                if provider == Provider::Generic {
                    spec.verification = Some(VerificationSpec {
                        signature_header: Some("X-Signature".into()),
                        signed_payload: Some("{timestamp}.{body}".into()),
                        timestamp_header: Some("X-Timestamp".into()),
                        ..Default::default()
                    });
                }
                let endpoint = hookline_api::resolve("fuzz", "endpoint", &spec).expect("a valid preset");
                let secrets = match endpoint.verification.secret_format {
                    SecretFormat::StandardWebhooks => "whsec_c2VjcmV0LW9uZS1zZWNyZXQtb25l\nwhsec_dHdv",
                    SecretFormat::Raw => "secret-one\nsecret-two",
                };
                let set = SecretSet::parse(secrets, endpoint.verification.secret_format, endpoint.verification.algorithm);
                (Verifier::new(endpoint.verification), set)
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let all = verifiers();
    let (verifier, secrets) = &all[usize::from(selector) % all.len()];
    // Fields separated by 0xFF (never valid UTF-8): signature, timestamp, id, body.
    let mut fields = rest.splitn(4, |byte| *byte == 0xFF);
    let signature = fields.next().unwrap_or_default();
    let timestamp = fields.next().unwrap_or_default();
    let id = fields.next().unwrap_or_default();
    let body = fields.next().unwrap_or_default();
    let scheme = verifier.scheme();
    let mut headers = HeaderMap::new();
    let mut insert = |name: &str, value: &[u8]| {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
    };
    insert(&scheme.signature_header, signature);
    for name in ["x-slack-request-timestamp", "webhook-timestamp", "x-timestamp"] {
        insert(name, timestamp);
    }
    insert("webhook-id", id);
    let _ = verifier.verify(&headers, body, secrets, 1_700_000_000);
});
