//! The HTTP servers (axum). The probe server (`--health-port`, on the pod network) serves
//! `/healthz`, `/readyz` and `/metrics`; `/status`, which names every watched object, has a
//! listener of its own ([`status_router`], `--status-bind`, loopback by default). The routers
//! are plain functions of the shared state so tests drive them with `oneshot`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::Value;

use crate::metrics::Metrics;
use crate::watch::leader::ElectionHealth;
use crate::watch::state::WatchState;

/// One listener as `/status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListenerStatus {
    /// Name.
    pub name: String,
    /// `classname` or `reference`.
    pub mode: String,
    /// Digest of the module that runs.
    pub digest: String,
    /// The last rejected update of this listener: digest and error.
    pub rejected: Option<Value>,
}

/// One watch as the server sees it.
#[derive(Clone)]
pub struct WatchEntry {
    /// The watch's name.
    pub name: String,
    /// Its state (the resource watched among it).
    pub state: Arc<WatchState>,
    /// Its listeners as they are now (running digest, last rejected update).
    pub listeners: Arc<dyn Fn() -> Vec<ListenerStatus> + Send + Sync>,
}

/// Shared state of the server.
pub struct ServerState {
    /// Metrics to expose.
    pub metrics: Arc<Metrics>,
    /// Running watches (empty while standby).
    pub watches: Mutex<Vec<WatchEntry>>,
    /// `None` without leader election, else whether this process leads.
    pub leader: Mutex<Option<bool>>,
    /// Longest tolerated silence of a watch (watch timeout plus a margin).
    pub max_idle: Duration,
    /// Set when the run failed for good (a task died and the process is about to exit).
    pub fatal: Mutex<Option<String>>,
    /// The hot swap's rejections, when listeners come from a ConfigMap.
    pub rejections: Mutex<Option<Arc<dyn RejectionSource>>>,
    /// The leader election's attempts, and how long they may fail before a standby is unready.
    pub election: Mutex<Option<(Arc<ElectionHealth>, Duration)>>,
    /// Set while a standby compiles the listeners' modules ahead of a takeover.
    warming: std::sync::atomic::AtomicBool,
    /// One `/status` body is built at a time (it is O(objects)); further requests wait. The
    /// permit is owned by the build itself, so a client that leaves does not end its turn.
    status_turn: Arc<tokio::sync::Semaphore>,
}

/// What the hot swap rejected, for `/status` and `/readyz`.
pub trait RejectionSource: Send + Sync {
    /// Every rejection of the current content (listener, or `*` for `listeners.yaml`, to
    /// `{digest, error}`).
    fn rejected(&self) -> BTreeMap<String, Value>;
    /// What the ConfigMap should run and nothing runs in its place (a rejection, the ConfigMap
    /// itself while it is not there), each described in full for `/readyz`.
    fn unserved(&self) -> Vec<String>;
}

impl ServerState {
    /// A state with no watches yet.
    pub fn new(metrics: Arc<Metrics>, leader_election: bool, max_idle: Duration) -> Self {
        Self {
            metrics,
            watches: Mutex::new(Vec::new()),
            leader: Mutex::new(leader_election.then_some(false)),
            max_idle,
            fatal: Mutex::new(None),
            rejections: Mutex::new(None),
            election: Mutex::new(None),
            warming: std::sync::atomic::AtomicBool::new(false),
            status_turn: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// Sets whether a standby is compiling the listeners' modules ahead of a takeover: it is
    /// not ready meanwhile, so a rolling update waits for a replica that can take over without
    /// compiling (its leader is not stopped for a cold replica).
    pub fn set_warming(&self, warming: bool) {
        self.warming.store(warming, Ordering::Relaxed);
    }

    /// Makes a standby unready while the election's attempts have failed (errors, no answer)
    /// for longer than `lease_duration`: it could not take over if the leader died.
    pub fn set_election(&self, health: Arc<ElectionHealth>, lease_duration: Duration) {
        *Self::lock(&self.election) = Some((health, lease_duration));
    }

    /// Shows the hot swap's rejections in `/status`, and fails `/readyz` while one has nothing
    /// running in its place, or while the modules ConfigMap has not been found.
    pub fn set_rejections(&self, source: Arc<dyn RejectionSource>) {
        *Self::lock(&self.rejections) = Some(source);
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets whether this process leads.
    pub fn set_leader(&self, leader: bool) {
        *Self::lock(&self.leader) = Some(leader);
        self.metrics.leader.set(i64::from(leader));
    }

    /// Replaces the running watches.
    pub fn set_watches(&self, watches: Vec<WatchEntry>) {
        *Self::lock(&self.watches) = watches;
    }

    /// Marks the run as failed.
    pub fn set_fatal(&self, why: String) {
        *Self::lock(&self.fatal) = Some(why);
    }

    fn standby(&self) -> bool {
        *Self::lock(&self.leader) == Some(false)
    }

    /// The running watches, copied out (names and handles: cheap) so that no handler holds
    /// the lock while it works on them.
    fn watch_entries(&self) -> Vec<WatchEntry> {
        Self::lock(&self.watches).clone()
    }
}

/// The probe server's router: `/healthz`, `/readyz`, `/metrics`.
pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The status listener's router: `/status`.
pub fn status_router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/status", get(status))
        .with_state(state)
}

/// Binds a server's address (the probe server's, the status listener's). The unspecified IPv6
/// address (`::`, the probe server's default) is always bound dual-stack, IPv4 included
/// whatever `net.ipv6.bindv6only` says, so the kubelet's probes reach it on IPv4, IPv6 and
/// dual-stack clusters alike (to serve IPv6 only, bind a specific IPv6 address); where the
/// kernel has no IPv6 at all, `0.0.0.0` (the same port) is bound instead.
///
/// # Errors
/// The address cannot be bound (in use, not allowed).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let std = if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        match dual_stack(addr) {
            Ok(listener) => listener,
            // No IPv6 in this kernel (or none configured): the socket cannot be made, the
            // dual-stack option is refused, or there is no IPv6 address to bind.
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(
                        libc::EAFNOSUPPORT
                            | libc::EPROTONOSUPPORT
                            | libc::EADDRNOTAVAIL
                            | libc::EINVAL
                    )
                ) || matches!(
                    err.kind(),
                    std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::Unsupported
                ) =>
            {
                tracing::warn!(error = %err, "no IPv6 here: the health server binds IPv4 only (0.0.0.0)");
                std::net::TcpListener::bind(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    addr.port(),
                ))?
            }
            Err(err) => return Err(err),
        }
    } else {
        std::net::TcpListener::bind(addr)?
    };
    std.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(std)
}

/// Where `/status` is served (`--status-bind`), and whether it was chosen or is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusAddr {
    /// The address to bind.
    pub addr: std::net::SocketAddr,
    /// The address was given (`--status-bind`, `KUBELISTEN_STATUS_BIND`): failing to bind it
    /// stops the start. The default (`127.0.0.1:8081`) was not asked for, and may be taken by
    /// another process on the host or in the pod (a second kubelisten, a controller-runtime
    /// manager's probe port): then the process runs without `/status` (see [`bind_status`]).
    pub given: bool,
}

/// Binds the status listener's address ([`bind`]). When the default address cannot be bound,
/// a warning says why and how to choose another, and `Ok(None)`: the process runs without
/// `/status`, an optional debugging endpoint.
///
/// # Errors
/// An address that was given ([`StatusAddr::given`]) cannot be bound.
pub fn bind_status(status: StatusAddr) -> std::io::Result<Option<tokio::net::TcpListener>> {
    match bind(status.addr) {
        Ok(listener) => Ok(Some(listener)),
        Err(err) if !status.given => {
            tracing::warn!(
                addr = %status.addr,
                error = %err,
                "cannot bind the default status address {}: /status is off; choose another address with --status-bind (KUBELISTEN_STATUS_BIND), or `off` to silence this",
                status.addr
            );
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// A listening IPv6 socket on `addr` that takes IPv4 connections too.
fn dual_stack(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(false)?;
    // As std and tokio do for a listener on Unix: a restart may bind while old connections
    // linger.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Serves `router` ([`router`] or [`status_router`]) on `listener` until `shutdown`.
///
/// # Errors
/// The server failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Liveness: fails when a watch task or dispatcher died or a watch went silent.
async fn healthz(State(state): State<Arc<ServerState>>) -> (StatusCode, String) {
    if let Some(why) = ServerState::lock(&state.fatal).clone() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        );
    }
    let problems: Vec<String> = state
        .watch_entries()
        .iter()
        .filter_map(|w| {
            w.state
                .problem(state.max_idle)
                .map(|p| format!("watch {}: {p}", w.name))
        })
        .collect();
    if problems.is_empty() {
        (StatusCode::OK, "ok\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {}\n", problems.join("; ")),
        )
    }
}

/// Readiness: every watch listed once and is connected, the modules ConfigMap (if any) was
/// found, and nothing it names is rejected with nothing in its place; a standby says so. A watch still waiting for
/// its target is named with the reason.
async fn readyz(State(state): State<Arc<ServerState>>) -> (StatusCode, String) {
    if state.standby() {
        let failing = ServerState::lock(&state.election)
            .as_ref()
            .and_then(|(health, lease)| health.failing().filter(|(for_, _)| for_ > lease));
        if let Some((for_, why)) = failing {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "not ready: standby, and the leader election has failed for {}s ({why}): it could not take over\n",
                    for_.as_secs()
                ),
            );
        }
        if state.warming.load(Ordering::Relaxed) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: standby, compiling the listeners' modules ahead of a takeover\n".into(),
            );
        }
        return (StatusCode::OK, "ok: standby, not the leader\n".into());
    }
    let watches = state.watch_entries();
    if watches.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting\n".into(),
        );
    }
    let unserved = ServerState::lock(&state.rejections)
        .as_ref()
        .map(|r| r.unserved())
        .unwrap_or_default();
    let waiting: Vec<String> = unserved
        .into_iter()
        .chain(watches.iter().filter(|w| !w.state.ready()).map(|w| {
            if let Some(why) = w.state.waiting() {
                return format!("watch {} waits for its target ({why})", w.name);
            }
            let synced = w.state.synced.load(Ordering::Relaxed);
            let error = w
                .state
                .last_error()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default();
            format!(
                "watch {} {}{error}",
                w.name,
                if synced {
                    "disconnected"
                } else {
                    "has not listed yet"
                }
            )
        }))
        .collect();
    if waiting.is_empty() {
        (StatusCode::OK, "ok: leader\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", waiting.join("; ")),
        )
    }
}

async fn metrics(State(state): State<Arc<ServerState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Per watch: sync state, listeners (running digest, last rejected update) and every object's
/// computed status. The body is O(objects), so it is built one request at a time (a request
/// that comes meanwhile waits for its turn), from a copy of the watch list taken under the lock
/// and released at once, on the blocking pool: neither the probes nor the lease renewals,
/// which may share the one worker thread of a 1-CPU pod, wait for it.
///
/// The turn (an owned permit) goes into the blocking build and ends with it: when the client
/// leaves, hyper drops this handler, but the build cannot be cancelled and runs on, so a
/// permit held here would let the next request start a second build alongside it.
async fn status(State(state): State<Arc<ServerState>>) -> Response {
    let Ok(turn) = state.status_turn.clone().acquire_owned().await else {
        // The semaphore is never closed.
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping\n").into_response();
    };
    let watches = state.watch_entries();
    let rejections = ServerState::lock(&state.rejections).clone();
    let leader = *ServerState::lock(&state.leader);
    let built = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        serde_json::to_vec(&StatusReport {
            leader,
            watches: watches.iter().map(WatchReport::of).collect(),
            rejected: rejections.map(|r| r.rejected()).unwrap_or_default(),
        })
    })
    .await;
    match built {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Ok(Err(err)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the status: {err}\n"),
        )
            .into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("building the status failed: {err}\n"),
        )
            .into_response(),
    }
}

/// The body of `/status`.
#[derive(serde::Serialize)]
struct StatusReport {
    leader: Option<bool>,
    watches: Vec<WatchReport>,
    rejected: BTreeMap<String, Value>,
}

/// One watch in `/status`.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct WatchReport {
    name: String,
    resource: String,
    synced: bool,
    ready: bool,
    waiting_for_target: Option<String>,
    events: u64,
    listeners: Vec<ListenerStatus>,
    objects: Objects,
}

impl WatchReport {
    fn of(w: &WatchEntry) -> Self {
        Self {
            name: w.name.clone(),
            resource: w.state.resource(),
            synced: w.state.synced.load(Ordering::Relaxed),
            ready: w.state.ready(),
            waiting_for_target: w.state.waiting(),
            events: w.state.events.load(Ordering::Relaxed),
            listeners: (w.listeners)(),
            objects: Objects(w.state.objects()),
        }
    }
}

/// Every object of a watch, serialized as `{"ns/name": {"status", "message"}}` straight from
/// the watch's map (no intermediate JSON tree).
struct Objects(BTreeMap<String, (crate::status::Status, String)>);

impl serde::Serialize for Objects {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Object<'a> {
            status: &'static str,
            message: &'a str,
        }
        serializer.collect_map(self.0.iter().map(|(key, (status, message))| {
            (
                key,
                Object {
                    status: status.as_str(),
                    message,
                },
            )
        }))
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn get(state: &Arc<ServerState>, path: &str) -> (u16, String) {
        send(router(state.clone()), path).await
    }

    /// GETs `path` from `router`: (status, body).
    async fn send(router: Router, path: &str) -> (u16, String) {
        let response = router
            .oneshot(
                axum::http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readyz_names_a_watchs_last_error() {
        let state = Arc::new(ServerState::new(
            Arc::new(Metrics::new()),
            false,
            Duration::from_secs(60),
        ));
        let watch = Arc::new(WatchState::default());
        state.set_watches(vec![WatchEntry {
            name: "things".into(),
            state: watch.clone(),
            listeners: Arc::new(Vec::new),
        }]);
        assert_eq!(
            get(&state, "/readyz").await,
            (503, "not ready: watch things has not listed yet\n".into())
        );
        watch.set_last_error(None, Some("request failed: things is forbidden".into()));
        assert_eq!(
            get(&state, "/readyz").await,
            (
                503,
                "not ready: watch things has not listed yet (last error: request failed: things is forbidden)\n".into()
            )
        );
    }

    #[tokio::test]
    async fn a_standby_whose_election_fails_for_a_lease_is_not_ready() {
        let state = Arc::new(ServerState::new(
            Arc::new(Metrics::new()),
            true,
            Duration::from_secs(60),
        ));
        let health = Arc::new(ElectionHealth::default());
        state.set_election(health.clone(), Duration::from_millis(1));
        assert_eq!(
            get(&state, "/readyz").await,
            (200, "ok: standby, not the leader\n".into())
        );
        health.failed("leases.coordination.k8s.io is forbidden".into());
        std::thread::sleep(Duration::from_millis(5));
        let (code, body) = get(&state, "/readyz").await;
        assert_eq!(code, 503, "{body}");
        assert!(
            body.contains("leader election has failed") && body.contains("is forbidden"),
            "{body}"
        );
        health.answered();
        assert_eq!(get(&state, "/readyz").await.0, 200);
        // Compiling ahead of a takeover: not ready yet.
        state.set_warming(true);
        assert_eq!(
            get(&state, "/readyz").await,
            (
                503,
                "not ready: standby, compiling the listeners' modules ahead of a takeover\n".into()
            )
        );
        state.set_warming(false);
        assert_eq!(get(&state, "/readyz").await.0, 200);
    }

    /// A watch named `things` tracking `objects` objects, with `listeners` as its listener
    /// list (called while `/status` is built).
    fn state_with_objects(
        objects: usize,
        listeners: Arc<dyn Fn() -> Vec<ListenerStatus> + Send + Sync>,
    ) -> Arc<ServerState> {
        use crate::event::{EventKind, ObjectMeta, ResourceEvent};
        let state = Arc::new(ServerState::new(
            Arc::new(Metrics::new()),
            false,
            Duration::from_secs(60),
        ));
        let watch = Arc::new(WatchState::default());
        watch.dispatcher_alive.store(true, Ordering::Relaxed);
        watch.activity();
        for n in 0..objects {
            let raw = format!(
                r#"{{"apiVersion":"v1","kind":"X","metadata":{{"name":"o{n}","namespace":"ns","uid":"u{n}","resourceVersion":"1"}}}}"#
            );
            let meta = ObjectMeta::from_json(&raw).unwrap();
            watch.track(&ResourceEvent::new(
                EventKind::Create,
                Arc::from(raw),
                meta,
                Default::default(),
            ));
        }
        state.set_watches(vec![WatchEntry {
            name: "things".into(),
            state: watch,
            listeners,
        }]);
        state
    }

    #[tokio::test]
    async fn status_is_served_by_its_own_router_only() {
        let state = state_with_objects(2, Arc::new(Vec::new));
        assert_eq!(get(&state, "/status").await.0, 404, "on the probe port");
        assert_eq!(send(status_router(state.clone()), "/healthz").await.0, 404);
        let (code, body) = send(status_router(state.clone()), "/status").await;
        assert_eq!(code, 200, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["leader"], Value::Null);
        let watch = &body["watches"][0];
        assert_eq!(watch["name"], "things");
        assert_eq!(watch["waitingForTarget"], Value::Null);
        assert_eq!(
            watch["objects"]["ns/o1"],
            serde_json::json!({"status": "Unknown", "message": ""}),
            "{body}"
        );
        assert_eq!(body["rejected"], serde_json::json!({}));
    }

    /// A server state with `objects` objects whose `/status` build blocks (see
    /// [`blocking_listeners`]), with the ends that observe and release it.
    struct Blocked {
        state: Arc<ServerState>,
        entered: tokio::sync::mpsc::UnboundedReceiver<()>,
        release: std::sync::mpsc::Sender<()>,
        released: Arc<std::sync::atomic::AtomicBool>,
    }

    fn blocked_status(objects: usize) -> Blocked {
        let (entered_tx, entered) = tokio::sync::mpsc::unbounded_channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let state = state_with_objects(
            objects,
            blocking_listeners(entered_tx, release_rx, released.clone()),
        );
        Blocked {
            state,
            entered,
            release,
            released,
        }
    }

    /// A listener list that blocks the `/status` build until released (or 10 s pass), says so
    /// through `entered` when the build reaches it, and records whether it was released.
    fn blocking_listeners(
        entered: tokio::sync::mpsc::UnboundedSender<()>,
        release: std::sync::mpsc::Receiver<()>,
        released: Arc<std::sync::atomic::AtomicBool>,
    ) -> Arc<dyn Fn() -> Vec<ListenerStatus> + Send + Sync> {
        let release = Mutex::new(release);
        Arc::new(move || {
            let _ = entered.send(());
            let ok = ServerState::lock(&release)
                .recv_timeout(Duration::from_secs(10))
                .is_ok();
            released.store(ok, Ordering::SeqCst);
            Vec::new()
        })
    }

    /// While a `/status` body of a large watch is being built, `/healthz` and `/readyz`
    /// answer on the same single-threaded runtime: the build holds neither the watches' lock
    /// nor the runtime's thread.
    #[tokio::test]
    async fn probes_answer_while_a_status_is_built() {
        let Blocked {
            state,
            mut entered,
            release,
            released,
        } = blocked_status(20_000);
        let building = tokio::spawn(send(status_router(state.clone()), "/status"));
        entered
            .recv()
            .await
            .expect("the build reached the listeners");
        assert_eq!(get(&state, "/healthz").await, (200, "ok\n".into()));
        assert_eq!(get(&state, "/readyz").await.0, 503, "not listed yet");
        let _ = release.send(());
        let (code, body) = building.await.unwrap();
        assert_eq!(code, 200);
        assert!(
            released.load(Ordering::SeqCst),
            "the probes only answered after the status build was over"
        );
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body["watches"][0]["objects"].as_object().unwrap().len(),
            20_000
        );
    }

    /// Concurrent `/status` requests are built one after the other: a second one does not
    /// start while the first is being built, and is served once it is done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_bodies_are_built_one_at_a_time() {
        let Blocked {
            state,
            mut entered,
            release,
            ..
        } = blocked_status(10);
        let first = tokio::spawn(send(status_router(state.clone()), "/status"));
        entered.recv().await.expect("the first build started");
        let second = tokio::spawn(send(status_router(state.clone()), "/status"));
        // Without the one-at-a-time rule the second build would start now (on another
        // thread); it may take a moment, so give it up to 2 s. With the rule it never does
        // before the first is released.
        let second_started = tokio::time::timeout(Duration::from_secs(2), entered.recv())
            .await
            .is_ok();
        assert!(
            !second_started,
            "a second /status build ran alongside the first"
        );
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().0, 200);
        entered
            .recv()
            .await
            .expect("the second build started after the first");
        release.send(()).unwrap();
        assert_eq!(second.await.unwrap().0, 200);
    }

    /// A client that leaves while its `/status` body is built does not end the build's turn:
    /// the build cannot be cancelled and runs on, so the next request's build waits for it
    /// rather than running alongside (a client closing in a loop would otherwise start one
    /// O(objects) build per request, all at once).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_leaves_does_not_end_its_builds_turn() {
        let Blocked {
            state,
            mut entered,
            release,
            released,
        } = blocked_status(10);
        let first = tokio::spawn(send(status_router(state.clone()), "/status"));
        entered.recv().await.expect("the first build started");
        // The client leaves: hyper drops the handler, as aborting the task does here.
        first.abort();
        assert!(
            first.await.is_err_and(|err| err.is_cancelled()),
            "the first request was dropped"
        );
        let second = tokio::spawn(send(status_router(state.clone()), "/status"));
        // Were the turn ended with the handler, the second build would start now (on another
        // thread); it may take a moment, so give it up to 2 s. With the turn held by the
        // first build it never does before that build is released.
        let second_started = tokio::time::timeout(Duration::from_secs(2), entered.recv())
            .await
            .is_ok();
        assert!(
            !second_started,
            "a second /status build ran alongside the abandoned first one"
        );
        release.send(()).unwrap();
        entered
            .recv()
            .await
            .expect("the second build started after the first ended");
        assert!(
            released.load(Ordering::SeqCst),
            "the first build was released"
        );
        release.send(()).unwrap();
        assert_eq!(second.await.unwrap().0, 200);
    }

    /// A status address that is taken turns `/status` off when it is the default, and is an
    /// error when it was given.
    #[tokio::test]
    async fn a_taken_default_status_address_turns_status_off_a_given_one_fails() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let default = bind_status(StatusAddr { addr, given: false });
        assert!(matches!(default, Ok(None)), "{default:?}");
        let given = bind_status(StatusAddr { addr, given: true });
        assert_eq!(
            given.map(|_| ()).map_err(|err| err.kind()),
            Err(std::io::ErrorKind::AddrInUse)
        );
        // A free address: bound, given or not.
        let free = std::net::SocketAddr::new(addr.ip(), 0);
        for given in [false, true] {
            let bound = bind_status(StatusAddr { addr: free, given });
            assert!(matches!(bound, Ok(Some(_))), "given: {given}: {bound:?}");
        }
    }
}
