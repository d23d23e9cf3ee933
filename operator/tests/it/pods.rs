//! The pods the operator makes can start and work: for every example, the
//! rendered receiver and consumer containers run as the real binaries, with
//! exactly their command, args and env (mount paths mapped into a temp dir,
//! Secret references resolved as the kubelet would), against a real
//! nats-server and Postgres; one event signed the provider's way becomes one row.

use crate::support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hookline_api::spec::Provider;
use hookline_e2e::soak::providers;
use hookline_e2e::{ChildProcess, NatsServer, Postgres, free_port, workspace_bin};
use hookline_operator::build::{self, Cluster};
use hookline_operator::config::{NatsSettings, OperatorConfig};
use hookline_operator::validate::{ValidEndpoint, validate};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// The signing secret the test puts into the endpoint's Secret.
fn signing_secret(provider: Provider) -> String {
    match provider {
        Provider::StandardWebhooks => {
            format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD
                    .encode(b"render-run-test-secret-32-bytes!")
            )
        }
        other => format!("{other}-render-run-secret"),
    }
}

/// One event as `provider` sends it: body and headers, signed its way (the
/// soak's signing, written from the providers' documentation).
fn signed_event(provider: Provider, secret: &str, id: &str) -> (String, Vec<(String, String)>) {
    let soak_provider = match provider {
        Provider::Stripe => providers::Provider::Stripe,
        Provider::Github => providers::Provider::Github,
        Provider::Shopify => providers::Provider::Shopify,
        Provider::Slack => providers::Provider::Slack,
        Provider::StandardWebhooks => providers::Provider::StandardWebhooks,
        Provider::Generic => providers::Provider::Generic,
    };
    let now = i64::try_from(now()).expect("a time in range");
    providers::delivery(soak_provider, secret, id, now)
}

fn container(deployment: &Deployment) -> (&PodSpec, &Container) {
    let pod = deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .expect("pod spec");
    (pod, &pod.containers[0])
}

/// Writes every file the pod mounts under `root` (ConfigMap and Secrets) and
/// returns the container as a command: mount paths mapped under `root`, the
/// listen address on a free loopback port, Secret env resolved.
fn pod_command(
    deployment: &Deployment,
    root: &Path,
    files: &BTreeMap<String, String>,
    secret_env: &BTreeMap<String, String>,
) -> (Command, u16) {
    let (_, container) = container(deployment);
    for mount in container.volume_mounts.iter().flatten() {
        std::fs::create_dir_all(root.join(mount.mount_path.trim_start_matches('/')))
            .expect("mount dir");
    }
    for (path, content) in files {
        let path = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().expect("a directory")).expect("mount dir");
        std::fs::write(path, content).expect("mounted file");
    }
    let command_name = &container.command.as_ref().expect("command")[0];
    let mut command = Command::new(workspace_bin(command_name));
    let port = free_port();
    for arg in container.args.iter().flatten() {
        let arg = if arg.starts_with("--listen=") {
            format!("--listen=127.0.0.1:{port}")
        } else {
            arg.replace(
                "=/etc/hookline",
                &format!("={}/etc/hookline", root.display()),
            )
        };
        command.arg(arg);
    }
    command.env_clear();
    for var in container.env.iter().flatten() {
        match (&var.value, &var.value_from) {
            (Some(value), _) => command.env(
                &var.name,
                value.replace("/etc/hookline", &format!("{}/etc/hookline", root.display())),
            ),
            (None, Some(_)) => command.env(&var.name, &secret_env[&var.name]),
            (None, None) => command.env(&var.name, ""),
        };
    }
    (command, port)
}

async fn wait_ready(client: &reqwest::Client, url: &str, process: &mut ChildProcess) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if client
            .get(url)
            .send()
            .await
            .is_ok_and(|response| response.status().is_success())
        {
            return;
        }
        if let Some(status) = process.exit_status() {
            panic!(
                "{} exited with {status}:\n{}",
                process.name(),
                process.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{url} never became ready:\n{}", process.log_tail(40));
}

fn rows(postgres: &Postgres, endpoint: &str) -> u64 {
    postgres
        .psql(&format!(
            "SELECT count(*) FROM hookline.events WHERE endpoint = '{endpoint}'"
        ))
        .map(|out| out.trim().parse().unwrap_or(0))
        .unwrap_or(0)
}

async fn run_example(
    file: &str,
    valid: &ValidEndpoint,
    nats: &NatsServer,
    postgres: &Postgres,
    client: &reqwest::Client,
) {
    let config = OperatorConfig {
        nats: NatsSettings {
            url: nats.url(),
            ..NatsSettings::default()
        },
        ..OperatorConfig::default()
    };
    let children = build::build(valid, &config, Cluster { keda: true });
    let endpoint = &valid.endpoint;
    // What the operator does through the NATS API before the pods start.
    let nats_client = hookline_api::nats::connect(&nats.url(), &Default::default(), "render-run")
        .await
        .expect("NATS client");
    support::wait_connected(&nats_client).await;
    hookline_api::provision::provision(&async_nats::jetstream::new(nats_client), endpoint)
        .await
        .expect("provision");

    let root = tempfile::tempdir().expect("temp dir");
    let secret = signing_secret(endpoint.provider);
    let mut files = BTreeMap::from([(
        "/etc/hookline/endpoint/endpoint.yaml".to_owned(),
        children
            .workload
            .as_ref()
            .expect("own pods")
            .config_map
            .data
            .clone()
            .expect("data")["endpoint.yaml"]
            .clone(),
    )]);
    files.insert(
        format!("/etc/hookline/signing-secret/{}", endpoint.secret.key),
        secret.clone(),
    );
    let secret_env = BTreeMap::from([("HOOKLINE_DATABASE_URL".to_owned(), postgres.url())]);

    let (mut consumer_command, consumer_port) = tokio::task::block_in_place(|| {
        pod_command(
            &children.workload.as_ref().expect("own pods").consumer,
            root.path(),
            &files,
            &secret_env,
        )
    });
    let mut consumer = ChildProcess::spawn(&mut consumer_command).expect("consumer starts");
    let (mut receiver_command, receiver_port) = tokio::task::block_in_place(|| {
        pod_command(
            &children.workload.as_ref().expect("own pods").receiver,
            root.path(),
            &files,
            &secret_env,
        )
    });
    let mut receiver = ChildProcess::spawn(&mut receiver_command).expect("receiver starts");
    wait_ready(
        client,
        &format!("http://127.0.0.1:{receiver_port}/readyz"),
        &mut receiver,
    )
    .await;
    wait_ready(
        client,
        &format!("http://127.0.0.1:{consumer_port}/readyz"),
        &mut consumer,
    )
    .await;

    let (body, headers) = signed_event(endpoint.provider, &secret, &format!("evt_{file}"));
    let mut request = client
        .post(format!(
            "http://127.0.0.1:{receiver_port}{}",
            endpoint.route.path
        ))
        .header("Content-Type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.send().await.expect("the receiver answers");
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{file}: {text}\n{}", receiver.log_tail(20));

    let key = endpoint.key();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::task::block_in_place(|| rows(postgres, &key)) == 0 {
        assert!(
            Instant::now() < deadline,
            "{file}: no row for {key}:\n{}",
            consumer.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        tokio::task::block_in_place(|| rows(postgres, &key)),
        1,
        "{file}"
    );
    tokio::task::block_in_place(|| {
        receiver.terminate();
        consumer.terminate();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_pods_of_every_example_start_and_store_a_signed_event() {
    let nats = tokio::task::block_in_place(NatsServer::start)
        .expect("nats-server starts (apt-get install -y nats-server)");
    let postgres = tokio::task::block_in_place(Postgres::start)
        .expect("Postgres starts (apt-get install -y postgresql)");
    let client = reqwest::Client::new();
    for (file, mut resource) in support::examples() {
        resource.metadata.uid = Some("00000000-0000-0000-0000-000000000001".into());
        let valid = validate(&resource).expect("example is valid");
        run_example(&file, &valid, &nats, &postgres, &client).await;
    }
}
