//! Jittered exponential backoff between attempts to re-open a line, with its configuration
//! validated at construction (the shape of linkerd2-proxy's `exp-backoff`; style guide §2.3:
//! never hand-roll the doubling).
//!
//! The delay before attempt `n` (counting from 0) is `base(n) = min(min × 2ⁿ, max)`, shortened by
//! a random fraction of at most `jitter`: it lies in `[base(n) × (1 − jitter), base(n)]`. The
//! jitter only ever shortens the wait, so `max` is a promise to the operator: a machine is
//! never left without a reconnect attempt for longer than that. Spreading the attempts keeps a
//! hall of machines behind one device server that rebooted from reconnecting in lock step.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// A validated backoff policy. `Copy`, so a config can hand one to every poller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExponentialBackoff {
    min: Duration,
    max: Duration,
    jitter: f64,
}

/// Why a backoff configuration was refused. Alphabetical.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidBackoff {
    /// The jitter fraction is not a finite number in `0.0..=1.0`.
    #[error("backoff jitter must be a fraction between 0 and 1, not {0}")]
    Jitter(f64),
    /// The maximum delay is shorter than the minimum.
    #[error("backoff maximum {max:?} is shorter than the minimum {min:?}")]
    MaxBelowMin { min: Duration, max: Duration },
    /// The minimum delay is zero, which would make reconnects a busy loop.
    #[error("backoff minimum must be greater than zero")]
    ZeroMin,
}

impl ExponentialBackoff {
    /// 500 ms doubling to 30 s, jitter 0.5.
    pub const DEFAULT: Self =
        Self { min: Duration::from_millis(500), max: Duration::from_secs(30), jitter: 0.5 };

    /// A policy starting at `min`, doubling up to `max`, each delay shortened by a random
    /// fraction of up to `jitter` (0 = no jitter, 1 = anywhere from zero to the full delay).
    pub fn new(min: Duration, max: Duration, jitter: f64) -> Result<Self, InvalidBackoff> {
        if min.is_zero() {
            return Err(InvalidBackoff::ZeroMin);
        }
        if max < min {
            return Err(InvalidBackoff::MaxBelowMin { min, max });
        }
        if !jitter.is_finite() || !(0.0..=1.0).contains(&jitter) {
            return Err(InvalidBackoff::Jitter(jitter));
        }
        Ok(Self { min, max, jitter })
    }

    /// The delay before attempt `attempt` without jitter: `min × 2^attempt`, capped at `max`.
    pub fn base(&self, attempt: u32) -> Duration {
        2u32.checked_pow(attempt)
            .and_then(|factor| self.min.checked_mul(factor))
            .map_or(self.max, |d| d.min(self.max))
    }

    /// The delay before attempt `attempt` for a random draw `unit` in `[0, 1)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let base = self.base(attempt);
        let cut = (self.jitter * unit.clamp(0.0, 1.0)).clamp(0.0, 1.0);
        base.mul_f64(1.0 - cut)
    }

    /// A fresh sequence of delays, seeded from the thread's generator.
    pub fn start(&self) -> Backoff {
        Backoff { policy: *self, attempt: 0, rng: rand::make_rng() }
    }

    /// A reproducible sequence of delays, for tests.
    pub fn start_seeded(&self, seed: u64) -> Backoff {
        Backoff { policy: *self, attempt: 0, rng: SmallRng::seed_from_u64(seed) }
    }
}

impl Default for ExponentialBackoff {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The state of one line's backoff: how many attempts in a row have failed.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: ExponentialBackoff,
    attempt: u32,
    rng: SmallRng,
}

impl Backoff {
    /// The delay to wait before the next attempt; each call counts one more failed attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.policy.delay(self.attempt, self.rng.random::<f64>());
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Back to the shortest delay, after the line has proved healthy.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The policy.
    pub fn policy(&self) -> &ExponentialBackoff {
        &self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_zero_minimum_a_maximum_below_the_minimum_and_a_bad_jitter_are_refused() {
        assert_eq!(
            ExponentialBackoff::new(Duration::ZERO, ms(10), 0.1),
            Err(InvalidBackoff::ZeroMin)
        );
        assert_eq!(
            ExponentialBackoff::new(ms(10), ms(9), 0.1),
            Err(InvalidBackoff::MaxBelowMin { min: ms(10), max: ms(9) })
        );
        for jitter in [-0.1, 1.01, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                ExponentialBackoff::new(ms(1), ms(2), jitter),
                Err(InvalidBackoff::Jitter(_))
            ));
        }
        assert!(ExponentialBackoff::new(ms(1), ms(1), 0.0).is_ok());
        assert!(ExponentialBackoff::new(ms(1), ms(1), 1.0).is_ok());
    }

    #[test]
    fn the_base_delay_doubles_from_min_and_stops_at_max() {
        let b = ExponentialBackoff::new(ms(100), ms(1000), 0.0).unwrap();
        let bases: Vec<_> = (0..6).map(|n| b.base(n)).collect();
        assert_eq!(bases, [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]);
        // Far past the point where 2^n overflows, the delay stays at max instead of wrapping.
        assert_eq!(b.base(31), ms(1000));
        assert_eq!(b.base(32), ms(1000));
        assert_eq!(b.base(u32::MAX), ms(1000));
    }

    #[test]
    fn jitter_only_shortens_the_delay_by_at_most_the_jitter_fraction() {
        let b = ExponentialBackoff::new(ms(100), ms(1000), 0.25).unwrap();
        assert_eq!(b.delay(0, 0.0), ms(100));
        assert_eq!(b.delay(0, 1.0), ms(75));
        assert_eq!(b.delay(4, 0.5), ms(875));
    }

    #[test]
    fn drawn_delays_stay_within_bounds_and_actually_spread() {
        let policy = ExponentialBackoff::new(ms(100), ms(1000), 0.5).unwrap();
        let mut backoff = policy.start_seeded(7);
        let mut first_delays = Vec::new();
        for _ in 0..200 {
            let d = backoff.next_delay();
            assert!((ms(50)..=ms(100)).contains(&d), "{d:?}");
            first_delays.push(d);
            backoff.reset();
        }
        let lo = first_delays.iter().min().copied().unwrap();
        let hi = first_delays.iter().max().copied().unwrap();
        assert!(lo < ms(60) && hi > ms(90), "jitter does not spread: {lo:?}..{hi:?}");
        for attempt in 0..40u32 {
            let d = backoff.next_delay();
            let base = policy.base(attempt);
            assert!(d <= base && d >= base / 2, "attempt {attempt}: {d:?} vs {base:?}");
            assert!(d <= ms(1000));
        }
        assert_eq!(backoff.attempts(), 40);
    }

    #[test]
    fn reset_returns_to_the_minimum() {
        let mut backoff = ExponentialBackoff::new(ms(10), ms(1000), 0.0).unwrap().start();
        assert_eq!(
            [backoff.next_delay(), backoff.next_delay(), backoff.next_delay()],
            [ms(10), ms(20), ms(40)]
        );
        backoff.reset();
        assert_eq!(backoff.next_delay(), ms(10));
    }
}
