//! The HTTP server on `--health-port` (axum): `/healthz`, `/readyz`, `/metrics`, `/status`.
//! The router is a plain function of the shared state so tests drive it with `oneshot`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

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
}

/// The router.
pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(state)
}

/// Binds the health server's address. The unspecified IPv6 address (`::`, the default) is
/// always bound dual-stack, IPv4 included whatever `net.ipv6.bindv6only` says, so the
/// kubelet's probes reach it on IPv4, IPv6 and dual-stack clusters alike (to serve IPv6 only,
/// bind a specific IPv6 address); where the kernel has no IPv6 at all, `0.0.0.0` (the same
/// port) is bound instead.
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

/// Serves `router(state)` on `listener` until `shutdown`.
///
/// # Errors
/// The server failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ServerState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
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
    let problems: Vec<String> = ServerState::lock(&state.watches)
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
    let watches = ServerState::lock(&state.watches);
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
/// computed status.
async fn status(State(state): State<Arc<ServerState>>) -> Json<Value> {
    let watches: Vec<Value> = ServerState::lock(&state.watches)
        .iter()
        .map(|w| {
            let objects: BTreeMap<String, Value> = w
                .state
                .objects()
                .into_iter()
                .map(|(k, (s, m))| (k, json!({"status": s.as_str(), "message": m})))
                .collect();
            json!({
                "name": w.name,
                "resource": w.state.resource(),
                "synced": w.state.synced.load(Ordering::Relaxed),
                "ready": w.state.ready(),
                "waitingForTarget": w.state.waiting(),
                "events": w.state.events.load(Ordering::Relaxed),
                "listeners": (w.listeners)(),
                "objects": objects,
            })
        })
        .collect();
    let rejected = ServerState::lock(&state.rejections)
        .as_ref()
        .map(|r| r.rejected())
        .unwrap_or_default();
    Json(
        json!({"leader": *ServerState::lock(&state.leader), "watches": watches, "rejected": rejected}),
    )
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn get(state: &Arc<ServerState>, path: &str) -> (u16, String) {
        let response = router(state.clone())
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
}
