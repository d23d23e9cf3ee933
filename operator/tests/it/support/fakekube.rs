//! The stand-in API server (`hookline_e2e::fakekube`) and what the
//! operator's binary tests and benchmarks put into it.

use hookline_api::spec::WebhookEndpoint;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};

pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "webhookendpoints.hookline.io",
        &PatchParams::apply("test").force(),
        &Patch::Apply(&hookline_api::crd()),
    )
    .await
    .expect("CRD applied");
}

/// Installs the WebhookPool CRD too.
pub async fn install_pool_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "webhookpools.hookline.io",
        &PatchParams::apply("test").force(),
        &Patch::Apply(&hookline_api::pool_crd()),
    )
    .await
    .expect("pool CRD applied");
}

pub async fn apply_endpoint(client: &Client, resource: &WebhookEndpoint) {
    let api: Api<WebhookEndpoint> =
        Api::namespaced(client.clone(), &resource.namespace().expect("namespace"));
    api.patch(
        &resource.name_any(),
        &PatchParams::apply("kubectl").force(),
        &Patch::Apply(resource),
    )
    .await
    .expect("endpoint applied");
}

pub async fn create_secret(client: &Client, value: Secret) {
    let api: Api<Secret> = Api::namespaced(client.clone(), &value.namespace().expect("namespace"));
    api.create(&PostParams::default(), &value)
        .await
        .expect("secret created");
}

/// The Secrets the Stripe example reads, in `namespace`.
pub async fn create_stripe_secrets(client: &Client, namespace: &str) {
    create_secret(
        client,
        super::secret(namespace, "stripe-webhook", "secret", "whsec_test"),
    )
    .await;
    create_secret(
        client,
        super::secret(
            namespace,
            "hookline-postgres",
            "url",
            "postgres://db/hookline",
        ),
    )
    .await;
}
