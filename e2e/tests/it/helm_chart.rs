//! The Helm chart lints, renders valid objects with its defaults and with every
//! option on (Kubernetes' own kinds against the 1.32 schemas, the monitoring
//! kinds against prometheus-operator's types), and its values schema refuses
//! bad settings. Needs `helm`, `kubernetes-validate` and the cloudcoil models
//! (installed by `scripts/test.sh`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn chart_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/hookline"))
}

fn run(program: &str, args: &[&str], hint: &str) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("{program} not runnable ({err}): {hint}"))
}

fn helm(args: &[&str]) -> Output {
    run(
        "helm",
        args,
        "install it with `python3 .ci/install-helm.py /usr/local/bin/helm`",
    )
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Every option on, so every template renders.
const EVERYTHING: &[&str] = &[
    "--set",
    "metrics.serviceMonitor.enabled=true,metrics.podMonitor.enabled=true",
    "--set",
    "metrics.prometheusRule.enabled=true,metrics.dashboard.enabled=true",
    "--set",
    "networkPolicy.enabled=true,replicas=2",
    "--set",
    "nats.credentialsSecret=nats-creds,nats.tlsCaSecret=nats-ca,nats.userPasswordSecret=nats-login",
];

/// `helm template` with `extra` values, written to a file in `dir`.
fn render(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        "hookline",
        chart.to_str().expect("utf-8 path"),
        "--namespace",
        "hookline",
        "--include-crds",
    ];
    args.extend_from_slice(extra);
    let rendered = helm(&args);
    assert!(
        rendered.status.success(),
        "helm template failed:\n{}",
        text(&rendered)
    );
    let file = dir.join(name);
    std::fs::write(&file, &rendered.stdout).expect("write rendered chart");
    file
}

#[test]
fn chart_lints_cleanly() {
    let chart = chart_dir();
    for extra in [&[][..], EVERYTHING] {
        let mut args = vec!["lint", "--strict", chart.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        let output = helm(&args);
        assert!(
            output.status.success(),
            "helm lint failed:\n{}",
            text(&output)
        );
    }
}

#[test]
fn rendered_chart_passes_strict_kubernetes_validation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let defaults = render(dir.path(), "defaults.yaml", &[]);
    let everything = render(dir.path(), "everything.yaml", EVERYTHING);
    let validated = run(
        "kubernetes-validate",
        &[
            "--strict",
            "--kubernetes-version",
            "1.32.0",
            defaults.to_str().expect("utf-8 path"),
            everything.to_str().expect("utf-8 path"),
        ],
        "install it with `pip install kubernetes-validate`",
    );
    let report = text(&validated);
    assert!(
        validated.status.success(),
        "kubernetes-validate rejected the chart:\n{report}"
    );
    for kind in [
        "customresourcedefinition",
        "deployment",
        "service",
        "clusterrole",
        "role",
        "serviceaccount",
        "networkpolicy",
        "configmap",
    ] {
        assert!(
            report.contains(&format!("passed for resource {kind}/")),
            "no {kind} rendered:\n{report}"
        );
    }
}

#[test]
fn monitoring_objects_validate_against_prometheus_operators_types() {
    let dir = tempfile::tempdir().expect("temp dir");
    let everything = render(dir.path(), "everything.yaml", EVERYTHING);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schemas/validate_custom_resources.py"
    );
    let output = run(
        "python3",
        &[script, everything.to_str().expect("utf-8 path")],
        "python3 with `pip install cloudcoil-models-prometheus-operator cloudcoil-models-keda pyyaml`",
    );
    let report = text(&output);
    assert!(output.status.success(), "{report}");
    for kind in ["ServiceMonitor", "PodMonitor", "PrometheusRule"] {
        assert!(report.contains(&format!("{kind} ")), "no {kind}:\n{report}");
    }
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_with_a_query_per_panel() {
    let text = std::fs::read_to_string(chart_dir().join("dashboards/hookline.json"))
        .expect("dashboard file");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    for panel in panels {
        assert!(
            panel["targets"][0]["expr"]
                .as_str()
                .is_some_and(|expr| expr.contains("hookline_")),
            "{panel}"
        );
    }
}

#[test]
fn values_schema_refuses_bad_and_unknown_settings() {
    let chart = chart_dir();
    for (setting, complaint) in [
        ("nats.url=localhost:4222", "nats"),
        (
            "nats.monitoringEndpoint=http://nats:8222",
            "monitoringEndpoint",
        ),
        ("replicass=2", "replicass"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("resyncInterval=soon", "resyncInterval"),
        ("networkPolicy.kedaNamespace=KEDA_System", "kedaNamespace"),
        (
            "metrics.prometheusRule.deliverySlowSeconds=0",
            "deliverySlowSeconds",
        ),
        (
            "metrics.prometheusRule.deliverySlowSeconds=600",
            "deliverySlowSeconds",
        ),
    ] {
        let output = helm(&[
            "template",
            "hookline",
            chart.to_str().expect("utf-8 path"),
            "--set",
            setting,
        ]);
        assert!(!output.status.success(), "{setting} was accepted");
        assert!(
            text(&output).contains(complaint),
            "{setting}: {}",
            text(&output)
        );
    }
}

/// A Secret volume's file mode as the API server reads the manifest: YAML 1.1,
/// where `0440` is octal.
fn file_mode(value: &serde_yaml::Value) -> Option<u32> {
    match value {
        serde_yaml::Value::Number(number) => number.as_u64().and_then(|n| u32::try_from(n).ok()),
        serde_yaml::Value::String(text) => {
            let digits = text.strip_prefix("0o").unwrap_or(text);
            u32::from_str_radix(digits, 8).ok()
        }
        _ => None,
    }
}

/// The ids a container's processes run with, and the fsGroup: the pod's
/// settings unless the container overrides them.
struct Identity {
    user: Option<u64>,
    groups: Vec<u64>,
    fs_group: Option<u64>,
}

impl Identity {
    fn of(pod: &serde_yaml::Value, container: &serde_yaml::Value) -> Identity {
        let setting = |key: &str| {
            container["securityContext"][key]
                .as_u64()
                .or_else(|| pod["securityContext"][key].as_u64())
        };
        let fs_group = pod["securityContext"]["fsGroup"].as_u64();
        let mut groups: Vec<u64> = pod["securityContext"]["supplementalGroups"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(serde_yaml::Value::as_u64)
            .collect();
        groups.extend(setting("runAsGroup").or(setting("runAsUser")));
        groups.extend(fs_group);
        Identity {
            user: setting("runAsUser"),
            groups,
            fs_group,
        }
    }

    /// Kubernetes writes Secret volume files owned by root, with group fsGroup
    /// when the pod sets one (else root's group 0).
    fn can_read(&self, mode: u32) -> bool {
        let file_group = self.fs_group.unwrap_or(0);
        mode & 0o004 != 0
            || (self.user == Some(0) && mode & 0o400 != 0)
            || (self.groups.contains(&file_group) && mode & 0o040 != 0)
    }
}

/// `(deployment/container:path, mode)` for every file of a Secret volume a
/// container of the rendered Deployments mounts, and whether it can read it.
fn secret_files(manifests: &str) -> Vec<(String, u32, bool)> {
    let mut files = Vec::new();
    for document in manifests.split("\n---\n") {
        let object: serde_yaml::Value = serde_yaml::from_str(document).expect("a YAML document");
        if object["kind"].as_str() != Some("Deployment") {
            continue;
        }
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let pod = &object["spec"]["template"]["spec"];
        let volumes = pod["volumes"].as_sequence().cloned().unwrap_or_default();
        for container in pod["containers"].as_sequence().into_iter().flatten() {
            let identity = Identity::of(pod, container);
            for mount in container["volumeMounts"]
                .as_sequence()
                .into_iter()
                .flatten()
            {
                let Some(secret) = volumes
                    .iter()
                    .find(|volume| volume["name"] == mount["name"])
                    .map(|volume| &volume["secret"])
                    .filter(|secret| !secret.is_null())
                else {
                    continue;
                };
                let default_mode = file_mode(&secret["defaultMode"]).unwrap_or(0o644);
                for item in secret["items"].as_sequence().into_iter().flatten() {
                    let mode = file_mode(&item["mode"]).unwrap_or(default_mode);
                    let path = format!(
                        "{name}/{}:{}/{}",
                        container["name"].as_str().unwrap_or_default(),
                        mount["mountPath"].as_str().unwrap_or_default(),
                        item["path"].as_str().unwrap_or_default()
                    );
                    files.push((path, mode, identity.can_read(mode)));
                }
            }
        }
    }
    files
}

#[test]
fn every_container_can_read_the_secret_files_it_mounts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let everything = render(dir.path(), "everything.yaml", EVERYTHING);
    let manifests = std::fs::read_to_string(everything).expect("rendered chart");
    let files = secret_files(&manifests);
    assert!(
        files.len() >= 2,
        "the NATS credentials and CA are mounted: {files:?}"
    );
    let unreadable: Vec<String> = files
        .iter()
        .filter(|(_, _, readable)| !readable)
        .map(|(path, mode, _)| format!("{path} (mode {mode:04o})"))
        .collect();
    assert!(
        unreadable.is_empty(),
        "files the container's user cannot read (set podSecurityContext.fsGroup?): {unreadable:?}"
    );
}

#[test]
fn a_secret_file_readable_only_by_its_group_needs_fs_group() {
    let pod = |fs_group: &str| -> serde_yaml::Value {
        serde_yaml::from_str(&format!(
            "securityContext: {{runAsUser: 65532, runAsGroup: 65532{fs_group}}}"
        ))
        .expect("YAML")
    };
    let container = serde_yaml::Value::Null;
    assert!(!Identity::of(&pod(""), &container).can_read(0o440));
    assert!(Identity::of(&pod(", fsGroup: 65532"), &container).can_read(0o440));
    assert!(Identity::of(&pod(""), &container).can_read(0o444));
    assert_eq!(
        file_mode(&serde_yaml::from_str("0440").expect("YAML")),
        Some(0o440)
    );
}

/// The objects `helm template` renders with `extra` values.
fn objects(extra: &[&str]) -> Vec<serde_yaml::Value> {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = render(dir.path(), "chart.yaml", extra);
    let text = std::fs::read_to_string(file).expect("rendered chart");
    text.split("\n---\n")
        .map(|document| serde_yaml::from_str::<serde_yaml::Value>(document).expect("YAML"))
        .filter(|object| !object.is_null())
        .collect()
}

/// The operator's NetworkPolicy ingress: per rule, the namespaces it lets
/// in and the ports it opens.
fn policy_ingress(objects: &[serde_yaml::Value]) -> Vec<(Vec<String>, Vec<u64>)> {
    let policy = objects
        .iter()
        .find(|object| object["kind"] == "NetworkPolicy")
        .expect("a NetworkPolicy");
    assert_eq!(
        policy["spec"]["policyTypes"][0], "Ingress",
        "ingress is restricted"
    );
    policy["spec"]["ingress"]
        .as_sequence()
        .expect("an ingress list (empty: nothing gets in)")
        .iter()
        .map(|rule| {
            let namespaces = rule["from"]
                .as_sequence()
                .expect("every rule names its sources: a rule without `from` lets everyone in")
                .iter()
                .map(|peer| {
                    peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                        .as_str()
                        .expect("a namespace by name")
                        .to_owned()
                })
                .collect();
            let ports = rule["ports"]
                .as_sequence()
                .expect("ports")
                .iter()
                .map(|port| port["port"].as_u64().expect("a port number"))
                .collect();
            (namespaces, ports)
        })
        .collect()
}

/// The port of the operator's `--listen`: where it serves `/metrics` and
/// the pools' `/pools/<ns>/<pool>/lag`.
fn operator_listen_port(objects: &[serde_yaml::Value]) -> u64 {
    let deployment = objects
        .iter()
        .find(|object| object["kind"] == "Deployment")
        .expect("the operator Deployment");
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .expect("args");
    let listen = args
        .iter()
        .filter_map(serde_yaml::Value::as_str)
        .find_map(|arg| arg.strip_prefix("--listen="))
        .expect("--listen");
    listen
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .expect("a port")
}

#[test]
fn the_network_policy_lets_kedas_namespace_reach_the_pools_lag_port() {
    let on = "networkPolicy.enabled=true";
    let defaults = objects(&["--set", on]);
    let port = operator_listen_port(&defaults);
    assert_eq!(
        policy_ingress(&defaults),
        [(vec!["monitoring".to_owned(), "keda".to_owned()], vec![port])],
        "KEDA (namespace keda by default) may poll /pools/<ns>/<pool>/lag"
    );
    let elsewhere = objects(&[
        "--set",
        on,
        "--set",
        "networkPolicy.kedaNamespace=autoscaling",
    ]);
    assert_eq!(
        policy_ingress(&elsewhere),
        [(
            vec!["monitoring".to_owned(), "autoscaling".to_owned()],
            vec![port]
        )]
    );
    let no_keda = objects(&["--set", on, "--set", "networkPolicy.kedaNamespace="]);
    assert_eq!(
        policy_ingress(&no_keda),
        [(vec!["monitoring".to_owned()], vec![port])]
    );
    let named_twice = objects(&[
        "--set",
        on,
        "--set",
        "networkPolicy.metricsNamespaces={monitoring,keda}",
    ]);
    assert_eq!(
        policy_ingress(&named_twice),
        [(vec!["monitoring".to_owned(), "keda".to_owned()], vec![port])],
        "a namespace named in both is let in once"
    );
    let nobody = objects(&[
        "--set",
        on,
        "--set",
        "networkPolicy.kedaNamespace=",
        "--set-json",
        "networkPolicy.metricsNamespaces=[]",
    ]);
    assert_eq!(
        policy_ingress(&nobody),
        [],
        "no namespace named: no rule, so nothing gets in (not everyone)"
    );
}

/// The alerts of the rendered PrometheusRule, by name.
fn alerts(objects: &[serde_yaml::Value]) -> Vec<(String, serde_yaml::Value)> {
    let rule = objects
        .iter()
        .find(|object| object["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    rule["spec"]["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_sequence().cloned().unwrap_or_default())
        .map(|rule| (rule["alert"].as_str().expect("an alert").to_owned(), rule))
        .collect()
}

#[test]
fn every_alert_has_a_runbook_entry_in_the_operations_guide() {
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/operations.md"
    ))
    .expect("docs/operations.md");
    let alerts = alerts(&objects(&["--set", "metrics.prometheusRule.enabled=true"]));
    assert!(alerts.len() >= 7, "{alerts:?}");
    let missing: Vec<&str> = alerts
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| !guide.contains(&format!("**{name}** (")))
        .collect();
    assert!(
        missing.is_empty(),
        "alerts without a `**Name** (severity): …` entry under Alerts in docs/operations.md: {missing:?}"
    );
}

#[test]
fn delivery_slow_fires_on_the_delivery_p99_above_the_configured_seconds_for_15_minutes() {
    let rule = |extra: &[&str]| {
        let mut args = vec!["--set", "metrics.prometheusRule.enabled=true"];
        args.extend_from_slice(extra);
        alerts(&objects(&args))
            .into_iter()
            .find(|(name, _)| name == "HooklineDeliverySlow")
            .expect("HooklineDeliverySlow")
            .1
    };
    let default = rule(&[]);
    assert_eq!(
        default["expr"].as_str().expect("expr"),
        "histogram_quantile(0.99, sum by (endpoint, le) (rate(hookline_consumer_delivery_latency_seconds_bucket[10m]))) > 5"
    );
    assert_eq!(default["for"], "15m");
    assert_eq!(default["labels"]["severity"], "warning");
    let description = default["annotations"]["description"]
        .as_str()
        .expect("description");
    for words in [
        "not Postgres",
        "hookline_consumer_processing_latency_seconds",
        "HooklineDeliverySlow",
    ] {
        assert!(description.contains(words), "{words}: {description}");
    }
    let configured = rule(&[
        "--set-json",
        "metrics.prometheusRule.deliverySlowSeconds=2.5",
    ]);
    assert!(
        configured["expr"]
            .as_str()
            .expect("expr")
            .ends_with(")) > 2.5"),
        "{configured:?}"
    );
}
