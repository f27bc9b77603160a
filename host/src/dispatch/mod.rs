//! The dispatch of one event through a listener chain: listeners run in order, sharing the
//! per-event chain state; when one fails, `rollback` runs on those that already succeeded, in
//! reverse order. The cluster watch and `replay` both go through [`Chain::dispatch`].

mod convert;
pub mod dispatcher;

pub use convert::event as wit_event;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::event::{EventKind, ResourceEvent, WatchErrorInfo};
use crate::runtime::{CallContext, ChainState, Export, Held, Listener, Outcome};

/// One listener call and how it ended.
#[derive(Debug, Clone)]
pub struct CallRecord {
    /// The listener's name.
    pub listener: Arc<str>,
    /// Its mode.
    pub mode: crate::runtime::Mode,
    /// Which export was called.
    pub export: Export,
    /// How the call ended.
    pub outcome: Outcome,
    /// Wall time of the call (instantiation included in classname mode).
    pub duration: Duration,
}

/// What happened to one event along the chain.
#[derive(Debug, Clone, Default)]
pub struct ChainReport {
    /// Every call in the order made (rollbacks included).
    pub calls: Vec<CallRecord>,
    /// Index in the chain of the listener that failed, if one did.
    pub failed_at: Option<usize>,
    /// When the failing listener was not called because crash-loop protection held it back:
    /// what the attempt waits for. Such an attempt says nothing about this event, so the
    /// dispatcher waits it out instead of spending one of the event's retries.
    pub backed_off: Option<Held>,
}

impl ChainReport {
    /// Whether every listener succeeded.
    pub fn succeeded(&self) -> bool {
        self.failed_at.is_none()
    }
}

/// Listeners that joined a running chain: the chain generation at which they joined and their
/// names; see [`ChainSlot::catch_up`].
pub type Joined = (u64, Arc<[Arc<str>]>);

/// The current chain of a watch, replaced atomically by a hot swap: an event takes the chain
/// that is current when its attempt starts and finishes on it.
#[derive(Debug, Default)]
pub struct ChainSlot {
    chain: std::sync::RwLock<Arc<Chain>>,
    /// Bumped by every [`ChainSlot::set`] that adds listeners.
    generation: std::sync::atomic::AtomicU64,
    /// The watch tasks to tell when listeners join the chain.
    joined: std::sync::Mutex<Vec<tokio::sync::mpsc::UnboundedSender<Joined>>>,
    /// Counts every [`ChainSlot::set`], for events waiting out a backoff of the old chain.
    swaps: tokio::sync::watch::Sender<u64>,
}

impl ChainSlot {
    /// A slot holding `chain`.
    pub fn new(chain: Chain) -> Self {
        Self {
            chain: std::sync::RwLock::new(Arc::new(chain)),
            generation: std::sync::atomic::AtomicU64::new(0),
            joined: std::sync::Mutex::default(),
            swaps: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The current chain.
    pub fn get(&self) -> Arc<Chain> {
        self.chain
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the chain and returns the old one; calls in flight keep the old one (they hold
    /// their own reference to it, so its strong count tells when they are done).
    ///
    /// Listeners whose name was not in the old chain (added, or loaded after being rejected)
    /// join at a new chain generation and are announced to every [`ChainSlot::catch_up`]
    /// receiver. Until a watch task has sent them its catch-up, its events carry an older
    /// generation and do not reach them ([`ResourceEvent::chain_generation`]): a joining
    /// listener learns of each object first from its catch-up `create`, never from an update or
    /// a second create. Listeners kept by name keep their generation.
    pub fn set(&self, mut chain: Chain) -> Arc<Chain> {
        let mut lock = self
            .chain
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut joined_names: Vec<Arc<str>> = Vec::new();
        let mut generation = None;
        for (i, listener) in chain.listeners.iter().enumerate() {
            let kept = lock
                .listeners
                .iter()
                .position(|o| o.name() == listener.name());
            chain.joined[i] = match kept {
                Some(j) => lock.joined[j],
                None => {
                    joined_names.push(listener.name().clone());
                    *generation.get_or_insert_with(|| {
                        self.generation
                            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
                            + 1
                    })
                }
            };
        }
        let old = std::mem::replace(&mut *lock, Arc::new(chain));
        // Announced under the lock: announcements reach every watch task in generation order.
        if let Some(generation) = generation {
            let joined: Joined = (generation, joined_names.into());
            self.joined
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|tx| tx.send(joined.clone()).is_ok());
        }
        drop(lock);
        self.swaps.send_modify(|n| *n += 1);
        old
    }

    /// A receiver that sees every later [`ChainSlot::set`]: an event waiting out a listener's
    /// crash-loop backoff stops waiting when the chain is replaced (a fixed module is hot-swapped
    /// in, or the listener removed).
    pub fn swaps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.swaps.subscribe()
    }

    /// Subscribes a watch task to listeners joining the chain: returns the chain generation its
    /// first list covers (every listener in the chain now) and a receiver of every later join,
    /// which the task answers with a `create` of every object it knows, for those listeners
    /// only.
    pub fn catch_up(&self) -> (u64, tokio::sync::mpsc::UnboundedReceiver<Joined>) {
        // Under the chain lock, so no `set` falls between the generation read and the
        // subscription.
        let _chain = self
            .chain
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.joined
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(tx);
        (
            self.generation.load(std::sync::atomic::Ordering::Acquire),
            rx,
        )
    }
}

/// An ordered chain of listeners for one watch.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    listeners: Vec<Arc<Listener>>,
    /// Per listener, the chain generation at which it joined (0: from the start).
    joined: Vec<u64>,
}

impl Chain {
    /// A chain running `listeners` in order.
    pub fn new(listeners: Vec<Arc<Listener>>) -> Self {
        let joined = vec![0; listeners.len()];
        Self { listeners, joined }
    }

    /// The listeners, in order.
    pub fn listeners(&self) -> &[Arc<Listener>] {
        &self.listeners
    }

    /// Runs `event` through the chain: through the listeners that had joined by its
    /// [`ResourceEvent::chain_generation`], and only those it names if it names some
    /// ([`ResourceEvent::only`], a catch-up). Blocking: guest code runs on the calling thread
    /// (from async code, run it on the blocking pool: `spawn_blocking`; see BENCHMARKS.md for
    /// why not `block_in_place`). After the calls, classname listeners build their spare
    /// instance for the next event ([`Listener::prewarm`]); the report's call durations do not
    /// include that. When one of the listeners is in crash-loop backoff, nobody is called: the
    /// report has that listener's `skipped` call and [`ChainReport::backed_off`].
    pub fn dispatch(&self, event: &ResourceEvent) -> ChainReport {
        let export = match event.kind {
            EventKind::Create => Export::Create,
            EventKind::Update => Export::Update,
            EventKind::Delete => Export::Delete,
        };
        let mut report = ChainReport::default();
        // Admit every listener first: with one held back by crash-loop backoff, nobody runs
        // (and nobody rolls back) once per attempt while it is backed off, and the event that
        // takes the probe after a backoff is the only one to run the chain. A paused attempt
        // costs no conversion of the event either.
        let mut admitted = Admitted(std::collections::VecDeque::with_capacity(
            self.listeners.len(),
        ));
        for (index, listener) in self.listeners_for(event, self.listeners.len()) {
            match listener.admit() {
                Ok(ticket) => admitted.0.push_back((index, listener, ticket)),
                Err((skipped, held)) => {
                    // Dropping `admitted` hands back the tickets taken so far.
                    report.calls.push(timed(listener, export, || skipped));
                    report.failed_at = Some(index);
                    report.backed_off = Some(held);
                    return report;
                }
            }
        }
        let wit = convert::event(event);
        let mut ctx = CallContext {
            object: Arc::from(event.meta.object_ref()),
            event_kind: export.as_str(),
            chain: ChainState::default(),
            namespace: event.meta.namespace.clone(),
            event_object: (!event.meta.uid.is_empty()).then(|| event.meta.clone()),
        };
        while let Some((index, listener, ticket)) = admitted.0.pop_front() {
            let record = timed(listener, export, || {
                listener.call_event_admitted(export, &wit, &ctx, ticket)
            });
            let ok = record.outcome.is_ok();
            report.calls.push(record);
            if !ok {
                report.failed_at = Some(index);
                break;
            }
        }
        // Listeners after a failure were admitted but not called: their tickets go back.
        drop(admitted);
        if let Some(failed) = report.failed_at {
            ctx.event_kind = Export::Rollback.as_str();
            for (_, listener) in self.listeners_for(event, failed).rev() {
                let record = timed(listener, Export::Rollback, || {
                    listener.call_event_admitted(Export::Rollback, &wit, &ctx, listener.pass())
                });
                report.calls.push(record);
            }
        }
        self.prewarm();
        report
    }

    /// The listeners among the first `end` that `event` is for, with their index in the chain:
    /// those that had joined by its generation, and of those only the ones it names, if it
    /// names some (a catch-up).
    fn listeners_for<'a>(
        &'a self,
        event: &'a ResourceEvent,
        end: usize,
    ) -> impl DoubleEndedIterator<Item = (usize, &'a Arc<Listener>)> + 'a {
        self.listeners[..end]
            .iter()
            .enumerate()
            .filter(move |(i, listener)| {
                self.joined[*i] <= event.chain_generation
                    && event
                        .only
                        .as_ref()
                        .is_none_or(|names| names.contains(listener.name()))
            })
    }

    /// Builds the spare instances of classname listeners after an event's calls
    /// ([`Listener::prewarm`]), so the next event does not wait for instantiation.
    fn prewarm(&self) {
        for listener in &self.listeners {
            listener.prewarm();
        }
    }

    /// Passes a watch error to every listener's `error` export; a failure of one does not stop
    /// the others.
    pub fn dispatch_error(&self, error: &WatchErrorInfo, watch: &str) -> Vec<CallRecord> {
        let wit = convert::watch_error(error);
        let ctx = CallContext {
            object: Arc::from(watch),
            event_kind: Export::Error.as_str(),
            chain: ChainState::default(),
            namespace: None,
            event_object: None,
        };
        let records = self
            .listeners
            .iter()
            .map(|listener| timed(listener, Export::Error, || listener.call_error(&wit, &ctx)))
            .collect();
        self.prewarm();
        records
    }
}

fn timed(listener: &Listener, export: Export, call: impl FnOnce() -> Outcome) -> CallRecord {
    let start = Instant::now();
    let outcome = call();
    CallRecord {
        listener: listener.name().clone(),
        mode: listener.mode(),
        export,
        outcome,
        duration: start.elapsed(),
    }
}

/// Calls admitted by [`Chain::dispatch`] and not made yet: their tickets are handed back when
/// this is dropped, also when a panic in host code (the event's conversion, say) unwinds the
/// dispatch, so no probe stays held until its lease runs out.
struct Admitted<'a>(std::collections::VecDeque<(usize, &'a Arc<Listener>, crate::runtime::Ticket)>);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        for (_, listener, ticket) in self.0.drain(..) {
            listener.release_probe(ticket);
        }
    }
}
