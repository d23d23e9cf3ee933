//! The chart's RBAC is exactly what the operator calls: an endpoint's whole
//! life is reconciled against the in-memory API (which records every call with
//! its Kubernetes verb), leader election runs against it too, and the watches
//! are added; the rules `helm template` renders must grant all of it and no more.

use crate::support;

use std::collections::BTreeSet;
use std::process::Command;

use hookline_operator::controller::WATCHED;
use hookline_operator::leader::LeaderElection;
use serde_json::json;
use support::fake_api::Call;
use support::{Harness, example, secret};

type Permission = (String, String, String);

/// What a call needs: server-side apply is authorized as `patch`, and as
/// `create` when the object does not exist yet (so both are needed).
fn permissions(call: &Call) -> Vec<Permission> {
    let permission = |verb: &str| (call.group.clone(), call.resource.clone(), verb.to_owned());
    let apply = call.content_type.as_deref() == Some("application/apply-patch+yaml");
    if call.verb == "patch" && apply && !call.resource.contains('/') {
        vec![permission("patch"), permission("create")]
    } else {
        vec![permission(&call.verb)]
    }
}

/// Every permission one endpoint's life needs.
async fn needed() -> BTreeSet<Permission> {
    let mut harness = Harness::start(true).await;
    // Signing secret generated, then a stripe endpoint whose Secret comes later.
    harness.add_endpoint_with_secrets(&example("github.yaml"));
    harness.settle("default", "github").await;
    let stripe = example("stripe.yaml");
    harness.fake.insert(&stripe);
    harness.fake.insert(&secret(
        "payments",
        "hookline-postgres",
        "url",
        "postgres://db/x",
    ));
    harness.settle("payments", "stripe").await;
    harness
        .fake
        .insert(&secret("payments", "stripe-webhook", "secret", "whsec_x"));
    harness.fake.make_deployments_available();
    harness
        .reconcile("payments", "stripe")
        .await
        .expect("ready");
    // A spec change without the Ingress (pruned), children of an older
    // naming (pruned), drift, then deletion.
    harness.edit_endpoint("payments", "stripe", |object| {
        object["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("ingress");
        object["spec"]["receiver"] = json!({"replicas": 3});
    });
    harness
        .reconcile("payments", "stripe")
        .await
        .expect("changed");
    harness.add_stale_children("payments", "stripe", "stripe-v0");
    harness
        .reconcile("payments", "stripe")
        .await
        .expect("pruned");
    harness
        .fake
        .remove("v1", "Service", "payments", "stripe-receiver");
    harness
        .reconcile("payments", "stripe")
        .await
        .expect("drift");
    harness.mark_deleting("payments", "stripe");
    harness
        .reconcile("payments", "stripe")
        .await
        .expect("finalizer");

    // A pool with a member: its children, its Secret, its status.
    harness.fake.insert(&serde_json::json!({
        "apiVersion": "hookline.io/v1alpha1", "kind": "WebhookPool",
        "metadata": {"name": "shared", "namespace": "shop"},
        "spec": {"consumer": {"databaseSecretRef": {"name": "db", "key": "url"}}},
    }));
    harness
        .fake
        .insert(&secret("shop", "db", "url", "postgres://db/x"));
    harness
        .fake
        .insert(&secret("shop", "member-signing", "secret", "whsec_x"));
    let member: hookline_api::spec::WebhookEndpoint = serde_json::from_value(json!({
        "apiVersion": "hookline.io/v1alpha1", "kind": "WebhookEndpoint",
        "metadata": {"name": "member", "namespace": "shop"},
        "spec": {"provider": "github", "secretRef": {"name": "member-signing"}, "pool": "shared"},
    }))
    .expect("member");
    harness.fake.insert(&member);
    harness.settle("shop", "member").await;
    harness
        .reconcile_pool("shop", "shared")
        .await
        .expect("pool");
    harness.fake.make_deployments_available();
    harness
        .reconcile_pool("shop", "shared")
        .await
        .expect("pool ready");

    // A standby answers KEDA's lag poll from the pool's status.
    let lag = hookline_operator::http::standby_lag(&harness.fake.client(), "shop", "shared").await;
    assert_eq!(lag.status(), 200);

    let election = LeaderElection::new(harness.fake.client(), "hookline", "hookline-operator", "a");
    assert!(election.try_acquire_or_renew().await.expect("acquire"));
    assert!(election.try_acquire_or_renew().await.expect("renew"));
    election.release().await;

    let mut needed: BTreeSet<Permission> =
        harness.fake.calls().iter().flat_map(permissions).collect();
    for (group, resource) in WATCHED {
        for verb in ["list", "watch"] {
            needed.insert((group.to_owned(), resource.to_owned(), verb.to_owned()));
        }
    }
    needed
}

/// Every object the chart renders with `args`.
fn rendered(args: &[&str]) -> Vec<serde_yaml::Value> {
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/hookline");
    let output = Command::new("helm")
        .args(["template", "hookline", chart, "--namespace", "hookline"])
        .args(args)
        .output()
        .unwrap_or_else(|err| {
            panic!("helm not runnable ({err}): python3 .ci/install-helm.py /usr/local/bin/helm")
        });
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("utf-8");
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| serde::Deserialize::deserialize(document).expect("YAML"))
        .collect()
}

/// The rules of every Role and ClusterRole the chart renders with `args`.
fn granted(args: &[&str]) -> (BTreeSet<Permission>, Vec<String>) {
    let mut granted = BTreeSet::new();
    let mut kinds = Vec::new();
    for value in rendered(args) {
        let kind = value["kind"].as_str().unwrap_or_default();
        if kind != "Role" && kind != "ClusterRole" {
            continue;
        }
        kinds.push(format!(
            "{kind}/{}",
            value["metadata"]["namespace"].as_str().unwrap_or("-")
        ));
        for rule in value["rules"].as_sequence().into_iter().flatten() {
            let list = |key: &str| -> Vec<String> {
                rule[key]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            };
            for group in list("apiGroups") {
                for resource in list("resources") {
                    for verb in list("verbs") {
                        granted.insert((group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
    }
    (granted, kinds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_grants_exactly_what_the_operator_calls() {
    let needed = needed().await;
    let (granted, kinds) = granted(&[]);
    assert_eq!(
        kinds,
        ["ClusterRole/-", "Role/hookline"],
        "cluster-wide rules and a Lease role"
    );
    let missing: Vec<_> = needed.difference(&granted).collect();
    assert!(missing.is_empty(), "the chart does not grant: {missing:#?}");
    let unused: BTreeSet<_> = granted.difference(&needed).cloned().collect();
    // Not a call: admission requires it before a child's owner reference may
    // block the owner's deletion (OwnerReferencesPermissionEnforcement).
    let admission_only: BTreeSet<Permission> = [
        (
            "hookline.io".into(),
            "webhookendpoints/finalizers".into(),
            "update".into(),
        ),
        (
            "hookline.io".into(),
            "webhookpools/finalizers".into(),
            "update".into(),
        ),
    ]
    .into();
    assert_eq!(
        unused, admission_only,
        "the chart grants more than the operator uses"
    );
}

#[test]
fn a_watched_namespace_gets_a_role_instead_of_a_cluster_role() {
    let (cluster_wide, _) = granted(&[]);
    let (namespaced, kinds) = granted(&["--set", "watchNamespace=payments"]);
    assert_eq!(kinds, ["Role/payments", "Role/hookline"]);
    assert_eq!(cluster_wide, namespaced, "the same rules, in one namespace");
}

/// With the chart's NetworkPolicy the operator still reaches what it
/// probes: the pools' receiver pods (`GET /endpoints`), in any namespace.
#[test]
fn the_network_policy_lets_the_operator_ask_the_pool_receivers_what_they_serve() {
    use hookline_operator::build::{pool::RECEIVER_COMPONENT, receiver::PORT};
    let objects = rendered(&["--set", "networkPolicy.enabled=true"]);
    let policy = objects
        .iter()
        .find(|object| object["kind"] == "NetworkPolicy")
        .expect("a NetworkPolicy");
    let reaches = policy["spec"]["egress"]
        .as_sequence()
        .expect("egress rules")
        .iter()
        .any(|rule| {
            let to_receivers = rule["to"].as_sequence().into_iter().flatten().any(|peer| {
                let labels = &peer["podSelector"]["matchLabels"];
                peer["namespaceSelector"]
                    .as_mapping()
                    .is_some_and(|any| any.is_empty())
                    && labels["app.kubernetes.io/component"].as_str() == Some(RECEIVER_COMPONENT)
                    && labels["app.kubernetes.io/managed-by"].as_str()
                        == Some(hookline_api::naming::FIELD_MANAGER)
            });
            let on_port = rule["ports"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|port| port["port"].as_u64() == Some(u64::from(PORT)));
            to_receivers && on_port
        });
    assert!(
        reaches,
        "no egress to the pool receivers on {PORT}: {policy:#?}"
    );
}
