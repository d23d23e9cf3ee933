//! WebhookPool against the in-memory API with a real nats-server: members'
//! manifests and signing secrets in the pool's ConfigMap and Secret, their
//! Ingress to the pool's Service, no pods of their own, pool pods that never
//! roll for a member, switching in and out, and what is refused.

use crate::support;

use hookline_api::conditions::{self, reasons};
use hookline_api::spec::WebhookEndpoint;
use hookline_operator::http::standby_lag;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::networking::v1::Ingress;
use serde_json::{Value, json};
use support::{Harness, secret};

const NS: &str = "shop";
const POOL: &str = "shared";

fn pool_object(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "hookline.io/v1alpha1",
        "kind": "WebhookPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"consumer": {"databaseSecretRef": {"name": "db", "key": "url"}}},
    })
}

fn member(namespace: &str, name: &str, pool: Option<&str>) -> WebhookEndpoint {
    let mut spec = json!({
        "provider": "github",
        "secretRef": {"name": format!("{name}-signing")},
        "ingress": {"host": "hooks.example.com"},
    });
    match pool {
        Some(pool) => spec["pool"] = json!(pool),
        None => spec["consumer"] = json!({"databaseSecretRef": {"name": "db", "key": "url"}}),
    }
    serde_json::from_value(json!({
        "apiVersion": "hookline.io/v1alpha1",
        "kind": "WebhookEndpoint",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
    .expect("endpoint")
}

/// Stores the pool's and members' Secrets, the pool, and the members.
fn add(harness: &Harness, namespace: &str, members: &[(&str, Option<&str>)]) {
    harness
        .fake
        .insert(&secret(namespace, "db", "url", "postgres://db/hooks"));
    for (name, pool) in members {
        harness.fake.insert(&secret(
            namespace,
            &format!("{name}-signing"),
            "secret",
            &format!("key-of-{name}"),
        ));
        harness.fake.insert(&member(namespace, name, *pool));
    }
}

/// Reconciles every endpoint (twice: finalizer, then the pass) and the
/// pool, makes the Deployments available, and reconciles all once more.
async fn converge(harness: &mut Harness, namespace: &str, pool: &str, members: &[&str]) {
    for name in members {
        harness.settle(namespace, name).await;
    }
    harness.reconcile_pool(namespace, pool).await.expect("pool");
    harness.fake.make_deployments_available();
    harness.reconcile_pool(namespace, pool).await.expect("pool");
    for name in members {
        harness.reconcile(namespace, name).await.expect("member");
    }
}

fn config_map(harness: &Harness, namespace: &str, name: &str) -> Option<ConfigMap> {
    harness.fake.typed(namespace, name)
}

fn keys<T>(map: Option<std::collections::BTreeMap<String, T>>) -> Vec<String> {
    map.unwrap_or_default().into_keys().collect()
}

fn pool_templates(harness: &Harness) -> Vec<Value> {
    ["shared-pool-receiver", "shared-pool-consumer"]
        .iter()
        .map(|name| {
            let deployment: Deployment = harness.fake.typed(NS, name).expect("pool Deployment");
            serde_json::to_value(deployment.spec.expect("spec").template).expect("JSON")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_serves_its_members_from_one_config_map_and_one_secret() {
    let mut harness = Harness::start(true).await;
    harness.fake.insert(&pool_object(NS, POOL));
    add(
        &harness,
        NS,
        &[("a", Some(POOL)), ("b", Some(POOL)), ("c", Some(POOL))],
    );
    converge(&mut harness, NS, POOL, &["a", "b", "c"]).await;

    let manifests = config_map(&harness, NS, "shared-pool-endpoints").expect("pool ConfigMap");
    let a = hookline_operator::validate::validate(&harness.endpoint(NS, "a")).expect("valid");
    assert_eq!(
        manifests.data.as_ref().and_then(|data| data.get("a.yaml")),
        Some(&a.manifest),
        "the same manifest a dedicated ConfigMap holds"
    );
    assert_eq!(keys(manifests.data), ["a.yaml", "b.yaml", "c.yaml"]);
    let secrets: Secret = harness
        .fake
        .typed(NS, "shared-pool-secrets")
        .expect("pool Secret");
    let data = secrets.data.expect("data");
    assert_eq!(data.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(data["b"].0, b"key-of-b");
    for name in ["a", "b", "c"] {
        let ingress: Ingress = harness
            .fake
            .typed(NS, &format!("{name}-receiver"))
            .expect("the member keeps its Ingress");
        let backend = &serde_json::to_value(&ingress).expect("JSON")["spec"]["rules"][0]["http"]["paths"]
            [0]["backend"]["service"]["name"];
        assert_eq!(backend, "shared-pool-receiver");
        for (api_version, kind, child) in [
            ("apps/v1", "Deployment", "receiver"),
            ("apps/v1", "Deployment", "consumer"),
            ("v1", "Service", "receiver"),
            ("policy/v1", "PodDisruptionBudget", "receiver"),
            ("v1", "ConfigMap", "endpoint"),
            ("keda.sh/v1alpha1", "ScaledObject", "consumer"),
        ] {
            assert!(
                harness
                    .fake
                    .get(api_version, kind, NS, &format!("{name}-{child}"))
                    .is_none(),
                "a member has no {kind} {name}-{child} of its own"
            );
        }
        harness.expect_condition(
            NS,
            name,
            conditions::SERVED,
            "True",
            reasons::SERVED_BY_POOL,
        );
        harness.expect_condition(NS, name, conditions::READY, "True", reasons::RECONCILED);
        let status = harness.endpoint(NS, name).status.expect("status");
        assert_eq!(status.served_by.as_deref(), Some(POOL));
    }
    let pool = harness.pool(NS, POOL).status.expect("pool status");
    assert_eq!((pool.members, pool.served), (Some(3), Some(3)));
    let ready = pool
        .conditions
        .iter()
        .find(|condition| condition.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.status, "True", "{}", ready.message);
    let scaler = harness
        .fake
        .get(
            "keda.sh/v1alpha1",
            "ScaledObject",
            NS,
            "shared-pool-consumer",
        )
        .is_none();
    assert!(
        scaler,
        "without --service-url the pool consumer is not KEDA-scaled"
    );

    // A steady pool writes nothing.
    harness.fake.clear_calls();
    harness.reconcile_pool(NS, POOL).await.expect("steady");
    assert_eq!(harness.fake.writes(), Vec::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_added_edited_and_removed_change_the_directories_and_never_the_pods() {
    let mut harness = Harness::start(true).await;
    harness.fake.insert(&pool_object(NS, POOL));
    add(&harness, NS, &[("a", Some(POOL)), ("b", Some(POOL))]);
    converge(&mut harness, NS, POOL, &["a", "b"]).await;
    let templates = pool_templates(&harness);
    let before = config_map(&harness, NS, "shared-pool-endpoints").expect("ConfigMap");

    add(&harness, NS, &[("d", Some(POOL))]);
    harness.edit_endpoint(NS, "a", |object| {
        object["spec"]["request"] = json!({"maxBodyBytes": 2048});
    });
    harness.edit_endpoint(NS, "b", |object| {
        object["spec"].as_object_mut().expect("spec").remove("pool");
        object["spec"]["consumer"] = json!({"databaseSecretRef": {"name": "db", "key": "url"}});
    });
    harness.reconcile_pool(NS, POOL).await.expect("pool");

    let after = config_map(&harness, NS, "shared-pool-endpoints").expect("ConfigMap");
    assert_eq!(keys(after.data.clone()), ["a.yaml", "d.yaml"]);
    assert_ne!(
        before.data.as_ref().map(|data| &data["a.yaml"]),
        after.data.as_ref().map(|data| &data["a.yaml"]),
        "the edited manifest"
    );
    let secrets: Secret = harness
        .fake
        .typed(NS, "shared-pool-secrets")
        .expect("Secret");
    assert_eq!(keys(secrets.data), ["a", "d"]);
    assert_eq!(pool_templates(&harness), templates, "no pool pod rolls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_secret_is_written_when_a_signing_secret_changes_and_never_over_anothers() {
    let mut harness = Harness::start(true).await;
    harness.fake.insert(&pool_object(NS, POOL));
    add(&harness, NS, &[("a", Some(POOL))]);
    converge(&mut harness, NS, POOL, &["a"]).await;

    harness
        .fake
        .insert(&secret(NS, "a-signing", "secret", "rotated-key-of-a"));
    harness.fake.clear_calls();
    harness.reconcile_pool(NS, POOL).await.expect("pool");
    let written: Vec<_> = harness
        .fake
        .writes()
        .into_iter()
        .map(|call| (call.verb, call.resource, call.name, call.field_manager))
        .collect();
    assert_eq!(
        written,
        [(
            "patch".to_owned(),
            "secrets".to_owned(),
            Some("shared-pool-secrets".to_owned()),
            Some(hookline_api::naming::FIELD_MANAGER.to_owned())
        )],
        "one server-side apply of the pool Secret, by the one field manager"
    );
    let secrets: Secret = harness
        .fake
        .typed(NS, "shared-pool-secrets")
        .expect("Secret");
    assert_eq!(secrets.data.expect("data")["a"].0, b"rotated-key-of-a");
    assert_eq!(
        secrets.metadata.owner_references.expect("owned")[0].kind,
        "WebhookPool"
    );
    harness.fake.clear_calls();
    harness.reconcile_pool(NS, POOL).await.expect("steady");
    assert_eq!(harness.fake.writes(), Vec::new(), "written once");

    // Someone else's Secret under the pool Secret's name is never written.
    let mut other = Harness::start(true).await;
    other.fake.insert(&pool_object(NS, POOL));
    other
        .fake
        .insert(&secret(NS, "shared-pool-secrets", "x", "not the pool's"));
    add(&other, NS, &[("a", Some(POOL))]);
    other.settle(NS, "a").await;
    other.reconcile_pool(NS, POOL).await.expect("pool");
    let theirs: Secret = other.fake.typed(NS, "shared-pool-secrets").expect("Secret");
    assert_eq!(keys(theirs.data), ["x"]);
    let ready = other
        .pool(NS, POOL)
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|condition| condition.type_ == "Ready")
        .expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reasons::NAME_CONFLICT),
        "{}",
        ready.message
    );
    assert!(
        ready.message.contains("Secret shop/shared-pool-secrets"),
        "{}",
        ready.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_between_dedicated_and_pooled_moves_the_pods_and_keeps_the_ingress() {
    let mut harness = Harness::start(true).await;
    harness.fake.insert(&pool_object(NS, POOL));
    add(&harness, NS, &[("a", None)]);
    harness.settle(NS, "a").await;
    assert!(
        harness
            .fake
            .get("apps/v1", "Deployment", NS, "a-receiver")
            .is_some()
    );

    harness.edit_endpoint(NS, "a", |object| {
        object["spec"]["pool"] = json!(POOL);
        object["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("consumer");
    });
    harness.reconcile(NS, "a").await.expect("pooled");
    for (api_version, kind, name) in [
        ("apps/v1", "Deployment", "a-receiver"),
        ("apps/v1", "Deployment", "a-consumer"),
        ("v1", "Service", "a-receiver"),
        ("policy/v1", "PodDisruptionBudget", "a-receiver"),
        ("v1", "ConfigMap", "a-endpoint"),
        ("keda.sh/v1alpha1", "ScaledObject", "a-consumer"),
    ] {
        assert!(
            harness.fake.get(api_version, kind, NS, name).is_none(),
            "{kind} {name} deleted"
        );
    }
    let ingress = harness
        .fake
        .get("networking.k8s.io/v1", "Ingress", NS, "a-receiver")
        .expect("Ingress kept");
    assert_eq!(
        ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
        "shared-pool-receiver"
    );
    harness.reconcile_pool(NS, POOL).await.expect("pool");
    harness.fake.make_deployments_available();
    harness.reconcile(NS, "a").await.expect("served");
    harness.expect_condition(NS, "a", conditions::SERVED, "True", reasons::SERVED_BY_POOL);

    harness.edit_endpoint(NS, "a", |object| {
        object["spec"].as_object_mut().expect("spec").remove("pool");
        object["spec"]["consumer"] = json!({"databaseSecretRef": {"name": "db", "key": "url"}});
    });
    harness.reconcile(NS, "a").await.expect("dedicated again");
    assert!(
        harness
            .fake
            .get("apps/v1", "Deployment", NS, "a-receiver")
            .is_some()
    );
    assert!(
        harness
            .fake
            .get("apps/v1", "Deployment", NS, "a-consumer")
            .is_some()
    );
    let ingress = harness
        .fake
        .get("networking.k8s.io/v1", "Ingress", NS, "a-receiver")
        .expect("Ingress");
    assert_eq!(
        ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
        "a-receiver"
    );
    let status = harness.endpoint(NS, "a").status.expect("status");
    assert_eq!(status.served_by, None);
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.type_ != conditions::SERVED),
        "a dedicated endpoint has no Served condition"
    );
    harness.reconcile_pool(NS, POOL).await.expect("pool");
    let manifests = config_map(&harness, NS, "shared-pool-endpoints").expect("ConfigMap");
    assert_eq!(keys(manifests.data), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_pool_is_not_served_and_a_pool_never_serves_another_namespace() {
    let mut harness = Harness::start(true).await;
    harness.fake.insert(&pool_object(NS, POOL));
    add(&harness, NS, &[("a", Some(POOL))]);
    add(
        &harness,
        "other",
        &[("a", Some(POOL)), ("b", Some("nowhere"))],
    );
    converge(&mut harness, NS, POOL, &["a"]).await;
    for name in ["a", "b"] {
        harness.settle("other", name).await;
        harness.expect_condition(
            "other",
            name,
            conditions::SERVED,
            "False",
            reasons::POOL_NOT_FOUND,
        );
        harness.expect_condition(
            "other",
            name,
            conditions::READY,
            "False",
            reasons::POOL_NOT_FOUND,
        );
    }
    let manifests = config_map(&harness, NS, "shared-pool-endpoints").expect("ConfigMap");
    assert_eq!(keys(manifests.data), ["a.yaml"]);
    let secrets: Secret = harness
        .fake
        .typed(NS, "shared-pool-secrets")
        .expect("Secret");
    assert_eq!(
        secrets.data.expect("data")["a"].0,
        b"key-of-a",
        "this namespace's key"
    );
    assert!(config_map(&harness, "other", "shared-pool-endpoints").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_only_pods_of_its_own_can_take_is_refused_naming_the_pool() {
    let mut harness = Harness::start(true).await;
    harness.fake.insert(&pool_object(NS, POOL));
    add(&harness, NS, &[("a", Some(POOL))]);
    harness.edit_endpoint(NS, "a", |object| {
        object["spec"]["receiver"] = json!({"replicas": 3});
        object["spec"]["consumer"] = json!({
            "databaseSecretRef": {"name": "other-db", "key": "url"},
            "scaling": {"maxReplicas": 4},
            "refetch": {"urlTemplate": "https://api.example.com/{objectId}",
                "authSecretRef": {"name": "token", "key": "t"}},
        });
    });
    harness.settle(NS, "a").await;
    let ready =
        harness.expect_condition(NS, "a", conditions::READY, "False", reasons::INVALID_SPEC);
    for field in [
        "spec.receiver: a pool member has no receiver of its own: set replicas, resources and image on WebhookPool shared",
        "spec.consumer.scaling: a pool member has no consumer of its own: set scaling on WebhookPool shared",
        "spec.consumer.refetch.authSecretRef",
        "spec.consumer.databaseSecretRef: must be absent or equal to WebhookPool shared's (db/url)",
    ] {
        assert!(
            ready.message.contains(field),
            "{field} in {}",
            ready.message
        );
    }
    harness.reconcile_pool(NS, POOL).await.expect("pool");
    let manifests = config_map(&harness, NS, "shared-pool-endpoints").expect("ConfigMap");
    assert_eq!(
        keys(manifests.data),
        Vec::<String>::new(),
        "an invalid member is not served"
    );
}

/// The shipped pool and its member, as the API server would hand them over.
fn shipped() -> (hookline_operator::validate::ValidPool, WebhookEndpoint) {
    let path = support::examples_dir().join("pool/webhookpool.yaml");
    let text = std::fs::read_to_string(path).expect("examples/pool/webhookpool.yaml");
    let mut documents = serde_yaml::Deserializer::from_str(&text);
    let mut pool: hookline_api::pool::WebhookPool =
        serde::Deserialize::deserialize(documents.next().expect("pool")).expect("a WebhookPool");
    pool.metadata.uid = Some("0d5f3a9e-1111-2222-3333-444455556666".into());
    let endpoint: WebhookEndpoint =
        serde::Deserialize::deserialize(documents.next().expect("member")).expect("an endpoint");
    let valid = hookline_operator::validate::validate_pool(&pool).expect("valid pool");
    (valid, endpoint)
}

fn members(names: &[&str]) -> Vec<hookline_operator::build::pool::Member> {
    let (_, endpoint) = shipped();
    names
        .iter()
        .map(|name| {
            let mut endpoint = endpoint.clone();
            endpoint.metadata.name = Some((*name).to_owned());
            let valid = hookline_operator::validate::validate(&endpoint).expect("valid member");
            hookline_operator::build::pool::Member {
                name: (*name).to_owned(),
                manifest: valid.manifest,
                signing_secret: format!("key-of-{name}").into_bytes(),
            }
        })
        .collect()
}

fn with_service_url() -> hookline_operator::config::OperatorConfig {
    hookline_operator::config::OperatorConfig {
        service_url: Some("http://hookline-operator.hookline.svc:8080".into()),
        ..Default::default()
    }
}

#[test]
fn pool_children_pass_strict_kubernetes_validation_and_kedas_own_types() {
    use hookline_operator::build::{Cluster, Workload, pool};
    let (valid, _) = shipped();
    let children = pool::build(
        &valid,
        &members(&["github", "stripe"]),
        &with_service_url(),
        Cluster { keda: true },
    );
    let pool::PoolChildren { workload, secret } = children;
    let Workload {
        config_map,
        receiver,
        service,
        disruption_budget,
        consumer,
        scaler,
    } = workload;
    let mut yaml = String::new();
    for document in [
        serde_yaml::to_string(&config_map),
        serde_yaml::to_string(&secret),
        serde_yaml::to_string(&receiver),
        serde_yaml::to_string(&service),
        serde_yaml::to_string(&disruption_budget),
        serde_yaml::to_string(&consumer),
        serde_yaml::to_string(&scaler.expect("a ScaledObject with KEDA and --service-url")),
    ] {
        yaml.push_str("---\n");
        yaml.push_str(&document.expect("YAML"));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("pool.yaml");
    std::fs::write(&file, yaml).expect("write");
    let file = file.to_string_lossy().into_owned();
    let (ok, report) = support::kubernetes_validate(&[&file]);
    assert!(ok, "{report}");
    for kind in [
        "configmap",
        "secret",
        "deployment",
        "service",
        "poddisruptionbudget",
    ] {
        assert!(
            report.contains(&format!("passed for resource {kind}/")),
            "no {kind} validated:\n{report}"
        );
    }
    let (ok, report) = support::validate_custom_resources(&[&file]);
    assert!(ok && report.contains("valid for KEDA 2.16"), "{report}");
}

#[test]
fn the_pool_pods_never_depend_on_the_members() {
    use hookline_operator::build::{Cluster, pool};
    let (valid, _) = shipped();
    let build = |names: &[&str]| {
        pool::build(
            &valid,
            &members(names),
            &with_service_url(),
            Cluster { keda: true },
        )
    };
    let (none, some, other) = (build(&[]), build(&["a", "b"]), build(&["b", "c", "d"]));
    for built in [&some, &other] {
        assert_eq!(built.workload.receiver, none.workload.receiver);
        assert_eq!(built.workload.consumer, none.workload.consumer);
        assert_eq!(built.workload.scaler, none.workload.scaler);
    }
    assert_ne!(some.workload.config_map, other.workload.config_map);
    assert_ne!(some.secret, other.secret);
    let pod = serde_json::to_value(&some.workload.receiver).expect("JSON");
    let container = &pod["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        args,
        [
            "--endpoint-dir=/etc/hookline/endpoints",
            "--secret-dir=/etc/hookline/secrets",
            "--replicas=2",
            "--listen=0.0.0.0:8080"
        ]
    );
    let env = &container["env"];
    assert!(
        env.to_string()
            .contains(r#"{"name":"HOOKLINE_ENDPOINT_DIR","value":"/etc/hookline/endpoints"}"#)
    );
    assert!(
        env.to_string()
            .contains(r#"{"name":"HOOKLINE_SECRET_DIR","value":"/etc/hookline/secrets"}"#)
    );
    let consumer = serde_json::to_value(&some.workload.consumer).expect("JSON");
    let consumer_env = consumer["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(
        consumer_env.contains("HOOKLINE_ENDPOINT_DIR")
            && consumer_env.contains("HOOKLINE_DATABASE_URL")
    );
    assert!(
        !consumer_env.contains("HOOKLINE_SECRET_DIR"),
        "the consumer reads no signing secret"
    );
}

#[test]
fn a_shared_stream_runs_both_pool_deployments_with_shared_stream_and_members_roll_nothing() {
    use hookline_operator::build::{Cluster, pool};
    let (mut valid, _) = shipped();
    let args = |deployment: &k8s_openapi::api::apps::v1::Deployment| -> Vec<String> {
        let value = serde_json::to_value(deployment).expect("JSON");
        value["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let dedicated = pool::build(&valid, &[], &with_service_url(), Cluster { keda: true });
    for deployment in [&dedicated.workload.receiver, &dedicated.workload.consumer] {
        assert!(
            !args(deployment)
                .iter()
                .any(|arg| arg.starts_with("--shared-stream")),
            "a stream per member: no flag"
        );
    }
    valid.pool.stream = Some(hookline_api::validated::StreamLimits::default());
    let build = |names: &[&str]| {
        pool::build(
            &valid,
            &members(names),
            &with_service_url(),
            Cluster { keda: true },
        )
    };
    let (none, some, other) = (build(&[]), build(&["a", "b"]), build(&["b", "c", "d"]));
    for deployment in [&none.workload.receiver, &none.workload.consumer] {
        assert!(
            args(deployment).contains(&"--shared-stream=shared".to_owned()),
            "{:?}",
            args(deployment)
        );
    }
    for built in [&some, &other] {
        assert_eq!(built.workload.receiver, none.workload.receiver);
        assert_eq!(built.workload.consumer, none.workload.consumer);
    }
}

#[test]
fn the_shared_stream_example_renders_pods_that_publish_to_the_pools_stream() {
    let file = support::examples_dir().join("pool/webhookpool-shared-stream.yaml");
    let text = hookline_operator::render::render_file(&file, None, &with_service_url(), true)
        .expect("renders");
    let objects = support::documents(&text);
    for name in ["busy-pool-receiver", "busy-pool-consumer"] {
        let deployment = objects
            .iter()
            .find(|object| object["kind"] == "Deployment" && object["metadata"]["name"] == name)
            .expect("Deployment");
        let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        assert!(args.contains("--shared-stream=busy"), "{name}: {args}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let rendered = dir.path().join("pool.yaml");
    std::fs::write(&rendered, &text).expect("write");
    let (ok, report) = support::kubernetes_validate(&[&rendered.to_string_lossy()]);
    assert!(ok, "{report}");
}

#[test]
fn the_pool_scaler_polls_the_operator_for_the_pools_summed_lag() {
    use hookline_operator::build::{Cluster, pool};
    let (valid, _) = shipped();
    let built = pool::build(&valid, &[], &with_service_url(), Cluster { keda: true });
    let scaler = built.workload.scaler.expect("scaler");
    assert_eq!(scaler.spec.min_replica_count, Some(1));
    assert_eq!(scaler.spec.max_replica_count, Some(5));
    let [trigger] = scaler.spec.triggers.as_slice() else {
        panic!("one trigger")
    };
    assert_eq!(trigger.type_, "metrics-api");
    assert_eq!(
        trigger.metadata["url"],
        "http://hookline-operator.hookline.svc:8080/pools/shop/shared/lag"
    );
    assert_eq!(trigger.metadata["valueLocation"], "lag");
    assert_eq!(trigger.metadata["targetValue"], "1000");
    assert_eq!(
        built.workload.consumer.spec.expect("spec").replicas,
        None,
        "left to KEDA"
    );
    let fixed = pool::build(&valid, &[], &Default::default(), Cluster { keda: true });
    assert!(
        fixed.workload.scaler.is_none(),
        "no --service-url: no lag to poll"
    );
    assert_eq!(
        fixed.workload.consumer.spec.expect("spec").replicas,
        Some(1)
    );
}

#[test]
fn members_beyond_the_budget_are_not_admitted_and_older_ones_stay() {
    use hookline_operator::build::pool::{MEMBER_BUDGET_BYTES, Member, admit};
    let big = |name: &str| Member {
        name: name.into(),
        manifest: "x".repeat(MEMBER_BUDGET_BYTES / 3),
        signing_secret: b"k".to_vec(),
    };
    let (served, full) = admit(vec![big("old"), big("older"), big("new"), big("small")]);
    let names = |all: &[Member]| all.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&served), ["old", "older"]);
    assert_eq!(names(&full), ["new", "small"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keda_the_pool_consumer_scales_on_the_lag_the_operator_serves() {
    let mut harness = Harness::start_with(true, |config| {
        config.service_url = Some("http://hookline-operator.hookline.svc:8080".into());
    })
    .await;
    harness.fake.insert(&pool_object(NS, POOL));
    add(&harness, NS, &[("a", Some(POOL)), ("b", Some(POOL))]);
    converge(&mut harness, NS, POOL, &["a", "b"]).await;
    let scaler = harness
        .fake
        .get(
            "keda.sh/v1alpha1",
            "ScaledObject",
            NS,
            "shared-pool-consumer",
        )
        .expect("the pool's ScaledObject");
    assert_eq!(
        scaler["spec"]["triggers"][0]["metadata"]["url"],
        "http://hookline-operator.hookline.svc:8080/pools/shop/shared/lag"
    );
    assert_eq!(harness.metrics.pool_lag("shop/shared"), Some((0, 2)));
    harness.metrics.set_pending("shop/a", Some(40));
    harness.metrics.set_pending("shop/b", Some(2));
    assert_eq!(harness.metrics.pool_lag("shop/shared"), Some((42, 2)));
    assert_eq!(harness.metrics.pool_lag("other/shared"), None);

    // KEDA's poll may reach a standby: it answers what the leader last wrote.
    harness
        .reconcile_pool(NS, POOL)
        .await
        .expect("status with the lag");
    let client = harness.fake.client();
    let written = harness
        .fake
        .get("hookline.io/v1alpha1", "WebhookPool", NS, POOL)
        .expect("the pool")["status"]
        .clone();
    let (status, body) = lag_answer(standby_lag(&client, NS, POOL).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"lag": written["pending"], "members": written["members"]})
    );
    assert_eq!(body["members"], 2);
    let (status, _) = lag_answer(standby_lag(&client, NS, "nope").await).await;
    assert_eq!(status, 404);
    harness.fake.insert(&pool_object(NS, "fresh"));
    let (status, _) = lag_answer(standby_lag(&client, NS, "fresh").await).await;
    assert_eq!(status, 503, "no lag written yet");
}

async fn lag_answer(response: axum::response::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .expect("body");
    (status, serde_json::from_slice(&body).expect("JSON"))
}

/// An object as JSON, to compare with one parsed from YAML.
fn json(object: &impl serde::Serialize) -> Value {
    serde_json::to_value(object).expect("JSON")
}

/// The YAML documents of `text`, comments dropped.
#[test]
fn render_of_a_pool_file_prints_the_pools_children_serving_the_members_in_it() {
    let file = support::examples_dir().join("pool/webhookpool.yaml");
    let text = support::operator_output(&[
        "render",
        "--service-url",
        "http://hookline-operator.hookline.svc:8080",
        "-f",
        file.to_str().expect("a UTF-8 path"),
    ]);
    let objects = support::documents(&text);
    let kinds: Vec<(&str, &str)> = objects
        .iter()
        .map(|object| {
            (
                object["kind"].as_str().expect("kind"),
                object["metadata"]["name"].as_str().expect("name"),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("ConfigMap", "shared-pool-endpoints"),
            ("Secret", "shared-pool-secrets"),
            ("Ingress", "github-receiver"),
            ("Service", "shared-pool-receiver"),
            ("Deployment", "shared-pool-receiver"),
            ("PodDisruptionBudget", "shared-pool-receiver"),
            ("Deployment", "shared-pool-consumer"),
            ("ScaledObject", "shared-pool-consumer"),
        ]
    );
    // The same builders as the pool's reconcile, with the member the file holds.
    let (mut valid, member) = shipped();
    valid.owner = None;
    let built = hookline_operator::build::pool::build(
        &valid,
        &[hookline_operator::build::pool::Member {
            name: "github".into(),
            manifest: hookline_operator::validate::validate(&member)
                .expect("valid member")
                .manifest,
            signing_secret: Vec::new(),
        }],
        &with_service_url(),
        hookline_operator::build::Cluster { keda: true },
    );
    assert_eq!(objects[0], json(&built.workload.config_map));
    assert_eq!(objects[4], json(&built.workload.receiver));
    assert_eq!(objects[6], json(&built.workload.consumer));
    assert_eq!(
        objects[7],
        json(built.workload.scaler.as_ref().expect("scaler"))
    );
    assert_eq!(
        objects[2]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
        "shared-pool-receiver"
    );
    assert!(
        objects[1].get("data").is_none(),
        "no signing secret is rendered: {}",
        objects[1]
    );
    assert!(
        text.contains("# data: one key per served member (github)"),
        "{text}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let rendered = dir.path().join("pool.yaml");
    std::fs::write(&rendered, &text).expect("write");
    let (ok, report) = support::kubernetes_validate(&[&rendered.to_string_lossy()]);
    assert!(ok, "{report}");
}

#[test]
fn render_of_a_pool_without_service_url_runs_fixed_consumers_and_says_why() {
    let file = support::examples_dir().join("pool/webhookpool.yaml");
    let text = hookline_operator::render::render_file(&file, None, &Default::default(), true)
        .expect("renders");
    let objects = support::documents(&text);
    assert!(
        objects
            .iter()
            .all(|object| object["kind"] != "ScaledObject"),
        "{text}"
    );
    let consumer = objects
        .iter()
        .find(|object| object["metadata"]["name"] == "shared-pool-consumer")
        .expect("consumer");
    assert_eq!(consumer["spec"]["replicas"], 1);
    assert!(
        text.ends_with(
            "# No ScaledObject: KEDA polls the pool's lag at <--service-url>/pools/shop/shared/lag; give --service-url (the chart sets it) to render it.\n"
        ),
        "{text}"
    );
    let no_keda = hookline_operator::render::render_file(&file, None, &Default::default(), false)
        .expect("renders");
    assert!(!no_keda.contains("No ScaledObject"), "{no_keda}");
}

#[test]
fn render_of_a_pool_file_refuses_what_is_not_its_member_naming_the_document() {
    let pool = "apiVersion: hookline.io/v1alpha1\nkind: WebhookPool\nmetadata: {name: shared, namespace: shop}\nspec: {consumer: {databaseSecretRef: {name: db, key: url}}}\n";
    let endpoint = |namespace: &str, extra: &str| {
        format!(
            "apiVersion: hookline.io/v1alpha1\nkind: WebhookEndpoint\nmetadata: {{name: a, namespace: {namespace}}}\nspec: {{provider: github, secretRef: {{name: s}}{extra}}}\n"
        )
    };
    let member = endpoint("shop", ", pool: shared");
    let dir = tempfile::tempdir().expect("temp dir");
    for (content, expected) in [
        (
            format!(
                "{pool}---\n{}",
                endpoint(
                    "shop",
                    ", consumer: {databaseSecretRef: {name: db, key: url}}"
                )
            ),
            "document 2: WebhookEndpoint shop/a does not set spec.pool: shared",
        ),
        (
            format!("{pool}---\n{}", endpoint("other", ", pool: shared")),
            "document 2: WebhookEndpoint other/a is not in the namespace of WebhookPool shop/shared",
        ),
        (
            format!("{pool}---\n{member}---\n{member}"),
            "document 3: WebhookEndpoint shop/a is in the file twice",
        ),
        (
            format!("{pool}---\n{pool}"),
            "holds 2 WebhookPools: render one pool per file",
        ),
        (
            format!(
                "{member}---\n{}",
                pool.replace("spec: {", "spec: {replicaz: 2, ")
            ),
            "document 2: spec.replicaz: unknown field",
        ),
        (
            format!(
                "{}---\n{member}",
                pool.replace("url}}", "url}, scaling: {minReplicas: 0}}")
            ),
            "document 1: invalid WebhookPool: spec.consumer.scaling.minReplicas",
        ),
        (
            format!(
                "{pool}---\n{}",
                endpoint("shop", ", pool: shared, receiver: {replicas: 3}")
            ),
            "document 2: invalid WebhookEndpoint: spec.receiver: a pool member has no receiver of its own",
        ),
        (
            format!("{pool}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n"),
            "document 2: apiVersion: expected \"hookline.io/v1alpha1\", found \"v1\"",
        ),
    ] {
        let file = dir.path().join("pool.yaml");
        std::fs::write(&file, &content).expect("write");
        let err = hookline_operator::render::render_file(&file, None, &Default::default(), true)
            .expect_err(expected);
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("{}: ", file.display())) && text.contains(expected),
            "{expected}\n{text}"
        );
    }
}

/// A receiver pod as the pool's probe sees it.
fn receiver_pod(name: &str, ready: bool, terminating: bool) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "pool-receiver"}},
        "status": {"podIP": "127.0.0.1", "conditions": [
            {"type": "Ready", "status": if ready { "True" } else { "False" }},
        ]},
    });
    if terminating {
        pod["metadata"]["deletionTimestamp"] = json!("2026-12-03T00:00:00Z");
    }
    pod
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ready_receivers_are_asked_which_manifest_of_each_member_they_serve() {
    use hookline_api::pool_dir::manifest_hash;
    use hookline_operator::probe::{Loaded, probe};
    use std::sync::{Arc, Mutex};

    // A receiver's `GET /endpoints`, in the shape the receiver answers.
    let manifest = Arc::new(Mutex::new("v1"));
    let served = manifest.clone();
    let app = axum::Router::new().route(
        "/endpoints",
        axum::routing::get(move || {
            let hash = manifest_hash(*served.lock().expect("lock"));
            async move {
                axum::Json(json!({"endpoints": [
                    {"endpoint": "shop/a", "manifestHash": hash, "host": null, "path": "/hooks"},
                ], "skipped": {"b.yaml": "shop/a is already served on that host and path"}}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let deployment = |port: u16| -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "shared-pool-receiver", "namespace": NS},
            "spec": {"selector": {"matchLabels": {"app": "pool-receiver"}}, "template": {"spec": {
                "containers": [{"name": "receiver", "ports": [{"name": "http", "containerPort": port}]}],
            }}},
        }))
        .expect("deployment")
    };

    let fake = support::fake_api::FakeApi::new(false);
    let client = fake.client();
    assert_eq!(
        probe(&client, NS, &deployment(port)).await,
        Loaded::NotProbed("no receiver pod is ready".into())
    );
    fake.insert(&receiver_pod("ready", true, false));
    fake.insert(&receiver_pod("starting", false, false));
    fake.insert(&receiver_pod("leaving", true, true));
    let loaded = probe(&client, NS, &deployment(port)).await;
    assert_eq!(loaded.serving("shop/a", "v2"), Some((0, 1)), "{loaded:?}");
    assert_eq!(loaded.serving("shop/a", "v1"), Some((1, 1)));
    assert_eq!(
        loaded.skipped("b.yaml"),
        Some("shop/a is already served on that host and path")
    );
    *manifest.lock().expect("lock") = "v2";
    let loaded = probe(&client, NS, &deployment(port)).await;
    assert_eq!(loaded.serving("shop/a", "v2"), Some((1, 1)));

    // Nothing answers (a NetworkPolicy, a wrong port): not probed, and why.
    let closed = hookline_e2e::free_port();
    match probe(&client, NS, &deployment(closed)).await {
        Loaded::NotProbed(why) => assert!(why.contains("/endpoints"), "{why}"),
        other => panic!("{other:?}"),
    }
}
