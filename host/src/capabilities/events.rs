//! Kubernetes Events (`events.k8s.io/v1`): for guests' `record-event`, and the host's own
//! Warning on an object when a listener finally failed or trapped on it, rate-limited per object.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
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

// The API server's Event limits count bytes, not characters: cut at a char boundary.
use crate::runtime::truncate_utf8 as truncate;

/// Publishes Events with a reporting controller per caller (`kubelisten/<listener>`).
pub struct EventRecorder {
    client: Client,
    recorders: Mutex<HashMap<String, Recorder>>,
}

impl EventRecorder {
    /// A recorder using `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            recorders: Mutex::new(HashMap::new()),
        }
    }

    /// Records an Event about `regarding` reported by `controller`, in the namespace of
    /// `regarding` (`default` for a cluster-scoped object, as the API server requires).
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
        let recorder = {
            let mut recorders = self
                .recorders
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            recorders
                .entry(controller.to_string())
                .or_insert_with(|| {
                    let reporter = Reporter {
                        controller: controller.to_string(),
                        instance: std::env::var("HOSTNAME").ok(),
                    };
                    Recorder::new(self.client.clone(), reporter)
                })
                .clone()
        };
        recorder
            .publish(&event(warning, reason, message), regarding)
            .await
    }
}

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

/// The Event to publish, its reason and note cut to the API server's limits.
fn event(warning: bool, reason: &str, message: &str) -> Event {
    Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: truncate(reason, MAX_REASON_BYTES).into(),
        note: Some(truncate(message, MAX_NOTE_BYTES).into()),
        action: truncate("Reconcile", MAX_ACTION_BYTES).into(),
        secondary: None,
    }
}

/// The host's Warning Events about listener failures, at most one per object and reason within
/// `interval`.
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

    #[test]
    fn multi_byte_reasons_and_notes_fit_the_api_servers_limits() {
        let event = event(true, &"Ü".repeat(100), &"€".repeat(1000));
        assert_eq!(event.reason, "Ü".repeat(64));
        assert_eq!(event.note.as_deref(), Some("€".repeat(341).as_str()));
        assert!(event.action.len() <= MAX_ACTION_BYTES);
    }

    #[test]
    fn references_carry_the_uid_and_no_namespace_for_cluster_scoped_objects() {
        let mut object = ObjectRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("ns".into()),
            name: "a".into(),
        };
        let namespaced = reference(&object, Some("uid-a"));
        assert_eq!(namespaced.uid.as_deref(), Some("uid-a"));
        assert_eq!(namespaced.namespace.as_deref(), Some("ns"));
        object.namespace = None;
        let cluster_scoped = reference(&object, Some(""));
        assert_eq!(cluster_scoped.uid, None, "an empty uid is left out");
        assert_eq!(cluster_scoped.namespace, None);
    }

    #[test]
    fn reasons_name_the_listener() {
        assert_eq!(pascal("rust-logger"), "RustLogger");
        assert_eq!(pascal("superpod"), "Superpod");
        assert_eq!(pascal("a_b.c"), "ABC");
    }
}
