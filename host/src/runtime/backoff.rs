//! Crash-loop protection: a listener that traps on K consecutive calls is backed off exponentially.
//!
//! Pure logic over explicit instants so it is tested without sleeping.

use std::time::{Duration, Instant};

/// Settings of [`CrashLoop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashLoopConfig {
    /// Consecutive traps that engage the backoff.
    pub threshold: u32,
    /// First backoff; doubles with every further consecutive trap.
    pub base: Duration,
    /// Longest backoff.
    pub max: Duration,
}

/// Tracks consecutive traps of one listener and decides whether it may be called now.
///
/// After `threshold` consecutive traps the listener is backed off for `base`. When a backoff
/// ends, one call probes the listener ([`CrashLoop::admit`]) while the others keep waiting; if
/// it traps, the next backoff is twice as long (up to `max`). Traps of calls that started
/// before a backoff do not lengthen it, so many workers waking together cannot run the backoff
/// up to its maximum at once. Any call that does not trap releases the backoff.
#[derive(Debug, Clone)]
pub struct CrashLoop {
    config: CrashLoopConfig,
    consecutive_traps: u32,
    /// Backoffs since the last call that did not trap: the exponent of the next one.
    backoffs: u32,
    until: Option<Instant>,
    /// A call is probing the listener after a backoff.
    probing: bool,
}

impl CrashLoop {
    /// A listener with no traps yet.
    pub fn new(config: CrashLoopConfig) -> Self {
        Self {
            config,
            consecutive_traps: 0,
            backoffs: 0,
            until: None,
            probing: false,
        }
    }

    /// How long a call at `now` has to wait: the rest of the backoff, or while another call
    /// probes the listener after it, one `base` (at most 1 s) at a time. `None`: it may run.
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        let until = self.until?;
        if until > now {
            return Some(until - now);
        }
        self.probing.then(|| {
            self.config
                .base
                .clamp(Duration::from_millis(1), Duration::from_secs(1))
        })
    }

    /// Lets a call at `now` run (`Ok(true)`: as the probe after a backoff), or says how long it
    /// has to wait ([`CrashLoop::wait`]).
    pub fn admit(&mut self, now: Instant) -> Result<bool, Duration> {
        if let Some(wait) = self.wait(now) {
            return Err(wait);
        }
        self.probing = self.until.is_some();
        Ok(self.probing)
    }

    /// Consecutive traps so far.
    pub fn consecutive_traps(&self) -> u32 {
        self.consecutive_traps
    }

    /// Records a trap at `now`; returns the backoff it engaged, if any.
    pub fn record_trap(&mut self, now: Instant) -> Option<Duration> {
        self.consecutive_traps = self.consecutive_traps.saturating_add(1);
        if self.until.is_some_and(|until| until > now) {
            // A call that started before this backoff: the backoff already answers it.
            return None;
        }
        if self.consecutive_traps < self.config.threshold.max(1) {
            return None;
        }
        let factor = 2u32.saturating_pow(self.backoffs.min(31));
        let delay = self.config.base.saturating_mul(factor).min(self.config.max);
        self.backoffs = self.backoffs.saturating_add(1);
        self.until = Some(now + delay);
        self.probing = false;
        Some(delay)
    }

    /// Records a call that did not trap (success or error return): the backoff is released.
    pub fn record_success(&mut self) {
        self.consecutive_traps = 0;
        self.backoffs = 0;
        self.until = None;
        self.probing = false;
    }

    /// Records an admitted call that could not run (no instance could be built): whether the
    /// listener works is still open, so the next call may probe it.
    pub fn record_not_run(&mut self) {
        self.probing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CrashLoopConfig {
        CrashLoopConfig {
            threshold: 3,
            base: Duration::from_secs(1),
            max: Duration::from_secs(5),
        }
    }

    #[test]
    fn engages_after_threshold_doubles_per_backoff_and_caps() {
        let t0 = Instant::now();
        let mut c = CrashLoop::new(config());
        assert_eq!(c.record_trap(t0), None);
        assert_eq!(c.record_trap(t0), None);
        assert_eq!(c.wait(t0), None);
        assert_eq!(c.record_trap(t0), Some(Duration::from_secs(1)));
        assert_eq!(c.wait(t0), Some(Duration::from_secs(1)));
        assert_eq!(c.admit(t0), Err(Duration::from_secs(1)));
        // Calls that were already running trap too: the backoff does not grow.
        assert_eq!(c.record_trap(t0), None);
        assert_eq!(c.wait(t0), Some(Duration::from_secs(1)));
        // Each backoff that ends lets one probe through; its trap doubles the next one.
        let mut t = t0;
        for secs in [2, 4, 5, 5] {
            t += c.wait(t).unwrap();
            assert_eq!(c.admit(t), Ok(true));
            assert_eq!(c.record_trap(t), Some(Duration::from_secs(secs)));
        }
        assert_eq!(c.consecutive_traps(), 8);
    }

    #[test]
    fn one_probe_at_a_time_after_a_backoff() {
        let t0 = Instant::now();
        let mut c = CrashLoop::new(config());
        for _ in 0..3 {
            c.record_trap(t0);
        }
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(c.admit(t1), Ok(true), "the probe");
        // The others wait one base at a time while the probe runs.
        assert_eq!(c.admit(t1), Err(Duration::from_secs(1)));
        assert_eq!(c.wait(t1), Some(Duration::from_secs(1)));
        // A probe that could not run frees the slot.
        c.record_not_run();
        assert_eq!(c.admit(t1), Ok(true));
        // A probe that does not trap releases everyone.
        c.record_success();
        assert_eq!(c.wait(t1), None);
        assert_eq!(c.admit(t1), Ok(false));
        assert_eq!(c.admit(t1), Ok(false));
    }

    #[test]
    fn success_releases() {
        let t0 = Instant::now();
        let mut c = CrashLoop::new(config());
        for _ in 0..3 {
            c.record_trap(t0);
        }
        assert!(c.wait(t0).is_some());
        c.record_success();
        assert_eq!(c.wait(t0), None);
        assert_eq!(c.consecutive_traps(), 0);
        assert_eq!(c.record_trap(t0), None);
        // The backoff starts over at `base`.
        c.record_trap(t0);
        assert_eq!(c.record_trap(t0), Some(Duration::from_secs(1)));
    }
}
