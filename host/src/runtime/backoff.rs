//! Crash-loop protection: a listener that traps on K consecutive calls is backed off exponentially.
//!
//! Pure logic over explicit instants so it is tested without sleeping.

use std::time::{Duration, Instant};

/// Settings of [`CrashLoop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashLoopConfig {
    /// Consecutive traps that engage the backoff.
    pub threshold: u32,
    /// First backoff; doubles with every further one.
    pub base: Duration,
    /// Longest backoff.
    pub max: Duration,
    /// How long a probe may hold its slot: longer than any call can take, so a probe whose
    /// outcome never comes back (a panic in host code) cannot stall the listener for good.
    pub probe_lease: Duration,
}

/// The admission of one call ([`CrashLoop::admit`]), handed back with its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The backoffs engaged before the call was admitted.
    epoch: u64,
    /// The call probes the listener after a backoff.
    probe: bool,
    /// Which probe (a serial number), when it is one.
    probe_id: u64,
    /// Its success says the listener handles events (not so for the `error` export).
    releases: bool,
}

impl Ticket {
    /// Whether the call is the probe after a backoff.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// Tracks consecutive traps of one listener and decides whether it may be called now.
///
/// After `threshold` consecutive traps the listener is backed off for `base`. When a backoff
/// ends, one call probes the listener ([`CrashLoop::admit`]) while the others keep waiting; if
/// it traps, the next backoff is twice as long (up to `max`). Only the probe, or a call
/// admitted since the last backoff engaged, can engage the next one: traps of calls that
/// started earlier are already answered, so many workers cannot run the backoff up to its
/// maximum at once. Any event call that does not trap releases the backoff.
#[derive(Debug, Clone)]
pub struct CrashLoop {
    config: CrashLoopConfig,
    consecutive_traps: u32,
    /// Backoffs since the last call that did not trap: the exponent of the next one.
    backoffs: u32,
    until: Option<Instant>,
    /// The running probe: its serial number, and when it was admitted or its call started.
    probe: Option<(u64, Instant)>,
    /// Serial number of the last probe admitted.
    probes: u64,
    /// Bumped by every backoff engaged.
    epoch: u64,
    /// See [`CrashLoop::changes`].
    changes: u64,
}

impl CrashLoop {
    /// A listener with no traps yet.
    pub fn new(config: CrashLoopConfig) -> Self {
        Self {
            config,
            consecutive_traps: 0,
            backoffs: 0,
            until: None,
            probe: None,
            probes: 0,
            epoch: 0,
            changes: 0,
        }
    }

    /// How long a call at `now` has to wait: the rest of the backoff, or while another call
    /// probes the listener after it, the rest of the probe's lease (the probe's outcome ends the
    /// wait sooner: [`CrashLoop::changes`]). `None`: it may run.
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        let until = self.until?;
        if until > now {
            return Some(until - now);
        }
        self.probe_lease_left(now)
    }

    /// Whether a call at `now` is held back by another call's probe (not by the backoff itself).
    pub fn probing(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| until <= now) && self.probe_lease_left(now).is_some()
    }

    /// The rest of the running probe's lease, if a probe holds the slot.
    fn probe_lease_left(&self, now: Instant) -> Option<Duration> {
        let (_, since) = self.probe?;
        let left = self
            .config
            .probe_lease
            .saturating_sub(now.saturating_duration_since(since));
        (!left.is_zero()).then_some(left)
    }

    /// Counts the changes that can let a waiting call run sooner than its [`CrashLoop::wait`]
    /// said: a probe ended (or was handed back), a backoff was released or a new one engaged.
    /// Callers that hold calls back wake them when it moves.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Lets an event call at `now` run (the probe, when a backoff has ended), or says how long
    /// it has to wait ([`CrashLoop::wait`]).
    pub fn admit(&mut self, now: Instant) -> Result<Ticket, Duration> {
        if let Some(wait) = self.wait(now) {
            return Err(wait);
        }
        let probe = self.until.is_some();
        if probe {
            self.probes += 1;
            self.probe = Some((self.probes, now));
        }
        Ok(Ticket {
            epoch: self.epoch,
            probe,
            probe_id: if probe { self.probes } else { 0 },
            releases: true,
        })
    }

    /// Lets a call that says nothing about event handling (the `error` export) run at `now`:
    /// only while no backoff is engaged. It never probes, and its success releases nothing.
    pub fn admit_aside(&mut self, now: Instant) -> Result<Ticket, Duration> {
        if self.until.is_some() {
            // After the backoff, while nobody probes yet: held back until a probe succeeds.
            return Err(self.wait(now).unwrap_or(self.config.base));
        }
        Ok(Ticket {
            epoch: self.epoch,
            probe: false,
            probe_id: 0,
            releases: false,
        })
    }

    /// A ticket for a call that is not held back (a `rollback`: it undoes what the listener
    /// did for the event in this attempt).
    pub fn pass(&self) -> Ticket {
        Ticket {
            epoch: self.epoch,
            probe: false,
            probe_id: 0,
            releases: true,
        }
    }

    /// The call of `ticket` starts at `now`: a probe's lease runs from here (the listeners before
    /// it in its chain may have taken a while).
    pub fn call_starts(&mut self, now: Instant, ticket: Ticket) {
        if self.is_current_probe(ticket) {
            self.probe = Some((ticket.probe_id, now));
        }
    }

    /// Whether `ticket` is the probe that holds the slot now (not one whose lease ran out).
    fn is_current_probe(&self, ticket: Ticket) -> bool {
        ticket.probe && self.probe.is_some_and(|(id, _)| id == ticket.probe_id)
    }

    /// Consecutive traps so far.
    pub fn consecutive_traps(&self) -> u32 {
        self.consecutive_traps
    }

    /// Records a trap at `now` of the call admitted with `ticket`; returns the backoff it
    /// engaged, if any.
    pub fn record_trap(&mut self, now: Instant, ticket: Ticket) -> Option<Duration> {
        self.consecutive_traps = self.consecutive_traps.saturating_add(1);
        let current =
            self.is_current_probe(ticket) || (ticket.epoch == self.epoch && self.until.is_none());
        if !current || self.consecutive_traps < self.config.threshold.max(1) {
            return None;
        }
        let factor = 2u32.saturating_pow(self.backoffs.min(31));
        let delay = self.config.base.saturating_mul(factor).min(self.config.max);
        self.backoffs = self.backoffs.saturating_add(1);
        self.until = Some(now + delay);
        self.probe = None;
        self.epoch += 1;
        self.changes += 1;
        Some(delay)
    }

    /// Records a call that did not trap (success or error return): the backoff is released,
    /// unless the call says nothing about event handling.
    pub fn record_success(&mut self, ticket: Ticket) {
        if !ticket.releases {
            return;
        }
        if self.until.is_some() || self.probe.is_some() {
            self.changes += 1;
        }
        self.consecutive_traps = 0;
        self.backoffs = 0;
        self.until = None;
        self.probe = None;
    }

    /// Records an admitted call that was not made (its chain failed first, or no instance could
    /// be built): if it was the probe, the next call may probe.
    pub fn record_not_run(&mut self, ticket: Ticket) {
        if self.is_current_probe(ticket) {
            self.probe = None;
            self.changes += 1;
        }
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
            probe_lease: Duration::from_secs(40),
        }
    }

    /// A listener whose third consecutive trap, at the returned instant, engaged a 1 s backoff.
    fn backed_off() -> (CrashLoop, Instant) {
        let t0 = Instant::now();
        let mut c = CrashLoop::new(config());
        for _ in 0..3 {
            trap(&mut c, t0);
        }
        (c, t0)
    }

    /// Admits a call at `t` and records a trap for it.
    fn trap(c: &mut CrashLoop, t: Instant) -> Option<Duration> {
        let ticket = c.admit(t).expect("admitted");
        c.record_trap(t, ticket)
    }

    #[test]
    fn engages_after_threshold_doubles_per_backoff_and_caps() {
        let t0 = Instant::now();
        let mut c = CrashLoop::new(config());
        // Four calls running at once, all admitted before any trap.
        let tickets: Vec<Ticket> = (0..4).map(|_| c.admit(t0).unwrap()).collect();
        assert_eq!(c.record_trap(t0, tickets[0]), None);
        assert_eq!(c.record_trap(t0, tickets[1]), None);
        assert_eq!(c.wait(t0), None);
        assert_eq!(c.record_trap(t0, tickets[2]), Some(Duration::from_secs(1)));
        assert_eq!(c.wait(t0), Some(Duration::from_secs(1)));
        assert_eq!(c.admit(t0), Err(Duration::from_secs(1)));
        // A call that was already running traps too, even after the window: the backoff that
        // answered it does not grow.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(c.record_trap(t1, tickets[3]), None);
        assert_eq!(c.wait(t1), None);
        // Each backoff that ends lets one probe through; its trap doubles the next one.
        let mut t = t0;
        for secs in [2, 4, 5, 5] {
            t += c.wait(t).unwrap_or_default();
            let probe = c.admit(t).unwrap();
            assert!(probe.is_probe());
            assert_eq!(c.record_trap(t, probe), Some(Duration::from_secs(secs)));
        }
        assert_eq!(c.consecutive_traps(), 8);
    }

    #[test]
    fn one_probe_at_a_time_after_a_backoff() {
        let (mut c, t0) = backed_off();
        let t1 = t0 + Duration::from_secs(1);
        assert!(!c.probing(t0), "held back by the backoff itself");
        let probe = c.admit(t1).unwrap();
        assert!(probe.is_probe());
        // The others wait, at most for the rest of the probe's lease; the probe's outcome
        // moves `changes`, which wakes them sooner.
        assert!(c.probing(t1));
        assert_eq!(c.admit(t1), Err(Duration::from_secs(40)));
        assert_eq!(
            c.wait(t1 + Duration::from_secs(15)),
            Some(Duration::from_secs(25))
        );
        let changes = c.changes();
        // A probe that was not made frees the slot; a non-probe's "not run" does not.
        c.record_not_run(c.pass());
        assert!(c.admit(t1).is_err());
        assert_eq!(c.changes(), changes, "nothing a waiter could use");
        c.record_not_run(probe);
        assert_eq!(
            c.changes(),
            changes + 1,
            "the slot is free: wake the waiters"
        );
        assert!(!c.probing(t1));
        let probe = c.admit(t1).unwrap();
        assert!(probe.is_probe());
        // A probe that does not trap releases everyone.
        c.record_success(probe);
        assert_eq!(c.changes(), changes + 2);
        assert_eq!(c.wait(t1), None);
        assert!(!c.admit(t1).unwrap().is_probe());
        // Successes with nothing to release wake nobody.
        c.record_success(c.pass());
        assert_eq!(c.changes(), changes + 2);
    }

    #[test]
    fn a_probe_that_traps_again_wakes_the_waiters_into_the_next_backoff() {
        let (mut c, t0) = backed_off();
        let t1 = t0 + Duration::from_secs(1);
        let probe = c.admit(t1).unwrap();
        let changes = c.changes();
        assert_eq!(c.record_trap(t1, probe), Some(Duration::from_secs(2)));
        assert_eq!(c.changes(), changes + 1);
        assert!(!c.probing(t1));
        assert_eq!(c.admit(t1), Err(Duration::from_secs(2)));
    }

    #[test]
    fn a_lost_probe_expires_with_its_lease() {
        let (mut c, t0) = backed_off();
        let t1 = t0 + Duration::from_secs(1);
        assert!(c.admit(t1).unwrap().is_probe());
        // Its outcome never comes back (say a panic in host code).
        assert!(c.admit(t1 + Duration::from_secs(39)).is_err());
        assert!(c.admit(t1 + Duration::from_secs(40)).unwrap().is_probe());
    }

    #[test]
    fn a_probe_whose_lease_ran_out_neither_engages_nor_frees_the_next() {
        let (mut c, t0) = backed_off();
        let t1 = t0 + Duration::from_secs(1);
        let first = c.admit(t1).unwrap();
        // Its call starts late (the chain before it was slow): the lease runs from there.
        c.call_starts(t1 + Duration::from_secs(30), first);
        assert!(c.admit(t1 + Duration::from_secs(69)).is_err());
        let t2 = t1 + Duration::from_secs(70);
        let second = c.admit(t2).unwrap();
        assert!(second.is_probe());
        // The first one's outcome comes at last: it is not the probe any more.
        c.record_not_run(first);
        assert!(
            c.admit(t2).is_err(),
            "the second probe still holds the slot"
        );
        assert_eq!(
            c.record_trap(t2, first),
            None,
            "a stale probe does not engage a backoff"
        );
        assert_eq!(c.record_trap(t2, second), Some(Duration::from_secs(2)));
    }

    #[test]
    fn error_export_calls_neither_probe_nor_release() {
        let (mut c, t0) = backed_off();
        // While backed off, and after it while nobody probes yet: not admitted.
        assert!(c.admit_aside(t0).is_err());
        let t1 = t0 + Duration::from_secs(1);
        assert!(c.admit_aside(t1).is_err());
        // Without a backoff it runs, and its success does not reset the count of traps.
        let mut c = CrashLoop::new(config());
        trap(&mut c, t0);
        trap(&mut c, t0);
        let aside = c.admit_aside(t0).unwrap();
        c.record_success(aside);
        assert_eq!(c.consecutive_traps(), 2);
        assert_eq!(trap(&mut c, t0), Some(Duration::from_secs(1)));
    }

    #[test]
    fn success_releases() {
        let (mut c, t0) = backed_off();
        assert!(c.wait(t0).is_some());
        c.record_success(c.pass());
        assert_eq!(c.wait(t0), None);
        assert_eq!(c.consecutive_traps(), 0);
        assert_eq!(trap(&mut c, t0), None);
        // The backoff starts over at `base`.
        trap(&mut c, t0);
        assert_eq!(trap(&mut c, t0), Some(Duration::from_secs(1)));
    }
}
