//! The builders as pure functions: what every example renders to, checked
//! against the Kubernetes 1.32 schemas and KEDA's own types, and one test per
//! property that matters.

use crate::support;

use std::collections::BTreeMap;
use std::process::Command;

use hookline_api::spec::WebhookEndpoint;
use hookline_operator::build::{self, Children, Cluster, ScaledObject, Workload};
use hookline_operator::config::{NatsSettings, OperatorConfig};
use hookline_operator::render;
use hookline_operator::validate::{ValidEndpoint, validate};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodSpec;
use serde_json::Value;
use support::{example, examples};

const KEDA: Cluster = Cluster { keda: true };
const NO_KEDA: Cluster = Cluster { keda: false };

/// `resource` as the API server would hand it to reconcile (with a UID).
fn applied(mut resource: WebhookEndpoint) -> ValidEndpoint {
    resource.metadata.uid = Some("0d5f3a9e-1111-2222-3333-444455556666".into());
    validate(&resource).expect("example is valid")
}

fn children(file: &str, cluster: Cluster) -> (ValidEndpoint, Children) {
    let valid = applied(example(file));
    let children = build::build(&valid, &OperatorConfig::default(), cluster);
    (valid, children)
}

fn pod_spec(deployment: &Deployment) -> &PodSpec {
    deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .expect("pod spec")
}

fn json(object: &impl serde::Serialize) -> Value {
    serde_json::to_value(object).expect("serialisable")
}

/// Every example, with and without KEDA, rendered into files.
fn rendered_examples(dir: &std::path::Path) -> Vec<String> {
    let mut files = Vec::new();
    for (file, resource) in examples() {
        for cluster in [KEDA, NO_KEDA] {
            let yaml = render::to_yaml(&build::build(
                &applied(resource.clone()),
                &OperatorConfig::default(),
                cluster,
            ))
            .expect("renders");
            let path = dir.join(format!(
                "{}-keda-{}.yaml",
                file.trim_end_matches(".yaml"),
                cluster.keda
            ));
            std::fs::write(&path, yaml).expect("write");
            files.push(path.to_string_lossy().into_owned());
        }
    }
    files
}

#[test]
fn every_example_renders_objects_that_pass_strict_kubernetes_validation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = rendered_examples(dir.path());
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let (ok, report) = support::kubernetes_validate(&files);
    assert!(
        ok,
        "kubernetes-validate rejected a rendered object:\n{report}"
    );
    for kind in [
        "configmap",
        "service",
        "ingress",
        "deployment",
        "poddisruptionbudget",
    ] {
        assert!(
            report.contains(&format!("passed for resource {kind}/")),
            "no {kind} validated:\n{report}"
        );
    }
    let failures: Vec<&str> = report
        .lines()
        .filter(|line| {
            !line.contains("passed for resource")
                && !line.contains("kind ScaledObject with api version keda.sh/v1alpha1")
        })
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert!(
        failures.is_empty(),
        "unexpected validator output: {failures:#?}"
    );
}

#[test]
fn every_scaled_object_validates_against_kedas_own_types() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = rendered_examples(dir.path());
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let (ok, report) = support::validate_custom_resources(&files);
    assert!(ok, "KEDA's model rejected a ScaledObject:\n{report}");
    assert_eq!(
        report.matches("valid for KEDA 2.16").count(),
        examples().len(),
        "{report}"
    );
}

#[test]
fn every_child_is_owned_by_the_endpoint_and_labelled() {
    let (valid, children) = children("stripe.yaml", KEDA);
    let owner = valid.owner.clone().expect("owner reference");
    assert_eq!(owner.kind, "WebhookEndpoint");
    assert_eq!(owner.controller, Some(true));
    let Children { ingress, workload } = children;
    let Workload {
        config_map,
        receiver,
        service,
        disruption_budget,
        consumer,
        scaler,
    } = workload.expect("own pods");
    let all = [
        json(&config_map),
        json(&receiver),
        json(&service),
        json(&ingress.expect("ingress")),
        json(&disruption_budget),
        json(&consumer),
        json(&scaler.expect("scaler")),
    ];
    for object in all {
        let metadata = &object["metadata"];
        assert_eq!(
            metadata["ownerReferences"],
            json(&vec![owner.clone()]),
            "{}",
            object["kind"]
        );
        assert_eq!(metadata["namespace"], "payments");
        for label in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
            "app.kubernetes.io/managed-by",
            "hookline.io/endpoint",
        ] {
            assert!(
                metadata["labels"][label].is_string(),
                "{} lacks {label}",
                object["kind"]
            );
        }
    }
}

#[test]
fn selectors_match_their_pods_and_never_the_other_component() {
    let (_, children) = children("stripe.yaml", KEDA);
    let labels_of = |deployment: &Deployment| {
        deployment
            .spec
            .as_ref()
            .and_then(|spec| spec.template.metadata.as_ref())
            .and_then(|meta| meta.labels.clone())
            .expect("pod labels")
    };
    let selector_of = |deployment: &Deployment| {
        deployment
            .spec
            .as_ref()
            .and_then(|spec| spec.selector.match_labels.clone())
            .expect("selector")
    };
    let matches = |selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>| {
        selector
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
    };
    let receiver_pods = labels_of(&children.workload.as_ref().expect("own pods").receiver);
    let consumer_pods = labels_of(&children.workload.as_ref().expect("own pods").consumer);
    assert!(matches(
        &selector_of(&children.workload.as_ref().expect("own pods").receiver),
        &receiver_pods
    ));
    assert!(matches(
        &selector_of(&children.workload.as_ref().expect("own pods").consumer),
        &consumer_pods
    ));
    assert!(!matches(
        &selector_of(&children.workload.as_ref().expect("own pods").receiver),
        &consumer_pods
    ));
    assert!(!matches(
        &selector_of(&children.workload.as_ref().expect("own pods").consumer),
        &receiver_pods
    ));
    let service = children
        .workload
        .clone()
        .expect("own pods")
        .service
        .spec
        .and_then(|spec| spec.selector)
        .expect("service selector");
    assert!(matches(&service, &receiver_pods) && !matches(&service, &consumer_pods));
    let budget = children
        .workload
        .clone()
        .expect("own pods")
        .disruption_budget
        .spec
        .and_then(|spec| spec.selector)
        .and_then(|s| s.match_labels)
        .expect("budget selector");
    assert!(matches(&budget, &receiver_pods));
}

#[test]
fn pods_run_locked_down_with_probes_resources_and_scrape_annotations() {
    let (_, children) = children("stripe.yaml", KEDA);
    for deployment in [
        &children.workload.as_ref().expect("own pods").receiver,
        &children.workload.as_ref().expect("own pods").consumer,
    ] {
        let pod = pod_spec(deployment);
        let security = pod.security_context.as_ref().expect("pod security context");
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(
            security.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault")
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
        let container = &pod.containers[0];
        let context = container
            .security_context
            .as_ref()
            .expect("container security context");
        assert_eq!(context.read_only_root_filesystem, Some(true));
        assert_eq!(context.allow_privilege_escalation, Some(false));
        assert_eq!(
            context.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_owned()])
        );
        let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
            probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|get| get.path.clone())
        };
        assert_eq!(
            probe_path(&container.liveness_probe).as_deref(),
            Some("/healthz")
        );
        assert_eq!(
            probe_path(&container.readiness_probe).as_deref(),
            Some("/readyz")
        );
        let resources = container.resources.as_ref().expect("resources");
        assert!(
            resources
                .requests
                .as_ref()
                .is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory"))
        );
        assert!(
            resources
                .limits
                .as_ref()
                .is_some_and(|l| l.contains_key("memory"))
        );
        let annotations = deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.clone())
            .expect("annotations");
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        let port = container.ports.as_ref().expect("ports")[0].container_port;
        assert_eq!(annotations["prometheus.io/port"], port.to_string());
    }
}

#[test]
fn secrets_are_read_only_files_and_the_database_url_an_env_reference() {
    let config = OperatorConfig {
        nats: NatsSettings {
            credentials_secret: Some("nats-creds".into()),
            tls_ca_secret: Some("nats-ca".into()),
            user_password_secret: Some("nats-login".into()),
            ..NatsSettings::default()
        },
        image_pull_secrets: vec!["registry".into()],
        ..OperatorConfig::default()
    };
    let valid = applied(example("stripe.yaml"));
    let children = build::build(&valid, &config, KEDA);
    for deployment in [
        &children.workload.as_ref().expect("own pods").receiver,
        &children.workload.as_ref().expect("own pods").consumer,
    ] {
        let pod = pod_spec(deployment);
        let container = &pod.containers[0];
        let pull = pod.image_pull_secrets.as_ref().expect("pull secrets");
        assert_eq!(pull[0].name, "registry");
        let mounts = container.volume_mounts.as_ref().expect("mounts");
        assert!(
            mounts.iter().all(|mount| mount.read_only == Some(true)),
            "every mount is read-only"
        );
        for volume in pod
            .volumes
            .iter()
            .flatten()
            .filter_map(|volume| volume.secret.as_ref())
        {
            assert_eq!(volume.default_mode, Some(0o440), "{volume:?}");
        }
        let env = container.env.clone().expect("env");
        let value = |name: &str| {
            env.iter()
                .find(|var| var.name == name)
                .and_then(|var| var.value.clone())
        };
        assert_eq!(
            value("HOOKLINE_NATS_CREDS").as_deref(),
            Some("/etc/hookline/nats-creds/nats.creds")
        );
        assert_eq!(
            value("HOOKLINE_NATS_TLS_CA").as_deref(),
            Some("/etc/hookline/nats-tls-ca/ca.crt")
        );
        assert_eq!(
            value("HOOKLINE_ENDPOINT").as_deref(),
            Some("/etc/hookline/endpoint/endpoint.yaml")
        );
        assert!(value("HOOKLINE_NATS_URL").is_some());
        let from_secret = |name: &str| {
            env.iter()
                .find(|var| var.name == name)
                .and_then(|var| var.value_from.clone())
                .and_then(|from| from.secret_key_ref)
        };
        assert_eq!(
            from_secret("HOOKLINE_NATS_USER").map(|r| r.name),
            Some("nats-login".into())
        );
        assert!(from_secret("HOOKLINE_NATS_PASSWORD").is_some());
    }
    let receiver_args = pod_spec(&children.workload.as_ref().expect("own pods").receiver)
        .containers[0]
        .args
        .clone()
        .expect("args");
    assert!(
        receiver_args.contains(&"--secret-file=/etc/hookline/signing-secret/secret".to_owned()),
        "{receiver_args:?}"
    );
    let consumer_env = pod_spec(&children.workload.as_ref().expect("own pods").consumer).containers
        [0]
    .env
    .clone()
    .expect("env");
    let database = consumer_env
        .iter()
        .find(|var| var.name == "HOOKLINE_DATABASE_URL")
        .expect("database url");
    assert_eq!(database.value, None, "never a literal value");
    let reference = database
        .value_from
        .as_ref()
        .and_then(|from| from.secret_key_ref.as_ref())
        .expect("secret ref");
    assert_eq!(
        (reference.name.as_str(), reference.key.as_str()),
        ("hookline-postgres", "url")
    );
}

#[test]
fn a_rate_limited_receiver_is_told_how_many_receivers_share_the_limit() {
    let args = |file| {
        let (_, children) = children(file, KEDA);
        pod_spec(&children.workload.as_ref().expect("own pods").receiver).containers[0]
            .args
            .clone()
            .expect("args")
    };
    // stripe-billing.yaml sets a rate limit and keeps the default 2 receivers.
    assert!(
        args("stripe-billing.yaml").contains(&"--replicas=2".to_owned()),
        "{:?}",
        args("stripe-billing.yaml")
    );
    // Without a limit the flag is absent, so no other endpoint's pods roll.
    assert!(
        !args("github.yaml")
            .iter()
            .any(|arg| arg.starts_with("--replicas")),
        "{:?}",
        args("github.yaml")
    );
}

#[test]
fn every_trigger_metadata_value_is_a_string_from_the_spec() {
    let (valid, children) = children("stripe.yaml", KEDA);
    let scaler: ScaledObject = children
        .workload
        .as_ref()
        .expect("own pods")
        .scaler
        .clone()
        .expect("scaler");
    let trigger = &json(&scaler)["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "nats-jetstream");
    for (key, value) in trigger["metadata"].as_object().expect("metadata") {
        assert!(value.is_string(), "{key} is not a string");
    }
    assert_eq!(
        trigger["metadata"]["stream"],
        valid.endpoint.stream.name.as_str()
    );
    assert_eq!(trigger["metadata"]["consumer"], "hookline-consumer");
    assert_eq!(trigger["metadata"]["lagThreshold"], "1000");
    assert_eq!(
        trigger["metadata"]["natsServerMonitoringEndpoint"],
        "nats-headless.nats.svc:8222"
    );
    assert_eq!(scaler.spec.scale_target_ref.name, "stripe-consumer");
    assert_eq!(
        (scaler.spec.min_replica_count, scaler.spec.max_replica_count),
        (Some(1), Some(10))
    );
}

#[test]
fn the_config_hash_changes_with_the_spec_and_only_then() {
    let hash = |resource: WebhookEndpoint| {
        let children = build::build(&applied(resource), &OperatorConfig::default(), KEDA);
        let annotations = |deployment: &Deployment| {
            deployment
                .spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.annotations.clone())
                .expect("annotations")["hookline.io/config-hash"]
                .clone()
        };
        assert_eq!(
            annotations(&children.workload.as_ref().expect("own pods").receiver),
            annotations(&children.workload.as_ref().expect("own pods").consumer)
        );
        annotations(&children.workload.as_ref().expect("own pods").receiver)
    };
    let base = example("stripe.yaml");
    assert_eq!(
        hash(base.clone()),
        hash(base.clone()),
        "same spec, same hash"
    );
    let mut relabelled = base.clone();
    relabelled.metadata.labels = Some(BTreeMap::from([("team".to_owned(), "payments".to_owned())]));
    assert_eq!(
        hash(base.clone()),
        hash(relabelled),
        "metadata outside the spec rolls nothing"
    );
    let mut changed = base.clone();
    changed.spec.trusted_proxy_hops = Some(2);
    assert_ne!(hash(base), hash(changed), "a spec change rolls the pods");
}

#[test]
fn the_pods_read_exactly_the_endpoint_the_operator_validated() {
    for (file, resource) in examples() {
        let valid = applied(resource);
        let config_map = build::build(&valid, &OperatorConfig::default(), KEDA)
            .workload
            .expect("own pods")
            .config_map;
        let manifest = &config_map.data.expect("data")["endpoint.yaml"];
        let parsed =
            hookline_api::parse_manifest(manifest).unwrap_or_else(|err| panic!("{file}: {err}"));
        let resolved =
            hookline_api::validate(&parsed).unwrap_or_else(|err| panic!("{file}: {err}"));
        assert_eq!(resolved, valid.endpoint, "{file}");
    }
}

#[test]
fn without_keda_there_is_no_scaler_and_the_consumer_has_fixed_replicas() {
    let (_, with) = children("stripe.yaml", KEDA);
    let (_, without) = children("stripe.yaml", NO_KEDA);
    assert!(
        with.workload.as_ref().expect("own pods").scaler.is_some()
            && without
                .workload
                .as_ref()
                .expect("own pods")
                .scaler
                .is_none()
    );
    assert_eq!(
        with.workload
            .as_ref()
            .expect("own pods")
            .consumer
            .spec
            .as_ref()
            .and_then(|s| s.replicas),
        None,
        "KEDA owns the replicas"
    );
    assert_eq!(
        without
            .workload
            .as_ref()
            .expect("own pods")
            .consumer
            .spec
            .as_ref()
            .and_then(|s| s.replicas),
        Some(1)
    );
}

#[test]
fn the_ingress_routes_exactly_the_path_with_tls_and_only_when_asked() {
    let (_, children) = children("stripe.yaml", KEDA);
    let ingress = json(&children.ingress.expect("ingress"));
    let rule = &ingress["spec"]["rules"][0];
    assert_eq!(rule["host"], "hooks.example.com");
    assert_eq!(rule["http"]["paths"][0]["path"], "/stripe");
    assert_eq!(rule["http"]["paths"][0]["pathType"], "Exact");
    assert_eq!(
        rule["http"]["paths"][0]["backend"]["service"]["name"],
        "stripe-receiver"
    );
    assert_eq!(
        ingress["spec"]["tls"][0]["secretName"],
        "hooks-example-com-tls"
    );
    let mut without = example("stripe.yaml");
    without.spec.ingress = None;
    let children = build::build(&applied(without), &OperatorConfig::default(), KEDA);
    assert!(children.ingress.is_none());
}

#[test]
fn names_stay_valid_for_the_longest_resource_names() {
    let mut resource = example("stripe.yaml");
    resource.metadata.name = Some(format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61)
    ));
    let children = build::build(&applied(resource), &OperatorConfig::default(), KEDA);
    let names = [
        children
            .workload
            .as_ref()
            .expect("own pods")
            .config_map
            .metadata
            .name
            .clone(),
        children
            .workload
            .as_ref()
            .expect("own pods")
            .receiver
            .metadata
            .name
            .clone(),
        children
            .workload
            .as_ref()
            .expect("own pods")
            .consumer
            .metadata
            .name
            .clone(),
    ];
    for name in names.into_iter().flatten() {
        assert!(
            name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{name}"
        );
    }
}

#[test]
fn render_crd_and_bad_flags_behave_like_the_other_binaries() {
    let binary = hookline_e2e::workspace_bin("hookline-operator");
    let stripe = support::examples_dir().join("stripe.yaml");
    let text = support::operator_output(&["render", "-f", stripe.to_str().expect("a UTF-8 path")]);
    let kinds: Vec<String> = support::documents(&text)
        .iter()
        .map(|document| document["kind"].as_str().expect("kind").to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "Ingress",
            "Service",
            "Deployment",
            "PodDisruptionBudget",
            "Deployment",
            "ScaledObject"
        ]
    );

    let crd = Command::new(&binary).arg("crd").output().expect("crd runs");
    assert_eq!(
        String::from_utf8_lossy(&crd.stdout),
        hookline_api::crd_yaml().expect("CRD")
    );

    let bad_flag = Command::new(&binary)
        .arg("--no-such-flag")
        .output()
        .expect("runs");
    assert_eq!(bad_flag.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad_flag.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("hookline-operator: ") && stderr.contains("--no-such-flag"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let invalid = dir.path().join("bad.yaml");
    std::fs::write(&invalid, "apiVersion: hookline.io/v1alpha1\nkind: WebhookEndpoint\nmetadata: {name: x}\nspec: {provider: stripe, secretRef: {name: s}, allowedSourceRanges: [nope]}\n").expect("write");
    let rejected = Command::new(&binary)
        .args(["render", "-f"])
        .arg(&invalid)
        .output()
        .expect("runs");
    assert_eq!(rejected.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("bad.yaml")
            && stderr.contains("spec.allowedSourceRanges[0]")
            && stderr.contains("spec.consumer.databaseSecretRef"),
        "{stderr}"
    );
}
