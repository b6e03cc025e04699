//! Capped exponential backoff with jitter, for retrying a failing backend,
//! and [`retry`], the retry loop built on it.

use std::fmt::Display;
use std::pin::Pin;
use std::time::Duration;

/// Retry delays: 100 ms doubling up to a cap, each with "equal jitter"
/// (half fixed, half random) so that many retrying clients spread out
/// instead of hammering a recovering server in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl Backoff {
    /// Delays from `base`, doubling, never above `cap`.
    #[must_use]
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// One try of a [`retry`]ed operation: a future borrowing the state the
/// attempt was given (`Send`, as the futures of `#[async_trait]` methods are).
pub type Attempt<'a, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'a>>;

/// Runs `attempt` until it succeeds or fails with an error that `is_final`
/// says no retry can fix (that error is returned). Pauses for `backoff`'s
/// delays between attempts and logs every retry with `what` was being done.
/// A success resets `backoff`, so one backoff can pace a run of steps.
///
/// Each attempt gets `state` mutably: what its future borrows (a
/// subscription, the arguments of its call) goes there rather than in the
/// closure's captures, because a closure cannot lend its captures to the
/// future it returns. (An async closure could, but the compiler cannot yet
/// prove such a future `Send` inside a generic function.)
pub async fn retry<S: ?Sized, T, E: Display>(
    backoff: &mut Backoff,
    what: &str,
    is_final: impl Fn(&E) -> bool,
    state: &mut S,
    mut attempt: impl FnMut(&mut S) -> Attempt<'_, T, E>,
) -> Result<T, E> {
    loop {
        match attempt(state).await {
            Ok(value) => {
                backoff.reset();
                return Ok(value);
            }
            Err(e) if is_final(&e) => return Err(e),
            Err(e) => {
                let pause = backoff.next_delay();
                tracing::warn!(what, error = %e, ?pause, "failed; retrying");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// Fails with the given errors in turn, then succeeds with the number
    /// of attempts made.
    struct Failing {
        errors: std::slice::Iter<'static, &'static str>,
        attempts: usize,
    }

    fn failing(errors: &'static [&'static str]) -> Failing {
        Failing {
            errors: errors.iter(),
            attempts: 0,
        }
    }

    fn attempt(state: &mut Failing) -> Attempt<'_, usize, &'static str> {
        Box::pin(async move {
            state.attempts += 1;
            state.errors.next().map_or(Ok(state.attempts), |e| Err(*e))
        })
    }

    fn is_final(e: &&str) -> bool {
        *e == "final"
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_growing_pauses_until_success_then_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let started = Instant::now();
        let attempts = retry(
            &mut backoff,
            "testing",
            is_final,
            &mut failing(&["a", "b", "c"]),
            attempt,
        )
        .await;
        assert_eq!(attempts, Ok(4));
        // Pauses of 50..=100, 100..=200 and 200..=400 ms.
        let waited = started.elapsed();
        assert!(
            (Duration::from_millis(350)..=Duration::from_millis(700)).contains(&waited),
            "{waited:?}"
        );
        assert!(backoff.next_delay() <= Duration::from_millis(100), "reset");
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_error_ends_the_loop_at_once() {
        let mut backoff = Backoff::default();
        let started = Instant::now();
        let result = retry(
            &mut backoff,
            "testing",
            is_final,
            &mut failing(&["final"]),
            attempt,
        )
        .await;
        assert_eq!(result, Err("final"));
        assert_eq!(started.elapsed(), Duration::ZERO, "no pause");
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_error_after_retries_is_returned() {
        let mut backoff = Backoff::default();
        let result = retry(
            &mut backoff,
            "testing",
            is_final,
            &mut failing(&["a", "final"]),
            attempt,
        )
        .await;
        assert_eq!(result, Err("final"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_of_borrowed_state_can_run_on_another_thread() {
        let task = tokio::spawn(async {
            let mut backoff = Backoff::default();
            let mut state = failing(&["a"]);
            retry(&mut backoff, "testing", is_final, &mut state, attempt).await
        });
        assert_eq!(task.await.unwrap(), Ok(2));
    }
}
