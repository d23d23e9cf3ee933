//! Parsers for the text forms a spec uses: durations, signed-payload templates,
//! header names and field sources. Each returns a message fit for a field error.

use std::time::Duration;

use crate::validated::{FieldSource, PayloadPart};

/// Parses a Kubernetes-style duration (`30s`, `5m`, `720h`, `1h30m`, `250ms`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("empty duration: write e.g. `30s`, `5m` or `720h`".into());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: write e.g. `30s`, `5m` or `720h`"))?;
        let seconds_per_unit = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(format!(
                    "invalid duration {text:?}: unit {unit:?} is not one of ns, us, ms, s, m, h"
                ));
            }
        };
        total += Duration::try_from_secs_f64(value * seconds_per_unit)
            .map_err(|_| format!("invalid duration {text:?}: out of range"))?;
        rest = next;
    }
    Ok(total)
}

/// Parses `{body}`/`{timestamp}`/`{id}` templates.
pub(crate) fn parse_template(template: &str) -> Result<Vec<PayloadPart>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(PayloadPart::Literal(rest[..open].to_owned()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in {template:?}"))?
            + open;
        parts.push(match &rest[open + 1..close] {
            "body" => PayloadPart::Body,
            "timestamp" => PayloadPart::Timestamp,
            "id" => PayloadPart::Id,
            other => {
                return Err(format!(
                    "unknown placeholder {{{other}}}: use {{body}}, {{timestamp}} or {{id}}"
                ));
            }
        });
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(PayloadPart::Literal(rest.to_owned()));
    }
    if !parts.contains(&PayloadPart::Body) {
        return Err(format!("{template:?} must contain {{body}}"));
    }
    Ok(parts)
}

/// An HTTP header name (RFC 9110 token), lower-cased.
pub(crate) fn parse_header_name(name: &str) -> Result<String, String> {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(is_token_char) {
        return Err(format!("{name:?} is not a valid HTTP header name"));
    }
    Ok(name.to_ascii_lowercase())
}

/// `header:NAME` or `json:/pointer`.
pub fn parse_field_source(text: &str) -> Result<FieldSource, String> {
    if let Some(name) = text.strip_prefix("header:") {
        return parse_header_name(name).map(FieldSource::Header);
    }
    if let Some(pointer) = text.strip_prefix("json:") {
        if !(pointer.is_empty() || pointer.starts_with('/')) {
            return Err(format!(
                "{pointer:?} is not a JSON pointer: it must start with '/' (e.g. json:/data/id)"
            ));
        }
        let mut chars = pointer.chars();
        while let Some(c) = chars.next() {
            if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                return Err(format!(
                    "{pointer:?} is not a JSON pointer: '~' must be followed by 0 or 1"
                ));
            }
        }
        return Ok(FieldSource::JsonPointer(pointer.to_owned()));
    }
    Err(format!("{text:?} must be `header:NAME` or `json:/pointer`"))
}
