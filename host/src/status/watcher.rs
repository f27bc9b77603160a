//! The status watcher: a stream of status changes of a set of objects, watched through the
//! API server (the `StatusWatcher.Watch` of fluxcd/cli-utils' `pkg/kstatus/watcher`).
//!
//! [`StatusWatcher::watch`] returns a [`StatusStream`] of [`WatchEvent`]s:
//!
//! - [`WatchEvent::Update`] whenever a watched object is added, changed, re-listed, resynced
//!   or re-read: its [`ResourceStatus`] (identity, status, reason, message, generated
//!   objects) computed with [`compute_live`], and the object itself. A deleted object is
//!   reported as NotFound "Resource not found", with no object.
//! - [`WatchEvent::Sync`] once, after every watch started so far finished its initial list.
//! - [`WatchEvent::Error`]: fatal (Forbidden, discovery failure); the stream ends after it.
//!
//! One watch runs per target: a group/kind in one namespace, or in all namespaces (see
//! [`ScopeStrategy`]). Only the requested identities are reported. A kind the API server does
//! not serve (its CRD is not installed) is *parked*: nothing is reported for it until a
//! CustomResourceDefinition defining it becomes Established, then its watches start; when
//! that CRD is deleted (or the kind's list answers 404) they stop and the kind is parked
//! again. When its CRD is deleted, every object of the kind that was present is reported
//! NotFound: deleting a CRD deletes its objects, and their DELETE events may not arrive before
//! the watch stops. (A 404 alone reports nothing: it can be passing, as while an API server
//! restarts.) The watches of a kind started again begin once the previous ones have stopped,
//! so no stale report follows a fresh one.
//! Expired resource versions and dropped connections are retried with backoff.
//!
//! An InProgress object that is, or generates, a Pod waiting to be scheduled
//! ([`ResourceStatus::is_unschedulable`]) is read again once after
//! [`WatchOptions::unschedulable_recheck`] (15 s), so that it can turn Failed without a new
//! watch event; any new event for it cancels the re-read.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::discovery::{self, Scope};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{compute_live, ObjectIdentity, ResourceStatus, SCHEDULE_WINDOW};

/// How the watches of a [`StatusWatcher`] are scoped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ScopeStrategy {
    /// Cluster-wide watches when the watched identities span more than one namespace
    /// (cluster-scoped objects count as namespace `""`), else per-namespace watches.
    #[default]
    Automatic,
    /// One cluster-wide watch per kind (fewer requests; needs cluster-wide list/watch).
    Cluster,
    /// One watch per kind and namespace (needs only namespaced permissions).
    Namespace,
}

impl ScopeStrategy {
    /// The strategy applied to `ids`: [`Automatic`](ScopeStrategy::Automatic) resolved to
    /// [`Cluster`](ScopeStrategy::Cluster) or [`Namespace`](ScopeStrategy::Namespace).
    pub fn resolve<'a>(self, ids: impl IntoIterator<Item = &'a ObjectIdentity>) -> Self {
        match self {
            ScopeStrategy::Automatic => {
                let namespaces: HashSet<&str> =
                    ids.into_iter().map(|id| id.namespace.as_str()).collect();
                if namespaces.len() > 1 {
                    ScopeStrategy::Cluster
                } else {
                    ScopeStrategy::Namespace
                }
            }
            other => other,
        }
    }
}

/// Settings of a [`StatusWatcher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOptions {
    /// How watches are scoped (default [`ScopeStrategy::Automatic`]).
    pub scope: ScopeStrategy,
    /// How often every cached object is delivered again as an update (default 1 h;
    /// [`Duration::ZERO`] disables resyncs).
    pub resync: Duration,
    /// How long after an update an unschedulable object is read again (default
    /// [`SCHEDULE_WINDOW`], 15 s).
    pub unschedulable_recheck: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            scope: ScopeStrategy::Automatic,
            resync: Duration::from_secs(3600),
            unschedulable_recheck: SCHEDULE_WINDOW,
        }
    }
}

/// A watched object's new status.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusUpdate {
    /// The computed status, with the statuses of the objects it generated.
    pub resource: ResourceStatus,
    /// The object as last read (`None` when it was deleted or could not be read).
    pub object: Option<Value>,
}

/// An event of a [`StatusStream`].
#[derive(Debug)]
pub enum WatchEvent {
    /// A watched object's status was computed (again).
    Update(StatusUpdate),
    /// Every watch started so far has finished its initial list (sent once).
    Sync,
    /// A fatal error: the stream ends after it.
    Error(WatchError),
}

/// A fatal error of a status watch.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The API of a kind could not be discovered.
    #[error("discovering the API of {group_kind}")]
    Discovery {
        /// `Kind.group` (or `Kind` for core).
        group_kind: String,
        /// The discovery error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The API server refused to list or watch a kind (Forbidden).
    #[error("watching {target} is forbidden")]
    Forbidden {
        /// `Kind.group` in a namespace, or in all namespaces.
        target: String,
        /// The watch error.
        #[source]
        source: Box<watcher::Error>,
    },
    /// The API server refused to read an object again (Forbidden).
    #[error("reading {identity} is forbidden")]
    ReadForbidden {
        /// The object.
        identity: ObjectIdentity,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
}

/// Watches the computed status of sets of objects. Cheap to clone.
#[derive(Clone)]
pub struct StatusWatcher {
    client: kube::Client,
    options: WatchOptions,
}

impl std::fmt::Debug for StatusWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWatcher")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl StatusWatcher {
    /// A watcher using `client`, with the default [`WatchOptions`].
    pub fn new(client: kube::Client) -> Self {
        Self::with_options(client, WatchOptions::default())
    }

    /// A watcher using `client` with `options`.
    pub fn with_options(client: kube::Client, options: WatchOptions) -> Self {
        StatusWatcher { client, options }
    }

    /// The watcher's options.
    pub fn options(&self) -> &WatchOptions {
        &self.options
    }

    /// Starts watching the status of `ids` (duplicates are ignored). Must be called within a
    /// tokio runtime. Dropping the stream stops every watch.
    ///
    /// Identities of namespaced kinds need their namespace: one with an empty namespace only
    /// matches a cluster-scoped object.
    pub fn watch(&self, ids: impl IntoIterator<Item = ObjectIdentity>) -> StatusStream {
        let ids: BTreeSet<ObjectIdentity> = ids.into_iter().collect();
        let (out, rx) = mpsc::channel(256);
        let driver = Driver::new(self.client.clone(), self.options.clone(), &ids, out);
        StatusStream {
            rx,
            driver: tokio::spawn(driver.run()),
            done: false,
        }
    }
}

/// The stream returned by [`StatusWatcher::watch`]; ends after a [`WatchEvent::Error`].
/// Dropping it stops every watch.
#[derive(Debug)]
pub struct StatusStream {
    rx: mpsc::Receiver<WatchEvent>,
    driver: JoinHandle<()>,
    done: bool,
}

impl Stream for StatusStream {
    type Item = WatchEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        if self.done {
            return Poll::Ready(None);
        }
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(None | Some(WatchEvent::Error(_))) = &polled {
            self.done = true;
            self.driver.abort();
        }
        polled
    }
}

impl Drop for StatusStream {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A group and kind (no version).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKind {
    /// API group (`""` for core).
    pub group: String,
    /// Kind.
    pub kind: String,
}

impl GroupKind {
    /// The group and kind of `id`.
    pub fn of(id: &ObjectIdentity) -> Self {
        GroupKind {
            group: id.group.clone(),
            kind: id.kind.clone(),
        }
    }
}

impl std::fmt::Display for GroupKind {
    /// `Kind.group`, or `Kind` for core.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.kind)?;
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        Ok(())
    }
}

/// The namespaces to watch per kind: `None` is all namespaces, `Some("")` the identities
/// without a namespace (cluster-scoped objects; watched cluster-wide).
pub fn plan_targets<'a>(
    ids: impl IntoIterator<Item = &'a ObjectIdentity> + Clone,
    strategy: ScopeStrategy,
) -> BTreeMap<GroupKind, BTreeSet<Option<String>>> {
    let strategy = strategy.resolve(ids.clone());
    let mut plan: BTreeMap<GroupKind, BTreeSet<Option<String>>> = BTreeMap::new();
    for id in ids {
        let namespace = match strategy {
            ScopeStrategy::Cluster => None,
            _ => Some(id.namespace.clone()),
        };
        plan.entry(GroupKind::of(id)).or_default().insert(namespace);
    }
    plan
}

/// Resolves a group and kind through discovery: `Ok(None)` when the API server does not
/// serve it (the group or the kind is missing).
///
/// # Errors
/// The discovery request failed.
pub async fn discover(
    client: &kube::Client,
    gk: &GroupKind,
) -> Result<Option<(ApiResource, Scope)>, kube::Error> {
    match discovery::group(client, &gk.group).await {
        Ok(group) => Ok(group
            .recommended_kind(&gk.kind)
            .map(|(resource, caps)| (resource, caps.scope))),
        Err(kube::Error::Discovery(_)) => Ok(None),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(err) => Err(err),
    }
}

/// A running watch target: the kind's watches started at `epoch`.
type TargetKey = (GroupKind, Option<String>, u64);

/// What the driver hears from its tasks.
enum Msg {
    /// A discovery finished.
    Resolved {
        gk: GroupKind,
        result: Result<Option<(ApiResource, Scope)>, kube::Error>,
    },
    /// A target finished its initial list.
    Synced(TargetKey),
    /// A target's kind is not served anymore (404).
    KindGone { gk: GroupKind, epoch: u64 },
    /// A fatal error.
    Fatal(WatchError),
    /// A CRD for `gk` was seen, Established or not.
    CrdSeen { gk: GroupKind, established: bool },
    /// The CRD for `gk` was deleted.
    CrdDeleted { gk: GroupKind },
}

enum KindState {
    /// Being discovered.
    Resolving,
    /// Not served: waiting for its CRD.
    Parked,
    /// Watched since `epoch` by the targets in `tracker`; `gone` stops them.
    Running {
        epoch: u64,
        gone: Gone,
        tracker: TaskTracker,
    },
}

/// Stops the targets of one epoch of a kind: `report` first has them report every cached
/// object NotFound (the CRD was deleted); `stop` only stops them.
#[derive(Clone, Default)]
struct Gone {
    report: CancellationToken,
    stop: CancellationToken,
}

struct Driver {
    client: kube::Client,
    options: WatchOptions,
    out: mpsc::Sender<WatchEvent>,
    plan: BTreeMap<GroupKind, BTreeSet<Option<String>>>,
    wanted: HashMap<GroupKind, HashSet<ObjectIdentity>>,
    kinds: HashMap<GroupKind, KindState>,
    pending_sync: HashSet<TargetKey>,
    sync_sent: bool,
    epoch: u64,
    tasks: JoinSet<()>,
    /// Targets of kinds parked, until they have stopped: the kind's next targets wait for them.
    retiring: HashMap<GroupKind, TaskTracker>,
    crd_watch: Option<AbortHandle>,
    msg_tx: mpsc::UnboundedSender<Msg>,
    msg_rx: mpsc::UnboundedReceiver<Msg>,
}

impl Driver {
    fn new(
        client: kube::Client,
        options: WatchOptions,
        ids: &BTreeSet<ObjectIdentity>,
        out: mpsc::Sender<WatchEvent>,
    ) -> Self {
        let plan = plan_targets(ids, options.scope);
        let mut wanted: HashMap<GroupKind, HashSet<ObjectIdentity>> = HashMap::new();
        for id in ids {
            wanted
                .entry(GroupKind::of(id))
                .or_default()
                .insert(id.clone());
        }
        let (msg_tx, msg_rx) = mpsc::unbounded_channel();
        Driver {
            client,
            options,
            out,
            plan,
            wanted,
            kinds: HashMap::new(),
            pending_sync: HashSet::new(),
            sync_sent: false,
            epoch: 0,
            tasks: JoinSet::new(),
            retiring: HashMap::new(),
            crd_watch: None,
            msg_tx,
            msg_rx,
        }
    }

    async fn run(mut self) {
        tracing::debug!(kinds = self.plan.len(), "status watch starting");
        let kinds: Vec<GroupKind> = self.plan.keys().cloned().collect();
        for gk in kinds {
            self.resolve(gk);
        }
        loop {
            if !self.maybe_sync().await {
                return;
            }
            let msg = tokio::select! {
                msg = self.msg_rx.recv() => msg,
                () = self.out.closed() => return,
            };
            while self.tasks.try_join_next().is_some() {}
            let Some(msg) = msg else { return };
            match msg {
                Msg::Resolved { gk, result } => self.on_resolved(gk, result),
                Msg::Synced(key) => {
                    self.pending_sync.remove(&key);
                }
                Msg::KindGone { gk, epoch } => {
                    if matches!(self.kinds.get(&gk), Some(KindState::Running { epoch: e, .. }) if *e == epoch)
                    {
                        tracing::info!(kind = %gk, "kind no longer served; parked until its CRD is installed");
                        self.park(gk, false);
                    }
                }
                Msg::Fatal(err) => {
                    tracing::warn!(error = %err, "status watch failed");
                    let _ = self.out.send(WatchEvent::Error(err)).await;
                    return;
                }
                Msg::CrdSeen { gk, established } => {
                    if established && matches!(self.kinds.get(&gk), Some(KindState::Parked)) {
                        tracing::info!(kind = %gk, "CRD established; starting its watches");
                        self.resolve(gk);
                    }
                }
                Msg::CrdDeleted { gk } => {
                    if matches!(self.kinds.get(&gk), Some(KindState::Running { .. })) {
                        tracing::info!(kind = %gk, "CRD deleted; stopping its watches");
                        self.park(gk, true);
                    }
                }
            }
        }
    }

    /// Sends Sync when due; false when the consumer is gone.
    async fn maybe_sync(&mut self) -> bool {
        let resolving = self
            .kinds
            .values()
            .any(|k| matches!(k, KindState::Resolving));
        if self.sync_sent || resolving || !self.pending_sync.is_empty() {
            return true;
        }
        self.sync_sent = true;
        tracing::debug!("status watch synced");
        self.out.send(WatchEvent::Sync).await.is_ok()
    }

    /// Discovers `gk` in the background (retrying transient failures and, after a CRD was
    /// established, a discovery that does not show the kind yet).
    fn resolve(&mut self, gk: GroupKind) {
        let after_crd = matches!(self.kinds.get(&gk), Some(KindState::Parked));
        self.kinds.insert(gk.clone(), KindState::Resolving);
        let client = self.client.clone();
        let tx = self.msg_tx.clone();
        self.tasks.spawn(async move {
            let mut delay = Duration::from_millis(200);
            let mut attempt = 0u32;
            let result = loop {
                attempt += 1;
                let result = discover(&client, &gk).await;
                let retry = match &result {
                    Ok(Some(_)) => false,
                    Ok(None) => after_crd && attempt < 20,
                    Err(kube::Error::Api(status)) if status.code == 403 => false,
                    Err(_) => attempt < 5,
                };
                if !retry {
                    break result;
                }
                tracing::debug!(kind = %gk, attempt, "discovery retry");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            };
            let _ = tx.send(Msg::Resolved { gk, result });
        });
    }

    fn on_resolved(
        &mut self,
        gk: GroupKind,
        result: Result<Option<(ApiResource, Scope)>, kube::Error>,
    ) {
        if !matches!(self.kinds.get(&gk), Some(KindState::Resolving)) {
            return;
        }
        match result {
            Ok(Some((resource, scope))) => self.start(gk, resource, scope),
            Ok(None) => {
                tracing::info!(kind = %gk, "kind not served (CRD not installed?); parked");
                self.park(gk, false);
            }
            Err(source) => {
                let err = WatchError::Discovery {
                    group_kind: gk.to_string(),
                    source: Box::new(source),
                };
                let _ = self.msg_tx.send(Msg::Fatal(err));
                self.kinds.insert(gk, KindState::Parked);
            }
        }
    }

    fn start(&mut self, gk: GroupKind, resource: ApiResource, scope: Scope) {
        self.epoch += 1;
        let epoch = self.epoch;
        let namespaces: BTreeSet<Option<String>> = match scope {
            Scope::Cluster => [None].into(),
            Scope::Namespaced => self
                .plan
                .get(&gk)
                .into_iter()
                .flatten()
                .map(|ns| ns.clone().filter(|ns| !ns.is_empty()))
                .collect(),
        };
        let wanted = self.wanted.get(&gk).cloned().unwrap_or_default();
        let gone = Gone::default();
        let tracker = TaskTracker::new();
        let previous = self.retiring.remove(&gk);
        for namespace in namespaces {
            let key: TargetKey = (gk.clone(), namespace.clone(), epoch);
            self.pending_sync.insert(key.clone());
            let target = Target {
                client: self.client.clone(),
                options: self.options.clone(),
                resource: resource.clone(),
                scope: scope.clone(),
                namespace,
                wanted: wanted
                    .iter()
                    .filter(|id| match (&key.1, &scope) {
                        (Some(ns), Scope::Namespaced) => id.namespace == *ns,
                        _ => true,
                    })
                    .cloned()
                    .collect(),
                key,
                out: self.out.clone(),
                driver: self.msg_tx.clone(),
            };
            tracing::debug!(target = %target.describe(), "watch starting");
            let (gone, previous) = (gone.clone(), previous.clone());
            self.tasks.spawn(tracker.track_future(async move {
                if let Some(previous) = previous {
                    previous.wait().await;
                }
                target.run(gone).await;
            }));
        }
        tracker.close();
        self.kinds.insert(
            gk,
            KindState::Running {
                epoch,
                gone,
                tracker,
            },
        );
    }

    /// Stops `gk`'s watches (if any; with `report`, after they report their objects NotFound)
    /// and waits for its CRD.
    fn park(&mut self, gk: GroupKind, report: bool) {
        if let Some(KindState::Running {
            epoch,
            gone,
            tracker,
        }) = self.kinds.remove(&gk)
        {
            if report {
                gone.report.cancel();
            }
            gone.stop.cancel();
            self.retiring.insert(gk.clone(), tracker);
            self.pending_sync
                .retain(|(k, _, e)| !(k == &gk && *e == epoch));
        }
        self.kinds.insert(gk, KindState::Parked);
        if self.crd_watch.is_none() {
            let client = self.client.clone();
            let tx = self.msg_tx.clone();
            self.crd_watch = Some(self.tasks.spawn(watch_crds(client, tx)));
        }
    }
}

/// Watches CustomResourceDefinitions and tells the driver which kinds appear and disappear.
/// Errors are not fatal: parked kinds simply stay parked.
async fn watch_crds(client: kube::Client, driver: mpsc::UnboundedSender<Msg>) {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = stream.next().await {
        let msg = match event {
            Ok(watcher::Event::Apply(crd) | watcher::Event::InitApply(crd)) => {
                let deleting = crd.metadata.deletion_timestamp.is_some();
                let established = !deleting
                    && crd
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| {
                            c.iter()
                                .any(|c| c.type_ == "Established" && c.status == "True")
                        });
                Msg::CrdSeen {
                    gk: crd_group_kind(&crd),
                    established,
                }
            }
            Ok(watcher::Event::Delete(crd)) => Msg::CrdDeleted {
                gk: crd_group_kind(&crd),
            },
            Ok(watcher::Event::Init | watcher::Event::InitDone) => continue,
            Err(err) => {
                if is_status(&err, 403) {
                    tracing::warn!(error = %err, "cannot watch CustomResourceDefinitions; parked kinds will not start");
                    return;
                }
                tracing::debug!(error = %err, "CRD watch error (retrying)");
                continue;
            }
        };
        if driver.send(msg).is_err() {
            return;
        }
    }
}

fn crd_group_kind(crd: &CustomResourceDefinition) -> GroupKind {
    GroupKind {
        group: crd.spec.group.clone(),
        kind: crd.spec.names.kind.clone(),
    }
}

/// The HTTP status code of an API error inside a watcher error.
fn status_code(err: &watcher::Error) -> Option<u16> {
    match err {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    }
}

fn is_status(err: &watcher::Error, code: u16) -> bool {
    status_code(err) == Some(code)
}

/// One watch: a kind in one namespace or in all.
struct Target {
    client: kube::Client,
    options: WatchOptions,
    resource: ApiResource,
    scope: Scope,
    namespace: Option<String>,
    wanted: HashSet<ObjectIdentity>,
    key: TargetKey,
    out: mpsc::Sender<WatchEvent>,
    driver: mpsc::UnboundedSender<Msg>,
}

/// The cache and timers of a running [`Target`].
#[derive(Default)]
struct TargetState {
    cache: HashMap<ObjectIdentity, Value>,
    relisted: Option<HashSet<ObjectIdentity>>,
    rechecks: HashMap<ObjectIdentity, Instant>,
    synced: bool,
}

/// A consumer that went away: stop.
struct Closed;

impl Target {
    fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} in namespace {ns}", self.key.0),
            None => format!("{} in all namespaces", self.key.0),
        }
    }

    fn api(&self, namespace: Option<&str>) -> Api<DynamicObject> {
        match (namespace, &self.scope) {
            (Some(ns), Scope::Namespaced) if !ns.is_empty() => {
                Api::namespaced_with(self.client.clone(), ns, &self.resource)
            }
            _ => Api::all_with(self.client.clone(), &self.resource),
        }
    }

    /// Watches until the consumer goes away or `gone` stops it (the kind is no longer served);
    /// when the CRD was deleted, every object still cached is reported NotFound first.
    async fn run(self, gone: Gone) {
        let api = self.api(self.namespace.as_deref());
        let mut stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut state = TargetState::default();
        let resync = self.options.resync;
        let mut next_resync = (!resync.is_zero()).then(|| Instant::now() + resync);
        loop {
            let next_recheck = state.rechecks.iter().min_by_key(|(_, at)| **at);
            let recheck_at = next_recheck.map(|(_, at)| *at);
            let result = tokio::select! {
                biased;
                () = gone.stop.cancelled() => {
                    if !gone.report.is_cancelled() {
                        return;
                    }
                    let cached: Vec<ObjectIdentity> = state.cache.keys().cloned().collect();
                    tracing::debug!(target = %self.describe(), objects = cached.len(), "kind gone; its objects are reported NotFound");
                    for id in cached {
                        if self.on_delete(&mut state, id).await.is_err() {
                            break;
                        }
                    }
                    return;
                }
                event = stream.next() => match event {
                    Some(event) => self.on_event(&mut state, event).await,
                    None => return,
                },
                () = sleep_until(next_resync) => {
                    next_resync = Some(Instant::now() + resync);
                    self.resync(&mut state).await
                }
                () = sleep_until(recheck_at) => {
                    let due: Vec<ObjectIdentity> = state
                        .rechecks
                        .iter()
                        .filter(|(_, at)| **at <= Instant::now())
                        .map(|(id, _)| id.clone())
                        .collect();
                    let mut result = Ok(());
                    for id in due {
                        state.rechecks.remove(&id);
                        result = self.recheck(&mut state, id).await;
                        if result.is_err() {
                            break;
                        }
                    }
                    result
                }
            };
            if result.is_err() {
                return;
            }
        }
    }

    async fn on_event(
        &self,
        state: &mut TargetState,
        event: Result<watcher::Event<DynamicObject>, watcher::Error>,
    ) -> Result<(), Closed> {
        match event {
            Ok(watcher::Event::Init) => {
                state.relisted = Some(HashSet::new());
                Ok(())
            }
            Ok(watcher::Event::InitApply(object)) => {
                let value = self.to_value(object);
                if let (Some(relisted), Some(id)) = (&mut state.relisted, self.identity(&value)) {
                    relisted.insert(id);
                }
                self.on_apply(state, value).await
            }
            Ok(watcher::Event::InitDone) => {
                // Objects cached before a re-list but absent from it were deleted meanwhile.
                if let Some(relisted) = state.relisted.take() {
                    let gone: Vec<ObjectIdentity> = state
                        .cache
                        .keys()
                        .filter(|id| !relisted.contains(*id))
                        .cloned()
                        .collect();
                    for id in gone {
                        self.on_delete(state, id).await?;
                    }
                }
                if !state.synced {
                    state.synced = true;
                    tracing::debug!(target = %self.describe(), objects = state.cache.len(), "initial list done");
                    let _ = self.driver.send(Msg::Synced(self.key.clone()));
                }
                Ok(())
            }
            Ok(watcher::Event::Apply(object)) => {
                let value = self.to_value(object);
                self.on_apply(state, value).await
            }
            Ok(watcher::Event::Delete(object)) => {
                let value = self.to_value(object);
                match self.identity(&value) {
                    Some(id) => self.on_delete(state, id).await,
                    None => Ok(()),
                }
            }
            Err(err) => {
                match status_code(&err) {
                    Some(403) => {
                        let _ = self.driver.send(Msg::Fatal(WatchError::Forbidden {
                            target: self.describe(),
                            source: Box::new(err),
                        }));
                        return Err(Closed);
                    }
                    Some(404) => {
                        tracing::debug!(target = %self.describe(), error = %err, "kind not found");
                        let _ = self.driver.send(Msg::KindGone {
                            gk: self.key.0.clone(),
                            epoch: self.key.2,
                        });
                        return Err(Closed);
                    }
                    _ => {
                        tracing::debug!(target = %self.describe(), error = %err, "watch error (retrying)")
                    }
                }
                Ok(())
            }
        }
    }

    /// The object as JSON with `apiVersion` and `kind` (list items may lack them).
    fn to_value(&self, object: DynamicObject) -> Value {
        let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
        if let Some(map) = value.as_object_mut() {
            if !map.get("apiVersion").is_some_and(|v| v.is_string()) {
                map.insert(
                    "apiVersion".into(),
                    Value::String(self.resource.api_version.clone()),
                );
            }
            if !map.get("kind").is_some_and(|v| v.is_string()) {
                map.insert("kind".into(), Value::String(self.resource.kind.clone()));
            }
        }
        value
    }

    /// The identity of a watched object, if it is one of the wanted ones, as it was asked
    /// for. A cluster-scoped object is the one of its name whatever namespace it was asked for
    /// with: one whose kind was not served when it was asked for got a namespace by guess
    /// (`kubelisten status` takes an unknown kind for namespaced), and must still be found
    /// once its CRD is installed.
    fn identity(&self, value: &Value) -> Option<ObjectIdentity> {
        let meta = value.get("metadata")?;
        let id = ObjectIdentity {
            group: self.key.0.group.clone(),
            kind: self.key.0.kind.clone(),
            namespace: meta
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            name: meta.get("name").and_then(Value::as_str)?.to_owned(),
        };
        if self.wanted.contains(&id) {
            return Some(id);
        }
        if matches!(self.scope, Scope::Cluster) {
            return self.wanted.iter().find(|w| w.name == id.name).cloned();
        }
        None
    }

    async fn on_apply(&self, state: &mut TargetState, value: Value) -> Result<(), Closed> {
        let Some(id) = self.identity(&value) else {
            return Ok(());
        };
        state.rechecks.remove(&id);
        state.cache.insert(id.clone(), value.clone());
        self.report(state, id, value).await
    }

    async fn on_delete(&self, state: &mut TargetState, id: ObjectIdentity) -> Result<(), Closed> {
        state.rechecks.remove(&id);
        state.cache.remove(&id);
        tracing::debug!(object = %id, "deleted");
        self.send(StatusUpdate {
            resource: ResourceStatus::not_found(id),
            object: None,
        })
        .await
    }

    /// Computes and sends the status of `value`, scheduling a re-read if it is unschedulable.
    async fn report(
        &self,
        state: &mut TargetState,
        id: ObjectIdentity,
        value: Value,
    ) -> Result<(), Closed> {
        let mut resource = compute_live(&self.client, &value).await;
        resource.identity = id.clone();
        if resource.is_unschedulable() {
            tracing::debug!(object = %id, after = ?self.options.unschedulable_recheck, "unschedulable; re-read scheduled");
            state
                .rechecks
                .insert(id, Instant::now() + self.options.unschedulable_recheck);
        }
        tracing::trace!(object = %resource.identity, status = %resource.status, message = %resource.message, "status");
        self.send(StatusUpdate {
            resource,
            object: Some(value),
        })
        .await
    }

    async fn send(&self, update: StatusUpdate) -> Result<(), Closed> {
        self.out
            .send(WatchEvent::Update(update))
            .await
            .map_err(|_| Closed)
    }

    async fn resync(&self, state: &mut TargetState) -> Result<(), Closed> {
        let cached: Vec<(ObjectIdentity, Value)> = state
            .cache
            .iter()
            .map(|(id, v)| (id.clone(), v.clone()))
            .collect();
        tracing::debug!(target = %self.describe(), objects = cached.len(), "resync");
        for (id, value) in cached {
            state.rechecks.remove(&id);
            self.report(state, id, value).await?;
        }
        Ok(())
    }

    /// Reads `id` again from the API server and reports it (once: no new re-read is
    /// scheduled unless a watch event arrives).
    async fn recheck(&self, state: &mut TargetState, id: ObjectIdentity) -> Result<(), Closed> {
        tracing::debug!(object = %id, "re-reading unschedulable object");
        let api = self.api(Some(&id.namespace));
        match api.get(&id.name).await {
            Ok(object) => {
                let value = self.to_value(object);
                state.cache.insert(id.clone(), value.clone());
                let mut resource = compute_live(&self.client, &value).await;
                resource.identity = id;
                self.send(StatusUpdate {
                    resource,
                    object: Some(value),
                })
                .await
            }
            Err(kube::Error::Api(status)) if status.code == 404 => self.on_delete(state, id).await,
            Err(kube::Error::Api(status)) if status.code == 403 => {
                let _ = self.driver.send(Msg::Fatal(WatchError::ReadForbidden {
                    identity: id,
                    source: Box::new(kube::Error::Api(status)),
                }));
                Err(Closed)
            }
            Err(err) => {
                tracing::debug!(object = %id, error = %err, "re-read failed");
                self.send(StatusUpdate {
                    resource: ResourceStatus::unknown(id, &err),
                    object: None,
                })
                .await
            }
        }
    }
}

/// Sleeps until `at`, forever when `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(group: &str, kind: &str, ns: &str, name: &str) -> ObjectIdentity {
        ObjectIdentity {
            group: group.into(),
            kind: kind.into(),
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn automatic_scope_is_namespace_for_one_namespace() {
        let ids = [
            id("apps", "Deployment", "a", "x"),
            id("", "ConfigMap", "a", "y"),
        ];
        assert_eq!(
            ScopeStrategy::Automatic.resolve(&ids),
            ScopeStrategy::Namespace
        );
        let plan = plan_targets(&ids, ScopeStrategy::Automatic);
        assert_eq!(plan.len(), 2);
        for namespaces in plan.values() {
            assert_eq!(namespaces, &BTreeSet::from([Some("a".to_owned())]));
        }
    }

    #[test]
    fn automatic_scope_counts_cluster_scoped_as_a_namespace() {
        let ids = [
            id("apps", "Deployment", "a", "x"),
            id("", "Namespace", "", "a"),
        ];
        assert_eq!(
            ScopeStrategy::Automatic.resolve(&ids),
            ScopeStrategy::Cluster
        );
        let plan = plan_targets(&ids, ScopeStrategy::Automatic);
        assert!(plan.values().all(|n| n == &BTreeSet::from([None])));
        assert_eq!(
            ScopeStrategy::Automatic.resolve(&[]),
            ScopeStrategy::Namespace
        );
    }

    #[test]
    fn forced_scopes() {
        let ids = [
            id("apps", "Deployment", "a", "x"),
            id("apps", "Deployment", "b", "x"),
        ];
        let plan = plan_targets(&ids, ScopeStrategy::Namespace);
        let gk = GroupKind {
            group: "apps".into(),
            kind: "Deployment".into(),
        };
        assert_eq!(
            plan[&gk],
            BTreeSet::from([Some("a".to_owned()), Some("b".to_owned())])
        );
        let one = [id("apps", "Deployment", "a", "x")];
        let plan = plan_targets(&one, ScopeStrategy::Cluster);
        assert_eq!(plan[&gk], BTreeSet::from([None]));
        assert_eq!(gk.to_string(), "Deployment.apps");
        assert_eq!(GroupKind::of(&id("", "Pod", "a", "p")).to_string(), "Pod");
    }

    #[test]
    fn options_default() {
        let o = WatchOptions::default();
        assert_eq!(o.scope, ScopeStrategy::Automatic);
        assert_eq!(o.resync, Duration::from_secs(3600));
        assert_eq!(o.unschedulable_recheck, SCHEDULE_WINDOW);
    }

    #[test]
    fn watcher_error_status_codes() {
        let api = |code| {
            kube::Error::Api(
                kube::core::Status::failure("x", "Forbidden")
                    .with_code(code)
                    .boxed(),
            )
        };
        assert_eq!(
            status_code(&watcher::Error::InitialListFailed(api(403))),
            Some(403)
        );
        assert!(is_status(&watcher::Error::WatchStartFailed(api(404)), 404));
        assert_eq!(status_code(&watcher::Error::NoResourceVersion), None);
    }
}
