//! Kubernetes Events (`events.k8s.io/v1`): for guests' `record-event`, and the host's own
//! Warnings (a listener that finally failed or trapped on an object, rate-limited per object and
//! reason; a rejected update of the modules ConfigMap).
//!
//! An Event repeated within [`SERIES_WINDOW`] of its last occurrence (same reporting controller,
//! object, type, reason and note) is folded into it: its `series.count` goes up. An Event whose
//! note differs is a new Event, so every distinct message shows in `kubectl describe`
//! (kube-runtime's `Recorder` leaves the note out of its key and keeps the first note).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;

use crate::runtime::bindings::kubelisten::listener::cluster::ObjectRef;

/// Longest Event `note` the API server accepts, in bytes.
const MAX_NOTE_BYTES: usize = 1024;
/// Longest Event `reason` the API server accepts, in bytes.
const MAX_REASON_BYTES: usize = 128;
/// Longest Event `action` the API server accepts, in bytes.
const MAX_ACTION_BYTES: usize = 128;
/// How long the host's own failure Event may take: the dispatch of the object's next event waits
/// for it, so a request nobody answers (a connection whose peer is gone) must not hold it up.
const FAILURE_EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after its last occurrence a repeat still joins an Event's series (kube-runtime's
/// and client-go's window).
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);
/// Most series remembered at once; when full, the one seen longest ago is forgotten (its next
/// repeat is a new Event).
const MAX_SERIES: usize = 1024;

// The API server's Event limits count bytes, not characters: cut at a char boundary.
use crate::runtime::truncate_utf8 as truncate;

/// The `regarding` reference of an Event about `about`: with `uid` when known (`kubectl describe`
/// lists only Events whose `regarding.uid` is the object's), and the namespace of `about` as
/// given (none for a cluster-scoped object).
pub fn reference(about: &ObjectRef, uid: Option<&str>) -> ObjectReference {
    ObjectReference {
        api_version: Some(about.api_version.clone()),
        kind: Some(about.kind.clone()),
        name: Some(about.name.clone()),
        namespace: about.namespace.clone(),
        uid: uid.filter(|u| !u.is_empty()).map(str::to_string),
        ..ObjectReference::default()
    }
}

/// Publishes Events, with the reporting controller each caller names (`kubelisten` for the
/// host, `kubelisten/<listener>` for guests), folding repeats into series.
pub struct EventRecorder {
    client: Client,
    /// `reportingInstance`: the Pod's name (`HOSTNAME`), else the controller.
    instance: Option<String>,
    series: Mutex<SeriesCache>,
}

impl EventRecorder {
    /// A recorder using `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            instance: std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()),
            series: Mutex::new(SeriesCache::default()),
        }
    }

    fn series(&self) -> std::sync::MutexGuard<'_, SeriesCache> {
        self.series.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records an Event about `regarding`, reported by `controller`, in the namespace of
    /// `regarding` (`default` for a cluster-scoped object, as the API server requires). A repeat
    /// of the same Event (same note too) within [`SERIES_WINDOW`] raises the count of the
    /// earlier one instead.
    ///
    /// # Errors
    /// The API server's answer.
    pub async fn publish(
        &self,
        controller: &str,
        regarding: &ObjectReference,
        warning: bool,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let event = self.event(controller, regarding, warning, reason, message);
        let key = SeriesKey::of(&event);
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        let repeat = self.series().repeat(&key, Instant::now());
        if let Some((name, count)) = repeat {
            let series = EventSeries {
                count,
                last_observed_time: MicroTime(Timestamp::now()),
            };
            let patch = serde_json::json!({ "series": series });
            match events
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                // Deleted, or expired on the API server: the repeat starts a new Event.
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    tracing::debug!(event = %name, namespace, "the Event of this series is gone; recording a new one");
                    self.series().forget(&key);
                }
                Err(err) => return Err(err),
            }
        }
        let created = events.create(&PostParams::default(), &event).await?;
        let name = created
            .metadata
            .name
            .or(event.metadata.name)
            .unwrap_or_default();
        self.series().created(key, name, Instant::now());
        Ok(())
    }

    /// The Event to create, its reason and note cut to the API server's limits.
    fn event(
        &self,
        controller: &str,
        regarding: &ObjectReference,
        warning: bool,
        reason: &str,
        message: &str,
    ) -> K8sEvent {
        let now = Timestamp::now();
        K8sEvent {
            action: Some(truncate("Reconcile", MAX_ACTION_BYTES).into()),
            reason: Some(truncate(reason, MAX_REASON_BYTES).into()),
            note: Some(truncate(message, MAX_NOTE_BYTES).into()),
            type_: Some(if warning { "Warning" } else { "Normal" }.into()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(controller.into()),
            reporting_instance: Some(
                self.instance
                    .clone()
                    .unwrap_or_else(|| controller.to_string()),
            ),
            metadata: ObjectMeta {
                namespace: Some(
                    regarding
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                ),
                // As kube-runtime and client-go name them, but always a valid name.
                name: Some(event_name(
                    regarding.name.as_deref().unwrap_or(controller),
                    now.as_nanosecond(),
                )),
                ..ObjectMeta::default()
            },
            ..K8sEvent::default()
        }
    }
}

/// An Event's name: `<object name>.<nanoseconds, hex>`, as kube-runtime and client-go name
/// them, made a DNS subdomain as `events.k8s.io/v1` requires: an object name that is not one
/// (`system:controller:foo`, a ClusterRole's) has every other character replaced by `-`, is
/// lowercased and cut so that the whole stays within 253 characters.
fn event_name(object: &str, nanos: i128) -> String {
    let suffix = format!(".{nanos:x}");
    let mut prefix: String = object
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect();
    prefix.truncate(253 - suffix.len());
    // Each dot-separated part starts and ends with a letter or digit.
    let prefix = prefix
        .split('.')
        .map(|part| part.trim_matches('-'))
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(".");
    let prefix = if prefix.is_empty() { "event" } else { &prefix };
    format!("{prefix}{suffix}")
}

/// What makes two Events the same: a repeat joins the earlier one's series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    controller: Option<String>,
    /// apiVersion, kind, namespace, name, uid.
    regarding: [Option<String>; 5],
    type_: Option<String>,
    reason: Option<String>,
    note: Option<String>,
}

impl SeriesKey {
    fn of(event: &K8sEvent) -> Self {
        let r = event.regarding.clone().unwrap_or_default();
        Self {
            controller: event.reporting_controller.clone(),
            regarding: [r.api_version, r.kind, r.namespace, r.name, r.uid],
            type_: event.type_.clone(),
            reason: event.reason.clone(),
            note: event.note.clone(),
        }
    }
}

/// One Event's series: its name, occurrences so far and when it was last seen.
#[derive(Debug)]
struct Series {
    name: String,
    count: i32,
    last: Instant,
}

/// The Events published within [`SERIES_WINDOW`], at most [`MAX_SERIES`].
#[derive(Debug, Default)]
struct SeriesCache {
    entries: HashMap<SeriesKey, Series>,
}

impl SeriesCache {
    /// For a repeat of an Event last seen within the window: its name and the new count,
    /// recorded as seen at `now`.
    fn repeat(&mut self, key: &SeriesKey, now: Instant) -> Option<(String, i32)> {
        self.expire(now);
        let series = self.entries.get_mut(key)?;
        series.count = series.count.saturating_add(1);
        series.last = now;
        Some((series.name.clone(), series.count))
    }

    /// Remembers the Event `name` just created for `key`.
    fn created(&mut self, key: SeriesKey, name: String, now: Instant) {
        self.expire(now);
        if self.entries.len() >= MAX_SERIES && !self.entries.contains_key(&key) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, s)| s.last)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        let series = Series {
            name,
            count: 1,
            last: now,
        };
        self.entries.insert(key, series);
    }

    fn forget(&mut self, key: &SeriesKey) {
        self.entries.remove(key);
    }

    fn expire(&mut self, now: Instant) {
        self.entries
            .retain(|_, s| now.saturating_duration_since(s.last) < SERIES_WINDOW);
    }
}

/// The host's Warning Events about listener failures, at most one per object and reason within
/// `interval`, whatever the message. After that, the same failure (same message) raises the
/// earlier Event's series count; a different one is a new Event.
pub struct FailureReporter {
    recorder: EventRecorder,
    interval: Duration,
    last: Mutex<HashMap<(String, String), Instant>>,
}

impl FailureReporter {
    /// A reporter publishing at most one Event per object and reason per `interval`.
    pub fn new(client: Client, interval: Duration) -> Self {
        Self {
            recorder: EventRecorder::new(client),
            interval,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Records that `listener` failed (or trapped) on the object; the reason names the listener,
    /// e.g. `RustLoggerTrapped`. Returns whether an Event was sent (false when rate-limited).
    pub async fn report(
        &self,
        object: &ObjectRef,
        uid: &str,
        listener: &str,
        trapped: bool,
        message: &str,
    ) -> bool {
        let reason = format!(
            "{}{}",
            pascal(listener),
            if trapped { "Trapped" } else { "Failed" }
        );
        let key = (
            if uid.is_empty() {
                format!("{:?}/{}", object.namespace, object.name)
            } else {
                uid.to_string()
            },
            reason.clone(),
        );
        {
            let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            if last
                .get(&key)
                .is_some_and(|at| now.duration_since(*at) < self.interval)
            {
                return false;
            }
            last.retain(|_, at| now.duration_since(*at) < self.interval);
            last.insert(key, now);
        }
        let note = format!("listener {listener}: {message}");
        let regarding = reference(object, Some(uid));
        let published = self
            .recorder
            .publish("kubelisten", &regarding, true, &reason, &note);
        let error = match tokio::time::timeout(FAILURE_EVENT_TIMEOUT, published).await {
            Ok(Ok(())) => return true,
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {}s", FAILURE_EVENT_TIMEOUT.as_secs()),
        };
        tracing::warn!(listener, namespace = ?object.namespace, object = %object.name, %error, "cannot record a failure Event");
        false
    }
}

/// `rust-logger` → `RustLogger`.
fn pascal(name: &str) -> String {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut chars = p.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase())
                .into_iter()
                .chain(chars)
                .collect::<String>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_names_are_dns_subdomains() {
        assert_eq!(super::event_name("web-1", 0xabc), "web-1.abc");
        assert_eq!(
            super::event_name("system:controller:Foo_bar", 0x1),
            "system-controller-foo-bar.1"
        );
        assert_eq!(super::event_name(":::", 0x1), "event.1");
        assert_eq!(super::event_name("a..-b-.", 0x1), "a.b.1");
        let long = super::event_name(&"x".repeat(300), i128::from(i64::MAX));
        assert!(long.len() <= 253, "{}", long.len());
        assert!(long.ends_with(".7fffffffffffffff"));
    }

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failure_event_nobody_answers_is_given_up() {
        let (client, _server) = crate::test_support::unanswering_api().await;
        let reporter = FailureReporter::new(client, Duration::from_secs(60));
        let object = ObjectRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("ns".into()),
            name: "a".into(),
        };
        // The clock is paused: it jumps ahead whenever everything waits, so the hour passes at
        // once if the report never gives up.
        let reported = tokio::time::timeout(
            Duration::from_secs(3600),
            reporter.report(&object, "uid-a", "l", true, "trapped"),
        )
        .await;
        assert_eq!(reported, Ok(false), "the report must give up, not hang");
    }

    #[test]
    fn limits_are_in_bytes_and_cuts_fall_on_char_boundaries() {
        assert_eq!(truncate("short", MAX_NOTE_BYTES), "short");
        let ascii = "a".repeat(2000);
        assert_eq!(truncate(&ascii, MAX_NOTE_BYTES).len(), 1024);
        // 'é' is 2 bytes, '€' 3 and '🦀' 4: 1024 bytes is not a multiple of any of them but 2.
        for unit in ["é", "€", "🦀", "x€"] {
            let text = unit.repeat(1000);
            for max in [MAX_NOTE_BYTES, MAX_REASON_BYTES] {
                let cut = truncate(&text, max);
                assert!(cut.len() <= max, "{unit}: {} bytes", cut.len());
                assert!(cut.len() > max - 4, "{unit}: only {} bytes kept", cut.len());
                assert!(text.starts_with(cut));
            }
        }
        assert_eq!(truncate("€", 2), "");
    }

    fn config_map(namespace: Option<&str>) -> ObjectRef {
        ObjectRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: namespace.map(str::to_string),
            name: "a".into(),
        }
    }

    #[tokio::test]
    async fn multi_byte_reasons_and_notes_fit_the_api_servers_limits() {
        let (client, _server) = crate::test_support::unanswering_api().await;
        let recorder = EventRecorder::new(client);
        let regarding = reference(&config_map(Some("ns")), None);
        let event = recorder.event(
            "kubelisten",
            &regarding,
            true,
            &"Ü".repeat(100),
            &"€".repeat(1000),
        );
        assert_eq!(event.reason, Some("Ü".repeat(64)));
        assert_eq!(event.note.as_deref(), Some("€".repeat(341).as_str()));
        assert!(event.action.is_some_and(|a| a.len() <= MAX_ACTION_BYTES));
    }

    #[test]
    fn references_carry_the_uid_and_no_namespace_for_cluster_scoped_objects() {
        let namespaced = reference(&config_map(Some("ns")), Some("uid-a"));
        assert_eq!(namespaced.uid.as_deref(), Some("uid-a"));
        assert_eq!(namespaced.namespace.as_deref(), Some("ns"));
        let cluster_scoped = reference(&config_map(None), Some(""));
        assert_eq!(cluster_scoped.uid, None, "an empty uid is left out");
        assert_eq!(cluster_scoped.namespace, None);
    }

    #[tokio::test]
    async fn events_about_cluster_scoped_objects_are_written_to_default() {
        let (client, _server) = crate::test_support::unanswering_api().await;
        let recorder = EventRecorder::new(client);
        let namespaced = reference(&config_map(Some("ns")), Some("uid-a"));
        let event = recorder.event("kubelisten", &namespaced, true, "R", "m");
        assert_eq!(event.metadata.namespace.as_deref(), Some("ns"));
        let cluster_scoped = reference(&config_map(None), None);
        let event = recorder.event("kubelisten", &cluster_scoped, false, "R", "m");
        assert_eq!(event.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(event.regarding.and_then(|r| r.namespace), None);
    }

    fn key(note: &str) -> SeriesKey {
        SeriesKey {
            controller: Some("kubelisten".into()),
            regarding: [None, None, None, Some("a".into()), Some("uid-a".into())],
            type_: Some("Warning".into()),
            reason: Some("ModuleRejected".into()),
            note: Some(note.into()),
        }
    }

    #[test]
    fn only_a_repeat_with_the_same_note_joins_a_series_within_the_window() {
        let start = Instant::now();
        let mut cache = SeriesCache::default();
        cache.created(key("listener a: bad"), "a.1".into(), start);
        assert_eq!(cache.repeat(&key("listener b: bad"), start), None);
        assert_eq!(
            cache.repeat(&key("listener a: bad"), start + Duration::from_secs(60)),
            Some(("a.1".into(), 2))
        );
        // The window runs from the last occurrence.
        let later = start + Duration::from_secs(60) + SERIES_WINDOW - Duration::from_secs(1);
        assert_eq!(
            cache.repeat(&key("listener a: bad"), later),
            Some(("a.1".into(), 3))
        );
        assert_eq!(
            cache.repeat(&key("listener a: bad"), later + SERIES_WINDOW),
            None
        );
    }

    #[test]
    fn a_full_cache_forgets_the_series_seen_longest_ago() {
        let start = Instant::now();
        let mut cache = SeriesCache::default();
        for i in 0..MAX_SERIES {
            let at = start + Duration::from_millis(i as u64);
            cache.created(key(&i.to_string()), format!("a.{i}"), at);
        }
        let now = start + Duration::from_secs(1);
        cache.created(key("new"), "a.new".into(), now);
        assert_eq!(cache.entries.len(), MAX_SERIES);
        assert_eq!(cache.repeat(&key("0"), now), None);
        assert_eq!(cache.repeat(&key("1"), now), Some(("a.1".into(), 2)));
        assert_eq!(cache.repeat(&key("new"), now), Some(("a.new".into(), 2)));
    }

    #[test]
    fn reasons_name_the_listener() {
        assert_eq!(pascal("rust-logger"), "RustLogger");
        assert_eq!(pascal("superpod"), "Superpod");
        assert_eq!(pascal("a_b.c"), "ABC");
    }
}
