//! The raw list/watch loop for one resource in one namespace (or all), like client-go's reflector:
//! list (paged), then watch from the list's resourceVersion with bookmarks and a server-side
//! timeout, re-watch from the last resourceVersion when the stream ends, relist on `410 Gone`.
//! Objects keep the exact JSON text the API server sent; the [`Tracker`] turns them into events.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt};
use kube::core::params::{ListParams, WatchParams};
use kube::core::{ApiResource, DynamicObject, Request, Resource};
use kube::Client;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::state::WatchState;
use crate::dispatch::Joined;
use crate::event::{
    ObjectMeta, ObjectStatus, ResourceEvent, Tracker, Unreadable, WatchErrorInfo, WatchType,
};
use crate::metrics::{labels, Metrics};

/// What one watch reports to the dispatcher.
#[derive(Debug)]
pub enum WatchOutput {
    /// An event for the listener chain.
    Event(Arc<ResourceEvent>),
    /// A watch failure for every listener's `error` export (the watch recovers on its own).
    Error(WatchErrorInfo),
}

/// What to watch.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// Watch name for logs.
    pub name: Arc<str>,
    /// The resource.
    pub resource: ApiResource,
    /// One namespace, or `None` for all (or a cluster-scoped resource).
    pub namespace: Option<String>,
    /// Label selector.
    pub label_selector: Option<String>,
    /// Field selector.
    pub field_selector: Option<String>,
    /// Server-side watch timeout (`timeoutSeconds`); the watch is reopened after it.
    pub timeout: Duration,
    /// Page size of lists.
    pub page_size: u32,
    /// Health state shared with the server (the caller counts this task with a
    /// [`TaskGuard`](super::state::TaskGuard) moved into it).
    pub state: Arc<WatchState>,
    /// Restart and relist counters.
    pub metrics: Arc<Metrics>,
}

/// Why one list or watch request failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("resourceVersion expired: {0}")]
    Expired(String),
    #[error("request failed: {0}")]
    Request(#[from] kube::Error),
    #[error("cannot build the request: {0}")]
    Build(String),
    #[error("unreadable response: {0}")]
    Decode(String),
    #[error("no answer from the API server: {0}")]
    Stalled(String),
    #[error("the receiver is gone")]
    Closed,
}

/// How long one page of a list, or the response headers of a watch, may take: past the API
/// server's own request timeout (60 s by default), so only a request nobody answers any more (a
/// peer gone without a reset, a dropped NAT entry) is cut.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(75);

/// `request`'s result, or [`Failure::Stalled`] naming `what` when it has no answer within
/// [`REQUEST_TIMEOUT`].
async fn answered<T>(
    what: &str,
    request: impl std::future::Future<Output = kube::Result<T>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Failure::Stalled(format!(
            "no answer to {what} within {}s",
            REQUEST_TIMEOUT.as_secs()
        ))),
    }
}

/// How long past its server-side `timeoutSeconds` a watch may stay silent before it is given up
/// as dead and reopened from the last resourceVersion (the server ends it at that timeout, and
/// sends bookmarks meanwhile, so a stream silent for longer has lost its peer): the timeout
/// itself, between 5 and 30 s. That is less than the minute `/healthz` adds
/// ([`crate::app::RunSettings::max_idle`]), so a dead watch is reopened before the host is
/// reported unhealthy.
fn stall_margin(timeout: Duration) -> Duration {
    timeout.clamp(Duration::from_secs(5), Duration::from_secs(30))
}

impl Failure {
    /// Whether the API server answered the request (with an error status or an unreadable
    /// body), as opposed to not being reached or not answering at all. A 502, 503 or 504 is
    /// what a proxy or load balancer in front of an API server that is down answers: not an
    /// answer. A request that could not be built counts as answered (it fails the same way
    /// every time, and its backoff grows).
    fn answered(&self) -> bool {
        match self {
            Failure::Expired(_) | Failure::Build(_) | Failure::Decode(_) => true,
            Failure::Request(kube::Error::Api(status)) => !matches!(status.code, 502..=504),
            Failure::Request(kube::Error::FromUtf8(_)) => true,
            Failure::Request(_) | Failure::Stalled(_) | Failure::Closed => false,
        }
    }

    fn info(&self) -> WatchErrorInfo {
        match self {
            Failure::Expired(message) => WatchErrorInfo {
                code: 410,
                reason: "Expired".into(),
                message: message.clone(),
            },
            Failure::Request(kube::Error::Api(status)) => WatchErrorInfo {
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            },
            other => WatchErrorInfo {
                code: 503,
                reason: "ServiceUnavailable".into(),
                message: other.to_string(),
            },
        }
    }
}

/// A list page. `items` may be missing or `null` and `metadata` missing, as kube-core's
/// `ObjectList` accepts: API servers before the 1.28–1.30 patch releases left `items` out of
/// some empty lists (kubernetes#124568), and aggregated API servers can send a Go nil slice as
/// `null`. Both mean an empty page.
#[derive(Deserialize)]
struct ListPage {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default, deserialize_with = "null_as_empty")]
    items: Vec<Box<RawValue>>,
}

/// `null` as an empty list.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Vec<Box<RawValue>>, D::Error> {
    Ok(Option::<Vec<Box<RawValue>>>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    #[serde(default)]
    resource_version: String,
    #[serde(rename = "continue", default)]
    continue_token: Option<String>,
}

#[derive(Deserialize)]
struct WatchLine {
    #[serde(rename = "type")]
    ty: String,
    object: Box<RawValue>,
}

/// Runs the list/watch loop until `tx` is closed or `stop` is cancelled, sending events, errors
/// and sync marks. Failures are retried with exponential backoff (200 ms up to 30 s, plus up to
/// a quarter at random), as is a
/// watch that ends at once without an event or bookmark. There are two backoffs: while the API
/// server does not answer (down, unreachable, a proxy's 502-504), which starts over at any
/// answer, and while it answers but no watch works, which starts over once a watch has worked
/// (its stream received an event or bookmark, or stayed open a while). An expired
/// resourceVersion after a watch that worked is relisted at once.
///
/// `stop` (a graceful shutdown) ends the loop without losing what would not come back: it stops
/// reading the watch stream and abandons requests not answered yet, but the deletes a list's
/// diff found (first in the diff) are still sent, and the dispatcher drains them before the
/// process exits: those objects are no longer listed, so the next start would not see them.
/// The diff's creates and updates, and a catch-up, are not: the next start's list has them.
///
/// `joined` ([`ChainSlot::catch_up`](crate::dispatch::ChainSlot::catch_up)) names listeners
/// that joined the chain after the first list; each time, every object this task knows is sent
/// as an `initial` create for those listeners only, in the stream's order, so that a listener
/// added or repaired by a hot swap learns of the objects that existed before it.
pub async fn run(
    client: Client,
    spec: WatchSpec,
    tx: mpsc::Sender<WatchOutput>,
    joined: Option<(u64, mpsc::UnboundedReceiver<Joined>)>,
    stop: CancellationToken,
) {
    let (caught_up, joined) = joined.map_or((0, None), |(generation, rx)| (generation, Some(rx)));
    let held = Held::new(&spec.metrics, &spec.name);
    let mut reflector = Reflector {
        request: Request::new(DynamicObject::url_path(
            &spec.resource,
            spec.namespace.as_deref(),
        )),
        client,
        spec,
        tx,
        tracker: Tracker::default(),
        resource_version: None,
        connected: false,
        lists: 0,
        lines: 0,
        opened: None,
        joined,
        caught_up,
        stop: stop.clone(),
        held,
    };
    // Two backoffs, each growing with its failures in a row: while the API server does not
    // answer at all (down, unreachable), and while it answers but no watch works (a watch that
    // ends at once, an expiry right after a list, error statuses). Once it answers again after
    // an outage, the outage's long backoff no longer applies: the relist that usually follows
    // a restart comes at once, not up to 37.5 s later.
    let (mut unanswered, mut futile) = (Backoff::default(), Backoff::default());
    loop {
        if stop.is_cancelled() {
            return;
        }
        let watching = reflector.resource_version.clone();
        let lines_before = reflector.lines;
        reflector.opened = None;
        let result = match &watching {
            None => reflector.list().await,
            Some(rv) => reflector.watch(rv).await,
        };
        // A watch whose stream received something, or stayed open a while, worked: both
        // backoffs start over. A list alone does not reset the futile one (a list whose watch
        // fails at once, again and again, must not be retried in a tight loop), nor does a
        // request that failed, however long it took (a busy server answering 429 or 5xx slowly).
        let quick = QUICK_WATCH.min(Duration::from_secs(reflector.timeout_seconds().into()) / 2);
        let worked = watching.is_some()
            && (reflector.lines > lines_before
                || reflector
                    .opened
                    .is_some_and(|opened| opened.elapsed() >= quick));
        let answered = reflector.opened.is_some()
            || match &result {
                Ok(()) => true,
                Err(failure) => failure.answered(),
            };
        if worked {
            futile = Backoff::default();
        }
        if answered {
            unanswered = Backoff::default();
            // The loop goes on and the API server answers: alive for `/healthz`, whatever the
            // answer (a refusal that a restart would get again must not restart the process).
            reflector.spec.state.activity();
        }
        let wait = match result {
            Ok(()) if watching.is_none() || worked => None,
            Ok(()) => {
                // As client-go's "very short watch": a server (or a proxy) that ends every
                // watch at once would otherwise be asked again without pause. Not connected
                // meanwhile: nothing is watched.
                reflector.set_connected(false);
                let wait = futile.next();
                tracing::warn!(watch = %reflector.spec.name, retry_in_ms = wait.as_millis() as u64, "the watch ended at once without any event; reopening it after a backoff");
                Some(wait)
            }
            Err(Failure::Closed) => return,
            Err(failure) => {
                reflector.set_connected(false);
                let expired = matches!(failure, Failure::Expired(_))
                    || matches!(&failure, Failure::Request(kube::Error::Api(s)) if s.code == 410);
                // A resourceVersion expires in normal operation (etcd compaction): after a
                // watch that worked, the relist is at once. An expiry from a watch that did not
                // work (say right after a list whose own version is already gone), or from a
                // list (a continue token too old), waits like any other failure.
                let wait = match (expired && worked, answered) {
                    (true, _) => None,
                    (false, true) => Some(futile.next()),
                    (false, false) => Some(unanswered.next()),
                };
                let retry_in_ms = wait.map_or(0, |w| w.as_millis() as u64);
                if expired {
                    tracing::info!(watch = %reflector.spec.name, error = %failure, retry_in_ms, "resourceVersion expired, relisting");
                    reflector.resource_version = None;
                } else {
                    tracing::warn!(watch = %reflector.spec.name, error = %failure, retry_in_ms, "watch request failed");
                    reflector.spec.state.set_last_error(
                        reflector.spec.namespace.as_deref(),
                        Some(failure.to_string()),
                    );
                }
                if reflector
                    .tx
                    .send(WatchOutput::Error(failure.info()))
                    .await
                    .is_err()
                {
                    return;
                }
                wait
            }
        };
        if let Some(wait) = wait {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

/// Failures in a row of one kind, and the wait after the next one: [`FIRST_RETRY`] doubling up
/// to [`LAST_RETRY`], each lengthened by a random part of up to [`JITTER`] of it, so that the
/// replicas of a Deployment (and the watches of one host) that lost their API server together
/// do not all come back in the same instant.
#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    /// Counts a failure; returns the wait after it.
    fn next(&mut self) -> Duration {
        let wait = FIRST_RETRY
            .saturating_mul(1 << self.0.min(16))
            .min(LAST_RETRY);
        self.0 = self.0.saturating_add(1);
        wait + wait.mul_f64(JITTER * fastrand::f64())
    }
}

/// The random part of a backoff's wait, at most this share of it.
const JITTER: f64 = 0.25;

/// The first wait after a failed list or watch; it doubles with each failure in a row.
const FIRST_RETRY: Duration = Duration::from_millis(200);

/// The longest wait between two attempts.
const LAST_RETRY: Duration = Duration::from_secs(30);

/// A watch that ends sooner than this (or half its `timeoutSeconds`, if less) without a single
/// line did not work, and is retried after a backoff.
const QUICK_WATCH: Duration = Duration::from_secs(1);

struct Reflector {
    client: Client,
    spec: WatchSpec,
    request: Request,
    tx: mpsc::Sender<WatchOutput>,
    tracker: Tracker,
    resource_version: Option<String>,
    connected: bool,
    lists: u64,
    /// Events and bookmarks read from watch streams (not errors), to tell a watch that worked.
    lines: u64,
    /// When the current watch's stream opened (its response headers came), if it did.
    opened: Option<tokio::time::Instant>,
    /// Listeners joining the chain (see [`run`]).
    joined: Option<mpsc::UnboundedReceiver<Joined>>,
    /// The chain generation this task has caught up with; stamped on every event it sends.
    caught_up: u64,
    /// A graceful stop (see [`run`]).
    stop: CancellationToken,
    /// This task's share of `kubelisten_watch_objects` and `kubelisten_watch_object_bytes`
    /// (other tasks of the watch, one per namespace, add theirs).
    held: Held,
}

/// What one watch task has added to its watch's held-objects gauges, kept in step with its
/// tracker and taken back when the task ends.
struct Held {
    objects: Gauge,
    bytes: Gauge,
    reported: (usize, usize),
}

impl Held {
    fn new(metrics: &Metrics, watch: &str) -> Self {
        let watch = labels([("watch", watch)]);
        Self {
            objects: metrics.watch_objects.get_or_create(&watch).clone(),
            bytes: metrics.watch_object_bytes.get_or_create(&watch).clone(),
            reported: (0, 0),
        }
    }

    /// Moves the gauges by the change since the last report.
    fn report(&mut self, objects: usize, bytes: usize) {
        let delta = |now: usize, before: usize| now as i64 - before as i64;
        self.objects.inc_by(delta(objects, self.reported.0));
        self.bytes.inc_by(delta(bytes, self.reported.1));
        self.reported = (objects, bytes);
    }
}

impl Drop for Reflector {
    fn drop(&mut self) {
        self.set_connected(false);
        self.held.report(0, 0);
    }
}

impl Reflector {
    fn set_connected(&mut self, connected: bool) {
        if connected != self.connected {
            self.connected = connected;
            if connected {
                self.spec.state.connected.fetch_add(1, Ordering::Relaxed);
            } else {
                self.spec.state.connected.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if connected {
            self.spec.state.activity();
            self.spec
                .state
                .set_last_error(self.spec.namespace.as_deref(), None);
        }
    }

    /// `request`'s answer ([`answered`]), or [`Failure::Closed`] when the stop comes first:
    /// nothing was received from it yet.
    async fn answered<T>(
        &self,
        what: &str,
        request: impl std::future::Future<Output = kube::Result<T>>,
    ) -> Result<T, Failure> {
        tokio::select! {
            answer = answered(what, request) => answer,
            () = self.stop.cancelled() => Err(Failure::Closed),
        }
    }

    /// The watch's server-side `timeoutSeconds`: the spec's, between 1 and 290 s.
    fn timeout_seconds(&self) -> u32 {
        u32::try_from(self.spec.timeout.as_secs())
            .unwrap_or(290)
            .clamp(1, 290)
    }

    async fn send(&self, out: WatchOutput) -> Result<(), Failure> {
        self.tx.send(out).await.map_err(|_| Failure::Closed)
    }

    /// Sends `event`, stamped with the chain generation this task has caught up with.
    async fn emit(&self, mut event: ResourceEvent) -> Result<(), Failure> {
        event.chain_generation = self.caught_up;
        self.send(WatchOutput::Event(Arc::new(event))).await
    }

    /// Lists every object (paged) and diffs it against what was seen before.
    async fn list(&mut self) -> Result<(), Failure> {
        let mut params = ListParams {
            label_selector: self.spec.label_selector.clone(),
            field_selector: self.spec.field_selector.clone(),
            limit: Some(self.spec.page_size),
            ..ListParams::default()
        };
        // Pages are fetched completely before the tracker sees them, so a list that fails midway
        // leaves the tracker untouched and is simply retried.
        let mut items = Vec::new();
        let resource_version = loop {
            let req = self
                .request
                .list(&params)
                .map_err(|e| Failure::Build(e.to_string()))?;
            let text = self
                .answered("a list page", self.client.request_text(req))
                .await?;
            let page: ListPage =
                serde_json::from_str(&text).map_err(|e| Failure::Decode(e.to_string()))?;
            // A long paginated list progresses page by page.
            self.spec.state.activity();
            items.extend(page.items);
            match page.metadata.continue_token.filter(|c| !c.is_empty()) {
                Some(token) => params.continue_token = Some(token),
                None => break page.metadata.resource_version,
            }
        };
        tracing::debug!(watch = %self.spec.name, objects = items.len(), %resource_version, "listed");
        let mut unreadable = Unreadable::default();
        let listed: Vec<_> = items
            .into_iter()
            .filter_map(|item| {
                let object = self.object(item.get());
                if object.is_none() {
                    unreadable.note(item.get());
                }
                object
            })
            .collect();
        let (named, unnamed) = unreadable.count();
        if named > 0 || unnamed {
            tracing::warn!(watch = %self.spec.name, unreadable = named, unnamed, "listed objects could not be read: they keep their last known state, and no delete is reported for them (none at all this time when one has no name)");
        }
        if self.lists == 0 {
            // The first list reaches every listener of the chain as it is now, including any
            // that joined before it: nothing to catch up on.
            if let Some(joined) = self.joined.as_mut() {
                while let Ok((generation, _)) = joined.try_recv() {
                    self.caught_up = self.caught_up.max(generation);
                }
            }
        }
        let events = self.tracker.relist(listed, &unreadable);
        self.held.report(self.tracker.len(), self.tracker.bytes());
        for event in events {
            // Stopped: the deletes (first in the diff) still go out; the rest comes back with
            // the next start's list.
            if self.stop.is_cancelled() && event.kind != crate::event::EventKind::Delete {
                return Err(Failure::Closed);
            }
            self.emit(event).await?;
        }
        self.resource_version = Some(resource_version);
        self.set_connected(true);
        self.lists += 1;
        let state = &self.spec.state;
        if self.lists == 1 {
            if state.synced_tasks.fetch_add(1, Ordering::Relaxed) + 1
                >= state.tasks.load(Ordering::Relaxed)
            {
                state.synced.store(true, Ordering::Relaxed);
            }
        } else {
            self.spec
                .metrics
                .watch_relists
                .get_or_create(&labels([("watch", &self.spec.name)]))
                .inc();
        }
        Ok(())
    }

    /// Watches from `rv` until the server ends the stream; keeps `resource_version` current.
    async fn watch(&mut self, rv: &str) -> Result<(), Failure> {
        let timeout = self.timeout_seconds();
        let params = WatchParams {
            label_selector: self.spec.label_selector.clone(),
            field_selector: self.spec.field_selector.clone(),
            timeout: Some(timeout),
            bookmarks: true,
            ..WatchParams::default()
        };
        let mut req = self
            .request
            .watch(&params, rv)
            .map_err(|e| Failure::Build(e.to_string()))?;
        req.headers_mut().insert(
            http::header::ACCEPT_ENCODING,
            http::HeaderValue::from_static("identity"),
        );
        let reader = self
            .answered("the watch request", self.client.request_stream(req))
            .await?;
        self.opened = Some(tokio::time::Instant::now());
        // Silence while waiting for the next line (not while this task waits on back-pressure
        // or a catch-up) longer than this: the peer is gone.
        let limit = Duration::from_secs(u64::from(timeout));
        let limit = limit + stall_margin(limit);
        let stalled = || {
            Failure::Stalled(format!(
                "the watch was silent for {}s (timeoutSeconds={timeout}); reopening it",
                limit.as_secs()
            ))
        };
        self.set_connected(true);
        self.spec
            .metrics
            .watch_restarts
            .get_or_create(&labels([("watch", &self.spec.name)]))
            .inc();
        let mut lines = reader.lines();
        let silent = tokio::time::sleep(limit);
        tokio::pin!(silent);
        // Built once, not per line.
        let stopped = self.stop.clone().cancelled_owned();
        tokio::pin!(stopped);
        loop {
            silent.as_mut().reset(tokio::time::Instant::now() + limit);
            // A join first (rare, and it must not wait behind a steady stream of lines), then a
            // line, and silence only when no line is there.
            let line = tokio::select! {
                biased;
                // A graceful stop: every line read so far has been sent.
                () = &mut stopped => return Err(Failure::Closed),
                Some(joined) = recv_joined(&mut self.joined) => {
                    self.catch_up(joined).await?;
                    continue;
                }
                line = lines.next() => line,
                () = &mut silent => return Err(stalled()),
            };
            let Some(line) = line else {
                break;
            };
            let line = line.map_err(|e| Failure::Decode(format!("watch stream broke: {e}")))?;
            self.spec.state.activity();
            if line.trim().is_empty() {
                continue;
            }
            let parsed: WatchLine = match serde_json::from_str(&line) {
                Ok(parsed) => parsed,
                Err(err) => {
                    tracing::warn!(watch = %self.spec.name, error = %err, "skipping an unreadable watch line");
                    continue;
                }
            };
            let ty = match parsed.ty.as_str() {
                "ADDED" => WatchType::Added,
                "MODIFIED" => WatchType::Modified,
                "DELETED" => WatchType::Deleted,
                "BOOKMARK" => {
                    self.lines += 1;
                    if let Some(rv) = bookmark_rv(parsed.object.get()) {
                        self.resource_version = Some(rv);
                    }
                    continue;
                }
                "ERROR" => {
                    let status: serde_json::Value =
                        serde_json::from_str(parsed.object.get()).unwrap_or_default();
                    let info = WatchErrorInfo::from_status(&status);
                    if info.code == 410 {
                        return Err(Failure::Expired(info.message));
                    }
                    return Err(Failure::Request(kube::Error::Api(Box::new(
                        kube::core::Status {
                            code: info.code,
                            reason: info.reason,
                            message: info.message,
                            ..Default::default()
                        },
                    ))));
                }
                other => {
                    tracing::warn!(watch = %self.spec.name, r#type = other, "skipping a watch event of unknown type");
                    continue;
                }
            };
            self.lines += 1;
            let Some((object, meta, status)) = self.object(parsed.object.get()) else {
                continue;
            };
            let rv = meta.resource_version.clone();
            if let Some(event) = self.tracker.apply(ty, object, meta, status, false) {
                self.held.report(self.tracker.len(), self.tracker.bytes());
                self.emit(event).await?;
            }
            self.resource_version = Some(rv);
        }
        Ok(())
    }

    /// Sends every known object as an `initial` create for the listeners in `joined` (and in
    /// any further announcements already waiting).
    async fn catch_up(&mut self, (generation, joined): Joined) -> Result<(), Failure> {
        let mut names: Vec<Arc<str>> = joined.to_vec();
        let mut generation = generation;
        if let Some(rx) = self.joined.as_mut() {
            while let Ok((later, more)) = rx.try_recv() {
                generation = generation.max(later);
                names.extend(more.iter().cloned());
            }
        }
        names.sort();
        names.dedup();
        let only: Arc<[Arc<str>]> = names.into();
        // Stamped with the generation the listeners joined at: should one of them be removed
        // and a new one join under the same name before this is dispatched, the newcomer (a
        // later generation) does not take it; its own catch-up covers it.
        let events = self.tracker.snapshot(&only, generation);
        tracing::info!(watch = %self.spec.name, listeners = ?only, objects = events.len(), "listeners joined the chain: sending them the existing objects");
        for event in events {
            // Stopped: the next start's list reaches every listener anyway.
            if self.stop.is_cancelled() {
                return Err(Failure::Closed);
            }
            self.send(WatchOutput::Event(Arc::new(event))).await?;
        }
        // From here on, this task's events reach the joined listeners too.
        self.caught_up = self.caught_up.max(generation);
        Ok(())
    }

    /// The object's text (with apiVersion/kind added when a list omitted them) and metadata.
    fn object(&self, raw: &str) -> Option<(Arc<str>, ObjectMeta, ObjectStatus)> {
        let mut value: serde_json::Value = match serde_json::from_str(raw) {
            Ok(v) => v,
            Err(err) => {
                tracing::warn!(watch = %self.spec.name, error = %err, "skipping an object that is not JSON");
                return None;
            }
        };
        let text = if value.get("apiVersion").is_some() && value.get("kind").is_some() {
            Arc::from(raw)
        } else {
            let ar = &self.spec.resource;
            if let Some(map) = value.as_object_mut() {
                map.insert("apiVersion".into(), ar.api_version.clone().into());
                map.insert("kind".into(), ar.kind.clone().into());
            }
            Arc::from(with_type_meta(raw, &ar.api_version, &ar.kind))
        };
        match ObjectMeta::from_value(&value) {
            Ok(meta) => Some((text, meta, ObjectStatus::of(&value))),
            Err(err) => {
                tracing::warn!(watch = %self.spec.name, error = %err, "skipping an object without usable metadata");
                None
            }
        }
    }
}

/// Prepends `apiVersion` and `kind` to an object's JSON text, leaving the rest byte for byte.
fn with_type_meta(raw: &str, api_version: &str, kind: &str) -> String {
    let rest = raw.trim_start().strip_prefix('{').unwrap_or(raw);
    let head = format!(
        "{{\"apiVersion\":{},\"kind\":{}",
        serde_json::Value::from(api_version),
        serde_json::Value::from(kind)
    );
    if rest.trim_start().starts_with('}') {
        format!("{head}{rest}")
    } else {
        format!("{head},{rest}")
    }
}

fn bookmark_rv(raw: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(raw).ok()?;
    value
        .pointer("/metadata/resourceVersion")?
        .as_str()
        .map(str::to_string)
}

/// The next announcement of `joined`, or never when there is no receiver (or it is closed).
async fn recv_joined(joined: &mut Option<mpsc::UnboundedReceiver<Joined>>) -> Option<Joined> {
    match joined {
        Some(rx) => match rx.recv().await {
            Some(names) => Some(names),
            None => {
                *joined = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::stream::BoxStream;
    use http_body::Frame;
    use http_body_util::StreamBody;
    use kube::core::GroupVersionKind;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::oneshot;

    type Chunks = BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>;

    /// A watch stream chunk, and a signal to send when the watch task has read it.
    type Line = (String, Option<oneshot::Sender<()>>);

    fn object(name: &str, rv: u64) -> String {
        format!(
            r#"{{"apiVersion":"test.kubelisten.dev/v1","kind":"Thing","metadata":{{"name":"{name}","namespace":"ns","uid":"uid-{name}","resourceVersion":"{rv}"}}}}"#
        )
    }

    fn modified(name: &str, rv: u64) -> String {
        format!(
            "{{\"type\":\"MODIFIED\",\"object\":{}}}\n",
            object(name, rv)
        )
    }

    /// A fake API server for one namespaced kind: a list answers `list`; the (one) watch streams
    /// the lines sent on the returned channel, signalling each line's sender as the watch task
    /// reads the line.
    fn fake_api(list: String) -> (Client, mpsc::UnboundedSender<Line>) {
        let (lines_tx, lines_rx) = mpsc::unbounded_channel::<Line>();
        let lines_rx = Arc::new(std::sync::Mutex::new(Some(lines_rx)));
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let watch = req.uri().query().is_some_and(|q| q.contains("watch=true"));
            let body: Chunks = if watch {
                let rx = lines_rx.lock().unwrap().take();
                match rx {
                    Some(rx) => futures::stream::unfold(rx, |mut rx| async move {
                        let (line, read) = rx.recv().await?;
                        if let Some(read) = read {
                            let _ = read.send(());
                        }
                        Some((Ok(Frame::data(Bytes::from(line))), rx))
                    })
                    .boxed(),
                    // A second watch would mean the first one ended: hang instead.
                    None => futures::stream::pending().boxed(),
                }
            } else {
                futures::stream::once(futures::future::ready(Ok(Frame::data(Bytes::from(
                    list.clone(),
                )))))
                .boxed()
            };
            async move {
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .status(200)
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(StreamBody::new(body))
                        .unwrap(),
                )
            }
        });
        (Client::new(service, "default"), lines_tx)
    }

    /// A fake API server answering the `n`th list (0-based) with `list(n)` and the `n`th watch
    /// with the whole body `watch(n)` at once; every request is reported as (is a watch, when).
    fn scripted_api(
        list: impl Fn(usize) -> String + Send + Sync + 'static,
        watch: impl Fn(usize) -> String + Send + Sync + 'static,
    ) -> (Client, Requests) {
        scripted_replies(list, move |n| Some((Duration::ZERO, 200, watch(n))))
    }

    /// Every request a scripted fake API server answered: (is a watch, when).
    type Requests = mpsc::UnboundedReceiver<(bool, tokio::time::Instant)>;

    /// [`scripted_api`] whose `n`th watch is answered after a while, with a status:
    /// `watch(n)` is (after, status, body), or `None` for a connection refused.
    fn scripted_replies(
        list: impl Fn(usize) -> String + Send + Sync + 'static,
        watch: impl Fn(usize) -> Option<(Duration, u16, String)> + Send + Sync + 'static,
    ) -> (Client, Requests) {
        let (seen_tx, seen_rx) = mpsc::unbounded_channel();
        let (lists, watches) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let is_watch = req.uri().query().is_some_and(|q| q.contains("watch=true"));
            let _ = seen_tx.send((is_watch, tokio::time::Instant::now()));
            let reply = if is_watch {
                watch(watches.fetch_add(1, Ordering::Relaxed))
            } else {
                let body = list(lists.fetch_add(1, Ordering::Relaxed));
                Some((Duration::ZERO, 200, body))
            };
            async move {
                let Some((after, status, body)) = reply else {
                    return Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
                };
                tokio::time::sleep(after).await;
                Ok(http::Response::builder()
                    .status(status)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(kube::client::Body::from(body.into_bytes()))
                    .unwrap())
            }
        });
        (Client::new(service, "default"), seen_rx)
    }

    const EMPTY_LIST: &str = r#"{"metadata":{"resourceVersion":"7"},"items":[]}"#;

    const EXPIRED: &str = r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old resource version","reason":"Expired","code":410}}"#;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_listed_object_that_cannot_be_read_is_not_reported_deleted() {
        // o2's labels are not strings in the second list; the third has no o2 at all.
        let unreadable = r#"{"apiVersion":"test.kubelisten.dev/v1","kind":"Thing","metadata":{"name":"o2","namespace":"ns","uid":"uid-o2","resourceVersion":"5","labels":{"a":1}}}"#;
        let (client, _seen) = scripted_api(
            move |n| {
                let items = match n {
                    0 => format!("{},{}", object("o1", 1), object("o2", 2)),
                    1 => format!("{},{unreadable}", object("o1", 1)),
                    _ => object("o1", 1),
                };
                format!(r#"{{"metadata":{{"resourceVersion":"9"}},"items":[{items}]}}"#)
            },
            |_| format!("{EXPIRED}\n"),
        );
        let (tx, mut rx) = mpsc::channel(1000);
        let task = tokio::spawn(run(client, things_spec(), tx, None, Default::default()));
        let mut seen = Vec::new();
        while seen.len() < 5 {
            seen.push(match rx.recv().await {
                Some(WatchOutput::Event(event)) => {
                    format!("{} {}", event.kind.as_str(), event.meta.name)
                }
                Some(WatchOutput::Error(error)) => format!("error {}", error.code),
                None => panic!("the watch ended"),
            });
        }
        task.abort();
        assert_eq!(
            seen,
            [
                "create o1",
                "create o2",
                "error 410",
                "error 410",
                "delete o2"
            ],
            "o2's delete only once a list no longer has it"
        );
    }

    fn things_spec() -> WatchSpec {
        WatchSpec {
            name: "things".into(),
            resource: ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("test.kubelisten.dev", "v1", "Thing"),
                "things",
            ),
            namespace: Some("ns".into()),
            label_selector: None,
            field_selector: None,
            timeout: Duration::from_secs(290),
            page_size: 500,
            state: Arc::default(),
            metrics: Arc::default(),
        }
    }

    /// The times of the next `n` requests of one kind (watches or lists), skipping the others.
    async fn next_requests(
        seen: &mut Requests,
        watches: bool,
        n: usize,
    ) -> Vec<tokio::time::Instant> {
        let mut times = Vec::new();
        while times.len() < n {
            let (is_watch, at) = seen.recv().await.expect("the fake API server is gone");
            if is_watch == watches {
                times.push(at);
            }
        }
        times
    }

    /// Milliseconds between successive times (paused clock: exact, but for timer rounding).
    fn gaps_ms(times: &[tokio::time::Instant]) -> Vec<u64> {
        times
            .windows(2)
            .map(|w| u64::try_from((w[1] - w[0]).as_millis()).unwrap())
            .collect()
    }

    /// Whether each gap is the expected backoff wait, within its jitter and the timer's rounding.
    fn about(gaps: &[u64], expected: &[u64]) -> bool {
        about_after(gaps, 0, expected)
    }

    /// Like [`about`] for gaps that are `answer` ms (the fake server's answer time) and a wait.
    fn about_after(gaps: &[u64], answer: u64, expected: &[u64]) -> bool {
        gaps.len() == expected.len()
            && gaps
                .iter()
                .zip(expected)
                .all(|(gap, want)| *gap >= answer + *want && *gap <= answer + *want + *want / 4 + 5)
    }

    #[test]
    fn backoff_waits_double_and_are_spread_by_the_jitter() {
        let firsts: Vec<Duration> = (0..50).map(|_| Backoff::default().next()).collect();
        assert!(firsts
            .iter()
            .all(|w| *w >= FIRST_RETRY && *w <= FIRST_RETRY.mul_f64(1.0 + JITTER)));
        assert!(
            firsts.iter().any(|w| *w != firsts[0]),
            "50 first waits all equal: {firsts:?}"
        );
        let mut backoff = Backoff::default();
        let waits: Vec<Duration> = (0..12).map(|_| backoff.next()).collect();
        for (n, wait) in waits.iter().enumerate() {
            let base = FIRST_RETRY.saturating_mul(1 << n).min(LAST_RETRY);
            assert!(
                *wait >= base && *wait <= base.mul_f64(1.0 + JITTER),
                "{n}: {wait:?}"
            );
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_list_the_api_server_keeps_refusing_is_alive_and_not_ready() {
        // A watch added without its RBAC: every list is answered 403.
        let forbidden = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"things.test.kubelisten.dev is forbidden: User \"x\" cannot list resource \"things\"","reason":"Forbidden","code":403}"#;
        let service = tower::service_fn(move |_: http::Request<kube::client::Body>| async move {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(403)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(kube::client::Body::from(forbidden.as_bytes().to_vec()))
                    .unwrap(),
            )
        });
        let spec = things_spec();
        let state = spec.state.clone();
        state.dispatcher_alive.store(true, Ordering::Relaxed);
        state.activity();
        let (tx, mut rx) = mpsc::channel(1000);
        let task = tokio::spawn(run(
            Client::new(service, "default"),
            spec,
            tx,
            None,
            Default::default(),
        ));
        let errors = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let max_idle = crate::app::RunSettings::default().max_idle();
        tokio::time::sleep(max_idle * 3).await;
        // Alive: the loop goes on and the API server answers; a restart would get the same 403.
        assert_eq!(state.problem(max_idle), None);
        // Not ready, and the reason is at hand for /readyz.
        assert!(!state.ready());
        let error = state.last_error().expect("the last error is kept");
        assert!(error.contains("is forbidden"), "{error}");
        task.abort();
        errors.abort();
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_list_without_items_or_with_null_items_is_an_empty_list() {
        for list in [
            r#"{"kind":"ThingList","apiVersion":"test.kubelisten.dev/v1","metadata":{"resourceVersion":"7"}}"#,
            r#"{"metadata":{"resourceVersion":"7"},"items":null}"#,
            r#"{"items":[]}"#,
        ] {
            let (client, mut seen) = scripted_api(move |_| list.into(), |_| modified("o1", 8));
            let (tx, mut rx) = mpsc::channel(1000);
            let spec = things_spec();
            let state = spec.state.clone();
            let task = tokio::spawn(run(client, spec, tx, None, Default::default()));
            // The list is taken: a watch follows it (a refused list would be retried with
            // backoff instead, for good), and its event arrives.
            tokio::time::timeout(Duration::from_secs(60), next_requests(&mut seen, true, 1))
                .await
                .unwrap_or_else(|_| panic!("{list}: no watch followed the list"));
            match rx.recv().await {
                Some(WatchOutput::Event(event)) => assert_eq!(event.meta.name, "o1", "{list}"),
                Some(WatchOutput::Error(error)) => panic!("{list}: error {}", error.message),
                None => panic!("{list}: the watch ended"),
            }
            assert!(state.synced.load(Ordering::Relaxed), "{list}");
            task.abort();
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_watch_that_ends_at_once_without_a_line_is_reopened_after_a_growing_backoff() {
        let (client, mut seen) = scripted_api(|_| EMPTY_LIST.into(), |_| String::new());
        let (tx, _rx) = mpsc::channel(1000);
        let task = tokio::spawn(run(client, things_spec(), tx, None, Default::default()));
        let first = next_requests(&mut seen, false, 1).await;
        let watches = next_requests(&mut seen, true, 6).await;
        assert_eq!(
            gaps_ms(&[first[0], watches[0]]),
            vec![0],
            "the first watch follows the list"
        );
        let gaps = gaps_ms(&watches);
        assert!(about(&gaps, &[200, 400, 800, 1600, 3200]), "{gaps:?}");
        task.abort();
        // Re-watched from the list's version each time: no relist.
        while let Ok((is_watch, _)) = seen.try_recv() {
            assert!(is_watch, "a list after an empty watch");
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_watch_request_that_fails_slowly_does_not_reset_the_backoff() {
        let failed = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"busy","reason":"InternalError","code":500}"#;
        let (client, mut seen) = scripted_replies(
            |_| EMPTY_LIST.into(),
            move |_| Some((Duration::from_secs(2), 500, failed.to_string())),
        );
        let (tx, _rx) = mpsc::channel(1000);
        let task = tokio::spawn(run(client, things_spec(), tx, None, Default::default()));
        let watches = next_requests(&mut seen, true, 5).await;
        task.abort();
        let gaps = gaps_ms(&watches);
        // 2 s for the answer, then the backoff, growing.
        assert!(about_after(&gaps, 2000, &[200, 400, 800, 1600]), "{gaps:?}");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn once_the_api_server_answers_again_an_outages_backoff_no_longer_applies() {
        // The server down: connections refused, or a proxy's 502.
        outage_then_expiry(|| None).await;
        let bad_gateway = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"no upstream","reason":"InternalError","code":502}"#;
        outage_then_expiry(|| Some((Duration::ZERO, 502, bad_gateway.to_string()))).await;
    }

    /// A restart: the first watch works, then six get `down()` (the server is down), then
    /// the restarted server answers the old version with an expiry, and the relist's watch
    /// works.
    async fn outage_then_expiry(
        down: impl Fn() -> Option<(Duration, u16, String)> + Send + Sync + 'static,
    ) {
        let (client, mut seen) = scripted_replies(
            |_| EMPTY_LIST.into(),
            move |n| match n {
                0 | 8 => Some((Duration::ZERO, 200, modified("o1", 8 + n as u64))),
                1..=6 => down(),
                _ => Some((Duration::ZERO, 200, format!("{EXPIRED}\n"))),
            },
        );
        let (tx, _rx) = mpsc::channel(1000);
        let task = tokio::spawn(run(client, things_spec(), tx, None, Default::default()));
        let mut requests = Vec::new();
        while requests.len() < 11 {
            requests.push(seen.recv().await.expect("the fake API server is gone"));
        }
        task.abort();
        let kinds: Vec<bool> = requests.iter().map(|(watch, _)| *watch).collect();
        let times: Vec<_> = requests.iter().map(|(_, at)| *at).collect();
        // list, watch (works, ends), 6 refused watches, the expired watch, list, watch.
        let mut expected = vec![false];
        expected.extend([true; 8]);
        expected.extend([false, true]);
        assert_eq!(kinds, expected);
        let gaps = gaps_ms(&times);
        // The watch that worked is reopened at once; the outage's backoff; then 200 ms after
        // the expiry (not the 12.8 s the outage had reached), and the relist's watch at once.
        assert!(
            about(&gaps, &[0, 0, 200, 400, 800, 1600, 3200, 6400, 200, 0]),
            "{gaps:?}"
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_expiry_after_a_working_watch_relists_at_once_and_one_right_after_a_list_waits() {
        // Watches 0 and 3 work (a line, then the expiry); 1, 2 and 4 expire at once.
        let (client, mut seen) = scripted_api(
            |_| EMPTY_LIST.into(),
            move |n| match n {
                0 | 3 => format!("{}{EXPIRED}\n", modified("o1", 8 + n as u64)),
                _ => format!("{EXPIRED}\n"),
            },
        );
        let (tx, _rx) = mpsc::channel(1000);
        let task = tokio::spawn(run(client, things_spec(), tx, None, Default::default()));
        let lists = next_requests(&mut seen, false, 6).await;
        task.abort();
        let gaps = gaps_ms(&lists);
        assert!(about(&gaps, &[0, 200, 400, 0, 200]), "{gaps:?}");
    }

    async fn next_event(rx: &mut mpsc::Receiver<WatchOutput>) -> Arc<ResourceEvent> {
        match rx.recv().await {
            Some(WatchOutput::Event(event)) => event,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// (kind, name, resourceVersion, chain generation, only)
    fn summary(event: &ResourceEvent) -> (&'static str, String, String, u64, Option<Vec<String>>) {
        (
            event.kind.as_str(),
            event.meta.name.clone(),
            event.meta.resource_version.clone(),
            event.chain_generation,
            event
                .only
                .as_ref()
                .map(|names| names.iter().map(ToString::to_string).collect()),
        )
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_event_read_before_the_catch_up_keeps_the_old_generation_and_the_catch_up_has_it() {
        let list = format!(
            r#"{{"metadata":{{"resourceVersion":"2"}},"items":[{},{}]}}"#,
            object("o1", 1),
            object("o2", 2)
        );
        let (client, lines) = fake_api(list);
        let spec = things_spec();
        // Room for one event: the task blocks on the second until the test reads.
        let (tx, mut rx) = mpsc::channel(1);
        let (joined_tx, joined_rx) = mpsc::unbounded_channel::<Joined>();
        let task = tokio::spawn(run(
            client,
            spec,
            tx,
            Some((0, joined_rx)),
            Default::default(),
        ));
        for name in ["o1", "o2"] {
            let event = next_event(&mut rx).await;
            assert_eq!(
                (event.kind, event.meta.name.as_str(), event.initial),
                (crate::event::EventKind::Create, name, true)
            );
        }
        // o1's update fills the channel; o2's is read from the stream, and the task waits to
        // send it when listener `b` joins the chain at generation 1.
        lines.send((modified("o1", 3), None)).unwrap();
        let (read_tx, read_rx) = oneshot::channel();
        lines.send((modified("o2", 4), Some(read_tx))).unwrap();
        read_rx.await.unwrap();
        joined_tx.send((1, vec![Arc::from("b")].into())).unwrap();
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(summary(&*next_event(&mut rx).await));
        }
        // The catch-up's creates come in no particular order.
        seen[2..].sort();
        let b = Some(vec!["b".to_string()]);
        assert_eq!(
            seen,
            vec![
                // Read before the catch-up: not for `b`, whose catch-up covers these versions.
                ("update", "o1".into(), "3".into(), 0, None),
                ("update", "o2".into(), "4".into(), 0, None),
                // The catch-up, for `b` alone, with the versions read before it.
                ("create", "o1".into(), "3".into(), 1, b.clone()),
                ("create", "o2".into(), "4".into(), 1, b),
            ]
        );
        // From now on, events reach `b` too.
        lines.send((modified("o1", 5), None)).unwrap();
        assert_eq!(
            summary(&*next_event(&mut rx).await),
            ("update", "o1".into(), "5".into(), 1, None)
        );
        task.abort();
    }

    #[test]
    fn adds_type_meta_without_touching_the_rest() {
        assert_eq!(
            with_type_meta(r#"{"metadata":{"name":"a"}}"#, "v1", "ConfigMap"),
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"}}"#
        );
        assert_eq!(
            with_type_meta("{}", "v1", "X"),
            r#"{"apiVersion":"v1","kind":"X"}"#
        );
    }
}
