//! The events a soak sends, decided from a seed before it starts: which
//! endpoint, id and object each has, which are redelivered by their
//! provider, which come as an out-of-order pair, and which are poison.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::providers::Provider;

/// What an event is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Load: must be stored once, and its projection kept newest.
    Regular,
    /// Designed to fail in the consumer (Postgres refuses its JSON): must end
    /// in `hookline.dead_letters` and nowhere else.
    Poison,
    /// Sent by the fault schedule after a fault, to time the recovery.
    Canary,
}

/// One event of the plan. Its time is set when it is first sent.
#[derive(Clone, Debug)]
pub struct PlannedEvent {
    /// Index into the soak's endpoints.
    pub endpoint: usize,
    pub provider: Provider,
    pub id: String,
    pub object: Option<String>,
    pub kind: Kind,
    pub padding: usize,
    /// Sent once more after the load, mostly after the duplicate window, so
    /// Postgres (not JetStream) must deduplicate it.
    pub late_redelivery: bool,
}

/// A piece of work for one sender.
#[derive(Clone, Debug)]
pub enum Unit {
    /// Delivered until accepted.
    Single(PlannedEvent),
    /// Delivered until accepted, then at once again with the same id, as a
    /// provider does when it did not see the 200.
    Redelivered(PlannedEvent),
    /// An object's newer event, then (once answered) an older one of the
    /// same object, `age` seconds older.
    OutOfOrder {
        newer: PlannedEvent,
        older: PlannedEvent,
        age: i64,
    },
}

impl Unit {
    /// The endpoint its events go to.
    pub fn endpoint(&self) -> usize {
        match self {
            Unit::Single(event) | Unit::Redelivered(event) => event.endpoint,
            Unit::OutOfOrder { newer, .. } => newer.endpoint,
        }
    }

    #[cfg(test)]
    pub fn events(&self) -> impl Iterator<Item = &PlannedEvent> {
        let (first, second) = match self {
            Unit::Single(event) | Unit::Redelivered(event) => (event, None),
            Unit::OutOfOrder { newer, older, .. } => (newer, Some(older)),
        };
        std::iter::once(first).chain(second)
    }
}

/// Shares of the units, in percent.
const REDELIVERED_PERCENT: u32 = 10;
const OUT_OF_ORDER_PERCENT: u32 = 10;
const LATE_REDELIVERY_PERCENT: u32 = 4;
/// About this many events per object, so each projection sees several.
const EVENTS_PER_OBJECT: usize = 8;
/// The most seconds an out-of-order event is older than its pair.
const MAX_AGE_SECONDS: i64 = 30;

/// Plans `events` events (at least) over `providers` (one endpoint each),
/// `poison` of them designed to fail, spread evenly.
pub fn plan(providers: &[Provider], events: usize, poison: usize, seed: u64) -> Vec<Unit> {
    let mut random = StdRng::seed_from_u64(seed);
    let endpoints = providers.len().max(1);
    let objects_per_endpoint = (events / endpoints / EVENTS_PER_OBJECT).max(4);
    let poison_every = events
        .checked_div(poison)
        .map_or(usize::MAX, |every| every.max(1));
    let mut units = Vec::new();
    let mut planned = 0;
    let mut poisoned = 0;
    while planned < events {
        let event = |random: &mut StdRng, number: usize, kind: Kind, endpoint: usize| {
            let provider = providers[endpoint % endpoints];
            let object = random.random_range(0..objects_per_endpoint);
            let id = provider.event_id(number);
            PlannedEvent {
                endpoint,
                provider,
                id: match kind {
                    Kind::Poison => format!("poison-{id}"),
                    Kind::Regular | Kind::Canary => id,
                },
                object: provider.object_id(object),
                kind,
                padding: random.random_range(100..1500),
                // A poison event sent again would be a second dead letter.
                late_redelivery: kind == Kind::Regular
                    && random.random_range(0..100) < LATE_REDELIVERY_PERCENT,
            }
        };
        let endpoint = random.random_range(0..endpoints);
        // Poison goes round the endpoints, one at every `poison_every` events.
        if poisoned < poison && planned >= poisoned * poison_every + poison_every / 2 {
            let poisoned_endpoint = poisoned % endpoints;
            units.push(Unit::Single(event(
                &mut random,
                planned,
                Kind::Poison,
                poisoned_endpoint,
            )));
            poisoned += 1;
            planned += 1;
            continue;
        }
        let roll = random.random_range(0..100);
        if roll < REDELIVERED_PERCENT {
            units.push(Unit::Redelivered(event(
                &mut random,
                planned,
                Kind::Regular,
                endpoint,
            )));
            planned += 1;
        } else if roll < REDELIVERED_PERCENT + OUT_OF_ORDER_PERCENT {
            let newer = event(&mut random, planned, Kind::Regular, endpoint);
            let mut older = event(&mut random, planned + 1, Kind::Regular, endpoint);
            older.object.clone_from(&newer.object);
            units.push(Unit::OutOfOrder {
                newer,
                older,
                age: random.random_range(1..=MAX_AGE_SECONDS),
            });
            planned += 2;
        } else {
            units.push(Unit::Single(event(
                &mut random,
                planned,
                Kind::Regular,
                endpoint,
            )));
            planned += 1;
        }
    }
    units
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_plans_the_same_events() {
        let ids = |seed| {
            plan(&Provider::ALL, 500, 6, seed)
                .iter()
                .flat_map(|unit| {
                    unit.events()
                        .map(|event| event.id.clone())
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(7), ids(7));
        assert_ne!(ids(7), ids(8));
    }

    #[test]
    fn a_plan_has_every_kind_of_unit_unique_ids_and_the_poison_asked_for() {
        let units = plan(&Provider::ALL, 2000, 6, 1);
        let events: Vec<&PlannedEvent> = units.iter().flat_map(Unit::events).collect();
        assert!((2000..=2001).contains(&events.len()));
        let mut ids: Vec<&str> = events.iter().map(|event| event.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), events.len(), "ids are unique");
        let poison: Vec<&&PlannedEvent> = events
            .iter()
            .filter(|event| event.kind == Kind::Poison)
            .collect();
        assert_eq!(poison.len(), 6);
        let mut poisoned_endpoints: Vec<usize> =
            poison.iter().map(|event| event.endpoint).collect();
        poisoned_endpoints.sort_unstable();
        assert_eq!(poisoned_endpoints, [0, 1, 2, 3, 4, 5], "one per endpoint");
        assert!(
            units
                .iter()
                .any(|unit| matches!(unit, Unit::Redelivered(_)))
        );
        assert!(
            units
                .iter()
                .any(|unit| matches!(unit, Unit::OutOfOrder { .. }))
        );
        assert!(events.iter().any(|event| event.late_redelivery));
    }

    #[test]
    fn an_out_of_order_pair_is_about_one_object() {
        for unit in plan(&Provider::ALL, 1000, 0, 3) {
            if let Unit::OutOfOrder { newer, older, age } = unit {
                assert_eq!(newer.object, older.object);
                assert_eq!(newer.endpoint, older.endpoint);
                assert!((1..=MAX_AGE_SECONDS).contains(&age));
            }
        }
    }
}
