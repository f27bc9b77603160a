//! `kubelisten run`: resolves every watch's target, loads its listener chain, then runs one
//! list/watch loop per namespace feeding one dispatcher per watch, until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::capabilities::events::FailureReporter;
use crate::capabilities::KubeCluster;
use crate::config::{Config, WatchConfig};
use crate::dispatch::dispatcher::{Dispatcher, DispatcherConfig, Observer};
use crate::dispatch::{Chain, ChainSlot};
use crate::hotswap::{HotSwap, ModulesConfigMap};
use crate::metrics::{labels, Metrics};
use crate::runtime::{Listener, Runtime};
use crate::server::{ListenerStatus, ServerState, WatchEntry};
use crate::watch::leader::LeaderConfig;
use crate::watch::state::{TaskGuard, WatchState};
use crate::watch::target;
use crate::watch::watcher::{self, WatchSpec};

/// Settings of a run besides the watches.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Dispatch settings (workers per watch, queue bound, retries); their `stop_grace` is
    /// replaced by `shutdown_grace`.
    pub dispatch: DispatcherConfig,
    /// Server-side watch timeout.
    pub watch_timeout: Duration,
    /// How long in-flight events may take to finish at shutdown (also each dispatcher's
    /// [`DispatcherConfig::stop_grace`]).
    pub shutdown_grace: Duration,
    /// Where the probe server (`/healthz`, `/readyz`, `/metrics`) listens (`None`: no server).
    pub health_addr: Option<std::net::SocketAddr>,
    /// Where `/status` is served, on a listener of its own (`None`: nowhere). It names every
    /// watched object, so the default (`--status-bind`) is loopback. The default address may
    /// be taken: then the process runs without `/status` ([`crate::server::bind_status`]).
    pub status_addr: Option<crate::server::StatusAddr>,
    /// Leader election (`None`: this process always dispatches).
    pub leader: Option<LeaderConfig>,
    /// Listener chains from this ConfigMap (hot swap) instead of the config's listeners.
    pub modules: Option<ModulesConfigMap>,
    /// The watches came from that ConfigMap's `listeners.yaml` (kubelisten started from it
    /// alone): updates that change them are rejected ([`HotSwap::pin_watches`]).
    pub watches_from_modules: bool,
}

impl RunSettings {
    /// How long a watch may stay silent before `/healthz` fails: the watch timeout (after which
    /// the watch is reopened) plus a minute of margin.
    pub fn max_idle(&self) -> Duration {
        self.watch_timeout + Duration::from_secs(60)
    }
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            dispatch: DispatcherConfig::default(),
            watch_timeout: Duration::from_secs(290),
            shutdown_grace: Duration::from_secs(30),
            health_addr: None,
            status_addr: None,
            leader: None,
            modules: None,
            watches_from_modules: false,
        }
    }
}

/// A watch that is running: its name and shared state (synced, events seen).
#[derive(Debug, Clone)]
pub struct RunningWatch {
    /// The watch's name.
    pub name: Arc<str>,
    /// Its state (the resource watched among it).
    pub state: Arc<WatchState>,
    /// Its chain (swapped by the hot swap).
    pub chain: Arc<ChainSlot>,
    /// The hot swap, when modules come from a ConfigMap.
    pub hotswap: Option<Arc<HotSwap>>,
}

impl RunningWatch {
    /// What `/status` shows of this watch.
    pub fn entry(&self) -> WatchEntry {
        WatchEntry {
            name: self.name.to_string(),
            state: self.state.clone(),
            listeners: {
                let (name, chain, hotswap) =
                    (self.name.clone(), self.chain.clone(), self.hotswap.clone());
                Arc::new(move || match &hotswap {
                    Some(swap) => swap.statuses().remove(&*name).unwrap_or_default(),
                    None => chain
                        .get()
                        .listeners()
                        .iter()
                        .map(|l| ListenerStatus {
                            name: l.name().to_string(),
                            mode: l.mode().as_str().into(),
                            digest: l.digest().into(),
                            rejected: None,
                        })
                        .collect(),
                })
            },
        }
    }
}

/// How [`Running::stop_unless`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every in-flight event finished.
    Drained,
    /// The grace period ran out with events still in flight (they were dropped).
    GraceOver,
    /// The abort signal came first: in-flight events were aborted.
    Aborted,
}

/// Everything started by [`start`]; [`Running::stop`] shuts it down.
pub struct Running {
    /// The metrics of this run.
    pub metrics: Arc<Metrics>,
    /// The running watches.
    pub watches: Vec<RunningWatch>,
    cancel: CancellationToken,
    watchers: tokio::task::JoinSet<()>,
    /// The hot swap's task, in `watchers`.
    hotswap_task: Option<tokio::task::AbortHandle>,
    dispatchers: tokio::task::JoinSet<()>,
    grace: Duration,
}

impl Running {
    /// Stops the watches, lets in-flight events finish within the grace period and returns.
    /// Returns false when the grace period ran out with events still in flight.
    pub async fn stop(self) -> bool {
        self.stop_unless(std::future::pending()).await == Stopped::Drained
    }

    /// [`Running::stop`], except that in-flight events are aborted as soon as `abort` resolves
    /// (the leadership was lost while they drain).
    pub async fn stop_unless(mut self, abort: impl Future<Output = ()>) -> Stopped {
        // The list/watch tasks stop reading and send what they already received (the rest of
        // a list's diff, say, with the deletes it found); each dispatcher handles everything
        // until its watch's tasks are done. Not awaited: a task in a blocking section (the hot
        // swap waiting for a chain to be unused) must not hold up the drain or the leadership
        // check below; the hot swap stops now.
        self.cancel.cancel();
        if let Some(swap) = &self.hotswap_task {
            swap.abort();
        }
        let drain = tokio::time::timeout(self.grace, async {
            while self.dispatchers.join_next().await.is_some() {}
        });
        tokio::select! {
            drained = drain => {
                if drained.is_ok() {
                    return Stopped::Drained;
                }
                tracing::warn!(
                    grace_ms = u64::try_from(self.grace.as_millis()).unwrap_or(u64::MAX),
                    "shutdown grace period over with events still in flight"
                );
                Stopped::GraceOver
            }
            () = abort => {
                tracing::warn!(
                    in_flight = self.dispatchers.len(),
                    "stopping in-flight events at once during shutdown"
                );
                self.dispatchers.shutdown().await;
                Stopped::Aborted
            }
        }
    }

    /// Stops at once, without waiting for in-flight events (leadership lost).
    pub fn abort(mut self) {
        self.cancel.cancel();
        self.watchers.abort_all();
        self.dispatchers.abort_all();
    }

    /// Fault injection for tests: kills every watch task, as a crashed watcher would.
    pub fn kill_watch_tasks(&mut self) {
        self.watchers.abort_all();
    }

    /// The hot swap, when listeners come from a ConfigMap.
    pub fn hotswap(&self) -> Option<Arc<HotSwap>> {
        self.watches.first().and_then(|w| w.hotswap.clone())
    }

    /// What `/status` shows of the running watches.
    pub fn entries(&self) -> Vec<WatchEntry> {
        self.watches.iter().map(RunningWatch::entry).collect()
    }

    /// Resolves when a watch or dispatcher task ended on its own (it should not before stop),
    /// saying which and how (returned, panicked with its message, cancelled).
    pub async fn failed(&mut self) -> String {
        let (what, ended) = tokio::select! {
            Some(ended) = self.watchers.join_next() => ("a watch task", ended),
            Some(ended) = self.dispatchers.join_next() => ("a dispatcher", ended),
        };
        match ended {
            Ok(()) => format!("{what} ended"),
            Err(err) => format!("{what} ended: {err}"),
        }
    }
}

/// Timeout of one guest cluster request.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);

/// The cluster access of every listener in `config`, for [`crate::runtime::RuntimeConfig::cluster`].
/// Call it inside the tokio runtime that will serve the requests.
///
/// # Errors
/// Two listeners of `config` have the same name (see [`KubeCluster::new`]).
pub fn cluster_access(client: &kube::Client, config: &Config) -> anyhow::Result<Arc<KubeCluster>> {
    let listeners = config.watches.iter().flat_map(|w| {
        w.listeners
            .iter()
            .map(|l| (l.name.clone(), l.capabilities.clone()))
    });
    let cluster = KubeCluster::new(
        client.clone(),
        tokio::runtime::Handle::current(),
        listeners,
        API_TIMEOUT,
    )
    .context("setting up the listeners' cluster access")?;
    Ok(Arc::new(cluster))
}

/// Resolves the targets (registering CRDs), loads the listeners and starts watching.
///
/// The targets are resolved concurrently, each attempt bounded by [`RESOLVE_TIMEOUT`]. A watch
/// whose target cannot be resolved yet (its kind not served, the API failing or slow, a
/// missing permission: see [`target::Error::is_permanent`]) does not hold up the others: it
/// waits, retrying with backoff up to [`RESOLVE_RETRY_MAX`], and starts watching as soon as
/// its target resolves. Until then `/readyz` names it and why, and
/// `kubelisten_watch_waiting_for_target{watch}` is 1.
///
/// # Errors
/// A target error only a config change can fix, or a listener that cannot be loaded: nothing
/// is started.
pub async fn start(
    client: kube::Client,
    runtime: &Runtime,
    config: &Config,
    settings: &RunSettings,
    observer: Option<Observer>,
    metrics: Arc<Metrics>,
    cluster: Option<Arc<KubeCluster>>,
) -> anyhow::Result<Running> {
    if let Some(cluster) = &cluster {
        cluster.count_into(metrics.clone());
    }
    // Every first attempt runs at once; the start waits for them at most START_WAIT. One still
    // running then goes on in its watch's background task.
    let mut attempts: Vec<FirstAttempt> = config
        .watches
        .iter()
        .map(|w| AbortOnDropHandle::new(tokio::spawn(resolve_once(client.clone(), w.clone()))))
        .collect();
    let mut outcomes: Vec<Option<Result<target::Target, Unresolved>>> =
        config.watches.iter().map(|_| None).collect();
    let _ = tokio::time::timeout(
        START_WAIT,
        futures::future::join_all(
            attempts
                .iter_mut()
                .zip(outcomes.iter_mut())
                .map(|(attempt, outcome)| async move { *outcome = Some(joined(attempt.await)) }),
        ),
    )
    .await;
    let mut prepared = Vec::new();
    for ((watch, attempt), outcome) in config.watches.iter().zip(attempts).zip(outcomes) {
        let target = match outcome {
            Some(Ok(target)) => Resolution::Resolved(target),
            Some(Err(Unresolved::Failed(err))) if err.is_permanent() => {
                return Err(anyhow::Error::new(err))
                    .with_context(|| format!("watch {}: resolving the target", watch.name));
            }
            Some(Err(unresolved)) => {
                let why = unresolved.describe();
                tracing::warn!(watch = %watch.name, target = %watch.target, error = %why, "the watch's target cannot be resolved yet: the other watches start, this one retries");
                Resolution::Failed(why)
            }
            // Still running: it goes on in the watch's background task.
            None => {
                tracing::warn!(watch = %watch.name, target = %watch.target, wait_s = START_WAIT.as_secs(), "the watch's target is not resolved yet: the other watches start, this one goes on");
                Resolution::Pending(attempt)
            }
        };
        let mut listeners = Vec::new();
        // With a modules ConfigMap, the chains come from it (loaded below), not from the config.
        let specs = if settings.modules.is_some() {
            &[][..]
        } else {
            &watch.listeners[..]
        };
        for spec in specs {
            // Compiling blocks (up to --compile-timeout): off the async workers, which serve
            // the stop signals, the health server and the lease renewals meanwhile (with a
            // 1-CPU limit there is only one).
            let loaded = tokio::task::spawn_blocking({
                let (runtime, spec) = (runtime.clone(), spec.clone());
                move || Listener::load(&runtime, &spec)
            })
            .await
            .context("the listener's loading task failed")?;
            let listener = loaded
                .with_context(|| format!("watch {}: loading listener {}", watch.name, spec.name))?;
            listeners.push(Arc::new(listener));
        }
        prepared.push((
            watch,
            target,
            Arc::new(ChainSlot::new(Chain::new(listeners))),
        ));
    }
    let hotswap = match &settings.modules {
        None => None,
        Some(source) => {
            let slots = prepared
                .iter()
                .map(|(watch, _, slot)| (watch.name.clone(), slot.clone()))
                .collect();
            let swap = HotSwap::new(
                runtime.clone(),
                client.clone(),
                source.clone(),
                slots,
                cluster.clone(),
                metrics.clone(),
            );
            if settings.watches_from_modules {
                swap.pin_watches(&config.watches);
            }
            let rejected = swap.load().await.context("reading the modules ConfigMap")?;
            // Not dispatching yet: better a restart that reads the new watches than chains
            // left empty by an update this process cannot apply.
            if let Some(changes) = swap.watches_changed() {
                anyhow::bail!(
                    "the modules ConfigMap's watches changed since this process read them \
                     ({changes}); exiting so that a restart applies them"
                );
            }
            if !rejected.is_empty() {
                tracing::warn!(
                    rejected = rejected.len(),
                    "some listeners of the modules ConfigMap were rejected at startup"
                );
            }
            Some(swap)
        }
    };

    // Every listener is loaded: what the compiler used is free now.
    crate::runtime::release_free_memory();
    let failures = Arc::new(FailureReporter::new(
        client.clone(),
        Duration::from_secs(60),
    ));
    let cancel = CancellationToken::new();
    let mut watchers = tokio::task::JoinSet::new();
    let mut dispatchers = tokio::task::JoinSet::new();
    let mut watches = Vec::new();
    for (watch, target, chain) in prepared {
        let name: Arc<str> = Arc::from(watch.name.as_str());
        let state = Arc::new(WatchState::default());
        state.activity();
        // Alive from the start; the dispatcher clears it when it ends or is aborted.
        state
            .dispatcher_alive
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(settings.dispatch.handover_capacity());
        let tasks = WatchTasks {
            client: client.clone(),
            name: name.clone(),
            state: state.clone(),
            metrics: metrics.clone(),
            tx,
            chain: chain.clone(),
            timeout: settings.watch_timeout,
            stop: cancel.child_token(),
        };
        let waiting = metrics
            .waiting_for_target
            .get_or_create(&labels([("watch", &*name)]))
            .clone();
        // Until its target resolves, a watch shows the resource as configured.
        state.set_resource(watch.target.to_string());
        let (why, first) = match target {
            Resolution::Resolved(target) => {
                waiting.set(0);
                state.set_resource(target.describe());
                tasks.spawn(&target, &mut watchers);
                tracing::info!(watch = %name, resource = %target.describe(), listeners = chain.get().listeners().len(), "watching");
                (None, None)
            }
            Resolution::Failed(why) => (Some(why), None),
            Resolution::Pending(first) => (
                Some(format!(
                    "not resolved within {}s of the start; still trying",
                    START_WAIT.as_secs()
                )),
                Some(first),
            ),
        };
        if let Some(why) = why {
            waiting.set(1);
            state.set_waiting(Some(why));
            watchers.spawn(tasks.wait_for_target(watch.clone(), waiting, first));
        }
        watches.push(RunningWatch {
            name: name.clone(),
            state: state.clone(),
            chain: chain.clone(),
            hotswap: hotswap.clone(),
        });
        let dispatcher = Dispatcher {
            watch: name,
            chain,
            config: DispatcherConfig {
                stop_grace: settings.shutdown_grace,
                ..settings.dispatch.clone()
            },
            observer: observer.clone(),
            state,
            failures: Some(failures.clone()),
            metrics: metrics.clone(),
        };
        dispatchers.spawn(dispatcher.run(rx, cancel.child_token()));
    }
    for watch in &watches {
        for listener in watch.chain.get().listeners() {
            let (mode, digest) = (listener.mode().as_str(), listener.digest());
            metrics
                .listener_info
                .get_or_create(&labels([
                    ("listener", listener.name()),
                    ("mode", mode),
                    ("digest", digest),
                ]))
                .set(1);
        }
    }
    // Ends only with the process; a dead hot-swap watcher counts as a dead watch task.
    let hotswap_task = hotswap
        .as_ref()
        .map(|swap| watchers.spawn(swap.clone().run()));
    Ok(Running {
        metrics,
        watches,
        cancel,
        watchers,
        hotswap_task,
        dispatchers,
        grace: settings.shutdown_grace,
    })
}

/// Longest wait for one attempt at resolving a watch's target: the CRD's Established wait
/// ([`target::ESTABLISH_TIMEOUT`]) plus room for the requests around it.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(75);

/// Longest pause between attempts at resolving a watch's target that is not resolved yet
/// (the first pause is 1 s, doubling).
pub const RESOLVE_RETRY_MAX: Duration = Duration::from_secs(30);

/// How long [`start`] waits for the first attempts at resolving the targets before it starts
/// the watches that did resolve; the others go on in the background.
pub const START_WAIT: Duration = Duration::from_secs(10);

/// Why one attempt at resolving a target did not succeed.
#[derive(Debug, thiserror::Error)]
enum Unresolved {
    /// The resolution failed.
    #[error(transparent)]
    Failed(target::Error),
    /// No answer within [`RESOLVE_TIMEOUT`].
    #[error("no answer from the API server within {}s", RESOLVE_TIMEOUT.as_secs())]
    TimedOut,
    /// The attempt's task panicked (a bug).
    #[error("resolving the target panicked: {0}")]
    Panicked(String),
}

impl Unresolved {
    /// The error with its causes (`cannot create CRD x: ... forbidden: ...`), for logs,
    /// `/readyz` and `/status`.
    fn describe(self) -> String {
        format!("{:#}", anyhow::Error::new(self))
    }
}

/// A first attempt still running in its own task (aborted if dropped).
type FirstAttempt = AbortOnDropHandle<Result<target::Target, Unresolved>>;

/// How a watch's first attempt ended within [`START_WAIT`].
enum Resolution {
    Resolved(target::Target),
    Failed(String),
    Pending(FirstAttempt),
}

/// The result of an attempt's task.
fn joined(
    result: Result<Result<target::Target, Unresolved>, tokio::task::JoinError>,
) -> Result<target::Target, Unresolved> {
    result.unwrap_or_else(|err| Err(Unresolved::Panicked(err.to_string())))
}

/// One attempt at resolving `watch`'s target, bounded by [`RESOLVE_TIMEOUT`].
async fn resolve_once(
    client: kube::Client,
    watch: WatchConfig,
) -> Result<target::Target, Unresolved> {
    match tokio::time::timeout(RESOLVE_TIMEOUT, target::resolve(&client, &watch)).await {
        Ok(resolved) => resolved.map_err(Unresolved::Failed),
        Err(_) => Err(Unresolved::TimedOut),
    }
}

/// What the list/watch tasks of one watch share.
struct WatchTasks {
    client: kube::Client,
    name: Arc<str>,
    state: Arc<WatchState>,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<crate::watch::watcher::WatchOutput>,
    chain: Arc<ChainSlot>,
    timeout: Duration,
    /// A graceful stop: the list/watch tasks stop reading and send what they hold.
    stop: CancellationToken,
}

impl WatchTasks {
    /// Spawns one list/watch task per namespace of `target` (one for all namespaces) into `set`.
    fn spawn(&self, target: &target::Target, set: &mut tokio::task::JoinSet<()>) {
        let namespaces: Vec<Option<String>> = if target.namespaced && !target.namespaces.is_empty()
        {
            target.namespaces.iter().cloned().map(Some).collect()
        } else {
            vec![None]
        };
        for namespace in namespaces {
            let spec = WatchSpec {
                name: self.name.clone(),
                resource: target.resource.clone(),
                namespace,
                label_selector: target.label_selector.clone(),
                field_selector: target.field_selector.clone(),
                timeout: self.timeout,
                page_size: 500,
                state: self.state.clone(),
                metrics: self.metrics.clone(),
            };
            let task = TaskGuard::new(self.state.clone());
            let run = watcher::run(
                self.client.clone(),
                spec,
                self.tx.clone(),
                Some(self.chain.catch_up()),
                self.stop.clone(),
            );
            set.spawn(async move {
                let _task = task;
                run.await;
            });
        }
    }

    /// Retries resolving `watch`'s target with backoff (1 s doubling to
    /// [`RESOLVE_RETRY_MAX`]) until it resolves, then runs its list/watch tasks. Returns when
    /// one of those ends on its own, which [`Running::failed`] reports; on a graceful stop, at
    /// once while still waiting, else once all of them are done.
    /// Every failed attempt is logged at warn and kept for `/readyz`; a permanent error now
    /// (the kind turned out cluster-scoped, say) is retried too, since the cluster may change.
    async fn wait_for_target(
        self,
        watch: WatchConfig,
        waiting: Gauge,
        first: Option<FirstAttempt>,
    ) {
        let mut delay = Duration::from_secs(1);
        let mut attempts = 1u32;
        let mut pending = first;
        let target = loop {
            let attempt = async {
                match pending.take() {
                    Some(first) => joined(first.await),
                    None => {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(RESOLVE_RETRY_MAX);
                        attempts += 1;
                        resolve_once(self.client.clone(), watch.clone()).await
                    }
                }
            };
            // A graceful stop ends the wait (nothing was received for this watch).
            let attempt = tokio::select! {
                attempt = attempt => attempt,
                () = self.stop.cancelled() => return,
            };
            // Each answer is progress for `/healthz`, so that the first list after a long wait
            // is not measured from the start of the process.
            self.state.activity();
            match attempt {
                Ok(target) => break target,
                Err(unresolved) => {
                    let why = unresolved.describe();
                    tracing::warn!(watch = %self.name, target = %watch.target, attempts, retry_in_s = delay.as_secs(), error = %why, "the watch's target cannot be resolved yet");
                    self.state.set_waiting(Some(why));
                }
            }
        };
        let mut set = tokio::task::JoinSet::new();
        self.spawn(&target, &mut set);
        self.state.set_resource(target.describe());
        self.state.set_waiting(None);
        waiting.set(0);
        tracing::info!(watch = %self.name, resource = %target.describe(), attempts, listeners = self.chain.get().listeners().len(), "target resolved: watching");
        // The tasks run until stopped or aborted (dropping the set aborts them with this task).
        // One ending on its own ends this task (reported as a dead watch task); on a stop, each
        // is waited for, as it may still send the deletes it holds.
        while set.join_next().await.is_some() {
            if !self.stop.is_cancelled() {
                break;
            }
        }
    }
}

/// Compiles the modules of `config`'s listeners (or those of the `modules` ConfigMap) into
/// `runtime`'s caches, for a standby, until `stop` is set (checked between modules); see
/// [`Runtime::precompile`].
async fn precompile(
    runtime: Runtime,
    client: kube::Client,
    config: Config,
    modules: Option<ModulesConfigMap>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let compiled = match &modules {
        Some(source) => HotSwap::precompile(&runtime, &client, source, stop).await,
        None => {
            let paths: Vec<_> = config
                .watches
                .iter()
                .flat_map(|w| w.listeners.iter().map(|l| l.path.clone()))
                .collect();
            tokio::task::spawn_blocking(move || {
                paths
                    .iter()
                    .take_while(|_| !stop.load(std::sync::atomic::Ordering::Relaxed))
                    .filter_map(|path| std::fs::read(path).ok())
                    .filter_map(|bytes| runtime.precompile(&bytes))
                    .count()
            })
            .await
            .unwrap_or(0)
        }
    };
    tracing::info!(compiled, "standby: modules compiled ahead of a takeover");
}

/// Stops `running` gracefully. With leader election (`leader`), the drain still follows the
/// leadership: when it is lost, in-flight events stop at once (a standby may be dispatching
/// already) and this returns an error.
async fn shut_down(
    running: Running,
    leader: Option<tokio::sync::watch::Receiver<bool>>,
) -> anyhow::Result<()> {
    let lost = async {
        match leader {
            // An error: the election ended without saying so, and nothing renews the lock.
            Some(mut leader) => drop(leader.wait_for(|leader| !*leader).await),
            None => std::future::pending().await,
        }
    };
    match running.stop_unless(lost).await {
        Stopped::Aborted => Err(anyhow::anyhow!(
            "lost the leadership while shutting down; stopped dispatching"
        )),
        Stopped::Drained | Stopped::GraceOver => Ok(()),
    }
}

/// Runs until `shutdown` resolves, then stops gracefully (releasing the leader lock).
///
/// With leader election, the process waits as a standby until it leads, and returns an error
/// as soon as it loses the leadership (after stopping all dispatch at once), so that the
/// process exits non-zero and is restarted.
///
/// # Errors
/// Startup failures (see [`start`]), a watch or dispatcher that died, lost leadership (also
/// while in-flight events drain at shutdown).
pub async fn run(
    client: kube::Client,
    runtime: &Runtime,
    config: &Config,
    settings: &RunSettings,
    cluster: Option<Arc<KubeCluster>>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    metrics.watch_runtime(runtime.clone());
    let server = Arc::new(ServerState::new(
        metrics.clone(),
        settings.leader.is_some(),
        settings.max_idle(),
    ));
    let stop_server = CancellationToken::new();
    let health = settings
        .health_addr
        .map(|addr| {
            crate::server::bind(addr)
                .with_context(|| format!("binding the health port {addr}"))
                .map(|listener| (listener, addr))
        })
        .transpose()?;
    // A given status address that cannot be bound stops the start; the default one only
    // turns /status off (with a warning).
    let status = settings
        .status_addr
        .map(|status| {
            crate::server::bind_status(status)
                .with_context(|| format!("binding the status address {}", status.addr))
                .map(|listener| listener.map(|listener| (listener, status.addr)))
        })
        .transpose()?
        .flatten();
    let servers = [
        (
            health,
            crate::server::router(server.clone()),
            "/healthz, /readyz, /metrics",
        ),
        (
            status,
            crate::server::status_router(server.clone()),
            "/status",
        ),
    ];
    for (bound, router, paths) in servers {
        let Some((listener, addr)) = bound else {
            continue;
        };
        tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "serving {paths}");
        let stop = stop_server.clone();
        tokio::spawn(async move {
            if let Err(err) =
                crate::server::serve(listener, router, async move { stop.cancelled().await }).await
            {
                tracing::error!(error = %err, "the server of {paths} failed");
            }
        });
    }
    let _stop_server = stop_server.drop_guard();
    tokio::pin!(shutdown);

    let election = CancellationToken::new();
    let (leader_tx, mut leader_rx) = tokio::sync::watch::channel(false);
    let elector = settings.leader.clone().map(|leader| {
        let health = Arc::new(crate::watch::leader::ElectionHealth::default());
        server.set_election(health.clone(), leader.lease_duration);
        tokio::spawn(crate::watch::leader::run(
            client.clone(),
            leader,
            leader_tx,
            election.clone(),
            health,
        ))
    });
    if elector.is_some() {
        tracing::info!("standby: waiting for the leadership");
        // Meanwhile the modules are compiled, so that a takeover does not wait for the compiler.
        // A takeover stops it and waits for the module being compiled (the start would compile
        // it again otherwise); a shutdown stops it after that module.
        let stop_warming = Arc::new(std::sync::atomic::AtomicBool::new(false));
        server.set_warming(true);
        let mut warming = tokio::spawn({
            let (server, precompiled) = (
                server.clone(),
                precompile(
                    runtime.clone(),
                    client.clone(),
                    config.clone(),
                    settings.modules.clone(),
                    stop_warming.clone(),
                ),
            );
            async move {
                precompiled.await;
                server.set_warming(false);
            }
        });
        let stop_warming = move || {
            stop_warming.store(true, std::sync::atomic::Ordering::Relaxed);
        };
        tokio::select! {
            () = &mut shutdown => {
                stop_warming();
                // The election may have won the lock just now: it releases it before returning.
                election.cancel();
                if let Some(elector) = elector {
                    let _ = elector.await;
                }
                return Ok(());
            }
            changed = leader_rx.wait_for(|leader| *leader) => {
                stop_warming();
                if changed.is_err() {
                    anyhow::bail!("leader election ended");
                }
            }
        }
        // The module being compiled is waited for (the start would compile it again), but a
        // stop ends the wait: the lock is released and the process exits without it.
        tokio::select! {
            _ = &mut warming => {}
            () = &mut shutdown => {
                tracing::info!("shutting down while the module being compiled ahead of the takeover finishes");
                election.cancel();
                if let Some(elector) = elector {
                    let _ = elector.await;
                }
                return Ok(());
            }
        }
        server.set_leader(true);
    } else {
        metrics.leader.set(1);
    }

    // A stop while the watches are being set up (CRDs registered, modules compiled, targets
    // resolved) ends the run there: nothing has been dispatched yet.
    let calls = cluster.clone();
    // So does a leadership lost meanwhile: nothing may be dispatched without it.
    let started = tokio::select! {
        started = start(client, runtime, config, settings, None, metrics.clone(), cluster) => Some(Ok(started)),
        () = &mut shutdown => None,
        lost = leader_rx.wait_for(|leader| !*leader), if elector.is_some() => {
            drop(lost);
            Some(Err(()))
        }
    };
    let result = match started {
        None => {
            tracing::info!("shutting down before the watches started");
            Ok(())
        }
        Some(Err(())) => {
            server.set_leader(false);
            Err(anyhow::anyhow!(
                "lost the leadership while the watches were set up; stopped"
            ))
        }
        Some(Ok(Err(err))) => Err(err),
        Some(Ok(Ok(mut running))) => {
            server.set_watches(running.entries());
            if let Some(swap) = running.hotswap() {
                server.set_rejections(swap);
            }
            let drain_leader = elector.is_some().then(|| leader_rx.clone());
            tokio::select! {
                () = &mut shutdown => {
                    tracing::info!("shutting down");
                    let result = shut_down(running, drain_leader).await;
                    if result.is_err() {
                        server.set_leader(false);
                    }
                    result
                }
                lost = leader_rx.wait_for(|leader| !*leader), if elector.is_some() => {
                    drop(lost);
                    running.abort();
                    server.set_leader(false);
                    Err(anyhow::anyhow!("lost the leadership; stopped dispatching"))
                }
                what = running.failed() => {
                    tracing::error!(error = %what, "a task of the run died; stopping");
                    server.set_fatal(what.clone());
                    Err(anyhow::anyhow!("{what}"))
                }
            }
        }
    };
    // Guest calls still running (the grace ran out, the leadership was lost) may finish, but
    // not act on the cluster once the lock is released.
    if let Some(calls) = &calls {
        calls.stop_calls();
    }
    // Nor go on computing: every guest call still running stops now.
    runtime.halt_guests();
    election.cancel();
    if let Some(elector) = elector {
        let _ = elector.await;
    }
    result
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Sets its flag when dropped (its task was aborted).
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A [`Running`] whose one dispatcher handles an event that never ends.
    fn running_with_a_stuck_event(grace: Duration) -> (Running, Arc<AtomicBool>) {
        let aborted = Arc::new(AtomicBool::new(false));
        let flag = DropFlag(aborted.clone());
        let mut dispatchers = tokio::task::JoinSet::new();
        dispatchers.spawn(async move {
            let _flag = flag;
            std::future::pending::<()>().await;
        });
        let running = Running {
            metrics: Arc::new(Metrics::new()),
            watches: Vec::new(),
            cancel: CancellationToken::new(),
            watchers: tokio::task::JoinSet::new(),
            hotswap_task: None,
            dispatchers,
            grace,
        };
        (running, aborted)
    }

    #[tokio::test(start_paused = true)]
    async fn leadership_lost_during_the_shutdown_drain_aborts_in_flight_events() {
        let grace = Duration::from_secs(30);
        let (running, aborted) = running_with_a_stuck_event(grace);
        let (tx, rx) = tokio::sync::watch::channel(true);
        let t0 = tokio::time::Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tx.send_replace(false);
            // Kept open: only the value says the leadership is lost.
            std::future::pending::<()>().await;
        });
        let err = shut_down(running, Some(rx)).await.expect_err("lost");
        assert!(err.to_string().contains("lost the leadership"), "{err}");
        assert_eq!(tokio::time::Instant::now() - t0, Duration::from_secs(1));
        assert!(
            aborted.load(Ordering::SeqCst),
            "the in-flight event was aborted"
        );
    }

    #[tokio::test]
    async fn a_task_that_dies_is_named_with_how_it_ended() {
        let (mut running, _) = running_with_a_stuck_event(Duration::from_secs(1));
        running.watchers.spawn(async { panic!("the watch broke") });
        let why = running.failed().await;
        assert!(
            why.starts_with("a watch task ended: ") && why.contains("the watch broke"),
            "{why}"
        );
        running.dispatchers.spawn(async {});
        running.dispatchers.abort_all();
        let why = running.failed().await;
        assert!(
            why.starts_with("a dispatcher ended: ") && why.contains("cancelled"),
            "{why}"
        );
    }

    /// One watch of ConfigMaps (no listener to load: an empty chain), and a runtime.
    fn configmap_watch() -> (Config, Runtime) {
        let config = crate::config::parse(
            "watches:\n  - name: cms\n    apiVersion: v1\n    kind: ConfigMap\n    listeners: [{module: x.wasm}]\n",
            std::path::Path::new("k.yaml"),
        )
        .unwrap();
        let config = Config {
            watches: config
                .watches
                .into_iter()
                .map(|w| WatchConfig {
                    listeners: Vec::new(),
                    ..w
                })
                .collect(),
        };
        let runtime = Runtime::new(crate::runtime::RuntimeConfig {
            cache_dir: None,
            ..Default::default()
        })
        .unwrap();
        (config, runtime)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_while_the_watches_are_set_up_ends_the_run() {
        // Setting up the watch (discovery of its kind) waits for good.
        let (client, _server) = crate::test_support::unanswering_api().await;
        let (config, runtime) = configmap_watch();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let settings = RunSettings::default();
        let run = run(client, &runtime, &config, &settings, None, async move {
            let _ = stopped.await;
        });
        tokio::pin!(run);
        // The set-up is under way (and stuck) ...
        assert!(tokio::time::timeout(Duration::from_secs(5), &mut run)
            .await
            .is_err());
        // ... and a stop ends the run at once. The clock is paused: it jumps ahead whenever
        // everything waits, so the hour passes at once if the run never ends.
        stop.send(()).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(3600), run).await;
        assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
        assert!(runtime.halted(), "a run halts the guests it leaves behind");
    }

    #[tokio::test(start_paused = true)]
    async fn a_target_the_api_server_does_not_answer_for_waits_instead_of_holding_the_start() {
        let (client, _server) = crate::test_support::unanswering_api().await;
        let (config, runtime) = configmap_watch();
        let settings = RunSettings::default();
        let metrics = Arc::new(Metrics::new());
        let t0 = tokio::time::Instant::now();
        let running = start(
            client,
            &runtime,
            &config,
            &settings,
            None,
            metrics.clone(),
            None,
        )
        .await
        .expect("started, with the watch waiting");
        // The start waits START_WAIT for the first attempt, not its whole RESOLVE_TIMEOUT.
        assert_eq!(tokio::time::Instant::now() - t0, START_WAIT);
        let watch = &running.watches[0];
        assert_eq!(
            watch.state.waiting().as_deref(),
            Some("not resolved within 10s of the start; still trying")
        );
        assert!(!watch.state.ready());
        assert_eq!(watch.state.resource(), "v1/ConfigMap");
        assert!(metrics
            .encode()
            .contains("kubelisten_watch_waiting_for_target{watch=\"cms\"} 1"));
        // The first attempt goes on in the background until its own timeout, then it retries
        // (never answered here); it stops with the run.
        tokio::time::sleep(RESOLVE_TIMEOUT).await;
        assert_eq!(
            watch.state.waiting().as_deref(),
            Some("no answer from the API server within 75s")
        );
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(watch.state.waiting().is_some());
        assert!(running.stop().await);
    }

    #[test]
    fn why_a_target_waits_names_the_cause() {
        let forbidden = kube::Error::Api(Box::new(kube::core::Status {
            code: 403,
            message: "customresourcedefinitions is forbidden: User \"sa\" cannot create".into(),
            ..Default::default()
        }));
        let why = Unresolved::Failed(target::Error::CreateCrdFailed {
            name: "things.x.dev".into(),
            source: Box::new(forbidden),
        })
        .describe();
        assert!(
            why.starts_with("cannot create CRD things.x.dev: ") && why.contains("cannot create"),
            "{why}"
        );
        assert!(why.contains("is forbidden: User \"sa\""), "{why}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_or_a_process_without_election_drains_for_the_grace_period() {
        let grace = Duration::from_secs(30);
        for leader in [true, false] {
            let (running, _aborted) = running_with_a_stuck_event(grace);
            let (_tx, rx) = tokio::sync::watch::channel(true);
            let t0 = tokio::time::Instant::now();
            shut_down(running, leader.then_some(rx))
                .await
                .expect("not an error");
            assert_eq!(tokio::time::Instant::now() - t0, grace);
        }
    }
}
