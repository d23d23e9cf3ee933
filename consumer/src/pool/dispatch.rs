//! A pool's shared stream, drained through its one durable
//! (`hookline-consumer`): a batch brings the members' events mixed, in
//! stream order; each member's share is decoded, retried and dead-lettered
//! by its own manifest, and all of them written in one transaction.
//!
//! nats-server checks each of a stream's durables on every acknowledgement,
//! so a durable per member made draining 1,000 members slow (`layout_bench`,
//! docs/architecture.md); one durable keeps it as fast as one endpoint's.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use hookline_api::ValidatedEndpoint;
use hookline_api::naming::{DURABLE_CONSUMER, pool_member_of_subject, pool_member_token};
use hookline_api::provision::{POOL_BATCH_SIZE, provision_pool};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::loops::Shared;
use crate::consume::{self, Batches, Context, DatabaseGate, Delivery};
use crate::lifecycle::retry;
use crate::{Error, Shutdown};

/// How long events of a member this process has no manifest for are kept
/// here, looked up again each [`UNKNOWN_MEMBER_CHECK`], before they are
/// handed back: its manifest is usually on its way (the kubelet updates a
/// pod's ConfigMap within about a minute, the receivers' and the
/// consumers' at different moments), and the operator keeps a member's
/// manifest while the stream holds its events. Kept rather than handed
/// back at once, so waiting spends none of the member's `maxDeliver`.
const UNKNOWN_MEMBER_WAIT: Duration = Duration::from_secs(120);
const UNKNOWN_MEMBER_CHECK: Duration = Duration::from_secs(1);
/// How often kept events tell JetStream they are being worked on: well
/// within the pool durable's `ackWait`.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// After [`UNKNOWN_MEMBER_WAIT`], how long an event of no member waits in
/// the stream before it is delivered again.
const UNKNOWN_MEMBER_DELAY: Duration = Duration::from_secs(30);

/// The members of the pool's shared stream, by the token their subjects
/// carry after the pool's prefix: what the pool's one pull loop hands each
/// message to.
#[derive(Debug)]
pub(super) struct Members {
    view: RwLock<View>,
    /// Shared by every member's context: one database.
    gate: Arc<DatabaseGate>,
    /// The first member served: where the stream is, and what
    /// `--provision` makes it from.
    first: watch::Sender<Option<ValidatedEndpoint>>,
    /// Whether the pool's loop is bound to the durable: a member is served
    /// (`/readyz`) once it is.
    bound: watch::Sender<bool>,
    /// The process's: ends the wait for a member's manifest.
    shutdown: Shutdown,
}

#[derive(Debug, Default)]
struct View {
    by_token: HashMap<String, Arc<Context>>,
    /// `<pool prefix>`: what every subject of the stream starts with.
    prefix: String,
    /// The largest `maxBodyBytes` of the members: what one pull must fit.
    largest_body: usize,
}

impl Members {
    pub(super) fn new(shutdown: Shutdown) -> Members {
        Members {
            view: RwLock::default(),
            gate: Arc::default(),
            first: watch::Sender::new(None),
            bound: watch::Sender::new(false),
            shutdown,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, View> {
        // Nothing panics while holding it; if something did, the view is still whole.
        self.view
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, View> {
        self.view
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The gate every member's context shares.
    pub(super) fn gate(&self) -> Arc<DatabaseGate> {
        self.gate.clone()
    }

    /// Hands the member's events to `ctx` from now on.
    pub(super) fn serve(&self, ctx: Arc<Context>) {
        let Some(shared) = &ctx.endpoint.stream.shared else {
            return;
        };
        let token = pool_member_token(&ctx.endpoint.name);
        let prefix = shared.pool_subject_filter.trim_end_matches(".>").to_owned();
        {
            let mut view = self.write();
            view.prefix = prefix;
            let replaced = view.by_token.insert(token, ctx.clone());
            view.largest_body = match replaced {
                // Its old limit may have been the largest.
                Some(_) => largest_body(&view.by_token),
                None => view.largest_body.max(ctx.endpoint.request.max_body_bytes),
            };
        }
        // Only the first member's endpoint is copied: not one per member.
        self.first.send_if_modified(|first| {
            let unset = first.is_none();
            if unset {
                *first = Some(ctx.endpoint.clone());
            }
            unset
        });
    }

    /// Waits until the pool's loop is bound to the durable; `false` when
    /// `shutdown` came first.
    pub(super) async fn wait_bound(&self, shutdown: &Shutdown) -> bool {
        let mut bound = self.bound.subscribe();
        let mut shutdown = shutdown.clone();
        tokio::select! {
            _ = shutdown.wait() => false,
            bound = bound.wait_for(|bound| *bound) => bound.is_ok(),
        }
    }

    /// Stops handing the member's events to `ctx` (not to a context that
    /// replaced it since).
    pub(super) fn forget(&self, ctx: &Arc<Context>) {
        let token = pool_member_token(&ctx.endpoint.name);
        let mut view = self.write();
        if view
            .by_token
            .get(&token)
            .is_some_and(|served| Arc::ptr_eq(served, ctx))
        {
            view.by_token.remove(&token);
            view.largest_body = largest_body(&view.by_token);
        }
    }

    /// Splits `deliveries` by member, in stream order within each; the
    /// messages of no member served here are handed back.
    fn split(&self, deliveries: Vec<Delivery>) -> (Shares, Vec<Delivery>) {
        let view = self.read();
        let mut shares: Shares = Vec::new();
        let mut share_of: HashMap<&str, usize> = HashMap::new();
        let mut unknown = Vec::new();
        for delivery in deliveries {
            let token = pool_member_of_subject(&view.prefix, delivery.message.subject.as_str());
            let Some((token, ctx)) = token.and_then(|token| view.by_token.get_key_value(token))
            else {
                unknown.push(delivery);
                continue;
            };
            match share_of.get(token.as_str()) {
                Some(&index) => shares[index].1.push(delivery),
                None => {
                    share_of.insert(token, shares.len());
                    shares.push((ctx.clone(), vec![delivery]));
                }
            }
        }
        (shares, unknown)
    }
}

/// Each member's messages of a batch, with the context they are processed with.
type Shares = Vec<(Arc<Context>, Vec<Delivery>)>;

fn largest_body(members: &HashMap<String, Arc<Context>>) -> usize {
    members
        .values()
        .map(|ctx| ctx.endpoint.request.max_body_bytes)
        .max()
        .unwrap_or_default()
}

impl Batches for Members {
    fn batch_size(&self) -> usize {
        POOL_BATCH_SIZE
    }

    fn max_body_bytes(&self) -> usize {
        self.read().largest_body
    }

    fn gate(&self) -> &DatabaseGate {
        &self.gate
    }

    async fn process(self: Arc<Self>, deliveries: Vec<Delivery>) {
        let (shares, unknown) = self.split(deliveries);
        if !unknown.is_empty() {
            // Outside the batch: the pool's other members go on meanwhile.
            tokio::spawn(wait_for_manifests(self.clone(), unknown));
        }
        process_known(shares).await;
    }
}

async fn process_known(shares: Shares) {
    if shares.is_empty() {
        return;
    }
    let (contexts, deliveries): (Vec<Arc<Context>>, Vec<Vec<Delivery>>) =
        shares.into_iter().unzip();
    consume::process_shares(contexts.iter().map(AsRef::as_ref).zip(deliveries).collect()).await;
}

/// Keeps events of members with no manifest here (yet), kept alive, and
/// processes each as soon as its member is served; after
/// [`UNKNOWN_MEMBER_WAIT`] (or at shutdown) hands back what is left, never
/// acknowledged unwritten.
async fn wait_for_manifests(members: Arc<Members>, mut waiting: Vec<Delivery>) {
    warn!(
        count = waiting.len(),
        first_subject = first_subject(&waiting),
        "events of an endpoint this pool consumer has no manifest for yet: kept until it has"
    );
    let mut shutdown = members.shutdown.clone();
    let started = Instant::now();
    let mut kept_alive = Instant::now();
    let delay = loop {
        if !shutdown.sleep(UNKNOWN_MEMBER_CHECK).await {
            break None;
        }
        let (shares, unknown) = members.split(waiting);
        waiting = unknown;
        process_known(shares).await;
        if waiting.is_empty() {
            return;
        }
        if started.elapsed() >= UNKNOWN_MEMBER_WAIT {
            warn!(
                count = waiting.len(),
                first_subject = first_subject(&waiting),
                "still no manifest for these events: handed back to the stream for later"
            );
            break Some(UNKNOWN_MEMBER_DELAY);
        }
        if kept_alive.elapsed() >= KEEP_ALIVE {
            for delivery in &waiting {
                acknowledge(delivery, AckKind::Progress).await;
            }
            kept_alive = Instant::now();
        }
    };
    for delivery in &waiting {
        acknowledge(delivery, AckKind::Nak(delay)).await;
    }
}

/// The subject of the first of `deliveries`, for a log line: it names the member.
fn first_subject(deliveries: &[Delivery]) -> &str {
    deliveries
        .first()
        .map_or("", |first| first.message.subject.as_str())
}

async fn acknowledge(delivery: &Delivery, kind: AckKind) {
    if let Err(err) = delivery.message.ack_with(kind).await {
        // Redelivered after `ackWait`, and written once.
        debug!(cause = %err, ?kind, "cannot tell JetStream about an event kept for its manifest");
    }
}

/// Pulls the pool's shared stream through its one durable until
/// `shutdown`, once the first member is served (it names the stream).
/// With `--provision`, makes the stream and the durable when missing.
pub(super) async fn drain_shared_stream(
    shared: Arc<Shared>,
    members: Arc<Members>,
    concurrency: usize,
    shutdown: Shutdown,
) {
    let mut first = members.first.subscribe();
    let mut stopped = shutdown.clone();
    let member = tokio::select! {
        _ = stopped.wait() => return,
        found = first.wait_for(Option::is_some) => match found {
            Ok(member) => member.clone(),
            Err(_) => return,
        },
    };
    let Some(member) = member else { return };
    let stream = member.stream.name.clone();
    if shared.provision {
        let provisioned = retry("provision the pool's shared stream", &shutdown, || async {
            provision_pool(&shared.js, &member)
                .await
                .map_err(Error::from)
        })
        .await;
        if !matches!(provisioned, Ok(Some(()))) {
            return;
        }
    }
    let bound = retry("find the pool's durable consumer", &shutdown, || async {
        let found = shared.js.get_stream(&stream).await.map_err(|err| {
            Error::JetStream(format!(
                "stream {stream}: {err} (run with --provision, or let the operator create it)"
            ))
        })?;
        found
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(DURABLE_CONSUMER)
            .await
            .map_err(|err| Error::JetStream(format!("durable consumer {DURABLE_CONSUMER}: {err}")))
    })
    .await;
    let consumer = match bound {
        Ok(Some(consumer)) => consumer,
        Ok(None) => return,
        Err(err) => {
            warn!(cause = %err, "cannot drain the pool's shared stream");
            return;
        }
    };
    info!(%stream, durable = DURABLE_CONSUMER, "draining the pool's shared stream");
    members.bound.send_replace(true);
    consume::consume(
        members.clone(),
        consumer,
        concurrency,
        &shared.pull_budget,
        shutdown,
    )
    .await;
    members.bound.send_replace(false);
}
