//! Leader election (skafos' `leader_election_ns`): a `coordination.k8s.io/v1` Lease, or a
//! ConfigMap record as client-go's legacy lock (annotation
//! `control-plane.alpha.kubernetes.io/leader`). Timing follows client-go: a record is expired
//! when it has not changed for its lease duration as observed by this process; the leader steps
//! down when it could not renew within the renew deadline (before anyone else may take over),
//! and releases the lock on a clean shutdown so a standby takes over at once.

use std::future::Future;
use std::time::Duration;

use chrono_lite::now_rfc3339;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Which object holds the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LockKind {
    /// A `coordination.k8s.io/v1` Lease (the default).
    Lease,
    /// A ConfigMap with a leader annotation (as skafos does).
    Configmap,
}

/// Leader election settings; defaults are client-go's.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Namespace of the lock object.
    pub namespace: String,
    /// Name of the lock object.
    pub name: String,
    /// This process's identity.
    pub identity: String,
    /// Lease or ConfigMap.
    pub lock: LockKind,
    /// How long a record stays valid without renewal (client-go: 15 s).
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it steps down (client-go: 10 s).
    pub renew_deadline: Duration,
    /// Interval between attempts (client-go: 2 s).
    pub retry_period: Duration,
}

/// The identity: the Pod name (`HOSTNAME`, else `kubelisten`) and a random suffix of this
/// process, as controller-runtime does (`<host>_<random>`). Two processes never share an
/// identity, so neither can take the other's lock for its own: a container restarted in its
/// Pod, or two replicas on one host network, are different holders.
pub fn default_identity() -> String {
    let suffix = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        format!("{:016x}", h.finish())
    };
    match std::env::var("HOSTNAME") {
        Ok(host) if !host.is_empty() => format!("{host}_{suffix}"),
        _ => format!("kubelisten_{suffix}"),
    }
}

/// The lease duration as the record's whole seconds, rounded up (at least 1): a standby never
/// takes over before this process's own renew deadline (`renew_deadline < lease_duration`) has
/// passed, also for a fractional `--lease-duration`.
fn record_seconds(lease: Duration) -> i64 {
    let secs = lease.as_secs() + u64::from(lease.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX).max(1)
}

/// How the election's attempts go, for `/readyz`: since when they fail (an error or no answer,
/// as opposed to "another process holds the lock"), and the last failure.
#[derive(Debug, Default)]
pub struct ElectionHealth {
    failing: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

impl ElectionHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(std::time::Instant, String)>> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An attempt failed with `why`.
    pub(crate) fn failed(&self, why: String) {
        let mut failing = self.lock();
        let since = failing
            .as_ref()
            .map_or_else(std::time::Instant::now, |(s, _)| *s);
        *failing = Some((since, why));
    }

    /// An attempt got its answer (held by this process or by another).
    pub(crate) fn answered(&self) {
        *self.lock() = None;
    }

    /// How long the attempts have been failing, and the last failure; `None` while they work.
    pub fn failing(&self) -> Option<(Duration, String)> {
        self.lock()
            .as_ref()
            .map(|(since, why)| (since.elapsed(), why.clone()))
    }
}

/// The lock record, as client-go's `LeaderElectionRecord`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    #[serde(default)]
    holder_identity: String,
    #[serde(default)]
    lease_duration_seconds: i64,
    #[serde(default)]
    acquire_time: String,
    #[serde(default)]
    renew_time: String,
    #[serde(default)]
    leader_transitions: i64,
}

const ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";

/// The holder of a lock record that cannot be read.
const UNREADABLE: &str = "(unreadable record)";

struct Elector {
    config: LeaderConfig,
    client: Client,
    observed: Option<(Record, Instant)>,
}

/// The lock object as read, to be written back with the new record (its other fields kept).
enum LockObject {
    Lease(Box<Lease>),
    ConfigMap(Box<ConfigMap>),
}

impl Elector {
    /// The lock object and its record, if it exists. A ConfigMap whose record cannot be read
    /// counts as held by an unknown holder (it expires like any record), never as free.
    async fn get(&self) -> Result<Option<(Record, LockObject)>, kube::Error> {
        let ns = &self.config.namespace;
        match self.config.lock {
            LockKind::Lease => {
                let api: Api<Lease> = Api::namespaced(self.client.clone(), ns);
                Ok(api.get_opt(&self.config.name).await?.map(|lease| {
                    let spec = lease.spec.clone().unwrap_or_default();
                    let record = Record {
                        holder_identity: spec.holder_identity.unwrap_or_default(),
                        lease_duration_seconds: spec.lease_duration_seconds.map_or(0, i64::from),
                        acquire_time: spec
                            .acquire_time
                            .map(|t| t.0.to_string())
                            .unwrap_or_default(),
                        renew_time: spec.renew_time.map(|t| t.0.to_string()).unwrap_or_default(),
                        leader_transitions: spec.lease_transitions.map_or(0, i64::from),
                    };
                    (record, LockObject::Lease(Box::new(lease)))
                }))
            }
            LockKind::Configmap => {
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
                Ok(api.get_opt(&self.config.name).await?.map(|cm| {
                    let text = cm.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION));
                    let record = match text.map(|t| serde_json::from_str::<Record>(t)) {
                        None => Record::default(),
                        Some(Ok(record)) => record,
                        Some(Err(err)) => {
                            tracing::warn!(lock = %self.config.name, error = %err, "the leader record of the lock ConfigMap cannot be read: taken as held until it expires");
                            // The object's version is part of the stand-in: a record that keeps
                            // being rewritten (renewed by someone) never expires.
                            Record {
                                holder_identity: format!(
                                    "{UNREADABLE} at resourceVersion {}",
                                    cm.metadata.resource_version.as_deref().unwrap_or("")
                                ),
                                lease_duration_seconds: record_seconds(self.config.lease_duration),
                                ..Record::default()
                            }
                        }
                    };
                    (record, LockObject::ConfigMap(Box::new(cm)))
                }))
            }
        }
    }

    /// Creates the lock object (`current` `None`), or writes the record into the object as it
    /// was read, keeping its other fields (data, labels, annotations, owner references, a
    /// Lease's strategy), with optimistic concurrency on its resourceVersion.
    async fn put(&self, record: &Record, current: Option<LockObject>) -> Result<(), kube::Error> {
        let ns = &self.config.namespace;
        let pp = PostParams::default();
        let fresh = || ObjectMeta {
            name: Some(self.config.name.clone()),
            namespace: Some(ns.clone()),
            ..ObjectMeta::default()
        };
        match self.config.lock {
            LockKind::Lease => {
                let time = |t: &str| t.parse().ok().map(MicroTime);
                let (mut lease, exists) = match current {
                    Some(LockObject::Lease(lease)) => (*lease, true),
                    _ => (
                        Lease {
                            metadata: fresh(),
                            spec: None,
                        },
                        false,
                    ),
                };
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                spec.holder_identity = Some(record.holder_identity.clone());
                spec.lease_duration_seconds = i32::try_from(record.lease_duration_seconds).ok();
                spec.acquire_time = time(&record.acquire_time);
                spec.renew_time = time(&record.renew_time);
                spec.lease_transitions = i32::try_from(record.leader_transitions).ok();
                let api: Api<Lease> = Api::namespaced(self.client.clone(), ns);
                if exists {
                    api.replace(&self.config.name, &pp, &lease).await.map(drop)
                } else {
                    api.create(&pp, &lease).await.map(drop)
                }
            }
            LockKind::Configmap => {
                let text = serde_json::to_string(record).map_err(kube::Error::SerdeError)?;
                let (mut cm, exists) = match current {
                    Some(LockObject::ConfigMap(cm)) => (*cm, true),
                    _ => (
                        ConfigMap {
                            metadata: fresh(),
                            ..ConfigMap::default()
                        },
                        false,
                    ),
                };
                cm.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(ANNOTATION.to_string(), text);
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
                if exists {
                    api.replace(&self.config.name, &pp, &cm).await.map(drop)
                } else {
                    api.create(&pp, &cm).await.map(drop)
                }
            }
        }
    }

    /// One attempt to acquire or renew; returns whether this process holds the lock now.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = now_rfc3339();
        let me = &self.config.identity;
        let duration = record_seconds(self.config.lease_duration);
        let Some((current, object)) = self.get().await? else {
            let record = Record {
                holder_identity: me.clone(),
                lease_duration_seconds: duration,
                acquire_time: now.clone(),
                renew_time: now,
                leader_transitions: 0,
            };
            return match self.put(&record, None).await {
                Ok(()) => Ok(true),
                // Another replica created the lock first: it leads, we stand by.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(err) => Err(err),
            };
        };
        // Track when the record last changed, by our own clock.
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|(seen, _)| *seen != current);
        if changed {
            self.observed = Some((current.clone(), Instant::now()));
        }
        let observed_at = self
            .observed
            .as_ref()
            .map_or_else(Instant::now, |(_, at)| *at);
        let held_by_me = current.holder_identity == *me;
        let lease =
            Duration::from_secs(u64::try_from(current.lease_duration_seconds.max(1)).unwrap_or(15));
        let expired = current.holder_identity.is_empty() || observed_at.elapsed() > lease;
        if !held_by_me && !expired {
            return Ok(false);
        }
        let record = Record {
            holder_identity: me.clone(),
            lease_duration_seconds: duration,
            acquire_time: if held_by_me {
                current.acquire_time.clone()
            } else {
                now.clone()
            },
            renew_time: now,
            leader_transitions: current.leader_transitions + i64::from(!held_by_me),
        };
        match self.put(&record, Some(object)).await {
            Ok(()) => {
                self.observed = Some((record, Instant::now()));
                Ok(true)
            }
            // Someone else wrote first: another candidate took the expired lock...
            Err(kube::Error::Api(s)) if s.code == 409 && !held_by_me => Ok(false),
            // ...or, while this process holds it, someone changed the object (a label, an
            // annotation): a failed attempt, retried until the renew deadline, as client-go
            // does. The next read says whether the lock is still held.
            Err(err) => Err(err),
        }
    }

    /// Gives the lock up (holder cleared, 1 s duration) so a standby takes over at once.
    async fn release(&mut self) {
        let Ok(Some((current, object))) = self.get().await else {
            return;
        };
        if current.holder_identity != self.config.identity {
            return;
        }
        let record = Record {
            holder_identity: String::new(),
            lease_duration_seconds: 1,
            renew_time: now_rfc3339(),
            ..current
        };
        match self.put(&record, Some(object)).await {
            Ok(()) => tracing::info!(identity = %self.config.identity, "leader lock released"),
            Err(err) => tracing::warn!(error = %err, "cannot release the leader lock"),
        }
    }
}

/// The lock operations the election loop needs: [`Elector`] against the API server, a script
/// in tests.
trait Lock {
    /// Why an attempt failed.
    type Error: std::fmt::Display;
    /// One attempt to acquire or renew; whether this process holds the lock now.
    fn try_acquire_or_renew(&mut self) -> impl Future<Output = Result<bool, Self::Error>> + Send;
    /// Gives the lock up, if held, so a standby takes over at once.
    fn release(&mut self) -> impl Future<Output = ()> + Send;
}

impl Lock for Elector {
    type Error = kube::Error;

    fn try_acquire_or_renew(&mut self) -> impl Future<Output = Result<bool, kube::Error>> + Send {
        Elector::try_acquire_or_renew(self)
    }

    fn release(&mut self) -> impl Future<Output = ()> + Send {
        Elector::release(self)
    }
}

/// Runs the election until `cancel` (then releases the lock if held) or until leadership is
/// lost (then returns at once). `leader` follows whether this process is the leader.
pub async fn run(
    client: Client,
    config: LeaderConfig,
    leader: watch::Sender<bool>,
    cancel: CancellationToken,
    health: std::sync::Arc<ElectionHealth>,
) {
    let mut elector = Elector {
        config: config.clone(),
        client,
        observed: None,
    };
    elect(&mut elector, &config, &leader, &cancel, &health).await;
}

/// The election loop of [`run`].
///
/// A leader must renew within `renew_deadline` of the start of its last successful attempt
/// (the record's renew time is taken at that start, so a standby cannot see it earlier). Every
/// attempt and every pause between attempts is cut at that instant, and the leader steps down
/// as soon as it passes, whatever the attempt in flight is doing: it stops leading before the
/// lease can expire for anyone else (`renew_deadline < lease_duration`).
async fn elect<L: Lock>(
    lock: &mut L,
    config: &LeaderConfig,
    leader: &watch::Sender<bool>,
    cancel: &CancellationToken,
    health: &ElectionHealth,
) {
    let identity = &config.identity;
    let retry = config.retry_period;
    // One attempt may not take longer than this, so that a hung request is retried.
    let attempt_timeout = (retry.max(Duration::from_secs(1)) * 2).min(config.renew_deadline);
    // While leading: the instant by which a renewal must have succeeded.
    let mut renew_by: Option<Instant> = None;
    loop {
        let started = Instant::now();
        if let Some(by) = renew_by.filter(|by| started >= *by) {
            tracing::error!(
                identity = %identity,
                late_ms = u64::try_from((started - by).as_millis()).unwrap_or(u64::MAX),
                "lost the leadership: could not renew within the renew deadline"
            );
            leader.send_replace(false);
            return;
        }
        let cutoff = renew_by.map_or(started + attempt_timeout, |by| {
            by.min(started + attempt_timeout)
        });
        let attempt = tokio::time::timeout_at(cutoff, lock.try_acquire_or_renew());
        tokio::pin!(attempt);
        let attempt = tokio::select! {
            () = cancel.cancelled() => {
                // The write may land anyway: let the attempt finish (it is bounded by the
                // cutoff), and release what it won.
                if matches!((&mut attempt).await, Ok(Ok(true))) {
                    renew_by.get_or_insert(started + config.renew_deadline);
                }
                break;
            }
            result = &mut attempt => result,
        };
        match &attempt {
            Ok(Ok(_)) => health.answered(),
            Ok(Err(err)) => health.failed(err.to_string()),
            Err(_) => health.failed("no answer within the attempt timeout".into()),
        }
        match attempt {
            Ok(Ok(true)) => {
                if renew_by.is_none() {
                    tracing::info!(identity = %identity, lock = ?config.lock, "became the leader");
                    leader.send_replace(true);
                }
                renew_by = Some(started + config.renew_deadline);
            }
            Ok(Ok(false)) if renew_by.is_some() => {
                tracing::error!(identity = %identity, "lost the leadership: another process holds the lock");
                leader.send_replace(false);
                return;
            }
            Ok(Ok(false)) => {}
            Ok(Err(err)) => {
                tracing::warn!(identity = %identity, error = %err, "leader election attempt failed");
            }
            Err(_) => tracing::warn!(
                identity = %identity,
                timeout_ms = u64::try_from((cutoff - started).as_millis()).unwrap_or(u64::MAX),
                "leader election attempt timed out"
            ),
        }
        // The next attempt after the retry period; a leader's deadline check comes no later.
        let next = Instant::now() + retry;
        let next = renew_by.map_or(next, |by| next.min(by));
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep_until(next) => {}
        }
    }
    if renew_by.is_some() {
        // Bounded like an attempt: a hung API server must not hold up the shutdown (the lock
        // then expires on its own).
        if tokio::time::timeout(attempt_timeout, lock.release())
            .await
            .is_err()
        {
            tracing::warn!(identity = %identity, "releasing the leader lock timed out: it expires on its own");
        }
        leader.send_replace(false);
    }
}

/// RFC 3339 timestamps with microseconds, as the API server expects for MicroTime.
mod chrono_lite {
    pub fn now_rfc3339() -> String {
        k8s_openapi::jiff::Timestamp::now().to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// One scripted attempt of [`Script`].
    enum Step {
        /// Returns at once: whether the lock is held.
        Held(bool),
        /// Returns after this long: the lock is held.
        HeldAfter(Duration),
        /// Fails after this long.
        FailAfter(Duration),
        /// Never returns.
        Hang,
    }

    /// A lock whose attempts follow a script (then hang).
    struct Script {
        steps: VecDeque<Step>,
        attempts: usize,
        released: bool,
    }

    impl Script {
        fn new(steps: impl IntoIterator<Item = Step>) -> Self {
            Self {
                steps: steps.into_iter().collect(),
                attempts: 0,
                released: false,
            }
        }
    }

    impl Lock for Script {
        type Error = String;

        fn try_acquire_or_renew(&mut self) -> impl Future<Output = Result<bool, String>> + Send {
            self.attempts += 1;
            let step = self.steps.pop_front().unwrap_or(Step::Hang);
            async move {
                match step {
                    Step::Held(held) => Ok(held),
                    Step::HeldAfter(after) => {
                        tokio::time::sleep(after).await;
                        Ok(true)
                    }
                    Step::FailAfter(after) => {
                        tokio::time::sleep(after).await;
                        Err("scripted failure".to_string())
                    }
                    Step::Hang => std::future::pending().await,
                }
            }
        }

        fn release(&mut self) -> impl Future<Output = ()> + Send {
            self.released = true;
            std::future::ready(())
        }
    }

    /// client-go's timing: lease 15 s, renew deadline 10 s, retry 2 s.
    fn config() -> LeaderConfig {
        LeaderConfig {
            namespace: "ns".into(),
            name: "lock".into(),
            identity: "me".into(),
            lock: LockKind::Lease,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Runs [`elect`] on `script` in a task; returns the leader flag, the cancel token and the
    /// task, which yields the script and the instant `elect` returned.
    fn spawn(
        script: Script,
    ) -> (
        watch::Receiver<bool>,
        CancellationToken,
        tokio::task::JoinHandle<(Script, Instant)>,
    ) {
        let (tx, rx) = watch::channel(false);
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let task = tokio::spawn(async move {
            let mut script = script;
            elect(
                &mut script,
                &config(),
                &tx,
                &token,
                &ElectionHealth::default(),
            )
            .await;
            (script, Instant::now())
        });
        (rx, cancel, task)
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_steps_down_by_its_renew_deadline_whatever_the_attempts_do() {
        let t0 = Instant::now();
        // Renewed at t0; then an attempt that hangs (cut after 4 s), one that fails after
        // 1.9 s (at t0 + 9.9 s), then hangs again.
        let (mut rx, _cancel, task) = spawn(Script::new([
            Step::Held(true),
            Step::Hang,
            Step::FailAfter(Duration::from_millis(1900)),
            Step::Hang,
        ]));
        rx.wait_for(|leader| *leader).await.expect("leads");
        assert_eq!(Instant::now(), t0);
        let (script, returned) = task.await.expect("election task");
        assert!(!*rx.borrow(), "still the leader");
        let renew_deadline = config().renew_deadline;
        assert!(
            returned <= t0 + renew_deadline,
            "stepped down {:?} after the last renewal (renew deadline {renew_deadline:?})",
            returned - t0
        );
        assert_eq!(script.attempts, 3);
        assert!(!script.released, "a lost lock is not released");
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_retries_a_hung_attempt_and_a_leader_renews_until_cancelled() {
        let t0 = Instant::now();
        let steps = [Step::Hang, Step::Held(false), Step::Held(true)]
            .into_iter()
            .chain(std::iter::repeat_with(|| Step::Held(true)).take(100));
        let (mut rx, cancel, task) = spawn(Script::new(steps));
        rx.wait_for(|leader| *leader).await.expect("leads");
        // Hung attempt cut at 4 s, retried 2 s later (held elsewhere), then 2 s later acquired.
        assert_eq!(Instant::now() - t0, Duration::from_secs(8));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(*rx.borrow(), "renewals keep the leadership");
        cancel.cancel();
        let (script, _) = task.await.expect("election task");
        assert!(script.released, "the lock is released on cancel");
        assert!(!*rx.borrow());
    }

    #[tokio::test(start_paused = true)]
    async fn failing_attempts_are_recorded_until_one_is_answered() {
        let health = std::sync::Arc::new(ElectionHealth::default());
        let (tx, _rx) = watch::channel(false);
        let cancel = CancellationToken::new();
        let (h, token) = (health.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            // Two failures (1 s each, 2 s apart), then held elsewhere, then a failure.
            let mut script = Script::new([
                Step::FailAfter(Duration::from_secs(1)),
                Step::FailAfter(Duration::from_secs(1)),
                Step::Held(false),
                Step::FailAfter(Duration::from_secs(1)),
            ]);
            elect(&mut script, &config(), &tx, &token, &h).await;
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (_, why) = health.failing().expect("failing after the first attempt");
        assert_eq!(why, "scripted failure");
        // After the answered attempt (t = 6 s), nothing is failing...
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(health.failing().is_none());
        // ... until the next failure (t = 9 s).
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(health.failing().is_some());
        cancel.cancel();
        task.await.unwrap();
    }

    #[test]
    fn the_record_rounds_the_lease_up_and_identities_are_unique() {
        assert_eq!(record_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(record_seconds(Duration::from_secs(15)), 15);
        assert_eq!(record_seconds(Duration::from_millis(1)), 1);
        assert_eq!(record_seconds(Duration::ZERO), 1);
        let (a, b) = (default_identity(), default_identity());
        assert_ne!(
            a, b,
            "two processes (here, two calls) never share an identity"
        );
        let (host, suffix) = a.rsplit_once('_').expect("host_suffix");
        assert!(!host.is_empty());
        assert!(
            suffix.len() == 16 && suffix.chars().all(|c| c.is_ascii_hexdigit()),
            "{a}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_during_the_winning_attempt_releases_what_it_won() {
        let (_rx, cancel, task) = spawn(Script::new([Step::HeldAfter(Duration::from_secs(1))]));
        tokio::time::sleep(Duration::from_millis(500)).await;
        cancel.cancel();
        let (script, _) = task.await.expect("election task");
        assert_eq!(script.attempts, 1);
        assert!(script.released, "the lock the attempt won is released");
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_steps_down_at_once_when_another_holds_the_lock() {
        let t0 = Instant::now();
        let (_rx, _cancel, task) = spawn(Script::new([Step::Held(true), Step::Held(false)]));
        let (script, returned) = task.await.expect("election task");
        assert_eq!(returned - t0, config().retry_period);
        assert!(!script.released);
    }
}
