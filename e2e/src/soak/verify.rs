//! The checks at the end of a soak, against what Postgres holds and what the
//! processes wrote: every accepted event stored exactly once, every
//! projection at its newest event, dead letters exactly the poison, and no
//! secret or signature in any log or stored header.

use std::collections::{HashMap, HashSet};

use super::fleet::Fleet;
use super::load::Sent;
use super::plan::Kind;
use crate::error::Result;

/// What the end-of-soak checks found.
#[derive(Clone, Debug, Default)]
pub struct Checks {
    /// Rows in `hookline.events`.
    pub stored: usize,
    /// Rows beyond one per (endpoint, event id) in `hookline.events`, plus
    /// events both stored and dead-lettered.
    pub duplicates: usize,
    /// Accepted events not in `hookline.events` (poison: not in
    /// `hookline.dead_letters`), as `endpoint event-id`.
    pub lost: Vec<String>,
    /// Stored although never answered 200 (allowed: e.g. a PubAck that came
    /// after the sender had given up on the request).
    pub stored_without_200: usize,
    /// Rows of `hookline.events` the soak never sent.
    pub unknown_stored: Vec<String>,
    /// Poison that reached `hookline.events`.
    pub stored_poison: Vec<String>,
    /// Objects whose projection was checked.
    pub projections: usize,
    /// Projections that do not hold their object's newest stored event.
    pub stale_projections: Vec<String>,
    /// Rows in `hookline.dead_letters`.
    pub dead_letters: usize,
    /// Dead letters of events not designed to fail.
    pub unexpected_dead_letters: Vec<String>,
    /// A secret or signature found in a log or a stored header, and where.
    pub leaks: Vec<String>,
    /// Distinct signature values searched for.
    pub signatures: usize,
    /// Bytes of logs and stored headers searched.
    pub searched_bytes: usize,
}

/// Reads Postgres back and checks it against `sent`, and every log and
/// stored header against the secrets and the signatures sent.
pub fn verify(fleet: &Fleet, sent: &[Sent]) -> Result<Checks> {
    let keys: Vec<&str> = fleet.endpoints.iter().map(|e| e.key.as_str()).collect();
    let key_of = |s: &Sent| keys.get(s.event.endpoint).copied().unwrap_or_default();
    let query = |sql: &str| -> Result<Vec<Vec<String>>> {
        let text = fleet.postgres.psql(sql)?;
        Ok(text
            .lines()
            .filter(|line| !line.is_empty())
            .map(|line| line.split('|').map(str::to_owned).collect())
            .collect())
    };
    let mut checks = Checks::default();

    // hookline.events: (endpoint, event id) → rows.
    let mut stored: HashMap<(String, String), usize> = HashMap::new();
    for row in query("select endpoint, event_id, count(*) from hookline.events group by 1, 2")? {
        if let [endpoint, id, count] = row.as_slice() {
            let count = count.parse().unwrap_or(0);
            checks.stored += count;
            checks.duplicates += count.saturating_sub(1);
            stored.insert((endpoint.clone(), id.clone()), count);
        }
    }
    let mut dead: HashMap<(String, String), usize> = HashMap::new();
    for row in query(
        "select endpoint, coalesce(event_id, '<no id>'), count(*) from hookline.dead_letters group by 1, 2",
    )? {
        if let [endpoint, id, count] = row.as_slice() {
            let count = count.parse().unwrap_or(0);
            checks.dead_letters += count;
            // One failed message is one dead letter.
            checks.duplicates += count.saturating_sub(1);
            dead.insert((endpoint.clone(), id.clone()), count);
        }
    }

    let mut sent_keys = HashSet::new();
    let mut poison = HashSet::new();
    for s in sent {
        let key = (key_of(s).to_owned(), s.event.id.clone());
        let is_stored = stored.contains_key(&key);
        let is_dead = dead.contains_key(&key);
        let label = format!("{} {}", key.0, key.1);
        if is_stored && is_dead {
            checks.duplicates += 1;
        }
        match s.event.kind {
            Kind::Poison => {
                poison.insert(key.clone());
                if is_stored {
                    checks.stored_poison.push(label.clone());
                }
                if s.accepted() && !is_dead {
                    checks.lost.push(label);
                }
            }
            Kind::Regular | Kind::Canary => {
                if s.accepted() && !is_stored {
                    checks.lost.push(label);
                } else if is_stored && !s.accepted() {
                    checks.stored_without_200 += 1;
                }
            }
        }
        sent_keys.insert(key);
    }
    checks.unknown_stored = stored
        .keys()
        .filter(|key| !sent_keys.contains(*key))
        .map(|(endpoint, id)| format!("{endpoint} {id}"))
        .collect();
    checks.unexpected_dead_letters = dead
        .keys()
        .filter(|key| !poison.contains(*key))
        .map(|(endpoint, id)| format!("{endpoint} {id}"))
        .collect();

    // The newest stored event of every object, by (event time, event id).
    let mut newest: HashMap<(String, String), (i64, &str)> = HashMap::new();
    for s in sent {
        let (Some(object), Kind::Regular) = (&s.event.object, s.event.kind) else {
            continue;
        };
        let endpoint = key_of(s).to_owned();
        if !stored.contains_key(&(endpoint.clone(), s.event.id.clone())) {
            continue;
        }
        let candidate = (s.time, s.event.id.as_str());
        let best = newest
            .entry((endpoint, object.clone()))
            .or_insert(candidate);
        if candidate > *best {
            *best = candidate;
        }
    }
    let mut projections: HashMap<(String, String), String> = HashMap::new();
    for row in query("select endpoint, object_id, last_event_id from hookline.objects")? {
        if let [endpoint, object, last] = row.as_slice() {
            projections.insert((endpoint.clone(), object.clone()), last.clone());
        }
    }
    for ((endpoint, object), (_, id)) in &newest {
        match projections.get(&(endpoint.clone(), object.clone())) {
            Some(last) if last == id => {}
            Some(last) => checks.stale_projections.push(format!(
                "{endpoint} {object}: holds {last}, its newest stored event is {id}"
            )),
            None => checks.stale_projections.push(format!(
                "{endpoint} {object}: no row, its newest stored event is {id}"
            )),
        }
    }
    for (endpoint, object) in projections.keys() {
        if !newest.contains_key(&(endpoint.clone(), object.clone())) {
            checks.stale_projections.push(format!(
                "{endpoint} {object}: a row for an object no stored event names"
            ));
        }
    }
    checks.projections = newest.len();
    checks.stale_projections.sort();
    checks.lost.sort();

    // No secret or signature in any log, nor in the headers stored with events.
    let secrets: Vec<String> = fleet
        .endpoints
        .iter()
        .flat_map(|e| {
            let mut forms = vec![e.secret.clone()];
            // A `whsec_` secret's key part alone is as secret.
            if let Some(key) = e.secret.strip_prefix("whsec_") {
                forms.push(key.to_owned());
            }
            forms
        })
        .collect();
    let signatures: HashSet<&str> = sent
        .iter()
        .flat_map(Sent::signatures)
        .map(String::as_str)
        .collect();
    let mut texts = fleet.logs()?;
    for table in ["events", "dead_letters"] {
        texts.push((
            format!("hookline.{table}.headers"),
            fleet
                .postgres
                .psql(&format!("select headers::text from hookline.{table}"))?,
        ));
    }
    for (name, text) in &texts {
        checks
            .leaks
            .extend(leaks(name, text, &secrets, &signatures));
        checks.searched_bytes += text.len();
    }
    checks.signatures = signatures.len();
    Ok(checks)
}

/// Where `text` (named `name`) contains one of `secrets` or `signatures`
/// (hex or base64 MACs), said without repeating them whole.
pub fn leaks(
    name: &str,
    text: &str,
    secrets: &[String],
    signatures: &HashSet<&str>,
) -> Vec<String> {
    let mut found = Vec::new();
    for secret in secrets {
        if !secret.is_empty() && text.contains(secret.as_str()) {
            found.push(format!("{name}: a signing secret ({}…)", prefix(secret)));
        }
    }
    let mut lengths: Vec<usize> = signatures.iter().map(|s| s.len()).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let Some(&shortest) = lengths.first() else {
        return found;
    };
    // Every signature is hex or base64, so each occurrence lies inside one
    // maximal run of base64 characters: look up every window of a run.
    let in_alphabet = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    let bytes = text.as_bytes();
    let mut start = 0;
    while start < bytes.len() {
        if !in_alphabet(bytes[start]) {
            start += 1;
            continue;
        }
        let end = bytes[start..]
            .iter()
            .position(|&b| !in_alphabet(b))
            .map_or(bytes.len(), |len| start + len);
        if end - start >= shortest {
            for &length in &lengths {
                for at in start..=end.saturating_sub(length) {
                    // The run is ASCII, so any window is a valid str.
                    let window = &text[at..at + length];
                    if signatures.contains(window) {
                        found.push(format!("{name}: a signature sent ({}…)", prefix(window)));
                    }
                }
            }
        }
        start = end;
    }
    found
}

fn prefix(text: &str) -> &str {
    text.get(..8).unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_found_inside_any_header_or_json_string() {
        let mac = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let b64 = "q0iR9a1Cq1ZyLcM3FHbZK+3KcG/x7P9f1X2lN8y4tHs=";
        let signatures: HashSet<&str> = [mac, b64].into();
        let log = format!(
            r#"{{"headers":"t=1700000000,v1={mac}","sig":"v1,{b64}","other":"sha256={mac}x"}}"#
        );
        let found = leaks("log", &log, &[], &signatures);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(leaks("log", "nothing here", &[], &signatures).is_empty());
    }

    #[test]
    fn a_secret_is_found_and_not_repeated() {
        let found = leaks(
            "log",
            "oops whsec_abcdefghijkl",
            &["whsec_abcdefghijkl".into()],
            &HashSet::new(),
        );
        assert_eq!(found, ["log: a signing secret (whsec_ab…)"]);
    }
}
