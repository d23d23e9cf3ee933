//! `--endpoint-dir`: one receiver serving every endpoint of a directory of
//! manifests (a pool of one namespace), each with its own secrets (the file
//! `--secret-dir`/NAME), checks, limits and stream, over one NATS connection.
//!
//! Both directories are read every `--secret-poll-interval`: a new routing table is
//! built aside and swapped in whole, so a request never sees half a reload
//! and finishes on the table it started with. An endpoint whose manifest did
//! not change keeps its [`EndpointState`] (rate limiter, stream figures)
//! across reloads. Nothing runs per endpoint in the background: streams are
//! probed when requests need them ([`crate::store::Store::refresh_if_stale`]),
//! the figures of ready streams by one listing a second for the whole pool
//! ([`list_wanted_streams`]), and one subscription to JetStream's deletion
//! advisories serves them all.
//!
//! With `--shared-stream POOL` every endpoint is a member of the pool's one
//! stream ([`ValidatedEndpoint::in_shared_stream`]): its own subjects there,
//! its own message ids, and its own fill (its messages' share of the
//! stream's bytes) against its own cap, all members' figures read from the
//! stream at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use hookline_api::ValidatedEndpoint;
use hookline_api::pool_dir::{Directory, Found, file_name};
use hookline_api::validated::StreamLimits;
use tracing::Instrument;

use crate::metrics::EndpointLabel;
use crate::routes::Routes;
use crate::secrets::SecretStore;
use crate::state::{AppState, EndpointState, SharedParts};
use crate::store::ON_DEMAND_MAX_AGE;
use crate::{Error, Result};

/// Streams provisioned at once when endpoints are added (`--provision`).
const PROVISION_CONCURRENCY: usize = 16;

/// A pool's directories and how its endpoints are built.
pub struct Pool {
    /// Behind a lock only to be moved into the blocking reads.
    directory: Arc<Mutex<Directory>>,
    secret_dir: PathBuf,
    replicas: u32,
    provision: bool,
    /// `--shared-stream`: every endpoint moved into its pool's one stream.
    shared: Option<SharedStreamOf>,
    /// Kept across reloads, so an endpoint added later shares the parts of
    /// the endpoints already served. Locked only by the blocking builds.
    parts: Arc<Mutex<SharedParts>>,
}

/// `--shared-stream POOL` with the `--cluster-name` its stream is named in.
#[derive(Clone)]
struct SharedStreamOf {
    cluster_name: Option<String>,
    pool: String,
}

impl SharedStreamOf {
    /// `endpoint` as a member of the pool's one stream; the limits only
    /// matter to `--provision` making the stream when it is missing (the
    /// operator owns them).
    fn member(&self, endpoint: ValidatedEndpoint) -> ValidatedEndpoint {
        endpoint.in_shared_stream(
            self.cluster_name.as_deref(),
            &self.pool,
            StreamLimits::default(),
        )
    }
}

/// What one read of the directories makes: the next table, and what changed.
struct Reload {
    routes: Routes,
    /// Endpoints built anew (added, or their manifest changed).
    added: Vec<Arc<EndpointState>>,
}

impl Pool {
    /// Reads `endpoint_dir` the first time: manifests of different
    /// namespaces are an error (a pool serves one).
    pub fn open(
        endpoint_dir: &Path,
        secret_dir: &Path,
        cluster_name: Option<String>,
        shared_stream: Option<String>,
        replicas: u32,
        provision: bool,
    ) -> Result<(Pool, Found)> {
        let shared = shared_stream.map(|pool| SharedStreamOf {
            cluster_name: cluster_name.clone(),
            pool,
        });
        let mut directory = Directory::new(endpoint_dir.to_owned(), cluster_name);
        let first = directory.scan_first()?;
        if !secret_dir.is_dir() {
            return Err(Error::Flags(format!(
                "--secret-dir {}: not a directory",
                secret_dir.display()
            )));
        }
        tracing::info!(
            endpoint_dir = %endpoint_dir.display(),
            namespace = directory.namespace().unwrap_or(""),
            endpoints = first.endpoints.len(),
            skipped = first.skipped.len(),
            shared_stream = shared.as_ref().map(|shared| shared.pool.as_str()),
            "serving a pool"
        );
        let pool = Pool {
            directory: Arc::new(Mutex::new(directory)),
            secret_dir: secret_dir.to_owned(),
            replicas,
            provision,
            shared,
            parts: Arc::default(),
        };
        Ok((pool, first))
    }

    /// Re-reads both directories every `interval` and swaps in what they
    /// say, until aborted. A directory that cannot be read for a moment
    /// keeps the endpoints loaded.
    pub async fn run(self, state: Arc<AppState>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let directory = self.directory.clone();
            let scanned = tokio::task::spawn_blocking(move || {
                directory
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .scan_if_touched()
            })
            .await;
            match scanned {
                Ok(Ok(Some(found))) => self.apply(&state, found).await,
                Ok(Ok(None)) => reload_secrets(&state).await,
                Ok(Err(err)) => {
                    tracing::warn!(cause = %err, "cannot read the endpoint directory; keeping the endpoints loaded");
                }
                Err(err) => {
                    tracing::warn!(cause = %err, "reading the endpoint directory failed; keeping the endpoints loaded");
                }
            }
        }
    }

    /// Builds the table `found` describes aside (re-reading the secrets of
    /// the endpoints kept; when no manifest changed, only re-reads the
    /// secrets), provisions the new endpoints' streams when
    /// asked, swaps the table in, and forgets the series of endpoints no
    /// longer served.
    pub async fn apply(&self, state: &Arc<AppState>, found: Found) {
        if !found.changed {
            // The table still holds; only the secret files may have changed.
            reload_secrets(state).await;
            return;
        }
        let span = tracing::info_span!("reload", endpoints = found.endpoints.len());
        async {
            let old = state.routes.load_full();
            let build = {
                let (state, old, secret_dir, replicas, shared, parts) = (
                    state.clone(),
                    old.clone(),
                    self.secret_dir.clone(),
                    self.replicas,
                    self.shared.clone(),
                    self.parts.clone(),
                );
                tokio::task::spawn_blocking(move || {
                    let mut parts = parts.lock().unwrap_or_else(PoisonError::into_inner);
                    let reload = build(
                        &state,
                        &old,
                        found,
                        &secret_dir,
                        replicas,
                        shared.as_ref(),
                        &mut parts,
                    );
                    parts.forget_unused();
                    reload
                })
            };
            let reload = match build.await {
                Ok(reload) => reload,
                Err(err) => {
                    tracing::warn!(cause = %err, "building the routing table failed; keeping the endpoints loaded");
                    return;
                }
            };
            if self.provision {
                futures::stream::iter(&reload.added)
                    .for_each_concurrent(PROVISION_CONCURRENCY, |one| async move {
                        one.store.provision().await;
                    })
                    .await;
            }
            let routes = Arc::new(reload.routes);
            state.routes.store(routes.clone());
            let removed: Vec<_> = old
                .endpoints
                .iter()
                .filter(|(key, _)| !routes.endpoints.contains_key(*key))
                .collect();
            for (key, one) in &removed {
                one.metrics.forget();
                tracing::info!(endpoint = %key, "endpoint no longer served");
            }
            for one in &reload.added {
                tracing::info!(endpoint = %one.key(), path = %one.endpoint.route.path, manifest_hash = one.manifest_hash.as_deref().unwrap_or(""), "endpoint served");
            }
            state
                .metrics
                .pool_size(routes.endpoints.len(), routes.skipped.len());
        }
        .instrument(span)
        .await;
    }
}

/// Re-reads the secret files of the endpoints served (those unchanged are
/// only looked at), off the request threads.
async fn reload_secrets(state: &AppState) {
    let routes = state.routes.load_full();
    let reloaded = tokio::task::spawn_blocking(move || {
        for one in routes.endpoints.values() {
            one.secrets.reload_counted(&one.metrics);
        }
    })
    .await;
    if let Err(err) = reloaded {
        tracing::warn!(cause = %err, "re-reading the secret files failed; keeping the secrets loaded");
    }
}

/// The next table (blocking: it reads secret files and compiles schemas).
/// Files are taken in name order, so of two endpoints with the same host and
/// path the later file is the one skipped.
fn build(
    state: &AppState,
    old: &Routes,
    found: Found,
    secret_dir: &Path,
    replicas: u32,
    shared: Option<&SharedStreamOf>,
    parts: &mut SharedParts,
) -> Reload {
    let mut routes = Routes::default();
    routes.skipped = found.skipped;
    let mut added = Vec::new();
    let mut by_file: Vec<(PathBuf, String, ValidatedEndpoint)> = found
        .endpoints
        .into_iter()
        .map(|(key, (path, endpoint))| (path, key, endpoint))
        .collect();
    by_file.sort_by(|a, b| a.0.cmp(&b.0));
    let hashes: BTreeMap<String, String> = found.hashes;
    for (path, key, endpoint) in by_file {
        let hash = hashes.get(&key).cloned();
        let kept = old
            .endpoints
            .get(&key)
            .filter(|one| one.manifest_hash == hash)
            .cloned();
        let one = match kept {
            Some(one) => {
                one.secrets.reload_counted(&one.metrics);
                one
            }
            None => {
                let endpoint = match shared {
                    Some(shared) => shared.member(endpoint),
                    None => endpoint,
                };
                match endpoint_state(state, endpoint, secret_dir, replicas, hash, parts) {
                    Ok(one) => {
                        let one = Arc::new(one);
                        added.push(one.clone());
                        one
                    }
                    Err(err) => {
                        routes.skipped.insert(file_name(&path), err.to_string());
                        continue;
                    }
                }
            }
        };
        if let Err(holder) = routes.add(one.clone()) {
            let route = &one.endpoint.route;
            let host = route
                .ingress
                .as_ref()
                .and_then(|ingress| ingress.host.as_deref())
                .unwrap_or("any host");
            routes.skipped.insert(
                file_name(&path),
                format!(
                    "{key}: {host} and path {} are already served for {holder}",
                    route.path
                ),
            );
            // Built just now and not served: its series must not stay behind.
            if added.iter().any(|other| Arc::ptr_eq(other, &one)) {
                one.metrics.forget();
                added.retain(|other| !Arc::ptr_eq(other, &one));
            }
        }
    }
    Reload { routes, added }
}

/// A new endpoint of the pool: its secrets from `secret_dir`/NAME (none yet
/// is fine: 503 until the file is there), its series labelled with its key.
fn endpoint_state(
    state: &AppState,
    endpoint: ValidatedEndpoint,
    secret_dir: &Path,
    replicas: u32,
    hash: Option<String>,
    parts: &mut SharedParts,
) -> Result<EndpointState> {
    let scheme = &endpoint.verification;
    let secrets = SecretStore::load_or_wait(
        &secret_dir.join(&endpoint.name),
        scheme.secret_format,
        scheme.algorithm,
    );
    let metrics = state.metrics.endpoint(
        endpoint.provider.as_str(),
        EndpointLabel::pool(&endpoint.key()),
    );
    EndpointState::new(
        endpoint,
        secrets,
        state.nats.clone(),
        metrics,
        replicas,
        hash,
        parts,
    )
}

/// Stops publishing to an endpoint whose stream or durable consumer JetStream
/// reports deleted, at once rather than at its next probe; until aborted.
/// Best effort, as with `--endpoint`: without the advisories the probe alone
/// notices.
pub async fn watch_deletions(state: Arc<AppState>) {
    let mut advisories = futures::stream::SelectAll::new();
    for subject in hookline_api::naming::DELETION_ADVISORIES {
        match state.nats.client().subscribe(subject).await {
            Ok(subscriber) => advisories.push(subscriber),
            Err(err) => {
                tracing::debug!(%subject, cause = %err, "cannot subscribe to the advisory; the probes alone will notice");
            }
        }
    }
    while let Some(advisory) = advisories.next().await {
        let subject = advisory.subject.as_str();
        let routes = state.routes.load();
        for one in routes.endpoints.values() {
            if one.store.is_about(subject) {
                one.store.deleted(subject);
                one.metrics.jetstream_ready().set(0);
            }
        }
    }
}

/// Refreshes, once per [`ON_DEMAND_MAX_AGE`], the figures of the ready
/// endpoints whose requests found them stale, from one `STREAM.LIST` of the
/// namespace's streams: with a thousand busy endpoints, a few JetStream calls
/// a second instead of one or two per endpoint (stream info, consumer info),
/// which cost nats-server more than the publishes' own difference. An
/// endpoint the listing cannot settle (its stream not listed, an interest
/// stream without consumers) is probed on its own. The members of a pool's
/// shared stream are settled, ready or not, by one `STREAM.INFO` of it with
/// every member's subject counts. Nothing is asked
/// while no request asks; until aborted.
pub async fn list_wanted_streams(state: Arc<AppState>) {
    let mut ticker = tokio::time::interval(ON_DEMAND_MAX_AGE);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let routes = state.routes.load();
        let (shared, own): (Vec<&Arc<EndpointState>>, Vec<&Arc<EndpointState>>) = routes
            .endpoints
            .values()
            .filter(|one| one.store.take_listing_wanted())
            .partition(|one| one.store.shared_stream().is_some());
        refresh_shared(&state, &shared).await;
        let Some(first) = own.first() else {
            continue;
        };
        let listed = match state
            .nats
            .list_streams(&first.store.namespace_subjects())
            .await
        {
            Ok(listed) => listed,
            Err(err) => {
                tracing::debug!(cause = %err, "cannot list the pool's streams; probing each");
                Default::default()
            }
        };
        for one in own {
            if !one
                .store
                .refresh_from_listing(listed.get(one.store.stream()), &one.metrics)
            {
                one.store.refresh(&one.metrics).await;
            }
        }
    }
}

/// Settles `members` (of shared streams) from one read of each shared
/// stream: its figures and every member's message count, each member's
/// fill its own messages' share of the stream's bytes. A member the read
/// cannot settle is probed on its own.
async fn refresh_shared(state: &AppState, members: &[&Arc<EndpointState>]) {
    let mut by_stream: BTreeMap<(&str, &str), Vec<&Arc<EndpointState>>> = BTreeMap::new();
    for one in members {
        if let Some(stream) = one.store.shared_stream() {
            by_stream.entry(stream).or_default().push(one);
        }
    }
    for ((stream, filter), members) in by_stream {
        let figures = match state.nats.shared_stream_figures(stream, filter).await {
            Ok(figures) => figures,
            Err(err) => {
                tracing::debug!(stream, cause = %err, "cannot read the pool's shared stream");
                for one in members {
                    one.store.unreachable(&one.metrics);
                }
                continue;
            }
        };
        let by_member = figures
            .as_ref()
            .map(|figures| figures.messages_by_member(filter))
            .unwrap_or_default();
        for one in members {
            let read = figures.as_ref().map(|figures| {
                let token = one.store.shared_token().unwrap_or_default();
                (figures, by_member.get(token).copied().unwrap_or(0))
            });
            if !one.store.refresh_from_shared(read, &one.metrics) {
                one.store.refresh(&one.metrics).await;
            }
        }
    }
}
