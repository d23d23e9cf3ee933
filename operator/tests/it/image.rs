//! The Dockerfile stays honest (no Docker engine runs here to build it): it
//! builds every binary the chart and the operator's pods run, from packages
//! that exist, locked, into a non-root distroless image.

use crate::support;

use std::path::PathBuf;

use hookline_operator::build::{self, Cluster};
use hookline_operator::config::OperatorConfig;
use hookline_operator::validate::validate;

/// The kubectl plugin's binary (package `plugin/`).
const PLUGIN: &str = "kubectl-hookline";

fn repository() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repository().join(path)).unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// The commands the operator's pods run.
fn pod_commands() -> Vec<String> {
    let mut resource = support::example("stripe.yaml");
    resource.metadata.uid = Some("uid".into());
    let children = build::build(
        &validate(&resource).expect("valid"),
        &OperatorConfig::default(),
        Cluster { keda: true },
    );
    let own = children.workload.expect("own pods");
    [own.receiver, own.consumer]
        .iter()
        .map(|deployment| {
            deployment
                .spec
                .as_ref()
                .and_then(|spec| spec.template.spec.as_ref())
                .expect("pod")
                .containers[0]
                .command
                .as_ref()
                .expect("command")[0]
                .clone()
        })
        .collect()
}

#[test]
fn the_image_holds_every_binary_the_chart_and_the_pods_run() {
    let dockerfile = read("Dockerfile");
    let chart = read("charts/hookline/templates/deployment.yaml");
    let mut needed = pod_commands();
    needed.push("hookline-operator".into());
    // Not run by a pod, shipped in the image for users to copy out.
    needed.push(PLUGIN.into());
    assert!(
        chart.contains(r#"command: ["hookline-operator"]"#),
        "the chart runs hookline-operator"
    );
    for binary in &needed {
        assert!(
            dockerfile.contains(&format!("--package {binary} --bin {binary}")),
            "the Dockerfile does not build {binary}"
        );
        assert!(
            dockerfile.contains(&format!("target/release/{binary}"))
                && dockerfile.contains(&format!("/out/{binary}")),
            "the Dockerfile does not copy {binary} into the image"
        );
        let directory = if binary == PLUGIN {
            "plugin"
        } else {
            binary.trim_start_matches("hookline-")
        };
        let main = repository().join(directory).join("src/main.rs");
        assert!(
            main.is_file(),
            "{binary} has no package at {}",
            main.display()
        );
    }
    assert!(
        dockerfile.contains("/usr/local/bin/"),
        "binaries on the image's PATH"
    );
}

#[test]
fn the_image_is_built_locked_and_runs_as_non_root() {
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("cargo build --release --locked"));
    let runtime = dockerfile.rsplit("\nFROM ").next().expect("a final stage");
    assert!(
        runtime.starts_with("gcr.io/distroless/"),
        "minimal runtime image: {runtime}"
    );
    assert!(runtime.contains("USER 65532"), "non-root user");
    assert!(
        runtime.contains("org.opencontainers.image.source"),
        "OCI labels"
    );
    let toolchain = dockerfile
        .lines()
        .find_map(|line| line.strip_prefix("FROM rust:"))
        .and_then(|rest| rest.split('-').next())
        .expect("a rust build stage");
    let manifest = read("Cargo.toml");
    let minimum = manifest
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = \""))
        .map(|rest| rest.trim_end_matches('"'))
        .expect("rust-version");
    let version = |text: &str| -> Vec<u32> {
        text.split('.')
            .filter_map(|part| part.parse().ok())
            .collect()
    };
    assert!(
        version(toolchain) >= version(minimum),
        "rust:{toolchain} is older than rust-version {minimum}"
    );
}

#[test]
fn the_build_context_leaves_out_build_output_and_local_state() {
    let ignored = read(".dockerignore");
    for entry in ["target/", ".hookline/"] {
        assert!(
            ignored.lines().any(|line| line.trim() == entry),
            ".dockerignore lacks {entry}"
        );
    }
}
