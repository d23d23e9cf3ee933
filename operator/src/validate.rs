//! The validate step: `hookline_api::resolve` plus what only a cluster needs,
//! producing the one input every builder works from.

use hookline_api::pool::{ValidatedPool, WebhookPool};
use hookline_api::spec::{SecretKeyRef, StreamRetention, WebhookEndpoint};
use hookline_api::validated::StreamLimits;
use hookline_api::{FieldError, InvalidSpec, ValidatedEndpoint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

/// A `WebhookEndpoint` checked for a cluster: builders take this and never
/// re-check or re-default a field (the one rule they add, at least one
/// consumer pod without KEDA, is `build::consumer::replicas_without_keda`).
#[derive(Clone, Debug, PartialEq)]
pub struct ValidEndpoint {
    /// Every default applied (the same value the pods compute from the manifest).
    pub endpoint: ValidatedEndpoint,
    /// The manifest the pods read (from the ConfigMap): the resource's name,
    /// namespace and spec as the user wrote it, so pods resolve it as we did.
    pub manifest: String,
    /// Whose pods serve the endpoint.
    pub placement: Placement,
    /// The owner reference every child carries; `None` when rendering a file
    /// that was never applied (no UID yet).
    pub owner: Option<OwnerReference>,
}

/// Whose pods serve an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Its own receiver and consumer; the consumer reads this Postgres URL.
    Dedicated { database: SecretKeyRef },
    /// The pods of `WebhookPool` `pool` of its namespace (`spec.pool`).
    Pooled { pool: String },
}

impl ValidEndpoint {
    /// The same endpoint with its stream and subjects named for `cluster`
    /// (the operator's `--cluster-name`), as its pods will name them.
    pub fn in_cluster(self, cluster: Option<&str>) -> ValidEndpoint {
        ValidEndpoint {
            endpoint: self.endpoint.in_cluster(cluster),
            ..self
        }
    }

    /// The same endpoint with its events in its pool's shared stream
    /// (`hookline_api::ValidatedEndpoint::in_shared_stream`); a dedicated
    /// endpoint is returned as it is.
    pub fn in_shared_stream(self, cluster: Option<&str>, limits: StreamLimits) -> ValidEndpoint {
        let Placement::Pooled { pool } = &self.placement else {
            return self;
        };
        let pool = pool.clone();
        ValidEndpoint {
            endpoint: self.endpoint.in_shared_stream(cluster, &pool, limits),
            ..self
        }
    }

    /// The pool serving the endpoint, if one does.
    pub fn pool(&self) -> Option<&str> {
        match &self.placement {
            Placement::Pooled { pool } => Some(pool),
            Placement::Dedicated { .. } => None,
        }
    }
}

/// A `WebhookPool` checked for a cluster, with the owner reference of its children.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidPool {
    pub pool: ValidatedPool,
    pub owner: Option<OwnerReference>,
}

/// Checks a pool and applies every default; every wrong field is reported.
pub fn validate_pool(resource: &WebhookPool) -> Result<ValidPool, InvalidSpec> {
    let namespace = resource
        .namespace()
        .unwrap_or_else(|| hookline_api::manifest::DEFAULT_NAMESPACE.to_owned());
    hookline_api::resolve_pool(&namespace, &resource.name_any(), &resource.spec).map(|pool| {
        ValidPool {
            pool,
            owner: resource.controller_owner_ref(&()),
        }
    })
}

/// Checks `resource` and applies every default; every wrong field is
/// reported. A pool member is checked without its pool (see [`validate_in`]).
pub fn validate(resource: &WebhookEndpoint) -> Result<ValidEndpoint, InvalidSpec> {
    validate_in(resource, None)
}

/// [`validate`], with the pool `spec.pool` names when that pool exists: a
/// member may repeat its Postgres URL Secret key, never name another, and
/// in a pool with a shared stream it must be a `Buffer` that does not
/// refetch and leaves the stream's limits to the pool.
pub fn validate_in(
    resource: &WebhookEndpoint,
    pool: Option<&ValidatedPool>,
) -> Result<ValidEndpoint, InvalidSpec> {
    let namespace = resource
        .namespace()
        .unwrap_or_else(|| hookline_api::manifest::DEFAULT_NAMESPACE.to_owned());
    let resolved = hookline_api::resolve(&namespace, &resource.name_any(), &resource.spec);
    let manifest = manifest(resource, &namespace);
    let mut problems = Vec::new();
    let placement = placement(resource, pool, &mut problems);
    match (resolved, placement, manifest) {
        (Ok(endpoint), Some(placement), Ok(manifest)) if problems.is_empty() => Ok(ValidEndpoint {
            endpoint,
            manifest,
            placement,
            owner: resource.controller_owner_ref(&()),
        }),
        (resolved, _, manifest) => {
            let mut all = resolved
                .err()
                .map(|InvalidSpec(all)| all)
                .unwrap_or_default();
            if let Err(err) = manifest {
                all.push(FieldError {
                    field: "spec".into(),
                    message: format!("cannot be written as YAML for the pods: {err}"),
                });
            }
            all.extend(problems);
            Err(InvalidSpec(all))
        }
    }
}

/// Dedicated (with its Postgres URL) or pooled (without what only a pod of
/// its own can take); `None` with the problems recorded.
fn placement(
    resource: &WebhookEndpoint,
    pool_resource: Option<&ValidatedPool>,
    problems: &mut Vec<FieldError>,
) -> Option<Placement> {
    let pool_database = pool_resource.map(|pool| &pool.consumer.database_secret_ref);
    let spec = &resource.spec;
    let consumer = spec.consumer.as_ref();
    let database = consumer.and_then(|consumer| consumer.database_secret_ref.clone());
    let mut problem = |field: &str, message: String| {
        problems.push(FieldError {
            field: field.into(),
            message,
        });
    };
    let Some(pool) = &spec.pool else {
        if database.is_none() {
            problem(
                "spec.consumer.databaseSecretRef",
                "required in a cluster: name the Secret key that holds the consumer's Postgres URL"
                    .into(),
            );
        }
        return database.map(|database| Placement::Dedicated { database });
    };
    if let Err(message) = hookline_api::naming::check_resource_name(pool) {
        problem("spec.pool", message);
    }
    if spec.receiver.is_some() {
        problem(
            "spec.receiver",
            format!(
                "a pool member has no receiver of its own: set replicas, resources and image on WebhookPool {pool}"
            ),
        );
    }
    if consumer.is_some_and(|consumer| consumer.scaling.is_some()) {
        problem(
            "spec.consumer.scaling",
            format!("a pool member has no consumer of its own: set scaling on WebhookPool {pool}"),
        );
    }
    if consumer
        .and_then(|consumer| consumer.refetch.as_ref())
        .is_some_and(|refetch| refetch.auth_secret_ref.is_some())
    {
        problem(
            "spec.consumer.refetch.authSecretRef",
            "the pool's consumer does not serve it (it takes no --refetch-auth-file): remove spec.pool to give this endpoint a consumer of its own".into(),
        );
    }
    if let (Some(own), Some(pool_database)) = (&database, pool_database)
        && own != pool_database
    {
        problem(
            "spec.consumer.databaseSecretRef",
            format!(
                "must be absent or equal to WebhookPool {pool}'s ({}/{}): the pool's consumer writes every member to one database",
                pool_database.name, pool_database.key
            ),
        );
    }
    if pool_resource.is_some_and(|pool| pool.stream.is_some()) {
        shared_stream_problems(spec, pool, &mut problem);
    }
    Some(Placement::Pooled { pool: pool.clone() })
}

/// What a member of a pool with a shared stream cannot set: a refetch
/// (the stream has one durable for every member, delivering in stream
/// order, so a provider's outage would hold the pool's acknowledgements
/// while the member's events wait out their retries), an `Archive` (the
/// shared stream is a work queue: an event leaves once written), and the
/// limits the pool's `spec.stream` sets for every member. Its `maxBytes`
/// (its own cap, kept by the receiver) and `deletionPolicy` stay its own.
fn shared_stream_problems(
    spec: &hookline_api::spec::WebhookEndpointSpec,
    pool: &str,
    problem: &mut impl FnMut(&str, String),
) {
    if spec
        .consumer
        .as_ref()
        .is_some_and(|consumer| consumer.refetch.is_some())
    {
        problem(
            "spec.consumer.refetch",
            format!(
                "WebhookPool {pool} has a shared stream, whose one durable a refetching member would hold up for every member while a provider's API is away: remove spec.consumer.refetch, or give this endpoint a pool without spec.stream or pods of its own"
            ),
        );
    }
    let Some(stream) = spec.stream.as_ref() else {
        return;
    };
    if stream.retention == Some(StreamRetention::Archive) {
        problem(
            "spec.stream.retention",
            format!(
                "WebhookPool {pool} has a shared stream, which holds Buffers only (an event leaves once written): remove retention: Archive, or give this endpoint another pool or pods of its own"
            ),
        );
    }
    for (field, set) in [
        ("spec.stream.maxAge", stream.max_age.is_some()),
        ("spec.stream.replicas", stream.replicas.is_some()),
        (
            "spec.stream.duplicateWindow",
            stream.duplicate_window.is_some(),
        ),
    ] {
        if set {
            problem(
                field,
                format!(
                    "WebhookPool {pool}'s shared stream sets it for every member (its spec.stream): remove it here"
                ),
            );
        }
    }
}

/// The resource as the pods read it: only what `kubectl apply` would take.
fn manifest(resource: &WebhookEndpoint, namespace: &str) -> Result<String, serde_yaml::Error> {
    let mut copy = WebhookEndpoint::new(&resource.name_any(), resource.spec.clone());
    copy.metadata.namespace = Some(namespace.to_owned());
    serde_yaml::to_string(&copy)
}
