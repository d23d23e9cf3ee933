//! What a batch knows of each pulled message: [`Item`] and its [`Outcome`],
//! shared by the steps that decide (`batch`), wait (`hold`) and settle it.

use async_nats::jetstream;
use chrono::{DateTime, Utc};

use crate::decode::{Event, Undecodable};

/// A message as a pull brought it, and when it came: the end of the
/// `received_at → delivered` stage that tells NATS's share of the latency
/// from Postgres's.
pub struct Delivery {
    pub message: jetstream::Message,
    pub delivered_at: DateTime<Utc>,
}

/// One pulled message and what we learnt about it.
pub(super) struct Item {
    pub(super) message: jetstream::Message,
    pub(super) delivered: u64,
    pub(super) stream_sequence: u64,
    /// When JetStream stored it (its metadata), for the stage log.
    pub(super) published: Option<DateTime<Utc>>,
    pub(super) delivered_at: DateTime<Utc>,
    pub(super) decoded: Result<Event, Undecodable>,
    pub(super) outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Not decided yet.
    Pending,
    Stored,
    Duplicate,
    /// The database is away: held until it is back, never counted.
    Unavailable(String),
    /// The provider's API is away (5xx, timeout): retried later, not counted
    /// toward `maxDeliver`, within `refetch.retryFor` of the event's arrival.
    Later(String),
    /// Failed for no known reason: worth another delivery, counted toward `maxDeliver`.
    Transient(String),
    /// No delivery will ever succeed.
    Permanent(String),
}
