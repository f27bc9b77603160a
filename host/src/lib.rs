//! kubelisten: runs Kubernetes event listeners as sandboxed WebAssembly components.
//!
//! The data path is `event` (the event model shared by the cluster watch and `replay`) →
//! [`dispatch`] (the listener chain) → [`runtime`] (wasmtime: compile, instantiate, call, contain).
#![deny(missing_docs)]

pub mod app;
pub mod capabilities;
pub mod config;
pub mod connect;
pub mod dispatch;
pub mod event;
pub mod hotswap;
pub mod metrics;
pub mod replay;
pub mod runtime;
pub mod scaffold;
pub mod server;
pub mod status;
pub mod status_cli;
pub mod watch;

#[cfg(test)]
pub(crate) mod test_support;

pub use dispatch::{CallRecord, Chain, ChainReport};
pub use event::{EventKind, ObjectMeta, ResourceEvent, WatchErrorInfo};
pub use runtime::{
    Limits, Listener, ListenerSpec, Mode, Outcome, Runtime, RuntimeConfig, TrapKind,
};
