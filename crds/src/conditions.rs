//! Status condition types and reasons SREs see on a `WebhookEndpoint`.

pub const READY: &str = "Ready";
pub const SECRET_RESOLVED: &str = "SecretResolved";
pub const STREAM_READY: &str = "StreamReady";
pub const RECEIVER_AVAILABLE: &str = "ReceiverAvailable";
pub const CONSUMER_AVAILABLE: &str = "ConsumerAvailable";
pub const SCALER_READY: &str = "ScalerReady";
/// A pool member's: its pool's receivers and consumers hold its manifest
/// and signing key. (It has no `ReceiverAvailable`, `ConsumerAvailable`
/// or `ScalerReady`: those are its pool's.)
pub const SERVED: &str = "Served";

/// Every condition type, in the order they are shown.
pub const ALL: [&str; 6] = [
    READY,
    SECRET_RESOLVED,
    STREAM_READY,
    RECEIVER_AVAILABLE,
    CONSUMER_AVAILABLE,
    SCALER_READY,
];

/// Reasons (CamelCase, as Kubernetes conventions ask). Each has an entry in
/// `docs/troubleshooting.md`; a test keeps the two in step.
pub mod reasons {
    /// Ready: every part works.
    pub const RECONCILED: &str = "Reconciled";
    /// The spec has wrong fields (all listed in the message).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// SecretResolved: every referenced Secret and key exists.
    pub const RESOLVED: &str = "Resolved";
    /// SecretResolved: the operator created the signing Secret.
    pub const SECRET_GENERATED: &str = "SecretGenerated";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
    /// StreamReady: stream and durable consumer exist as specified.
    pub const STREAM_PROVISIONED: &str = "StreamProvisioned";
    /// StreamReady (True): NATS's `max_payload` is below `maxBodyBytes` plus
    /// headers, so the largest bodies get 413.
    pub const MAX_PAYLOAD_TOO_SMALL: &str = "MaxPayloadTooSmall";
    pub const NATS_UNREACHABLE: &str = "NatsUnreachable";
    /// StreamReady: NATS answered but refused the stream or consumer.
    pub const STREAM_REFUSED: &str = "StreamRefused";
    /// StreamReady: the stream carries another endpoint's owner mark (another
    /// cluster on the same NATS, or an earlier endpoint of this name); it is
    /// left untouched.
    pub const STREAM_OWNED_ELSEWHERE: &str = "StreamOwnedElsewhere";
    /// Ready: an object of a child's name exists and belongs to someone else;
    /// it is left alone.
    pub const NAME_CONFLICT: &str = "NameConflict";
    /// Ready: the API server refused a child (admission, validation, conflict);
    /// the other children were applied.
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// ReceiverAvailable / ConsumerAvailable: the current template is rolled
    /// out and every wanted pod is available.
    pub const AVAILABLE: &str = "Available";
    /// Pods are starting or a rollout is under way (not every pod runs the
    /// current template yet), so the change is not live.
    pub const PROGRESSING: &str = "Progressing";
    /// The rollout exceeded its progress deadline (image, crash, scheduling).
    pub const ROLLOUT_FAILED: &str = "RolloutFailed";
    /// `receiver.replicas: 0`: nothing answers the route.
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    /// ScalerReady: KEDA reports the ScaledObject ready.
    pub const SCALED_OBJECT_READY: &str = "ScaledObjectReady";
    /// ScalerReady (Unknown): KEDA has not reported on the ScaledObject yet.
    pub const WAITING_FOR_KEDA: &str = "WaitingForKeda";
    /// ScalerReady: KEDA reports the ScaledObject not ready.
    pub const SCALER_NOT_READY: &str = "ScalerNotReady";
    /// ScalerReady: no KEDA; the consumer runs at a fixed size.
    pub const KEDA_NOT_INSTALLED: &str = "KedaNotInstalled";
    /// Served: the pool holds the member's current manifest and signing
    /// key, and its receivers are rolled out and available.
    pub const SERVED_BY_POOL: &str = "ServedByPool";
    /// Served: `spec.pool` names no WebhookPool of the endpoint's namespace.
    pub const POOL_NOT_FOUND: &str = "PoolNotFound";
    /// Served: the pool's spec is invalid, or its receivers are not rolled out.
    pub const POOL_NOT_READY: &str = "PoolNotReady";
    /// Served: the pool has not written the member's current manifest or
    /// signing key yet (it does within seconds of a change).
    pub const NOT_SERVED_YET: &str = "NotServedYet";
    /// Served: the pool's ConfigMap or Secret has no room left (1 MiB each).
    pub const POOL_FULL: &str = "PoolFull";

    /// Every reason, for the documentation check.
    pub const ALL: [&str; 26] = [
        RECONCILED,
        INVALID_SPEC,
        RESOLVED,
        SECRET_GENERATED,
        SECRET_NOT_FOUND,
        SECRET_KEY_MISSING,
        STREAM_PROVISIONED,
        MAX_PAYLOAD_TOO_SMALL,
        NATS_UNREACHABLE,
        STREAM_REFUSED,
        STREAM_OWNED_ELSEWHERE,
        NAME_CONFLICT,
        APPLY_FAILED,
        AVAILABLE,
        PROGRESSING,
        ROLLOUT_FAILED,
        SCALED_TO_ZERO,
        SCALED_OBJECT_READY,
        WAITING_FOR_KEDA,
        SCALER_NOT_READY,
        KEDA_NOT_INSTALLED,
        SERVED_BY_POOL,
        POOL_NOT_FOUND,
        POOL_NOT_READY,
        NOT_SERVED_YET,
        POOL_FULL,
    ];
}
