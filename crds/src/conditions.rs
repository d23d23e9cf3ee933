//! Status condition types and reasons SREs see on a `WebhookEndpoint`.

pub const READY: &str = "Ready";
pub const SECRET_RESOLVED: &str = "SecretResolved";
pub const STREAM_READY: &str = "StreamReady";
pub const RECEIVER_AVAILABLE: &str = "ReceiverAvailable";
pub const CONSUMER_AVAILABLE: &str = "ConsumerAvailable";
pub const SCALER_READY: &str = "ScalerReady";

/// Every condition type, in the order they are shown.
pub const ALL: [&str; 6] = [
    READY,
    SECRET_RESOLVED,
    STREAM_READY,
    RECEIVER_AVAILABLE,
    CONSUMER_AVAILABLE,
    SCALER_READY,
];

/// Reasons (CamelCase, as Kubernetes conventions ask).
pub mod reasons {
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
    pub const SECRET_GENERATED: &str = "SecretGenerated";
    pub const RESOLVED: &str = "Resolved";
    pub const NATS_UNREACHABLE: &str = "NatsUnreachable";
    pub const STREAM_PROVISIONED: &str = "StreamProvisioned";
    pub const KEDA_NOT_INSTALLED: &str = "KedaNotInstalled";
    pub const AVAILABLE: &str = "Available";
    pub const PROGRESSING: &str = "Progressing";
    pub const RECONCILED: &str = "Reconciled";
}
