//! The committed CRD is what the types generate, and it is a valid Kubernetes object.

use std::path::Path;
use std::process::Command;

const CRD_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/webhookendpoints.hookline.io.yaml"
);

#[test]
fn committed_crd_yaml_matches_the_types() {
    for file in hookline_api::CRD_FILES {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == hookline_api::crd_yaml().expect("CRD serialises"),
            "{} is stale: run `cargo run -p hookline-api --bin crdgen -- --write` and commit it",
            path.display()
        );
    }
}

#[test]
fn committed_pool_crd_yaml_matches_the_types() {
    for file in hookline_api::POOL_CRD_FILES {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == hookline_api::pool_crd_yaml().expect("CRD serialises"),
            "{} is stale: run `cargo run -p hookline-api --bin crdgen -- --write` and commit it",
            path.display()
        );
    }
}

#[test]
fn the_pool_crd_passes_strict_schema_validation_and_has_its_columns() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(hookline_api::POOL_CRD_FILES[0]);
    let output = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.32.0"])
        .arg(&path)
        .output()
        .expect("kubernetes-validate runs (pip install kubernetes-validate)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && report.contains("passed"),
        "kubernetes-validate rejected the pool CRD:\n{report}"
    );
    let crd = hookline_api::pool_crd();
    assert_eq!(crd.spec.names.kind, "WebhookPool");
    assert_eq!(crd.spec.names.short_names, Some(vec!["whpool".to_owned()]));
    assert_eq!(crd.spec.scope, "Namespaced");
    let columns: Vec<_> = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|column| column.name.as_str())
        .collect();
    assert_eq!(columns, ["Members", "Ready", "Age"]);
}

#[test]
fn the_committed_reference_matches_the_crd() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(hookline_api::reference::REFERENCE_FILE);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == hookline_api::reference::markdown(&hookline_api::crd()),
        "{} is stale: run `cargo run -p hookline-api --bin crdgen -- --write` and commit it",
        path.display()
    );
}

#[test]
fn the_reference_documents_every_spec_field() {
    let reference = hookline_api::reference::markdown(&hookline_api::crd());
    for field in [
        "`spec.provider` (required)",
        "`spec.secretRef.generate`",
        "`spec.consumer.scaling.lagThreshold`",
        "`spec.stream.deletionPolicy`",
        "`status.conditions`",
        "`status.pending`",
    ] {
        assert!(reference.contains(field), "the reference lacks {field}");
    }
}

#[test]
fn crd_passes_strict_kubernetes_schema_validation() {
    let output = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.32.0", CRD_PATH])
        .output()
        .unwrap_or_else(|err| {
            panic!("kubernetes-validate not runnable ({err}): install it with `pip install kubernetes-validate`")
        });
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && report.contains("passed"),
        "kubernetes-validate rejected the CRD:\n{report}"
    );
}

#[test]
fn crd_has_short_name_status_subresource_and_printer_columns() {
    let crd = hookline_api::crd();
    assert_eq!(crd.spec.group, "hookline.io");
    assert_eq!(crd.spec.names.kind, "WebhookEndpoint");
    assert_eq!(crd.spec.names.short_names, Some(vec!["whe".to_owned()]));
    assert_eq!(crd.spec.scope, "Namespaced");
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<_> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|column| column.name.as_str())
        .collect();
    assert_eq!(columns, ["Ready", "URL", "Pending", "Age"]);
}

#[test]
fn crd_rejects_bad_values_at_apply_time() {
    let yaml = std::fs::read_to_string(Path::new(CRD_PATH)).expect("read committed CRD");
    for rule in [
        "self.startsWith('/')",
        "self.minReplicas <= self.maxReplicas",
        "x-kubernetes-list-type: map",
        "pattern: ^([0-9]+",
        "- stripe",
    ] {
        assert!(yaml.contains(rule), "the CRD lacks {rule:?}");
    }
}
