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
    /// Wall-clock cap of one call, time blocked in host calls (Kubernetes requests, rate-limit
    /// waits) included: `call_timeout` does not count host time, so this bounds a guest that
    /// loops on cluster calls. At least `call_timeout` (a smaller value is raised to it).
    #[serde(with = "millis")]
    pub call_wall_timeout: Duration,
    /// Largest total linear memory of one instance, in bytes: the sum over all of its memories.
    pub memory_bytes: usize,
    /// Largest total number of table elements of one instance (the sum over all of its tables).
    pub table_elements: usize,
    /// Largest number of core instances, tables and memories one component may create.
    pub instances: usize,
    /// Consecutive traps after which the listener is backed off (crash-loop protection).
    pub crash_loop_threshold: u32,
    /// First crash-loop backoff; doubles with every further backoff (a trap of the probe call
    /// after one).
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
            call_wall_timeout: Duration::from_secs(30),
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

impl Limits {
    /// The first limit that cannot work, as its config key and what is wrong: a zero time limit
    /// or memory (every call or instantiation would fail), no crash-loop threshold or backoff.
    /// (A longest backoff shorter than the first works: every backoff is the longest.)
    pub fn problem(&self) -> Option<(&'static str, String)> {
        const PAGE: usize = 64 << 10;
        if self.call_timeout.is_zero() {
            return Some(("call-timeout", "must be at least 1 (ms)".into()));
        }
        if self.memory_bytes < PAGE {
            return Some((
                "memory-bytes",
                format!("must be at least {PAGE} (one wasm page)"),
            ));
        }
        if self.instances == 0 {
            return Some(("instances", "must be at least 1".into()));
        }
        if self.crash_loop_threshold == 0 {
            return Some(("crash-loop-threshold", "must be at least 1".into()));
        }
        if self.crash_loop_backoff.is_zero() {
            return Some(("crash-loop-backoff", "must be at least 1 (ms)".into()));
        }
        None
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

/// Enforces [`Limits`] on one store (one component instance); growth past a limit traps instead
/// of failing quietly, so a memory blow-up is classified as such rather than as the guest's own
/// abort. The limits are totals over every memory and table of the instance: wasmtime asks once
/// per memory (its initial size included), so a component of many core modules cannot multiply
/// its share.
#[derive(Debug)]
pub(crate) struct Limiter {
    memory_bytes: usize,
    table_elements: usize,
    instances: usize,
    /// Bytes of all the store's memories granted so far (wasm memories never shrink).
    memory_used: usize,
    /// Elements of all the store's tables granted so far.
    table_used: usize,
    /// Set when a growth was refused; read by the trap classifier.
    pub(crate) exceeded: Option<&'static str>,
}

impl Limiter {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            memory_bytes: limits.memory_bytes,
            table_elements: limits.table_elements,
            instances: limits.instances,
            memory_used: 0,
            table_used: 0,
            exceeded: None,
        }
    }
}

/// Grants growing one memory or table from `current` to `desired` if the store's `used` total
/// stays within `limit`, and counts it; else records and returns the refusal. A growth past the
/// memory's or table's own `maximum` is refused quietly (the guest sees the usual -1) and not
/// counted, since wasmtime would refuse it after this approval anyway.
fn grow(
    what: &'static str,
    used: &mut usize,
    limit: usize,
    (current, desired, maximum): (usize, usize, Option<usize>),
    exceeded: &mut Option<&'static str>,
) -> wasmtime::Result<bool> {
    if maximum.is_some_and(|max| desired > max) {
        return Ok(false);
    }
    let total = used.saturating_add(desired.saturating_sub(current));
    if total > limit {
        *exceeded = Some(what);
        return Err(LimitExceeded {
            what,
            desired: total,
            limit,
        }
        .into());
    }
    *used = total;
    Ok(true)
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        grow(
            "memory",
            &mut self.memory_used,
            self.memory_bytes,
            (current, desired, maximum),
            &mut self.exceeded,
        )
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        grow(
            "table",
            &mut self.table_used,
            self.table_elements,
            (current, desired, maximum),
            &mut self.exceeded,
        )
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

#[cfg(test)]
mod tests {
    use wasmtime::ResourceLimiter;

    use super::*;

    fn limiter(mib: usize) -> Limiter {
        Limiter::new(&Limits {
            memory_bytes: mib << 20,
            table_elements: 1000,
            ..Limits::default()
        })
    }

    #[test]
    fn memory_limit_counts_every_memory_of_the_instance() {
        let mut l = limiter(64);
        // Two memories of 40 MiB each: the second takes the total past 64 MiB.
        assert!(l.memory_growing(0, 40 << 20, None).unwrap());
        assert!(l.memory_growing(0, 40 << 20, None).is_err());
        assert_eq!(l.exceeded, Some("memory"));
    }

    #[test]
    fn growth_counts_only_the_added_bytes() {
        let mut l = limiter(64);
        assert!(l.memory_growing(0, 16 << 20, None).unwrap());
        assert!(l.memory_growing(16 << 20, 48 << 20, None).unwrap());
        assert!(l.memory_growing(0, 16 << 20, None).unwrap());
        assert!(l.memory_growing(16 << 20, (16 << 20) + 1, None).is_err());
    }

    #[test]
    fn growth_past_a_maximum_is_refused_without_being_counted() {
        let mut l = limiter(64);
        for _ in 0..10 {
            assert!(!l.table_growing(0, 900, Some(500)).unwrap());
        }
        assert_eq!(l.exceeded, None);
        assert!(
            l.table_growing(0, 1000, None).unwrap(),
            "nothing was counted"
        );
    }

    #[test]
    fn table_limit_counts_every_table_of_the_instance() {
        let mut l = limiter(64);
        assert!(l.table_growing(0, 600, None).unwrap());
        assert!(l.table_growing(0, 600, None).is_err());
        assert_eq!(l.exceeded, Some("table"));
    }

    #[test]
    fn limits_that_cannot_work_are_named() {
        assert_eq!(Limits::default().problem(), None);
        let cases = [
            (
                "call-timeout",
                Limits {
                    call_timeout: Duration::ZERO,
                    ..Limits::default()
                },
            ),
            (
                "memory-bytes",
                Limits {
                    memory_bytes: 0,
                    ..Limits::default()
                },
            ),
            (
                "instances",
                Limits {
                    instances: 0,
                    ..Limits::default()
                },
            ),
            (
                "crash-loop-threshold",
                Limits {
                    crash_loop_threshold: 0,
                    ..Limits::default()
                },
            ),
            (
                "crash-loop-backoff",
                Limits {
                    crash_loop_backoff: Duration::ZERO,
                    ..Limits::default()
                },
            ),
        ];
        for (key, limits) in cases {
            assert_eq!(limits.problem().map(|(k, _)| k), Some(key));
        }
        // A longest backoff shorter than the first works (every backoff is the longest).
        let capped = Limits {
            crash_loop_backoff: Duration::from_secs(600),
            ..Limits::default()
        };
        assert_eq!(capped.problem(), None);
    }
}
