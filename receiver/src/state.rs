//! [`AppState`]: what every request shares, built once at start from the
//! [`Config`]: the endpoint, its secrets, verifier, schema, rate limiter and
//! JSON reader, the JetStream store and the metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hookline_api::ValidatedEndpoint;
use hookline_api::validated::FieldSource;

use crate::checks::rate::RateLimiter;
use crate::checks::schema::Schema;
use crate::checks::signature::Verifier;
use crate::event::{Fields, HeaderContext};
use crate::json::JsonReader;
use crate::metrics::Metrics;
use crate::secrets::SecretStore;
use crate::store::Store;
use crate::{Config, Result};

/// What every request shares.
pub struct AppState {
    pub endpoint: Arc<ValidatedEndpoint>,
    pub secrets: Arc<SecretStore>,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub(crate) verifier: Verifier,
    pub(crate) schema: Option<Schema>,
    /// This receiver's share of `spec.request.rateLimit`.
    pub(crate) rate_limiter: Option<RateLimiter>,
    /// Reads the JSON pointers the endpoint needs (or all of it, for a schema).
    pub(crate) json: JsonReader,
    pub(crate) headers: HeaderContext,
    /// Where the event's id, type, time and object id are read.
    pub(crate) fields: Fields,
    /// Longest time one request may take, body upload included.
    pub(crate) request_timeout: Duration,
    shutting_down: AtomicBool,
}

impl AppState {
    /// Loads the secrets, compiles the schema and starts connecting to NATS.
    pub async fn new(config: &Config) -> Result<Arc<AppState>> {
        let endpoint = Arc::new(config.endpoint.clone());
        let scheme = &endpoint.verification;
        let secrets = Arc::new(SecretStore::load(
            &config.secret_file,
            scheme.secret_format,
            scheme.algorithm,
        )?);
        let schema = endpoint
            .request
            .schema
            .as_ref()
            .map(Schema::compile)
            .transpose()?;
        let rate_limiter = endpoint.request.rate_limit.map(|limit| {
            let share = limit.share(config.replicas);
            tracing::info!(
                endpoint = %endpoint.key(),
                per_second = share.per_second,
                burst = share.burst,
                replicas = config.replicas,
                "rate limit: this receiver's share of spec.request.rateLimit"
            );
            RateLimiter::new(share)
        });
        let metrics = Arc::new(Metrics::new(endpoint.provider.as_str()));
        metrics.secrets.set(secrets.current().keys.len() as i64);
        let store = Arc::new(Store::connect(config).await?);
        Ok(Arc::new(AppState {
            verifier: Verifier::new(scheme.clone()),
            json: json_reader(&endpoint, schema.is_some()),
            headers: HeaderContext::new(&endpoint),
            fields: Fields::new(&endpoint.event),
            request_timeout: config.request_timeout,
            endpoint,
            secrets,
            store,
            metrics,
            schema,
            rate_limiter,
            shutting_down: AtomicBool::new(false),
        }))
    }

    /// Secrets loaded, NATS connected, the stream answering, not shutting down.
    pub fn is_ready(&self) -> bool {
        !self.shutting_down.load(Ordering::Relaxed)
            && !self.secrets.current().is_empty()
            && self.store.is_ready()
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
