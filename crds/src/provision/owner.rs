//! The owner mark on a stream: which `WebhookEndpoint` (by UID) made it, so
//! two clusters sharing one NATS never adopt, change or delete each other's
//! streams although both name them `HOOKLINE_<ns>_<name>`.

use std::collections::HashMap;
use std::fmt;

use async_nats::jetstream::stream;

/// Stream metadata key holding the owning endpoint's UID.
pub const OWNER_UID_KEY: &str = "hookline.io/owner-uid";
/// Stream metadata key holding the owning endpoint's `namespace/name`, for people.
pub const OWNER_ENDPOINT_KEY: &str = "hookline.io/endpoint";

/// Metadata keys the server sets itself (version levels); never compared or sent back.
const SERVER_KEY_PREFIX: &str = "_nats.";

/// The endpoint that provisions a stream: the operator passes its resource's
/// UID; the binaries' `--provision` passes none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamOwner {
    pub uid: String,
    /// `namespace/name`.
    pub endpoint: String,
}

impl StreamOwner {
    pub fn new(uid: impl Into<String>, namespace: &str, name: &str) -> StreamOwner {
        StreamOwner {
            uid: uid.into(),
            endpoint: format!("{namespace}/{name}"),
        }
    }
}

/// The owner mark a stream carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerMark {
    pub uid: String,
    /// `namespace/name`, when the mark has it.
    pub endpoint: Option<String>,
}

impl fmt::Display for OwnerMark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.endpoint {
            Some(endpoint) => write!(f, "endpoint {endpoint} (uid {})", self.uid),
            None => write!(f, "uid {}", self.uid),
        }
    }
}

/// The `StreamReady` message for a stream marked by another endpoint: the
/// cause, then what to do.
pub fn owned_elsewhere_message(stream: &str, mark: &OwnerMark) -> String {
    format!(
        "stream {stream} belongs to {mark} (another cluster on this NATS, or an earlier endpoint of this name) and is left untouched; delete that stream if nobody needs it, or give this endpoint a different name or namespace"
    )
}

/// The stream's owner mark, if it has one.
pub fn owner_mark(config: &stream::Config) -> Option<OwnerMark> {
    let uid = config.metadata.get(OWNER_UID_KEY)?;
    Some(OwnerMark {
        uid: uid.clone(),
        endpoint: config.metadata.get(OWNER_ENDPOINT_KEY).cloned(),
    })
}

/// The mark of another owner, when `owner` must leave the stream alone. An
/// unmarked stream belongs to whoever provisions it first; provisioning
/// without an owner touches any stream (it never removes a mark).
pub fn foreign_owner(config: &stream::Config, owner: Option<&StreamOwner>) -> Option<OwnerMark> {
    let owner = owner?;
    owner_mark(config).filter(|mark| mark.uid != owner.uid)
}

/// Whether `owner` may delete or release a stream with this config.
pub(crate) fn may_remove(config: &stream::Config, owner: &StreamOwner) -> Result<(), OwnerMark> {
    match foreign_owner(config, Some(owner)) {
        Some(mark) => Err(mark),
        None => Ok(()),
    }
}

/// The metadata as users and Hookline set it, without the server's own keys.
pub(crate) fn user_metadata(metadata: &HashMap<String, String>) -> HashMap<String, String> {
    metadata
        .iter()
        .filter(|(key, _)| !key.starts_with(SERVER_KEY_PREFIX))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// The metadata to apply: what the stream has (other tools' keys and an
/// existing mark survive), with `owner`'s mark when there is an owner.
pub(crate) fn desired_metadata(
    current: &HashMap<String, String>,
    owner: Option<&StreamOwner>,
) -> HashMap<String, String> {
    let mut metadata = user_metadata(current);
    if let Some(owner) = owner {
        metadata.insert(OWNER_UID_KEY.to_owned(), owner.uid.clone());
        metadata.insert(OWNER_ENDPOINT_KEY.to_owned(), owner.endpoint.clone());
    }
    metadata
}

/// The metadata without the owner mark, for a retained stream the next
/// endpoint of that name may adopt.
pub(crate) fn released_metadata(current: &HashMap<String, String>) -> HashMap<String, String> {
    let mut metadata = user_metadata(current);
    metadata.remove(OWNER_UID_KEY);
    metadata.remove(OWNER_ENDPOINT_KEY);
    metadata
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked(uid: Option<&str>) -> stream::Config {
        let mut config = stream::Config::default();
        if let Some(uid) = uid {
            config.metadata.insert(OWNER_UID_KEY.into(), uid.into());
            config
                .metadata
                .insert(OWNER_ENDPOINT_KEY.into(), "ns/name".into());
        }
        config.metadata.insert("_nats.req.level".into(), "0".into());
        config
    }

    #[test]
    fn an_unmarked_stream_is_anyones_to_adopt() {
        let owner = StreamOwner::new("a", "ns", "name");
        assert_eq!(foreign_owner(&marked(None), Some(&owner)), None);
        assert_eq!(may_remove(&marked(None), &owner), Ok(()));
    }

    #[test]
    fn a_stream_marked_by_another_uid_is_foreign() {
        let owner = StreamOwner::new("a", "ns", "name");
        let other = foreign_owner(&marked(Some("b")), Some(&owner)).expect("foreign");
        assert_eq!(other.uid, "b");
        assert_eq!(other.to_string(), "endpoint ns/name (uid b)");
        assert!(may_remove(&marked(Some("b")), &owner).is_err());
        assert_eq!(foreign_owner(&marked(Some("a")), Some(&owner)), None);
    }

    #[test]
    fn provisioning_without_an_owner_keeps_the_mark() {
        let config = marked(Some("b"));
        assert_eq!(foreign_owner(&config, None), None);
        let metadata = desired_metadata(&config.metadata, None);
        assert_eq!(metadata.get(OWNER_UID_KEY).map(String::as_str), Some("b"));
        assert!(!metadata.contains_key("_nats.req.level"));
    }

    #[test]
    fn releasing_drops_only_the_mark() {
        let mut config = marked(Some("a"));
        config.metadata.insert("team".into(), "payments".into());
        let metadata = released_metadata(&config.metadata);
        assert_eq!(metadata.len(), 1);
        assert_eq!(metadata.get("team").map(String::as_str), Some("payments"));
    }
}
