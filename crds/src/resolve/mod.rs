//! Provider presets and the one function that turns a spec into a
//! [`ValidatedEndpoint`], reporting every wrong field by its path.
//!
//! One module per section of the spec; each reads its section, records what is
//! wrong in `Problems`, and returns the section's validated form.

mod consumer;
mod parse;
mod pool;
mod presets;
mod request;
mod stream;
mod verification;

pub use parse::{parse_duration, parse_field_source};
pub use pool::resolve_pool;
pub use presets::{Preset, preset};

use crate::defaults;
use crate::naming;
use crate::spec::{ReceiverSpec, SecretRef, WebhookEndpointSpec};
use crate::validated::{ReceiverSettings, SecretSource, ValidatedEndpoint};
use crate::{FieldError, InvalidSpec};

/// Collects field errors so that one pass reports all of them.
#[derive(Default)]
pub(crate) struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Runs a parse, recording its error under `field`.
    fn check<T>(&mut self, field: &str, parsed: Result<T, String>) -> Option<T> {
        parsed.map_err(|message| self.add(field, message)).ok()
    }
}

/// Checks `spec` and applies every default. `namespace` and `name` are the
/// resource's; all errors are reported together, each with its field path.
pub fn resolve(
    namespace: &str,
    name: &str,
    spec: &WebhookEndpointSpec,
) -> Result<ValidatedEndpoint, InvalidSpec> {
    let mut problems = Problems::default();
    if let Err(message) = naming::check_resource_name(name) {
        problems.add("metadata.name", message);
    }
    if let Err(message) = naming::check_namespace(namespace) {
        problems.add("metadata.namespace", message);
    }
    let preset = preset(spec.provider);
    let secret = resolve_secret(spec, &preset, &mut problems);
    let verification = verification::resolve_verification(
        preset.verification,
        spec.verification.as_ref(),
        &mut problems,
    );
    let source_filter = request::resolve_source_filter(
        &spec.allowed_source_ranges,
        spec.trusted_proxy_hops,
        &mut problems,
    );
    let route = request::resolve_route(namespace, name, spec.ingress.as_ref(), &mut problems);
    let request =
        request::resolve_request(&spec.request.clone().unwrap_or_default(), &mut problems);
    let event = request::resolve_event(
        &spec.event.clone().unwrap_or_default(),
        preset.event,
        &mut problems,
    );
    let event_filter =
        request::resolve_event_filter(&spec.event.clone().unwrap_or_default(), &mut problems);
    let url_challenge = preset.url_challenge;
    let stream = stream::resolve_stream(
        namespace,
        name,
        &spec.stream.clone().unwrap_or_default(),
        &mut problems,
    );
    let consumer = consumer::resolve_consumer(
        &spec.consumer.clone().unwrap_or_default(),
        &event,
        &mut problems,
    );
    let receiver = resolve_receiver(&spec.receiver.clone().unwrap_or_default(), &mut problems);
    match verification {
        Some(verification) if problems.0.is_empty() => Ok(ValidatedEndpoint {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            provider: spec.provider,
            secret,
            verification,
            source_filter,
            route,
            request,
            event,
            event_filter,
            url_challenge,
            stream,
            consumer,
            receiver,
        }),
        _ => Err(InvalidSpec(problems.0)),
    }
}

fn resolve_secret(
    spec: &WebhookEndpointSpec,
    preset: &Preset,
    problems: &mut Problems,
) -> SecretSource {
    let SecretRef {
        name,
        key,
        generate,
    } = &spec.secret_ref;
    let key = key.clone().unwrap_or_else(|| defaults::SECRET_KEY.into());
    if name.trim().is_empty() {
        problems.add("spec.secretRef.name", "must not be empty");
    }
    if key.trim().is_empty() {
        problems.add("spec.secretRef.key", "must not be empty");
    }
    let generate = generate.unwrap_or(false);
    if generate && !preset.secret_chosen_by_us {
        problems.add(
            "spec.secretRef.generate",
            format!(
                "{} chooses the signing secret; copy it into the Secret instead",
                spec.provider
            ),
        );
    }
    SecretSource {
        name: name.clone(),
        key,
        generate,
    }
}

fn resolve_receiver(spec: &ReceiverSpec, problems: &mut Problems) -> ReceiverSettings {
    let replicas = spec.replicas.unwrap_or(defaults::RECEIVER_REPLICAS);
    if replicas < 0 {
        problems.add("spec.receiver.replicas", "must not be negative");
    }
    ReceiverSettings {
        replicas,
        resources: spec.resources.clone(),
        image: spec.image.clone(),
    }
}
