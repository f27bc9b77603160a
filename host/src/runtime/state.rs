//! The data of one wasmtime `Store`: WASI context (nothing granted), limiter, log and chain state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wasmtime::component::ResourceTable;
use wasmtime::{CallHook, StoreContextMut};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::kubelisten::listener::cluster::{
    self, ApiError, EventType, ListOptions, ObjectRef, PatchType,
};
use super::bindings::kubelisten::listener::{chain_state, log, types};
use super::host::{
    CallLog, Caller, ChainState, ClusterAccess, ClusterRequest, GuestLogSink, GuestOutput,
    LogBudget, LogLevel,
};
use super::limits::{Limiter, Limits};

/// WASI resources (pollables, streams, ...) one store may hold at once. They live in host
/// memory, outside the listener's memory limit (about 100-230 bytes each): wasmtime's default
/// of a million let a guest that never drops them (a `subscribe-duration` loop, a language
/// runtime leaking one pollable per event in reference mode) make the host allocate 100+ MB per
/// instance. Real guests hold a handful: the five polyglot guests (Rust, Python, JavaScript, C,
/// Go) pass their tests with a cap of 16. A guest that needs more traps as `memory`
/// ([`TrapKind`](super::TrapKind)).
pub(crate) const MAX_RESOURCES: usize = 4096;

/// Most bytes one `wasi:random` `get-random-bytes` (or `get-insecure-random-bytes`) call may
/// ask for, when the listener's memory is larger: the host builds the bytes before they are
/// copied into the guest, so wasmtime-wasi's default of 64 MiB let any guest make it allocate
/// that much per call. Language runtimes ask for a few dozen bytes (seeds, hash keys). A larger
/// request traps (`requested len ... exceeds limit ...`) before anything is allocated.
pub(crate) const MAX_RANDOM_BYTES: usize = 1 << 20;

/// Most bytes a guest may hand the host in one host call (all of an import's string and list
/// arguments together) and in one export's result: wasmtime's "hostcall fuel", which it counts
/// only when it copies guest data into the host (lifting), never the other way. Its default,
/// 128 MiB, let a guest make the host copy up to twice its memory (an `err` string, a log line,
/// a request body). The largest transfer the host takes is a create, apply or patch body, which
/// the API server refuses above 3 MiB; 4 MiB lets such a body reach the host's own size check
/// and error. Log lines, error messages (both cut to 4 KiB) and chain-state entries (64 KiB)
/// are far smaller. Data the host hands the guest (the event, cluster responses up to 8 MiB)
/// is not counted. More traps as `memory` before anything is copied. A `snapshot` result, up to
/// the guest's memory, gets that much ([`hand_over_fuel`]); the host calls made during it do not
/// ([`hand_over_hook`]).
pub(crate) const HOSTCALL_FUEL: usize = 4 << 20;

/// The hostcall fuel of a `snapshot` call's result: the whole state, up to the listener's
/// memory.
pub(crate) fn hand_over_fuel(limits: &Limits) -> usize {
    HOSTCALL_FUEL.max(limits.memory_bytes)
}

/// The store's call hook while a `snapshot` runs ([`HostState::hand_over`] is set): the host
/// calls the guest makes meanwhile (`log`, `chain-state`, `cluster`, WASI) get [`HOSTCALL_FUEL`],
/// and the raised [`hand_over_fuel`] is back once they return, for the export's result.
///
/// wasmtime reads the store's fuel when it starts lifting a call's arguments
/// (`LiftContext::new` in `HostFunc::call_sync_lower`), and calls this hook with
/// `CallingHost` before that, around the whole host call (`HostResult::maybe_catch_unwind`),
/// so the host's import implementations, which run after the lift, could not do it. The export's
/// result is lifted after the guest returns, when every host call has returned. The depth
/// counts nested host calls (a libcall of the `realloc` that lowers a host call's result): the
/// fuel goes back up only when the outermost returns. Outside a `snapshot` the hook does
/// nothing (a store keeps its hook once installed: wasmtime cannot remove one).
pub(crate) fn hand_over_hook(
    mut store: StoreContextMut<'_, HostState>,
    transition: CallHook,
) -> wasmtime::Result<()> {
    let Some(hand_over) = store.data_mut().hand_over.as_mut() else {
        return Ok(());
    };
    let fuel = match transition {
        CallHook::CallingHost => {
            hand_over.host_depth += 1;
            HOSTCALL_FUEL
        }
        CallHook::ReturningFromHost => {
            hand_over.host_depth = hand_over.host_depth.saturating_sub(1);
            if hand_over.host_depth > 0 {
                return Ok(());
            }
            hand_over.fuel
        }
        CallHook::CallingWasm | CallHook::ReturningFromWasm => return Ok(()),
    };
    store.set_hostcall_fuel(fuel);
    Ok(())
}

/// A `snapshot` in progress (see [`hand_over_hook`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HandOver {
    /// The hostcall fuel of the export's result ([`hand_over_fuel`]).
    pub(crate) fuel: usize,
    /// Host calls in progress (nested ones included).
    pub(crate) host_depth: u32,
}

impl HandOver {
    /// A `snapshot` of a listener with these limits, before its call.
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            fuel: hand_over_fuel(limits),
            host_depth: 0,
        }
    }
}

/// Per-store host state.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) log: CallLog,
    pub(crate) chain: ChainState,
    pub(crate) stdout: GuestOutput,
    pub(crate) stderr: GuestOutput,
    cluster: Arc<dyn ClusterAccess>,
    pub(crate) caller: Caller,
    /// Start of the current call.
    pub(crate) call_started: Instant,
    /// Time the current call spent in host calls (not charged to the guest's deadline).
    pub(crate) host_time: Duration,
    /// The guest's own time a call may take (`limits.call-timeout`).
    pub(crate) call_budget: Duration,
    /// The wall-clock time a call may take, host calls included (`limits.call-wall-timeout`).
    pub(crate) wall_budget: Duration,
    /// Cancelled when every guest call must stop (`Runtime::halt_guests`).
    halt: CancellationToken,
    /// Set while a `snapshot` runs: its host calls keep [`HOSTCALL_FUEL`] ([`hand_over_hook`]).
    pub(crate) hand_over: Option<HandOver>,
}

impl HostState {
    /// A fresh state: WASI preview 2 with no preopened directories, no environment, no network;
    /// clocks and random work; stdout/stderr are captured.
    pub(crate) fn new(
        listener: Arc<str>,
        sink: Arc<dyn GuestLogSink>,
        cluster: Arc<dyn ClusterAccess>,
        limits: &Limits,
        halt: CancellationToken,
    ) -> Self {
        let stdout = GuestOutput::default();
        let stderr = GuestOutput::default();
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .max_random_size(
                u64::try_from(MAX_RANDOM_BYTES.min(limits.memory_bytes)).unwrap_or(u64::MAX),
            )
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Self {
            wasi,
            table,
            limiter: Limiter::new(limits),
            caller: Caller {
                listener: listener.clone(),
                event_namespace: None,
                event_object: None,
                time_left: None,
            },
            cluster,
            call_started: Instant::now(),
            host_time: Duration::ZERO,
            call_budget: limits.call_timeout,
            wall_budget: limits.call_wall_timeout.max(limits.call_timeout),
            log: CallLog {
                sink,
                listener,
                object: Arc::from(""),
                event_kind: "",
                budget: LogBudget::default(),
            },
            chain: ChainState::default(),
            stdout,
            stderr,
            halt,
            hand_over: None,
        }
    }

    /// Serves the cluster calls from now on with `cluster`.
    pub(crate) fn set_cluster(&mut self, cluster: Arc<dyn ClusterAccess>) {
        self.cluster = cluster;
    }

    /// Whether [`Runtime::halt_guests`](super::Runtime::halt_guests) stopped every call.
    pub(crate) fn halted(&self) -> bool {
        self.halt.is_cancelled()
    }

    /// The token [`Runtime::halt_guests`](super::Runtime::halt_guests) cancels.
    pub(crate) fn halt_token(&self) -> &CancellationToken {
        &self.halt
    }

    /// Starts the clock of a call (a listener export, `snapshot` or `restore`).
    pub(crate) fn start_call(&mut self) {
        self.call_started = Instant::now();
        self.host_time = Duration::ZERO;
    }

    /// How long the current call may still run: the smaller of what is left of the guest's own
    /// time (wall time minus host calls) and of the wall-clock cap. Zero once either is spent.
    pub(crate) fn time_left(&self) -> Duration {
        let elapsed = self.call_started.elapsed();
        let guest = elapsed.saturating_sub(self.host_time);
        self.call_budget
            .saturating_sub(guest)
            .min(self.wall_budget.saturating_sub(elapsed))
    }

    /// The resource table (for the bounded `wasi:io/poll`).
    pub(crate) fn table_mut(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// Emits what the guest wrote to stdout (info) and stderr (warn) during the call, within the
    /// call's log budget, and returns the stderr text (used to recognise panics).
    pub(crate) fn flush_output(&mut self) -> String {
        let (out, out_dropped) = self.stdout.drain();
        let (err, err_dropped) = self.stderr.drain();
        for line in out.lines().filter(|l| !l.trim().is_empty()) {
            self.log.line(LogLevel::Info, line);
        }
        for line in err.lines().filter(|l| !l.trim().is_empty()) {
            self.log.line(LogLevel::Warn, line);
        }
        if out_dropped + err_dropped > 0 {
            let note = format!(
                "guest output cut: {} bytes dropped",
                out_dropped + err_dropped
            );
            self.log.line(LogLevel::Warn, &note);
        }
        self.log.finish_call();
        err
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        let level = match level {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        self.log.line(level, &message);
    }
}

impl chain_state::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.chain.get(&key)
    }

    fn set(&mut self, key: String, value: String) {
        if !self.chain.set(key, value) {
            self.log.line(
                LogLevel::Warn,
                "chain-state set refused: entry too large or too many keys",
            );
        }
    }

    fn remove(&mut self, key: String) -> bool {
        self.chain.remove(&key)
    }

    fn keys(&mut self) -> Vec<String> {
        self.chain.keys()
    }
}

impl HostState {
    /// Runs one cluster request, charging its duration to host time. The request may take at
    /// most what is left of the call's wall-clock cap.
    fn cluster_call(&mut self, request: ClusterRequest) -> Result<String, ApiError> {
        let left = self.wall_budget.saturating_sub(self.call_started.elapsed());
        if left.is_zero() {
            return Err(ApiError::Timeout(
                "the listener call's wall-clock limit (call-wall-timeout) is spent".into(),
            ));
        }
        self.caller.time_left = Some(left);
        let started = Instant::now();
        let result = self.cluster.call(&self.caller, request);
        self.host_time += started.elapsed();
        result
    }
}

impl cluster::Host for HostState {
    fn get(&mut self, r: ObjectRef) -> Result<String, ApiError> {
        self.cluster_call(ClusterRequest::Get(r))
    }

    fn list(
        &mut self,
        api_version: String,
        kind: String,
        namespace: Option<String>,
        options: ListOptions,
    ) -> Result<String, ApiError> {
        self.list_page(api_version, kind, namespace, options, None)
    }

    fn list_page(
        &mut self,
        api_version: String,
        kind: String,
        namespace: Option<String>,
        options: ListOptions,
        continue_from: Option<String>,
    ) -> Result<String, ApiError> {
        self.cluster_call(ClusterRequest::List {
            api_version,
            kind,
            namespace,
            options,
            continue_from,
        })
    }

    fn create(&mut self, object: String) -> Result<String, ApiError> {
        self.cluster_call(ClusterRequest::Create(object))
    }

    fn apply(&mut self, object: String) -> Result<String, ApiError> {
        self.cluster_call(ClusterRequest::Apply(object))
    }

    fn patch(&mut self, r: ObjectRef, kind: PatchType, patch: String) -> Result<String, ApiError> {
        self.cluster_call(ClusterRequest::Patch(r, kind, patch))
    }

    fn patch_status(
        &mut self,
        r: ObjectRef,
        kind: PatchType,
        patch: String,
    ) -> Result<String, ApiError> {
        self.cluster_call(ClusterRequest::PatchStatus(r, kind, patch))
    }

    fn delete(&mut self, r: ObjectRef) -> Result<(), ApiError> {
        self.cluster_call(ClusterRequest::Delete(r)).map(|_| ())
    }

    fn record_event(
        &mut self,
        about: ObjectRef,
        kind: EventType,
        reason: String,
        message: String,
    ) -> Result<(), ApiError> {
        self.cluster_call(ClusterRequest::RecordEvent {
            about,
            kind,
            reason,
            message,
        })
        .map(|_| ())
    }
}
