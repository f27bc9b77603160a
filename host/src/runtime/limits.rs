//! Per-listener resource limits and the store limiter that enforces the memory and table ones.

use std::time::Duration;

use serde::Deserialize;

/// Resource limits of one listener; every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Limits {
    /// Wall-clock time one call may run before the epoch deadline interrupts it.
    #[serde(with = "millis")]
    pub call_timeout: Duration,
    /// Largest total linear memory of one instance, in bytes.
    pub memory_bytes: usize,
    /// Largest number of elements of any one table.
    pub table_elements: usize,
    /// Largest number of core instances, tables and memories one component may create.
    pub instances: usize,
    /// Consecutive traps after which the listener is backed off (crash-loop protection).
    pub crash_loop_threshold: u32,
    /// First crash-loop backoff; doubles with every further trap.
    #[serde(with = "millis")]
    pub crash_loop_backoff: Duration,
    /// Longest crash-loop backoff.
    #[serde(with = "millis")]
    pub crash_loop_backoff_max: Duration,
    /// Classname mode only: keep one fresh instance built ahead of the next event, so an event
    /// pays only for its call (the instance is still used for exactly one event). `false`
    /// saves that idle instance's memory, which matters for large guests (Python, JavaScript).
    pub prewarm: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(1),
            memory_bytes: 64 << 20,
            table_elements: 100_000,
            instances: 100,
            crash_loop_threshold: 5,
            crash_loop_backoff: Duration::from_secs(1),
            crash_loop_backoff_max: Duration::from_secs(300),
            prewarm: true,
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A memory or table growth past the listener's limit; the guest traps with it.
#[derive(Debug, thiserror::Error)]
#[error("{what} limit exceeded: {desired} > {limit}")]
pub struct LimitExceeded {
    /// `memory` (bytes) or `table` (elements).
    pub what: &'static str,
    /// What the guest asked for.
    pub desired: usize,
    /// The limit.
    pub limit: usize,
}

/// Enforces [`Limits`] on one store; growth past a limit traps instead of failing quietly, so a
/// memory blow-up is classified as such rather than as the guest's own abort.
#[derive(Debug)]
pub(crate) struct Limiter {
    memory_bytes: usize,
    table_elements: usize,
    instances: usize,
    /// Set when a growth was refused; read by the trap classifier.
    pub(crate) exceeded: Option<&'static str>,
}

impl Limiter {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            memory_bytes: limits.memory_bytes,
            table_elements: limits.table_elements,
            instances: limits.instances,
            exceeded: None,
        }
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.exceeded = Some("memory");
            return Err(LimitExceeded {
                what: "memory",
                desired,
                limit: self.memory_bytes,
            }
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            self.exceeded = Some("table");
            return Err(LimitExceeded {
                what: "table",
                desired,
                limit: self.table_elements,
            }
            .into());
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.instances
    }

    fn memories(&self) -> usize {
        self.instances
    }
}
