//! The signing secrets: one per line in a file, all tried, so a secret can be
//! rotated without downtime; the file is watched (polled) and re-read when its
//! content changes (Kubernetes swaps a symlink on Secret updates, so the content
//! is compared, not the mtime). No secret value is ever logged.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use ed25519_dalek::VerifyingKey;
use hmac::{Hmac, Mac};
use hookline_api::pool_dir::FileStamp;
use hookline_api::validated::{HmacAlgorithm, SecretFormat};
use sha2::{Digest, Sha256, Sha512};

use crate::encoding::decode_base64;
use crate::metrics::EndpointMetrics;
use crate::{Error, Result};

/// An HMAC already keyed, so each request clones the prepared state instead of
/// hashing the key again.
#[derive(Clone)]
pub enum HmacKey {
    Sha256(Hmac<Sha256>),
    Sha512(Hmac<Sha512>),
    Sha1(Hmac<sha1::Sha1>),
}

impl HmacKey {
    fn new(algorithm: HmacAlgorithm, key: &[u8]) -> Option<HmacKey> {
        Some(match algorithm {
            HmacAlgorithm::Sha256 => HmacKey::Sha256(Hmac::new_from_slice(key).ok()?),
            HmacAlgorithm::Sha512 => HmacKey::Sha512(Hmac::new_from_slice(key).ok()?),
            HmacAlgorithm::Sha1 => HmacKey::Sha1(Hmac::new_from_slice(key).ok()?),
        })
    }

    /// The MAC of the concatenation of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<M: Mac + Clone>(mac: &M, parts: &[&[u8]]) -> Vec<u8> {
            let mut mac = mac.clone();
            for part in parts {
                mac.update(part);
            }
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            HmacKey::Sha256(mac) => run(mac, parts),
            HmacKey::Sha512(mac) => run(mac, parts),
            HmacKey::Sha1(mac) => run(mac, parts),
        }
    }
}

/// One usable line of the secret file.
// A file holds a handful of keys; keeping the prepared HMAC state inline saves
// a pointer chase per request, which matters more than the enum's size.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Key {
    Hmac(HmacKey),
    /// Standard Webhooks `whpk_`: verifies `v1a` signatures.
    Ed25519(VerifyingKey),
}

// Hand-written so no key material can reach a log through `{:?}`.
impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Key::Hmac(_) => "Key::Hmac(..)",
            Key::Ed25519(_) => "Key::Ed25519(..)",
        })
    }
}

/// The keys of one version of the secret file.
#[derive(Debug, Default)]
pub struct SecretSet {
    pub keys: Vec<Key>,
    /// Lines that could not be used (1-based), reported without their content.
    pub rejected_lines: Vec<usize>,
}

impl SecretSet {
    /// Parses the file's text: blank lines ignored, surrounding whitespace trimmed.
    pub fn parse(text: &str, format: SecretFormat, algorithm: HmacAlgorithm) -> SecretSet {
        let mut set = SecretSet::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            match parse_key(line, format, algorithm) {
                Some(key) => set.keys.push(key),
                None => set.rejected_lines.push(index + 1),
            }
        }
        set
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn parse_key(line: &str, format: SecretFormat, algorithm: HmacAlgorithm) -> Option<Key> {
    match format {
        SecretFormat::Raw => HmacKey::new(algorithm, line.as_bytes()).map(Key::Hmac),
        SecretFormat::StandardWebhooks => {
            if let Some(public) = line.strip_prefix("whpk_") {
                let bytes: [u8; 32] = decode_base64(public)?.try_into().ok()?;
                return VerifyingKey::from_bytes(&bytes).ok().map(Key::Ed25519);
            }
            // A `whsk_` signing key belongs to the sender, never to a receiver.
            if line.starts_with("whsk_") {
                return None;
            }
            let encoded = line.strip_prefix("whsec_").unwrap_or(line);
            let key = decode_base64(encoded)?;
            HmacKey::new(algorithm, &key).map(Key::Hmac)
        }
    }
}

/// The current secrets, swapped as a whole when the file changes.
pub struct SecretStore {
    path: PathBuf,
    format: SecretFormat,
    algorithm: HmacAlgorithm,
    /// Read by every request: an `ArcSwap` load writes to no shared cache
    /// line, where a lock and a refcount were four atomic writes per request
    /// (on lines cold in a pool of a thousand endpoints).
    current: ArcSwap<SecretSet>,
    /// SHA-256 of the content last loaded, to notice changes without keeping it.
    digest: RwLock<[u8; 32]>,
    /// Whether the last read failed, so a vanished file is reported once.
    unreadable: AtomicBool,
    /// The file's stamp at the last read: an unchanged file is not read again
    /// (a pool re-checks a thousand of them every poll).
    stamp: Mutex<Option<FileStamp>>,
}

impl SecretStore {
    /// Loads the file once; a missing or unreadable file is a start-up error.
    pub fn load(
        path: &Path,
        format: SecretFormat,
        algorithm: HmacAlgorithm,
    ) -> Result<SecretStore> {
        let bytes = std::fs::read(path).map_err(|source| Error::SecretFile {
            path: path.to_owned(),
            source,
        })?;
        let store = SecretStore::empty(path, format, algorithm, false);
        store.install(&bytes);
        Ok(store)
    }

    /// A pool endpoint's secrets: `path` may not exist yet (the kubelet
    /// delivers a Secret's new key within its sync period), and until it does
    /// the set is empty, so the endpoint answers 503 and the sender retries.
    pub fn load_or_wait(
        path: &Path,
        format: SecretFormat,
        algorithm: HmacAlgorithm,
    ) -> SecretStore {
        SecretStore::load(path, format, algorithm).unwrap_or_else(|err| {
            tracing::info!(path = %path.display(), cause = %err, "no secret file for this endpoint yet; its requests are answered 503 until there is");
            SecretStore::empty(path, format, algorithm, true)
        })
    }

    /// No secrets yet; `unreadable`: the file is known to be missing, so its
    /// first failing re-read is not reported again.
    fn empty(
        path: &Path,
        format: SecretFormat,
        algorithm: HmacAlgorithm,
        unreadable: bool,
    ) -> SecretStore {
        SecretStore {
            path: path.to_owned(),
            format,
            algorithm,
            current: ArcSwap::default(),
            digest: RwLock::new([0; 32]),
            unreadable: AtomicBool::new(unreadable),
            stamp: Mutex::new(None),
        }
    }

    /// The keys to try for a request; hold it only briefly (the request's
    /// signature check), not across an await.
    pub fn current(&self) -> Guard<Arc<SecretSet>> {
        self.current.load()
    }

    /// Re-reads the file; returns whether the secrets changed. A file that is
    /// briefly unreadable (mid-update) keeps the previous secrets.
    pub fn reload(&self) -> bool {
        let stamp = FileStamp::of(&self.path);
        {
            let mut last = self.stamp.lock().unwrap_or_else(PoisonError::into_inner);
            if stamp.is_some() && *last == stamp {
                return false;
            }
            *last = stamp;
        }
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                if self.unreadable.swap(false, Ordering::Relaxed) {
                    tracing::info!(path = %self.path.display(), "the secret file is readable again");
                }
                let digest: [u8; 32] = Sha256::digest(&bytes).into();
                if digest == self.digest() {
                    return false;
                }
                self.install(&bytes);
                true
            }
            Err(err) => {
                if self.unreadable.swap(true, Ordering::Relaxed) {
                    return false;
                }
                tracing::warn!(path = %self.path.display(), cause = %err, "cannot re-read the secret file; keeping the previous secrets");
                false
            }
        }
    }

    /// [`SecretStore::reload`], and a change counted in `metrics`. Blocks on
    /// the file system: off the request threads.
    pub fn reload_counted(&self, metrics: &EndpointMetrics) {
        if self.reload() {
            metrics.secret_reloads().inc();
            metrics.secrets().set(self.current().keys.len() as i64);
        }
    }

    /// Re-reads the file every `interval`, off the request threads, until the
    /// task is aborted; each change is counted in `metrics`.
    pub async fn watch(self: Arc<Self>, interval: Duration, metrics: Arc<EndpointMetrics>) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let (store, metrics) = (self.clone(), metrics.clone());
            let _ = tokio::task::spawn_blocking(move || store.reload_counted(&metrics)).await;
        }
    }

    fn digest(&self) -> [u8; 32] {
        match self.digest.read() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    fn install(&self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let set = SecretSet::parse(&text, self.format, self.algorithm);
        if !set.rejected_lines.is_empty() {
            tracing::warn!(path = %self.path.display(), lines = ?set.rejected_lines, "secret file lines that are not usable keys were skipped");
        }
        if set.is_empty() {
            tracing::warn!(path = %self.path.display(), "the secret file holds no usable secret; requests are answered 503 until it does");
        } else {
            tracing::info!(path = %self.path.display(), secrets = set.keys.len(), "secrets loaded");
        }
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        self.current.store(Arc::new(set));
        match self.digest.write() {
            Ok(mut guard) => *guard = digest,
            Err(poisoned) => *poisoned.into_inner() = digest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_lines_are_ignored_and_every_line_is_a_key() {
        let set = SecretSet::parse(
            "one\n\n  two  \r\n",
            SecretFormat::Raw,
            HmacAlgorithm::Sha256,
        );
        assert_eq!(set.keys.len(), 2);
        assert!(set.rejected_lines.is_empty());
    }

    #[test]
    fn standard_webhooks_lines_are_whsec_whpk_or_base64() {
        let text = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n\
                    MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n\
                    whpk_not-base64!\n\
                    whsk_AAAA\n";
        let set = SecretSet::parse(text, SecretFormat::StandardWebhooks, HmacAlgorithm::Sha256);
        assert_eq!(set.keys.len(), 2);
        assert_eq!(set.rejected_lines, vec![3, 4]);
    }

    #[test]
    fn debug_output_hides_key_material() {
        let set = SecretSet::parse("super-secret", SecretFormat::Raw, HmacAlgorithm::Sha256);
        assert!(!format!("{set:?}").contains("super-secret"));
    }
}
