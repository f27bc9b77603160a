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
#[derive(Debug, Clone)]
pub struct CrashLoop {
    config: CrashLoopConfig,
    consecutive_traps: u32,
    until: Option<Instant>,
}

impl CrashLoop {
    /// A listener with no traps yet.
    pub fn new(config: CrashLoopConfig) -> Self {
        Self {
            config,
            consecutive_traps: 0,
            until: None,
        }
    }

    /// When the listener is backed off at `now`, the instant the backoff ends.
    pub fn backed_off_until(&self, now: Instant) -> Option<Instant> {
        self.until.filter(|until| *until > now)
    }

    /// Consecutive traps so far.
    pub fn consecutive_traps(&self) -> u32 {
        self.consecutive_traps
    }

    /// Records a trap at `now`; returns the backoff it engaged, if any.
    pub fn record_trap(&mut self, now: Instant) -> Option<Duration> {
        self.consecutive_traps = self.consecutive_traps.saturating_add(1);
        let over = self
            .consecutive_traps
            .checked_sub(self.config.threshold.max(1))?;
        let factor = 2u32.saturating_pow(over.min(31));
        let delay = self.config.base.saturating_mul(factor).min(self.config.max);
        self.until = Some(now + delay);
        Some(delay)
    }

    /// Records a call that did not trap (success or error return): the backoff is released.
    pub fn record_success(&mut self) {
        self.consecutive_traps = 0;
        self.until = None;
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
    fn engages_after_threshold_doubles_and_caps() {
        let t0 = Instant::now();
        let mut c = CrashLoop::new(config());
        assert_eq!(c.record_trap(t0), None);
        assert_eq!(c.record_trap(t0), None);
        assert_eq!(c.backed_off_until(t0), None);
        assert_eq!(c.record_trap(t0), Some(Duration::from_secs(1)));
        assert_eq!(c.backed_off_until(t0), Some(t0 + Duration::from_secs(1)));
        // Half-open after the delay: allowed to try again.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(c.backed_off_until(t1), None);
        assert_eq!(c.record_trap(t1), Some(Duration::from_secs(2)));
        assert_eq!(c.record_trap(t1), Some(Duration::from_secs(4)));
        assert_eq!(c.record_trap(t1), Some(Duration::from_secs(5)));
        assert_eq!(c.consecutive_traps(), 6);
    }

    #[test]
    fn success_releases() {
        let t0 = Instant::now();
        let mut c = CrashLoop::new(config());
        for _ in 0..3 {
            c.record_trap(t0);
        }
        assert!(c.backed_off_until(t0).is_some());
        c.record_success();
        assert_eq!(c.backed_off_until(t0), None);
        assert_eq!(c.consecutive_traps(), 0);
        assert_eq!(c.record_trap(t0), None);
    }
}
