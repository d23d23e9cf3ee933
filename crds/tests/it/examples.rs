//! Every shipped example is a valid endpoint, and bad manifests name the wrong field.

use std::path::{Path, PathBuf};

use hookline_api::spec::Provider;
use hookline_api::{Error, load_manifest, parse_manifest, validate};

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/ exists")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    paths.sort();
    paths
}

#[test]
fn every_example_validates() {
    for path in examples() {
        load_manifest(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    }
}

#[test]
fn examples_cover_every_provider() {
    let providers: Vec<Provider> = examples()
        .iter()
        .map(|path| load_manifest(path).expect("valid example").provider)
        .collect();
    for provider in Provider::ALL {
        assert!(providers.contains(&provider), "no example for {provider}");
    }
}

fn error_of(yaml: &str) -> String {
    match parse_manifest(yaml).and_then(|endpoint| validate(&endpoint)) {
        Ok(endpoint) => panic!("accepted: {endpoint:?}"),
        Err(err) => err.to_string(),
    }
}

const HEADER: &str = "apiVersion: hookline.io/v1alpha1\nkind: WebhookEndpoint\nmetadata: {name: shop, namespace: prod}\n";

#[test]
fn unknown_provider_names_the_field() {
    let message = error_of(&format!(
        "{HEADER}spec:\n  provider: paypal\n  secretRef: {{name: s}}\n"
    ));
    assert!(
        message.starts_with("spec.provider: unknown variant `paypal`"),
        "{message}"
    );
}

#[test]
fn unknown_field_type_names_the_field() {
    let message = error_of(&format!(
        "{HEADER}spec:\n  provider: stripe\n  secretRef: {{name: s}}\n  stream: {{replicas: many}}\n"
    ));
    assert!(message.starts_with("spec.stream.replicas:"), "{message}");
}

#[test]
fn missing_secret_ref_is_reported() {
    let message = error_of(&format!("{HEADER}spec:\n  provider: stripe\n"));
    assert!(message.contains("secretRef"), "{message}");
}

#[test]
fn wrong_kind_is_reported() {
    let message = error_of("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n");
    assert!(
        message.starts_with("apiVersion: expected \"hookline.io/v1alpha1\""),
        "{message}"
    );
}

#[test]
fn file_errors_name_the_file_and_the_field() {
    let dir = tempfile_dir();
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        format!("{HEADER}spec:\n  provider: stripe\n  secretRef: {{name: s, key: \"\"}}\n"),
    )
    .expect("write");
    let err = load_manifest(&path).expect_err("empty key rejected");
    assert!(matches!(err, Error::InFile { .. }));
    let message = err.to_string();
    assert!(
        message.contains("bad.yaml") && message.contains("spec.secretRef.key: must not be empty"),
        "{message}"
    );
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hookline-api-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
#[test]
fn unknown_fields_are_reported_by_their_path() {
    let text = "apiVersion: hookline.io/v1alpha1
kind: WebhookEndpoint
metadata: {name: stripe, namespace: payments, lables: {a: b}}
spec:
  provider: stripe
  secretRef: {name: s}
  request: {maxBodyBytes: 1024, rateLimt: {requestsPerSecond: 5}}
";
    let (resource, unknown) = hookline_api::parse_manifest_checked(text).expect("parses");
    assert_eq!(
        resource
            .spec
            .request
            .as_ref()
            .and_then(|request| request.max_body_bytes),
        Some(1024)
    );
    assert_eq!(unknown, ["metadata.lables", "spec.request.rateLimt"]);
}

#[test]
fn every_example_has_only_known_fields() {
    for entry in
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")).expect("examples")
    {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|ext| ext == "yaml") {
            let text = std::fs::read_to_string(&path).expect("readable");
            let (_, unknown) = hookline_api::parse_manifest_checked(&text).expect("parses");
            assert!(unknown.is_empty(), "{}: {unknown:?}", path.display());
        }
    }
}
