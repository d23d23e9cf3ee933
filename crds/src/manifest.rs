//! Reading a `WebhookEndpoint` manifest file: the same YAML `kubectl apply` takes,
//! so the binaries run the same inside and outside a cluster.

use std::path::Path;

use crate::spec::WebhookEndpoint;
use crate::validated::ValidatedEndpoint;
use crate::{Error, Result};

/// The namespace of a manifest that names none, as `kubectl apply` would use.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Parses one manifest; errors name the field (`spec.provider: unknown variant …`).
pub fn parse_manifest(text: &str) -> Result<WebhookEndpoint> {
    let document: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|err| Error::Manifest {
            field: String::new(),
            message: format!("not YAML: {err}"),
        })?;
    for (field, expected) in [
        ("apiVersion", "hookline.io/v1alpha1"),
        ("kind", "WebhookEndpoint"),
    ] {
        let found = document.get(field).and_then(serde_yaml::Value::as_str);
        if found != Some(expected) {
            return Err(Error::Manifest {
                field: field.into(),
                message: format!(
                    "expected {expected:?}, found {}",
                    found.map_or("nothing".into(), |f| format!("{f:?}"))
                ),
            });
        }
    }
    serde_path_to_error::deserialize(document).map_err(|err| {
        let path = err.path().to_string();
        Error::Manifest {
            field: if path == "." { String::new() } else { path },
            message: err.into_inner().to_string(),
        }
    })
}

/// Checks a parsed resource and applies every default.
pub fn validate(endpoint: &WebhookEndpoint) -> Result<ValidatedEndpoint> {
    let name = endpoint.metadata.name.as_deref().unwrap_or_default();
    let namespace = endpoint
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(DEFAULT_NAMESPACE);
    Ok(crate::resolve(namespace, name, &endpoint.spec)?)
}

/// Reads, parses and validates a manifest file.
pub fn load_manifest(path: &Path) -> Result<ValidatedEndpoint> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    validate(&parse_manifest(&text)?).map_err(|err| err.in_file(path))
}
