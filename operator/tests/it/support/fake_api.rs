//! An in-memory Kubernetes API behind a real `kube::Client` (`Client::new` over
//! a tower service): objects by path, server-side apply as a deep merge with
//! `resourceVersion`/`generation` bookkeeping, JSON and merge patches, the
//! status subresource, finalizers, optimistic concurrency on `PUT`, discovery
//! of `keda.sh/v1alpha1`, and a log of every request with its Kubernetes verb.
//!
//! Not a real API server: no watch (tests copy objects into the operator's
//! caches with [`FakeApi::sync`]), no admission, no garbage collection.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use hookline_operator::apply::ChildWriters;
use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::watcher;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// One request as RBAC sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// `get`, `list`, `watch`, `create`, `update`, `patch` or `delete`.
    pub verb: String,
    /// API group (`""` for core).
    pub group: String,
    /// Plural resource, with `/status` for the subresource.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub field_manager: Option<String>,
    pub content_type: Option<String>,
}

impl Call {
    pub fn is_write(&self) -> bool {
        matches!(self.verb.as_str(), "create" | "update" | "patch" | "delete")
    }
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    calls: Vec<Call>,
    version: u64,
    keda: bool,
    /// Answers every request with this status (an unreachable API, a conflict).
    fail_with: Option<u16>,
    /// Writes of these plurals are refused with 422 and this message, as an
    /// admission webhook or a policy engine refuses them.
    refused: BTreeMap<String, String>,
    /// Per object path, the body last server-side applied: the fields a
    /// later apply leaves out are removed, as the field manager owned them.
    applied: BTreeMap<String, Value>,
    /// Status fields dropped when a status is written, as a structural schema
    /// that does not know them (an older CRD) prunes them.
    pruned_status_fields: Vec<String>,
}

/// The fake; cheap to clone, all clones share one state.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

/// Where an object lives: `(group, version, plural)`.
pub fn resource_of(api_version: &str, kind: &str) -> (String, String, String) {
    let (group, version) = match api_version.split_once('/') {
        Some((group, version)) => (group.to_owned(), version.to_owned()),
        None => (String::new(), api_version.to_owned()),
    };
    let plural = match kind {
        "Ingress" => "ingresses".to_owned(),
        "PodDisruptionBudget" => "poddisruptionbudgets".to_owned(),
        other => format!("{}s", other.to_ascii_lowercase()),
    };
    (group, version, plural)
}

fn object_path(group: &str, version: &str, plural: &str, namespace: &str, name: &str) -> String {
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    format!("{prefix}/namespaces/{namespace}/{plural}/{name}")
}

impl FakeApi {
    pub fn new(keda: bool) -> FakeApi {
        let fake = FakeApi::default();
        fake.lock().keda = keda;
        fake
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A client whose every request this fake answers.
    pub fn client(&self) -> kube::Client {
        let fake = self.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let fake = fake.clone();
            async move { Ok::<_, Infallible>(fake.handle(request).await) }
        });
        kube::Client::new(service, "default")
    }

    pub fn set_keda(&self, installed: bool) {
        self.lock().keda = installed;
    }

    /// From now on, drops `fields` from every status written (an older CRD).
    pub fn prune_status_fields(&self, fields: &[&str]) {
        self.lock().pruned_status_fields = fields.iter().map(|f| (*f).to_owned()).collect();
    }

    /// Every request from now on gets `code` (`None`: normal service again).
    pub fn fail_with(&self, code: Option<u16>) {
        self.lock().fail_with = code;
    }

    /// Refuses every write of `plural` (e.g. `ingresses`) with 422 and
    /// `message` from now on; `None` accepts them again.
    pub fn refuse(&self, plural: &str, message: Option<&str>) {
        let mut state = self.lock();
        match message {
            Some(message) => state.refused.insert(plural.to_owned(), message.to_owned()),
            None => state.refused.remove(plural),
        };
    }

    /// Stores `object` as a client would have created it.
    pub fn insert(&self, object: &impl Serialize) {
        let value = serde_json::to_value(object).expect("serialisable object");
        let mut state = self.lock();
        let path = path_of(&value);
        let stored = state.created(value);
        state.objects.insert(path, stored);
    }

    /// The stored object of `api_version`/`kind`.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let (group, version, plural) = resource_of(api_version, kind);
        self.lock()
            .objects
            .get(&object_path(&group, &version, &plural, namespace, name))
            .cloned()
    }

    /// The stored object, typed.
    pub fn typed<K: kube::Resource<DynamicType = ()> + DeserializeOwned>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<K> {
        self.get(&K::api_version(&()), &K::kind(&()), namespace, name)
            .map(|value| serde_json::from_value(value).expect("stored object deserialises"))
    }

    /// Every stored object of `kind`.
    pub fn all(&self, kind: &str) -> Vec<Value> {
        self.lock()
            .objects
            .values()
            .filter(|object| object["kind"] == kind)
            .cloned()
            .collect()
    }

    /// Changes a stored object in place (as another client or a controller would).
    pub fn edit(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) {
        let (group, version, plural) = resource_of(api_version, kind);
        let mut state = self.lock();
        state.version += 1;
        let version_now = state.version;
        if let Some(object) = state
            .objects
            .get_mut(&object_path(&group, &version, &plural, namespace, name))
        {
            change(object);
            object["metadata"]["resourceVersion"] = json!(version_now.to_string());
        }
    }

    pub fn remove(&self, api_version: &str, kind: &str, namespace: &str, name: &str) {
        let (group, version, plural) = resource_of(api_version, kind);
        self.lock()
            .objects
            .remove(&object_path(&group, &version, &plural, namespace, name));
    }

    /// What the Deployment controller would report once every pod is ready.
    pub fn make_deployments_available(&self) {
        let mut state = self.lock();
        for object in state.objects.values_mut() {
            if object["kind"] == "Deployment" {
                let replicas = object["spec"]["replicas"].as_i64().unwrap_or(1);
                object["status"] = json!({
                    "observedGeneration": object["metadata"]["generation"],
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "readyReplicas": replicas,
                    "availableReplicas": replicas,
                    "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}],
                });
            }
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    pub fn writes(&self) -> Vec<Call> {
        self.calls().into_iter().filter(Call::is_write).collect()
    }

    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// Copies every stored child into the operator's caches, as its watches would.
    pub fn sync(&self, writers: &mut ChildWriters) {
        fn fill<K>(writer: &mut kube::runtime::reflector::store::Writer<K>, objects: &[Value])
        where
            K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned,
        {
            let kind = K::kind(&());
            writer.apply_watcher_event(&watcher::Event::Init);
            for object in objects.iter().filter(|object| object["kind"] == *kind) {
                let typed: K =
                    serde_json::from_value(object.clone()).expect("stored object deserialises");
                writer.apply_watcher_event(&watcher::Event::InitApply(typed));
            }
            writer.apply_watcher_event(&watcher::Event::InitDone);
        }
        let objects: Vec<Value> = self.lock().objects.values().cloned().collect();
        fill(&mut writers.config_maps, &objects);
        fill(&mut writers.deployments, &objects);
        fill(&mut writers.services, &objects);
        fill(&mut writers.ingresses, &objects);
        fill(&mut writers.disruption_budgets, &objects);
        fill(&mut writers.scalers, &objects);
    }

    async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let body = body.collect_bytes().await.unwrap_or_default();
        let path = parts.uri.path().to_owned();
        let query: BTreeMap<String, String> = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect();
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let mut state = self.lock();
        let target = Target::parse(&path);
        let verb = match (
            parts.method.as_str(),
            target.as_ref().and_then(|t| t.name.as_ref()),
        ) {
            ("GET", Some(_)) => "get",
            ("GET", None) if query.get("watch").is_some_and(|w| w == "true") => "watch",
            ("GET", None) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", _) => "delete",
            _ => "unknown",
        };
        if let Some(target) = &target {
            state.calls.push(Call {
                verb: verb.to_owned(),
                group: target.group.clone(),
                resource: match &target.subresource {
                    Some(sub) => format!("{}/{sub}", target.plural),
                    None => target.plural.clone(),
                },
                namespace: target.namespace.clone(),
                name: target.name.clone(),
                field_manager: query.get("fieldManager").cloned(),
                content_type: content_type.clone(),
            });
        }
        if let Some(code) = state.fail_with {
            return status(code, "injected failure");
        }
        if path == "/apis/keda.sh/v1alpha1" {
            return if state.keda {
                ok(
                    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "keda.sh/v1alpha1",
                    "resources": [{"name": "scaledobjects", "singularName": "scaledobject", "namespaced": true,
                        "kind": "ScaledObject", "verbs": ["get", "list", "watch", "create", "patch", "delete"]}]}),
                )
            } else {
                status(404, "the server could not find the requested resource")
            };
        }
        let Some(target) = target else {
            return status(404, "unknown path");
        };
        if target.group == "keda.sh" && !state.keda {
            return status(404, "the server could not find the requested resource");
        }
        if verb != "get"
            && verb != "list"
            && verb != "watch"
            && let Some(message) = state.refused.get(&target.plural)
        {
            return status(422, &message.clone());
        }
        let request_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        state.serve(&target, verb, content_type.as_deref(), request_body)
    }
}

/// A parsed resource path.
struct Target {
    group: String,
    version: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

impl Target {
    fn parse(path: &str) -> Option<Target> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (group, version, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => (String::new(), (*version).to_owned(), rest),
            ["apis", group, version, rest @ ..] => {
                ((*group).to_owned(), (*version).to_owned(), rest)
            }
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", namespace, rest @ ..] if !rest.is_empty() => {
                (Some((*namespace).to_owned()), rest)
            }
            rest => (None, rest),
        };
        let (plural, name, subresource) = match rest {
            [plural] => (*plural, None, None),
            [plural, name] => (*plural, Some((*name).to_owned()), None),
            [plural, name, sub] => (*plural, Some((*name).to_owned()), Some((*sub).to_owned())),
            _ => return None,
        };
        Some(Target {
            group,
            version,
            plural: plural.to_owned(),
            namespace,
            name,
            subresource,
        })
    }

    fn path(&self, name: &str) -> String {
        object_path(
            &self.group,
            &self.version,
            &self.plural,
            self.namespace.as_deref().unwrap_or("default"),
            name,
        )
    }
}

fn path_of(object: &Value) -> String {
    let (group, version, plural) = resource_of(
        object["apiVersion"].as_str().unwrap_or_default(),
        object["kind"].as_str().unwrap_or_default(),
    );
    object_path(
        &group,
        &version,
        &plural,
        object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default"),
        object["metadata"]["name"].as_str().unwrap_or_default(),
    )
}

impl State {
    fn next_version(&mut self) -> String {
        self.version += 1;
        self.version.to_string()
    }

    /// `object` as stored on creation: uid, resourceVersion, generation.
    fn created(&mut self, mut object: Value) -> Value {
        let version = self.next_version();
        let metadata = &mut object["metadata"];
        if metadata["uid"].is_null() {
            metadata["uid"] = json!(format!("uid-{version}"));
        }
        metadata["resourceVersion"] = json!(version);
        metadata["generation"] = json!(1);
        metadata["creationTimestamp"] = json!("2026-11-30T00:00:00Z");
        object
    }

    fn serve(
        &mut self,
        target: &Target,
        verb: &str,
        content_type: Option<&str>,
        body: Value,
    ) -> Response<Body> {
        match (verb, &target.name) {
            ("get", Some(name)) => match self.objects.get(&target.path(name)) {
                Some(object) => ok(object.clone()),
                None => status(404, &format!("{} {name:?} not found", target.plural)),
            },
            ("list", None) => {
                let prefix = target.path("");
                let items: Vec<Value> = self
                    .objects
                    .iter()
                    .filter(|(path, _)| match &target.namespace {
                        Some(_) => path.starts_with(&prefix),
                        None => path.contains(&format!("/{}/", target.plural)),
                    })
                    .map(|(_, object)| object.clone())
                    .collect();
                ok(
                    json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": self.version.to_string()}, "items": items}),
                )
            }
            ("create", None) => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let path = target.path(&name);
                if self.objects.contains_key(&path) {
                    return status(409, &format!("{} {name:?} already exists", target.plural));
                }
                let mut object = self.created(body);
                object["metadata"]["namespace"] = json!(target.namespace);
                self.objects.insert(path, object.clone());
                respond(StatusCode::CREATED, object)
            }
            ("update", Some(name)) => {
                let path = target.path(name);
                let Some(current) = self.objects.get(&path) else {
                    return status(404, "not found");
                };
                if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                    return status(
                        409,
                        "the object has been modified; please apply your changes to the latest version",
                    );
                }
                let mut object = body;
                object["metadata"]["resourceVersion"] = json!(self.next_version());
                self.objects.insert(path, object.clone());
                ok(object)
            }
            ("patch", Some(name)) => self.patch(target, name, content_type, body),
            ("delete", Some(name)) => {
                let path = target.path(name);
                let Some(object) = self.objects.get_mut(&path) else {
                    return status(404, "not found");
                };
                let has_finalizers = object["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty());
                if has_finalizers {
                    object["metadata"]["deletionTimestamp"] = json!("2026-11-30T00:00:01Z");
                    return ok(object.clone());
                }
                let removed = self.objects.remove(&path).unwrap_or_default();
                ok(removed)
            }
            _ => status(405, "method not allowed here"),
        }
    }

    fn patch(
        &mut self,
        target: &Target,
        name: &str,
        content_type: Option<&str>,
        body: Value,
    ) -> Response<Body> {
        let path = target.path(name);
        let existing = self.objects.get(&path).cloned();
        let content_type = content_type.unwrap_or_default();
        let mut object = match (existing, content_type) {
            (None, "application/apply-patch+yaml") if target.subresource.is_none() => {
                self.applied.insert(path.clone(), body.clone());
                let mut object = self.created(body.clone());
                object["metadata"]["namespace"] = json!(target.namespace);
                object
            }
            (None, _) => return status(404, &format!("{} {name:?} not found", target.plural)),
            (Some(mut current), "application/apply-patch+yaml") => {
                if target.subresource.as_deref() == Some("status") {
                    current["status"] = body["status"].clone();
                    if let Some(status) = current["status"].as_object_mut() {
                        for field in &self.pruned_status_fields {
                            status.remove(field);
                        }
                    }
                } else {
                    let before = current["spec"].clone();
                    if let Some(previous) = self.applied.insert(path.clone(), body.clone()) {
                        remove_dropped(&mut current, &previous, &body);
                    }
                    merge(&mut current, &body);
                    if current["spec"] != before {
                        let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
                        current["metadata"]["generation"] = json!(generation + 1);
                    }
                }
                current
            }
            (Some(mut current), "application/json-patch+json") => {
                let Ok(mut patch) = serde_json::from_value::<json_patch::Patch>(body) else {
                    return status(422, "not a JSON patch");
                };
                // As Kubernetes does: `test` of a missing path against null passes.
                patch.0.retain(|operation| match operation {
                    json_patch::PatchOperation::Test(test) => {
                        !(test.value.is_null() && current.pointer(test.path.as_str()).is_none())
                    }
                    _ => true,
                });
                if json_patch::patch(&mut current, &patch).is_err() {
                    return status(422, "the JSON patch does not apply");
                }
                current
            }
            (Some(mut current), "application/merge-patch+json") => {
                json_patch::merge(&mut current, &body);
                current
            }
            (Some(_), other) => return status(415, &format!("unsupported patch type {other}")),
        };
        object["metadata"]["resourceVersion"] = json!(self.next_version());
        let deleting = !object["metadata"]["deletionTimestamp"].is_null();
        let finalized = object["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
        if deleting && finalized {
            self.objects.remove(&path);
        } else {
            self.objects.insert(path, object.clone());
        }
        ok(object)
    }
}

/// Removes from `current` what the last apply set and this one leaves out.
fn remove_dropped(current: &mut Value, previous: &Value, applied: &Value) {
    if let (Value::Object(current), Value::Object(previous)) = (current, previous) {
        for (key, before) in previous {
            match applied.get(key) {
                None => {
                    current.remove(key);
                }
                Some(now) => {
                    if let Some(field) = current.get_mut(key) {
                        remove_dropped(field, before, now);
                    }
                }
            }
        }
    }
}

/// Server-side apply, simplified: maps merge, everything else is replaced.
fn merge(current: &mut Value, patch: &Value) {
    match (current, patch) {
        (Value::Object(current), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(current.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (current, patch) => *current = patch.clone(),
    }
}

fn respond(code: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap_or_default()))
        .expect("valid response")
}

fn ok(body: Value) -> Response<Body> {
    respond(StatusCode::OK, body)
}

fn status(code: u16, message: &str) -> Response<Body> {
    let reason = match code {
        404 => "NotFound",
        409 => "AlreadyExists",
        _ => "InternalError",
    };
    respond(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}),
    )
}
