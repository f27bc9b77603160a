//! The data of one wasmtime `Store`: WASI context (nothing granted), limiter, log and chain state.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::kubelisten::listener::{chain_state, log, types};
use super::host::{CallLog, ChainState, GuestLogSink, GuestOutput, LogBudget, LogLevel};
use super::limits::{Limiter, Limits};

/// Per-store host state.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) log: CallLog,
    pub(crate) chain: ChainState,
    pub(crate) stdout: GuestOutput,
    pub(crate) stderr: GuestOutput,
}

impl HostState {
    /// A fresh state: WASI preview 2 with no preopened directories, no environment, no network;
    /// clocks and random work; stdout/stderr are captured.
    pub(crate) fn new(listener: Arc<str>, sink: Arc<dyn GuestLogSink>, limits: &Limits) -> Self {
        let stdout = GuestOutput::default();
        let stderr = GuestOutput::default();
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter::new(limits),
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
        }
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
