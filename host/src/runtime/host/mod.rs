//! Host side of the imported WIT interfaces, one file per interface, plus captured guest stdio.

mod chain_state;
mod cluster;
mod log;
mod output;

pub use chain_state::ChainState;
pub use cluster::{Caller, ClusterAccess, ClusterRequest, NoCluster};
pub(crate) use log::{truncate, CallLog, LogBudget};
pub use log::{GuestLogSink, LogLevel, TracingSink};
pub(crate) use output::GuestOutput;
