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

/// (endpoint, event or object id).
type Key = (String, String);

/// What Postgres holds at the end, read back.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    /// Rows of `hookline.events` per (endpoint, event id).
    pub events: HashMap<Key, usize>,
    /// Rows of `hookline.dead_letters` per (endpoint, event id).
    pub dead_letters: HashMap<Key, usize>,
    /// `last_event_id` of `hookline.objects` per (endpoint, object id).
    pub projections: HashMap<Key, String>,
}

impl Stored {
    /// Reads the three tables.
    pub fn read(fleet: &Fleet) -> Result<Stored> {
        let query = |sql: &str| -> Result<Vec<[String; 3]>> {
            let text = fleet.postgres.psql(sql)?;
            Ok(text
                .lines()
                .filter_map(|line| {
                    let mut fields = line.splitn(3, '|').map(str::to_owned);
                    Some([fields.next()?, fields.next()?, fields.next()?])
                })
                .collect())
        };
        let counted = |rows: Vec<[String; 3]>| {
            rows.into_iter()
                .map(|[endpoint, id, count]| ((endpoint, id), count.parse().unwrap_or(0)))
                .collect()
        };
        Ok(Stored {
            events: counted(query(
                "select endpoint, event_id, count(*) from hookline.events group by 1, 2",
            )?),
            dead_letters: counted(query(
                "select endpoint, coalesce(event_id, '<no id>'), count(*) \
                 from hookline.dead_letters group by 1, 2",
            )?),
            projections: query("select endpoint, object_id, last_event_id from hookline.objects")?
                .into_iter()
                .map(|[endpoint, object, last]| ((endpoint, object), last))
                .collect(),
        })
    }
}

/// Reads Postgres back and checks it against `sent`, and every log and
/// stored header against the secrets and the signatures sent.
pub fn verify(fleet: &Fleet, sent: &[Sent]) -> Result<Checks> {
    let keys: Vec<String> = fleet.endpoints.iter().map(|e| e.key.clone()).collect();
    let mut checks = compare(&Stored::read(fleet)?, &keys, sent);

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

/// Checks what Postgres holds against what was sent: `keys[i]` is the
/// `endpoint` column of endpoint `i`.
pub fn compare(stored: &Stored, keys: &[String], sent: &[Sent]) -> Checks {
    let key_of = |s: &Sent| -> Key {
        let endpoint = keys.get(s.event.endpoint).cloned().unwrap_or_default();
        (endpoint, s.event.id.clone())
    };
    let mut checks = Checks::default();
    for count in stored.events.values() {
        checks.stored += count;
        checks.duplicates += count.saturating_sub(1);
    }
    for count in stored.dead_letters.values() {
        checks.dead_letters += count;
        // One failed message is one dead letter.
        checks.duplicates += count.saturating_sub(1);
    }

    let mut sent_keys = HashSet::new();
    let mut poison = HashSet::new();
    for s in sent {
        let key = key_of(s);
        let is_stored = stored.events.contains_key(&key);
        let is_dead = stored.dead_letters.contains_key(&key);
        let label = format!("{} {}", key.0, key.1);
        if is_stored && is_dead {
            checks.duplicates += 1;
        }
        match s.event.kind {
            Kind::Poison => {
                if is_stored {
                    checks.stored_poison.push(label.clone());
                }
                if s.accepted() && !is_dead {
                    checks.lost.push(label);
                }
                poison.insert(key.clone());
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
    let label = |(endpoint, id): &Key| format!("{endpoint} {id}");
    checks.unknown_stored = stored
        .events
        .keys()
        .filter(|key| !sent_keys.contains(*key))
        .map(label)
        .collect();
    checks.unexpected_dead_letters = stored
        .dead_letters
        .keys()
        .filter(|key| !poison.contains(*key))
        .map(label)
        .collect();

    // The newest stored event of every object, by (event time, event id).
    let mut newest: HashMap<Key, (i64, &str)> = HashMap::new();
    for s in sent {
        let (Some(object), Kind::Regular) = (&s.event.object, s.event.kind) else {
            continue;
        };
        let (endpoint, id) = key_of(s);
        if !stored.events.contains_key(&(endpoint.clone(), id)) {
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
    for ((endpoint, object), (_, id)) in &newest {
        match stored.projections.get(&(endpoint.clone(), object.clone())) {
            Some(last) if last == id => {}
            Some(last) => checks.stale_projections.push(format!(
                "{endpoint} {object}: holds {last}, its newest stored event is {id}"
            )),
            None => checks.stale_projections.push(format!(
                "{endpoint} {object}: no row, its newest stored event is {id}"
            )),
        }
    }
    for key in stored.projections.keys() {
        if !newest.contains_key(key) {
            checks.stale_projections.push(format!(
                "{}: a row for an object no stored event names",
                label(key)
            ));
        }
    }
    checks.projections = newest.len();
    for list in [
        &mut checks.lost,
        &mut checks.unknown_stored,
        &mut checks.stored_poison,
        &mut checks.stale_projections,
        &mut checks.unexpected_dead_letters,
    ] {
        list.sort();
    }
    checks
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
    use crate::soak::load::{Answer, Delivery};
    use crate::soak::plan::PlannedEvent;
    use crate::soak::providers::Provider;

    fn sent(id: &str, object: Option<&str>, time: i64, kind: Kind, answer: u16) -> Sent {
        Sent {
            event: PlannedEvent {
                endpoint: 0,
                provider: Provider::Stripe,
                id: id.into(),
                object: object.map(Into::into),
                kind,
                padding: 0,
                late_redelivery: false,
            },
            time,
            delivery: Delivery {
                last: Some(Answer::Status(answer)),
                ..Delivery::default()
            },
            redeliveries: Vec::new(),
        }
    }

    fn key(id: &str) -> Key {
        ("soak/stripe".into(), id.into())
    }

    fn keys() -> Vec<String> {
        vec!["soak/stripe".into()]
    }

    #[test]
    fn everything_accepted_stored_once_and_newest_projected_passes() {
        let sent = [
            sent("evt_2", Some("in_1"), 20, Kind::Regular, 200),
            sent("evt_1", Some("in_1"), 10, Kind::Regular, 200),
            sent("poison-evt_3", Some("in_1"), 30, Kind::Poison, 200),
        ];
        let stored = Stored {
            events: [(key("evt_1"), 1), (key("evt_2"), 1)].into(),
            dead_letters: [(key("poison-evt_3"), 1)].into(),
            projections: [(key("in_1"), "evt_2".into())].into(),
        };
        let checks = compare(&stored, &keys(), &sent);
        assert!(checks.lost.is_empty() && checks.stale_projections.is_empty());
        assert!(checks.unexpected_dead_letters.is_empty() && checks.stored_poison.is_empty());
        assert_eq!(
            (checks.stored, checks.duplicates, checks.dead_letters),
            (2, 0, 1)
        );
        assert_eq!(checks.projections, 1);
    }

    #[test]
    fn an_accepted_event_missing_from_postgres_is_lost() {
        let sent = [
            sent("evt_1", None, 10, Kind::Regular, 200),
            // Never accepted: its absence is no loss.
            sent("evt_2", None, 10, Kind::Regular, 503),
            sent("poison-evt_3", None, 10, Kind::Poison, 200),
        ];
        let checks = compare(&Stored::default(), &keys(), &sent);
        assert_eq!(
            checks.lost,
            ["soak/stripe evt_1", "soak/stripe poison-evt_3"]
        );
    }

    #[test]
    fn an_older_event_in_the_projection_is_stale_and_ties_go_to_the_larger_id() {
        let sent = [
            sent("evt_1", Some("in_1"), 10, Kind::Regular, 200),
            sent("evt_2", Some("in_1"), 10, Kind::Regular, 200),
            sent("evt_0", Some("in_1"), 5, Kind::Regular, 200),
        ];
        let stored = Stored {
            events: [(key("evt_0"), 1), (key("evt_1"), 1), (key("evt_2"), 1)].into(),
            projections: [(key("in_1"), "evt_1".into())].into(),
            ..Stored::default()
        };
        let checks = compare(&stored, &keys(), &sent);
        assert_eq!(
            checks.stale_projections,
            ["soak/stripe in_1: holds evt_1, its newest stored event is evt_2"]
        );
    }

    #[test]
    fn duplicates_unknown_rows_and_stray_dead_letters_are_reported() {
        let sent = [sent("evt_1", None, 10, Kind::Regular, 200)];
        let stored = Stored {
            events: [(key("evt_1"), 2), (key("evt_9"), 1)].into(),
            dead_letters: [(key("evt_1"), 1)].into(),
            ..Stored::default()
        };
        let checks = compare(&stored, &keys(), &sent);
        // One extra row, and one event both stored and dead-lettered.
        assert_eq!(checks.duplicates, 2);
        assert_eq!(checks.unknown_stored, ["soak/stripe evt_9"]);
        assert_eq!(checks.unexpected_dead_letters, ["soak/stripe evt_1"]);
    }

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
