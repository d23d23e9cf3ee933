//! What requests share: [`AppState`] (the NATS connection, the metrics, the
//! routing table and the process's own state), built once at start, and each
//! endpoint's [`EndpointState`]: its secrets, verifier, schema, rate limiter,
//! JSON reader and stream, built when the endpoint is loaded and kept for as
//! long as its manifest does not change.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hookline_api::ValidatedEndpoint;
use hookline_api::validated::{FieldSource, Verification};

use crate::checks::rate::RateLimiter;
use crate::checks::schema::Schema;
use crate::checks::signature::Verifier;
use crate::event::{self, Fields, HeaderContext};
use crate::json::JsonReader;
use crate::metrics::{EndpointMetrics, Metrics};
use crate::routes::Routes;
use crate::secrets::SecretStore;
use crate::store::{Nats, Store};
use crate::{Config, Endpoints, Result};

/// One endpoint: everything the pipeline reads for its requests.
pub struct EndpointState {
    pub endpoint: Arc<ValidatedEndpoint>,
    pub secrets: Arc<SecretStore>,
    pub store: Arc<Store>,
    pub metrics: Arc<EndpointMetrics>,
    pub(crate) verifier: Arc<Verifier>,
    pub(crate) schema: Option<Schema>,
    /// This receiver's share of `spec.request.rateLimit`.
    pub(crate) rate_limiter: Option<RateLimiter>,
    /// Reads the JSON pointers the endpoint needs (or all of it, for a schema).
    pub(crate) json: Arc<JsonReader>,
    pub(crate) headers: HeaderContext,
    /// Where the event's id, type, time and object id are read.
    pub(crate) fields: Arc<Fields>,
    /// A pool's endpoint: the hash of the manifest it was built from, and
    /// its stream probed on demand rather than by a task of its own.
    pub(crate) manifest_hash: Option<String>,
}

/// The read-only parts of endpoints' state that follow from their settings
/// alone (verifier, JSON reader, field readers, the headers not forwarded),
/// one copy for every endpoint whose settings make it the same. A request to
/// a pool of a thousand endpoints of one provider then reads parts the
/// pool's other requests keep in the CPU's cache, instead of its own
/// endpoint's copies, cold.
#[derive(Default)]
pub struct SharedParts {
    verifiers: HashMap<Verification, Arc<Verifier>>,
    readers: HashMap<JsonReader, Arc<JsonReader>>,
    fields: HashMap<Fields, Arc<Fields>>,
    not_forwarded: HashMap<Vec<String>, Arc<[String]>>,
}

impl SharedParts {
    fn verifier(&mut self, scheme: &Verification) -> Arc<Verifier> {
        if let Some(verifier) = self.verifiers.get(scheme) {
            return verifier.clone();
        }
        let verifier = Arc::new(Verifier::new(scheme.clone()));
        self.verifiers.insert(scheme.clone(), verifier.clone());
        verifier
    }

    fn not_forwarded(&mut self, names: Vec<String>) -> Arc<[String]> {
        self.not_forwarded
            .entry(names)
            .or_insert_with_key(|names| names.as_slice().into())
            .clone()
    }

    /// Forgets the parts no endpoint holds any more.
    pub fn forget_unused(&mut self) {
        self.verifiers.retain(|_, part| Arc::strong_count(part) > 1);
        self.readers.retain(|_, part| Arc::strong_count(part) > 1);
        self.fields.retain(|_, part| Arc::strong_count(part) > 1);
        self.not_forwarded
            .retain(|_, part| Arc::strong_count(part) > 1);
    }
}

/// `value`'s one copy in `parts`.
fn shared<T: Eq + Hash + Clone>(parts: &mut HashMap<T, Arc<T>>, value: T) -> Arc<T> {
    parts
        .entry(value)
        .or_insert_with_key(|value| Arc::new(value.clone()))
        .clone()
}

impl EndpointState {
    /// Compiles the schema and prepares the checks; `secrets` are loaded.
    /// The parts that follow from settings alone are taken from `parts`.
    pub fn new(
        endpoint: ValidatedEndpoint,
        secrets: SecretStore,
        nats: Arc<Nats>,
        metrics: EndpointMetrics,
        replicas: u32,
        manifest_hash: Option<String>,
        parts: &mut SharedParts,
    ) -> Result<EndpointState> {
        let endpoint = Arc::new(endpoint);
        let scheme = &endpoint.verification;
        let schema = endpoint
            .request
            .schema
            .as_ref()
            .map(Schema::compile)
            .transpose()?;
        let rate_limiter = endpoint.request.rate_limit.map(|limit| {
            let share = limit.share(replicas);
            tracing::info!(
                endpoint = %endpoint.key(),
                per_second = share.per_second,
                burst = share.burst,
                replicas,
                "rate limit: this receiver's share of spec.request.rateLimit"
            );
            RateLimiter::new(share)
        });
        metrics.secrets().set(secrets.current().keys.len() as i64);
        Ok(EndpointState {
            verifier: parts.verifier(scheme),
            json: shared(&mut parts.readers, json_reader(&endpoint, schema.is_some())),
            headers: HeaderContext::sharing(
                &endpoint,
                parts.not_forwarded(event::not_forwarded(&endpoint)),
            ),
            fields: shared(&mut parts.fields, Fields::new(&endpoint.event)),
            store: Arc::new(Store::new(nats, endpoint.clone())),
            secrets: Arc::new(secrets),
            metrics: Arc::new(metrics),
            endpoint,
            schema,
            rate_limiter,
            manifest_hash,
        })
    }

    /// The endpoint's key, `namespace/name`.
    pub fn key(&self) -> &str {
        &self.headers.endpoint
    }
}

/// What every request shares.
pub struct AppState {
    /// Which endpoint a request is for: one table, swapped whole when a
    /// pool's directories change, so a request finishes on the table (and
    /// the endpoint) it started with.
    pub routes: ArcSwap<Routes>,
    pub nats: Arc<Nats>,
    pub metrics: Arc<Metrics>,
    /// `--endpoint-dir`: readiness is the process's, not an endpoint's.
    pub pool: bool,
    /// Longest time one request may take, body upload included.
    pub(crate) request_timeout: Duration,
    shutting_down: AtomicBool,
}

impl AppState {
    /// Starts connecting to NATS; with `--endpoint`, loads the secrets and
    /// compiles the schema (a pool's endpoints are loaded by its reloads).
    pub async fn new(config: &Config) -> Result<Arc<AppState>> {
        let (routes, metrics, nats, pool) = match &config.endpoints {
            Endpoints::One {
                endpoint,
                secret_file,
            } => {
                let scheme = &endpoint.verification;
                let secrets =
                    SecretStore::load(secret_file, scheme.secret_format, scheme.algorithm)?;
                let (metrics, endpoint_metrics) = Metrics::new(endpoint.provider.as_str());
                let name = format!("hookline-receiver {}", endpoint.key());
                let nats = Nats::connect(config, &name).await?;
                let one = EndpointState::new(
                    endpoint.as_ref().clone(),
                    secrets,
                    nats.clone(),
                    endpoint_metrics,
                    config.replicas,
                    None,
                    &mut SharedParts::default(),
                )?;
                (Routes::one(Arc::new(one)), metrics, nats, false)
            }
            Endpoints::Pool { .. } => {
                let nats = Nats::connect(config, "hookline-receiver pool").await?;
                (Routes::default(), Metrics::for_pool(), nats, true)
            }
        };
        Ok(Arc::new(AppState {
            routes: ArcSwap::from_pointee(routes),
            nats,
            metrics: Arc::new(metrics),
            pool,
            request_timeout: config.request_timeout,
            shutting_down: AtomicBool::new(false),
        }))
    }

    /// Not shutting down and NATS connected; with `--endpoint`, also its
    /// secrets loaded and its stream answering. A pool's endpoints do not
    /// count: one endpoint's missing secret must not take the pool out (they
    /// are reported by `/endpoints`).
    pub fn is_ready(&self) -> bool {
        if self.shutting_down.load(Ordering::Relaxed) {
            return false;
        }
        match self.routes.load().single() {
            Some(one) => !one.secrets.current().is_empty() && one.store.is_ready(),
            None => self.pool && self.nats.is_connected(),
        }
    }

    /// From now on `/readyz` says not ready, so no new traffic is routed here.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }
}

/// A reader for every JSON pointer the endpoint reads: the event fields and
/// the URL challenge; the whole body when a schema needs it. Public for the
/// benchmark, which times the request's steps one by one.
pub fn json_reader(endpoint: &ValidatedEndpoint, schema: bool) -> JsonReader {
    let fields = &endpoint.event;
    let event_pointers = [
        &fields.id,
        &fields.event_type,
        &fields.timestamp,
        &fields.object_id,
    ]
    .into_iter()
    .filter_map(|source| match source {
        Some(FieldSource::JsonPointer(pointer)) => Some(pointer.as_str()),
        Some(FieldSource::Header(_)) | None => None,
    });
    let challenge_pointers = endpoint
        .url_challenge
        .iter()
        .flat_map(|challenge| challenge.pointers());
    JsonReader::new(event_pointers.chain(challenge_pointers), schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(name: &str, provider: &str) -> ValidatedEndpoint {
        let text = format!(
            "apiVersion: hookline.io/v1alpha1\nkind: WebhookEndpoint\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  provider: {provider}\n  secretRef: {{name: s, key: k}}\n"
        );
        let resource = hookline_api::parse_manifest(&text).expect("parses");
        hookline_api::validate(&resource).expect("valid")
    }

    #[test]
    fn endpoints_with_the_same_settings_share_their_parts_and_others_do_not() {
        let mut parts = SharedParts::default();
        let (one, two, other) = (
            endpoint("one", "stripe"),
            endpoint("two", "stripe"),
            endpoint("other", "github"),
        );
        let verifiers = [&one, &two, &other].map(|endpoint| parts.verifier(&endpoint.verification));
        assert!(Arc::ptr_eq(&verifiers[0], &verifiers[1]));
        assert!(!Arc::ptr_eq(&verifiers[0], &verifiers[2]));
        let readers = [&one, &two, &other]
            .map(|endpoint| shared(&mut parts.readers, json_reader(endpoint, false)));
        assert!(Arc::ptr_eq(&readers[0], &readers[1]));
        let fields =
            [&one, &two].map(|endpoint| shared(&mut parts.fields, Fields::new(&endpoint.event)));
        assert!(Arc::ptr_eq(&fields[0], &fields[1]));
        let names = [&one, &two, &other]
            .map(|endpoint| parts.not_forwarded(event::not_forwarded(endpoint)));
        assert!(Arc::ptr_eq(&names[0], &names[1]));
        assert!(!Arc::ptr_eq(&names[0], &names[2]));

        drop((verifiers, readers, fields, names));
        parts.forget_unused();
        assert!(parts.verifiers.is_empty() && parts.readers.is_empty());
        assert!(parts.fields.is_empty() && parts.not_forwarded.is_empty());
    }
}
