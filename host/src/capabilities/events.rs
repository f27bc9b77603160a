//! Kubernetes Events (`events.k8s.io/v1`): for guests' `record-event`, and the host's own
//! Warning on an object when a listener finally failed or trapped on it, rate-limited per object.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;

use crate::runtime::bindings::kubelisten::listener::cluster::ObjectRef;

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

    /// Records an Event about `about` (in `namespace`) reported by `controller`.
    ///
    /// # Errors
    /// The API server's answer.
    pub async fn publish(
        &self,
        controller: &str,
        about: &ObjectRef,
        namespace: Option<&str>,
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
        let reference = ObjectReference {
            api_version: Some(about.api_version.clone()),
            kind: Some(about.kind.clone()),
            name: Some(about.name.clone()),
            namespace: namespace
                .map(str::to_string)
                .or_else(|| about.namespace.clone()),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.chars().take(128).collect(),
            note: Some(message.chars().take(1024).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        recorder.publish(&event, &reference).await
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
        match self
            .recorder
            .publish(
                "kubelisten",
                object,
                object.namespace.as_deref(),
                true,
                &reason,
                &note,
            )
            .await
        {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(listener, object = %object.name, error = %err, "cannot record a failure Event");
                false
            }
        }
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
    fn reasons_name_the_listener() {
        assert_eq!(super::pascal("rust-logger"), "RustLogger");
        assert_eq!(super::pascal("superpod"), "Superpod");
        assert_eq!(super::pascal("a_b.c"), "ABC");
    }
}
