//! `hookline-consumer replay`: publishes dead letters into the stream again,
//! with their original headers (so the same event id), and marks them replayed.
//! Any stream takes them back, a `Buffer` as an `Archive`; with
//! `--shared-stream POOL` that is the member's subject in the pool's stream.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use hookline_api::nats::NatsError;
use hookline_api::{ValidatedEndpoint, headers};
use serde_json::Value;
use tracing::info;

use crate::store::{self, Selection, StoredDeadLetter};
use crate::{Config, Error, Result};

/// How long `replay` waits for its NATS connection.
const CONNECT_WAIT: Duration = Duration::from_secs(5);
/// How often it looks whether the connection is made.
const CONNECTED_POLL: Duration = Duration::from_millis(20);

/// Replays the dead letters of `endpoint` matching `selection` and not yet
/// replayed; returns how many were published.
///
/// Each keeps its `Nats-Msg-Id`, unless JetStream still remembers that id
/// (within the stream's duplicate window) and would drop the message: then it
/// is published once more with `<id>:replay:<dead letter id>`. The event id
/// (`Hookline-Event-Id`), which the consumer deduplicates on, never changes,
/// so replaying an event that got stored meanwhile changes nothing.
pub async fn replay(config: &Config, selection: &Selection) -> Result<usize> {
    let endpoint = &config.endpoint;
    let options = store::connect_options(&config.database_url)?;
    store::migrate(&options).await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let client = hookline_api::nats::connect(
        &config.nats_url,
        &config.nats_auth,
        "hookline-consumer-replay",
    )
    .await?;
    wait_connected(&client, &config.nats_url).await?;
    let js = jetstream::new(client.clone());
    let letters = store::dead_letters_to_replay(&pool, &endpoint.key(), selection).await?;
    let mut replayed = 0;
    for letter in letters {
        let subject = subject_of(endpoint, &letter);
        publish(&js, endpoint, &subject, &letter).await?;
        store::mark_replayed(&pool, letter.id).await?;
        info!(
            dead_letter = letter.id,
            event_id = letter.event_id.as_deref().unwrap_or(""),
            "replayed"
        );
        replayed += 1;
    }
    client
        .flush()
        .await
        .map_err(|err| Error::JetStream(format!("cannot send the last messages: {err}")))?;
    pool.close().await;
    Ok(replayed)
}

/// Where a dead letter goes back to: the subject it came from. A member of a
/// pool's shared stream (`--shared-stream`) takes its subject in the pool's
/// stream for a letter of another stream (its own, from before it joined),
/// whose subjects are retired.
fn subject_of(endpoint: &ValidatedEndpoint, letter: &StoredDeadLetter) -> String {
    let settings = &endpoint.stream;
    let in_pool_stream = |subject: &String| {
        subject
            .strip_prefix(settings.subject_prefix.as_str())
            .is_some_and(|rest| rest.starts_with('.'))
    };
    letter
        .subject
        .clone()
        .filter(|subject| settings.shared.is_none() || in_pool_stream(subject))
        .unwrap_or_else(|| settings.subject_for(letter.event_type.as_deref().unwrap_or("unknown")))
}

/// A command run by hand fails rather than waits for a NATS that is down; the
/// client retries in the background (see `hookline_api::nats::connect`) until then.
async fn wait_connected(client: &async_nats::Client, url: &str) -> Result<()> {
    let connected = async {
        while client.connection_state() != async_nats::connection::State::Connected {
            tokio::time::sleep(CONNECTED_POLL).await;
        }
    };
    tokio::time::timeout(CONNECT_WAIT, connected)
        .await
        .map_err(|_| {
            Error::Nats(NatsError::Connect {
                url: url.to_owned(),
                message: format!("no connection within {CONNECT_WAIT:?}"),
            })
        })
}

async fn publish(
    js: &jetstream::Context,
    endpoint: &ValidatedEndpoint,
    subject: &str,
    letter: &StoredDeadLetter,
) -> Result<()> {
    let mut map = header_map(&letter.headers);
    // Rows written by hand may carry the ids in their columns only.
    if let Some(event_id) = &letter.event_id {
        if map.get(headers::EVENT_ID).is_none() {
            map.insert(headers::EVENT_ID, event_id.as_str());
        }
        if map.get(headers::MSG_ID).is_none() {
            map.insert(
                headers::MSG_ID,
                endpoint.stream.message_id(event_id).as_ref(),
            );
        }
    }
    // A pool's shared stream deduplicates every member's ids in one window:
    // a letter from the member's own stream gets the member's prefix.
    if let Some(shared) = &endpoint.stream.shared
        && let Some(id) = map.get(headers::MSG_ID).map(|id| id.as_str().to_owned())
        && !id.starts_with(shared.message_id_prefix.as_str())
    {
        map.insert(
            headers::MSG_ID,
            format!("{}{id}", shared.message_id_prefix).as_str(),
        );
    }
    if let Some(event_type) = &letter.event_type
        && map.get(headers::EVENT_TYPE).is_none()
    {
        map.insert(headers::EVENT_TYPE, event_type.as_str());
    }
    let ack = send(js, subject, letter, map.clone()).await?;
    if ack.duplicate {
        let original = map
            .get(headers::MSG_ID)
            .map(|v| v.as_str().to_owned())
            .or_else(|| letter.event_id.clone())
            .unwrap_or_default();
        map.insert(
            headers::MSG_ID,
            format!("{original}:replay:{}", letter.id).as_str(),
        );
        send(js, subject, letter, map).await?;
    }
    Ok(())
}

async fn send(
    js: &jetstream::Context,
    subject: &str,
    letter: &StoredDeadLetter,
    map: HeaderMap,
) -> Result<jetstream::publish::PublishAck> {
    let failed = |err: &dyn std::fmt::Display| {
        Error::JetStream(format!(
            "cannot publish dead letter {} to {subject}: {err}",
            letter.id
        ))
    };
    js.publish_with_headers(subject.to_owned(), map, letter.payload.clone().into())
        .await
        .map_err(|err| failed(&err))?
        .await
        .map_err(|err| failed(&err))
}

/// Headers stored as `{"Name": "value" | ["v1", "v2"]}` back into a header map.
fn header_map(stored: &Value) -> HeaderMap {
    let mut map = HeaderMap::new();
    if let Value::Object(object) = stored {
        for (name, value) in object {
            match value {
                Value::String(text) => map.append(name.as_str(), text.as_str()),
                Value::Array(values) => {
                    for text in values.iter().filter_map(Value::as_str) {
                        map.append(name.as_str(), text);
                    }
                }
                _ => {}
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::headers_json;

    fn member(pool: Option<&str>) -> ValidatedEndpoint {
        let manifest = hookline_api::parse_manifest(
            "apiVersion: hookline.io/v1alpha1\nkind: WebhookEndpoint\nmetadata: {name: shop, namespace: test}\n\
             spec: {provider: stripe, secretRef: {name: s, key: k}}\n",
        )
        .expect("manifest");
        let endpoint = hookline_api::validate(&manifest).expect("valid");
        match pool {
            Some(pool) => crate::config::shared_member(endpoint, None, pool),
            None => endpoint,
        }
    }

    fn letter(subject: Option<&str>) -> StoredDeadLetter {
        StoredDeadLetter {
            id: 1,
            event_id: Some("evt_1".into()),
            event_type: Some("invoice.paid".into()),
            subject: subject.map(str::to_owned),
            headers: Value::Null,
            payload: Vec::new(),
        }
    }

    #[test]
    fn a_dead_letter_goes_back_to_its_subject() {
        let dedicated = letter(Some("hookline.test.shop.invoice_paid"));
        assert_eq!(
            subject_of(&member(None), &dedicated),
            "hookline.test.shop.invoice_paid"
        );
        let pooled = letter(Some("hookline.test.POOL_p.shop.x"));
        assert_eq!(
            subject_of(&member(Some("p")), &pooled),
            "hookline.test.POOL_p.shop.x"
        );
    }

    #[test]
    fn a_members_dead_letter_of_its_own_stream_goes_to_its_subject_in_the_pools() {
        let endpoint = member(Some("p"));
        let own = letter(Some("hookline.test.shop.invoice_paid"));
        assert_eq!(
            subject_of(&endpoint, &own),
            endpoint.stream.subject_for("invoice.paid")
        );
        // Another member's prefix that starts the same is not this member's.
        let other = letter(Some("hookline.test.POOL_p.shopping.x"));
        assert_eq!(
            subject_of(&endpoint, &other),
            endpoint.stream.subject_for("invoice.paid")
        );
    }

    #[test]
    fn stored_headers_round_trip() {
        let mut map = HeaderMap::new();
        map.insert("Nats-Msg-Id", "evt_1");
        map.append("Hookline-Http-X-Multi", "a");
        map.append("Hookline-Http-X-Multi", "b");
        let stored: Value = serde_json::from_str(&headers_json(Some(&map))).expect("JSON");
        let back = header_map(&stored);
        let stored_back: Value = serde_json::from_str(&headers_json(Some(&back))).expect("JSON");
        assert_eq!(stored_back, stored);
        assert_eq!(back.get("Nats-Msg-Id").map(|v| v.as_str()), Some("evt_1"));
    }
}
