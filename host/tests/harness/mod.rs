//! Runs the kubelisten host in-process against the local control plane and collects every
//! dispatched event through the dispatcher's observer.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kubelisten::app::{self, RunSettings, Running};
use kubelisten::capabilities::KubeCluster;
use kubelisten::config::{Config, TargetConfig, WatchConfig};
use kubelisten::dispatch::dispatcher::{Dispatched, DispatcherConfig, RetryPolicy};
use kubelisten::runtime::{Limits, ListenerSpec, Mode, Runtime, RuntimeConfig};
use tokio::sync::mpsc;

/// The test CRD's group, kind and plural.
pub const GROUP: &str = "watch.kubelisten.dev";
/// Kind of the test CRD.
pub const KIND: &str = "Thing";
/// Plural of the test CRD.
pub const PLURAL: &str = "things";

/// A v1 CRD for `kind`/`plural` in `group`, namespaced, with a status subresource.
pub fn crd_yaml(group: &str, kind: &str, plural: &str) -> String {
    format!(
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {plural}.{group}
spec:
  group: {group}
  scope: Namespaced
  names:
    kind: {kind}
    plural: {plural}
    singular: {singular}
    listKind: {kind}List
  versions:
    - name: v1
      served: true
      storage: true
      subresources:
        status: {{}}
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
"#,
        singular = kind.to_lowercase()
    )
}

/// Writes the test CRD to a file in `dir` and returns its path.
pub fn write_crd(dir: &Path, group: &str, kind: &str, plural: &str) -> PathBuf {
    let path = dir.join(format!("{plural}.{group}.yaml"));
    std::fs::write(&path, crd_yaml(group, kind, plural)).unwrap();
    path
}

/// The ApiResource of the test CRD.
pub fn resource(group: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural)
}

/// A listener built by `make guests`.
pub fn listener(name: &str, mode: Mode) -> ListenerSpec {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guests")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "guest {name} is not built: run `make guests`"
    );
    // The time limit is wall-clock: generous, so that a call preempted on a loaded machine
    // does not trap (no cluster test relies on a deadline trap).
    let limits = Limits {
        call_timeout: Duration::from_secs(5),
        ..Limits::default()
    };
    ListenerSpec {
        name: name.into(),
        path,
        mode,
        limits,
        capabilities: Default::default(),
    }
}

/// One watch of the test CRD file in `namespace`.
pub fn crd_watch(crd: &Path, namespace: &str, listeners: Vec<ListenerSpec>) -> Config {
    Config {
        watches: vec![WatchConfig {
            name: "things".into(),
            target: TargetConfig::Crd {
                path: crd.to_path_buf(),
            },
            namespaces: vec![namespace.to_string()],
            label_selector: None,
            field_selector: None,
            listeners,
        }],
    }
}

/// One test's world: a fresh namespace, the test CRD written to a temporary file, and an API
/// for its objects in that namespace. Most cluster tests start from this.
pub struct Things {
    /// The admin client.
    pub client: kube::Client,
    /// The test's namespace (delete it with `things.ns.delete().await` at the end).
    pub ns: crate::common::TestNamespace,
    /// The CRD file.
    pub crd: PathBuf,
    /// The CRD's resource.
    pub ar: ApiResource,
    /// The CRD's objects in the test namespace.
    pub api: Api<DynamicObject>,
    _dir: tempfile::TempDir,
}

impl Things {
    /// Creates the namespace and writes the test CRD file (the host registers the CRD).
    pub async fn new() -> Self {
        Self::for_crd(GROUP, KIND, PLURAL).await
    }

    /// [`Things::new`] for another CRD (`crd_yaml(group, kind, plural)`).
    pub async fn for_crd(group: &str, kind: &str, plural: &str) -> Self {
        let client = crate::common::client().await;
        let ns = crate::common::TestNamespace::new(&client).await;
        let dir = tempfile::tempdir().unwrap();
        let crd = write_crd(dir.path(), group, kind, plural);
        let ar = resource(group, kind, plural);
        let api = Api::namespaced_with(client.clone(), ns.name(), &ar);
        Self {
            client,
            ns,
            crd,
            ar,
            api,
            _dir: dir,
        }
    }

    /// One watch of the CRD in the test namespace with these listeners.
    pub fn watch(&self, listeners: Vec<ListenerSpec>) -> Config {
        crd_watch(&self.crd, self.ns.name(), listeners)
    }

    /// Creates `name` with `spec` and `annotations`.
    pub async fn create(
        &self,
        name: &str,
        spec: serde_json::Value,
        annotations: &[(&str, &str)],
    ) -> DynamicObject {
        create_thing(&self.api, &self.ar, name, spec, annotations).await
    }

    /// Starts the host for `config` with `settings` and waits until its watches have synced.
    pub async fn start_host(
        &self,
        runtime: &Runtime,
        config: &Config,
        settings: &RunSettings,
    ) -> TestHost {
        let host = TestHost::start(self.client.clone(), runtime, config, settings).await;
        host.wait_synced().await;
        host
    }
}

/// Settings with quick retries.
pub fn settings(workers: usize) -> RunSettings {
    RunSettings {
        dispatch: DispatcherConfig {
            workers,
            queue_capacity: 256,
            retry: RetryPolicy {
                attempts: 3,
                base: Duration::from_millis(50),
                max: Duration::from_millis(200),
            },
            // `app::start` takes it from `shutdown_grace`.
            ..DispatcherConfig::default()
        },
        watch_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(10),
        health_addr: None,
        status_addr: None,
        leader: None,
        modules: None,
        watches_from_modules: false,
    }
}

/// A runtime without the disk cache side effects shared across tests.
pub fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig::default()).unwrap()
}

/// The host running in-process.
pub struct TestHost {
    running: Option<Running>,
    /// The servers' state (drive it with `server::router(...).oneshot(...)`, or
    /// `server::status_router`).
    pub server: Arc<kubelisten::server::ServerState>,
    rx: mpsc::UnboundedReceiver<Dispatched>,
    /// Every attempt seen so far, in arrival order.
    pub seen: Vec<Dispatched>,
}

impl TestHost {
    /// Starts the host.
    pub async fn start(
        client: kube::Client,
        runtime: &Runtime,
        config: &Config,
        settings: &RunSettings,
    ) -> Self {
        Self::start_with_cluster(client, runtime, config, settings, None).await
    }

    /// Starts the host for `config` on a runtime of its own that serves the listeners' cluster
    /// calls ([`cluster_runtime`]), guest logs going to `sink`; with that runtime.
    pub async fn start_serving_cluster(
        client: &kube::Client,
        config: &Config,
        settings: &RunSettings,
        sink: Arc<dyn kubelisten::runtime::GuestLogSink>,
    ) -> (Self, Runtime) {
        let (runtime, cluster) = cluster_runtime(client, config, sink);
        let host =
            Self::start_with_cluster(client.clone(), &runtime, config, settings, Some(cluster))
                .await;
        (host, runtime)
    }

    /// Starts the host with the cluster access its `runtime` serves (see [`cluster_runtime`]),
    /// as `kubelisten run` does: policy denials are counted in its metrics.
    pub async fn start_with_cluster(
        client: kube::Client,
        runtime: &Runtime,
        config: &Config,
        settings: &RunSettings,
        cluster: Option<Arc<KubeCluster>>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let metrics = Arc::new(kubelisten::metrics::Metrics::new());
        let running = app::start(
            client,
            runtime,
            config,
            settings,
            Some(tx),
            metrics.clone(),
            cluster,
        )
        .await
        .expect("host starts");
        let server = Arc::new(kubelisten::server::ServerState::new(
            metrics,
            false,
            settings.max_idle(),
        ));
        server.set_watches(running.entries());
        if let Some(swap) = running.hotswap() {
            server.set_rejections(swap);
        }
        Self {
            running: Some(running),
            server,
            rx,
            seen: Vec::new(),
        }
    }

    /// GETs `path` from the host's router that serves it in `kubelisten run`: the status
    /// listener's for `/status`, the probe server's for the rest: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let router = if path == "/status" {
            kubelisten::server::status_router(self.server.clone())
        } else {
            kubelisten::server::router(self.server.clone())
        };
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

    /// Collects attempts until `done(seen)` holds; panics after `timeout` showing what was seen.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Dispatched]) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(&self.seen) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(d)) => self.seen.push(d),
                Ok(None) => panic!("host stopped while waiting for {what}"),
                Err(_) => panic!(
                    "timed out waiting for {what}; seen:\n{}",
                    describe(&self.seen)
                ),
            }
        }
    }

    /// The chain slot of watch number `index` (to swap chains as a hot swap would).
    pub fn chain(&self, index: usize) -> Arc<kubelisten::dispatch::ChainSlot> {
        self.running.as_ref().expect("running").watches[index]
            .chain
            .clone()
    }

    /// The hot swap's last rejection of `listener` (`*`: the whole listeners.yaml), if any.
    pub fn rejection(&self, listener: &str) -> Option<kubelisten::hotswap::Rejection> {
        let running = self.running.as_ref().expect("running");
        let swap = running.watches.first()?.hotswap.as_ref()?;
        swap.rejected().get(listener).cloned()
    }

    /// Kills the watch tasks (fault injection).
    pub fn kill_watch_tasks(&mut self) {
        if let Some(running) = self.running.as_mut() {
            running.kill_watch_tasks();
        }
    }

    /// Whether every watch finished its first list.
    pub fn synced(&self) -> bool {
        self.running.as_ref().is_some_and(|r| {
            r.watches
                .iter()
                .all(|w| w.state.synced.load(std::sync::atomic::Ordering::Relaxed))
        })
    }

    /// Waits until every watch finished its first list.
    pub async fn wait_synced(&self) {
        for _ in 0..600 {
            if self.synced() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("watches did not sync within 60 s");
    }

    /// Stops the host gracefully and returns everything seen.
    pub async fn stop(mut self) -> Vec<Dispatched> {
        if let Some(running) = self.running.take() {
            assert!(
                running.stop().await,
                "in-flight events finished within the grace period"
            );
        }
        while let Ok(d) = self.rx.try_recv() {
            self.seen.push(d);
        }
        self.seen
    }
}

/// One line per attempt, for failure messages.
pub fn describe(seen: &[Dispatched]) -> String {
    seen.iter()
        .map(|d| {
            format!(
                "{} {} rv={} initial={} attempt={} ok={}",
                d.event.kind.as_str(),
                d.event.meta.object_ref(),
                d.event.meta.resource_version,
                d.event.initial,
                d.attempt,
                d.report.succeeded()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Creates a `Thing` named `name` in `ns` with `spec` and optional annotations.
pub async fn create_thing(
    api: &Api<DynamicObject>,
    ar: &ApiResource,
    name: &str,
    spec: serde_json::Value,
    annotations: &[(&str, &str)],
) -> DynamicObject {
    let mut obj = DynamicObject::new(name, ar).data(serde_json::json!({ "spec": spec }));
    if !annotations.is_empty() {
        obj.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
    }
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create")
}

/// Merge-patches `spec` of `name`.
pub async fn patch_spec(
    api: &Api<DynamicObject>,
    name: &str,
    spec: serde_json::Value,
) -> DynamicObject {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "spec": spec })),
    )
    .await
    .expect("patch")
}

/// Deletes `name`.
pub async fn delete(api: &Api<DynamicObject>, name: &str) {
    api.delete(name, &DeleteParams::default())
        .await
        .expect("delete");
}

/// Shared pointer to the event of an attempt (for grouping).
pub fn key(d: &Dispatched) -> (String, Arc<str>) {
    (d.event.meta.name.clone(), d.event.object.clone())
}

/// `deploy/local/cluster.sh` with the test's run directory.
pub fn cluster(args: &[&str]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/cluster.sh");
    let status = std::process::Command::new(script)
        .args(args)
        .status()
        .expect("run cluster.sh");
    assert!(status.success(), "cluster.sh {args:?} failed");
}

/// A value from the control plane's env file (`$KUBELISTEN_RUN_DIR/env`), e.g. `ETCD_URL`.
pub fn cluster_env(key: &str) -> String {
    let run_dir = std::env::var_os("KUBELISTEN_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/kubelisten/run")
        });
    let text = std::fs::read_to_string(run_dir.join("env")).expect("control plane env file");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} missing in the env file"))
        .trim_matches('\'')
        .to_string()
}

/// Compacts etcd at its current revision (through its JSON gateway), so every older
/// resourceVersion has expired.
pub fn compact_etcd() -> u64 {
    let url = cluster_env("ETCD_URL");
    let post = |path: &str, body: &str| -> serde_json::Value {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--fail", "-X", "POST", "-d", body])
            .arg(format!("{url}{path}"))
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "etcd {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("etcd answers JSON")
    };
    let range = post("/v3/kv/range", r#"{"key":"AA==","limit":"1"}"#);
    let revision: u64 = range["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .expect("etcd revision");
    post(
        "/v3/kv/compaction",
        &format!(r#"{{"revision":"{revision}","physical":true}}"#),
    );
    revision
}

/// A TCP proxy the test controls: `cut` drops every connection and refuses new ones until
/// `restore`; `silence` makes the open connections go quiet for good (nothing forwarded, not
/// even their end), as when the peer is gone without a reset, while new ones work.
pub struct Proxy {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    enabled: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<std::sync::Mutex<Vec<(tokio::task::AbortHandle, Silent)>>>,
}

/// Set when a proxied connection is silenced.
type Silent = Arc<std::sync::atomic::AtomicBool>;

/// Copies `from` to `to` until either ends, unless `silent`: then nothing more goes through,
/// and the end is not passed on either.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Silent,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = from.read(&mut buf).await;
        if silent.load(std::sync::atomic::Ordering::SeqCst) {
            match read {
                Ok(n) if n > 0 => continue,
                _ => return std::future::pending().await,
            }
        }
        match read {
            Ok(n) if n > 0 => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            _ => {
                let _ = to.shutdown().await;
                return;
            }
        }
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let enabled = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections: Arc<std::sync::Mutex<Vec<(tokio::task::AbortHandle, Silent)>>> =
            Arc::default();
        let (en, conns) = (enabled.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !en.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let silent = Silent::default();
                let quiet = silent.clone();
                let task = tokio::spawn(async move {
                    if let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let (from_host, to_host) = inbound.into_split();
                        let (from_server, to_server) = outbound.into_split();
                        tokio::join!(
                            forward(from_host, to_server, quiet.clone()),
                            forward(from_server, to_host, quiet),
                        );
                    }
                });
                conns.lock().unwrap().push((task.abort_handle(), silent));
            }
        });
        Self {
            url,
            enabled,
            connections,
        }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.enabled
            .store(false, std::sync::atomic::Ordering::SeqCst);
        for (conn, _) in self.connections.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    /// Makes every open connection go quiet for good; new connections are forwarded as usual.
    pub fn silence(&self) {
        for (_, silent) in self.connections.lock().unwrap().iter() {
            silent.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.enabled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A client that reaches the API server only through a [`Proxy`] the test controls.
pub async fn proxied_client() -> (Proxy, kube::Client) {
    let mut config = crate::common::config().await;
    let upstream = config
        .cluster_url
        .authority()
        .expect("server address")
        .to_string();
    let proxy = Proxy::start(upstream).await;
    config.cluster_url = proxy.url.parse().unwrap();
    (proxy, kube::Client::try_from(config).unwrap())
}

/// A runtime whose guests reach the cluster through `client` with the capabilities granted in
/// `config`, logging guest lines to `sink`.
pub fn runtime_with_cluster(
    client: &kube::Client,
    config: &Config,
    sink: Arc<dyn kubelisten::runtime::GuestLogSink>,
) -> Runtime {
    cluster_runtime(client, config, sink).0
}

/// [`runtime_with_cluster`], also returning the cluster access it serves.
pub fn cluster_runtime(
    client: &kube::Client,
    config: &Config,
    sink: Arc<dyn kubelisten::runtime::GuestLogSink>,
) -> (Runtime, Arc<KubeCluster>) {
    let cluster = app::cluster_access(client, config).expect("cluster access");
    let runtime = Runtime::new(RuntimeConfig {
        cluster: cluster.clone(),
        sink,
        ..RuntimeConfig::default()
    })
    .unwrap();
    (runtime, cluster)
}

/// Audit log entries (JSON) of requests made with this user agent.
pub fn audit_entries(user_agent: &str) -> Vec<serde_json::Value> {
    let log = PathBuf::from(cluster_env("KUBELISTEN_RUN_DIR")).join("logs/audit.log");
    let text =
        std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("reading {}: {e}", log.display()));
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["userAgent"] == user_agent)
        .collect()
}
