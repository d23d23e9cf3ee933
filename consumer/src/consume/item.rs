//! What a batch knows of each pulled message: [`Item`] and its [`Outcome`],
//! shared by the steps that decide (`batch`), wait (`hold`) and settle it.

use async_nats::jetstream;

use crate::decode::{Event, Undecodable};

/// One pulled message and what we learnt about it.
pub(super) struct Item {
    pub(super) message: jetstream::Message,
    pub(super) delivered: u64,
    pub(super) stream_sequence: u64,
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
