//! A [`Listener`]: one component compiled once, pre-instantiated once, and called in classname
//! mode (fresh store and instance per call) or reference mode (one persistent instance, calls
//! serialized, rebuilt after a trap). Every fault becomes an [`Outcome`]; nothing escapes.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use wasmtime::Store;

use super::backoff::{CrashLoop, CrashLoopConfig, Ticket};
use super::bindings::{Event, Listener as ListenerWorld, ListenerPre, WatchError};
use super::check;
use super::engine::{Runtime, SpareTicket, EPOCH_TICK, HALT_CHECK_TICKS};
use super::host::{ChainState, ClusterAccess};
use super::limits::Limits;
use super::state::{hand_over_hook, HandOver, HostState, HOSTCALL_FUEL};
use super::trap::{Halted, TrapKind};
use super::{Error, Result};

/// How a listener's instances live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A fresh instance for every event (skafos: a listener class). No state survives an event.
    #[default]
    Classname,
    /// One persistent instance reused for every event (skafos: a listener object).
    Reference,
}

impl Mode {
    /// `classname` or `reference`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Classname => "classname",
            Mode::Reference => "reference",
        }
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "classname" => Ok(Mode::Classname),
            "reference" => Ok(Mode::Reference),
            other => Err(format!(
                "unknown mode {other:?} (expected reference or classname)"
            )),
        }
    }
}

/// Checks a listener name: 1–63 ASCII letters, digits, `-`, `_` or `.`, starting and ending
/// with a letter or digit (a Kubernetes qualified name). The name becomes the field manager and
/// the reporting controller of the listener's Kubernetes requests and Events
/// (`kubelisten/NAME`), which the API server validates that way.
///
/// # Errors
/// What is wrong with the name.
pub fn check_listener_name(name: &str) -> std::result::Result<(), String> {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let valid = (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && edge_ok(name.chars().next())
        && edge_ok(name.chars().last());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "listener name {name:?} is not valid: use 1-63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit (it names the listener's requests and \
             Events in Kubernetes as kubelisten/NAME)"
        ))
    }
}

/// What to load: a name, a module path, a mode and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    /// The listener's name in logs, metrics and output.
    pub name: String,
    /// Path of the component file.
    pub path: PathBuf,
    /// Instance lifetime.
    pub mode: Mode,
    /// Resource limits.
    pub limits: Limits,
    /// What the listener may do through the `cluster` import (default: nothing).
    pub capabilities: crate::capabilities::policy::Capabilities,
}

impl FromStr for ListenerSpec {
    type Err = Error;

    /// Parses `path[:reference|:classname]`; the name is the file stem, the mode defaults to
    /// classname.
    fn from_str(spec: &str) -> Result<Self> {
        let (path, mode) = match spec.rsplit_once(':') {
            Some((path, mode @ ("reference" | "classname"))) => {
                (path, mode.parse().unwrap_or_default())
            }
            _ => (spec, Mode::Classname),
        };
        if path.is_empty() {
            return Err(Error::BadSpec {
                spec: spec.to_string(),
                reason: "empty module path".into(),
            });
        }
        let path = PathBuf::from(path);
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::BadSpec {
                spec: spec.to_string(),
                reason: "cannot derive a listener name from the path".into(),
            })?
            .to_string();
        check_listener_name(&name).map_err(|reason| Error::BadSpec {
            spec: spec.to_string(),
            reason,
        })?;
        Ok(Self {
            name,
            path,
            mode,
            limits: Limits::default(),
            capabilities: Default::default(),
        })
    }
}

/// Which export a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Export {
    /// `create`
    Create,
    /// `update`
    Update,
    /// `delete`
    Delete,
    /// `error`
    Error,
    /// `rollback`
    Rollback,
}

impl Export {
    /// The export's WIT name.
    pub fn as_str(self) -> &'static str {
        match self {
            Export::Create => "create",
            Export::Update => "update",
            Export::Delete => "delete",
            Export::Error => "error",
            Export::Rollback => "rollback",
        }
    }
}

impl fmt::Display for Export {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The export returned `ok` (or `rollback` returned).
    Ok,
    /// The export returned `err(message)`: a normal failure.
    Error(String),
    /// The guest trapped; the instance is gone.
    Trap {
        /// Classified cause.
        kind: TrapKind,
        /// Trap description (or the panic message).
        message: String,
        /// The trap came from the guest's start code while the instance was built, before any
        /// export ran (a flag, not a message prefix: the message is the guest's to write).
        during_instantiation: bool,
    },
    /// The call did not run: the listener is in crash-loop backoff, or no instance could be
    /// built for a reason that is not the guest's (the instance pool is full).
    Skipped(String),
}

impl Outcome {
    /// `ok`, `error`, `trap` or `skipped`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error(_) => "error",
            Outcome::Trap { .. } => "trap",
            Outcome::Skipped(_) => "skipped",
        }
    }

    /// Whether the call succeeded.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }

    /// The message of a failure, empty for `ok`.
    pub fn message(&self) -> &str {
        match self {
            Outcome::Ok => "",
            Outcome::Error(m) | Outcome::Skipped(m) | Outcome::Trap { message: m, .. } => m,
        }
    }

    /// The trap kind, if the call trapped.
    pub fn trap_kind(&self) -> Option<TrapKind> {
        match self {
            Outcome::Trap { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// Whether the trap happened while building the instance (its start code), before any
    /// export ran: a reference-mode listener then had no instance to drop and rebuild.
    pub fn trapped_in_instantiation(&self) -> bool {
        matches!(
            self,
            Outcome::Trap {
                during_instantiation: true,
                ..
            }
        )
    }
}

/// Context of one call: what the log lines are tagged with and the chain state to expose.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// `namespace/name` (or `name`) of the object.
    pub object: Arc<str>,
    /// The event kind as logged (`create`, `update`, `delete`, `error`, `rollback`).
    pub event_kind: &'static str,
    /// The per-event chain state.
    pub chain: ChainState,
    /// Namespace of the event's object (grants scoped to it use this).
    pub namespace: Option<String>,
    /// The event's object with its uid, for `record-event` about it; `None` when there is none
    /// (a watch error) or it has no uid.
    pub event_object: Option<Arc<crate::event::ObjectMeta>>,
}

/// Counters of one listener, read by metrics and tests.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Calls made (skipped ones excluded).
    pub calls: AtomicU64,
    /// Error returns.
    pub errors: AtomicU64,
    /// Traps.
    pub traps: AtomicU64,
    /// Reference-mode instances rebuilt after a trap.
    pub rebuilds: AtomicU64,
    /// Calls skipped: by crash-loop backoff, or because no instance could be built for a reason
    /// that is not the guest's (the instance pool is full).
    pub skipped: AtomicU64,
    /// Instances built: one per classname event (plus the prewarmed spare), one per reference
    /// instance (the one built at load, and every rebuild). The classname trial instance of
    /// [`Listener::from_bytes`] is not counted.
    pub instances: AtomicU64,
}

/// A state hand-over in progress (see [`Listener::begin_handover`]).
pub struct Handover<'a> {
    listener: &'a Listener,
    slot: std::sync::MutexGuard<'a, Option<Persistent>>,
}

impl Handover<'_> {
    /// Takes `old`'s state (waiting for its call in flight) and restores it into a fresh
    /// instance of the new listener. Returns whether the state was carried over; when not (either
    /// side is not stateful, or a call failed), the new listener starts fresh.
    pub fn restore_from(mut self, old: &Listener) -> bool {
        let new = self.listener;
        if !(old.stateful && new.stateful && new.mode == Mode::Reference) {
            return false;
        }
        let Some(state) = old.snapshot() else {
            return false;
        };
        // The instance built at load (never called: the listener was in no chain yet), taken
        // out so that a failed restore leaves none behind; else a new one.
        let mut p = match self
            .slot
            .take()
            .map_or_else(|| new.instantiate_persistent(), Ok)
        {
            Ok(p) => p,
            Err(outcome) => {
                tracing::warn!(listener = %new.name, error = outcome.message(), "cannot instantiate for the hand-over");
                return false;
            }
        };
        p.store.set_epoch_deadline(new.first_deadline());
        p.store.data_mut().start_call();
        let restored = contain_export(|| {
            p.instance
                .get_typed_func::<(Vec<u8>,), ()>(&mut p.store, "restore")
                .and_then(|f| f.call(&mut p.store, (state,)))
        });
        match restored {
            Ok(()) => {
                *self.slot = Some(p);
                true
            }
            Err(err) => {
                tracing::warn!(listener = %new.name, error = %format!("{err:#}"), "restore failed; starting fresh");
                false
            }
        }
    }
}

struct Persistent {
    store: Store<HostState>,
    world: ListenerWorld,
    instance: wasmtime::component::Instance,
}

/// A loaded listener; share it with `Arc`.
pub struct Listener {
    name: Arc<str>,
    mode: Mode,
    limits: Limits,
    digest: String,
    runtime: Runtime,
    pre: ListenerPre<HostState>,
    epoch_ticks: u64,
    persistent: Mutex<Option<Persistent>>,
    /// Classname mode with `prewarm`: a fresh instance built after the previous event, taken
    /// by the next one, with its reservation of room in the pool.
    spare: Mutex<Option<(Store<HostState>, ListenerWorld, SpareTicket)>>,
    /// Whether a call is building the spare.
    refilling: std::sync::atomic::AtomicBool,
    stateful: bool,
    crash_loop: Mutex<CrashLoop>,
    /// Carries [`CrashLoop::changes`]: wakes the calls held back ([`Held::settled`]).
    settled: tokio::sync::watch::Sender<u64>,
    stats: ListenerStats,
}

/// A call that crash-loop protection held back: how long it may have to wait, and what tells
/// it to look again sooner.
#[derive(Debug, Clone)]
pub struct Held {
    /// The longest wait: the rest of the backoff, or of the lease of the call that probes the
    /// listener after it.
    pub wait: Duration,
    /// Whether another call is probing the listener (rather than the backoff still running).
    pub probing: bool,
    /// Changes when the probe ends, or the backoff is released or engaged again; subscribed
    /// when the call was held back, so no such change is missed.
    pub settled: tokio::sync::watch::Receiver<u64>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Reads, checks, compiles (through the cache) and pre-instantiates the spec's module.
    ///
    /// # Errors
    /// [`Error::ReadFailed`] or [`Error::CheckFailed`] naming what is wrong with the module.
    pub fn load(runtime: &Runtime, spec: &ListenerSpec) -> Result<Self> {
        let bytes = std::fs::read(&spec.path).map_err(|source| Error::ReadFailed {
            path: spec.path.clone(),
            source,
        })?;
        Self::from_bytes(runtime, spec, &bytes)
    }

    /// Like [`Listener::load`] from bytes already in memory; `spec.path` is only informative.
    ///
    /// The module is instantiated once with the spec's limits, as an event would instantiate it
    /// (same store, limiter and time limit), so that one that compiles but cannot run (its
    /// initial memory above `limits.memory-bytes`, more core instances than `limits.instances`,
    /// start code that traps) is refused here rather than failing every event. A reference-mode
    /// listener keeps that instance for its first event; a classname one drops it.
    ///
    /// # Errors
    /// [`Error::BadLimits`] naming a limit that cannot work, [`Error::CheckFailed`] naming
    /// what is wrong with the module, or [`Error::InstantiationFailed`] saying why it cannot be
    /// instantiated.
    pub fn from_bytes(runtime: &Runtime, spec: &ListenerSpec, bytes: &[u8]) -> Result<Self> {
        Self::from_bytes_tried_with(runtime, spec, bytes, runtime.cluster())
    }

    /// [`Listener::from_bytes`] whose trial instantiation (the module's start code) reaches the
    /// cluster through `cluster` rather than the runtime's access: a hot swap tries a new version
    /// with the grants of its own entry while the running version keeps its own. A reference
    /// instance kept from the trial uses the runtime's access from its first event on.
    ///
    /// # Errors
    /// As [`Listener::from_bytes`].
    pub fn from_bytes_tried_with(
        runtime: &Runtime,
        spec: &ListenerSpec,
        bytes: &[u8],
        cluster: Arc<dyn ClusterAccess>,
    ) -> Result<Self> {
        if let Some((key, problem)) = spec.limits.problem() {
            return Err(Error::BadLimits {
                listener: spec.name.clone(),
                key,
                problem,
            });
        }
        let checked = check::prepare(runtime, bytes).map_err(|problems| Error::CheckFailed {
            listener: spec.name.clone(),
            problems,
        })?;
        let ticks = spec
            .limits
            .call_timeout
            .as_millis()
            .div_ceil(EPOCH_TICK.as_millis())
            .max(1);
        let listener = Self {
            name: Arc::from(spec.name.as_str()),
            mode: spec.mode,
            limits: spec.limits.clone(),
            digest: checked.digest,
            runtime: runtime.clone(),
            pre: checked.pre,
            epoch_ticks: u64::try_from(ticks).unwrap_or(u64::MAX),
            persistent: Mutex::new(None),
            spare: Mutex::new(None),
            refilling: std::sync::atomic::AtomicBool::new(false),
            stateful: checked.stateful,
            crash_loop: Mutex::new(CrashLoop::new(CrashLoopConfig {
                threshold: spec.limits.crash_loop_threshold,
                base: spec.limits.crash_loop_backoff,
                max: spec.limits.crash_loop_backoff_max,
                // Longer than any call: its wall-clock cap, plus instantiation (bounded by the
                // call time limit), plus slack.
                probe_lease: spec.limits.call_wall_timeout.max(spec.limits.call_timeout)
                    + spec.limits.call_timeout
                    + Duration::from_secs(10),
            })),
            settled: tokio::sync::watch::Sender::new(0),
            stats: ListenerStats::default(),
        };
        listener
            .trial(cluster)
            .map_err(|reason| Error::InstantiationFailed {
                listener: spec.name.clone(),
                reason,
            })?;
        tracing::info!(listener = %spec.name, mode = spec.mode.as_str(), digest = %listener.digest, "listener loaded");
        Ok(listener)
    }

    /// Instantiates the module once, as an event would ([`Listener::build_instance`]: the
    /// store, limiter and epoch deadline of a call), its cluster calls served by `cluster`; a
    /// reference-mode listener keeps the instance for its first event. A full instance pool
    /// says nothing about the module: it is logged and the module accepted (its events report
    /// the pool, as they would anyway).
    ///
    /// # Errors
    /// Why the module cannot be instantiated with its limits.
    fn trial(&self, cluster: Arc<dyn ClusterAccess>) -> std::result::Result<(), String> {
        let built = contain(true, || {
            Ok(match self.build_instance_with(cluster) {
                Ok(instance) => Ok(Some(instance)),
                Err((_, err)) if not_the_modules_doing(&err) => {
                    tracing::warn!(listener = %self.name, error = %format!("{err:#}"), "the instance pool is full or the host is out of memory: the module is accepted without a trial instantiation");
                    Ok(None)
                }
                Err((mut store, err)) => Err(instantiation_problem(&mut store, &err)),
            })
        });
        match built {
            Ok(Ok(Some(mut instance))) if self.mode == Mode::Reference => {
                instance
                    .store
                    .data_mut()
                    .set_cluster(self.runtime.cluster());
                self.stats.instances.fetch_add(1, Ordering::Relaxed);
                *self
                    .persistent
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(instance);
                Ok(())
            }
            Ok(Ok(_)) => Ok(()),
            Ok(Err(reason)) => Err(reason),
            // A host panic while instantiating (the start code's log line).
            Err(outcome) => Err(outcome.message().to_string()),
        }
    }

    /// The listener's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Its mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// `sha256:<hex>` of the module that runs.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Its counters.
    pub fn stats(&self) -> &ListenerStats {
        &self.stats
    }

    /// Calls `create`, `update` or `delete` (by `export`) or `rollback` with `event`, unless
    /// crash-loop backoff holds the call back (`skipped`; a `rollback` never is: it undoes
    /// work this listener did for the event).
    pub fn call_event(&self, export: Export, event: &Event, ctx: &CallContext) -> Outcome {
        let ticket = if export == Export::Rollback {
            self.pass()
        } else {
            match self.admit() {
                Ok(ticket) => ticket,
                Err((skipped, _)) => return skipped,
            }
        };
        self.call_event_admitted(export, event, ctx, ticket)
    }

    /// [`Listener::call_event`] for a call already let through by [`Listener::admit`] (or a
    /// rollback, with [`Listener::pass`]).
    pub fn call_event_admitted(
        &self,
        export: Export,
        event: &Event,
        ctx: &CallContext,
        ticket: Ticket,
    ) -> Outcome {
        self.call(ctx, ticket, |world, store| match export {
            Export::Create => world.call_create(store, event),
            Export::Update => world.call_update(store, event),
            Export::Delete => world.call_delete(store, event),
            Export::Rollback => world.call_rollback(store, event).map(Ok),
            Export::Error => Ok(Err("an event cannot be passed to the error export".into())),
        })
    }

    /// Calls `error` with a watch error: only while the listener is not backed off. It never
    /// probes a backed-off listener, and its success does not release a backoff (it says
    /// nothing about handling events).
    pub fn call_error(&self, error: &WatchError, ctx: &CallContext) -> Outcome {
        let now = Instant::now();
        let admitted = {
            let mut crash_loop = self.lock_crash_loop();
            crash_loop
                .admit_aside(now)
                .map_err(|wait| self.held(&crash_loop, now, wait))
        };
        match admitted {
            Ok(ticket) => self.call(ctx, ticket, |world, store| world.call_error(store, error)),
            Err(held) => self.skipped_for(&held),
        }
    }

    /// Lets an event call through crash-loop protection now: its [`Ticket`] (the probe, when a
    /// backoff has ended: hand it back with [`Listener::release_probe`] if the call is not
    /// made after all), or the `skipped` outcome of the call (counted) and what it waits for.
    /// A [`Chain`](crate::dispatch::Chain) admits all of an event's listeners before calling
    /// the first, so a chain with a backed-off listener runs nobody, and one event probes it.
    pub fn admit(&self) -> Result<Ticket, (Outcome, Held)> {
        let now = Instant::now();
        let admitted = {
            let mut crash_loop = self.lock_crash_loop();
            crash_loop
                .admit(now)
                .map_err(|wait| self.held(&crash_loop, now, wait))
        };
        admitted.map_err(|held| (self.skipped_for(&held), held))
    }

    /// A call held back at `now` for `wait`; `crash_loop` is this listener's, locked: a probe's
    /// outcome is recorded under that lock too, so it comes after this subscription and is seen.
    fn held(&self, crash_loop: &CrashLoop, now: Instant, wait: Duration) -> Held {
        Held {
            wait,
            probing: crash_loop.probing(now),
            settled: self.settled.subscribe(),
        }
    }

    /// A ticket for a call that no backoff holds back (a `rollback`).
    pub fn pass(&self) -> Ticket {
        self.lock_crash_loop().pass()
    }

    /// Hands back the admission of a call that was not made (frees the probe, if it was one).
    pub fn release_probe(&self, ticket: Ticket) {
        self.settling(|crash_loop| crash_loop.record_not_run(ticket));
    }

    /// Runs `f` on the crash-loop state and wakes the held-back calls if it changed anything
    /// they wait for ([`CrashLoop::changes`]).
    fn settling<T>(&self, f: impl FnOnce(&mut CrashLoop) -> T) -> T {
        let mut crash_loop = self.lock_crash_loop();
        let before = crash_loop.changes();
        let result = f(&mut crash_loop);
        let after = crash_loop.changes();
        if after != before {
            // Still under the lock (see `admit`); a watch send never blocks.
            self.settled.send_replace(after);
        }
        result
    }

    /// Runs `f` on an instance (admission is the caller's) and records the outcome.
    fn call(
        &self,
        ctx: &CallContext,
        ticket: Ticket,
        f: impl FnOnce(
            &ListenerWorld,
            &mut Store<HostState>,
        ) -> wasmtime::Result<std::result::Result<(), String>>,
    ) -> Outcome {
        if ticket.is_probe() {
            self.lock_crash_loop().call_starts(Instant::now(), ticket);
        }
        // A panic in host code during the call is the call's trap (see `contain`).
        let outcome = match self.mode {
            Mode::Classname => self.call_fresh(ctx, f),
            Mode::Reference => self.call_persistent(ctx, f),
        };
        // An instance that could not be built (pool full) was never called.
        let counter = match outcome {
            Outcome::Skipped(_) => &self.stats.skipped,
            _ => &self.stats.calls,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.record(&outcome, ticket);
        outcome
    }

    /// Calls `f` on an instance prepared for `ctx` and turns its result into the outcome; a host
    /// panic during it is a trap ([`contain`]).
    fn run_call(
        &self,
        world: &ListenerWorld,
        store: &mut Store<HostState>,
        ctx: &CallContext,
        f: impl FnOnce(
            &ListenerWorld,
            &mut Store<HostState>,
        ) -> wasmtime::Result<std::result::Result<(), String>>,
    ) -> Outcome {
        contain(false, || {
            self.prepare(store, ctx);
            let result = f(world, store);
            Ok(finish(store, result))
        })
        .unwrap_or_else(std::convert::identity)
    }

    fn call_fresh(
        &self,
        ctx: &CallContext,
        f: impl FnOnce(
            &ListenerWorld,
            &mut Store<HostState>,
        ) -> wasmtime::Result<std::result::Result<(), String>>,
    ) -> Outcome {
        let spare = self
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // The spare's ticket is dropped here: from now on its instance is one in flight.
        let spare = spare.map(|(store, world, _ticket)| (store, world));
        let (mut store, world) = match spare.map_or_else(|| self.instantiate(), Ok) {
            Ok(pair) => pair,
            Err(outcome) => return outcome,
        };
        // The store, and the instance an unwind went through with it, is dropped either way.
        self.run_call(&world, &mut store, ctx, f)
    }

    /// Classname mode with `limits.prewarm`: builds the fresh instance that the next event will
    /// take, unless one is ready or another thread is building it, so every instance built
    /// serves one event (or is dropped with the listener). Call it off the event's critical
    /// path: [`Chain`](crate::dispatch::Chain) does after all of an event's calls. A failure is
    /// left to the next event, which then instantiates inline and reports it as its own outcome.
    /// Spares of all listeners together hold at most a quarter of the instance pool
    /// ([`Runtime::spare_budget`]); past that, no spare is built and events instantiate inline.
    pub fn prewarm(&self) {
        if self.mode != Mode::Classname || !self.limits.prewarm {
            return;
        }
        // In crash-loop backoff no event will take the spare soon, and a guest whose start
        // code traps would burn a full time limit here for nothing.
        if self.backoff_remaining().is_some() {
            return;
        }
        if self
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
            || self.refilling.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let Some(ticket) = self.runtime.reserve_spare() else {
            self.refilling.store(false, Ordering::Release);
            return;
        };
        // A panic in host code (the start code's log line) is a failed build (`instantiate`
        // contains it): it cannot leave `refilling` set, which would stop prewarming for good.
        let built = self.instantiate();
        self.refilling.store(false, Ordering::Release);
        match built {
            Ok((store, world)) => {
                let mut slot = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
                if slot.is_none() {
                    *slot = Some((store, world, ticket));
                }
            }
            Err(outcome) => {
                tracing::debug!(listener = %self.name, outcome = %outcome.message(), "no spare instance; the next event instantiates its own");
            }
        }
    }

    fn call_persistent(
        &self,
        ctx: &CallContext,
        f: impl FnOnce(
            &ListenerWorld,
            &mut Store<HostState>,
        ) -> wasmtime::Result<std::result::Result<(), String>>,
    ) -> Outcome {
        let mut slot = self
            .persistent
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            match self.instantiate_persistent() {
                Ok(persistent) => *slot = Some(persistent),
                Err(outcome) => return outcome,
            }
        }
        let Some(instance) = slot.as_mut() else {
            return Outcome::Skipped("reference instance unavailable".into());
        };
        // Caught while the lock is still held: no other call can take the instance the unwind
        // went through (as the mutex's poison would let it) before it is dropped below.
        let outcome = self.run_call(&instance.world, &mut instance.store, ctx, f);
        if outcome.trap_kind().is_some() {
            // A trap poisons the store: drop the instance; the next call builds a fresh one.
            *slot = None;
            self.stats.rebuilds.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(listener = %self.name, "reference instance dropped after a trap; its state is lost and the next event gets a fresh instance");
        }
        outcome
    }

    /// A new reference instance; a host panic during it is a trap ([`contain`]).
    fn instantiate_persistent(&self) -> std::result::Result<Persistent, Outcome> {
        contain(true, || self.instantiate_persistent_uncontained())
    }

    fn instantiate_persistent_uncontained(&self) -> std::result::Result<Persistent, Outcome> {
        match self.build_instance() {
            Ok(persistent) => {
                self.stats.instances.fetch_add(1, Ordering::Relaxed);
                Ok(persistent)
            }
            Err((mut store, err)) => Err(instantiation_failed(&mut store, &err)),
        }
    }

    /// An instance in a fresh store ([`Listener::new_store`]); on failure, the store (its
    /// output and limiter tell what happened) and the error. Not counted in the stats.
    fn build_instance(
        &self,
    ) -> std::result::Result<Persistent, (Store<HostState>, wasmtime::Error)> {
        self.build_instance_with(self.runtime.cluster())
    }

    /// [`Listener::build_instance`] whose cluster calls `cluster` serves.
    fn build_instance_with(
        &self,
        cluster: Arc<dyn ClusterAccess>,
    ) -> std::result::Result<Persistent, (Store<HostState>, wasmtime::Error)> {
        let mut store = self.new_store_with(cluster);
        let instance = match self.pre.instance_pre().instantiate(&mut store) {
            Ok(instance) => instance,
            Err(err) => return Err((store, err)),
        };
        match ListenerWorld::new(&mut store, &instance) {
            Ok(world) => Ok(Persistent {
                store,
                world,
                instance,
            }),
            Err(err) => Err((store, err)),
        }
    }

    /// Whether the module implements the `stateful-listener` hand-over exports.
    pub fn stateful(&self) -> bool {
        self.stateful
    }

    /// The reference instance's state, from its `snapshot` export; `None` when the listener is
    /// not stateful, not in reference mode, has no live instance or the call failed. Waits for a
    /// call in flight to finish.
    pub fn snapshot(&self) -> Option<Vec<u8>> {
        if !self.stateful || self.mode != Mode::Reference {
            return None;
        }
        let mut slot = self
            .persistent
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let p = slot.as_mut()?;
        p.store.set_epoch_deadline(self.first_deadline());
        p.store.data_mut().start_call();
        // The state may be as large as the guest's memory; the host calls made meanwhile keep
        // the usual bound (the hook). Installed at a snapshot only, so a store never snapshotted
        // runs no hook; after the snapshot it does nothing (`hand_over` is `None`).
        let hand_over = HandOver::new(&self.limits);
        p.store.data_mut().hand_over = Some(hand_over);
        p.store.call_hook(hand_over_hook);
        p.store.set_hostcall_fuel(hand_over.fuel);
        let result = contain_export(|| {
            p.instance
                .get_typed_func::<(), (Vec<u8>,)>(&mut p.store, "snapshot")
                .and_then(|f| f.call(&mut p.store, ()).map(|(bytes,)| bytes))
        });
        p.store.data_mut().hand_over = None;
        p.store.set_hostcall_fuel(HOSTCALL_FUEL);
        match result {
            Ok(bytes) => Some(bytes),
            Err(err) => {
                tracing::warn!(listener = %self.name, error = %format!("{err:#}"), "snapshot failed; the next version starts fresh");
                *slot = None;
                None
            }
        }
    }

    /// Starts a state hand-over into this (new) listener: until the returned guard is done,
    /// calls to this listener wait. See [`Handover::restore_from`].
    pub fn begin_handover(&self) -> Handover<'_> {
        Handover {
            listener: self,
            slot: self
                .persistent
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// The first epoch deadline of a call: its time limit, or the halt check if sooner (the
    /// deadline callback then extends it).
    fn first_deadline(&self) -> u64 {
        self.epoch_ticks.min(HALT_CHECK_TICKS)
    }

    fn new_store(&self) -> Store<HostState> {
        self.new_store_with(self.runtime.cluster())
    }

    /// A fresh store whose cluster calls `cluster` serves.
    fn new_store_with(&self, cluster: Arc<dyn ClusterAccess>) -> Store<HostState> {
        let state = HostState::new(
            self.name.clone(),
            self.runtime.sink(),
            cluster,
            &self.limits,
            self.runtime.halt_token(),
        );
        let mut store = Store::new(self.runtime.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(HOSTCALL_FUEL);
        store.set_epoch_deadline(self.first_deadline());
        // The deadline counts the guest's own time: time spent blocked in host calls (cluster
        // requests) is given back when the epoch deadline is reached, up to the call's
        // wall-clock cap. Waits in `wasi:io/poll` are bounded by the same budget (runtime/poll.rs).
        // The callback also runs at least every HALT_CHECK_TICKS, to see a halt in time.
        store.epoch_deadline_callback(move |ctx| {
            if ctx.data().halted() {
                return Err(Halted.into());
            }
            let left = ctx.data().time_left();
            if left.is_zero() {
                return Ok(wasmtime::UpdateDeadline::Interrupt);
            }
            let left = left.as_millis().div_ceil(EPOCH_TICK.as_millis()).max(1);
            Ok(wasmtime::UpdateDeadline::Continue(
                u64::try_from(left)
                    .unwrap_or(u64::MAX)
                    .min(HALT_CHECK_TICKS),
            ))
        });
        store
    }

    /// A fresh instance; a host panic during it is a trap ([`contain`]).
    fn instantiate(&self) -> std::result::Result<(Store<HostState>, ListenerWorld), Outcome> {
        contain(true, || self.instantiate_uncontained())
    }

    fn instantiate_uncontained(
        &self,
    ) -> std::result::Result<(Store<HostState>, ListenerWorld), Outcome> {
        let mut store = self.new_store();
        match self.pre.instantiate(&mut store) {
            Ok(world) => {
                self.stats.instances.fetch_add(1, Ordering::Relaxed);
                Ok((store, world))
            }
            Err(err) => Err(instantiation_failed(&mut store, &err)),
        }
    }

    fn prepare(&self, store: &mut Store<HostState>, ctx: &CallContext) {
        store.set_epoch_deadline(self.first_deadline());
        let state = store.data_mut();
        state.limiter.exceeded = None;
        state.log.object = ctx.object.clone();
        state.log.event_kind = ctx.event_kind;
        state.chain = ctx.chain.clone();
        state.caller.event_namespace = ctx.namespace.clone();
        state.caller.event_object = ctx.event_object.clone();
        state.start_call();
    }

    fn record(&self, outcome: &Outcome, ticket: Ticket) {
        if let Outcome::Error(_) = outcome {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Outcome::Trap { .. } = outcome {
            self.stats.traps.fetch_add(1, Ordering::Relaxed);
        }
        // Logged after the lock is released: a slow log writer must not hold up admissions.
        let engaged = self.settling(|crash_loop| match outcome {
            Outcome::Ok | Outcome::Error(_) => {
                crash_loop.record_success(ticket);
                None
            }
            Outcome::Trap { .. } => crash_loop
                .record_trap(Instant::now(), ticket)
                .map(|delay| (delay, crash_loop.consecutive_traps())),
            Outcome::Skipped(_) => {
                crash_loop.record_not_run(ticket);
                None
            }
        });
        if let Outcome::Trap { kind, message, .. } = outcome {
            tracing::warn!(listener = %self.name, trap = kind.as_str(), error = %message, "listener trapped");
        }
        if let Some((delay, consecutive_traps)) = engaged {
            tracing::warn!(listener = %self.name, consecutive_traps, backoff_ms = delay.as_millis() as u64, "listener in crash loop: backing off");
        }
    }

    fn lock_crash_loop(&self) -> std::sync::MutexGuard<'_, CrashLoop> {
        self.crash_loop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How long a call now would have to wait ([`CrashLoop::wait`]), if it would.
    pub fn backoff_remaining(&self) -> Option<Duration> {
        self.lock_crash_loop().wait(Instant::now())
    }

    /// The `skipped` outcome of a call `held` back, counted.
    fn skipped_for(&self, held: &Held) -> Outcome {
        self.stats.skipped.fetch_add(1, Ordering::Relaxed);
        let wait = held.wait;
        Outcome::Skipped(if held.probing {
            format!(
                "listener {} is being probed after a crash-loop backoff (waiting for its outcome, at most {wait:?})",
                self.name
            )
        } else {
            format!(
                "listener {} is in crash-loop backoff for another {wait:?}",
                self.name
            )
        })
    }
}

/// The outcome of a failed instantiation. It runs guest start code, which can trap, exit
/// (`wasi:cli/exit`, as a Go `init()` panic may), exceed a limit or fail a host call as a call
/// can: a trap during instantiation, counted for crash-loop protection. Only a failure that is
/// not the guest's doing (the instance pool is full, the host is out of memory) is `skipped`.
fn instantiation_failed(store: &mut Store<HostState>, err: &wasmtime::Error) -> Outcome {
    let stderr = store.data_mut().flush_output();
    if err.is::<wasmtime::PoolConcurrencyLimitError>() {
        return Outcome::Skipped(format!(
            "cannot instantiate: the instance pool is full ({err}); instances in flight and \
             reference instances need more room than --pool-instances \
             (KUBELISTEN_POOL_INSTANCES) gives"
        ));
    }
    if err.is::<wasmtime::OutOfMemory>() {
        return Outcome::Skipped(format!("cannot instantiate: {err:#}"));
    }
    let (kind, message) = TrapKind::classify(err, store.data().limiter.exceeded.is_some(), &stderr);
    Outcome::Trap {
        kind,
        message: format!("during instantiation: {message}"),
        during_instantiation: true,
    }
}

/// Whether an instantiation failed for a reason that is not the module's: the instance pool is
/// full, or the host is out of memory. Such a failure skips the call, and at load accepts the
/// module untried.
fn not_the_modules_doing(err: &wasmtime::Error) -> bool {
    err.is::<wasmtime::PoolConcurrencyLimitError>() || err.is::<wasmtime::OutOfMemory>()
}

/// Why an instantiation at load failed, for [`Error::InstantiationFailed`]: the trap (with its
/// kind) or the error, and the limit to raise when one was hit.
fn instantiation_problem(store: &mut Store<HostState>, err: &wasmtime::Error) -> String {
    let stderr = store.data_mut().flush_output();
    let exceeded = store.data().limiter.exceeded;
    let (kind, message) = TrapKind::classify(err, exceeded.is_some(), &stderr);
    let hint = match exceeded {
        Some("memory") => " (limits.memory-bytes)",
        Some("table") => " (limits.table-elements)",
        // wasmtime's count of core instances, memories or tables past the limiter's, all three
        // `limits.instances`.
        _ if message.contains("count too high") => " (limits.instances)",
        _ => "",
    };
    let trapped = err.downcast_ref::<wasmtime::Trap>().is_some()
        || err.is::<wasmtime_wasi::I32Exit>()
        || kind == TrapKind::Memory;
    if trapped {
        format!("{kind} trap: {message}{hint}")
    } else {
        format!("{message}{hint}")
    }
}

/// Longest error message of a guest kept (logs, `/status`, Events), in bytes.
const MAX_MESSAGE: usize = 4096;

/// Cuts a guest's error message to [`MAX_MESSAGE`] bytes at a character boundary, saying how
/// much was cut: a guest must not write megabytes into every log line of every retry. The cut
/// message is a new string, so the guest-sized one is freed (the outcome is kept through the
/// retry's wait).
fn truncate_message(message: String) -> String {
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    let kept = super::truncate_utf8(&message, MAX_MESSAGE);
    let cut = message.len() - kept.len();
    format!("{kept}… ({cut} more bytes cut)")
}

/// Runs `f` (an instantiation when `during_instantiation`, else a call), turning a panic in
/// host code during it (a host function, the guest log sink) into the call's trap of kind
/// `other`, as a guest's trap would be: the worker thread, the event's retries and the
/// crash-loop slot (a probe's ticket) are not lost with it. The caller drops the instance the
/// unwind went through, as after any trap (its state may be half-updated).
fn contain<T>(
    during_instantiation: bool,
    f: impl FnOnce() -> std::result::Result<T, Outcome>,
) -> std::result::Result<T, Outcome> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let during = if during_instantiation {
            "while instantiating"
        } else {
            "during the call"
        };
        Err(Outcome::Trap {
            kind: TrapKind::Other,
            message: format!(
                "host code panicked {during}: {}",
                panic_message(panic.as_ref())
            ),
            during_instantiation,
        })
    })
}

/// Like [`contain`] for a hand-over export (`snapshot`, `restore`): a panic is its error.
fn contain_export<T>(f: impl FnOnce() -> wasmtime::Result<T>) -> wasmtime::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        Err(wasmtime::format_err!(
            "host code panicked: {}",
            panic_message(panic.as_ref())
        ))
    })
}

/// The message of a panic payload (`panic!` with a literal or a format string).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Turns the raw result of a call into an [`Outcome`], flushing the captured output first (its
/// stderr tells a panic from a bare `unreachable`).
fn finish(
    store: &mut Store<HostState>,
    result: wasmtime::Result<std::result::Result<(), String>>,
) -> Outcome {
    let stderr = store.data_mut().flush_output();
    match result {
        Ok(Ok(())) => Outcome::Ok,
        Ok(Err(message)) => Outcome::Error(truncate_message(message)),
        Err(err) => {
            let (kind, message) =
                TrapKind::classify(&err, store.data().limiter.exceeded.is_some(), &stderr);
            Outcome::Trap {
                kind,
                message,
                during_instantiation: false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_flag_marks_a_trap_during_instantiation() {
        let trap = |message: &str, during_instantiation| Outcome::Trap {
            kind: TrapKind::Panic,
            message: message.into(),
            during_instantiation,
        };
        assert!(trap("start code panicked", true).trapped_in_instantiation());
        // A guest's panic message is the guest's to write: it cannot pass for a trap at
        // instantiation (which would keep the reference-mode rebuild from being counted).
        assert!(!trap("during instantiation: made up", false).trapped_in_instantiation());
    }

    #[test]
    fn long_error_messages_are_cut_at_a_char_boundary() {
        assert_eq!(truncate_message("short".into()), "short");
        let long = "é".repeat(3000); // 6000 bytes
        let cut = truncate_message(long);
        assert!(cut.starts_with(&"é".repeat(2048)), "{}", &cut[..20]);
        assert!(cut.ends_with("… (1904 more bytes cut)"), "{}", &cut[4000..]);
    }

    #[test]
    fn a_cut_message_does_not_keep_the_guest_sized_allocation() {
        let cut = truncate_message("x".repeat(1 << 20));
        assert!(cut.len() < MAX_MESSAGE + 64, "{}", cut.len());
        assert!(
            cut.capacity() <= 2 * MAX_MESSAGE,
            "capacity {}",
            cut.capacity()
        );
    }

    #[test]
    fn parses_specs() {
        let s: ListenerSpec = "guests/a.wasm:reference".parse().unwrap();
        assert_eq!((s.name.as_str(), s.mode), ("a", Mode::Reference));
        let s: ListenerSpec = "b.wasm".parse().unwrap();
        assert_eq!((s.name.as_str(), s.mode), ("b", Mode::Classname));
        let s: ListenerSpec = "dir:x/c.wasm:classname".parse().unwrap();
        assert_eq!(s.path, PathBuf::from("dir:x/c.wasm"));
        assert!(":reference".parse::<ListenerSpec>().is_err());
        assert!("dir/my listener.wasm".parse::<ListenerSpec>().is_err());
    }

    #[test]
    fn listener_names_are_qualified_names() {
        for good in ["a", "rust-logger", "My_Listener.v2", &"x".repeat(63)] {
            assert!(check_listener_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "a b", "a/b", "é", &"x".repeat(64)] {
            assert!(check_listener_name(bad).is_err(), "{bad:?}");
        }
    }
}
