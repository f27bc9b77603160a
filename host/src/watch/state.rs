//! Liveness and sync state of one watch, written by its watch tasks and dispatcher and read by
//! the health checks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::event::{EventKind, ResourceEvent};
use crate::status::Status;
use std::time::Duration;
use tokio::time::Instant;

/// Shared state of one watch.
#[derive(Debug, Default)]
pub struct WatchState {
    /// Set once every watch task of the watch finished its first list.
    pub synced: AtomicBool,
    /// Watch tasks whose current request is established (list or watch stream open).
    pub connected: AtomicUsize,
    /// Watch tasks that finished their first list.
    pub synced_tasks: AtomicUsize,
    /// Watch tasks started.
    pub tasks: AtomicUsize,
    /// Watch tasks still running.
    pub alive: AtomicUsize,
    /// Whether the dispatcher still runs.
    pub dispatcher_alive: AtomicBool,
    /// When the watch last made progress (see [`WatchState::activity`]), on the monotonic
    /// clock: a step of the wall clock (NTP, a resumed VM) neither fails `/healthz` nor hides a
    /// stuck watch. `None`: never.
    last_activity: Mutex<Option<Instant>>,
    /// Events received.
    pub events: AtomicU64,
    /// Every known object's computed status, by `namespace/name` (updated by the dispatcher).
    objects: Mutex<BTreeMap<String, (Status, String)>>,
    /// Why the watch's target is not resolved yet (its kind not served, the API failing), while
    /// it waits and retries; `None` once it is watching.
    waiting: Mutex<Option<String>>,
    /// The resource watched (`group/version/kind`), or the target as configured while the watch
    /// waits for it.
    resource: Mutex<String>,
    /// The last list or watch failure of each watch task (by namespace, `""` for all), until
    /// its list or watch works again (for `/readyz`).
    last_error: Mutex<BTreeMap<String, String>>,
}

impl WatchState {
    /// Records progress: the API server answered (an event, a bookmark, a list page, a new
    /// watch, or an error status: a watch the API server keeps refusing, say for a missing
    /// permission, is alive, and a restart would get the same answer), or the dispatcher took
    /// an event from the watch. The latter keeps a watch that waits on
    /// back-pressure (a long initial sync behind slow listeners) from looking dead to
    /// `/healthz`.
    pub fn activity(&self) {
        *self
            .last_activity
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// When the watch last made progress, if ever.
    pub fn last_activity(&self) -> Option<Instant> {
        *self
            .last_activity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the object's status from an event (a delete forgets it).
    pub fn track(&self, event: &ResourceEvent) {
        let mut objects = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        let key = event.meta.object_ref();
        if event.kind == EventKind::Delete {
            objects.remove(&key);
        } else {
            objects.insert(key, (event.status.status, event.status.message.clone()));
        }
    }

    /// Every known object's status.
    pub fn objects(&self) -> BTreeMap<String, (Status, String)> {
        self.objects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records why the target is not resolved yet (`None`: it is, the watch tasks run).
    pub fn set_waiting(&self, why: Option<String>) {
        *self.waiting.lock().unwrap_or_else(PoisonError::into_inner) = why;
    }

    /// Why the target is not resolved yet, while the watch waits for it.
    pub fn waiting(&self) -> Option<String> {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records the last list or watch failure of the watch task of `namespace` (`None`: all
    /// namespaces), or with `None` that its list or watch works again. Each task keeps its own:
    /// a namespace that works does not hide another one's failure.
    pub fn set_last_error(&self, namespace: Option<&str>, error: Option<String>) {
        let mut errors = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let namespace = namespace.unwrap_or_default().to_string();
        match error {
            Some(error) => errors.insert(namespace, error),
            None => errors.remove(&namespace),
        };
    }

    /// The last list or watch failure of each watch task whose list or watch has not worked
    /// since, prefixed with its namespace when the watch has several.
    pub fn last_error(&self) -> Option<String> {
        let errors = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let described: Vec<String> = errors
            .iter()
            .map(|(namespace, error)| {
                if namespace.is_empty() {
                    error.clone()
                } else {
                    format!("namespace {namespace}: {error}")
                }
            })
            .collect();
        (!described.is_empty()).then(|| described.join("; "))
    }

    /// Records the resource watched (or the target as configured, while it is waited for).
    pub fn set_resource(&self, resource: String) {
        *self.resource.lock().unwrap_or_else(PoisonError::into_inner) = resource;
    }

    /// The resource watched, or the target as configured while the watch waits for it.
    pub fn resource(&self) -> String {
        self.resource
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Time since the last activity (`Duration::MAX` if there was none).
    pub fn idle(&self) -> Duration {
        self.last_activity()
            .map_or(Duration::MAX, |at| at.elapsed())
    }

    /// Whether every watch task is connected and has listed once.
    pub fn ready(&self) -> bool {
        if self.waiting().is_some() {
            return false;
        }
        let tasks = self.tasks.load(Ordering::Relaxed);
        self.synced.load(Ordering::Relaxed) && self.connected.load(Ordering::Relaxed) >= tasks
    }

    /// Why the watch can no longer make progress, if it cannot: a dead task or dispatcher, or no
    /// activity for longer than `max_idle`. A watch waiting for its target is not idle: it has
    /// no watch tasks yet, and restarting the process would not serve its kind sooner.
    pub fn problem(&self, max_idle: Duration) -> Option<String> {
        let (alive, tasks) = (
            self.alive.load(Ordering::Relaxed),
            self.tasks.load(Ordering::Relaxed),
        );
        if alive < tasks {
            return Some(format!("{} of {tasks} watch tasks died", tasks - alive));
        }
        if !self.dispatcher_alive.load(Ordering::Relaxed) {
            return Some("the dispatcher died".into());
        }
        let idle = self.idle();
        (idle > max_idle && self.waiting().is_none()).then(|| {
            if idle == Duration::MAX {
                format!("no watch activity yet (limit {}s)", max_idle.as_secs())
            } else {
                format!(
                    "no watch activity for {}s (limit {}s)",
                    idle.as_secs(),
                    max_idle.as_secs()
                )
            }
        })
    }
}

/// One watch task of a watch: counted as started and alive from its creation, before the task
/// is spawned (so that no health check sees a task started and not yet alive), and as no longer
/// alive when dropped: when the task ends or is aborted, polled or not. Move it into the task.
pub struct TaskGuard(Arc<WatchState>);

impl TaskGuard {
    /// Counts one more task of `state`, started and alive.
    pub fn new(state: Arc<WatchState>) -> Self {
        state.alive.fetch_add(1, Ordering::Relaxed);
        state.tasks.fetch_add(1, Ordering::Relaxed);
        Self(state)
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.alive.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_namespace_keeps_its_last_error_until_it_works_again() {
        let s = WatchState::default();
        assert_eq!(s.last_error(), None);
        s.set_last_error(None, Some("forbidden".into()));
        assert_eq!(s.last_error().as_deref(), Some("forbidden"));
        s.set_last_error(None, None);
        assert_eq!(s.last_error(), None);
        // Two namespaces: team-a working again does not hide team-b's failure.
        s.set_last_error(Some("team-b"), Some("b is forbidden".into()));
        s.set_last_error(Some("team-a"), Some("a timed out".into()));
        assert_eq!(
            s.last_error().as_deref(),
            Some("namespace team-a: a timed out; namespace team-b: b is forbidden")
        );
        s.set_last_error(Some("team-a"), None);
        assert_eq!(
            s.last_error().as_deref(),
            Some("namespace team-b: b is forbidden")
        );
    }

    #[test]
    fn health_problems() {
        let s = Arc::new(WatchState::default());
        s.dispatcher_alive.store(true, Ordering::Relaxed);
        s.activity();
        {
            let _task = TaskGuard::new(s.clone());
            assert_eq!(s.problem(Duration::from_secs(60)), None);
            assert!(!s.ready());
            s.synced.store(true, Ordering::Relaxed);
            s.connected.store(1, Ordering::Relaxed);
            assert!(s.ready());
        }
        assert!(s.problem(Duration::from_secs(60)).unwrap().contains("died"));
        s.alive.fetch_add(1, Ordering::Relaxed);
        *s.last_activity.lock().unwrap() = None;
        assert!(s
            .problem(Duration::from_secs(60))
            .unwrap()
            .contains("no watch activity yet"));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_is_measured_on_the_monotonic_clock() {
        // Paused tokio time moves the monotonic clock only: the wall clock stands still.
        let s = WatchState::default();
        s.dispatcher_alive.store(true, Ordering::Relaxed);
        s.activity();
        let limit = Duration::from_secs(60);
        tokio::time::advance(limit).await;
        assert_eq!(s.problem(limit), None);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            s.problem(limit).as_deref(),
            Some("no watch activity for 62s (limit 60s)")
        );
        s.activity();
        assert_eq!(s.problem(limit), None);
    }

    #[test]
    fn a_watch_waiting_for_its_target_is_alive_and_not_ready() {
        let s = WatchState::default();
        s.dispatcher_alive.store(true, Ordering::Relaxed);
        s.set_waiting(Some("kind Late not served".into()));
        assert_eq!(s.problem(Duration::from_secs(60)), None);
        // Even with a synced flag left over, waiting is not ready.
        s.synced.store(true, Ordering::Relaxed);
        assert!(!s.ready());
        s.set_waiting(None);
        assert!(s.ready());
        assert!(s.problem(Duration::from_secs(60)).is_some());
    }
}
