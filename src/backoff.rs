//! The retry schedule shared by the queue (a failed item's next claim) and the Proxmox
//! driver (a transient command failure): exponential growth with jitter.

use std::time::Duration;

/// Exponential backoff with jitter.
///
/// The `n`th retry (1-based) waits a random time in `[cap/2, cap]`, where
/// `cap = min(max, base * 2^(n-1))`: spread out so items failing together do not retry
/// together, but never less than half the nominal step ("equal jitter").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Nominal delay of the first retry.
    pub base: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
}

impl Backoff {
    /// The upper bound of the `retry`th delay: `min(max, base * 2^(retry-1))` (retry 0 counts as 1).
    pub fn cap(&self, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1);
        2u32.checked_pow(exp)
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.max, |d| d.min(self.max))
    }

    /// The delay before the `retry`th retry (1-based), with fresh randomness.
    pub fn delay(&self, retry: u32) -> Duration {
        // uuid's v4 generator is the crate's source of OS randomness.
        let bits = uuid::Uuid::new_v4().as_u128() as u64;
        self.delay_at(retry, bits as f64 / u64::MAX as f64)
    }

    /// The delay before the `retry`th retry for jitter `fraction` in `[0, 1]`
    /// (0 gives `cap/2`, 1 gives `cap`; out-of-range values are clamped).
    pub fn delay_at(&self, retry: u32, fraction: f64) -> Duration {
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        let cap = self.cap(retry).as_nanos();
        let low = cap / 2;
        let span = cap - low;
        // f64 is exact enough here; min() guards the rounding at fraction = 1.
        let jitter = ((span as f64 * fraction) as u128).min(span);
        from_nanos(low + jitter)
    }
}

impl Default for Backoff {
    /// 1 s, doubling, at most 5 minutes.
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

fn from_nanos(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // The remainder is below 10^9, so it fits.
    let sub = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
    Duration::new(secs, sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        base: Duration::from_secs(2),
        max: Duration::from_secs(60),
    };

    #[test]
    fn caps_double_then_stop_at_max() {
        let caps: Vec<u64> = (1..=7).map(|n| B.cap(n).as_secs()).collect();
        assert_eq!(caps, [2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(B.cap(0), B.cap(1));
        // Huge retry counts saturate instead of overflowing.
        assert_eq!(B.cap(33), B.max);
        assert_eq!(B.cap(u32::MAX), B.max);
    }

    #[test]
    fn delay_at_spans_half_cap_to_cap() {
        for n in 1..=10 {
            let cap = B.cap(n);
            assert_eq!(B.delay_at(n, 0.0), cap / 2);
            assert_eq!(B.delay_at(n, 1.0), cap);
            let mid = B.delay_at(n, 0.5);
            assert!(mid > cap / 2 && mid < cap, "{n}: {mid:?}");
        }
        assert_eq!(B.delay_at(3, -1.0), B.cap(3) / 2);
        assert_eq!(B.delay_at(3, 7.0), B.cap(3));
        assert_eq!(B.delay_at(3, f64::NAN), B.cap(3) / 2);
    }

    #[test]
    fn random_delays_stay_in_bounds_and_vary() {
        for n in [1, 2, 5, 30, 1000] {
            let cap = B.cap(n);
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..200 {
                let d = B.delay(n);
                assert!(
                    d >= cap / 2 && d <= cap,
                    "retry {n}: {d:?} outside [{cap:?}/2, {cap:?}]"
                );
                seen.insert(d);
            }
            assert!(
                seen.len() > 100,
                "retry {n}: only {} distinct delays",
                seen.len()
            );
        }
    }

    #[test]
    fn extreme_settings_do_not_panic() {
        let huge = Backoff {
            base: Duration::MAX,
            max: Duration::MAX,
        };
        assert_eq!(huge.delay_at(1, 1.0), Duration::MAX);
        assert!(huge.delay(40) >= Duration::MAX / 2);
        let zero = Backoff {
            base: Duration::ZERO,
            max: Duration::from_secs(1),
        };
        assert_eq!(zero.delay(5), Duration::ZERO);
        let sub_ms = Backoff {
            base: Duration::from_nanos(3),
            max: Duration::from_nanos(5),
        };
        assert!(sub_ms.delay(4) <= Duration::from_nanos(5));
    }
}
