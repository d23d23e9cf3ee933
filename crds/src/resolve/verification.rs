//! `spec.verification`: the user's overrides on top of the provider's scheme.

use super::Problems;
use super::parse::{parse_duration, parse_header_name, parse_template};
use super::presets::hmac;
use crate::spec::{SignatureEncoding, VerificationSpec};
use crate::validated::{PayloadPart, SignatureFormat, TimestampSource, Verification};

/// The signature scheme: `preset` with `overrides` applied. `None` when no
/// scheme can be built (a generic endpoint without a signature header).
pub(super) fn resolve_verification(
    preset: Option<Verification>,
    overrides: Option<&VerificationSpec>,
    problems: &mut Problems,
) -> Option<Verification> {
    let default = VerificationSpec::default();
    let spec = overrides.unwrap_or(&default);
    let header = match (&spec.signature_header, &preset) {
        (Some(name), _) => {
            problems.check("spec.verification.signatureHeader", parse_header_name(name))?
        }
        (None, Some(preset)) => preset.signature_header.clone(),
        (None, None) => {
            problems.add(
                "spec.verification.signatureHeader",
                "required for provider generic",
            );
            return None;
        }
    };
    let base = preset.unwrap_or_else(|| {
        hmac(
            &header,
            SignatureFormat::Single,
            SignatureEncoding::Hex,
            "",
            "{body}",
            None,
        )
    });
    let timestamp = match &spec.timestamp_header {
        Some(name) => problems
            .check("spec.verification.timestampHeader", parse_header_name(name))
            .map(TimestampSource::Header),
        None => base.timestamp.clone(),
    };
    let id_header = match &spec.id_header {
        Some(name) => problems.check("spec.verification.idHeader", parse_header_name(name)),
        None => base.id_header.clone(),
    };
    let signed_payload = match &spec.signed_payload {
        Some(template) => {
            problems.check("spec.verification.signedPayload", parse_template(template))?
        }
        None => base.signed_payload.clone(),
    };
    if signed_payload.contains(&PayloadPart::Timestamp) && timestamp.is_none() {
        problems.add(
            "spec.verification.timestampHeader",
            "required because signedPayload uses {timestamp}",
        );
    }
    if signed_payload.contains(&PayloadPart::Id) && id_header.is_none() {
        problems.add(
            "spec.verification.idHeader",
            "required because signedPayload uses {id}",
        );
    }
    let tolerance = match &spec.tolerance {
        Some(text) => problems.check("spec.verification.tolerance", parse_duration(text))?,
        None => base.tolerance,
    };
    Some(Verification {
        signature_header: header,
        format: base.format,
        algorithm: spec.algorithm.unwrap_or(base.algorithm),
        encoding: spec.encoding.unwrap_or(base.encoding),
        prefix: spec.prefix.clone().unwrap_or(base.prefix),
        signed_payload,
        timestamp,
        id_header,
        tolerance,
        secret_format: base.secret_format,
    })
}
