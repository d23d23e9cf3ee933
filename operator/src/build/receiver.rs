//! The receiver's children: Deployment, Service, Ingress and PodDisruptionBudget.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, Lifecycle, LifecycleHandler, ResourceRequirements, Service, ServicePort,
    ServiceSpec, SleepAction, TopologySpreadConstraint,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::pod::{ContainerSettings, HTTP_PORT_NAME, PodParts, selector};
use super::pool::PoolNames;
use super::{ChildNames, Owner, metadata};
use crate::config::OperatorConfig;
use crate::validate::{Placement, ValidEndpoint};

pub const COMPONENT: &str = "receiver";
/// The receiver's container port.
pub const PORT: u16 = 8080;
/// The Service's port.
const SERVICE_PORT: i32 = 80;
/// Seconds a terminating receiver keeps serving before SIGTERM, so Service
/// endpoints and the ingress controller stop routing to it first.
const PRE_STOP_SLEEP_SECONDS: i64 = 5;
/// The receiver's own shutdown bound (`--shutdown-timeout`, 20s) plus the
/// pre-stop pause and some slack.
const TERMINATION_GRACE_SECONDS: i64 = 30;
/// ingress-nginx refuses bodies over 1 MiB unless told otherwise; the
/// receiver's own limit must be the one that answers.
const NGINX_BODY_SIZE_ANNOTATION: &str = "nginx.ingress.kubernetes.io/proxy-body-size";

pub fn deployment(valid: &ValidEndpoint, config: &OperatorConfig, config_hash: &str) -> Deployment {
    let endpoint = &valid.endpoint;
    let mut parts = PodParts::new(valid, config);
    let secret_file = parts.mount_secret_file(
        "signing-secret",
        &endpoint.secret.name,
        &endpoint.secret.key,
    );
    parts.arg("--secret-file", &secret_file);
    // Each receiver enforces its share of the endpoint's rate limit. Only
    // when there is one, so that no other endpoint's pods roll for it.
    if endpoint.request.rate_limit.is_some() {
        parts.arg("--replicas", &endpoint.receiver.replicas.max(1).to_string());
    }
    pods(
        &Owner::endpoint(valid),
        config,
        parts,
        Pods {
            name: &ChildNames::of(&endpoint.name).receiver,
            component: COMPONENT,
            replicas: endpoint.receiver.replicas,
            image: endpoint.receiver.image.as_deref().unwrap_or(&config.image),
            resources: endpoint
                .receiver
                .resources
                .clone()
                .unwrap_or_else(|| config.receiver_resources.clone()),
            config_hash: Some(config_hash),
        },
    )
}

/// What differs between an endpoint's receivers and a pool's.
pub struct Pods<'a> {
    pub name: &'a str,
    pub component: &'a str,
    pub replicas: i32,
    pub image: &'a str,
    pub resources: ResourceRequirements,
    pub config_hash: Option<&'a str>,
}

/// A receiver Deployment running `parts`: spread over nodes, never fewer
/// ready pods than asked for during a rollout, a pause before SIGTERM.
pub fn pods(
    owner: &Owner<'_>,
    config: &OperatorConfig,
    parts: PodParts,
    pods: Pods<'_>,
) -> Deployment {
    let Pods {
        name,
        component,
        replicas,
        image,
        resources,
        config_hash,
    } = pods;
    let mut template = parts.template(
        owner,
        config,
        ContainerSettings {
            component,
            command: "hookline-receiver",
            port: PORT,
            image,
            resources,
            config_hash,
        },
    );
    if let Some(spec) = template.spec.as_mut() {
        spec.termination_grace_period_seconds = Some(TERMINATION_GRACE_SECONDS);
        spec.topology_spread_constraints = Some(vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "kubernetes.io/hostname".into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(selector(owner, component)),
            ..Default::default()
        }]);
        spec.containers.iter_mut().for_each(add_pre_stop_pause);
    }
    Deployment {
        metadata: owner.metadata(name, component),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: selector(owner, component),
            // Never fewer ready receivers than asked for during a rollout.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn add_pre_stop_pause(container: &mut Container) {
    container.lifecycle = Some(Lifecycle {
        pre_stop: Some(LifecycleHandler {
            sleep: Some(SleepAction {
                seconds: PRE_STOP_SLEEP_SECONDS,
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
}

pub fn service(valid: &ValidEndpoint) -> Service {
    service_of(
        &Owner::endpoint(valid),
        &ChildNames::of(&valid.endpoint.name).receiver,
        COMPONENT,
    )
}

/// The Service in front of `component`'s receivers.
pub fn service_of(owner: &Owner<'_>, name: &str, component: &str) -> Service {
    Service {
        metadata: owner.metadata(name, component),
        spec: Some(ServiceSpec {
            selector: Some(owner.selector_labels(component)),
            ports: Some(vec![ServicePort {
                name: Some(HTTP_PORT_NAME.into()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::String(HTTP_PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The route providers call: exactly the endpoint's path (the receiver
/// answers 404 on any other), on the host and class asked for, with TLS,
/// to the endpoint's own receivers or its pool's. Its name is the same
/// either way, so a switch changes its backend and nothing else.
pub fn ingress(valid: &ValidEndpoint) -> Option<Ingress> {
    let route = &valid.endpoint.route;
    let settings = route.ingress.as_ref()?;
    let name = ChildNames::of(&valid.endpoint.name).receiver;
    let backend = match &valid.placement {
        Placement::Dedicated { .. } => name.clone(),
        Placement::Pooled { pool } => PoolNames::of(pool).receiver,
    };
    let mut metadata = metadata(valid, &name, COMPONENT);
    metadata.annotations = Some(BTreeMap::from([(
        NGINX_BODY_SIZE_ANNOTATION.to_owned(),
        valid.endpoint.request.max_body_bytes.to_string(),
    )]));
    Some(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: settings.class_name.clone(),
            tls: settings.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: settings.host.clone().map(|host| vec![host]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: settings.host.clone(),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some(route.path.clone()),
                        path_type: "Exact".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: backend,
                                port: Some(ServiceBackendPort {
                                    name: Some(HTTP_PORT_NAME.into()),
                                    ..Default::default()
                                }),
                            }),
                            ..Default::default()
                        },
                    }],
                }),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// At most one receiver down at a time for node drains; the Deployment's
/// other replicas keep answering.
pub fn disruption_budget(valid: &ValidEndpoint) -> PodDisruptionBudget {
    disruption_budget_of(
        &Owner::endpoint(valid),
        &ChildNames::of(&valid.endpoint.name).receiver,
        COMPONENT,
    )
}

/// At most one of `component`'s receivers down at a time.
pub fn disruption_budget_of(owner: &Owner<'_>, name: &str, component: &str) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owner.metadata(name, component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(owner, component)),
            ..Default::default()
        }),
        ..Default::default()
    }
}
