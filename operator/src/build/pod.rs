//! What the receiver and consumer pods share: the manifest and Secret files
//! they read, how they reach NATS, probes, and a locked-down security context.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, LocalObjectReference, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{CONFIG_HASH_ANNOTATION, ChildNames, Owner, manifest};
use crate::config::{
    NATS_CREDS_KEY, NATS_PASSWORD_KEY, NATS_TLS_CA_KEY, NATS_USER_KEY, OperatorConfig,
};
use crate::validate::ValidEndpoint;

/// Every file the operator mounts lives under this directory.
const MOUNT_ROOT: &str = "/etc/hookline";
/// The distroless `nonroot` user and group.
const RUN_AS: i64 = 65532;
/// Secret files are readable by the pod's group only.
const SECRET_FILE_MODE: i32 = 0o440;
/// The name of the HTTP port in every container and Service.
pub const HTTP_PORT_NAME: &str = "http";

/// Args, environment and volumes of one container, collected as the
/// receiver's and consumer's builders add to them.
#[derive(Clone, Debug, Default)]
pub struct PodParts {
    pub args: Vec<String>,
    pub env: Vec<EnvVar>,
    pub volumes: Vec<Volume>,
    pub mounts: Vec<VolumeMount>,
}

impl PodParts {
    /// The parts of an endpoint's own pods: its manifest and the NATS
    /// connection, as environment variables, so a command run in the pod
    /// (`kubectl exec … hookline-consumer replay --all`) finds them too.
    pub fn new(valid: &ValidEndpoint, config: &OperatorConfig) -> PodParts {
        let mut parts = PodParts::default();
        let dir =
            parts.mount_config_map("endpoint", &ChildNames::of(&valid.endpoint.name).config_map);
        parts.env_value(
            "HOOKLINE_ENDPOINT",
            &format!("{dir}/{}", manifest::MANIFEST_KEY),
        );
        parts.add_nats(config);
        parts
    }

    /// How every Hookline pod reaches NATS, and its log level.
    pub fn add_nats(&mut self, config: &OperatorConfig) {
        self.env_value("HOOKLINE_NATS_URL", &config.nats.url);
        let nats = &config.nats;
        if let Some(cluster) = &nats.cluster_name {
            self.env_value("HOOKLINE_CLUSTER_NAME", cluster);
        }
        if let Some(secret) = &nats.credentials_secret {
            let path = self.mount_secret_file("nats-creds", secret, NATS_CREDS_KEY);
            self.env_value("HOOKLINE_NATS_CREDS", &path);
        }
        if let Some(secret) = &nats.tls_ca_secret {
            let path = self.mount_secret_file("nats-tls-ca", secret, NATS_TLS_CA_KEY);
            self.env_value("HOOKLINE_NATS_TLS_CA", &path);
        }
        if let Some(secret) = &nats.user_password_secret {
            self.secret_env("HOOKLINE_NATS_USER", secret, NATS_USER_KEY);
            self.secret_env("HOOKLINE_NATS_PASSWORD", secret, NATS_PASSWORD_KEY);
        }
        self.env_value("RUST_LOG", &config.log_level);
    }

    /// Mounts every key of ConfigMap `name` read-only as the directory
    /// `/etc/hookline/<volume>` and returns its path; the kubelet updates
    /// the files when the ConfigMap changes.
    pub fn mount_config_map(&mut self, volume: &str, name: &str) -> String {
        let dir = format!("{MOUNT_ROOT}/{volume}");
        self.volumes.push(Volume {
            name: volume.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: name.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        });
        self.mounts.push(read_only_mount(volume, &dir));
        dir
    }

    /// Mounts every key of Secret `secret` read-only as files of the
    /// directory `/etc/hookline/<volume>` and returns its path; like a
    /// single file, they follow the Secret without a restart.
    pub fn mount_secret_dir(&mut self, volume: &str, secret: &str) -> String {
        let dir = format!("{MOUNT_ROOT}/{volume}");
        self.volumes.push(Volume {
            name: volume.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.to_owned()),
                default_mode: Some(SECRET_FILE_MODE),
                ..Default::default()
            }),
            ..Default::default()
        });
        self.mounts.push(read_only_mount(volume, &dir));
        dir
    }

    /// `variable=value`.
    pub fn env_value(&mut self, variable: &str, value: &str) {
        self.env.push(EnvVar {
            name: variable.to_owned(),
            value: Some(value.to_owned()),
            ..Default::default()
        });
    }

    /// `--flag=value`.
    pub fn arg(&mut self, flag: &str, value: &str) {
        self.args.push(format!("{flag}={value}"));
    }

    /// Mounts `key` of Secret `secret` read-only as a file of its own directory
    /// and returns its path, `/etc/hookline/<volume>/<key>`. A mounted file
    /// follows the Secret, so rotation needs no restart.
    pub fn mount_secret_file(&mut self, volume: &str, secret: &str, key: &str) -> String {
        let dir = format!("{MOUNT_ROOT}/{volume}");
        self.volumes.push(Volume {
            name: volume.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.to_owned()),
                items: Some(vec![KeyToPath {
                    key: key.to_owned(),
                    path: file_name(key),
                    ..Default::default()
                }]),
                default_mode: Some(SECRET_FILE_MODE),
                ..Default::default()
            }),
            ..Default::default()
        });
        self.mounts.push(read_only_mount(volume, &dir));
        format!("{dir}/{}", file_name(key))
    }

    /// Sets `variable` from `key` of Secret `secret`.
    pub fn secret_env(&mut self, variable: &str, secret: &str, key: &str) {
        self.env.push(EnvVar {
            name: variable.to_owned(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.to_owned(),
                    key: key.to_owned(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    /// The pod template of `component`: one container running `command` with
    /// these parts, serving health and metrics on `port`.
    pub fn template(
        self,
        owner: &Owner<'_>,
        config: &OperatorConfig,
        container: ContainerSettings<'_>,
    ) -> PodTemplateSpec {
        let ContainerSettings {
            component,
            command,
            port,
            image,
            resources,
            config_hash,
        } = container;
        let mut annotations = BTreeMap::from([
            ("prometheus.io/scrape".to_owned(), "true".to_owned()),
            ("prometheus.io/port".to_owned(), port.to_string()),
            ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
        ]);
        if let Some(hash) = config_hash {
            annotations.insert(CONFIG_HASH_ANNOTATION.to_owned(), hash.to_owned());
        }
        let mut args = self.args;
        args.push(format!("--listen=0.0.0.0:{port}"));
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(owner.labels(component)),
                annotations: Some(annotations),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                automount_service_account_token: Some(false),
                enable_service_links: Some(false),
                image_pull_secrets: (!config.image_pull_secrets.is_empty()).then(|| {
                    config
                        .image_pull_secrets
                        .iter()
                        .map(|name| LocalObjectReference { name: name.clone() })
                        .collect()
                }),
                security_context: Some(pod_security_context()),
                containers: vec![Container {
                    name: component.to_owned(),
                    image: Some(image.to_owned()),
                    image_pull_policy: config.image_pull_policy.clone(),
                    command: Some(vec![command.to_owned()]),
                    args: Some(args),
                    env: Some(self.env),
                    ports: Some(vec![ContainerPort {
                        name: Some(HTTP_PORT_NAME.into()),
                        container_port: i32::from(port),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                    liveness_probe: Some(probe("/healthz", 10, 3)),
                    readiness_probe: Some(probe("/readyz", 5, 2)),
                    resources: Some(resources),
                    security_context: Some(container_security_context()),
                    volume_mounts: Some(self.mounts),
                    ..Default::default()
                }],
                volumes: Some(self.volumes),
                ..Default::default()
            }),
        }
    }
}

/// What differs between the receiver's and the consumer's container.
pub struct ContainerSettings<'a> {
    pub component: &'a str,
    pub command: &'a str,
    pub port: u16,
    pub image: &'a str,
    pub resources: ResourceRequirements,
    /// Rolls the pods when what they read at start changes; `None` for
    /// pods that reload what they read (a pool's directories).
    pub config_hash: Option<&'a str>,
}

/// A Secret key as a file name: keys may hold characters a path should not start with.
fn file_name(key: &str) -> String {
    key.trim_start_matches('.').to_owned()
}

fn read_only_mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(true),
        ..Default::default()
    }
}

fn probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(HTTP_PORT_NAME.into()),
            ..Default::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(2),
        failure_threshold: Some(failure_threshold),
        ..Default::default()
    }
}

/// Non-root, fixed user and group (Secret files are group-readable), and the
/// runtime's default seccomp profile.
fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: Some(RUN_AS),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Read-only root filesystem, no privilege escalation, every capability dropped.
fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The selector of `component`'s pods.
pub fn selector(
    owner: &Owner<'_>,
    component: &str,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        match_labels: Some(owner.selector_labels(component)),
        ..Default::default()
    }
}
