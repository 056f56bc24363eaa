//! Storage calls retried with exponential backoff within a deadline.
//!
//! Azure answers a partition at its limit with 503 Server Busy or 500 Operation Timeout and asks
//! clients to back off exponentially ("Scalability and performance targets for Blob storage",
//! learn.microsoft.com/azure/storage/blobs/scalability-targets). What is retried: failures the
//! backend marks transient (5xx, 408, 429, timeouts, resets, a body cut short). What is not: a
//! refusal (403, 400), which the same request would meet again. Every failure wakes the health
//! watch; once the watch has found storage down, retrying stops (an outage is a miss at once, not
//! after the whole budget).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::Failure;
use crate::storage::{Health, StoreError};

/// The first pause between two attempts; each pause doubles up to [`LONGEST_PAUSE`].
pub const FIRST_PAUSE: Duration = Duration::from_millis(100);
pub const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// Runs `attempt` until it succeeds, fails for good, the watch finds storage down, or the next
/// attempt could not start before `deadline`. Each attempt is bounded by the time left. Counts
/// the retries in `retries`.
pub async fn within<T, F, Fut>(
    deadline: Instant,
    health: &Health,
    retries: &AtomicU64,
    mut attempt: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut attempts: u32 = 0;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let failure = match tokio::time::timeout(left, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(failure)) => failure,
            Err(_) => Failure::transient(StoreError::Backend(
                "no answer within the read budget".into(),
            )),
        };
        health.wake();
        let given_up = |error: StoreError| {
            StoreError::Backend(format!("{error} (gave up after {attempts} attempt(s))"))
        };
        if !failure.transient {
            return Err(failure.error);
        }
        let pause = pause(attempts, jitter());
        if Instant::now() + pause >= deadline {
            return Err(given_up(failure.error));
        }
        tokio::time::sleep(pause).await;
        if !health.is_healthy() {
            return Err(given_up(failure.error));
        }
        retries.fetch_add(1, Ordering::Relaxed);
    }
}

/// The pause after the `attempt`-th failure: half of the exponential step, plus `jitter` (0 to 1)
/// of the other half, so that the clients of a busy partition do not come back in step.
pub fn pause(attempt: u32, jitter: f64) -> Duration {
    let step = FIRST_PAUSE
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(LONGEST_PAUSE);
    step / 2 + (step / 2).mul_f64(jitter.clamp(0.0, 1.0))
}

/// A number from 0 to 1, from the operating system's random source (0.5 if it fails).
pub fn jitter() -> f64 {
    getrandom::u32()
        .map(|n| f64::from(n) / f64::from(u32::MAX))
        .unwrap_or(0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_a_second_with_jitter_inside_the_step() {
        let steps: Vec<Duration> = (1..=6).map(|a| pause(a, 1.0)).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            steps,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        assert_eq!(pause(1, 0.0), ms(50));
        assert_eq!(pause(3, 0.5), ms(300));
        assert_eq!(pause(40, 1.0), ms(1000), "no overflow on long runs");
    }
}
