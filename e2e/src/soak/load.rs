//! The load generator: senders that deliver the plan's events as providers
//! do (signed, retried after a 503 or no answer, redelivered, out of order),
//! with a bound on requests in flight, at a pace that spreads the load over
//! the whole fault schedule. Retries pause briefly (100 ms, doubling to 1 s)
//! instead of honouring `Retry-After: 5`, so the soak stays quick.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::plan::{Kind, PlannedEvent, Unit};
use super::providers::{self, EventData, Provider};
use crate::error::{Result, TestServerError};

/// The first pause before a retry; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// Longer than the receiver takes to answer (publish timeout 5 s, request
/// timeout 15 s): past this a request counts as not answered, and is retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// A redelivery of an event whose timestamp is signed (Standard Webhooks) is
/// sent only this long after the event, inside the receiver's 5 minute tolerance.
const SIGNED_TIME_LIMIT: i64 = 240;
/// The most distinct 503 bodies kept for the leak check.
const UNAVAILABLE_BODIES_KEPT: usize = 100;

/// One endpoint as the senders see it.
#[derive(Debug)]
pub struct Target {
    pub provider: Provider,
    pub secret: String,
    /// The endpoint's URL on each of its receivers.
    pub urls: Vec<String>,
    /// Requests in flight to each receiver.
    pub in_flight: Vec<AtomicUsize>,
    /// Bounds the endpoint's deliveries in flight, so that one endpoint's
    /// senders retrying 503s hold back only that endpoint, as with real,
    /// independent providers.
    pub permits: Arc<Semaphore>,
}

/// What one request got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP status; a 200 only when its body names the event sent.
    Status(u16),
    /// A 200 whose body names another event.
    WrongEvent,
    /// No answer: connection refused or reset, or none within the timeout.
    None,
}

impl Answer {
    pub fn describe(self) -> String {
        match self {
            Answer::Status(status) => status.to_string(),
            Answer::WrongEvent => "200 for another event".into(),
            Answer::None => "no answer".into(),
        }
    }
}

/// The requests of one delivery: until accepted, refused, or out of time.
#[derive(Clone, Debug, Default)]
pub struct Delivery {
    pub first: Option<Answer>,
    pub last: Option<Answer>,
    pub requests: u32,
    /// Got a 503 and was sent again.
    pub retried_unavailable: bool,
    /// Got no answer and was sent again.
    pub retried_no_answer: bool,
    /// Every signature value sent.
    pub signatures: Vec<String>,
    /// The 200 said `"duplicate": true`: JetStream's dedupe window caught it.
    pub duplicate: bool,
    /// When the 200 came.
    pub accepted_at: Option<Instant>,
}

/// What became of one event.
#[derive(Clone, Debug)]
pub struct Sent {
    pub event: PlannedEvent,
    /// The event's time (unix seconds).
    pub time: i64,
    pub delivery: Delivery,
    /// The provider's redeliveries of the event (same id and body), if any.
    pub redeliveries: Vec<Delivery>,
}

impl Sent {
    /// Answered 200: the receiver says it is durably stored.
    pub fn accepted(&self) -> bool {
        self.delivery.last == Some(Answer::Status(200))
    }

    pub fn requests(&self) -> u32 {
        self.delivery.requests + self.redeliveries.iter().map(|d| d.requests).sum::<u32>()
    }

    pub fn signatures(&self) -> impl Iterator<Item = &String> {
        self.delivery
            .signatures
            .iter()
            .chain(self.redeliveries.iter().flat_map(|d| &d.signatures))
    }
}

/// A request that did not get its 200, when and where.
#[derive(Clone, Copy, Debug)]
pub struct Incident {
    pub at: Instant,
    pub endpoint: usize,
    pub kind: IncidentKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncidentKind {
    /// 503.
    Unavailable,
    /// No answer.
    NoAnswer,
}

/// The senders' shared state; the fault schedule reads it and sends canaries through it.
#[derive(Debug)]
pub struct Load {
    client: reqwest::Client,
    targets: Vec<Target>,
    /// How long one delivery keeps retrying before it gives up.
    retry_for: Duration,
    /// When the remaining units should all have been started.
    pace_until: Mutex<Instant>,
    incidents: Mutex<Vec<Incident>>,
    unavailable_bodies: Mutex<BTreeSet<String>>,
    next_receiver: AtomicUsize,
    next_canary: AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        })
}

impl Load {
    pub fn new(
        targets: Vec<Target>,
        concurrency: usize,
        retry_for: Duration,
        pace_until: Instant,
    ) -> Result<Load> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(concurrency)
            .build()
            .map_err(|err| TestServerError::Failed {
                what: "cannot build the HTTP client".into(),
                details: err.to_string(),
            })?;
        Ok(Load {
            client,
            targets,
            retry_for,
            pace_until: Mutex::new(pace_until),
            incidents: Mutex::new(Vec::new()),
            unavailable_bodies: Mutex::new(BTreeSet::new()),
            next_receiver: AtomicUsize::new(0),
            next_canary: AtomicUsize::new(0),
        })
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Spreads the units not started yet until `until`.
    pub fn pace_until(&self, until: Instant) {
        *lock(&self.pace_until) = until;
    }

    /// 503s and requests without an answer between `from` and `to`, per endpoint.
    pub fn incidents_between(&self, from: Instant, to: Instant) -> BTreeMap<usize, (usize, usize)> {
        let mut counts = BTreeMap::new();
        for incident in lock(&self.incidents)
            .iter()
            .filter(|i| i.at >= from && i.at <= to)
        {
            let (unavailable, none) = counts.entry(incident.endpoint).or_insert((0, 0));
            match incident.kind {
                IncidentKind::Unavailable => *unavailable += 1,
                IncidentKind::NoAnswer => *none += 1,
            }
        }
        counts
    }

    /// Whether `endpoint` answered a 503 since `since`.
    pub fn unavailable_since(&self, endpoint: usize, since: Instant) -> bool {
        lock(&self.incidents).iter().any(|incident| {
            incident.endpoint == endpoint
                && incident.at >= since
                && incident.kind == IncidentKind::Unavailable
        })
    }

    /// Every distinct 503 body seen (up to a bound).
    pub fn unavailable_bodies(&self) -> Vec<String> {
        lock(&self.unavailable_bodies).iter().cloned().collect()
    }

    /// Starts every unit, paced to end near the time set by
    /// [`Load::pace_until`], each sent once its endpoint has a permit; then
    /// the late redeliveries. Returns what became of every event.
    pub async fn run(self: Arc<Self>, units: Vec<Unit>) -> Result<Vec<Sent>> {
        let mut tasks = JoinSet::new();
        let total = units.len();
        for (index, unit) in units.into_iter().enumerate() {
            let load = self.clone();
            tasks.spawn(async move {
                let endpoint = unit.endpoint();
                let _permit = load.targets[endpoint]
                    .permits
                    .acquire()
                    .await
                    .map_err(stopped)?;
                Ok::<_, TestServerError>(load.unit(unit).await)
            });
            self.pace(total - index - 1).await;
        }
        let mut sent = Vec::with_capacity(total);
        while let Some(done) = tasks.join_next().await {
            sent.extend(done.map_err(stopped)??);
        }
        self.redeliver_late(&mut sent).await?;
        Ok(sent)
    }

    /// Waits before the next unit so that the `remaining` ones end near the pace.
    async fn pace(&self, remaining: usize) {
        if remaining == 0 {
            return;
        }
        let until = *lock(&self.pace_until);
        let left = until.saturating_duration_since(Instant::now());
        let gap = left.div_f64(remaining as f64).min(Duration::from_secs(1));
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }

    async fn unit(&self, unit: Unit) -> Vec<Sent> {
        match unit {
            Unit::Single(event) => vec![self.send(event, unix_now()).await],
            Unit::Redelivered(event) => {
                let mut sent = self.send(event, unix_now()).await;
                if sent.accepted() {
                    let again = self.deliver(&sent.event, sent.time).await;
                    sent.redeliveries.push(again);
                }
                vec![sent]
            }
            Unit::OutOfOrder { newer, older, age } => {
                let now = unix_now();
                let newer = self.send(newer, now).await;
                let older = self.send(older, now - age).await;
                vec![newer, older]
            }
        }
    }

    /// Sends the events planned for a late redelivery once more, now that
    /// the load is over and most are past the stream's duplicate window.
    async fn redeliver_late(self: &Arc<Self>, sent: &mut [Sent]) -> Result<()> {
        let now = unix_now();
        let mut tasks = JoinSet::new();
        for (index, s) in sent.iter().enumerate() {
            let due = s.event.late_redelivery
                && s.accepted()
                && (!s.event.provider.signs_event_time() || now - s.time < SIGNED_TIME_LIMIT);
            if !due {
                continue;
            }
            let (load, event, time) = (self.clone(), s.event.clone(), s.time);
            tasks.spawn(async move {
                let _permit = load.targets[event.endpoint]
                    .permits
                    .acquire()
                    .await
                    .map_err(stopped)?;
                Ok::<_, TestServerError>((index, load.deliver(&event, time).await))
            });
        }
        while let Some(done) = tasks.join_next().await {
            let (index, delivery) = done.map_err(stopped)??;
            sent[index].redeliveries.push(delivery);
        }
        Ok(())
    }

    /// A canary for `endpoint`: one event delivered until accepted.
    pub async fn canary(&self, endpoint: usize) -> Sent {
        let number = self.next_canary.fetch_add(1, Ordering::Relaxed);
        let provider = self.targets[endpoint].provider;
        let event = PlannedEvent {
            endpoint,
            provider,
            id: format!("canary-{}", provider.event_id(number)),
            object: None,
            kind: Kind::Canary,
            padding: 100,
            late_redelivery: false,
        };
        self.send(event, unix_now()).await
    }

    async fn send(&self, event: PlannedEvent, time: i64) -> Sent {
        let delivery = self.deliver(&event, time).await;
        Sent {
            event,
            time,
            delivery,
            redeliveries: Vec::new(),
        }
    }

    /// Delivers one event until it is accepted, refused (any answer but 200
    /// and 503), or `retry_for` has passed; re-signed for every request, as
    /// providers do. Retries go round the endpoint's receivers.
    pub async fn deliver(&self, event: &PlannedEvent, time: i64) -> Delivery {
        let target = &self.targets[event.endpoint];
        let data = EventData {
            id: &event.id,
            object: event.object.as_deref(),
            time,
            poison: event.kind == Kind::Poison,
            padding: event.padding,
        };
        let body = providers::body(target.provider, &data);
        let started = Instant::now();
        let mut pause = FIRST_PAUSE;
        let mut delivery = Delivery::default();
        loop {
            let receiver = self.next_receiver.fetch_add(1, Ordering::Relaxed) % target.urls.len();
            let signed = providers::sign(target.provider, &target.secret, &data, &body, unix_now());
            delivery.signatures.extend(signed.signatures);
            target.in_flight[receiver].fetch_add(1, Ordering::Relaxed);
            let (answer, duplicate) = self
                .post(&target.urls[receiver], &body, &signed.headers, &event.id)
                .await;
            delivery.duplicate = duplicate;
            target.in_flight[receiver].fetch_sub(1, Ordering::Relaxed);
            delivery.requests += 1;
            delivery.first.get_or_insert(answer);
            delivery.last = Some(answer);
            if answer == Answer::Status(200) {
                delivery.accepted_at = Some(Instant::now());
            }
            let kind = match answer {
                Answer::Status(503) => IncidentKind::Unavailable,
                Answer::None => IncidentKind::NoAnswer,
                Answer::Status(_) | Answer::WrongEvent => return delivery,
            };
            lock(&self.incidents).push(Incident {
                at: Instant::now(),
                endpoint: event.endpoint,
                kind,
            });
            if started.elapsed() + pause > self.retry_for {
                return delivery;
            }
            match kind {
                IncidentKind::Unavailable => delivery.retried_unavailable = true,
                IncidentKind::NoAnswer => delivery.retried_no_answer = true,
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// One request; a 200 also says whether the receiver found it a duplicate.
    async fn post(
        &self,
        url: &str,
        body: &str,
        headers: &[(&str, String)],
        id: &str,
    ) -> (Answer, bool) {
        let mut request = self
            .client
            .post(url)
            .header("Content-Type", "application/json")
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let Ok(response) = request.send().await else {
            return (Answer::None, false);
        };
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        match status {
            200 => {
                let json = serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default();
                let duplicate = json["duplicate"].as_bool().unwrap_or(false);
                if json["eventId"].as_str() == Some(id) {
                    (Answer::Status(200), duplicate)
                } else {
                    (Answer::WrongEvent, false)
                }
            }
            503 => {
                let mut bodies = lock(&self.unavailable_bodies);
                if bodies.len() < UNAVAILABLE_BODIES_KEPT {
                    bodies.insert(text);
                }
                (Answer::Status(503), false)
            }
            other => (Answer::Status(other), false),
        }
    }
}

fn stopped(err: impl std::fmt::Display) -> TestServerError {
    TestServerError::Failed {
        what: "a sender of the load generator stopped".into(),
        details: err.to_string(),
    }
}
