//! A token bucket limiting one listener's cluster requests (QPS and burst).

use std::time::{Duration, Instant};

/// Token bucket; pure logic over explicit instants.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `qps` per second (both at least 1).
    pub fn new(qps: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            qps: f64::from(qps.max(1)),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token at `now`: returns how long the caller must wait before its request may go,
    /// or `None` (nothing taken) when that wait would exceed `max_wait`.
    pub fn reserve(&mut self, now: Instant, max_wait: Duration) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.qps).min(self.burst);
        self.last = now;
        let wait = if self.tokens >= 1.0 {
            0.0
        } else {
            (1.0 - self.tokens) / self.qps
        };
        let wait = Duration::from_secs_f64(wait);
        if wait > max_wait {
            return None;
        }
        self.tokens -= 1.0;
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_qps_then_refusal() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2, 3, t0);
        for _ in 0..3 {
            assert_eq!(b.reserve(t0, Duration::ZERO), Some(Duration::ZERO));
        }
        assert_eq!(
            b.reserve(t0, Duration::from_millis(100)),
            None,
            "would wait 500 ms"
        );
        assert_eq!(
            b.reserve(t0, Duration::from_secs(1)),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            b.reserve(t0, Duration::from_secs(1)),
            Some(Duration::from_secs(1))
        );
        // After two seconds the bucket is refilled (capped at burst).
        let t1 = t0 + Duration::from_secs(10);
        for _ in 0..3 {
            assert_eq!(b.reserve(t1, Duration::ZERO), Some(Duration::ZERO));
        }
        assert_eq!(b.reserve(t1, Duration::ZERO), None);
    }
}
