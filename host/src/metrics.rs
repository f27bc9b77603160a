//! Prometheus metrics (`prometheus-client`), all prefixed `kubelisten_`. Object names never
//! become labels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

type Labels = Vec<(&'static str, String)>;

/// (listener, export, outcome): one `listener_calls_total` series.
type CallKey = (Arc<str>, &'static str, &'static str);

/// Every metric of the process.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// `kubelisten_events_total{watch,kind}`: events received per watch and kind.
    pub events: Family<Labels, Counter>,
    /// `kubelisten_catch_up_events_total{watch}`: `initial` creates replayed from memory to
    /// listeners that joined a running chain (not in `events`: the API server did not send them).
    pub catch_ups: Family<Labels, Counter>,
    /// `kubelisten_merged_events_total{watch}`: updates folded into an event of the same
    /// object still waiting, because the object already had
    /// [`MAX_WAITING_PER_OBJECT`](crate::dispatch::dispatcher::MAX_WAITING_PER_OBJECT) waiting.
    pub merged: Family<Labels, Counter>,
    /// `kubelisten_listener_calls_total{listener,export,outcome}`.
    pub calls: Family<Labels, Counter>,
    /// `kubelisten_listener_traps_total{listener,trap}`.
    pub traps: Family<Labels, Counter>,
    /// `kubelisten_listener_call_duration_seconds{listener}`.
    pub call_duration: Family<Labels, Histogram>,
    /// `kubelisten_instance_rebuilds_total{listener}`: reference instances rebuilt after a trap.
    pub rebuilds: Family<Labels, Counter>,
    /// `kubelisten_watch_restarts_total{watch}`: watch requests reopened.
    pub watch_restarts: Family<Labels, Counter>,
    /// `kubelisten_watch_relists_total{watch}`: lists after the first (410 Expired).
    pub watch_relists: Family<Labels, Counter>,
    /// `kubelisten_queue_depth{watch}`: events queued, not yet started.
    pub queue_depth: Family<Labels, Gauge>,
    /// `kubelisten_watch_objects{watch}`: objects the watch keeps in memory (the last state of
    /// each, to diff relists and report deletes); the leader's memory grows with it.
    pub watch_objects: Family<Labels, Gauge>,
    /// `kubelisten_watch_object_bytes{watch}`: bytes of object JSON text the watch keeps.
    pub watch_object_bytes: Family<Labels, Gauge>,
    /// `kubelisten_watch_waiting_for_target{watch}`: 1 while the watch's target is not
    /// resolved yet (its kind not served, the API failing) and it retries, else 0.
    pub waiting_for_target: Family<Labels, Gauge>,
    /// `kubelisten_leader`: 1 while this process leads (or runs without leader election).
    pub leader: Gauge,
    /// `kubelisten_listener_info{listener,mode,digest}`: 1 per loaded listener.
    pub listener_info: Family<Labels, Gauge>,
    /// `kubelisten_listener_reloads_total{listener,outcome}`: hot swaps applied or rejected.
    pub reloads: Family<Labels, Counter>,
    /// `kubelisten_cluster_calls_denied_total{listener}`: cluster calls refused by the policy.
    pub cluster_denials: Family<Labels, Counter>,
    /// `kubelisten_instance_pool_used`: component instances in the pooling allocator now
    /// (events in flight, reference instances, prewarmed spares); sampled at each scrape.
    pub pool_used: Gauge,
    /// `kubelisten_instance_pool_capacity`: component instances the pool can hold
    /// (`--pool-instances`); 0 with on-demand allocation, which has no fixed capacity.
    pub pool_capacity: Gauge,
    /// `kubelisten_spare_instances`: prewarmed classname instances waiting for an event.
    pub spare_instances: Gauge,
    /// The runtime sampled for the pool gauges at each scrape.
    runtime: std::sync::OnceLock<crate::runtime::Runtime>,
    /// Handles of `calls` series already used, by (listener, export, outcome).
    call_counters: RwLock<HashMap<CallKey, Counter>>,
    /// Handles of `call_duration` series already used, by listener.
    call_histograms: RwLock<HashMap<Arc<str>, Histogram>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kubelisten");
        let events = Family::<Labels, Counter>::default();
        let catch_ups = Family::<Labels, Counter>::default();
        let merged = Family::<Labels, Counter>::default();
        let calls = Family::<Labels, Counter>::default();
        let traps = Family::<Labels, Counter>::default();
        let call_duration = Family::<Labels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.00001, 4.0, 12))) as fn() -> Histogram,
        );
        let rebuilds = Family::<Labels, Counter>::default();
        let watch_restarts = Family::<Labels, Counter>::default();
        let watch_relists = Family::<Labels, Counter>::default();
        let queue_depth = Family::<Labels, Gauge>::default();
        let watch_objects = Family::<Labels, Gauge>::default();
        let watch_object_bytes = Family::<Labels, Gauge>::default();
        let waiting_for_target = Family::<Labels, Gauge>::default();
        let leader = Gauge::default();
        let listener_info = Family::<Labels, Gauge>::default();
        let reloads = Family::<Labels, Counter>::default();
        let cluster_denials = Family::<Labels, Counter>::default();
        let (pool_used, pool_capacity, spare_instances) =
            (Gauge::default(), Gauge::default(), Gauge::default());
        registry.register(
            "events",
            "Events received per watch and kind",
            events.clone(),
        );
        registry.register(
            "catch_up_events",
            "Creates replayed to listeners that joined a running chain, per watch",
            catch_ups.clone(),
        );
        registry.register(
            "merged_events",
            "Updates merged into a waiting event of the same object (too many of its events waiting), per watch",
            merged.clone(),
        );
        registry.register(
            "listener_calls",
            "Listener calls per listener, export and outcome",
            calls.clone(),
        );
        registry.register(
            "listener_traps",
            "Listener traps per listener and trap kind",
            traps.clone(),
        );
        registry.register_with_unit(
            "listener_call_duration",
            "Duration of listener calls",
            Unit::Seconds,
            call_duration.clone(),
        );
        registry.register(
            "instance_rebuilds",
            "Reference-mode instances rebuilt after a trap",
            rebuilds.clone(),
        );
        registry.register(
            "watch_restarts",
            "Watch requests reopened",
            watch_restarts.clone(),
        );
        registry.register(
            "watch_relists",
            "Relists after the first list",
            watch_relists.clone(),
        );
        registry.register(
            "queue_depth",
            "Events queued and not yet started",
            queue_depth.clone(),
        );
        registry.register(
            "watch_objects",
            "Objects the watch keeps in memory (their last state)",
            watch_objects.clone(),
        );
        registry.register_with_unit(
            "watch_object",
            "JSON text of the objects the watch keeps in memory",
            Unit::Bytes,
            watch_object_bytes.clone(),
        );
        registry.register(
            "watch_waiting_for_target",
            "1 while the watch waits for its target (kind not served yet, API failing)",
            waiting_for_target.clone(),
        );
        registry.register(
            "leader",
            "1 while this process is the leader",
            leader.clone(),
        );
        registry.register(
            "listener_info",
            "Loaded listeners with their module digest and mode",
            listener_info.clone(),
        );
        registry.register(
            "listener_reloads",
            "Hot swaps of listener modules per listener and outcome (applied or rejected)",
            reloads.clone(),
        );
        registry.register(
            "cluster_calls_denied",
            "Cluster calls of listeners refused by their capability policy",
            cluster_denials.clone(),
        );
        registry.register(
            "instance_pool_used",
            "Component instances in the pooling allocator now (in flight, reference, spare)",
            pool_used.clone(),
        );
        registry.register(
            "instance_pool_capacity",
            "Component instances the pool can hold (0 with on-demand allocation)",
            pool_capacity.clone(),
        );
        registry.register(
            "spare_instances",
            "Prewarmed classname instances waiting for their event",
            spare_instances.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            events,
            catch_ups,
            merged,
            calls,
            traps,
            call_duration,
            rebuilds,
            watch_restarts,
            watch_relists,
            queue_depth,
            watch_objects,
            watch_object_bytes,
            waiting_for_target,
            leader,
            listener_info,
            reloads,
            cluster_denials,
            pool_used,
            pool_capacity,
            spare_instances,
            runtime: std::sync::OnceLock::new(),
            call_counters: RwLock::default(),
            call_histograms: RwLock::default(),
        }
    }

    /// Counts one finished listener call in `listener_calls_total` and
    /// `listener_call_duration_seconds`. Each series' handle is kept after its first use (a
    /// handle shares its value with the family's series), so counting a call allocates nothing.
    pub fn count_call(
        &self,
        listener: &Arc<str>,
        export: &'static str,
        outcome: &'static str,
        seconds: f64,
    ) {
        cached(
            &self.call_counters,
            (listener.clone(), export, outcome),
            || {
                self.calls
                    .get_or_create(&labels([
                        ("listener", listener),
                        ("export", export),
                        ("outcome", outcome),
                    ]))
                    .clone()
            },
        )
        .inc();
        if outcome == "skipped" {
            // Not a call: no duration worth a histogram sample.
            return;
        }
        cached(&self.call_histograms, listener.clone(), || {
            self.call_duration
                .get_or_create(&labels([("listener", listener)]))
                .clone()
        })
        .observe(seconds);
    }

    /// Samples `runtime`'s instance pool into the pool gauges at every scrape (the first
    /// runtime given wins).
    pub fn watch_runtime(&self, runtime: crate::runtime::Runtime) {
        let _ = self.runtime.set(runtime);
    }

    fn sample_runtime(&self) {
        let Some(runtime) = self.runtime.get() else {
            return;
        };
        let (used, capacity) = runtime.pool_usage().unwrap_or((0, 0));
        self.pool_used.set(i64::try_from(used).unwrap_or(i64::MAX));
        self.pool_capacity.set(i64::from(capacity));
        self.spare_instances
            .set(i64::from(runtime.spare_instances()));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        self.sample_runtime();
        let mut out = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(err) = encode(&mut out, &registry) {
            tracing::error!(error = %err, "cannot encode metrics");
        }
        out
    }
}

/// The handle under `key` in `map`, made by `make` and kept on first use. A handle is a clone
/// that shares its value with the family's series.
fn cached<K: std::hash::Hash + Eq, V: Clone>(
    map: &RwLock<HashMap<K, V>>,
    key: K,
    make: impl FnOnce() -> V,
) -> V {
    let hit = map
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
        .cloned();
    hit.unwrap_or_else(|| {
        let value = make();
        map.write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, value.clone());
        value
    })
}

/// A label set.
pub fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        m.events
            .get_or_create(&labels([("watch", "w"), ("kind", "create")]))
            .inc();
        m.call_duration
            .get_or_create(&labels([("listener", "l")]))
            .observe(0.002);
        m.leader.set(1);
        let text = m.encode();
        assert!(
            text.contains("kubelisten_events_total{watch=\"w\",kind=\"create\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kubelisten_listener_call_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains("kubelisten_leader 1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn counted_calls_land_in_the_family_series() {
        let m = Metrics::new();
        let listener: Arc<str> = Arc::from("l");
        for _ in 0..3 {
            m.count_call(&listener, "create", "ok", 0.001);
        }
        m.count_call(&listener, "create", "error", 0.002);
        // A call skipped by crash-loop backoff is counted, but is no duration sample.
        m.count_call(&listener, "create", "skipped", 0.0);
        let text = m.encode();
        assert!(
            text.contains(
                "kubelisten_listener_calls_total{listener=\"l\",export=\"create\",outcome=\"skipped\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "kubelisten_listener_calls_total{listener=\"l\",export=\"create\",outcome=\"ok\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "kubelisten_listener_calls_total{listener=\"l\",export=\"create\",outcome=\"error\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("kubelisten_listener_call_duration_seconds_count{listener=\"l\"} 4"),
            "{text}"
        );
    }

    #[test]
    fn pool_gauges_sample_the_runtime_at_each_scrape() {
        let m = Metrics::new();
        assert!(m.encode().contains("kubelisten_instance_pool_capacity 0\n"));
        let runtime = crate::runtime::Runtime::new(crate::runtime::RuntimeConfig {
            cache_dir: None,
            pool_instances: 8,
            ..Default::default()
        })
        .unwrap();
        m.watch_runtime(runtime.clone());
        let text = m.encode();
        let expected = match runtime.allocator() {
            crate::runtime::AllocatorKind::Pooling => "kubelisten_instance_pool_capacity 8\n",
            crate::runtime::AllocatorKind::OnDemand => "kubelisten_instance_pool_capacity 0\n",
        };
        assert!(text.contains(expected), "{text}");
        assert!(text.contains("kubelisten_instance_pool_used 0\n"), "{text}");
        assert!(text.contains("kubelisten_spare_instances 0\n"), "{text}");
    }

    #[test]
    fn every_family_is_exposed() {
        let m = Metrics::new();
        let one = labels([("x", "y")]);
        for family in [
            &m.events,
            &m.calls,
            &m.traps,
            &m.rebuilds,
            &m.watch_restarts,
            &m.watch_relists,
            &m.reloads,
            &m.cluster_denials,
        ] {
            family.get_or_create(&one).inc();
        }
        m.call_duration.get_or_create(&one).observe(0.001);
        m.queue_depth.get_or_create(&one).set(1);
        m.listener_info.get_or_create(&one).set(1);
        let text = m.encode();
        for name in [
            "kubelisten_events_total",
            "kubelisten_listener_calls_total",
            "kubelisten_listener_traps_total",
            "kubelisten_instance_rebuilds_total",
            "kubelisten_watch_restarts_total",
            "kubelisten_watch_relists_total",
            "kubelisten_listener_reloads_total",
            "kubelisten_cluster_calls_denied_total",
            "kubelisten_listener_call_duration_seconds_count",
            "kubelisten_queue_depth",
            "kubelisten_listener_info",
        ] {
            assert!(
                text.contains(&format!("{name}{{x=\"y\"}}")),
                "{name} missing:\n{text}"
            );
        }
    }
}
