//! Writing the status: server-side apply of the conditions and figures when
//! they differ from what is stored, at most one write of changed live figures
//! per resync, and an Event for each condition that changed for the worse.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hookline_api::naming::FIELD_MANAGER;
use hookline_api::spec::{WebhookEndpoint, WebhookEndpointStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use super::{Figures, Finding, Status, figures, stamp, transitions};
use crate::metrics::Metrics;
use crate::stream::StreamState;
use crate::validate::ValidEndpoint;
use crate::{Error, Result};

/// What a valid endpoint's status shows besides its conditions.
pub struct Details<'a> {
    pub url: Option<String>,
    pub stream: &'a StreamState,
    pub valid: &'a ValidEndpoint,
}

/// Per endpoint, the status last written and what the API server kept of
/// it: an older CRD prunes fields it does not know, and without this every
/// reconcile would write the same status again.
#[derive(Default)]
pub struct WrittenStatuses {
    by_endpoint: Mutex<HashMap<String, Written>>,
}

struct Written {
    sent: WebhookEndpointStatus,
    kept: Option<WebhookEndpointStatus>,
    at: Instant,
}

impl WrittenStatuses {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Written>> {
        self.by_endpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets a deleted endpoint.
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// What a status write needs.
pub struct StatusWriter<'a> {
    pub client: &'a kube::Client,
    pub recorder: &'a Recorder,
    pub metrics: &'a Metrics,
    pub written: &'a WrittenStatuses,
    /// Changed live figures alone are written at most this often.
    pub resync: Duration,
}

impl StatusWriter<'_> {
    /// Writes the status with server-side apply when it differs from the
    /// stored one, and publishes an Event for each condition that changed for
    /// the worse (and for becoming Ready).
    pub async fn write(
        &self,
        endpoint: &WebhookEndpoint,
        findings: Vec<Finding>,
        details: Option<Details<'_>>,
    ) -> Result<()> {
        let previous = endpoint.status.as_ref();
        let generation = endpoint.metadata.generation;
        // Whole seconds: what the API server stores, so what is written equals
        // what is read back.
        let now = k8s_openapi::jiff::Timestamp::now();
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now));
        let previous_conditions = previous
            .map(|status| status.conditions.as_slice())
            .unwrap_or_default();
        let events: Vec<Finding> = transitions(&findings, previous_conditions)
            .into_iter()
            .cloned()
            .collect();
        let conditions = stamp(findings, previous_conditions, generation, &now);
        let key = crate::reconcile::key(endpoint);
        let mut desired = match details {
            Some(details) => {
                let mut status = WebhookEndpointStatus {
                    observed_generation: generation,
                    url: details.url,
                    stream: Some(details.valid.endpoint.stream.name.clone()),
                    served_by: details.valid.pool().map(str::to_owned),
                    conditions,
                    ..Default::default()
                };
                figures(details.stream, previous).apply(&mut status);
                status
            }
            None => WebhookEndpointStatus {
                observed_generation: generation,
                conditions,
                ..previous.cloned().unwrap_or_default()
            },
        };
        if let Some(previous) = previous
            && self.figures_written_recently(&key)
        {
            keep_figures(&mut desired, previous);
        }
        if previous == Some(&desired) || self.already_written(&key, &desired, previous) {
            return Ok(());
        }
        let api: Api<WebhookEndpoint> = Api::namespaced(
            self.client.clone(),
            &endpoint.namespace().unwrap_or_default(),
        );
        let patch = json!({
            "apiVersion": WebhookEndpoint::api_version(&()),
            "kind": WebhookEndpoint::kind(&()),
            "status": desired,
        });
        let kept = api
            .patch_status(
                &endpoint.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(Error::UpdateStatus)?
            .status;
        self.metrics.write("WebhookEndpoint/status");
        if kept.as_ref() != Some(&desired) {
            warn!(
                "the API server did not keep the status as written (a CRD older than the operator drops the fields it does not know): kubectl apply --server-side -f crds/webhookendpoints.hookline.io.yaml"
            );
        }
        self.written.lock().insert(
            key,
            Written {
                sent: desired,
                kept,
                at: Instant::now(),
            },
        );
        for finding in events {
            let type_ = match finding.status {
                Status::True => EventType::Normal,
                Status::False | Status::Unknown => EventType::Warning,
            };
            publish(
                self.recorder,
                self.metrics,
                endpoint,
                type_,
                finding.reason,
                finding.message,
            )
            .await;
        }
        Ok(())
    }

    /// Whether `desired` was written already and the server still holds what
    /// it kept of it: writing it again would change nothing.
    fn already_written(
        &self,
        key: &str,
        desired: &WebhookEndpointStatus,
        stored: Option<&WebhookEndpointStatus>,
    ) -> bool {
        self.written
            .lock()
            .get(key)
            .is_some_and(|written| written.sent == *desired && written.kept.as_ref() == stored)
    }

    /// Whether this replica wrote the endpoint's status less than a resync ago.
    fn figures_written_recently(&self, key: &str) -> bool {
        self.written
            .lock()
            .get(key)
            .is_some_and(|written| written.at.elapsed() < self.resync)
    }
}

/// Keeps the stored live figures (a busy endpoint's change with every event):
/// written at most once per resync, however often the endpoint is reconciled.
fn keep_figures(desired: &mut WebhookEndpointStatus, stored: &WebhookEndpointStatus) {
    Figures::of(stored).apply(desired);
}

/// Publishes an Event on the endpoint (or pool); a failure is logged, never fatal.
pub async fn publish<K: Resource<DynamicType = ()>>(
    recorder: &Recorder,
    metrics: &Metrics,
    endpoint: &K,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    match recorder.publish(&event, &endpoint.object_ref(&())).await {
        Ok(()) => metrics.write("Event"),
        Err(err) => warn!(cause = %err, reason, "cannot publish an Event"),
    }
}
