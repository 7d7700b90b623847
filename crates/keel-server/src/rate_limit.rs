//! Per-token rate limits on publish (events per second) and pull (requests per second): a
//! token bucket per token and kind, holding at most one second's worth, on each node.
//!
//! A publish's events are counted after it is served (its batch size is known then), so a
//! batch may take the bucket below zero; the token is then refused (429 with `Retry-After`)
//! until the bucket refills to one. Over any second the token gets at most its rate plus one
//! batch.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// Events published.
    Publish,
    /// Pull requests.
    Pull,
}

/// Events a publish served: set by the handler on its answer, read by the middleware that
/// charges the token.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Published(pub(crate) u64);

struct Bucket {
    /// What may be spent now; below zero after a batch larger than what was left.
    available: f64,
    refilled_at: Instant,
}

/// The buckets of every token that has a limit (one entry per token and kind: bounded by
/// the number of tokens).
#[derive(Default)]
pub(crate) struct RateLimiter {
    buckets: Mutex<HashMap<(String, Kind), Bucket>>,
}

impl RateLimiter {
    /// Whether `token` may go on at `per_second`: `Err` with how long to wait when its
    /// bucket holds less than one. Spends nothing.
    pub(crate) fn admit(
        &self,
        token: &str,
        kind: Kind,
        per_second: u32,
        now: Instant,
    ) -> Result<(), Duration> {
        self.with_bucket(token, kind, per_second, now, |bucket| {
            if bucket.available >= 1.0 {
                return Ok(());
            }
            let missing = 1.0 - bucket.available;
            Err(Duration::from_secs_f64(missing / f64::from(per_second)))
        })
    }

    /// Spends `count` of `token`'s bucket (which may go below zero).
    pub(crate) fn charge(
        &self,
        token: &str,
        kind: Kind,
        per_second: u32,
        count: u64,
        now: Instant,
    ) {
        self.with_bucket(token, kind, per_second, now, |bucket| {
            // Precision: counts are far below 2^52.
            #[allow(clippy::cast_precision_loss)]
            let spent = count as f64;
            bucket.available -= spent;
        });
    }

    fn with_bucket<T>(
        &self,
        token: &str,
        kind: Kind,
        per_second: u32,
        now: Instant,
        act: impl FnOnce(&mut Bucket) -> T,
    ) -> T {
        let rate = f64::from(per_second);
        let mut buckets = self.buckets.lock().expect("rate limit lock");
        let bucket = buckets.entry((token.to_owned(), kind)).or_insert(Bucket {
            available: rate,
            refilled_at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled_at);
        bucket.available = (bucket.available + elapsed.as_secs_f64() * rate).min(rate);
        bucket.refilled_at = now;
        act(bucket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: a token gets its rate per second and a burst of one second's worth, no more; a
    // large batch puts it in debt, refused until refilled, with the wait it needs.
    #[test]
    fn buckets_refill_at_the_rate_and_refuse_with_the_wait() {
        let limiter = RateLimiter::default();
        let start = Instant::now();
        for _ in 0..10 {
            assert!(limiter.admit("t", Kind::Pull, 10, start).is_ok());
            limiter.charge("t", Kind::Pull, 10, 1, start);
        }
        let wait = limiter.admit("t", Kind::Pull, 10, start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        let later = start + Duration::from_millis(100);
        assert!(limiter.admit("t", Kind::Pull, 10, later).is_ok());
        // Another kind and another token have their own buckets.
        assert!(limiter.admit("t", Kind::Publish, 10, start).is_ok());
        assert!(limiter.admit("u", Kind::Pull, 10, start).is_ok());
        // A batch of 30 at 10/s: 2 s of debt, then 100 ms to reach one.
        limiter.charge("t", Kind::Publish, 10, 30, start);
        let wait = limiter.admit("t", Kind::Publish, 10, start).unwrap_err();
        assert!((wait.as_secs_f64() - 2.1).abs() < 1e-9, "{wait:?}");
        // Idle time refills only up to one second's worth.
        let idle = start + Duration::from_secs(60);
        limiter.charge("u", Kind::Pull, 10, 10, idle);
        assert!(limiter.admit("u", Kind::Pull, 10, idle).is_err());
    }
}
