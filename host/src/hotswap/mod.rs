//! Hot swap of listener modules from a ConfigMap watched through the API (`--modules-configmap`).
//!
//! On every change of the ConfigMap, each added or changed listener is decoded, checked against
//! the world, compiled and instantiated once with its limits off the dispatch path (compiled
//! code is cached by digest, so swapping back is immediate); then every watch's chain is
//! replaced atomically. Events already in a call
//! finish on the old version; later events use the new one. A reference-mode listener whose old
//! and new modules both implement the `stateful-listener` world gets the old instance's state;
//! otherwise it starts fresh, and the log says so. A new version's start code, tried at load,
//! runs with its entry's grants; the running version keeps its own until the swap, which sets
//! the new capabilities before the new chains run. A listener whose module and settings did not
//! change keeps its instance and gets the new grants. A bad update (a module that does not load
//! or cannot be instantiated with its limits, an unknown watch, a watch left with no listener)
//! is rejected (Warning Event on the ConfigMap, log, metric, `/status`) and the running version
//! keeps serving.

pub mod source;

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use sha2::{Digest, Sha256};

use self::source::Entry;
use crate::capabilities::events::{self, EventRecorder};
use crate::capabilities::KubeCluster;
use crate::dispatch::{Chain, ChainSlot};
use crate::metrics::{labels, Metrics};
use crate::runtime::bindings::kubelisten::listener::cluster::ObjectRef;
use crate::runtime::{Listener, ListenerSpec, Runtime};
use crate::server::ListenerStatus;

/// `NAMESPACE/NAME` of the modules ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModulesConfigMap {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl FromStr for ModulesConfigMap {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: ns.into(),
                    name: name.into(),
                })
            }
            _ => Err(format!("expected NAMESPACE/NAME, got {s:?}")),
        }
    }
}

/// Longest wait for the API server's answer when the ConfigMap is first read.
pub const LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(75);

/// Longest wait for the Events that report one update's rejections, all together (they are
/// published after the swap).
const EVENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How often the files of modules rejected because they could not be read (a volume not
/// mounted yet) are looked for again; the ConfigMap is applied again once one is there.
pub const FILE_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Why [`HotSwap::load`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The API server refused or failed the request.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// No answer within [`LOAD_TIMEOUT`].
    #[error("no answer from the API server within {}s", LOAD_TIMEOUT.as_secs())]
    TimedOut,
}

/// One rejected part of an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The listener, or `*` when the whole `listeners.yaml` was rejected.
    pub listener: String,
    /// Digest of the rejected module, when it could be read.
    pub digest: Option<String>,
    /// Why.
    pub error: String,
}

#[derive(Default)]
struct Current {
    /// Running listeners by name, with the entry they were built from.
    running: HashMap<String, (Entry, Arc<Listener>)>,
    /// The last rejection per listener (`*` for listeners.yaml).
    rejected: BTreeMap<String, Rejection>,
    /// Digest of the last ConfigMap content handled, applied or (partly) rejected: the same
    /// content delivered again (a relist) is skipped, and is not rejected and reported twice.
    /// Any other content is handled, so a revert to the last good content after a partly
    /// rejected update (whose good listeners were swapped in) applies.
    applied: Option<String>,
    /// The watches kubelisten started from, when the ConfigMap defines them
    /// ([`HotSwap::pin_watches`]).
    pinned: Option<Vec<crate::config::WatchConfig>>,
    /// Set while the ConfigMap's watches differ from the pinned ones.
    watches_changed: Option<String>,
    /// The last ConfigMap handled and the module files it names that were not there, while
    /// there are some: it is applied again when one appears ([`FILE_RECHECK`]).
    missing_files: Option<(ConfigMap, Vec<std::path::PathBuf>)>,
    /// Set when the first read found no ConfigMap, until one is applied: meanwhile no listener
    /// runs, and `/readyz` says so ([`HotSwap::unserved`]).
    configmap_missing: bool,
}

/// The hot-swap machinery of one process.
pub struct HotSwap {
    runtime: Runtime,
    client: Client,
    source: ModulesConfigMap,
    slots: BTreeMap<String, Arc<ChainSlot>>,
    cluster: Option<Arc<KubeCluster>>,
    metrics: Arc<Metrics>,
    recorder: EventRecorder,
    current: tokio::sync::Mutex<()>,
    state: Mutex<Current>,
}

impl std::fmt::Debug for HotSwap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotSwap")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl HotSwap {
    /// Hot swap into the chains of `slots` (watch name → chain).
    pub fn new(
        runtime: Runtime,
        client: Client,
        source: ModulesConfigMap,
        slots: BTreeMap<String, Arc<ChainSlot>>,
        cluster: Option<Arc<KubeCluster>>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            recorder: EventRecorder::new(client.clone()),
            runtime,
            client,
            source,
            slots,
            cluster,
            metrics,
            current: tokio::sync::Mutex::new(()),
            state: Mutex::new(Current::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// kubelisten started from the watches the ConfigMap lists (no `--config`, no `--crd`):
    /// from now on an update whose `listeners.yaml` (in the `--config` format) adds, removes or
    /// changes a watch is rejected as a whole, naming the watches, since watches are read only
    /// at start. Without this, such edits would be ignored without a word.
    pub fn pin_watches(&self, watches: &[crate::config::WatchConfig]) {
        self.lock().pinned = Some(watches.to_vec());
    }

    /// The listener set of `text`; an error when it changes pinned watches, or drops their
    /// list (kubelisten could not start from it again).
    fn parse(&self, text: &str) -> Result<Vec<Entry>, source::Error> {
        let pinned = self.lock().pinned.clone();
        if !source::is_config_format(text) {
            if pinned.is_some() {
                return Err(source::Error::BadListeners(
                    "kubelisten started from this ConfigMap's `watches:` list, so listeners.yaml \
                     must keep it (the --config format): a restart could not start from a bare \
                     listener set"
                        .into(),
                ));
            }
            return source::parse(text);
        }
        let config = source::parse_config(text)?;
        match &pinned {
            Some(running) => {
                if let Some(changes) = source::watch_changes(running, &config.watches) {
                    self.lock().watches_changed = Some(changes.clone());
                    return Err(source::Error::WatchesChanged(changes));
                }
            }
            None => {
                let listed: Vec<&str> = config.watches.iter().map(|w| w.name.as_str()).collect();
                tracing::warn!(watches = ?listed, "listeners.yaml lists watches, but kubelisten's watches come from --config or --crd: only the listeners apply, each to the watch of that name");
            }
        }
        self.lock().watches_changed = None;
        Ok(source::entries_of(&config))
    }

    /// When the last update was rejected because it changes the watches: how. A process that
    /// has not started dispatching yet (a standby taking over, or a start racing an edit) exits
    /// on this instead of running empty chains ([`crate::app`]).
    pub fn watches_changed(&self) -> Option<String> {
        self.lock().watches_changed.clone()
    }

    /// Reads the ConfigMap once and applies it (startup). A missing ConfigMap is logged,
    /// reported by [`HotSwap::unserved`] (so `/readyz` fails) and waited for by
    /// [`HotSwap::run`]; meanwhile the chains stay empty, and their events are acknowledged with
    /// no listener called (the listeners get a catch-up `create` of every object when they
    /// join).
    ///
    /// # Errors
    /// The API server could not be asked, or did not answer within [`LOAD_TIMEOUT`].
    pub async fn load(&self) -> Result<Vec<Rejection>, LoadError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.source.namespace);
        let read = tokio::time::timeout(LOAD_TIMEOUT, api.get_opt(&self.source.name))
            .await
            .map_err(|_| LoadError::TimedOut)??;
        match read {
            Some(cm) => Ok(self.apply(&cm).await),
            None => {
                self.lock().configmap_missing = true;
                tracing::warn!(configmap = %self.source_name(), "modules ConfigMap not found: no listener runs, and events are acknowledged without any call, until it is created; /readyz answers 503 meanwhile");
                Ok(Vec::new())
            }
        }
    }

    /// Compiles the modules the ConfigMap `source` holds now into `runtime`'s caches, without
    /// loading or running anything (a standby, so that taking over does not compile), until
    /// `stop` is set (checked between modules). Returns how many compiled; anything unreadable
    /// is left for the load to report.
    pub async fn precompile(
        runtime: &Runtime,
        client: &Client,
        source: &ModulesConfigMap,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> usize {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &source.namespace);
        let Ok(Ok(Some(cm))) = tokio::time::timeout(LOAD_TIMEOUT, api.get_opt(&source.name)).await
        else {
            return 0;
        };
        let binary = binary_of(&cm);
        let text = cm.data.as_ref().and_then(|d| d.get("listeners.yaml"));
        let Some(Ok(entries)) = text.map(|t| source::parse(t)) else {
            return 0;
        };
        let runtime = runtime.clone();
        tokio::task::spawn_blocking(move || {
            entries
                .iter()
                .take_while(|_| !stop.load(std::sync::atomic::Ordering::Relaxed))
                .filter_map(|entry| source::module_bytes(entry, &binary).ok())
                .filter_map(|bytes| runtime.precompile(&bytes))
                .count()
        })
        .await
        .unwrap_or(0)
    }

    /// Watches the ConfigMap and applies every change until the task is dropped; meanwhile,
    /// every [`FILE_RECHECK`], looks again for module files that were not there.
    pub async fn run(self: Arc<Self>) {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.source.namespace);
        let config =
            watcher::Config::default().fields(&format!("metadata.name={}", self.source.name));
        let mut stream = watcher(api, config)
            .default_backoff()
            .applied_objects()
            .boxed();
        let mut recheck = tokio::time::interval(FILE_RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(Ok(cm)) => {
                        self.apply(&cm).await;
                    }
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "watching the modules ConfigMap failed; retrying");
                    }
                    None => return,
                },
                _ = recheck.tick() => {
                    self.recheck_missing_files().await;
                }
            }
        }
    }

    /// Applies the last ConfigMap again if a module file it names that was not there is now a
    /// regular file (a volume mounted after the update).
    async fn recheck_missing_files(&self) {
        let _one_at_a_time = self.current.lock().await;
        let Some((last, missing)) = self.lock().missing_files.clone() else {
            return;
        };
        // Looked for without the state's lock (which /readyz and /status take): a slow
        // filesystem holds up nothing else.
        let Some(appeared) =
            tokio::task::block_in_place(|| missing.into_iter().find(|path| path.is_file()))
        else {
            return;
        };
        tracing::info!(path = %appeared.display(), "a module file that was not there is now; applying the modules ConfigMap again");
        // Not the same content as far as the module files go: apply it again.
        self.lock().applied = None;
        self.apply_locked(&last, true).await;
    }

    /// Applies one version of the ConfigMap; returns what was rejected.
    pub async fn apply(&self, cm: &ConfigMap) -> Vec<Rejection> {
        let _one_at_a_time = self.current.lock().await;
        self.apply_locked(cm, false).await
    }

    /// [`HotSwap::apply`], with `current` held by the caller. `again`: the same ConfigMap
    /// applied once more (a module file appeared); a rejection identical to the one already
    /// on record for its listener is not reported again (log, counter, Event).
    async fn apply_locked(&self, cm: &ConfigMap, again: bool) -> Vec<Rejection> {
        if std::mem::take(&mut self.lock().configmap_missing) {
            tracing::info!(configmap = %self.source_name(), "modules ConfigMap found; applying it");
        }
        let binary = binary_of(cm);
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get("listeners.yaml"))
            .cloned();
        let content = content_digest(text.as_deref(), &binary);
        if self.lock().applied.as_deref() == Some(content.as_str()) {
            return Vec::new();
        }
        let entries = match text
            .ok_or(source::Error::MissingListeners)
            .and_then(|t| self.parse(&t))
            .and_then(|entries| self.every_watch_served(entries))
        {
            Ok(entries) => entries,
            Err(err) => {
                let rejection = Rejection {
                    listener: "*".into(),
                    digest: None,
                    error: err.to_string(),
                };
                self.reject(&rejection);
                {
                    let mut state = self.lock();
                    state.applied = Some(content);
                    state.missing_files = None;
                }
                self.publish_all(cm, std::slice::from_ref(&rejection)).await;
                return vec![rejection];
            }
        };
        let mut rejections = Vec::new();
        // Those reported (all but the repeated ones of a re-apply).
        let mut reported = Vec::new();
        let mut missing_files = Vec::new();
        let mut next: HashMap<String, (Entry, Arc<Listener>)> = HashMap::new();
        for entry in &entries {
            let path = std::path::Path::new(&entry.module);
            // Looked at before the read: a file that appears just after a failed read is still
            // looked for again.
            let file_missing =
                path.is_absolute() && !binary.contains_key(&entry.module) && !path.is_file();
            let built = match self.watch_of(entry) {
                Ok(_) => self.build(entry, &binary).await,
                Err(error) => Err(Rejection {
                    listener: entry.name.clone(),
                    digest: None,
                    error,
                }),
            };
            match built {
                Ok(Some(listener)) => {
                    next.insert(entry.name.clone(), (entry.clone(), listener));
                }
                // Same module and settings: keep the running instance, under the new entry (its
                // capabilities and watch apply).
                Ok(None) => {
                    let kept = self.lock().running.get(&entry.name).map(|(_, l)| l.clone());
                    if let Some(listener) = kept {
                        next.insert(entry.name.clone(), (entry.clone(), listener));
                    }
                }
                Err(rejection) => {
                    // A module file that is not there: looked for again until it is.
                    if file_missing && rejection.digest.is_none() {
                        missing_files.push(path.to_path_buf());
                    }
                    let repeated =
                        again && self.lock().rejected.get(&rejection.listener) == Some(&rejection);
                    if !repeated {
                        self.reject(&rejection);
                        reported.push(rejection.clone());
                    }
                    // The running version (if any) keeps serving, as it was.
                    if let Some(kept) = self.lock().running.get(&entry.name).cloned() {
                        next.insert(entry.name.clone(), kept);
                    }
                    rejections.push(rejection);
                }
            }
        }
        // The swap may wait (blocking) for calls in flight on the old chains.
        tokio::task::block_in_place(|| self.swap(&entries, next, &rejections));
        {
            let mut state = self.lock();
            state.applied = Some(content);
            state.missing_files = (!missing_files.is_empty()).then(|| (cm.clone(), missing_files));
        }
        // The Events last: a slow Events API does not hold up the good listeners.
        self.publish_all(cm, &reported).await;
        rejections
    }

    /// Builds the listener of `entry` unless the running one already has the same module and
    /// settings (`Ok(None)`): compiled and instantiated once with its limits and grants
    /// ([`Listener::from_bytes_tried_with`]) on the blocking pool.
    async fn build(
        &self,
        entry: &Entry,
        binary: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Option<Arc<Listener>>, Rejection> {
        let reject = |digest: Option<String>, error: String| Rejection {
            listener: entry.name.clone(),
            digest,
            error,
        };
        // File reads and decompression block: not on an async worker.
        let bytes = tokio::task::block_in_place(|| source::module_bytes(entry, binary))
            .map_err(|e| reject(None, e.to_string()))?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if let Some((old_entry, old)) = self.lock().running.get(&entry.name) {
            if old.digest() == digest
                && old_entry.mode == entry.mode
                && old_entry.limits == entry.limits
            {
                return Ok(None);
            }
        }
        // The trial instantiation runs the module's start code, which may call the cluster
        // (a Go `init()` reading its settings): with its entry's grants, as the version will
        // have them at its first event. A running version keeps its own until the swap.
        let trial = match &self.cluster {
            Some(cluster) => cluster.granting(entry.capabilities.clone()),
            None => self.runtime.cluster(),
        };
        let spec = ListenerSpec {
            name: entry.name.clone(),
            path: entry.module.clone().into(),
            mode: entry.mode,
            limits: entry.limits.clone(),
            capabilities: entry.capabilities.clone(),
        };
        let runtime = self.runtime.clone();
        let built = tokio::task::spawn_blocking(move || {
            Listener::from_bytes_tried_with(&runtime, &spec, &bytes, trial)
        })
        .await;
        match built {
            Ok(Ok(listener)) => Ok(Some(Arc::new(listener))),
            // The rejection names the listener already: keep only what is wrong.
            Ok(Err(crate::runtime::Error::CheckFailed { problems, .. })) => {
                Err(reject(Some(digest), problems.to_string()))
            }
            Ok(Err(crate::runtime::Error::InstantiationFailed { reason, .. })) => Err(reject(
                Some(digest),
                format!("cannot be instantiated: {reason}"),
            )),
            Ok(Err(err)) => Err(reject(Some(digest), err.to_string())),
            Err(err) => Err(reject(
                Some(digest),
                format!("compilation task failed: {err}"),
            )),
        }
    }

    /// `entries`, unless they leave a watch without a listener (entries that name no watch
    /// of this process count for none): then the whole update is refused, as a `--config`
    /// file with a watch without listeners is, and the running listeners keep serving.
    fn every_watch_served(&self, entries: Vec<Entry>) -> Result<Vec<Entry>, source::Error> {
        let served: std::collections::HashSet<&str> = entries
            .iter()
            .filter_map(|e| self.watch_of(e).ok())
            .collect();
        let empty: Vec<String> = self
            .slots
            .keys()
            .filter(|w| !served.contains(w.as_str()))
            .cloned()
            .collect();
        if empty.is_empty() {
            Ok(entries)
        } else {
            Err(source::Error::WatchesWithoutListeners(empty))
        }
    }

    /// `NAMESPACE/NAME` of the ConfigMap.
    fn source_name(&self) -> String {
        format!("{}/{}", self.source.namespace, self.source.name)
    }

    /// The watch `entry` belongs to: its `watch`, or the only one.
    ///
    /// # Errors
    /// What is wrong, when there is no such watch or several to choose from.
    fn watch_of(&self, entry: &Entry) -> Result<&str, String> {
        let watches = || self.slots.keys().cloned().collect::<Vec<_>>().join(", ");
        match &entry.watch {
            Some(watch) => self
                .slots
                .get_key_value(watch)
                .map(|(w, _)| w.as_str())
                .ok_or_else(|| format!("no watch {watch:?} (watches: {})", watches())),
            None if self.slots.len() == 1 => Ok(self.slots.keys().next().map_or("", |w| w)),
            None => Err(format!(
                "no `watch:` given, and there are several watches ({})",
                watches()
            )),
        }
    }

    /// Replaces every watch's chain with the listeners of `entries` (in order; each goes to the
    /// watch of the entry it runs under in `next`), handing state over between reference-mode
    /// versions. The capabilities of `next` take effect before the new chains do.
    fn swap(
        &self,
        entries: &[Entry],
        next: HashMap<String, (Entry, Arc<Listener>)>,
        rejections: &[Rejection],
    ) {
        let mut chains: BTreeMap<String, Vec<Arc<Listener>>> =
            self.slots.keys().map(|w| (w.clone(), Vec::new())).collect();
        for entry in entries {
            let Some((running_entry, listener)) = next.get(&entry.name) else {
                continue;
            };
            // Checked in `apply` (the watches never change), so this always finds the chain.
            match self
                .watch_of(running_entry)
                .ok()
                .and_then(|w| chains.get_mut(w))
            {
                Some(chain) => chain.push(listener.clone()),
                None => {
                    tracing::error!(listener = %entry.name, watch = ?running_entry.watch, "no chain for the listener; it does not run")
                }
            }
        }
        // A copy: `running` keeps the old versions until the new ones are in (at the end), so
        // `/readyz` never sees an empty set while the swap waits for calls in flight.
        let old = self.lock().running.clone();
        // Listeners whose grants this update changes (none without cluster access, where
        // grants change nothing).
        let regranted: std::collections::HashSet<&str> = next
            .iter()
            .filter(|(name, (entry, _))| {
                self.cluster.is_some()
                    && old
                        .get(*name)
                        .is_none_or(|(prev, _)| prev.capabilities != entry.capabilities)
            })
            .map(|(name, _)| name.as_str())
            .collect();
        // The new grants first: a new version never runs with the old ones (calls still in
        // flight on the old version may see the new ones).
        if let Some(cluster) = &self.cluster {
            for (name, (entry, _)) in &next {
                if regranted.contains(name.as_str()) {
                    cluster.set_capabilities(name, entry.capabilities.clone());
                    tracing::info!(listener = %name, grants = entry.capabilities.grants.len(), "capabilities set from the modules ConfigMap");
                }
            }
        }
        // Hand-over guards block calls to the new reference instances until their state is in.
        let pairs: Vec<(Arc<Listener>, Arc<Listener>)> = next
            .values()
            .filter_map(|(_, new)| {
                let (_, previous) = old.get(&**new.name())?;
                (!Arc::ptr_eq(previous, new) && new.mode() == crate::runtime::Mode::Reference)
                    .then(|| (previous.clone(), new.clone()))
            })
            .collect();
        let guards: Vec<_> = pairs.iter().map(|(_, new)| new.begin_handover()).collect();
        let mut retired = Vec::new();
        for (watch, listeners) in chains {
            let Some(slot) = self.slots.get(&watch) else {
                continue;
            };
            // A chain left as it was (the same instances, in order, with the same grants) is
            // not set again: a set ends the waits of events retrying on it.
            let current = slot.get();
            let unchanged = current.listeners().len() == listeners.len()
                && current
                    .listeners()
                    .iter()
                    .zip(&listeners)
                    .all(|(now, next)| Arc::ptr_eq(now, next))
                && !listeners.iter().any(|l| regranted.contains(&**l.name()));
            if !unchanged {
                retired.push(slot.set(Chain::new(listeners)));
            }
        }
        if !pairs.is_empty() {
            // An attempt that took the old chain before the swap may still call an old
            // reference instance: take its state only once every such attempt is done.
            wait_until_unused(&retired);
        }
        for (guard, (previous, new)) in guards.into_iter().zip(&pairs) {
            if guard.restore_from(previous) {
                tracing::info!(listener = %new.name(), from = %previous.digest(), to = %new.digest(), "swapped; state carried over");
            } else {
                tracing::info!(listener = %new.name(), from = %previous.digest(), to = %new.digest(), "swapped; the reference instance starts fresh (no state hand-over)");
            }
        }
        for (name, (_, listener)) in &next {
            let changed = old
                .get(name)
                .is_none_or(|(_, prev)| !Arc::ptr_eq(prev, listener));
            if changed {
                tracing::info!(listener = %name, digest = %listener.digest(), mode = listener.mode().as_str(), "listener loaded from the modules ConfigMap");
                self.metrics
                    .reloads
                    .get_or_create(&labels([("listener", name), ("outcome", "applied")]))
                    .inc();
                self.metrics
                    .listener_info
                    .get_or_create(&labels([
                        ("listener", name),
                        ("mode", listener.mode().as_str()),
                        ("digest", listener.digest()),
                    ]))
                    .set(1);
            }
        }
        // Retire the info series of versions no longer running (replaced or removed), so
        // `kubelisten_listener_info` shows exactly what runs.
        for (name, (_, previous)) in &old {
            // Same labels when only limits or capabilities changed: that series stays.
            let still_running = next.get(name).is_some_and(|(_, current)| {
                current.digest() == previous.digest() && current.mode() == previous.mode()
            });
            if !still_running {
                self.metrics.listener_info.remove(&labels([
                    ("listener", name),
                    ("mode", previous.mode().as_str()),
                    ("digest", previous.digest()),
                ]));
            }
        }
        let mut state = self.lock();
        state.running = next;
        // `/status` shows what is wrong with the content now in the ConfigMap: a listener that
        // this update applied (or kept) has no rejection any more, and neither has the file.
        state
            .rejected
            .retain(|name, _| rejections.iter().any(|r| r.listener == *name));
    }

    /// Records `rejection`: logged, counted, kept for `/status` and `/readyz`.
    fn reject(&self, rejection: &Rejection) {
        tracing::error!(listener = %rejection.listener, digest = ?rejection.digest, error = %rejection.error, "update of the modules ConfigMap rejected; whatever ran before keeps running");
        self.metrics
            .reloads
            .get_or_create(&labels([
                ("listener", &rejection.listener),
                ("outcome", "rejected"),
            ]))
            .inc();
        self.lock()
            .rejected
            .insert(rejection.listener.clone(), rejection.clone());
    }

    /// Reports each rejection as a Warning Event on the ConfigMap `cm`, waiting at most
    /// [`EVENT_TIMEOUT`] for all of them (the next update waits meanwhile).
    async fn publish_all(&self, cm: &ConfigMap, rejections: &[Rejection]) {
        let about = ObjectRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some(self.source.namespace.clone()),
            name: self.source.name.clone(),
        };
        // With the uid, `kubectl describe configmap` lists them.
        let regarding = events::reference(&about, cm.metadata.uid.as_deref());
        let all = async {
            for rejection in rejections {
                self.publish(&regarding, rejection).await;
            }
        };
        if tokio::time::timeout(EVENT_TIMEOUT, all).await.is_err() {
            tracing::warn!(
                timeout_s = EVENT_TIMEOUT.as_secs(),
                "recording the rejection Events on the modules ConfigMap timed out"
            );
        }
    }

    /// Reports `rejection` as a Warning Event regarding the modules ConfigMap. Each listener's
    /// rejection is an Event of its own (the note differs); the same rejection again within
    /// [`events::SERIES_WINDOW`] raises its count.
    async fn publish(&self, regarding: &ObjectReference, rejection: &Rejection) {
        let reason = if rejection.listener == "*" {
            "ListenersRejected"
        } else {
            "ModuleRejected"
        };
        let note = format!("listener {}: {}", rejection.listener, rejection.error);
        if let Err(err) = self
            .recorder
            .publish("kubelisten", regarding, true, reason, &note)
            .await
        {
            tracing::warn!(configmap = %self.source_name(), listener = %rejection.listener, error = %err, "cannot record the rejection Event on the modules ConfigMap");
        }
    }

    /// Per watch, the listeners running (digest, mode) and each one's last rejected update.
    pub fn statuses(&self) -> BTreeMap<String, Vec<ListenerStatus>> {
        let state = self.lock();
        let mut out: BTreeMap<String, Vec<ListenerStatus>> = BTreeMap::new();
        for chain_watch in self.slots.keys() {
            let chain = self.slots[chain_watch].get();
            let statuses = chain
                .listeners()
                .iter()
                .map(|l| ListenerStatus {
                    name: l.name().to_string(),
                    mode: l.mode().as_str().into(),
                    digest: l.digest().into(),
                    rejected: state.rejected.get(&**l.name()).map(rejection_json),
                })
                .collect();
            out.insert(chain_watch.clone(), statuses);
        }
        out
    }

    /// Every rejection still on record (listener → rejection).
    pub fn rejected(&self) -> BTreeMap<String, Rejection> {
        self.lock().rejected.clone()
    }

    /// What the ConfigMap should run with nothing running in its place, described: the
    /// ConfigMap itself while it has not been found, a listener whose first version was
    /// rejected (a process that just started, a new listener), or the whole `listeners.yaml`
    /// while no listener runs. Their events go to the chains without them.
    pub fn unserved(&self) -> Vec<String> {
        let state = self.lock();
        let missing = state.configmap_missing.then(|| {
            format!(
                "modules ConfigMap {} not found (no listener runs until it is created)",
                self.source_name()
            )
        });
        let rejected = state
            .rejected
            .values()
            .filter(|r| {
                if r.listener == "*" {
                    state.running.is_empty()
                } else {
                    !state.running.contains_key(&r.listener)
                }
            })
            .map(|r| {
                format!(
                    "listener {}: {} (rejected, and nothing runs in its place)",
                    r.listener, r.error
                )
            });
        missing.into_iter().chain(rejected).collect()
    }
}

impl crate::server::RejectionSource for HotSwap {
    fn rejected(&self) -> BTreeMap<String, serde_json::Value> {
        self.lock()
            .rejected
            .iter()
            .map(|(name, r)| (name.clone(), rejection_json(r)))
            .collect()
    }

    fn unserved(&self) -> Vec<String> {
        HotSwap::unserved(self)
    }
}

/// Waits (at most a minute) until nobody but the caller holds the retired chains.
fn wait_until_unused(retired: &[Arc<Chain>]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while retired.iter().any(|c| Arc::strong_count(c) > 1) {
        if std::time::Instant::now() > deadline {
            tracing::warn!("calls on the old listener chain still running after 60 s; handing state over anyway");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The ConfigMap's `binaryData`, by key.
fn binary_of(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    cm.binary_data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

fn rejection_json(r: &Rejection) -> serde_json::Value {
    serde_json::json!({"digest": r.digest, "error": r.error})
}

fn content_digest(text: Option<&str>, binary: &BTreeMap<String, Vec<u8>>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(text.unwrap_or("").as_bytes());
    for (key, value) in binary {
        hasher.update(key.as_bytes());
        hasher.update(value);
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RuntimeConfig;

    fn entry(watch: Option<&str>) -> Entry {
        source::parse("listeners: [{name: l, module: l.wasm}]")
            .map(|mut entries| {
                entries[0].watch = watch.map(str::to_string);
                entries.remove(0)
            })
            .unwrap()
    }

    /// A hot swap into empty chains of `watches`, with a client that reaches nothing.
    fn swap(watches: &[&str]) -> Arc<HotSwap> {
        let client =
            Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        HotSwap::new(
            Runtime::new(RuntimeConfig::default()).unwrap(),
            client,
            "ns/modules".parse().unwrap(),
            watches
                .iter()
                .map(|w| (w.to_string(), Arc::new(ChainSlot::new(Chain::new(vec![])))))
                .collect(),
            None,
            Arc::new(Metrics::new()),
        )
    }

    #[tokio::test]
    async fn an_update_that_leaves_a_watch_without_listeners_is_refused() {
        let served = |swap: &HotSwap, watches: &[Option<&str>]| {
            swap.every_watch_served(watches.iter().map(|w| entry(*w)).collect())
                .map(|entries| entries.len())
                .map_err(|e| e.to_string())
        };
        let two = swap(&["a", "b"]);
        assert_eq!(served(&two, &[Some("a"), Some("b")]), Ok(2));
        let refused = served(&two, &[Some("a"), Some("nope")]).unwrap_err();
        assert!(
            refused.starts_with(
                "listeners.yaml gives watch \"b\" no listener: every watch needs at least one"
            ) && refused.ends_with("Nothing of this update was applied"),
            "{refused}"
        );
        // An entry without `watch:` belongs to none of several.
        let refused = served(&two, &[None]).unwrap_err();
        assert!(
            refused.starts_with("listeners.yaml gives watches \"a\", \"b\" no listener"),
            "{refused}"
        );
        let one = swap(&["a"]);
        assert_eq!(served(&one, &[None]), Ok(1));
        assert!(served(&one, &[]).is_err());
    }

    #[tokio::test]
    async fn a_missing_configmap_is_unserved_until_one_is_applied() {
        let one = swap(&["a"]);
        assert_eq!(one.unserved(), Vec::<String>::new());
        one.lock().configmap_missing = true;
        assert_eq!(
            one.unserved(),
            ["modules ConfigMap ns/modules not found (no listener runs until it is created)"]
        );
        // Found, but without listeners.yaml: that is what keeps it unready now.
        one.apply(&ConfigMap::default()).await;
        assert_eq!(
            one.unserved(),
            [
                "listener *: the ConfigMap has no listeners.yaml data key (rejected, and nothing \
              runs in its place)"
            ]
        );
    }

    #[tokio::test]
    async fn an_entry_must_name_an_existing_watch_unless_there_is_only_one() {
        let one = swap(&["a"]);
        assert_eq!(one.watch_of(&entry(None)), Ok("a"));
        assert_eq!(one.watch_of(&entry(Some("a"))), Ok("a"));
        assert_eq!(
            one.watch_of(&entry(Some("b"))),
            Err("no watch \"b\" (watches: a)".into())
        );
        let two = swap(&["a", "b"]);
        assert_eq!(two.watch_of(&entry(Some("b"))), Ok("b"));
        assert_eq!(
            two.watch_of(&entry(None)),
            Err("no `watch:` given, and there are several watches (a, b)".into())
        );
    }
}
