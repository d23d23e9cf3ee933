//! The ConfigMap holding the manifest the pods read, and the hash that rolls
//! the pods when it changes (a Secret change rolls nothing: mounted files update).

use k8s_openapi::api::core::v1::ConfigMap;
use sha2::{Digest, Sha256};

use super::{ChildNames, metadata};
use crate::validate::ValidEndpoint;

/// The ConfigMap key, and the file name in the pods.
pub const MANIFEST_KEY: &str = "endpoint.yaml";

/// The manifest's content hash, for the pod templates.
pub fn hash(valid: &ValidEndpoint) -> String {
    hex::encode(&Sha256::digest(valid.manifest.as_bytes())[..8])
}

pub fn config_map(valid: &ValidEndpoint) -> ConfigMap {
    let name = ChildNames::of(&valid.endpoint.name).config_map;
    ConfigMap {
        metadata: metadata(valid, &name, "config"),
        data: Some([(MANIFEST_KEY.to_owned(), valid.manifest.clone())].into()),
        ..Default::default()
    }
}
