//! Exponential backoff with jitter for calls to Anvil: a node that lost its
//! server retries, but a rack of them never hammers it in lockstep. Pure:
//! the random source is a parameter.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays grow `base`, `2·base`, `4·base`, … up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The delay before the next try: "equal jitter", a uniformly random
    /// point in the upper half of the exponential step, so a delay is never
    /// shorter than half the step (no hammering) and the nodes of a rack
    /// spread out. `unit` is a random number in [0, 1).
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let step = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// Tries made so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// A small random number source for jitter (xorshift64*, seeded from the
/// clock and the PID): good enough to spread retries, needs no crate.
pub struct Jitter(u64);

impl Jitter {
    pub fn from_entropy() -> Jitter {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Jitter::seeded(nanos ^ (u64::from(std::process::id()) << 32))
    }

    pub fn seeded(seed: u64) -> Jitter {
        Jitter(seed.max(1))
    }

    /// A number in [0, 1).
    pub fn unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        // With the top of the jitter range the delay is the full step.
        let top: Vec<u64> = (0..10)
            .map(|_| b.next_delay(0.999_999).as_millis() as u64)
            .collect();
        assert_eq!(
            top,
            [
                499, 999, 1999, 3999, 7999, 15999, 29999, 29999, 29999, 29999
            ]
        );
        assert_eq!(b.attempts(), 10);
    }

    #[test]
    fn never_shorter_than_half_the_step() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(b.next_delay(0.0), Duration::from_millis(500));
        assert_eq!(b.next_delay(0.0), Duration::from_secs(1));
        assert_eq!(b.next_delay(0.5), Duration::from_secs(3));
    }

    #[test]
    fn many_attempts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..1000 {
            assert!(b.next_delay(0.7) <= Duration::from_secs(30));
        }
    }

    #[test]
    fn jitter_is_in_range_and_spread() {
        let mut j = Jitter::seeded(42);
        let xs: Vec<f64> = (0..1000).map(|_| j.unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let low = xs.iter().filter(|x| **x < 0.5).count();
        assert!((400..600).contains(&low), "{low} of 1000 below 0.5");
    }
}
