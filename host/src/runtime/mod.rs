//! The wasm runtime: one [`Runtime`] (engine, linker, code cache) and a [`Listener`] per component.
//!
//! This module knows nothing of Kubernetes: it turns events into component calls and every fault
//! of the guest into an [`Outcome`].

mod backoff;
pub mod bindings;
pub mod check;
pub mod compiler;
mod engine;
mod host;
mod limits;
mod listener;
mod poll;
mod slot_reset;
mod state;
mod trap;

pub use backoff::{CrashLoop, CrashLoopConfig, Ticket};
pub use engine::{
    release_free_memory, AllocatorKind, Runtime, RuntimeConfig, DEFAULT_COMPILE_MEMORY,
    DEFAULT_COMPILE_TIMEOUT,
};
/// Cuts a string to at most `max` bytes at a character boundary (shared by guest logs, guest
/// error messages and Kubernetes Events).
pub(crate) use host::truncate as truncate_utf8;
pub use host::{
    Caller, ChainState, ClusterAccess, ClusterRequest, GuestLogSink, LogLevel, NoCluster,
    TracingSink,
};
pub use limits::Limits;
pub use listener::{
    check_listener_name, CallContext, Export, Handover, Held, Listener, ListenerSpec,
    ListenerStats, Mode, Outcome,
};
pub use trap::TrapKind;

/// Errors of the wasm runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine could not be created with the requested configuration.
    #[error("cannot create the wasm engine")]
    EngineFailed(#[source] anyhow::Error),
    /// The module file could not be read.
    #[error("cannot read module {path}")]
    ReadFailed {
        /// The module path.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a component implementing the listener world.
    #[error("listener {listener}: {problems}")]
    CheckFailed {
        /// The listener name.
        listener: String,
        /// What is wrong, one problem per line.
        problems: check::Problems,
    },
    /// A listener's limits cannot work ([`Limits::problem`]).
    #[error("listener {listener}: limits.{key} {problem}")]
    BadLimits {
        /// The listener name.
        listener: String,
        /// The config key of the limit.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The module compiles but cannot be instantiated with the listener's limits.
    #[error("listener {listener}: cannot be instantiated: {reason}")]
    InstantiationFailed {
        /// The listener name.
        listener: String,
        /// Why: the trap or error of the instantiation.
        reason: String,
    },
    /// A listener spec given on the command line or in a file is malformed.
    #[error("bad listener spec {spec:?}: {reason}")]
    BadSpec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Result of the runtime's fallible operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
