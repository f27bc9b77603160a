//! The cluster watch: resolving what to watch ([`target`]), checking its selectors
//! ([`selectors`]) and the list/watch loop ([`watcher`]).
//! This module knows nothing of wasm.

pub mod leader;
pub mod selectors;
pub mod state;
pub mod target;
pub mod watcher;
