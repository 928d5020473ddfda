//! Reconnect backoff: exponential with full jitter, as cloudflared's
//! `retry.BackoffHandler` (edge-protocol.md §7): before retry `n` (0-based)
//! wait a uniformly random time in `[0, base·2^min(n, max_exponent))`.
//! With the defaults (1 s, exponent cap 6) the ceiling grows 1 s, 2 s, 4 s …
//! up to 64 s ("Retrying connection in up to 1m4s").

use std::time::Duration;

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Ceiling of the first wait.
    pub base: Duration,
    /// The exponent stops growing here (cloudflared: `--retries` + 1 = 6).
    pub max_exponent: u32,
}

impl BackoffPolicy {
    /// cloudflared's defaults: 1 s base, ceiling capped at 64 s.
    pub const DEFAULT: BackoffPolicy = BackoffPolicy {
        base: Duration::from_secs(1),
        max_exponent: 6,
    };

    /// Policy for `--retries N` (the exponent cap becomes `N + 1`).
    pub fn with_retries(retries: u32) -> BackoffPolicy {
        BackoffPolicy {
            max_exponent: retries.saturating_add(1).min(30),
            ..BackoffPolicy::DEFAULT
        }
    }

    /// The largest wait before retry number `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.min(self.max_exponent).min(30);
        self.base.saturating_mul(1u32 << exp)
    }

    /// The wait before retry `attempt`, given `jitter` in `[0, 1)` (values
    /// outside are clamped). Pure: the caller supplies the randomness.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let j = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        let ceiling = self.ceiling(attempt);
        // f64 rounding may land a hair above the ceiling; never exceed it.
        ceiling.mul_f64(j).min(ceiling)
    }

    /// [`BackoffPolicy::delay`] with fresh randomness.
    pub fn random_delay(&self, attempt: u32) -> Duration {
        self.delay(attempt, fastrand::f64())
    }
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ceilings_match_cloudflared() {
        let p = BackoffPolicy::DEFAULT;
        let secs: Vec<u64> = (0..9).map(|n| p.ceiling(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 64, 64]);
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(64));
        assert_eq!(BackoffPolicy::with_retries(2).ceiling(10).as_secs(), 8);
    }

    #[test]
    fn jitter_scales_the_ceiling() {
        let p = BackoffPolicy::DEFAULT;
        assert_eq!(p.delay(3, 0.0), Duration::ZERO);
        assert_eq!(p.delay(3, 0.5), Duration::from_secs(4));
        assert_eq!(p.delay(3, 7.0), Duration::from_secs(8));
        assert_eq!(p.delay(3, f64::NAN), Duration::ZERO);
    }

    /// The sleep a reconnect loop performs honours the delay under a paused
    /// clock (no real waiting).
    #[tokio::test(start_paused = true)]
    async fn sleeps_with_paused_time() {
        let p = BackoffPolicy::DEFAULT;
        let start = tokio::time::Instant::now();
        for attempt in 0..8 {
            tokio::time::sleep(p.delay(attempt, 0.999)).await;
        }
        let waited = start.elapsed();
        // 0.999 × (1+2+4+8+16+32+64+64) s
        assert!(waited > Duration::from_secs(190) && waited < Duration::from_secs(191));
    }

    proptest! {
        #[test]
        fn delay_is_bounded(attempt in any::<u32>(), j in any::<f64>(), base_ms in 1u64..10_000, max_exp in 0u32..40) {
            let p = BackoffPolicy { base: Duration::from_millis(base_ms), max_exponent: max_exp };
            let d = p.delay(attempt, j);
            prop_assert!(d <= p.ceiling(attempt));
            prop_assert!(p.ceiling(attempt) <= p.ceiling(attempt.saturating_add(1)));
        }
    }
}
