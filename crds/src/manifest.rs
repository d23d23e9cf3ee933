//! Reading a `WebhookEndpoint` manifest file: the same YAML `kubectl apply` takes,
//! so the binaries run the same inside and outside a cluster.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::spec::WebhookEndpoint;
use crate::validated::ValidatedEndpoint;
use crate::{Error, Result};

/// The namespace of a manifest that names none, as `kubectl apply` would use.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Parses one manifest; errors name the field (`spec.provider: unknown variant …`).
/// Fields Hookline does not know are ignored: see [`parse_manifest_checked`].
pub fn parse_manifest(text: &str) -> Result<WebhookEndpoint> {
    parse_manifest_checked(text).map(|(resource, _)| resource)
}

/// [`parse_manifest`], and the paths of the fields it ignored
/// (`spec.request.rateLimt`): misspelt, or from a newer Hookline. In a
/// cluster the API server prunes or refuses them; a file read here would
/// otherwise drop them without a word.
pub fn parse_manifest_checked(text: &str) -> Result<(WebhookEndpoint, Vec<String>)> {
    let document: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|err| Error::Manifest {
            field: String::new(),
            message: format!("not YAML: {err}"),
        })?;
    parse_document_checked(document, "WebhookEndpoint")
}

/// A `hookline.io/v1alpha1` resource of `kind` (`WebhookEndpoint`,
/// `WebhookPool`) from one YAML document already parsed (one of several in
/// a file), and the paths of the fields it ignored, as
/// [`parse_manifest_checked`] reads a whole file.
pub fn parse_document_checked<T: DeserializeOwned>(
    document: serde_yaml::Value,
    kind: &str,
) -> Result<(T, Vec<String>)> {
    for (field, expected) in [("apiVersion", "hookline.io/v1alpha1"), ("kind", kind)] {
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
    let mut unknown = Vec::new();
    let mut note = |path: serde_ignored::Path<'_>| {
        // `?` stands for an `Option` in serde_ignored's paths; not a field.
        let field = path
            .to_string()
            .split('.')
            .filter(|segment| *segment != "?")
            .collect::<Vec<_>>()
            .join(".");
        // Checked above; the resource type does not keep them.
        if field != "apiVersion" && field != "kind" {
            unknown.push(field);
        }
    };
    let resource =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(document, &mut note))
            .map_err(|err| {
                let path = err.path().to_string();
                Error::Manifest {
                    field: if path == "." { String::new() } else { path },
                    message: err.into_inner().to_string(),
                }
            })?;
    Ok((resource, unknown))
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

/// Reads, parses and validates a manifest file; a field Hookline does not
/// know is logged as a warning with its path, as `kubectl` warns of one.
pub fn load_manifest(path: &Path) -> Result<ValidatedEndpoint> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let (resource, unknown) = parse_manifest_checked(&text).map_err(|err| err.in_file(path))?;
    for field in unknown {
        tracing::warn!(
            file = %path.display(),
            %field,
            "unknown field in the manifest, ignored (misspelt?)"
        );
    }
    validate(&resource).map_err(|err| err.in_file(path))
}
