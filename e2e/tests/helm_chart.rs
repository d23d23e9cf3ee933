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
