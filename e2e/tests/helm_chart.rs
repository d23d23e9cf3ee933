//! The Helm chart lints, renders valid Kubernetes objects, and its values schema
//! refuses bad settings. Needs `helm` and `kubernetes-validate` (installed by `.ci/run`).

use std::path::PathBuf;
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

#[test]
fn chart_lints_cleanly() {
    let chart = chart_dir();
    let output = helm(&["lint", "--strict", chart.to_str().expect("utf-8 path")]);
    assert!(
        output.status.success(),
        "helm lint failed:\n{}",
        text(&output)
    );
}

#[test]
fn rendered_chart_passes_strict_kubernetes_validation() {
    let chart = chart_dir();
    let rendered = helm(&[
        "template",
        "hookline",
        chart.to_str().expect("utf-8 path"),
        "--namespace",
        "hookline",
        "--include-crds",
        "--set",
        "nats.credentialsSecret=nats-creds",
    ]);
    assert!(
        rendered.status.success(),
        "helm template failed:\n{}",
        text(&rendered)
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &rendered.stdout).expect("write rendered chart");
    let validated = run(
        "kubernetes-validate",
        &[
            "--strict",
            "--kubernetes-version",
            "1.32.0",
            file.to_str().expect("utf-8 path"),
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
        "clusterrole",
        "serviceaccount",
    ] {
        assert!(
            report.contains(&format!("passed for resource {kind}/")),
            "no {kind} rendered:\n{report}"
        );
    }
}

#[test]
fn values_schema_rejects_a_bad_nats_url() {
    let chart = chart_dir();
    let output = helm(&[
        "template",
        "hookline",
        chart.to_str().expect("utf-8 path"),
        "--set",
        "nats.url=localhost:4222",
    ]);
    assert!(
        !output.status.success(),
        "a NATS URL without scheme was accepted"
    );
    assert!(text(&output).contains("nats"), "{}", text(&output));
}
