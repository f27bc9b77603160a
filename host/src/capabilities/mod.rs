//! Host capabilities backed by Kubernetes: [`KubeCluster`] serves the guests' `cluster` import
//! (policy first, then rate limit, then the request with a timeout; a discovery request takes
//! the call's token) and [`events`] records Kubernetes Events, for guests and for the host's own
//! failure reports.

pub mod events;
pub mod policy;
pub mod rate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use kube::core::params::{DeleteParams, GetParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind, Request, Resource};
use kube::Client;
use serde_json::value::RawValue;

use self::policy::{Access, Capabilities, Verb};
use self::rate::TokenBucket;
use crate::metrics::{labels, Metrics};
use crate::runtime::bindings::kubelisten::listener::cluster::{
    ApiError, EventType, ObjectRef, PatchType,
};
use crate::runtime::{Caller, ClusterAccess, ClusterRequest};

/// One listener's policy and limiter.
struct ListenerAccess {
    capabilities: Capabilities,
    bucket: Mutex<TokenBucket>,
}

impl ListenerAccess {
    fn new(capabilities: Capabilities, now: Instant) -> Self {
        let bucket = TokenBucket::new(
            capabilities.rate_limit.qps,
            capabilities.rate_limit.burst,
            now,
        );
        Self {
            capabilities,
            bucket: Mutex::new(bucket),
        }
    }
}

/// Why [`KubeCluster::new`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Two listeners have the same name: they would share grants and rate limit.
    #[error(
        "listener name {0:?} is used twice; listener names must be unique across all watches \
         (capabilities are per listener name)"
    )]
    DuplicateListener(String),
}

/// Serves guests' cluster calls against a real API server.
pub struct KubeCluster {
    client: Client,
    handle: tokio::runtime::Handle,
    listeners: std::sync::RwLock<HashMap<String, Arc<ListenerAccess>>>,
    discovered: Mutex<HashMap<(String, String), (ApiResource, bool)>>,
    timeout: Duration,
    recorder: events::EventRecorder,
    metrics: OnceLock<Arc<Metrics>>,
    /// Set when this process must not write to the cluster any more ([`KubeCluster::stop_calls`]).
    stopped: tokio_util::sync::CancellationToken,
}

impl KubeCluster {
    /// Access for `listeners` (name → capabilities). Requests run on `handle` with `timeout`
    /// each.
    ///
    /// # Errors
    /// [`Error::DuplicateListener`] when a name appears twice (configurations are validated
    /// before, so this should not happen; grants are never merged).
    pub fn new(
        client: Client,
        handle: tokio::runtime::Handle,
        listeners: impl IntoIterator<Item = (String, Capabilities)>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let now = Instant::now();
        let mut map = HashMap::new();
        for (name, caps) in listeners {
            if map.contains_key(&name) {
                return Err(Error::DuplicateListener(name));
            }
            let access = Arc::new(ListenerAccess::new(caps, now));
            map.insert(name, access);
        }
        Ok(Self {
            recorder: events::EventRecorder::new(client.clone()),
            client,
            handle,
            listeners: std::sync::RwLock::new(map),
            discovered: Mutex::new(HashMap::new()),
            timeout,
            metrics: OnceLock::new(),
            stopped: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// Refuses every cluster call from now on and cancels those in flight (a request already
    /// sent may still be applied). For when the process stops dispatching with guest calls still
    /// running (leadership lost, the shutdown grace over): those calls may finish their own work
    /// within their limits, but no longer act on the cluster alongside the new leader.
    pub fn stop_calls(&self) {
        self.stopped.cancel();
    }

    /// Counts policy denials into `metrics` (`kubelisten_cluster_calls_denied_total{listener}`)
    /// from now on; the first call wins.
    pub fn count_into(&self, metrics: Arc<Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// Sets (or replaces, after a hot swap) the capabilities of `listener`; its rate limit
    /// starts over with a full bucket.
    pub fn set_capabilities(&self, listener: &str, capabilities: Capabilities) {
        let access = Arc::new(ListenerAccess::new(capabilities, Instant::now()));
        self.listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(listener.to_string(), access);
    }

    fn deny(&self, caller: &Caller, what: &str, message: String) -> ApiError {
        if let Some(metrics) = self.metrics.get() {
            metrics
                .cluster_denials
                .get_or_create(&labels([("listener", &caller.listener)]))
                .inc();
        }
        tracing::warn!(listener = %caller.listener, request = what, error = %message, "cluster call denied by policy");
        ApiError::ForbiddenByPolicy(message)
    }

    /// Kind → resource and scope, when discovery already found it.
    fn discovered(&self, api_version: &str, kind: &str) -> Option<(ApiResource, bool)> {
        self.discovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(api_version.to_string(), kind.to_string()))
            .cloned()
    }

    /// Drops what discovery found for a kind (its CRD was deleted, or recreated with another
    /// scope or plural): the next call asks again.
    fn forget(&self, api_version: &str, kind: &str) {
        self.discovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(api_version.to_string(), kind.to_string()));
    }

    /// Kind → resource and scope, through discovery (one request; successes are cached).
    async fn discover(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<(ApiResource, bool), ApiError> {
        let key = (api_version.to_string(), kind.to_string());
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (ar, caps) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 404 => {
                    ApiError::NotFound(format!("no kind {kind} in {api_version}"))
                }
                kube::Error::Discovery(d) => {
                    ApiError::NotFound(format!("no kind {kind} in {api_version}: {d}"))
                }
                other => api_error(other),
            })?;
        let namespaced = caps.scope == kube::discovery::Scope::Namespaced;
        self.discovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, (ar.clone(), namespaced));
        Ok((ar, namespaced))
    }

    /// For a `get`, `patch`, `patch-status` or `delete` without a namespace that the policy
    /// refused: the "give a namespace" message when the kind is namespaced and the listener
    /// would be allowed the call in the event's namespace (discovered on the call's token).
    /// `None` when the denial stands.
    async fn missing_namespace(
        &self,
        target: &Target,
        request: &ClusterRequest,
        pre: &Access<'_>,
        access: &ListenerAccess,
        caller: &Caller,
    ) -> Option<String> {
        let named = matches!(
            request,
            ClusterRequest::Get(_)
                | ClusterRequest::Patch(..)
                | ClusterRequest::PatchStatus(..)
                | ClusterRequest::Delete(_)
        );
        let in_event_namespace = Access {
            namespace: caller.event_namespace.as_deref(),
            ..*pre
        };
        if !named
            || target.namespace.is_some()
            || in_event_namespace.namespace.is_none()
            || access
                .capabilities
                .check(&in_event_namespace, caller.event_namespace.as_deref())
                .is_err()
        {
            return None;
        }
        // Asked afresh: the kind may have been recreated with another scope since it was cached.
        let (ar, namespaced) = match self.discover(&target.api_version, &target.kind).await {
            Ok(found) => found,
            // An unknown kind: the policy's answer is the more useful one.
            Err(_) => return None,
        };
        // Only for a resource the listener is granted in the event's namespace: for any other
        // the denial (logged and counted) is the answer.
        let resource = target.resource(&ar);
        let granted = Access {
            resource: Some(&resource),
            ..in_event_namespace
        };
        (namespaced
            && access
                .capabilities
                .check(&granted, caller.event_namespace.as_deref())
                .is_ok())
        .then(|| format!("{} is namespaced: give a namespace", target.kind))
    }

    /// The policy's verdict on `target` once discovery found its resource `ar` and scope; the
    /// error names the grant that would be needed.
    fn check_discovered(
        &self,
        target: &Target,
        access: &ListenerAccess,
        caller: &Caller,
        ar: &ApiResource,
        namespaced: bool,
    ) -> Result<(), String> {
        let resource = target.resource(ar);
        let full = Access {
            group: target.group(),
            resource: Some(&resource),
            verb: target.verb,
            namespace: if namespaced {
                target.namespace.as_deref()
            } else {
                None
            },
        };
        access
            .capabilities
            .check(&full, caller.event_namespace.as_deref())
    }

    /// Takes one token of the listener's rate limit, waiting at most the request timeout.
    async fn take_token(&self, caller: &Caller, access: &ListenerAccess) -> Result<(), ApiError> {
        let reserved = access
            .bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reserve(Instant::now(), self.timeout);
        match reserved {
            None => Err(ApiError::Timeout(format!(
                "rate limit of listener {} exceeded",
                caller.listener
            ))),
            Some(wait) => {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                Ok(())
            }
        }
    }

    async fn perform(
        &self,
        caller: &Caller,
        access: &ListenerAccess,
        request: ClusterRequest,
    ) -> Result<String, ApiError> {
        // Every call takes one token first, whatever comes of it (as the API server's priority
        // and fairness comes before its authorization): a loop of denied or invalid calls is held
        // to the listener's rate like any other, with its log lines.
        self.take_token(caller, access).await?;
        let target = Target::of(&request, caller)?;
        let what = target.verb.as_str();
        // Events are written through `record-event` only, which names the listener as their
        // reporting controller: one created, applied or patched directly could pass for (or
        // rewrite) the host's own failure Warnings, or any other controller's; deleting one
        // would hide it.
        if !matches!(
            request,
            ClusterRequest::Get(_)
                | ClusterRequest::List { .. }
                | ClusterRequest::RecordEvent { .. }
        ) && target.kind == "Event"
            && matches!(
                target.api_version.as_str(),
                "v1" | "events.k8s.io/v1" | "events.k8s.io/v1beta1"
            )
        {
            let message = "Events are written with record-event only (reporting controller kubelisten/<listener>): not created, applied, patched or deleted directly".to_string();
            return Err(self.deny(caller, what, message));
        }
        let group = target.group();
        // Policy before anything leaves the host: first what is known without discovery...
        let pre = Access {
            group,
            resource: None,
            verb: target.verb,
            namespace: target.namespace.as_deref(),
        };
        if access
            .capabilities
            .check(&pre, caller.event_namespace.as_deref())
            .is_err()
        {
            // A namespaced object named without its namespace, by a listener granted that kind
            // in the event's namespace, is a mistake in the call, not a missing grant: the
            // denial would otherwise ask for `namespaces: "*"`, every namespace.
            if let Some(message) = self
                .missing_namespace(&target, &request, &pre, access, caller)
                .await
            {
                return Err(ApiError::Invalid(message));
            }
            // Name the grant that would be needed, with kube's guess of the plural.
            let (_, version) = target
                .api_version
                .rsplit_once('/')
                .unwrap_or(("", &target.api_version));
            // kube's guess reads the kind's last two letters (it panics on one).
            let guess = if target.kind.len() < 2 {
                format!("{}s", target.kind.to_ascii_lowercase())
            } else {
                ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &target.kind)).plural
            };
            let guess = if target.status {
                format!("{guess}/status")
            } else {
                guess
            };
            let named = Access {
                resource: Some(&guess),
                ..pre
            };
            let message = access
                .capabilities
                .check(&named, caller.event_namespace.as_deref())
                .err()
                .unwrap_or_default();
            return Err(self.deny(caller, what, message));
        }
        // ...then discovery, if the cache cannot answer (on the call's token, so unknown kinds
        // cannot flood discovery)...
        // A CRD deleted and created again may have another scope or plural: a cached namespaced
        // kind named without a namespace is asked again, and an answer that the path itself is
        // not served drops the cached entry (below).
        let needs_namespace = |namespaced: bool| {
            namespaced
                && target.namespace.is_none()
                && !matches!(request, ClusterRequest::List { .. })
        };
        // A list in a namespace of a kind cached as cluster-scoped is asked again too (it would
        // read every namespace if the kind had become namespaced).
        let doubtful = |namespaced: bool| {
            needs_namespace(namespaced)
                || (!namespaced
                    && target.namespace.is_some()
                    && matches!(request, ClusterRequest::List { .. }))
        };
        let cached = self
            .discovered(&target.api_version, &target.kind)
            .filter(|hit| !doubtful(hit.1));
        let from_cache = cached.is_some();
        let (mut ar, mut namespaced) = match cached {
            Some(hit) => hit,
            None => self.discover(&target.api_version, &target.kind).await?,
        };
        // ...then the policy on the discovered resource; a denial based on a cached answer is
        // checked once more on a fresh one...
        let mut denial = self.check_discovered(&target, access, caller, &ar, namespaced);
        if from_cache && denial.is_err() {
            (ar, namespaced) = self.discover(&target.api_version, &target.kind).await?;
            denial = self.check_discovered(&target, access, caller, &ar, namespaced);
        }
        if needs_namespace(namespaced) {
            return Err(ApiError::Invalid(format!(
                "{} is namespaced: give a namespace",
                target.kind
            )));
        }
        if let Err(message) = denial {
            return Err(self.deny(caller, what, message));
        }
        let namespace = if namespaced {
            target.namespace.clone()
        } else {
            None
        };
        // ...then the request.
        let req = Request::new(DynamicObject::url_path(&ar, namespace.as_deref()));
        let manager = format!("kubelisten/{}", caller.listener);
        let built = match request {
            ClusterRequest::Get(r) => req.get(&r.name, &GetParams::default()),
            ClusterRequest::List {
                options,
                continue_from,
                ..
            } => req.list(&ListParams {
                label_selector: options.label_selector,
                field_selector: options.field_selector,
                limit: options.limit,
                continue_token: continue_from.filter(|t| !t.is_empty()),
                ..ListParams::default()
            }),
            ClusterRequest::Create(object) => req.create(
                &PostParams {
                    field_manager: Some(manager.clone()),
                    ..PostParams::default()
                },
                with_namespace(&object, namespace.as_deref())?,
            ),
            ClusterRequest::Apply(object) => req.patch(
                &target.name,
                &PatchParams::apply(&manager),
                // Sent as written (its members were read by `Target::parse`).
                &Patch::Apply(
                    RawValue::from_string(object)
                        .map_err(|e| ApiError::Invalid(format!("object is not JSON: {e}")))?,
                ),
            ),
            // Built as a merge patch of the checked text, then given its own content type: a
            // JSON patch is not parsed into a tree either.
            ClusterRequest::Patch(r, ty, patch) => req
                .patch(
                    &r.name,
                    &PatchParams::default(),
                    &Patch::Merge(patch_of(ty, &patch)?),
                )
                .map(|http| with_patch_type(http, ty)),
            ClusterRequest::PatchStatus(r, ty, patch) => req
                .patch_subresource(
                    "status",
                    &r.name,
                    &PatchParams::default(),
                    &Patch::Merge(patch_of(ty, &patch)?),
                )
                .map(|http| with_patch_type(http, ty)),
            ClusterRequest::Delete(r) => req.delete(&r.name, &DeleteParams::background()),
            ClusterRequest::RecordEvent {
                about,
                kind,
                reason,
                message,
            } => {
                // The uid is known for the event's own object only: an Event about another
                // object has none (no lookup that the listener's grants might not allow), so
                // `kubectl describe` does not list it (`kubectl get events` does).
                let uid = caller
                    .event_object
                    .as_ref()
                    .and_then(|object| object.uid_of(&about));
                let regarding = events::reference(&about, uid);
                return self
                    .recorder
                    .publish(
                        &manager,
                        &regarding,
                        kind == EventType::Warning,
                        &reason,
                        &message,
                    )
                    .await
                    .map(|()| String::new())
                    .map_err(api_error);
            }
        };
        let mut http = built.map_err(|e| ApiError::Invalid(e.to_string()))?;
        if let Ok(agent) = http::HeaderValue::from_str(&manager) {
            http.headers_mut().insert(http::header::USER_AGENT, agent);
        }
        // Read up to the bound: a list of a whole cluster's objects must not fill host memory
        // (nor, copied into the guest, trap it on its memory limit).
        let body = match self.client.request_stream(http).await {
            Ok(body) => body,
            Err(err) => {
                if path_not_served(&err) {
                    self.forget(&target.api_version, &target.kind);
                }
                return Err(api_error(err));
            }
        };
        let mut bytes = Vec::new();
        futures::AsyncReadExt::read_to_end(
            &mut futures::AsyncReadExt::take(body, MAX_RESPONSE_BYTES as u64 + 1),
            &mut bytes,
        )
        .await
        .map_err(|e| ApiError::Other(format!("reading the response: {e}")))?;
        if bytes.len() > MAX_RESPONSE_BYTES {
            return Err(ApiError::Other(format!(
                "the response is larger than {} MiB: list fewer objects at once (list-options limit, label or field selectors)",
                MAX_RESPONSE_BYTES >> 20
            )));
        }
        String::from_utf8(bytes).map_err(|e| ApiError::Other(format!("response is not UTF-8: {e}")))
    }
}

impl ClusterAccess for KubeCluster {
    fn call(&self, caller: &Caller, request: ClusterRequest) -> Result<String, ApiError> {
        let access = self
            .listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&*caller.listener)
            .cloned();
        let Some(access) = access else {
            return Err(ApiError::ForbiddenByPolicy(format!(
                "listener {} has no capabilities (default deny)",
                caller.listener
            )));
        };
        self.call_with(caller, &access, request)
    }
}

/// [`KubeCluster::granting`]'s access: one listener's calls with grants of their own.
struct Granted {
    cluster: Arc<KubeCluster>,
    access: ListenerAccess,
}

impl ClusterAccess for Granted {
    fn call(&self, caller: &Caller, request: ClusterRequest) -> Result<String, ApiError> {
        self.cluster.call_with(caller, &self.access, request)
    }
}

impl KubeCluster {
    /// Access for code of a listener that runs before its version does (the start code of a
    /// new version, tried at load): with `capabilities` and a rate limit of their own, whatever
    /// the listener's name is granted now ([`KubeCluster::set_capabilities`]).
    pub fn granting(self: &Arc<Self>, capabilities: Capabilities) -> Arc<dyn ClusterAccess> {
        Arc::new(Granted {
            cluster: self.clone(),
            access: ListenerAccess::new(capabilities, Instant::now()),
        })
    }

    /// Performs `request` for `caller` with `access`.
    fn call_with(
        &self,
        caller: &Caller,
        access: &ListenerAccess,
        request: ClusterRequest,
    ) -> Result<String, ApiError> {
        // The request's own bound, and never past what the guest's call has left.
        let limit = caller
            .time_left
            .map_or(self.timeout * 2, |left| left.min(self.timeout * 2));
        let stopping = || {
            ApiError::Other(
                "kubelisten has stopped dispatching (leadership lost or shutdown): no more cluster calls"
                    .into(),
            )
        };
        if self.stopped.is_cancelled() {
            return Err(stopping());
        }
        self.handle.block_on(async {
            tokio::select! {
                timed = tokio::time::timeout(limit, self.perform(caller, access, request)) => match timed {
                    Ok(result) => result,
                    Err(_) => Err(ApiError::Timeout(format!("no answer within {limit:?}"))),
                },
                () = self.stopped.cancelled() => Err(stopping()),
            }
        })
    }
}

/// Largest response a guest's call may return, in bytes.
const MAX_RESPONSE_BYTES: usize = 8 << 20;

/// What a request is about, for the policy.
struct Target {
    api_version: String,
    kind: String,
    namespace: Option<String>,
    name: String,
    verb: Verb,
    status: bool,
}

impl Target {
    /// The API group of `api_version` (`""` for the core group).
    fn group(&self) -> &str {
        self.api_version.rsplit_once('/').map_or("", |(g, _)| g)
    }

    /// The resource the policy checks: the plural, with `/status` for `patch-status`.
    fn resource(&self, ar: &ApiResource) -> String {
        if self.status {
            format!("{}/status", ar.plural)
        } else {
            ar.plural.clone()
        }
    }

    /// What `request` is about, once every guest-supplied part of the URL it would build (name,
    /// namespace, group and version) is a valid path segment.
    fn of(request: &ClusterRequest, caller: &Caller) -> Result<Self, ApiError> {
        check_sizes(request)?;
        let target = Self::parse(request, caller)?;
        target.validate(request)?;
        Ok(target)
    }

    /// Refuses names and namespaces that would reach another URL than the one the policy checks
    /// (`p/status`, `..`, `p?dryRun=All`), before the policy, discovery or any request.
    fn validate(&self, request: &ClusterRequest) -> Result<(), ApiError> {
        let (name, namespace, name_needed) = match request {
            ClusterRequest::Get(_)
            | ClusterRequest::Delete(_)
            | ClusterRequest::Patch(..)
            | ClusterRequest::PatchStatus(..) => ("ref.name", "ref.namespace", true),
            ClusterRequest::List { .. } => ("", "namespace", false),
            ClusterRequest::Create(_) => ("metadata.name", "metadata.namespace", false),
            ClusterRequest::Apply(_) => ("metadata.name", "metadata.namespace", true),
            ClusterRequest::RecordEvent { .. } => ("about.name", "about.namespace", false),
        };
        if name_needed || !self.name.is_empty() {
            path_segment(name, &self.name)?;
        }
        if let Some(ns) = &self.namespace {
            path_segment(namespace, ns)?;
        }
        if let ClusterRequest::RecordEvent { about, .. } = request {
            // The Event's target is the Events collection; what the guest names is `about`,
            // copied into the Event's `regarding` (which the API server does not check) and
            // kept in the recorder's series cache: it is checked like any request's target.
            // The Event's name is made from the object's name.
            path_segment(name, &about.name)?;
            kind_name("about.kind", &about.kind)?;
            return api_version("about.apiVersion", &about.api_version);
        }
        let kind_field = match request {
            ClusterRequest::Create(_) | ClusterRequest::Apply(_) | ClusterRequest::List { .. } => {
                "kind"
            }
            _ => "ref.kind",
        };
        kind_name(kind_field, &self.kind)?;
        api_version("apiVersion", &self.api_version)
    }

    fn parse(request: &ClusterRequest, caller: &Caller) -> Result<Self, ApiError> {
        let from_ref = |r: &ObjectRef, verb, status| Target {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            verb,
            status,
        };
        Ok(match request {
            ClusterRequest::Get(r) => from_ref(r, Verb::Get, false),
            ClusterRequest::Delete(r) => from_ref(r, Verb::Delete, false),
            ClusterRequest::Patch(r, ..) => from_ref(r, Verb::Patch, false),
            ClusterRequest::PatchStatus(r, ..) => from_ref(r, Verb::Patch, true),
            ClusterRequest::List {
                api_version,
                kind,
                namespace,
                ..
            } => Target {
                api_version: api_version.clone(),
                kind: kind.clone(),
                namespace: namespace.clone(),
                name: String::new(),
                verb: Verb::List,
                status: false,
            },
            ClusterRequest::Create(object) | ClusterRequest::Apply(object) => {
                let head = Head::parse(object)?;
                Target {
                    api_version: head
                        .api_version
                        .ok_or_else(|| ApiError::Invalid("object has no apiVersion".into()))?,
                    kind: head
                        .kind
                        .ok_or_else(|| ApiError::Invalid("object has no kind".into()))?,
                    // A namespaced object without a namespace goes to the event object's namespace.
                    namespace: head.namespace.or_else(|| caller.event_namespace.clone()),
                    name: head.name.unwrap_or_default(),
                    verb: if matches!(request, ClusterRequest::Apply(_)) {
                        Verb::Apply
                    } else {
                        Verb::Create
                    },
                    status: false,
                }
            }
            ClusterRequest::RecordEvent { about, .. } => Target {
                api_version: "events.k8s.io/v1".into(),
                kind: "Event".into(),
                namespace: Some(about.namespace.clone().unwrap_or_else(|| "default".into())),
                name: String::new(),
                verb: Verb::Create,
                status: false,
            },
        })
    }
}

/// Longest name, namespace, kind, group or version a guest may send, in bytes: the longest any
/// Kubernetes object name may be (a DNS subdomain). Longer strings would only be refused by the
/// API server, or, in a `record-event`'s `about`, stored unchecked in the Event and in the host's
/// series cache.
const MAX_SEGMENT_BYTES: usize = 253;

/// Checks a guest-supplied apiVersion (`field`): its group, when it has one, and its version are
/// URL path segments.
///
/// # Errors
/// [`ApiError::Invalid`] naming the field (`<field> (group)` or `<field> (version)`).
fn api_version(field: &str, value: &str) -> Result<(), ApiError> {
    let (group, version) = value.rsplit_once('/').unwrap_or(("", value));
    if !group.is_empty() {
        path_segment(&format!("{field} (group)"), group)?;
    }
    path_segment(&format!("{field} (version)"), version)
}

/// Checks that a guest-supplied `value` of `field` is one URL path segment: the rule of
/// apimachinery's `IsValidPathSegmentName` (not empty, `.` or `..`; no `/` or `%`), plus no `?`
/// or `#`, which kube-core would put into the URL unescaped, and at most [`MAX_SEGMENT_BYTES`].
///
/// # Errors
/// [`ApiError::Invalid`] naming the field, the value and the problem.
fn path_segment(field: &str, value: &str) -> Result<(), ApiError> {
    if value.len() > MAX_SEGMENT_BYTES {
        return Err(ApiError::Invalid(format!(
            "{field} {:?}... is longer than {MAX_SEGMENT_BYTES} bytes",
            crate::runtime::truncate_utf8(value, 32)
        )));
    }
    let problem = match value {
        "" => Some("may not be empty".to_string()),
        "." | ".." => Some(format!("may not be {value:?}")),
        _ => value
            .chars()
            .find(|c| matches!(c, '/' | '%' | '?' | '#') || c.is_control())
            .map(|c| format!("may not contain {c:?}")),
    };
    match problem {
        Some(problem) => Err(ApiError::Invalid(format!("{field} {value:?} {problem}"))),
        None => Ok(()),
    }
}

/// Checks that `value` can be a kind: ASCII letters and digits, starting with a letter (as every
/// Kubernetes kind is), so nothing else reaches discovery, the policy's messages or the logs.
///
/// # Errors
/// [`ApiError::Invalid`] naming the field and the value.
fn kind_name(field: &str, value: &str) -> Result<(), ApiError> {
    let mut chars = value.chars();
    let valid = value.len() <= MAX_SEGMENT_BYTES
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(ApiError::Invalid(format!(
            "{field} {:?} is not a kind (ASCII letters and digits, starting with a letter, at most \
             {MAX_SEGMENT_BYTES})",
            crate::runtime::truncate_utf8(value, 64)
        )))
    }
}

/// What the policy reads of a guest's object: its `apiVersion`, `kind`, `metadata.name` and
/// `metadata.namespace` (each when it is a string), read without building anything of the rest
/// (a `serde_json::Value`, or even a map of its members, costs many times the text: a guest
/// could make the host allocate hundreds of MiB from a body its memory limit allows). One of
/// these members given twice is `invalid`, so the body can be sent as the guest wrote it: what
/// goes out is what the policy checked.
#[derive(Default)]
struct Head<'a> {
    api_version: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
    /// The `metadata` member's text, borrowed from the body, when it is an object.
    metadata: Option<&'a RawValue>,
    /// Whether `metadata` has a `namespace` member (of any type).
    has_namespace: bool,
}

impl<'a> Head<'a> {
    /// Reads `text`, which must be a JSON object.
    fn parse(text: &'a str) -> Result<Self, ApiError> {
        let invalid = |e: serde_json::Error| {
            let e = e.to_string();
            match e.strip_prefix(DUPLICATE) {
                Some(member) => ApiError::Invalid(format!("object member {member} is given twice")),
                None => ApiError::Invalid(format!("object is not a JSON object: {e}")),
            }
        };
        let top: Members<'a> = serde_json::from_str(text).map_err(invalid)?;
        let mut head = Head {
            api_version: top.text("apiVersion"),
            kind: top.text("kind"),
            ..Head::default()
        };
        if let Some(metadata) = top.get("metadata") {
            // Not an object: left for the API server to refuse.
            match serde_json::from_str::<Members<'a>>(metadata.get()) {
                Ok(members) => {
                    head.name = members.text("name");
                    head.namespace = members.text("namespace");
                    head.has_namespace = members.get("namespace").is_some();
                    head.metadata = Some(metadata);
                }
                Err(e) if e.to_string().starts_with(DUPLICATE) => return Err(invalid(e)),
                Err(_) => {}
            }
        }
        Ok(head)
    }
}

/// The start of the error for a member the policy reads given twice.
const DUPLICATE: &str = "duplicate member ";

/// The members of a JSON object the policy reads (see [`Head`]), borrowed from the text; the
/// others are skipped without being kept.
struct Members<'a>(Vec<(&'static str, &'a RawValue)>);

impl<'a> Members<'a> {
    fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    /// The member `name` if it is a string.
    fn text(&self, name: &str) -> Option<String> {
        serde_json::from_str(self.get(name)?.get()).ok()
    }
}

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                const READ: [&str; 5] = ["apiVersion", "kind", "metadata", "name", "namespace"];
                let mut members = Members(Vec::new());
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match READ.iter().find(|n| **n == key) {
                        Some(name) if members.get(name).is_some() => {
                            return Err(serde::de::Error::custom(format!("{DUPLICATE}{name:?}")));
                        }
                        Some(name) => members.0.push((name, map.next_value()?)),
                        None => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(members)
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// The object JSON to send: `object` as the guest wrote it, with `"namespace"` added to its
/// `metadata` object when `namespace` is given and it has none.
fn with_namespace(object: &str, namespace: Option<&str>) -> Result<Vec<u8>, ApiError> {
    let head = Head::parse(object)?;
    let (Some(ns), Some(metadata), false) = (namespace, head.metadata, head.has_namespace) else {
        return Ok(object.as_bytes().to_vec());
    };
    // The metadata's text is borrowed from `object`: its `{` is at this offset.
    let open = metadata.get().as_ptr() as usize - object.as_ptr() as usize;
    let empty = metadata.get()[1..].trim_start().starts_with('}');
    let ns = serde_json::to_string(ns).map_err(|e| ApiError::Invalid(e.to_string()))?;
    let mut sent = Vec::with_capacity(object.len() + ns.len() + 16);
    sent.extend_from_slice(&object.as_bytes()[..=open]);
    sent.extend_from_slice(b"\"namespace\":");
    sent.extend_from_slice(ns.as_bytes());
    if !empty {
        sent.push(b',');
    }
    sent.extend_from_slice(&object.as_bytes()[open + 1..]);
    Ok(sent)
}

/// A guest's patch as its text, checked to be JSON, and for a JSON patch (RFC 6902) a list of
/// operations with a known `op` and a `path` (their values are not parsed).
fn patch_of(ty: PatchType, patch: &str) -> Result<Box<RawValue>, ApiError> {
    #[derive(serde::Deserialize)]
    struct Operation<'a> {
        #[serde(borrow)]
        op: std::borrow::Cow<'a, str>,
        #[allow(dead_code)]
        path: String,
    }
    if ty == PatchType::Json {
        let operations: Vec<Operation<'_>> = serde_json::from_str(patch)
            .map_err(|e| ApiError::Invalid(format!("not a JSON patch: {e}")))?;
        if let Some(bad) = operations.iter().find(|o| {
            !matches!(
                &*o.op,
                "add" | "remove" | "replace" | "move" | "copy" | "test"
            )
        }) {
            return Err(ApiError::Invalid(format!(
                "not a JSON patch: unknown op {:?}",
                bad.op
            )));
        }
    }
    serde_json::from_str(patch).map_err(|e| ApiError::Invalid(format!("patch is not JSON: {e}")))
}

/// `http` (a patch request built as a merge patch) with the content type of `ty`.
fn with_patch_type(mut http: http::Request<Vec<u8>>, ty: PatchType) -> http::Request<Vec<u8>> {
    let content_type = match ty {
        PatchType::Merge => "application/merge-patch+json",
        PatchType::Json => "application/json-patch+json",
    };
    http.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    http
}

/// Largest object or patch a guest may send, in bytes: the API server's own request body limit
/// (`--max-request-body-bytes`, 3 MiB; etcd keeps at most 1.5 MiB per object). Larger ones are
/// refused before they are read.
const MAX_BODY_BYTES: usize = 3 << 20;

/// Longest label or field selector a guest may send, in bytes (the URL holds at most 64 KiB).
const MAX_SELECTOR_BYTES: usize = 16 << 10;

/// Refuses bodies and selectors no API server would accept, before anything reads them.
fn check_sizes(request: &ClusterRequest) -> Result<(), ApiError> {
    let body = match request {
        ClusterRequest::Create(body)
        | ClusterRequest::Apply(body)
        | ClusterRequest::Patch(_, _, body)
        | ClusterRequest::PatchStatus(_, _, body) => Some(body),
        _ => None,
    };
    if let Some(body) = body.filter(|b| b.len() > MAX_BODY_BYTES) {
        return Err(ApiError::Invalid(format!(
            "the object or patch is {} bytes, more than the API server's request limit of {} MiB",
            body.len(),
            MAX_BODY_BYTES >> 20
        )));
    }
    if let ClusterRequest::List { options, .. } = request {
        for (field, selector) in [
            ("label-selector", &options.label_selector),
            ("field-selector", &options.field_selector),
        ] {
            if let Some(selector) = selector.as_ref().filter(|s| s.len() > MAX_SELECTOR_BYTES) {
                return Err(ApiError::Invalid(format!(
                    "{field} is {} bytes, more than {} KiB",
                    selector.len(),
                    MAX_SELECTOR_BYTES >> 10
                )));
            }
        }
    }
    Ok(())
}

/// Whether `err` says the request's path is not served at all (a 404 naming no object: the
/// resource is gone or has another scope or plural), rather than that the object is not found.
fn path_not_served(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 404
        && s.details.as_ref().is_none_or(|d| d.name.is_empty()))
}

/// Maps a kube error to the guest's typed error.
fn api_error(err: kube::Error) -> ApiError {
    match err {
        kube::Error::Api(s) => match s.code {
            404 => ApiError::NotFound(s.message),
            409 => ApiError::Conflict(s.message),
            403 => ApiError::ForbiddenByRbac(s.message),
            400 | 422 => ApiError::Invalid(s.message),
            408 | 504 => ApiError::Timeout(s.message),
            _ => ApiError::Other(format!("{} {}: {}", s.code, s.reason, s.message)),
        },
        other => ApiError::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::bindings::kubelisten::listener::cluster::ListOptions;

    /// A fake API server's answer: `body` as JSON with `status`.
    fn json_response(status: u16, body: &serde_json::Value) -> http::Response<kube::client::Body> {
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(kube::client::Body::from(body.to_string().into_bytes()))
            .unwrap()
    }

    /// Every request the fake API server saw: `METHOD path?query`.
    type Seen = Arc<Mutex<Vec<String>>>;

    /// An API server that knows the core `v1` group (pods, namespaced) and answers any pod
    /// request with a pod; everything else is 404.
    fn fake_api(seen: Seen) -> Client {
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let seen = seen.clone();
            async move {
                let target = req
                    .uri()
                    .path_and_query()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                seen.lock()
                    .unwrap()
                    .push(format!("{} {target}", req.method()));
                let path = req.uri().path();
                let (status, body) = if path == "/api/v1" {
                    (
                        200,
                        serde_json::json!({"kind": "APIResourceList", "groupVersion": "v1",
                            "resources": [{"name": "pods", "singularName": "pod",
                                "namespaced": true, "kind": "Pod",
                                "verbs": ["get", "list", "create", "patch", "delete"]}]}),
                    )
                } else if target.contains("labelSelector=size%3Dhuge") {
                    // One byte more than a guest may get back.
                    let padding = "x".repeat(MAX_RESPONSE_BYTES - 30);
                    (
                        200,
                        serde_json::json!({"kind": "PodList", "items": [], "p": padding}),
                    )
                } else if path.starts_with("/api/v1/namespaces/") && path.contains("/pods") {
                    (
                        200,
                        serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": "p", "namespace": "ns"}}),
                    )
                } else {
                    (
                        404,
                        serde_json::json!({"kind": "Status", "apiVersion": "v1",
                            "status": "Failure", "reason": "NotFound", "code": 404,
                            "message": format!("{path} not found")}),
                    )
                };
                Ok::<_, std::convert::Infallible>(json_response(status, &body))
            }
        });
        Client::new(service, "default")
    }

    struct Fixture {
        cluster: KubeCluster,
        seen: Seen,
        caller: Caller,
        // Serves the requests; dropped last.
        _tokio: tokio::runtime::Runtime,
    }

    /// A cluster access with one listener `l` granted `capabilities` (YAML), handling an event
    /// in namespace `ns`; requests time out after `timeout`.
    fn fixture(capabilities: &str, timeout: Duration) -> Fixture {
        let tokio = tokio::runtime::Runtime::new().unwrap();
        let seen = Seen::default();
        let capabilities: Capabilities = serde_saphyr::from_str(capabilities).unwrap();
        let cluster = tokio.block_on(async {
            KubeCluster::new(
                fake_api(seen.clone()),
                tokio::runtime::Handle::current(),
                [("l".to_string(), capabilities)],
                timeout,
            )
            .unwrap()
        });
        Fixture {
            cluster,
            seen,
            caller: Caller {
                listener: Arc::from("l"),
                event_namespace: Some("ns".into()),
                event_object: None,
                time_left: None,
            },
            _tokio: tokio,
        }
    }

    fn pod(name: &str) -> ObjectRef {
        ObjectRef {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: Some("ns".into()),
            name: name.into(),
        }
    }

    const PODS: &str = "grants:\n  - {apiGroups: [''], resources: [pods, events], verbs: ['*'], namespaces: '*'}\n  - {apiGroups: ['*'], resources: ['*'], verbs: [create], namespaces: '*'}\n";

    /// An API server serving kind `Widget` (group `g`, `v1`) with the scope `cluster_scoped`
    /// says at each request, and the object `w` at its path for that scope; everything else is
    /// 404 naming no object, as for a path that is not served.
    fn widget_api(seen: Seen, cluster_scoped: Arc<std::sync::atomic::AtomicBool>) -> Client {
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let seen = seen.clone();
            let cluster = cluster_scoped.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                let path = req.uri().path().to_string();
                seen.lock()
                    .unwrap()
                    .push(format!("{} {path}", req.method()));
                let object = if cluster {
                    "/apis/g/v1/widgets/w"
                } else {
                    "/apis/g/v1/namespaces/ns/widgets/w"
                };
                let (status, body) = if path == "/apis/g/v1" {
                    (
                        200,
                        serde_json::json!({"kind": "APIResourceList", "groupVersion": "g/v1",
                            "resources": [{"name": "widgets", "singularName": "widget",
                                "namespaced": !cluster, "kind": "Widget", "verbs": ["get"]}]}),
                    )
                } else if path == object {
                    (
                        200,
                        serde_json::json!({"apiVersion": "g/v1", "kind": "Widget",
                            "metadata": {"name": "w"}}),
                    )
                } else if path == "/apis/g/v1/widgets"
                    || (!cluster && path == "/apis/g/v1/namespaces/ns/widgets")
                {
                    (200, serde_json::json!({"kind": "WidgetList", "items": []}))
                } else {
                    (
                        404,
                        serde_json::json!({"kind": "Status", "apiVersion": "v1",
                            "status": "Failure", "reason": "NotFound", "code": 404,
                            "message": "the server could not find the requested resource"}),
                    )
                };
                Ok::<_, std::convert::Infallible>(json_response(status, &body))
            }
        });
        Client::new(service, "default")
    }

    #[test]
    fn the_body_sent_is_what_the_policy_read() {
        let sent = |object: &str, ns: Option<&str>| {
            String::from_utf8(with_namespace(object, ns).unwrap()).unwrap()
        };
        // A namespace is added to a metadata object without one; the rest is sent as written.
        let object = r#"{"kind":"Pod", "metadata" : { "name":"p"},"spec":{"a":[1,{"b":null}]}}"#;
        assert_eq!(
            sent(object, Some("n\"s")),
            r#"{"kind":"Pod", "metadata" : {"namespace":"n\"s", "name":"p"},"spec":{"a":[1,{"b":null}]}}"#
        );
        assert_eq!(sent(object, None), object);
        assert_eq!(
            sent(r#"{"kind":"Pod","metadata":{ }}"#, Some("ns")),
            r#"{"kind":"Pod","metadata":{"namespace":"ns" }}"#
        );
        // A metadata that has a namespace (of any type), or is not an object, is sent as written
        // (the API server refuses what it must).
        for kept in [
            r#"{"kind":"Pod","metadata":{"namespace":null}}"#,
            r#"{"kind":"Pod","metadata":5}"#,
            r#"{"kind":"Pod"}"#,
        ] {
            assert_eq!(sent(kept, Some("ns")), kept);
        }
        // A member the policy reads, given twice, is refused: the API server might read the
        // other one.
        for twice in [
            r#"{"kind":"Pod","metadata":{"namespace":"other","name":"p","namespace":"ns"}}"#,
            r#"{"kind":"Pod","kind":"Secret","metadata":{}}"#,
            r#"{"kind":"Pod","metadata":{},"metadata":{"namespace":"x"}}"#,
            r#"{"kind":"Pod","k\u0069nd":"Secret"}"#,
        ] {
            match with_namespace(twice, Some("x")) {
                Err(ApiError::Invalid(m)) => assert!(m.contains("is given twice"), "{twice}: {m}"),
                other => panic!("{twice}: {other:?}"),
            }
        }
        // Members read only where they are: a nested "name" is not the object's.
        let head =
            Head::parse(r#"{"spec":{"metadata":{"name":"x"}},"metadata":{"labels":{"name":"y"}}}"#)
                .unwrap();
        assert_eq!(head.name, None);
        assert!(matches!(
            with_namespace("[1]", None),
            Err(ApiError::Invalid(_))
        ));
    }

    #[test]
    fn a_denial_or_a_namespaced_list_on_a_cached_cluster_scope_asks_discovery_again() {
        let tokio = tokio::runtime::Runtime::new().unwrap();
        let caller = Caller {
            listener: Arc::from("l"),
            event_namespace: Some("ns".into()),
            event_object: None,
            time_left: None,
        };
        let widget = |namespace: Option<&str>| ObjectRef {
            api_version: "g/v1".into(),
            kind: "Widget".into(),
            namespace: namespace.map(str::to_string),
            name: "w".into(),
        };
        let all: Capabilities = serde_saphyr::from_str(
            "grants:\n  - {apiGroups: [g], resources: [widgets], verbs: [get, list], namespaces: '*'}\n",
        )
        .unwrap();
        let event_only: Capabilities = serde_saphyr::from_str(
            "grants:\n  - {apiGroups: [g], resources: [widgets], verbs: [get, list]}\n",
        )
        .unwrap();
        let seen = Seen::default();
        let cluster_scoped = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let cluster = tokio.block_on(async {
            KubeCluster::new(
                widget_api(seen.clone(), cluster_scoped.clone()),
                tokio::runtime::Handle::current(),
                [("l".to_string(), all)],
                Duration::from_secs(5),
            )
            .unwrap()
        });
        cluster
            .call(&caller, ClusterRequest::Get(widget(None)))
            .unwrap();
        // The CRD becomes namespaced; a list in a namespace must not read every namespace.
        cluster_scoped.store(false, std::sync::atomic::Ordering::SeqCst);
        let list = ClusterRequest::List {
            api_version: "g/v1".into(),
            kind: "Widget".into(),
            namespace: Some("ns".into()),
            options: ListOptions {
                label_selector: None,
                field_selector: None,
                limit: None,
            },
            continue_from: None,
        };
        cluster.call(&caller, list).unwrap();
        assert_eq!(
            seen.lock().unwrap().last().map(String::as_str),
            Some("GET /apis/g/v1/namespaces/ns/widgets")
        );
        // Cached as cluster-scoped again, then namespaced with a grant for the event's namespace
        // only: the denial on the cached answer is checked again on a fresh one.
        cluster_scoped.store(true, std::sync::atomic::Ordering::SeqCst);
        cluster.forget("g/v1", "Widget");
        cluster
            .call(&caller, ClusterRequest::Get(widget(None)))
            .unwrap();
        cluster_scoped.store(false, std::sync::atomic::Ordering::SeqCst);
        cluster.set_capabilities("l", event_only);
        let got = cluster.call(&caller, ClusterRequest::Get(widget(Some("ns"))));
        assert!(got.is_ok(), "{got:?} after {:?}", seen.lock().unwrap());
    }

    #[test]
    fn give_a_namespace_only_for_a_resource_the_listener_is_granted() {
        let f = fixture(
            "grants:\n  - {apiGroups: [''], resources: [configmaps], verbs: [get]}\n",
            Duration::from_secs(5),
        );
        let pod = ObjectRef {
            namespace: None,
            ..pod("p")
        };
        match f.cluster.call(&f.caller, ClusterRequest::Get(pod)) {
            Err(ApiError::ForbiddenByPolicy(m)) => assert!(m.contains("pods"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_kind_recreated_with_another_scope_is_discovered_again() {
        let widget = |namespace: Option<&str>| {
            ClusterRequest::Get(ObjectRef {
                api_version: "g/v1".into(),
                kind: "Widget".into(),
                namespace: namespace.map(str::to_string),
                name: "w".into(),
            })
        };
        let caller = Caller {
            listener: Arc::from("l"),
            event_namespace: Some("ns".into()),
            event_object: None,
            time_left: None,
        };
        let grants: Capabilities = serde_saphyr::from_str(
            "grants:\n  - {apiGroups: [g], resources: [widgets], verbs: [get], namespaces: '*'}\n",
        )
        .unwrap();
        let tokio = tokio::runtime::Runtime::new().unwrap();
        // Namespaced -> cluster-scoped: the call without a namespace asks discovery again
        // (the cached answer would say "give a namespace").
        // Then cluster-scoped -> namespaced: the call to the old path is answered 404 for a
        // path not served, which drops the cached answer; the next call finds the new scope.
        for namespaced_first in [true, false] {
            let seen = Seen::default();
            let cluster_scoped = Arc::new(std::sync::atomic::AtomicBool::new(!namespaced_first));
            let cluster = tokio.block_on(async {
                KubeCluster::new(
                    widget_api(seen.clone(), cluster_scoped.clone()),
                    tokio::runtime::Handle::current(),
                    [("l".to_string(), grants.clone())],
                    Duration::from_secs(5),
                )
                .unwrap()
            });
            let (before, after) = if namespaced_first {
                (Some("ns"), None)
            } else {
                (None, Some("ns"))
            };
            cluster.call(&caller, widget(before)).unwrap();
            cluster_scoped.store(namespaced_first, std::sync::atomic::Ordering::SeqCst);
            if !namespaced_first {
                // The first call after the change goes to the cached path, gone.
                match cluster.call(&caller, widget(after)) {
                    Err(ApiError::NotFound(_)) => {}
                    other => panic!("{other:?}"),
                }
            }
            let got = cluster.call(&caller, widget(after));
            assert!(
                got.is_ok(),
                "namespaced first: {namespaced_first}: {got:?} after {:?}",
                seen.lock().unwrap()
            );
            let discoveries = seen
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.as_str() == "GET /apis/g/v1")
                .count();
            assert_eq!(discoveries, 2, "{:?}", seen.lock().unwrap());
        }
    }

    #[test]
    fn a_namespaced_object_named_without_its_namespace_is_invalid_not_a_missing_grant() {
        let in_event_namespace =
            "grants:\n  - {apiGroups: [''], resources: [pods], verbs: [get, delete]}\n";
        let f = fixture(in_event_namespace, Duration::from_secs(5));
        let no_namespace = || ObjectRef {
            namespace: None,
            ..pod("p")
        };
        for request in [
            ClusterRequest::Get(no_namespace()),
            ClusterRequest::Delete(no_namespace()),
        ] {
            match f.cluster.call(&f.caller, request) {
                Err(ApiError::Invalid(m)) => assert_eq!(m, "Pod is namespaced: give a namespace"),
                other => panic!("{other:?}"),
            }
        }
        // Only discovery was asked (afresh for each call: the kind's scope may have changed),
        // never the object.
        assert_eq!(*f.seen.lock().unwrap(), ["GET /api/v1", "GET /api/v1"]);

        // A verb the listener has no grant for is still the policy's denial, without discovery.
        let f = fixture(in_event_namespace, Duration::from_secs(5));
        let patch = ClusterRequest::Patch(no_namespace(), PatchType::Merge, "{}".into());
        match f.cluster.call(&f.caller, patch) {
            Err(ApiError::ForbiddenByPolicy(m)) => assert!(m.contains("verbs: [patch]"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(f.seen.lock().unwrap().is_empty(), "{:?}", f.seen);
    }

    #[test]
    fn path_segments_are_checked_like_apimachinery() {
        for good in ["p", "web-pod", "a.b", "...", "x:y"] {
            assert!(path_segment("ref.name", good).is_ok(), "{good}");
        }
        for (bad, problem) in [
            ("", "may not be empty"),
            (".", "may not be \".\""),
            ("..", "may not be \"..\""),
            ("p/status", "may not contain '/'"),
            ("p%2Fstatus", "may not contain '%'"),
            ("p?dryRun=All", "may not contain '?'"),
            ("p#x", "may not contain '#'"),
        ] {
            match path_segment("ref.name", bad) {
                Err(ApiError::Invalid(m)) => {
                    assert!(m.starts_with("ref.name ") && m.ends_with(problem), "{m}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn names_that_would_reach_another_url_are_refused_before_any_request() {
        let f = fixture(PODS, Duration::from_secs(5));
        let patch = || (PatchType::Merge, "{}".to_string());
        let record = |about| ClusterRequest::RecordEvent {
            about,
            kind: EventType::Normal,
            reason: "R".into(),
            message: "m".into(),
        };
        let refused = [
            ("ref.name", ClusterRequest::Get(pod("p/log"))),
            ("ref.name", ClusterRequest::Get(pod(""))),
            ("ref.name", ClusterRequest::Delete(pod(".."))),
            (
                "ref.name",
                ClusterRequest::Patch(pod("p/status"), patch().0, patch().1),
            ),
            (
                "ref.name",
                ClusterRequest::PatchStatus(pod("p?dryRun=All"), patch().0, patch().1),
            ),
            (
                "ref.namespace",
                ClusterRequest::Get(ObjectRef {
                    namespace: Some("ns/pods/p".into()),
                    ..pod("p")
                }),
            ),
            (
                "namespace",
                ClusterRequest::List {
                    api_version: "v1".into(),
                    kind: "Pod".into(),
                    namespace: Some("..".into()),
                    options: ListOptions {
                        label_selector: None,
                        field_selector: None,
                        limit: None,
                    },
                    continue_from: None,
                },
            ),
            (
                "metadata.name",
                ClusterRequest::Apply(
                    r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p/status"}}"#.into(),
                ),
            ),
            (
                "metadata.name",
                ClusterRequest::Apply(r#"{"apiVersion":"v1","kind":"Pod","metadata":{}}"#.into()),
            ),
            (
                "metadata.namespace",
                ClusterRequest::Create(
                    r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"a%2Fb"}}"#
                        .into(),
                ),
            ),
            (
                "apiVersion (group)",
                ClusterRequest::Get(ObjectRef {
                    api_version: "../api/v1".into(),
                    ..pod("p")
                }),
            ),
            (
                "about.namespace",
                record(ObjectRef {
                        namespace: Some("ns/x".into()),
                        ..pod("p")
                    }),
            ),
            (
                "about.name",
                record(pod("p/status")),
            ),
            // A line break would start a forged line in the host's log.
            (
                "ref.namespace",
                ClusterRequest::Get(ObjectRef {
                    namespace: Some("ns\nFAKE LINE".into()),
                    ..pod("p")
                }),
            ),
            (
                "ref.kind",
                ClusterRequest::Get(ObjectRef {
                    kind: "Pod\nFAKE LINE".into(),
                    ..pod("p")
                }),
            ),
            (
                "ref.kind",
                ClusterRequest::Get(ObjectRef {
                    kind: String::new(),
                    ..pod("p")
                }),
            ),
            (
                "kind",
                ClusterRequest::Create(
                    r#"{"apiVersion":"v1","kind":"../Pod","metadata":{"name":"p"}}"#.into(),
                ),
            ),
            // What a record-event is about goes into the Event and the host's series cache.
            (
                "about.kind",
                record(ObjectRef {
                        kind: "Pod\nFAKE LINE".into(),
                        ..pod("p")
                    }),
            ),
            (
                "about.kind",
                record(ObjectRef {
                        kind: "A".repeat(1 << 20),
                        ..pod("p")
                    }),
            ),
            (
                "about.apiVersion (group)",
                record(ObjectRef {
                        api_version: "../v1".into(),
                        ..pod("p")
                    }),
            ),
            (
                "about.apiVersion (version)",
                record(ObjectRef {
                        api_version: "apps/v1\nFAKE".into(),
                        ..pod("p")
                    }),
            ),
            (
                "about.name",
                record(ObjectRef {
                        name: "n".repeat(254),
                        ..pod("p")
                    }),
            ),
            (
                "ref.name",
                ClusterRequest::Get(pod(&"n".repeat(254))),
            ),
        ];
        for (field, request) in refused {
            let what = format!("{request:?}");
            match f.cluster.call(&f.caller, request) {
                Err(ApiError::Invalid(m)) => assert!(m.starts_with(field), "{what}: {m}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        assert!(f.seen.lock().unwrap().is_empty(), "{:?}", f.seen);

        // A valid name goes through: discovery, then the pod itself.
        f.cluster
            .call(&f.caller, ClusterRequest::Get(pod("p")))
            .unwrap();
        assert_eq!(
            *f.seen.lock().unwrap(),
            ["GET /api/v1", "GET /api/v1/namespaces/ns/pods/p"]
        );
    }

    #[test]
    fn a_request_never_outlasts_the_guest_calls_time_left() {
        // One token per second: the second get would wait 1 s for its token (the request
        // timeout of 30 s allows that), but the guest's call has only 50 ms left.
        let f = fixture(
            "rateLimit: {qps: 1, burst: 1}\ngrants:\n  - {apiGroups: [''], resources: [pods], verbs: [get], namespaces: '*'}\n",
            Duration::from_secs(30),
        );
        let get = || ClusterRequest::Get(pod("p"));
        assert!(f.cluster.call(&f.caller, get()).is_ok());
        times_out_with_50ms_left(&f, get());
    }

    /// `request` from a guest call with 50 ms left times out (waiting for its token).
    fn times_out_with_50ms_left(f: &Fixture, request: ClusterRequest) {
        let short = Caller {
            time_left: Some(Duration::from_millis(50)),
            ..f.caller.clone()
        };
        match f.cluster.call(&short, request) {
            Err(ApiError::Timeout(m)) => assert!(m.contains("50ms"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn denied_calls_take_rate_limit_tokens_too() {
        // One token per second, granted in namespace `ns` only.
        let f = fixture(
            "rateLimit: {qps: 1, burst: 1}\ngrants:\n  - {apiGroups: [''], resources: [pods], verbs: [get], namespaces: [ns]}\n",
            Duration::from_secs(30),
        );
        let elsewhere = || {
            ClusterRequest::Get(ObjectRef {
                namespace: Some("other".into()),
                ..pod("p")
            })
        };
        assert!(matches!(
            f.cluster.call(&f.caller, elsewhere()),
            Err(ApiError::ForbiddenByPolicy(_))
        ));
        // The second denial in a row waits for a token like any call: a guest looping on denied
        // calls is held to its rate (its 50 ms run out first here).
        times_out_with_50ms_left(&f, elsewhere());
        assert!(f.seen.lock().unwrap().is_empty(), "{:?}", f.seen);
    }

    #[test]
    fn a_response_past_the_bound_is_an_error_not_a_copy() {
        let f = fixture(PODS, Duration::from_secs(5));
        let list = |selector: &str| ClusterRequest::List {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: Some("ns".into()),
            options: ListOptions {
                label_selector: Some(selector.into()),
                field_selector: None,
                limit: None,
            },
            continue_from: None,
        };
        match f.cluster.call(&f.caller, list("size=huge")) {
            Err(ApiError::Other(m)) => assert!(m.contains("larger than 8 MiB"), "{m}"),
            other => panic!("{:?}", other.map(|t| t.len())),
        }
        assert!(f.cluster.call(&f.caller, list("size=small")).is_ok());
    }

    #[test]
    fn events_cannot_be_created_directly_to_pass_for_another_controller() {
        // PODS grants `create` on every resource.
        let f = fixture(PODS, Duration::from_secs(5));
        let host_event = ObjectRef {
            api_version: "events.k8s.io/v1".into(),
            kind: "Event".into(),
            namespace: Some("ns".into()),
            name: "a.1872".into(),
        };
        for (api_version, verb) in [
            ("events.k8s.io/v1", "create"),
            ("v1", "apply"),
            ("events.k8s.io/v1", "patch"),
            ("events.k8s.io/v1", "delete"),
        ] {
            let object = format!(
                r#"{{"apiVersion":"{api_version}","kind":"Event","metadata":{{"name":"e"}},"reportingController":"kubelisten","reason":"FaultyTrapped"}}"#
            );
            let request = match verb {
                "create" => ClusterRequest::Create(object),
                "apply" => ClusterRequest::Apply(object),
                "patch" => ClusterRequest::Patch(
                    host_event.clone(),
                    PatchType::Merge,
                    r#"{"note":"all good"}"#.into(),
                ),
                _ => ClusterRequest::Delete(host_event.clone()),
            };
            match f.cluster.call(&f.caller, request) {
                Err(ApiError::ForbiddenByPolicy(m)) => assert!(m.contains("record-event"), "{m}"),
                other => panic!("{api_version} {verb}: {other:?}"),
            }
        }
        assert!(f.seen.lock().unwrap().is_empty(), "{:?}", f.seen);
    }

    #[test]
    fn stopped_calls_are_refused_and_those_in_flight_cancelled() {
        // One token per second: the second get waits for its token.
        let f = fixture(
            "rateLimit: {qps: 1, burst: 1}\ngrants:\n  - {apiGroups: [''], resources: [pods], verbs: [get], namespaces: '*'}\n",
            Duration::from_secs(30),
        );
        let cluster = Arc::new(f.cluster);
        assert!(cluster
            .call(&f.caller, ClusterRequest::Get(pod("p")))
            .is_ok());
        let waiting = std::thread::spawn({
            let (cluster, caller) = (cluster.clone(), f.caller.clone());
            move || cluster.call(&caller, ClusterRequest::Get(pod("p")))
        });
        std::thread::sleep(Duration::from_millis(100));
        cluster.stop_calls();
        let stopped = |result: Result<String, ApiError>| matches!(result, Err(ApiError::Other(m)) if m.contains("stopped dispatching"));
        assert!(
            stopped(waiting.join().unwrap()),
            "the waiting call is cancelled"
        );
        assert!(stopped(
            cluster.call(&f.caller, ClusterRequest::Get(pod("p")))
        ));
        // Only the first call reached the API server (discovery, then the pod).
        assert_eq!(f.seen.lock().unwrap().len(), 2, "{:?}", f.seen);
    }

    #[test]
    fn a_one_letter_kind_is_denied_not_a_panic() {
        let f = fixture(
            "grants:\n  - {apiGroups: [''], resources: [pods], verbs: [get], namespaces: [ns]}\n",
            Duration::from_secs(5),
        );
        // Denied before discovery; the message's guess of the plural must not panic.
        let request = ClusterRequest::Get(ObjectRef {
            kind: "Y".into(),
            namespace: Some("other".into()),
            ..pod("p")
        });
        match f.cluster.call(&f.caller, request) {
            Err(ApiError::ForbiddenByPolicy(m)) => assert!(m.contains("ys"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn discovery_of_unknown_kinds_takes_rate_limit_tokens() {
        let f = fixture(
            "rateLimit: {qps: 1, burst: 2}\ngrants:\n  - {apiGroups: ['*'], resources: ['*'], verbs: [get], namespaces: '*'}\n",
            Duration::from_millis(200),
        );
        let mut limited = 0;
        for i in 0..10 {
            let request = ClusterRequest::Get(ObjectRef {
                api_version: "nowhere.example/v1".into(),
                kind: format!("Kind{i}"),
                ..pod("p")
            });
            match f.cluster.call(&f.caller, request) {
                Err(ApiError::NotFound(_)) => {}
                Err(ApiError::Timeout(m)) if m.contains("rate limit") => limited += 1,
                other => panic!("{other:?}"),
            }
        }
        let seen = f.seen.lock().unwrap().clone();
        assert!(
            seen.len() <= 3 && limited >= 7,
            "burst 2 at 1 qps: at most 3 discovery requests, the rest refused ({limited} refused): {seen:?}"
        );
    }

    #[test]
    fn a_call_that_needs_discovery_costs_one_token() {
        let f = fixture(
            "rateLimit: {qps: 1, burst: 2}\ngrants:\n  - {apiGroups: [''], resources: [pods], verbs: [get], namespaces: '*'}\n",
            Duration::from_millis(200),
        );
        // Discovery and the get: one token; the second get (discovery cached): the other one.
        for _ in 0..2 {
            f.cluster
                .call(&f.caller, ClusterRequest::Get(pod("p")))
                .unwrap();
        }
        assert_eq!(f.seen.lock().unwrap().len(), 3, "{:?}", f.seen);
        assert!(matches!(
            f.cluster.call(&f.caller, ClusterRequest::Get(pod("p"))),
            Err(ApiError::Timeout(m)) if m.contains("rate limit")
        ));
        assert_eq!(f.seen.lock().unwrap().len(), 3, "{:?}", f.seen);
    }

    #[test]
    fn two_listeners_of_one_name_are_an_error_not_merged_grants() {
        let tokio = tokio::runtime::Runtime::new().unwrap();
        let grant = |resource: &str| -> Capabilities {
            serde_saphyr::from_str(&format!(
                "grants:\n  - {{apiGroups: [''], resources: [{resource}], verbs: [get]}}\n"
            ))
            .unwrap()
        };
        let made = tokio.block_on(async {
            KubeCluster::new(
                fake_api(Seen::default()),
                tokio::runtime::Handle::current(),
                [
                    ("echo".to_string(), grant("pods")),
                    ("other".to_string(), grant("pods")),
                    ("echo".to_string(), grant("secrets")),
                ],
                Duration::from_secs(1),
            )
        });
        match made {
            Err(err) => {
                assert_eq!(err, Error::DuplicateListener("echo".into()));
                assert!(
                    err.to_string().contains("unique across all watches"),
                    "{err}"
                );
            }
            Ok(_) => panic!("the grants of two listeners named echo were merged"),
        }
    }
}
