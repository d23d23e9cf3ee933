//! JetStream layout benchmark (not a test): what nats-server alone allows a
//! pool, by how its members are spread over streams, with no Hookline code
//! in the way. The ceilings behind `pool_bench` and `loadgen pool`.
//!
//! ```text
//! cargo run --release -p hookline-consumer --example layout_bench -- \
//!     [MEMBERS] [EVENTS_PER_MEMBER] [--streams 1,16,32,1000]
//! ```
//!
//! Defaults: 1,000 members × 100 events of 1 KB. For each stream count S
//! (a fresh nats-server each): S work-queue streams, member `m` listed in
//! stream `m mod S` by its own subject, one durable consumer per member
//! filtered on it (as a shared-stream pool makes them). The events are
//! published round-robin over the members with 200 PubAcks in flight, then
//! every member's durable is drained at once (batches of 100, each message
//! acknowledged). It prints the publish rate, the drain rate (every message
//! received and acknowledged), the rate at which nats-server applied the
//! acknowledgements (the streams empty), and nats-server's CPU per message
//! over the drain; each against one member alone on one stream with the
//! same number of events, measured first. Last, the members on one stream
//! drained through one durable for all of them: what a pool consumer that
//! kept per-member isolation itself, rather than by a durable each, could
//! reach at best.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use hookline_e2e::NatsServer;
use hookline_e2e::proc_stats::cpu_seconds;

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const BODY_BYTES: usize = 1024;
/// PubAcks awaited together when publishing.
const PUBLISH_WINDOW: usize = 200;
/// Messages per pull, as the consumer's default batch.
const BATCH: usize = 100;
/// How often the streams are checked for empty after the drain.
const POLL: Duration = Duration::from_millis(20);

struct Args {
    members: usize,
    per_member: usize,
    streams: Vec<usize>,
}

fn args() -> BenchResult<Args> {
    let mut args = Args {
        members: 1000,
        per_member: 100,
        streams: vec![1, 16, 32, 1000],
    };
    let mut positional = 0;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--streams" => {
                args.streams = it
                    .next()
                    .ok_or("--streams N,N,…")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            _ if positional == 0 => {
                args.members = arg.parse()?;
                positional += 1;
            }
            _ if positional == 1 => {
                args.per_member = arg.parse()?;
                positional += 1;
            }
            _ => return Err(format!("unexpected argument {arg}").into()),
        }
    }
    if args.members == 0 || args.per_member == 0 || args.streams.contains(&0) {
        return Err("members, events and stream counts must be at least 1".into());
    }
    Ok(args)
}

/// One layout's figures, in messages per second and µs per message.
struct Figures {
    publish: f64,
    drain: f64,
    applied: f64,
    nats_us: f64,
}

/// How the members' events are consumed.
#[derive(Clone, Copy, PartialEq)]
enum Durables {
    /// One durable per member, filtered on its subjects.
    PerMember,
    /// One durable for the whole (single) stream, unfiltered.
    One,
    /// One durable for the (single) stream filtered on each member's subject
    /// but the last `parked`, which have a durable each: made with every
    /// member's subject, then updated to leave the parked ones out, as a pool
    /// would move a failing member aside.
    OneListed { parked: usize },
}

/// Member `m`'s subjects.
fn member_subjects(m: usize) -> String {
    format!("layout.m{m}.>")
}

impl Durables {
    /// The durables made, each with its filters and the events it drains.
    fn durables(self, members: usize, per_member: usize) -> Vec<(Vec<String>, usize)> {
        let own = |m: usize| (vec![member_subjects(m)], per_member);
        match self {
            Durables::PerMember => (0..members).map(own).collect(),
            Durables::One => vec![(vec!["layout.>".to_owned()], members * per_member)],
            Durables::OneListed { parked } => {
                let parked = parked.min(members);
                let listed = members - parked;
                let mut durables = vec![(
                    (0..listed).map(member_subjects).collect(),
                    listed * per_member,
                )];
                durables.extend((listed..members).map(own));
                durables
            }
        }
    }
}

/// The stream's subjects: one per member (as a pool lists them), or one
/// wildcard for all.
#[derive(Clone, Copy, PartialEq)]
enum Subjects {
    PerMember,
    Wildcard,
}

/// `members` members over `streams` streams, `per_member` events each, on a
/// nats-server of its own.
async fn measure(
    members: usize,
    streams: usize,
    per_member: usize,
    durables: Durables,
    subjects: Subjects,
) -> BenchResult<Figures> {
    let nats = tokio::task::block_in_place(NatsServer::start)?;
    let pid = nats.pid().ok_or("nats-server has no pid")?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let streams = streams.min(members);
    for s in 0..streams {
        let subjects = match subjects {
            Subjects::PerMember => (s..members).step_by(streams).map(member_subjects).collect(),
            Subjects::Wildcard => vec!["layout.>".to_owned()],
        };
        js.create_stream(stream::Config {
            name: format!("LAYOUT_{s}"),
            subjects,
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await?;
    }
    let mut drained_by = Vec::new();
    for (c, (filter_subjects, count)) in durables
        .durables(members, per_member)
        .into_iter()
        .enumerate()
    {
        let stream = js.get_stream(format!("LAYOUT_{}", c % streams)).await?;
        let mut config = pull::Config {
            durable_name: Some(format!("d{c}")),
            max_ack_pending: 1000,
            ..Default::default()
        };
        if let (Durables::OneListed { .. }, 0) = (durables, c) {
            // Made with every member, then the parked ones left out.
            config.filter_subjects = (0..members).map(member_subjects).collect();
            stream.create_consumer(config.clone()).await?;
        }
        match <[String; 1]>::try_from(filter_subjects) {
            Ok([one]) => config.filter_subject = one,
            Err(many) => config.filter_subjects = many,
        }
        let consumer = stream.create_consumer(config).await?;
        drained_by.push((consumer, count));
    }

    let total = members * per_member;
    let body = vec![b'x'; BODY_BYTES];
    let started = Instant::now();
    let mut in_flight = Vec::with_capacity(PUBLISH_WINDOW);
    for i in 0..total {
        let subject = format!("layout.m{}.event", i % members);
        in_flight.push(js.publish(subject, body.clone().into()).await?);
        if in_flight.len() == PUBLISH_WINDOW {
            for ack in in_flight.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in in_flight {
        ack.await?;
    }
    let publish = total as f64 / started.elapsed().as_secs_f64();

    let cpu_before = cpu_seconds(pid).ok_or("cannot read nats-server's CPU")?;
    let started = Instant::now();
    let drains: Vec<_> = drained_by
        .into_iter()
        .map(|(durable, count)| tokio::spawn(drain(durable, count)))
        .collect();
    for drain in drains {
        drain.await??;
    }
    let drained = started.elapsed().as_secs_f64();
    while js.query_account().await?.storage > 0 {
        tokio::time::sleep(POLL).await;
    }
    let applied = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).ok_or("cannot read nats-server's CPU")? - cpu_before;
    Ok(Figures {
        publish,
        drain: total as f64 / drained,
        applied: total as f64 / applied,
        nats_us: cpu * 1e6 / total as f64,
    })
}

/// Receives and acknowledges `count` distinct messages of `durable` (a
/// slow server redelivers some: those are acknowledged, not counted).
async fn drain(
    durable: jetstream::consumer::Consumer<pull::Config>,
    count: usize,
) -> BenchResult<()> {
    let mut received = HashSet::with_capacity(count);
    while received.len() < count {
        let mut batch = durable
            .fetch()
            .max_messages(BATCH)
            .expires(Duration::from_secs(5))
            .messages()
            .await?;
        while let Some(message) = batch.next().await {
            let message = message?;
            let sequence = message.info()?.stream_sequence;
            message.ack().await?;
            received.insert(sequence);
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> BenchResult<()> {
    let args = args()?;
    let total = args.members * args.per_member;
    println!(
        "layout_bench: {} members × {} events of {BODY_BYTES} B, a durable per member",
        args.members, args.per_member
    );
    let one = measure(1, 1, total, Durables::PerMember, Subjects::PerMember).await?;
    println!(
        "{:<28} {:>10} {:>6} {:>10} {:>6} {:>10} {:>6} {:>12}",
        "layout", "publish/s", "ratio", "drain/s", "ratio", "applied/s", "ratio", "nats µs/msg"
    );
    let row = |label: String, figures: &Figures| {
        println!(
            "{label:<28} {:>10.0} {:>6.2} {:>10.0} {:>6.2} {:>10.0} {:>6.2} {:>12.1}",
            figures.publish,
            figures.publish / one.publish,
            figures.drain,
            figures.drain / one.drain,
            figures.applied,
            figures.applied / one.applied,
            figures.nats_us
        )
    };
    row("1 member, 1 stream".into(), &one);
    for &streams in &args.streams {
        let figures = measure(
            args.members,
            streams,
            args.per_member,
            Durables::PerMember,
            Subjects::PerMember,
        )
        .await?;
        let per_stream = args.members.div_ceil(streams.min(args.members));
        row(
            format!("{streams} streams × {per_stream} members"),
            &figures,
        );
    }
    let one_stream = [
        (
            "1 stream, 1 durable for all",
            Durables::One,
            Subjects::PerMember,
        ),
        (
            "  … stream subject a wildcard",
            Durables::One,
            Subjects::Wildcard,
        ),
        (
            "  … durable lists members",
            Durables::OneListed { parked: 0 },
            Subjects::PerMember,
        ),
        (
            "  … and 10 parked apart",
            Durables::OneListed { parked: 10 },
            Subjects::PerMember,
        ),
    ];
    for (label, durables, subjects) in one_stream {
        let figures = measure(args.members, 1, args.per_member, durables, subjects).await?;
        row(label.into(), &figures);
    }
    Ok(())
}
