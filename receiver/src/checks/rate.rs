//! Rate limit (429): this receiver's share of `spec.request.rateLimit`, a
//! token bucket. Checked last, just before the publish, so only events that
//! would be stored spend the budget: a forged flood is 401 and takes nothing
//! from the provider's events.

use std::sync::Mutex;
use std::time::Instant;

use hookline_api::validated::RateLimit;

use crate::Rejection;

/// A token bucket of `burst` tokens refilled at `per_second`. A mutex around
/// two numbers: held for a few arithmetic operations, once per event.
pub struct RateLimiter {
    limit: RateLimit,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl RateLimiter {
    /// A full bucket: a receiver that starts takes a burst at once.
    pub fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter {
            limit,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(limit.burst),
                refilled: Instant::now(),
            }),
        }
    }

    /// Takes a token, or refuses with the whole seconds until one is there
    /// (at least 1: `Retry-After` has no smaller unit).
    pub fn check(&self) -> Result<(), Rejection> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Result<(), Rejection> {
        let mut bucket = self
            .bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens =
            (bucket.tokens + elapsed * self.limit.per_second).min(f64::from(self.limit.burst));
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        // A float to integer `as` saturates, so a tiny rate cannot overflow.
        let wait = (1.0 - bucket.tokens) / self.limit.per_second;
        Err(Rejection::RateLimited {
            retry_after: wait.ceil().max(1.0) as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limiter(per_second: f64, burst: u32) -> RateLimiter {
        RateLimiter::new(RateLimit { per_second, burst })
    }

    fn retry_after(result: Result<(), Rejection>) -> u64 {
        match result {
            Err(Rejection::RateLimited { retry_after }) => retry_after,
            other => panic!("expected a 429, got {other:?}"),
        }
    }

    #[test]
    fn a_burst_passes_at_once_and_the_next_request_is_refused() {
        let limiter = limiter(1.0, 3);
        let now = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at(now).is_ok());
        }
        assert_eq!(retry_after(limiter.check_at(now)), 1);
    }

    #[test]
    fn tokens_come_back_at_the_rate() {
        let limiter = limiter(2.0, 1);
        let start = Instant::now();
        assert!(limiter.check_at(start).is_ok());
        assert!(
            limiter
                .check_at(start + Duration::from_millis(100))
                .is_err()
        );
        assert!(limiter.check_at(start + Duration::from_millis(500)).is_ok());
    }

    #[test]
    fn retry_after_is_the_whole_seconds_until_a_token() {
        let limiter = limiter(0.1, 1);
        let now = Instant::now();
        assert!(limiter.check_at(now).is_ok());
        assert_eq!(retry_after(limiter.check_at(now)), 10);
        assert_eq!(
            retry_after(limiter.check_at(now + Duration::from_millis(8_500))),
            2
        );
    }

    #[test]
    fn an_idle_bucket_holds_no_more_than_its_burst() {
        let limiter = limiter(100.0, 2);
        let later = Instant::now() + Duration::from_secs(60);
        assert!(limiter.check_at(later).is_ok());
        assert!(limiter.check_at(later).is_ok());
        assert!(limiter.check_at(later).is_err());
    }
}
