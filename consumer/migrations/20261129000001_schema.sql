-- Hookline's tables. The consumer runs this at start, under an advisory lock,
-- with `search_path` set to `hookline` so sqlx's bookkeeping table
-- (`hookline._sqlx_migrations`) stays out of the application's own schema.

CREATE SCHEMA IF NOT EXISTS hookline;

-- Every accepted event, once. The primary key is the idempotency key: a
-- redelivered or re-sent event conflicts here and changes nothing.
CREATE TABLE hookline.events (
    endpoint        text        NOT NULL,
    event_id        text        NOT NULL,
    event_type      text        NOT NULL,
    -- When the event happened per the provider; NULL when unknown.
    event_timestamp timestamptz,
    object_id       text,
    -- When the receiver accepted the request.
    received_at     timestamptz NOT NULL,
    processed_at    timestamptz NOT NULL DEFAULT now(),
    -- The JetStream delivery count of the attempt that stored the event.
    deliveries      integer     NOT NULL DEFAULT 1,
    -- The message headers: {"Name": "value"} (an array for repeated headers).
    headers         jsonb       NOT NULL DEFAULT '{}',
    -- The body when it is JSON; otherwise NULL and the bytes are in payload_raw.
    payload         jsonb,
    payload_raw     bytea,
    PRIMARY KEY (endpoint, event_id),
    CHECK (payload IS NULL OR payload_raw IS NULL)
);

-- The retention sweep deletes one endpoint's oldest events in small batches.
CREATE INDEX events_endpoint_received_at ON hookline.events (endpoint, received_at);

-- The latest known state of each object, decided by event time: a row changes
-- only when an event newer than `(last_event_timestamp, last_event_id)` arrives.
CREATE TABLE hookline.objects (
    endpoint             text        NOT NULL,
    object_id            text        NOT NULL,
    last_event_id        text        NOT NULL,
    -- The event's timestamp, or its received-at time when it had none.
    last_event_timestamp timestamptz NOT NULL,
    -- The object as the payload (or the provider's API, with refetch) showed it.
    state                jsonb,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint, object_id)
);

-- Events that failed permanently or exhausted maxDeliver, with everything
-- needed to replay them into the stream.
CREATE TABLE hookline.dead_letters (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint        text        NOT NULL,
    -- NULL only when the message carried no usable id (it is in headers then).
    event_id        text,
    event_type      text,
    -- Where replay publishes it (NULL: the endpoint's subject for event_type).
    subject         text,
    -- The message's position in the stream (NULL for rows written by hand).
    stream_sequence bigint,
    headers         jsonb       NOT NULL DEFAULT '{}',
    -- The body exactly as received.
    payload         bytea       NOT NULL DEFAULT '',
    error           text        NOT NULL DEFAULT '',
    deliveries      integer     NOT NULL DEFAULT 0,
    failed_at       timestamptz NOT NULL DEFAULT now(),
    replayed_at     timestamptz
);

-- One row per failed message even if the terminate after the insert was lost
-- and the message came back.
CREATE UNIQUE INDEX dead_letters_message ON hookline.dead_letters (endpoint, stream_sequence, event_id);
CREATE INDEX dead_letters_endpoint_failed_at ON hookline.dead_letters (endpoint, failed_at);
