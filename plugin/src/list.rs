//! `kubectl hookline list`: what `kubectl get whe` shows, plus the pending
//! count, the last stored event and why an endpoint is not Ready.

use chrono::{DateTime, Utc};
use hookline_api::WebhookEndpoint;
use hookline_api::conditions;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use crate::Result;
use crate::cli::Output;
use crate::table;

/// One endpoint, as `-o json|yaml` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub namespace: String,
    pub name: String,
    /// The `Ready` condition's status; `Unknown` before the operator wrote one.
    pub ready: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_event_time: Option<String>,
    /// Why not Ready (the condition's reason), absent when Ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Row {
    pub fn of(endpoint: &WebhookEndpoint) -> Row {
        let status = endpoint.status.as_ref();
        let ready = status.and_then(|status| {
            status
                .conditions
                .iter()
                .find(|condition| condition.type_ == conditions::READY)
        });
        let not_ready = ready.filter(|condition| condition.status != "True");
        Row {
            namespace: endpoint.namespace().unwrap_or_default(),
            name: endpoint.name_any(),
            ready: ready.map_or_else(|| "Unknown".to_owned(), |c| c.status.clone()),
            url: status.and_then(|status| status.url.clone()),
            pending: status.and_then(|status| status.pending),
            last_event_time: status.and_then(|status| status.last_event_time.clone()),
            reason: not_ready
                .map(|c| c.reason.clone())
                .filter(|r| !r.is_empty()),
            message: not_ready
                .map(|c| c.message.clone())
                .filter(|m| !m.is_empty()),
        }
    }
}

/// Longest message the table shows; `-o yaml` has all of it.
const MESSAGE_WIDTH: usize = 60;

/// The endpoints of `namespace` (every namespace with `None`), printed as `output`.
pub async fn list(
    client: &Client,
    namespace: Option<&str>,
    output: Output,
    now: DateTime<Utc>,
) -> Result<String> {
    let api: Api<WebhookEndpoint> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let mut rows: Vec<Row> = api
        .list(&Default::default())
        .await?
        .items
        .iter()
        .map(Row::of)
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(&rows)? + "\n",
        Output::Yaml => serde_yaml::to_string(&rows)?,
        Output::Table if rows.is_empty() => match namespace {
            Some(namespace) => format!("No WebhookEndpoints found in {namespace} namespace.\n"),
            None => "No WebhookEndpoints found.\n".to_owned(),
        },
        Output::Table => render(&rows, namespace.is_none(), now),
    })
}

/// The table; the NAMESPACE column only across namespaces, as kubectl does.
pub fn render(rows: &[Row], namespaces: bool, now: DateTime<Utc>) -> String {
    let mut headers = vec!["NAME", "READY", "URL", "PENDING", "LAST EVENT", "REASON"];
    if namespaces {
        headers.insert(0, "NAMESPACE");
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let last = row
                .last_event_time
                .as_deref()
                .and_then(|time| DateTime::parse_from_rfc3339(time).ok())
                .map_or_else(
                    || "-".to_owned(),
                    |time| {
                        format!(
                            "{} ago",
                            table::age((now - time.with_timezone(&Utc)).num_seconds())
                        )
                    },
                );
            let reason = match (&row.reason, &row.message) {
                (Some(reason), Some(message)) => format!("{reason}: {}", shorten(message)),
                (Some(reason), None) => reason.clone(),
                _ => String::new(),
            };
            let mut cells = vec![
                row.name.clone(),
                row.ready.clone(),
                row.url.clone().unwrap_or_else(|| "-".into()),
                row.pending.map_or_else(|| "-".into(), |n| n.to_string()),
                last,
                reason,
            ];
            if namespaces {
                cells.insert(0, row.namespace.clone());
            }
            cells
        })
        .collect();
    table::render(&headers, &cells)
}

/// The message's first line, cut at [`MESSAGE_WIDTH`] characters.
fn shorten(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    if line.chars().count() <= MESSAGE_WIDTH {
        return line.to_owned();
    }
    let cut: String = line.chars().take(MESSAGE_WIDTH - 3).collect();
    format!("{cut}...")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, ready: &str) -> Row {
        Row {
            namespace: "default".into(),
            name: name.into(),
            ready: ready.into(),
            url: None,
            pending: None,
            last_event_time: None,
            reason: None,
            message: None,
        }
    }

    #[test]
    fn a_ready_endpoint_shows_its_url_pending_and_last_event() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let rows = [
            Row {
                url: Some("https://hooks.example.com/stripe".into()),
                pending: Some(3),
                last_event_time: Some("2026-12-01T09:58:30Z".into()),
                ..row("stripe", "True")
            },
            Row {
                reason: Some("SecretMissing".into()),
                message: Some(
                    "Secret default/gh-webhook does not exist: create it with the key secret (and a long tail of words)"
                        .into(),
                ),
                ..row("gh", "False")
            },
        ];
        let text = render(&rows, false, now);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME     READY   URL"), "{text}");
        assert!(
            lines[1].contains("https://hooks.example.com/stripe   3         90s ago"),
            "{text}"
        );
        assert!(
            lines[2].ends_with(
                "SecretMissing: Secret default/gh-webhook does not exist: create it with ..."
            ),
            "{text}"
        );
    }
}
