//! The real `hookline-operator run` against a stand-in API server
//! (`fakekube.py` from the development tools, which people who clone the
//! project do not have): it starts, takes the Lease, watches, applies, writes
//! status and Events, reacts to Secrets and drift, runs the finalizer, makes no
//! write in a steady state, hands over to a standby replica, and stops when its
//! Lease renewals hang.
//!
//! Ignored by default; `.ci/run` runs it with `--ignored`. Set
//! `HOOKLINE_FAKEKUBE` to the script (default `../shared/tools/fakekube.py`
//! next to the repository).

use crate::support;

use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use hookline_api::conditions;
use hookline_api::spec::WebhookEndpoint;
use hookline_e2e::fakekube::FakeKube;
use hookline_e2e::{ChildProcess, NatsServer, Signal, free_port, workspace_bin};
use hookline_operator::leader::{LEASE_DURATION, RENEW_DEADLINE};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use support::fakekube::{apply_endpoint, create_secret, create_stripe_secrets, install_crd};
use support::{example, secret};

/// The operator binary, killed on drop.
fn start_operator(fake: &FakeKube, nats: &NatsServer, identity: &str) -> (ChildProcess, u16) {
    start_operator_with(fake, nats, identity, &[])
}

/// The operator binary with `flags` besides the usual ones.
fn start_operator_with(
    fake: &FakeKube,
    nats: &NatsServer,
    identity: &str,
    flags: &[&str],
) -> (ChildProcess, u16) {
    let port = free_port();
    let mut command = Command::new(workspace_bin("hookline-operator"));
    command
        .arg("run")
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--identity={identity}"))
        .arg("--lease-namespace=default")
        .args(flags)
        .env("KUBECONFIG", fake.kubeconfig())
        .env("HOOKLINE_NATS_URL", nats.url())
        .env("RUST_LOG", "info");
    (
        ChildProcess::spawn(&mut command).expect("operator starts"),
        port,
    )
}

async fn eventually<T>(
    what: &str,
    operator: &mut ChildProcess,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            operator.exit_status().is_none(),
            "the operator exited:\n{}",
            operator.log_tail(30)
        );
        assert!(
            Instant::now() < deadline,
            "{what} did not happen:\n{}",
            operator.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn condition(endpoint: &WebhookEndpoint, type_: &str) -> Option<(String, String)> {
    endpoint
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|condition| condition.type_ == type_)
        .map(|condition| (condition.status.clone(), condition.reason.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs fakekube.py from the development tools; .ci/run runs it"]
async fn the_operator_binary_runs_an_endpoint_through_its_whole_life() {
    let fake = tokio::task::block_in_place(|| FakeKube::start(true));
    let nats = tokio::task::block_in_place(NatsServer::start).expect("nats-server starts");
    let client = fake.client().await;
    install_crd(&client).await;
    let (mut operator, _) =
        tokio::task::block_in_place(|| start_operator(&fake, &nats, "replica-a"));

    let resource = example("stripe.yaml");
    apply_endpoint(&client, &resource).await;
    let endpoints: Api<WebhookEndpoint> = Api::namespaced(client.clone(), "payments");
    let missing = eventually("SecretResolved=False", &mut operator, async || {
        let endpoint = endpoints.get("stripe").await.ok()?;
        condition(&endpoint, conditions::SECRET_RESOLVED).filter(|(status, _)| status == "False")
    })
    .await;
    assert_eq!(missing.1, "SecretNotFound");

    create_stripe_secrets(&client, "payments").await;
    eventually(
        "Ready=True after the Secrets appeared",
        &mut operator,
        async || {
            let endpoint = endpoints.get("stripe").await.ok()?;
            condition(&endpoint, conditions::READY).filter(|(status, _)| status == "True")
        },
    )
    .await;
    let endpoint = endpoints.get("stripe").await.expect("endpoint");
    assert_eq!(
        endpoint.status.as_ref().and_then(|s| s.url.as_deref()),
        Some("https://hooks.example.com/stripe")
    );
    // The stand-in marks the ScaledObject Ready as KEDA does, before or
    // after the endpoint's Deployments have rolled out.
    let scaler = condition(&endpoint, conditions::SCALER_READY).map(|c| c.1);
    assert!(
        matches!(
            scaler.as_deref(),
            Some("WaitingForKeda" | "ScaledObjectReady")
        ),
        "{scaler:?}"
    );

    let nats_client = hookline_api::nats::connect(&nats.url(), &Default::default(), "test")
        .await
        .expect("NATS");
    support::wait_connected(&nats_client).await;
    jetstream::new(nats_client.clone())
        .get_stream("HOOKLINE_payments_stripe")
        .await
        .expect("the operator made the stream");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let lease = leases.get("hookline-operator").await.expect("a Lease");
    assert_eq!(
        lease.spec.and_then(|spec| spec.holder_identity).as_deref(),
        Some("replica-a")
    );
    let events = fake
        .hook(
            reqwest::Method::GET,
            "/_fake/objects?kind=Event&namespace=payments",
        )
        .await;
    assert!(
        events.as_array().is_some_and(|all| !all.is_empty()),
        "Events were published"
    );

    // A steady state writes nothing (Lease renewals aside).
    tokio::time::sleep(Duration::from_secs(2)).await;
    fake.hook(reqwest::Method::POST, "/_fake/reset-requests")
        .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        fake.writes_besides_leases().await,
        Vec::<Value>::new(),
        "writes in a steady state"
    );

    // Drift is put back.
    let services: Api<Service> = Api::namespaced(client.clone(), "payments");
    services
        .delete("stripe-receiver", &DeleteParams::default())
        .await
        .expect("deleted");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "payments");
    deployments
        .patch(
            "stripe-receiver",
            &PatchParams::apply("someone").force(),
            &Patch::Apply(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": 5}})),
        )
        .await
        .expect("edited");
    eventually(
        "the Service and replicas put back",
        &mut operator,
        async || {
            let service = services.get_opt("stripe-receiver").await.ok()??;
            let replicas = deployments
                .get("stripe-receiver")
                .await
                .ok()?
                .spec?
                .replicas;
            (replicas == Some(2)).then_some(service)
        },
    )
    .await;

    // Deleting the endpoint runs the finalizer: the stream goes.
    endpoints
        .delete("stripe", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(
        "the endpoint and its stream gone",
        &mut operator,
        async || {
            let gone = endpoints.get_opt("stripe").await.ok()?.is_none();
            let stream_gone = jetstream::new(nats_client.clone())
                .get_stream("HOOKLINE_payments_stripe")
                .await
                .is_err();
            (gone && stream_gone).then_some(())
        },
    )
    .await;

    operator.signal(Signal::Term).expect("SIGTERM");
    let status = tokio::task::block_in_place(|| operator.wait_timeout(Duration::from_secs(20)))
        .expect("the operator stops on SIGTERM");
    assert!(status.success(), "{status}:\n{}", operator.log_tail(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs fakekube.py from the development tools; .ci/run runs it"]
async fn without_keda_every_example_becomes_ready_and_a_standby_replica_takes_over() {
    let fake = tokio::task::block_in_place(|| FakeKube::start(false));
    let nats = tokio::task::block_in_place(NatsServer::start).expect("nats-server starts");
    let client = fake.client().await;
    install_crd(&client).await;
    let (mut leader, _) = tokio::task::block_in_place(|| start_operator(&fake, &nats, "replica-a"));
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    eventually("replica-a holds the Lease", &mut leader, async || {
        let holder = leases
            .get("hookline-operator")
            .await
            .ok()?
            .spec?
            .holder_identity?;
        (holder == "replica-a").then_some(())
    })
    .await;
    let (mut standby, standby_port) =
        tokio::task::block_in_place(|| start_operator(&fake, &nats, "replica-b"));

    for (_, resource) in support::examples() {
        let namespace = resource.namespace().expect("namespace");
        let spec = &resource.spec;
        if !spec.secret_ref.generate.unwrap_or(false) {
            let key = spec
                .secret_ref
                .key
                .clone()
                .unwrap_or_else(|| "secret".into());
            create_secret(
                &client,
                secret(&namespace, &spec.secret_ref.name, &key, "whsec_dGVzdA=="),
            )
            .await;
        }
        let database = spec
            .consumer
            .as_ref()
            .and_then(|c| c.database_secret_ref.clone())
            .expect("database");
        let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        if api.get_opt(&database.name).await.expect("get").is_none() {
            create_secret(
                &client,
                secret(&namespace, &database.name, &database.key, "postgres://db/x"),
            )
            .await;
        }
        apply_endpoint(&client, &resource).await;
    }
    for (file, resource) in support::examples() {
        let api: Api<WebhookEndpoint> =
            Api::namespaced(client.clone(), &resource.namespace().expect("namespace"));
        let name = resource.name_any();
        let (_, reason) = eventually(&format!("{file} Ready"), &mut leader, async || {
            let endpoint = api.get(&name).await.ok()?;
            condition(&endpoint, conditions::READY).filter(|(status, _)| status == "True")?;
            condition(&endpoint, conditions::SCALER_READY)
        })
        .await;
        assert_eq!(reason, "KedaNotInstalled", "{file}");
    }
    let standby_ready: Value = reqwest::get(format!("http://127.0.0.1:{standby_port}/readyz"))
        .await
        .expect("standby answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        standby_ready["leading"], false,
        "the standby does not reconcile"
    );

    leader.signal(Signal::Term).expect("SIGTERM");
    tokio::task::block_in_place(|| leader.wait_timeout(Duration::from_secs(20)))
        .expect("the leader stops");
    eventually(
        "replica-b takes the released Lease",
        &mut standby,
        async || {
            let holder = leases
                .get("hookline-operator")
                .await
                .ok()?
                .spec?
                .holder_identity?;
            (holder == "replica-b").then_some(())
        },
    )
    .await;
    // The new leader reconciles: a deleted child comes back.
    let services: Api<Service> = Api::namespaced(client.clone(), "payments");
    services
        .delete("stripe-receiver", &DeleteParams::default())
        .await
        .expect("deleted");
    eventually(
        "replica-b puts the Service back",
        &mut standby,
        async || services.get_opt("stripe-receiver").await.ok()?,
    )
    .await;
}

/// `hookline_operator_reconciliations_total` from the operator's `/metrics`.
async fn reconciles(metrics_port: u16) -> u64 {
    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|line| line.strip_prefix("hookline_operator_reconciliations_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs fakekube.py from the development tools; .ci/run runs it"]
async fn traffic_edits_and_dotted_names_behave_as_in_a_cluster() {
    // The issue's measurement is 4 events/s for 150 s at the default resync
    // of 60 s: `HOOKLINE_TRAFFIC_SECONDS=150 HOOKLINE_RESYNC_SECONDS=60`.
    let setting = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    let resync_seconds = setting("HOOKLINE_RESYNC_SECONDS", 10);
    let traffic_seconds = setting("HOOKLINE_TRAFFIC_SECONDS", 25);
    let fake = tokio::task::block_in_place(|| FakeKube::start(true));
    let nats = tokio::task::block_in_place(NatsServer::start).expect("nats-server starts");
    let client = fake.client().await;
    install_crd(&client).await;
    let resync = format!("--resync-interval={resync_seconds}s");
    let (mut operator, metrics_port) = tokio::task::block_in_place(|| {
        start_operator_with(
            &fake,
            &nats,
            "replica-a",
            &[
                &resync,
                // Stored canonically (700m, 512Mi): no write may follow from it.
                r#"--receiver-resources={"requests":{"cpu":"0.7","memory":"0.5Gi"}}"#,
            ],
        )
    });
    create_stripe_secrets(&client, "payments").await;
    let names = ["stripe", "stripe.eu", "stripe-eu"];
    for name in names {
        let mut resource = example("stripe.yaml");
        resource.metadata.name = Some(name.into());
        if name != "stripe" {
            resource.spec.ingress = None;
        }
        apply_endpoint(&client, &resource).await;
    }
    let endpoints: Api<WebhookEndpoint> = Api::namespaced(client.clone(), "payments");
    for name in names {
        eventually(&format!("{name} Ready"), &mut operator, async || {
            let endpoint = endpoints.get(name).await.ok()?;
            condition(&endpoint, conditions::READY).filter(|(status, _)| status == "True")
        })
        .await;
    }
    let deployments = fake
        .hook(
            reqwest::Method::GET,
            "/_fake/objects?kind=Deployment&namespace=payments",
        )
        .await;
    assert_eq!(
        deployments.as_array().map(Vec::len),
        Some(6),
        "each endpoint has a receiver and a consumer of its own: {deployments}"
    );

    // A busy endpoint: its figures change with every event, yet they are
    // written at most once per resync, and nothing else is written.
    let nats_client = hookline_api::nats::connect(&nats.url(), &Default::default(), "test")
        .await
        .expect("NATS");
    support::wait_connected(&nats_client).await;
    let js = jetstream::new(nats_client.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    fake.hook(reqwest::Method::POST, "/_fake/reset-requests")
        .await;
    let reconciles_before = reconciles(metrics_port).await;
    for event in 0..traffic_seconds * 4 {
        js.publish(
            format!("hookline.payments.stripe.event_{event}"),
            "{}".into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let writes = fake.writes_besides_leases().await;
    let status_writes = writes
        .iter()
        .filter(|request| {
            request["path"]
                .as_str()
                .is_some_and(|path| path.ends_with("/webhookendpoints/stripe/status"))
        })
        .count();
    let other_writes: Vec<&Value> = writes
        .iter()
        .filter(|request| {
            !request["path"]
                .as_str()
                .is_some_and(|path| path.ends_with("/status") || path.contains("/events"))
        })
        .collect();
    let reconciled = reconciles(metrics_port).await - reconciles_before;
    eprintln!(
        "traffic: {status_writes} status writes of the busy endpoint, {} child writes, {reconciled} reconciles of {} endpoints in {traffic_seconds} s (resync {resync_seconds} s)",
        other_writes.len(),
        names.len()
    );
    let most = traffic_seconds / resync_seconds + 2;
    assert!(
        status_writes as u64 <= most,
        "{status_writes} status writes in {traffic_seconds} s of traffic (resync {resync_seconds} s)"
    );
    assert!(
        other_writes.is_empty(),
        "no child written: {other_writes:?}"
    );
    assert!(
        reconciled <= names.len() as u64 * most,
        "{reconciled} reconciles of {} endpoints in {traffic_seconds} s",
        names.len()
    );

    // Fields removed from the spec are removed from the child.
    let mut edited = example("stripe.yaml");
    edited.spec.ingress = Some(serde_json::from_value(json!({"path": "/tls"})).expect("ingress"));
    apply_endpoint(&client, &edited).await;
    eventually(
        "tls and host gone from the Ingress",
        &mut operator,
        async || {
            let ingress = fake
                .hook(
                    reqwest::Method::GET,
                    "/_fake/objects?kind=Ingress&namespace=payments&name=stripe-receiver",
                )
                .await;
            let spec = ingress.get(0)?.get("spec")?.clone();
            (spec.get("tls").is_none() && spec["rules"][0].get("host").is_none()).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs fakekube.py from the development tools; .ci/run runs it"]
async fn a_leader_whose_lease_renewals_hang_exits_within_the_renew_deadline() {
    let fake = tokio::task::block_in_place(|| FakeKube::start(false));
    let nats = tokio::task::block_in_place(NatsServer::start).expect("nats-server starts");
    let client = fake.client().await;
    install_crd(&client).await;
    let (mut leader, port) =
        tokio::task::block_in_place(|| start_operator(&fake, &nats, "replica-a"));
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    eventually("replica-a leads", &mut leader, async || {
        let holder = leases
            .get("hookline-operator")
            .await
            .ok()?
            .spec?
            .holder_identity?;
        let ready: Value = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (holder == "replica-a" && ready["leading"] == true).then_some(())
    })
    .await;

    // The API server stops answering Lease requests (and only those).
    let stalled = Instant::now();
    let config = fake
        .configure(json!({"stallSeconds": 30, "stallPaths": "leases"}))
        .await;
    assert_eq!(config["stallPaths"], "leases");
    let status = tokio::task::block_in_place(|| {
        leader.wait_timeout(RENEW_DEADLINE + Duration::from_secs(3))
    })
    .unwrap_or_else(|| {
        panic!(
            "still running {:?} after the Lease renewals began to hang:\n{}",
            stalled.elapsed(),
            leader.log_tail(30)
        )
    });
    assert!(
        stalled.elapsed() < LEASE_DURATION,
        "stopped only after {:?}, when a standby could have taken the Lease",
        stalled.elapsed()
    );
    assert!(!status.success(), "{status}:\n{}", leader.log_tail(30));
    let log = leader.log();
    assert!(
        log.contains("within the renew deadline") && log.contains("lost the Lease"),
        "no word of losing the Lease:\n{}",
        leader.log_tail(30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs fakekube.py from the development tools; .ci/run runs it"]
async fn taken_names_foreign_streams_and_rollouts_are_said_in_the_status() {
    use hookline_api::provision::{self, StreamOwner};

    // Deployments report their rollout 2 s after a change, as a slow one would.
    let fake =
        tokio::task::block_in_place(|| FakeKube::start_with(true, &["--deployment-delay", "2"]));
    let nats = tokio::task::block_in_place(NatsServer::start).expect("nats-server starts");
    let client = fake.client().await;
    install_crd(&client).await;
    let (mut operator, _) = tokio::task::block_in_place(|| {
        start_operator_with(&fake, &nats, "replica-a", &["--cluster-name=eu1"])
    });
    for namespace in ["default", "payments"] {
        create_secret(
            &client,
            secret(
                namespace,
                "hookline-postgres",
                "url",
                "postgres://db/hookline",
            ),
        )
        .await;
    }
    create_secret(
        &client,
        secret("payments", "stripe-webhook", "secret", "whsec_test"),
    )
    .await;

    // Someone's own ConfigMap has the name of github's manifest.
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "default");
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "github-endpoint"}, "data": {"mine": "yes"}}),
            )
            .expect("config map"),
        )
        .await
        .expect("created");
    // Another cluster on this NATS (same name eu1, by mistake) owns stripe's stream.
    let stripe = example("stripe.yaml");
    let valid = hookline_operator::validate::validate(&stripe)
        .expect("valid")
        .in_cluster(Some("eu1"));
    let nats_client = hookline_api::nats::connect(&nats.url(), &Default::default(), "test")
        .await
        .expect("NATS");
    support::wait_connected(&nats_client).await;
    let js = jetstream::new(nats_client.clone());
    provision::ensure(
        &js,
        &valid.endpoint,
        Some(&StreamOwner::new("uid-elsewhere", "payments", "stripe")),
        &mut None,
    )
    .await
    .expect("the other cluster's stream");

    apply_endpoint(&client, &example("github.yaml")).await;
    apply_endpoint(&client, &stripe).await;
    let github: Api<WebhookEndpoint> = Api::namespaced(client.clone(), "default");
    let payments: Api<WebhookEndpoint> = Api::namespaced(client.clone(), "payments");
    eventually("github: NameConflict", &mut operator, async || {
        let endpoint = github.get("github").await.ok()?;
        condition(&endpoint, conditions::READY)
            .filter(|(status, reason)| status == "False" && reason == "NameConflict")
    })
    .await;
    let theirs = config_maps
        .get("github-endpoint")
        .await
        .expect("still there");
    assert_eq!(
        theirs
            .data
            .and_then(|data| data.get("mine").cloned())
            .as_deref(),
        Some("yes")
    );
    eventually("stripe: StreamOwnedElsewhere", &mut operator, async || {
        let endpoint = payments.get("stripe").await.ok()?;
        condition(&endpoint, conditions::STREAM_READY)
            .filter(|(status, reason)| status == "False" && reason == "StreamOwnedElsewhere")
    })
    .await;

    // The stale ConfigMap goes: github becomes Ready, on a stream named for eu1.
    config_maps
        .delete("github-endpoint", &DeleteParams::default())
        .await
        .expect("deleted");
    eventually("github Ready", &mut operator, async || {
        let endpoint = github.get("github").await.ok()?;
        condition(&endpoint, conditions::READY).filter(|(status, _)| status == "True")
    })
    .await;
    js.get_stream("HOOKLINE-eu1_default_github")
        .await
        .expect("the cluster's own stream name");

    // A spec change rolls the pods: Ready=True for the new generation only
    // once the Deployments report the new template rolled out.
    let mut edited = example("github.yaml");
    edited.spec.request =
        Some(serde_json::from_value(json!({"maxBodyBytes": 65536})).expect("request"));
    apply_endpoint(&client, &edited).await;
    let generation = github
        .get("github")
        .await
        .expect("endpoint")
        .metadata
        .generation;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let mut saw_progressing = false;
    eventually("Ready for the new generation", &mut operator, async || {
        let endpoint = github.get("github").await.ok()?;
        let ready = endpoint
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|condition| condition.type_ == conditions::READY)?
            .clone();
        if ready.observed_generation != generation {
            return None;
        }
        if ready.status != "True" {
            saw_progressing |= ready.reason == "Progressing";
            return None;
        }
        let receiver = deployments.get("github-receiver").await.ok()?;
        let rolled_out = receiver.status.as_ref().is_some_and(|status| {
            status.observed_generation == receiver.metadata.generation
                && status.updated_replicas == receiver.spec.as_ref().and_then(|spec| spec.replicas)
        });
        assert!(
            rolled_out,
            "Ready=True before the rollout: {:?}",
            receiver.status
        );
        Some(())
    })
    .await;
    assert!(
        saw_progressing,
        "Ready=False (Progressing) while rolling out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs fakekube.py from the development tools; .ci/run runs it"]
async fn the_operator_binary_serves_a_pool_and_its_members_until_ready() {
    use hookline_api::pool::WebhookPool;
    use support::fakekube::install_pool_crd;

    let fake = tokio::task::block_in_place(|| FakeKube::start(true));
    let nats = tokio::task::block_in_place(NatsServer::start).expect("nats-server starts");
    let client = fake.client().await;
    install_crd(&client).await;
    install_pool_crd(&client).await;
    let port = free_port();
    let service_url = format!("--service-url=http://127.0.0.1:{port}");
    let mut command = Command::new(workspace_bin("hookline-operator"));
    command
        .arg("run")
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg("--identity=pool-replica")
        .arg("--lease-namespace=default")
        .arg(&service_url)
        .env("KUBECONFIG", fake.kubeconfig())
        .env("HOOKLINE_NATS_URL", nats.url())
        .env("RUST_LOG", "info");
    let mut operator =
        tokio::task::block_in_place(|| ChildProcess::spawn(&mut command).expect("operator starts"));

    create_secret(&client, secret("shop", "db", "url", "postgres://db/hooks")).await;
    let pools: Api<WebhookPool> = Api::namespaced(client.clone(), "shop");
    let pool: WebhookPool = serde_json::from_value(json!({
        "apiVersion": "hookline.io/v1alpha1", "kind": "WebhookPool",
        "metadata": {"name": "shared", "namespace": "shop"},
        "spec": {"consumer": {"databaseSecretRef": {"name": "db", "key": "url"}}},
    }))
    .expect("pool");
    pools
        .patch(
            "shared",
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(&pool),
        )
        .await
        .expect("pool applied");
    let names = ["a", "b", "c"];
    for name in names {
        create_secret(
            &client,
            secret("shop", &format!("{name}-signing"), "secret", "whsec_x"),
        )
        .await;
        let member: WebhookEndpoint = serde_json::from_value(json!({
            "apiVersion": "hookline.io/v1alpha1", "kind": "WebhookEndpoint",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"provider": "github", "secretRef": {"name": format!("{name}-signing")},
                "pool": "shared", "ingress": {"host": "hooks.example.com"}},
        }))
        .expect("member");
        apply_endpoint(&client, &member).await;
    }
    let endpoints: Api<WebhookEndpoint> = Api::namespaced(client.clone(), "shop");
    for name in names {
        eventually(
            &format!("{name} Served and Ready"),
            &mut operator,
            async || {
                let endpoint = endpoints.get(name).await.ok()?;
                let served = condition(&endpoint, conditions::SERVED)?;
                let ready = condition(&endpoint, conditions::READY)?;
                (served.0 == "True" && ready.0 == "True").then_some(())
            },
        )
        .await;
    }
    eventually("the pool Ready with 3 members", &mut operator, async || {
        let pool = pools.get("shared").await.ok()?;
        let status = pool.status?;
        let ready = status
            .conditions
            .iter()
            .any(|condition| condition.type_ == "Ready" && condition.status == "True");
        (ready && status.members == Some(3) && status.served == Some(3)).then_some(())
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let names_of: Vec<String> = deployments
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .iter()
        .map(|deployment| deployment.name_any())
        .collect();
    assert_eq!(names_of, ["shared-pool-consumer", "shared-pool-receiver"]);
    let lag: Value = reqwest::get(format!("http://127.0.0.1:{port}/pools/shop/shared/lag"))
        .await
        .expect("lag answered")
        .json()
        .await
        .expect("JSON");
    assert_eq!(lag, json!({"lag": 0, "members": 3}));
    let scalers = fake
        .hook(reqwest::Method::GET, "/_fake/objects?kind=ScaledObject")
        .await;
    let scalers = scalers.as_array().cloned().unwrap_or_default();
    assert_eq!(scalers.len(), 1, "{scalers:?}");
    assert_eq!(
        scalers[0]["spec"]["triggers"][0]["metadata"]["url"],
        format!("http://127.0.0.1:{port}/pools/shop/shared/lag")
    );

    // A rotated signing secret reaches the pool Secret with no other touch.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "shop");
    secrets
        .patch(
            "b-signing",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"secret": "whsec_old\nwhsec_new"}})),
        )
        .await
        .expect("rotated");
    eventually(
        "the pool Secret holds b's new key",
        &mut operator,
        async || {
            let pool_secret = secrets.get("shared-pool-secrets").await.ok()?;
            let value = pool_secret.data?.get("b")?.0.clone();
            (value == b"whsec_old\nwhsec_new").then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs fakekube.py from the development tools; .ci/run runs it"]
async fn the_operator_binary_runs_a_pool_with_a_shared_stream_and_lets_a_member_leave() {
    use hookline_api::pool::WebhookPool;
    use support::fakekube::install_pool_crd;

    let fake = tokio::task::block_in_place(|| FakeKube::start(true));
    let nats = tokio::task::block_in_place(NatsServer::start).expect("nats-server starts");
    let client = fake.client().await;
    install_crd(&client).await;
    install_pool_crd(&client).await;
    let (mut operator, _) = start_operator(&fake, &nats, "shared-stream-replica");
    create_secret(&client, secret("shop", "db", "url", "postgres://db/hooks")).await;
    let pools: Api<WebhookPool> = Api::namespaced(client.clone(), "shop");
    let pool: WebhookPool = serde_json::from_value(json!({
        "apiVersion": "hookline.io/v1alpha1", "kind": "WebhookPool",
        "metadata": {"name": "busy", "namespace": "shop"},
        "spec": {"consumer": {"databaseSecretRef": {"name": "db", "key": "url"}},
            "stream": {}},
    }))
    .expect("pool");
    pools
        .patch(
            "busy",
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(&pool),
        )
        .await
        .expect("pool applied");
    let member = |name: &str, pooled: bool| -> WebhookEndpoint {
        let mut spec = json!({"provider": "github", "secretRef": {"name": format!("{name}-signing")},
            "ingress": {"host": "hooks.example.com"}});
        if pooled {
            spec["pool"] = json!("busy");
        } else {
            spec["consumer"] = json!({"databaseSecretRef": {"name": "db", "key": "url"}});
        }
        serde_json::from_value(json!({
            "apiVersion": "hookline.io/v1alpha1", "kind": "WebhookEndpoint",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": spec,
        }))
        .expect("member")
    };
    for name in ["a", "b"] {
        create_secret(
            &client,
            secret("shop", &format!("{name}-signing"), "secret", "whsec_x"),
        )
        .await;
        apply_endpoint(&client, &member(name, true)).await;
    }
    let endpoints: Api<WebhookEndpoint> = Api::namespaced(client.clone(), "shop");
    for name in ["a", "b"] {
        eventually(
            &format!("{name} Ready in the pool's stream"),
            &mut operator,
            async || {
                let endpoint = endpoints.get(name).await.ok()?;
                let ready = condition(&endpoint, conditions::READY)?;
                let stream = endpoint.status?.stream?;
                (ready.0 == "True" && stream == "HOOKLINE_shop_POOL_busy").then_some(())
            },
        )
        .await;
    }
    let js = jetstream::new(
        hookline_api::nats::connect(&nats.url(), &Default::default(), "test")
            .await
            .expect("NATS"),
    );
    let subjects = async || -> Option<Vec<String>> {
        let mut stream = js.get_stream("HOOKLINE_shop_POOL_busy").await.ok()?;
        Some(stream.info().await.ok()?.config.subjects.clone())
    };
    eventually(
        "the pool's stream lists a and b",
        &mut operator,
        async || {
            (subjects().await? == ["hookline.shop.POOL_busy.a.>", "hookline.shop.POOL_busy.b.>"])
                .then_some(())
        },
    )
    .await;
    eventually(
        "the pool's stream has the pool's one durable, no member's",
        &mut operator,
        async || {
            let stream = js.get_stream("HOOKLINE_shop_POOL_busy").await.ok()?;
            let names: Vec<String> = futures::TryStreamExt::try_collect(stream.consumer_names())
                .await
                .ok()?;
            (names == ["hookline-consumer"]).then_some(())
        },
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    for name in ["busy-pool-receiver", "busy-pool-consumer"] {
        let deployment = deployments.get(name).await.expect("pool Deployment");
        let args = serde_json::to_value(deployment).expect("JSON")["spec"]["template"]["spec"]
            ["containers"][0]["args"]
            .to_string();
        assert!(args.contains("--shared-stream=busy"), "{name}: {args}");
    }

    // a leaves: its subject goes at once, its own stream is made again.
    apply_endpoint(&client, &member("a", false)).await;
    eventually(
        "a out of the pool's stream, with a stream of its own",
        &mut operator,
        async || {
            let own = js.get_stream("HOOKLINE_shop_a").await.ok()?;
            let own_subjects = own.cached_info().config.subjects.clone();
            (subjects().await? == ["hookline.shop.POOL_busy.b.>"]
                && own_subjects == ["hookline.shop.a.>"])
            .then_some(())
        },
    )
    .await;

    // The pool is deleted while b's events wait in its stream: the stream
    // stays, closed to new events, and the pool made again takes it over.
    js.publish("hookline.shop.POOL_busy.b.push", "{}".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    pools
        .delete("busy", &DeleteParams::default())
        .await
        .expect("pool deleted");
    eventually(
        "the pool gone, its stream kept and closed",
        &mut operator,
        async || {
            let gone = pools.get_opt("busy").await.ok()?.is_none();
            (gone && subjects().await? == ["hookline.shop.POOL_busy._none"]).then_some(())
        },
    )
    .await;
    pools
        .patch(
            "busy",
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(&pool),
        )
        .await
        .expect("pool applied again");
    eventually(
        "the pool made again lists b in its old stream, b's event still there",
        &mut operator,
        async || {
            let mut stream = js.get_stream("HOOKLINE_shop_POOL_busy").await.ok()?;
            let info = stream.info().await.ok()?;
            (info.config.subjects == ["hookline.shop.POOL_busy.b.>"] && info.state.messages == 1)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs fakekube.py from the development tools; .ci/run runs it"]
async fn a_leader_started_while_nats_is_down_stops_on_sigterm() {
    let fake = tokio::task::block_in_place(|| FakeKube::start(false));
    let mut nats = tokio::task::block_in_place(NatsServer::start).expect("nats-server starts");
    nats.stop();
    let client = fake.client().await;
    install_crd(&client).await;
    let (mut leader, port) =
        tokio::task::block_in_place(|| start_operator(&fake, &nats, "replica-a"));
    eventually("replica-a leads", &mut leader, async || {
        let ready: Value = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (ready["leading"] == true).then_some(())
    })
    .await;
    // Its controllers run, NATS still down.
    tokio::time::sleep(Duration::from_secs(2)).await;

    leader.signal(Signal::Term).expect("SIGTERM");
    let status = tokio::task::block_in_place(|| leader.wait_timeout(Duration::from_secs(20)))
        .unwrap_or_else(|| {
            panic!(
                "still running 20 s after SIGTERM with NATS down:\n{}",
                leader.log_tail(30)
            )
        });
    assert!(status.success(), "{status}:\n{}", leader.log_tail(30));
}
