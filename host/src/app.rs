//! `kubelisten run`: resolves every watch's target, loads its listener chain, then runs one
//! list/watch loop per namespace feeding one dispatcher per watch, until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::capabilities::events::FailureReporter;
use crate::capabilities::KubeCluster;
use crate::config::Config;
use crate::dispatch::dispatcher::{Dispatcher, DispatcherConfig, Observer, WatchState};
use crate::dispatch::Chain;
use crate::runtime::{Listener, Runtime};
use crate::watch::target;
use crate::watch::watcher::{self, WatchSpec};

/// Settings of a run besides the watches.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Dispatch settings (workers per watch, queue bound, retries).
    pub dispatch: DispatcherConfig,
    /// Server-side watch timeout.
    pub watch_timeout: Duration,
    /// How long in-flight events may take to finish at shutdown.
    pub shutdown_grace: Duration,
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            dispatch: DispatcherConfig::default(),
            watch_timeout: Duration::from_secs(290),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// A watch that is running: its name and shared state (synced, events seen).
#[derive(Debug, Clone)]
pub struct RunningWatch {
    /// The watch's name.
    pub name: Arc<str>,
    /// The resource watched (`group/version/kind`).
    pub resource: String,
    /// Its state.
    pub state: Arc<WatchState>,
}

/// Everything started by [`start`]; [`Running::stop`] shuts it down.
pub struct Running {
    /// The running watches.
    pub watches: Vec<RunningWatch>,
    cancel: CancellationToken,
    watchers: tokio::task::JoinSet<()>,
    dispatchers: tokio::task::JoinSet<()>,
    grace: Duration,
}

impl Running {
    /// Stops the watches, lets in-flight events finish within the grace period and returns.
    /// Returns false when the grace period ran out with events still in flight.
    pub async fn stop(mut self) -> bool {
        self.cancel.cancel();
        self.watchers.shutdown().await;
        let drained = tokio::time::timeout(self.grace, async {
            while self.dispatchers.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            tracing::warn!(
                grace_ms = self.grace.as_millis() as u64,
                "shutdown grace period over with events still in flight"
            );
        }
        drained
    }

    /// Resolves when a watch or dispatcher task ended on its own (it should not before stop).
    pub async fn failed(&mut self) -> &'static str {
        tokio::select! {
            Some(_) = self.watchers.join_next() => "a watch task ended",
            Some(_) = self.dispatchers.join_next() => "a dispatcher ended",
        }
    }
}

/// Timeout of one guest cluster request.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);

/// The cluster access of every listener in `config`, for [`crate::runtime::RuntimeConfig::cluster`].
/// Call it inside the tokio runtime that will serve the requests.
pub fn cluster_access(client: &kube::Client, config: &Config) -> Arc<KubeCluster> {
    let listeners = config.watches.iter().flat_map(|w| {
        w.listeners
            .iter()
            .map(|l| (l.name.clone(), l.capabilities.clone()))
    });
    Arc::new(KubeCluster::new(
        client.clone(),
        tokio::runtime::Handle::current(),
        listeners,
        API_TIMEOUT,
    ))
}

/// Resolves the targets (registering CRDs), loads the listeners and starts watching.
///
/// # Errors
/// A target that cannot be resolved or a listener that cannot be loaded: nothing is started.
pub async fn start(
    client: kube::Client,
    runtime: &Runtime,
    config: &Config,
    settings: &RunSettings,
    observer: Option<Observer>,
) -> anyhow::Result<Running> {
    let mut prepared = Vec::new();
    for watch in &config.watches {
        let target = target::resolve(&client, watch)
            .await
            .with_context(|| format!("watch {}: resolving the target", watch.name))?;
        let mut listeners = Vec::new();
        for spec in &watch.listeners {
            let listener = Listener::load(runtime, spec)
                .with_context(|| format!("watch {}: loading listener {}", watch.name, spec.name))?;
            listeners.push(Arc::new(listener));
        }
        prepared.push((watch.name.clone(), target, Chain::new(listeners)));
    }

    let failures = Arc::new(FailureReporter::new(
        client.clone(),
        Duration::from_secs(60),
    ));
    let cancel = CancellationToken::new();
    let mut watchers = tokio::task::JoinSet::new();
    let mut dispatchers = tokio::task::JoinSet::new();
    let mut watches = Vec::new();
    for (name, target, chain) in prepared {
        let name: Arc<str> = Arc::from(name.as_str());
        let state = Arc::new(WatchState::default());
        let (tx, rx) = mpsc::channel(256);
        let namespaces: Vec<Option<String>> = if target.namespaced && !target.namespaces.is_empty()
        {
            target.namespaces.iter().cloned().map(Some).collect()
        } else {
            vec![None]
        };
        for namespace in namespaces {
            let spec = WatchSpec {
                name: name.clone(),
                resource: target.resource.clone(),
                namespace,
                label_selector: target.label_selector.clone(),
                field_selector: target.field_selector.clone(),
                timeout: settings.watch_timeout,
                page_size: 500,
            };
            watchers.spawn(watcher::run(client.clone(), spec, tx.clone()));
        }
        tracing::info!(watch = %name, resource = %target.describe(), listeners = chain.listeners().len(), "watching");
        watches.push(RunningWatch {
            name: name.clone(),
            resource: target.describe(),
            state: state.clone(),
        });
        let dispatcher = Dispatcher {
            watch: name,
            chain: Arc::new(chain),
            config: settings.dispatch.clone(),
            observer: observer.clone(),
            state,
            failures: Some(failures.clone()),
        };
        dispatchers.spawn(dispatcher.run(rx, cancel.child_token()));
    }
    Ok(Running {
        watches,
        cancel,
        watchers,
        dispatchers,
        grace: settings.shutdown_grace,
    })
}

/// Runs until `shutdown` resolves, then stops gracefully.
///
/// # Errors
/// Startup failures (see [`start`]) and a watch or dispatcher that died.
pub async fn run(
    client: kube::Client,
    runtime: &Runtime,
    config: &Config,
    settings: &RunSettings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut running = start(client, runtime, config, settings, None).await?;
    tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            running.stop().await;
            Ok(())
        }
        what = running.failed() => anyhow::bail!("{what}"),
    }
}
