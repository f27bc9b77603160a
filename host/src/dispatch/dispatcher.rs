//! The dispatch loop of one watch: events of one object are handled strictly in order, different
//! objects in parallel (at most `workers` at once), with bounded queues so a slow listener
//! applies back-pressure to the watch instead of growing memory. A failed event is retried with
//! exponential backoff before the next event of the same object.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{CallRecord, ChainReport, ChainSlot};
use crate::capabilities::events::FailureReporter;
use crate::event::{EventKind, ResourceEvent};
use crate::metrics::{labels, Metrics};
use crate::runtime::bindings::kubelisten::listener::cluster::ObjectRef;
use crate::runtime::{Held, Mode};
use crate::watch::state::WatchState;
use crate::watch::watcher::WatchOutput;

/// How failed events are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// Delay before the second attempt; doubles with each further one.
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            base: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Delay after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(31));
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// Settings of a [`Dispatcher`].
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Objects handled at once.
    pub workers: usize,
    /// Events queued (not yet started) at most; beyond it the watch is not read.
    pub queue_capacity: usize,
    /// Retries of failed events.
    pub retry: RetryPolicy,
    /// How long the drain of a graceful stop may take (`--shutdown-grace`): after the stop, a
    /// retry's wait that would end later is skipped (see [`Dispatcher::run`]).
    pub stop_grace: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            workers: 8,
            queue_capacity: 1024,
            retry: RetryPolicy::default(),
            stop_grace: Duration::from_secs(30),
        }
    }
}

impl DispatcherConfig {
    /// The capacity of the channel the watch's tasks hand events over in: the queue's, at
    /// most 256. With the queue, at most twice `queue_capacity` events wait, so a small
    /// `--queue-capacity` bounds memory as it says.
    pub fn handover_capacity(&self) -> usize {
        self.queue_capacity.clamp(1, 256)
    }
}

/// One attempt at one event, as reported to an observer (tests, metrics).
#[derive(Debug, Clone)]
pub struct Dispatched {
    /// The watch's name.
    pub watch: Arc<str>,
    /// The event.
    pub event: Arc<ResourceEvent>,
    /// 1-based attempt number.
    pub attempt: u32,
    /// What the chain did.
    pub report: ChainReport,
    /// When the attempt started.
    pub started: Instant,
    /// When it ended.
    pub finished: Instant,
}

/// Receives every [`Dispatched`] attempt.
pub type Observer = mpsc::UnboundedSender<Dispatched>;

/// The dispatch loop of one watch.
pub struct Dispatcher {
    /// The watch's name.
    pub watch: Arc<str>,
    /// Its chain.
    pub chain: Arc<ChainSlot>,
    /// Settings.
    pub config: DispatcherConfig,
    /// Optional observer of every attempt.
    pub observer: Option<Observer>,
    /// Shared watch state.
    pub state: Arc<WatchState>,
    /// Records a Warning Event on the object when a listener traps or finally fails.
    pub failures: Option<Arc<FailureReporter>>,
    /// Where calls, traps and durations are counted.
    pub metrics: Arc<Metrics>,
}

/// Marks the dispatcher dead when dropped (it ended or was aborted).
struct DispatcherAlive<'a>(&'a WatchState);

impl Drop for DispatcherAlive<'_> {
    fn drop(&mut self) {
        self.0
            .dispatcher_alive
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Events of one object that may wait at once before its further updates are merged (see
/// [`Queues::push`]): one object whose events arrive faster than its listeners handle them (a
/// listener failing on it, retried with backoff, while another controller keeps changing it)
/// cannot fill the watch's whole queue and hold up every other object behind it.
pub const MAX_WAITING_PER_OBJECT: usize = 8;

struct Queues {
    pending: HashMap<String, VecDeque<Arc<ResourceEvent>>>,
    ready: VecDeque<String>,
    busy: HashSet<String>,
    queued: usize,
    /// Events of one object that may wait before updates are merged.
    per_object: usize,
}

impl Default for Queues {
    fn default() -> Self {
        Self {
            pending: HashMap::new(),
            ready: VecDeque::new(),
            busy: HashSet::new(),
            queued: 0,
            per_object: MAX_WAITING_PER_OBJECT,
        }
    }
}

impl Queues {
    /// Queues `event` behind its object's earlier events. When the object already has
    /// `per_object` events waiting, an update is merged into the last of them if that is a
    /// create or update of the same object (same uid, for the whole chain): the merged event
    /// keeps the earlier kind and previous object and takes the update's object, so listeners
    /// still see every object's latest state and every create and delete, not every
    /// intermediate state. Returns the merged event when it was merged.
    fn push(&mut self, event: Arc<ResourceEvent>) -> Option<Arc<ResourceEvent>> {
        let key = object_key(&event);
        let queue = self.pending.entry(key.clone()).or_default();
        if queue.len() >= self.per_object {
            if let Some(last) = queue.back_mut() {
                if let Some(merged) = merged(last, &event) {
                    *last = Arc::new(merged);
                    return Some(last.clone());
                }
            }
        }
        if queue.is_empty() && !self.busy.contains(&key) {
            self.ready.push_back(key);
        }
        queue.push_back(event);
        self.queued += 1;
        None
    }

    fn next(&mut self) -> Option<(String, Arc<ResourceEvent>)> {
        let key = self.ready.pop_front()?;
        let queue = self.pending.get_mut(&key)?;
        let event = queue.pop_front()?;
        if queue.is_empty() {
            self.pending.remove(&key);
        }
        self.queued -= 1;
        self.busy.insert(key.clone());
        Some((key, event))
    }

    fn done(&mut self, key: String) {
        self.busy.remove(&key);
        if self.pending.contains_key(&key) {
            self.ready.push_back(key);
        }
    }
}

/// `later` folded into `earlier`, both waiting for the same object: an update into a create or
/// update of the same object (same uid), both for the whole chain at the same chain generation.
/// `None` when they must stay apart: a delete, a new object of the same name, a catch-up.
fn merged(earlier: &ResourceEvent, later: &ResourceEvent) -> Option<ResourceEvent> {
    let mergeable = later.kind == EventKind::Update
        && earlier.kind != EventKind::Delete
        && earlier.meta.uid == later.meta.uid
        && earlier.only.is_none()
        && later.only.is_none()
        && earlier.chain_generation == later.chain_generation;
    mergeable.then(|| ResourceEvent {
        kind: earlier.kind,
        object: later.object.clone(),
        old_object: earlier.old_object.clone(),
        meta: later.meta.clone(),
        initial: earlier.initial && later.initial,
        status: later.status.clone(),
        only: None,
        chain_generation: later.chain_generation,
    })
}

/// The queue an event waits in: its `namespace/name`. Keying by name rather than uid keeps a
/// delete of an object ahead of the create of a new object with the same name (as
/// controller-runtime and kube-runtime's `Controller` do), so a listener that keeps state or
/// owns child objects by name never sees the new object before the old one is gone.
fn object_key(event: &ResourceEvent) -> String {
    event.meta.object_ref()
}

impl Dispatcher {
    /// Runs until `rx` is closed (every sender dropped) and everything queued is handled. A
    /// graceful stop is a drain: the watch's list/watch tasks stop reading and send what must
    /// not be lost (see [`crate::watch::watcher::run`]), and every event in the channel and the
    /// queues is still handled, in order, because a queued delete would not come back at the
    /// next start (the object is gone from the list). `cancel` (the stop) only has what is left
    /// logged. The caller bounds the drain with its grace period and aborts the task when it
    /// runs out or when leadership is lost.
    pub async fn run(self, mut rx: mpsc::Receiver<WatchOutput>, cancel: CancellationToken) {
        let workers = self.config.workers.max(1);
        let capacity = self.config.queue_capacity.max(1);
        let mut queues = Queues::default();
        let mut tasks: JoinSet<()> = JoinSet::new();
        // The object key each event task holds busy, by task: a task that panicked or was
        // aborted still hands its key back (its `JoinError` carries only the id), so the
        // object's later events are not stuck behind it. Watch-error tasks hold no key.
        let mut keys: HashMap<tokio::task::Id, String> = HashMap::new();
        // Watch errors go to the listeners' `error` export one at a time, outside the event
        // workers; while one is being handled, only the latest of those that arrive waits (a
        // flapping API server must not pile up calls, nor take the workers from events).
        let mut error_call: JoinSet<()> = JoinSet::new();
        let mut next_error: Option<crate::event::WatchErrorInfo> = None;
        let mut rx_open = true;
        let mut draining = false;
        let stop = Stop {
            token: cancel.clone(),
            at: Arc::default(),
            grace: self.config.stop_grace,
        };
        self.state
            .dispatcher_alive
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _alive = DispatcherAlive(&self.state);
        let depth = self
            .metrics
            .queue_depth
            .get_or_create(&labels([("watch", &self.watch)]))
            .clone();
        // The watch's event counters, looked up once.
        let received = |kind: &str| {
            self.metrics
                .events
                .get_or_create(&labels([("watch", &self.watch), ("kind", kind)]))
                .clone()
        };
        let (creates, updates, deletes, errors) = (
            received(EventKind::Create.as_str()),
            received(EventKind::Update.as_str()),
            received(EventKind::Delete.as_str()),
            received("error"),
        );
        let catch_ups = self
            .metrics
            .catch_ups
            .get_or_create(&labels([("watch", &self.watch)]))
            .clone();
        let merges = self
            .metrics
            .merged
            .get_or_create(&labels([("watch", &self.watch)]))
            .clone();
        loop {
            while tasks.len() < workers {
                let Some((key, event)) = queues.next() else {
                    break;
                };
                let task = tasks.spawn(self.handle(event, stop.clone()));
                keys.insert(task.id(), key);
            }
            depth.set(i64::try_from(queues.queued).unwrap_or(i64::MAX));
            if error_call.is_empty() {
                if let Some(error) = next_error.take() {
                    error_call.spawn(self.error_call(error));
                }
            }
            if !rx_open && tasks.is_empty() && queues.queued == 0 && error_call.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if !draining => {
                    draining = true;
                    let _ = stop.at.set(tokio::time::Instant::now());
                    tracing::info!(watch = %self.watch, queued = queues.queued, in_flight = tasks.len(), "stopping: handling the events already received");
                }
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(err) => {
                            tracing::error!(watch = %self.watch, error = %err, "dispatch task failed; the object's next events go on");
                            err.id()
                        }
                    };
                    if let Some(key) = keys.remove(&id) {
                        queues.done(key);
                    }
                }
                Some(done) = error_call.join_next(), if !error_call.is_empty() => {
                    if let Err(err) = done {
                        tracing::error!(watch = %self.watch, error = %err, "error dispatch failed");
                    }
                }
                out = rx.recv(), if rx_open && queues.queued < capacity => match out {
                    None => rx_open = false,
                    Some(WatchOutput::Event(event)) => {
                        // Progress: under back-pressure the watch reads nothing from the API
                        // server while it waits for this queue, and must not look dead.
                        self.state.activity();
                        if event.only.is_some() {
                            // A catch-up replays what the watch already reported.
                            catch_ups.inc();
                        } else {
                            self.state.events.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            self.state.track(&event);
                            match event.kind {
                                EventKind::Create => creates.inc(),
                                EventKind::Update => updates.inc(),
                                EventKind::Delete => deletes.inc(),
                            };
                        }
                        if let Some(merged) = queues.push(event) {
                            merges.inc();
                            tracing::debug!(watch = %self.watch, object = %merged.meta.object_ref(), resource_version = %merged.meta.resource_version, "update merged into the object's last waiting event ({MAX_WAITING_PER_OBJECT} waiting)");
                        }
                    }
                    Some(WatchOutput::Error(error)) => {
                        errors.inc();
                        if let Some(replaced) = next_error.replace(error) {
                            tracing::debug!(watch = %self.watch, error = %replaced.message, "watch error superseded by a later one before the listeners saw it");
                        }
                    }
                },
            }
        }
    }

    /// Passes a watch error to the chain's `error` exports, on the blocking pool.
    fn error_call(
        &self,
        error: crate::event::WatchErrorInfo,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let chain = self.chain.get();
        let watch = self.watch.clone();
        let metrics = self.metrics.clone();
        async move {
            let watch_ = watch.clone();
            let records =
                tokio::task::spawn_blocking(move || chain.dispatch_error(&error, &watch_)).await;
            match records {
                Ok(calls) => {
                    count(&metrics, &calls);
                    // Skipped: the listener is backed off (not a failure of the call).
                    for call in calls.iter().filter(|c| {
                        !c.outcome.is_ok()
                            && !matches!(c.outcome, crate::runtime::Outcome::Skipped(_))
                    }) {
                        tracing::warn!(watch = %watch, listener = %call.listener, outcome = call.outcome.label(), error = call.outcome.message(), "listener error export failed");
                    }
                }
                Err(err) => tracing::error!(error = %err, "error dispatch failed"),
            }
        }
    }

    /// Handles one event with retries. A retry's backoff ends early when the chain is replaced
    /// (a hot swap: the new module may be the fix, so it is tried at once). After a graceful
    /// stop, a retry's wait that would end after the drain's deadline (the stop plus
    /// [`DispatcherConfig::stop_grace`]) is skipped: the attempt is made at once instead of
    /// being aborted in its sleep; shorter waits are kept, so a brief outage downstream does
    /// not use up the attempts. A crash-loop wait also ends on a swap, but not on a stop (the
    /// listener is not called before its probe is due, and the grace period bounds the wait).
    fn handle(
        &self,
        event: Arc<ResourceEvent>,
        stop: Stop,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let chain = self.chain.clone();
        let observer = self.observer.clone();
        let watch = self.watch.clone();
        let retry = self.config.retry;
        let failures = self.failures.clone();
        let metrics = self.metrics.clone();
        let state = self.state.clone();
        async move {
            // Attempts that called the chain (those skipped by crash-loop backoff do not count).
            let mut attempts_made = 0;
            loop {
                let attempt = attempts_made + 1;
                // Subscribed before the attempt, so a swap during it ends a backoff wait at once.
                let mut swaps = chain.swaps();
                let started = Instant::now();
                let chain_ = chain.get();
                // Only its address, to tell a later swap: a strong reference held through the
                // Events and the wait below would hold up a swap's state hand-over, which waits
                // for the old chain to be unused.
                let attempted = Arc::downgrade(&chain_);
                let event_ = event.clone();
                let report = match tokio::task::spawn_blocking(move || chain_.dispatch(&event_))
                    .await
                {
                    Ok(report) => report,
                    Err(err) => {
                        tracing::error!(watch = %watch, object = %event.meta.object_ref(), error = %err, "listener chain task failed");
                        break;
                    }
                };
                let finished = Instant::now();
                log_report(&watch, &event, attempt, &report);
                count(&metrics, &report.calls);
                let succeeded = report.succeeded();
                // A listener in crash-loop backoff was not called: that attempt does not count
                // (other objects' traps must not use up this event's retries); wait the backoff
                // out and try again.
                let backed_off = report.backed_off.clone().filter(|_| !succeeded);
                if backed_off.is_none() {
                    attempts_made += 1;
                }
                let last = backed_off.is_none() && attempt >= retry.attempts.max(1);
                if let Some(failures) = &failures {
                    report_failures(failures, &event, &report, last).await;
                }
                if let Some(observer) = &observer {
                    let _ = observer.send(Dispatched {
                        watch: watch.clone(),
                        event: event.clone(),
                        attempt,
                        report,
                        started,
                        finished,
                    });
                }
                if succeeded {
                    break;
                }
                if last {
                    tracing::error!(watch = %watch, object = %event.meta.object_ref(), event.kind = event.kind.as_str(), attempts = attempt, "event failed after every attempt; moving on");
                    break;
                }
                match backed_off {
                    Some(held) => wait_out_backoff(&state, held, &mut swaps).await,
                    None => {
                        let swapped = Swapped {
                            slot: &chain,
                            attempted: &attempted,
                            swaps: &mut swaps,
                        };
                        let next_attempt = (finished - started) * 2;
                        let delay = retry.delay(attempt);
                        retry_wait(&state, delay, swapped, &stop, next_attempt).await;
                    }
                }
            }
        }
    }
}

/// How often a worker that waits (a retry's backoff, a crash-loop backoff) records watch
/// activity.
const BEAT: Duration = Duration::from_secs(5);

/// A graceful stop, as the event tasks see it.
#[derive(Clone)]
struct Stop {
    /// Cancelled at the stop.
    token: CancellationToken,
    /// When the dispatcher saw the stop.
    at: Arc<std::sync::OnceLock<tokio::time::Instant>>,
    /// How long the drain may take from then.
    grace: Duration,
}

impl Stop {
    /// When the drain runs out (the stop noted now if the dispatcher has not yet).
    fn deadline(&self) -> tokio::time::Instant {
        *self.at.get_or_init(tokio::time::Instant::now) + self.grace
    }
}

/// What tells a retry's wait that the chain was replaced: the slot, the chain the failed
/// attempt ran on, and the slot's swaps (subscribed before that attempt took its chain).
struct Swapped<'a> {
    slot: &'a ChainSlot,
    /// Weak: it keeps the address (no new chain can take it), not the chain.
    attempted: &'a std::sync::Weak<super::Chain>,
    swaps: &'a mut tokio::sync::watch::Receiver<u64>,
}

/// Sleeps `delay` (a retry's backoff), recording watch activity every few seconds: with every
/// worker waiting to retry, nothing else reads the watch, and a long retry backoff must not
/// make `/healthz` fail (a restart would only relist everything and start the retries over).
///
/// Ends early when a chain other than the one the failed attempt ran on is set (a swap that
/// came before the attempt took its chain does not count), and, after a graceful stop, at
/// once unless the wait and then `next_attempt` (the time allowed for the attempt after it)
/// end before the drain's deadline. A wait that is kept holds its worker and its object's
/// later events meanwhile.
async fn retry_wait(
    state: &WatchState,
    delay: Duration,
    swapped: Swapped<'_>,
    stop: &Stop,
    next_attempt: Duration,
) {
    let until = tokio::time::Instant::now() + delay;
    let Swapped {
        slot,
        attempted,
        swaps,
    } = swapped;
    let stopped = async {
        stop.token.cancelled().await;
        if until + next_attempt <= stop.deadline() {
            std::future::pending::<()>().await;
        }
    };
    let chain_replaced = async {
        loop {
            changed(swaps).await;
            if !std::ptr::eq(Arc::as_ptr(&slot.get()), attempted.as_ptr()) {
                return;
            }
        }
    };
    let woken = async {
        tokio::select! {
            () = stopped => {}
            () = chain_replaced => {}
        }
    };
    wait_until(state, until, woken).await;
}

/// Sleeps through a listener's crash-loop backoff (up to 5 minutes), recording watch activity
/// every few seconds: the host is working as intended, and `/healthz` must not have it
/// restarted (which would only relist everything and start the backoff over). The wait ends
/// early when the listener's crash-loop state moves ([`Held::settled`]: the probe after a
/// backoff ended, the backoff was released) or a new chain is set (`swaps`: say a fixed module
/// was hot-swapped in).
async fn wait_out_backoff(
    state: &WatchState,
    held: Held,
    swaps: &mut tokio::sync::watch::Receiver<u64>,
) {
    let Held {
        wait, mut settled, ..
    } = held;
    let until = tokio::time::Instant::now() + wait.max(Duration::from_millis(1));
    let woken = async {
        tokio::select! {
            () = changed(swaps) => {}
            () = changed(&mut settled) => {}
        }
    };
    wait_until(state, until, woken).await;
}

/// Sleeps until `until` or until `woken` is ready, whichever comes first, recording watch
/// activity every [`BEAT`] meanwhile (the waits of [`retry_wait`] and [`wait_out_backoff`]).
async fn wait_until(
    state: &WatchState,
    until: tokio::time::Instant,
    woken: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(woken);
    loop {
        state.activity();
        let now = tokio::time::Instant::now();
        if now >= until {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep((until - now).min(BEAT)) => {}
            () = &mut woken => return,
        }
    }
}

/// Ready when `receiver` has a value not yet seen. `changed` reports such a value even when its
/// sender is gone; an error says the sender is gone with nothing new (the slot at shutdown, the
/// listener with its old chain), and then this never is ready: the caller's sleep bounds it.
async fn changed(receiver: &mut tokio::sync::watch::Receiver<u64>) {
    if receiver.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Records a Warning Event for every trap, and for the failing listener on the last attempt.
async fn report_failures(
    failures: &FailureReporter,
    event: &ResourceEvent,
    report: &ChainReport,
    last: bool,
) {
    let meta = &event.meta;
    let object = ObjectRef {
        api_version: meta.api_version.clone(),
        kind: meta.kind.clone(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
    };
    for (index, call) in report.calls.iter().enumerate() {
        let trapped = call.outcome.trap_kind().is_some();
        let final_failure = last
            && report.failed_at.is_some()
            && index
                == report
                    .calls
                    .iter()
                    .position(|c| !c.outcome.is_ok())
                    .unwrap_or(usize::MAX);
        if trapped || final_failure {
            let message = match call.outcome.trap_kind() {
                Some(kind) => format!(
                    "trap ({kind}) in {}: {}",
                    call.export,
                    call.outcome.message()
                ),
                None => format!("{} failed: {}", call.export, call.outcome.message()),
            };
            failures
                .report(&object, &meta.uid, &call.listener, trapped, &message)
                .await;
        }
    }
}

fn count(metrics: &Metrics, calls: &[CallRecord]) {
    for call in calls {
        metrics.count_call(
            &call.listener,
            call.export.as_str(),
            call.outcome.label(),
            call.duration.as_secs_f64(),
        );
        let listener = &*call.listener;
        // Traps are rare: their series are looked up by label.
        if let Some(kind) = call.outcome.trap_kind() {
            metrics
                .traps
                .get_or_create(&labels([("listener", listener), ("trap", kind.as_str())]))
                .inc();
            if call.mode == Mode::Reference && !call.outcome.trapped_in_instantiation() {
                metrics
                    .rebuilds
                    .get_or_create(&labels([("listener", listener)]))
                    .inc();
            }
        }
    }
}

fn log_report(watch: &str, event: &ResourceEvent, attempt: u32, report: &ChainReport) {
    if let (Some(held), [skipped]) = (&report.backed_off, report.calls.as_slice()) {
        // Nobody ran: the chain waits for a listener's crash-loop backoff.
        tracing::info!(
            watch, object = %event.meta.object_ref(), resource_version = %event.meta.resource_version, event.kind = event.kind.as_str(),
            listener = %skipped.listener, wait_ms = u64::try_from(held.wait.as_millis()).unwrap_or(u64::MAX), probing = held.probing, "chain paused: a listener is in crash-loop backoff"
        );
        return;
    }
    // Field values are only evaluated when the log level is enabled: no per-event allocation
    // for the object reference when every call succeeded and debug logging is off.
    for call in &report.calls {
        let duration_us = u64::try_from(call.duration.as_micros()).unwrap_or(u64::MAX);
        if call.outcome.is_ok() {
            tracing::debug!(watch, object = %event.meta.object_ref(), event.kind = event.kind.as_str(), listener = %call.listener, export = call.export.as_str(), duration_us, "listener call ok");
        } else {
            tracing::warn!(
                watch, object = %event.meta.object_ref(), resource_version = %event.meta.resource_version, event.kind = event.kind.as_str(),
                listener = %call.listener, export = call.export.as_str(), outcome = call.outcome.label(), trap = call.outcome.trap_kind().map(|k| k.as_str()), attempt,
                error = call.outcome.message(), "listener call failed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventKind, ObjectMeta};

    fn ev(name: &str, rv: &str) -> Arc<ResourceEvent> {
        event(EventKind::Create, name, &format!("uid-{name}"), rv)
    }

    fn event(kind: EventKind, name: &str, uid: &str, rv: &str) -> Arc<ResourceEvent> {
        let raw = format!(
            r#"{{"apiVersion":"v1","kind":"X","metadata":{{"name":"{name}","namespace":"ns","uid":"{uid}","resourceVersion":"{rv}"}}}}"#
        );
        let meta = ObjectMeta::from_json(&raw).unwrap();
        Arc::new(ResourceEvent::new(
            kind,
            Arc::from(raw),
            meta,
            Default::default(),
        ))
    }

    #[test]
    fn one_object_at_a_time_in_order() {
        let mut q = Queues::default();
        q.push(ev("a", "1"));
        q.push(ev("a", "2"));
        q.push(ev("b", "3"));
        let (ka, e1) = q.next().unwrap();
        assert_eq!(
            (ka.as_str(), e1.meta.resource_version.as_str()),
            ("ns/a", "1")
        );
        let (kb, _) = q.next().unwrap();
        assert_eq!(kb, "ns/b");
        assert!(q.next().is_none(), "a is busy, b has nothing more");
        q.done(ka);
        let (_, e2) = q.next().unwrap();
        assert_eq!(e2.meta.resource_version, "2");
        assert_eq!(q.queued, 0);
    }

    fn update(name: &str, uid: &str, rv: u64) -> Arc<ResourceEvent> {
        let old = event(EventKind::Update, name, uid, &(rv - 1).to_string());
        let new = event(EventKind::Update, name, uid, &rv.to_string());
        Arc::new(ResourceEvent {
            old_object: Some(old.object.clone()),
            ..(*new).clone()
        })
    }

    #[test]
    fn a_busy_objects_updates_are_merged_once_too_many_wait() {
        let mut q = Queues::default();
        q.push(ev("x", "1"));
        let (busy, _) = q.next().unwrap();
        // A steady stream of updates while x's first event is being handled.
        let merged: usize = (2..2002)
            .map(|rv| usize::from(q.push(update("x", "uid-x", rv)).is_some()))
            .sum();
        assert_eq!(q.queued, MAX_WAITING_PER_OBJECT);
        assert_eq!(merged, 2000 - MAX_WAITING_PER_OBJECT);
        // Another object is not held up behind them.
        q.push(ev("y", "3000"));
        let (key, _) = q.next().unwrap();
        assert_eq!(key, "ns/y");
        // x's waiting events: the first seven as they came, the last one merged: its previous
        // object the one before the first merged update, its object the newest.
        q.done(busy);
        let mut rvs = Vec::new();
        let mut last = None;
        while let Some((key, event)) = q.next() {
            rvs.push(event.meta.resource_version.clone());
            last = Some(event);
            q.done(key);
        }
        assert_eq!(rvs, ["2", "3", "4", "5", "6", "7", "8", "2001"]);
        let last = last.unwrap();
        assert_eq!(last.kind, EventKind::Update);
        assert!(last.object.contains(r#""resourceVersion":"2001""#));
        assert!(last
            .old_object
            .as_deref()
            .unwrap()
            .contains(r#""resourceVersion":"8""#));
    }

    #[test]
    fn creates_deletes_new_objects_and_catch_ups_are_never_merged_away() {
        let per_object = MAX_WAITING_PER_OBJECT;
        let filled = || {
            let mut q = Queues::default();
            q.push(ev("x", "0"));
            let _busy = q.next().unwrap();
            for rv in 1..=per_object as u64 {
                q.push(update("x", "uid-x", rv));
            }
            assert_eq!(q.queued, per_object);
            q
        };
        // A waiting create takes the update's object and stays a create.
        let mut q = Queues::default();
        q.push(ev("x", "0"));
        let _busy = q.next().unwrap();
        for rv in 1..per_object as u64 {
            q.push(update("x", "uid-x", rv));
        }
        q.push(ev("x", "50"));
        // (a second create of the same uid cannot happen; it stands for "a create waits last")
        assert!(q.push(update("x", "uid-x", 51)).is_some());
        let last = q.pending["ns/x"].back().unwrap().clone();
        assert_eq!(
            (
                last.kind,
                last.meta.resource_version.as_str(),
                last.old_object.is_none()
            ),
            (EventKind::Create, "51", true)
        );
        // A delete is queued, and an update after it (a new object) is not merged into it.
        let mut q = filled();
        assert!(q
            .push(event(EventKind::Delete, "x", "uid-x", "60"))
            .is_none());
        assert!(q.push(update("x", "uid-new", 62)).is_none());
        // An update of another uid than the waiting one's is not merged.
        let mut q = filled();
        assert!(q.push(update("x", "uid-other", 70)).is_none());
        // A catch-up create is not merged into, nor merged.
        let mut q = filled();
        let catch_up = Arc::new(ResourceEvent {
            only: Some(Arc::from(vec![Arc::<str>::from("late")])),
            ..(*ev("x", "80")).clone()
        });
        assert!(q.push(catch_up).is_none());
        assert!(q.push(update("x", "uid-x", 81)).is_none());
        assert_eq!(q.queued, per_object + 2);
    }

    #[test]
    fn a_recreated_name_waits_for_the_old_objects_delete() {
        let mut q = Queues::default();
        q.push(event(EventKind::Delete, "a", "old", "5"));
        q.push(event(EventKind::Create, "a", "new", "6"));
        let (key, first) = q.next().unwrap();
        assert_eq!(
            (first.kind, first.meta.uid.as_str()),
            (EventKind::Delete, "old")
        );
        assert!(
            q.next().is_none(),
            "the new object's create waits until the old one's delete is done"
        );
        q.done(key);
        let (_, second) = q.next().unwrap();
        assert_eq!(
            (second.kind, second.meta.uid.as_str()),
            (EventKind::Create, "new")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_out_a_backoff_keeps_the_watch_alive() {
        let state = Arc::new(WatchState::default());
        let waiting = tokio::spawn({
            let state = state.clone();
            let slot = crate::dispatch::ChainSlot::default();
            async move {
                let mut swaps = slot.swaps();
                let (_sender, settled) = tokio::sync::watch::channel(0);
                let held = Held {
                    wait: Duration::from_secs(300),
                    probing: false,
                    settled,
                };
                wait_out_backoff(&state, held, &mut swaps).await
            }
        });
        // 58 beats of 5 s: the whole 300 s wait but its last few seconds.
        activity_every_beat(&state, 58).await;
        waiting.await.unwrap();
    }

    /// Checks, `beats` times, that something marks `state` active within a beat (5 s).
    async fn activity_every_beat(state: &WatchState, beats: usize) {
        for _ in 0..beats {
            tokio::time::sleep(Duration::from_millis(5001)).await;
            assert!(
                state.idle() < Duration::from_millis(5001),
                "{:?}",
                state.idle()
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_retry_backoff_keeps_the_watch_alive() {
        let state = Arc::new(WatchState::default());
        let sleeping = tokio::spawn({
            let state = state.clone();
            async move {
                let slot = crate::dispatch::ChainSlot::default();
                let swapped = Swapped {
                    slot: &slot,
                    attempted: &Arc::downgrade(&slot.get()),
                    swaps: &mut slot.swaps(),
                };
                let started = tokio::time::Instant::now();
                retry_wait(
                    &state,
                    Duration::from_secs(120),
                    swapped,
                    &stop_with(Duration::from_secs(30)),
                    Duration::ZERO,
                )
                .await;
                started.elapsed()
            }
        });
        // 22 beats of 5 s: the whole 120 s but its last few seconds.
        activity_every_beat(&state, 22).await;
        assert_eq!(sleeping.await.unwrap(), Duration::from_secs(120));
    }

    /// Waits out a 300 s hold whose `settled` channel is `settled`; returns the (paused) time
    /// it took.
    async fn held_for_300s(settled: tokio::sync::watch::Receiver<u64>) -> Duration {
        let state = WatchState::default();
        let slot = crate::dispatch::ChainSlot::default();
        let mut swaps = slot.swaps();
        let held = Held {
            wait: Duration::from_secs(300),
            probing: true,
            settled,
        };
        let started = tokio::time::Instant::now();
        wait_out_backoff(&state, held, &mut swaps).await;
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn the_probes_outcome_ends_a_wait() {
        let (settle, settled) = tokio::sync::watch::channel(0u64);
        let waiting = tokio::spawn(held_for_300s(settled));
        tokio::time::sleep(Duration::from_secs(7)).await;
        settle.send_replace(1);
        // Paused clock: without the wake-up it would only return at the end of the 300 s.
        assert_eq!(waiting.await.unwrap(), Duration::from_secs(7));
        // A change made before the wait starts (after the hold was subscribed) ends it at once.
        let (settle, settled) = tokio::sync::watch::channel(0u64);
        settle.send_replace(1);
        assert_eq!(held_for_300s(settled).await, Duration::ZERO);
        // ... even when the listener is gone by then; a listener gone with nothing new does
        // not end the wait (nor spin: the paused clock would not advance).
        let (settle, settled) = tokio::sync::watch::channel(0u64);
        settle.send_replace(1);
        drop(settle);
        assert_eq!(held_for_300s(settled).await, Duration::ZERO);
        let (settle, settled) = tokio::sync::watch::channel(0u64);
        drop(settle);
        assert_eq!(held_for_300s(settled).await, Duration::from_secs(300));
    }

    /// A stop whose drain may take `grace`.
    fn stop_with(grace: Duration) -> Stop {
        Stop {
            token: CancellationToken::new(),
            at: Arc::default(),
            grace,
        }
    }

    /// Waits out a 300 s retry backoff after an attempt on `attempted` (subscribed to `slot`'s
    /// swaps by `swaps`); returns the (paused) time it took.
    fn wait_300s(
        slot: Arc<crate::dispatch::ChainSlot>,
        attempted: Arc<crate::dispatch::Chain>,
        swaps: tokio::sync::watch::Receiver<u64>,
        stop: Stop,
    ) -> tokio::task::JoinHandle<Duration> {
        wait_300s_then(slot, attempted, swaps, stop, Duration::ZERO)
    }

    /// [`wait_300s`], with `next_attempt` allowed for the attempt after the wait.
    fn wait_300s_then(
        slot: Arc<crate::dispatch::ChainSlot>,
        attempted: Arc<crate::dispatch::Chain>,
        mut swaps: tokio::sync::watch::Receiver<u64>,
        stop: Stop,
        next_attempt: Duration,
    ) -> tokio::task::JoinHandle<Duration> {
        tokio::spawn(async move {
            let state = WatchState::default();
            let started = tokio::time::Instant::now();
            let attempted = Arc::downgrade(&attempted);
            let swapped = Swapped {
                slot: &slot,
                attempted: &attempted,
                swaps: &mut swaps,
            };
            let delay = Duration::from_secs(300);
            retry_wait(&state, delay, swapped, &stop, next_attempt).await;
            started.elapsed()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_swap_ends_a_retrys_wait() {
        let slot = Arc::new(crate::dispatch::ChainSlot::default());
        let never = || stop_with(Duration::from_secs(30));
        // A swap 7 s in.
        let waiting = wait_300s(slot.clone(), slot.get(), slot.swaps(), never());
        tokio::time::sleep(Duration::from_secs(7)).await;
        slot.set(crate::dispatch::Chain::default());
        assert_eq!(waiting.await.unwrap(), Duration::from_secs(7));
        // A swap after the subscription and after the attempt took its chain: no wait at all.
        let (swaps, attempted) = (slot.swaps(), slot.get());
        slot.set(crate::dispatch::Chain::default());
        let waited = wait_300s(slot.clone(), attempted, swaps, never());
        assert_eq!(waited.await.unwrap(), Duration::ZERO);
        // A swap after the subscription but before the attempt took its chain: the attempt ran
        // on the new chain already, so the whole wait.
        let swaps = slot.swaps();
        slot.set(crate::dispatch::Chain::default());
        let waited = wait_300s(slot.clone(), slot.get(), swaps, never());
        assert_eq!(waited.await.unwrap(), Duration::from_secs(300));
        // The slot gone: the whole wait (nor does it spin: the paused clock would not move).
        let (swaps, attempted) = (slot.swaps(), slot.get());
        let waiting = wait_300s(Arc::new(Default::default()), attempted, swaps, never());
        drop(slot);
        assert_eq!(waiting.await.unwrap(), Duration::from_secs(300));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_stop_only_a_retrys_wait_that_outlasts_the_drain_is_skipped() {
        let slot = Arc::new(crate::dispatch::ChainSlot::default());
        // The stop 3 s in, with 400 s to drain: the 300 s wait is kept.
        let stop = stop_with(Duration::from_secs(400));
        let waiting = wait_300s(slot.clone(), slot.get(), slot.swaps(), stop.clone());
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.token.cancel();
        assert_eq!(waiting.await.unwrap(), Duration::from_secs(300));
        // With 30 s to drain it would end too late: the attempt is made at the stop.
        let stop = stop_with(Duration::from_secs(30));
        let waiting = wait_300s(slot.clone(), slot.get(), slot.swaps(), stop.clone());
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.token.cancel();
        assert_eq!(waiting.await.unwrap(), Duration::from_secs(3));
        // Stopped 100 s ago with 350 s to drain (the dispatcher noted when): a 300 s wait
        // starting now would end 50 s too late, so it is skipped ...
        let stop = stop_with(Duration::from_secs(350));
        let _ = stop.at.set(tokio::time::Instant::now());
        stop.token.cancel();
        tokio::time::sleep(Duration::from_secs(100)).await;
        let waited = wait_300s(slot.clone(), slot.get(), slot.swaps(), stop);
        assert_eq!(waited.await.unwrap(), Duration::ZERO);
        // ... and with 400 s to drain, kept, unless the attempt after it may take too long.
        let stop = stop_with(Duration::from_secs(400));
        let _ = stop.at.set(tokio::time::Instant::now());
        stop.token.cancel();
        tokio::time::sleep(Duration::from_secs(100)).await;
        let waited = wait_300s(slot.clone(), slot.get(), slot.swaps(), stop.clone());
        assert_eq!(waited.await.unwrap(), Duration::from_secs(300));
        let stop = stop_with(Duration::from_secs(400));
        let _ = stop.at.set(tokio::time::Instant::now());
        stop.token.cancel();
        let swaps = slot.swaps();
        let attempt = Duration::from_secs(90);
        let waited = wait_300s_then(slot.clone(), slot.get(), swaps, stop.clone(), attempt);
        assert_eq!(
            waited.await.unwrap(),
            Duration::from_secs(300),
            "300 + 90 < 400"
        );
        let stop = stop_with(Duration::from_secs(400));
        let _ = stop.at.set(tokio::time::Instant::now());
        stop.token.cancel();
        let attempt = Duration::from_secs(101);
        let waited = wait_300s_then(slot.clone(), slot.get(), slot.swaps(), stop, attempt);
        assert_eq!(waited.await.unwrap(), Duration::ZERO, "300 + 101 > 400");
    }

    #[test]
    fn the_handover_is_no_larger_than_the_queue() {
        let with = |queue_capacity| DispatcherConfig {
            queue_capacity,
            ..DispatcherConfig::default()
        };
        assert_eq!(with(1).handover_capacity(), 1);
        assert_eq!(with(0).handover_capacity(), 1);
        assert_eq!(with(100).handover_capacity(), 100);
        assert_eq!(DispatcherConfig::default().handover_capacity(), 256);
    }

    #[test]
    fn retry_delays_double_and_cap() {
        let r = RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_millis(350),
        };
        assert_eq!(r.delay(1), Duration::from_millis(100));
        assert_eq!(r.delay(2), Duration::from_millis(200));
        assert_eq!(r.delay(3), Duration::from_millis(350));
    }
}
