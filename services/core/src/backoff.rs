//! Capped exponential backoff with jitter, for retrying a failing backend,
//! and [`retry`], the retry loop built on it.

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

/// Why [`retry`] gave up.
#[derive(Debug, PartialEq, Eq)]
pub enum GaveUp<E> {
    /// An error no retry can fix (`is_final` said so).
    Final(E),
    /// `wait` said to stop trying (the caller is shutting down).
    Stopped,
}

/// Runs `attempt` until it succeeds or fails with an error that `is_final`
/// says no retry can fix. After any other failure, `wait` is handed the
/// error and `backoff`'s next delay: it logs and reports as its caller
/// needs, waits (the delay, or less), and says whether to try again. A
/// success resets `backoff`, so one backoff can pace a run of steps.
///
/// Each attempt gets `state` mutably: what its future borrows (a
/// subscription, the arguments of its call) goes there rather than in the
/// closure's captures, because a closure cannot lend its captures to the
/// future it returns. (An async closure could, but the compiler cannot yet
/// prove such a future `Send` inside a generic function.)
pub async fn retry<S: ?Sized, T, E, W: Future<Output = bool>>(
    backoff: &mut Backoff,
    is_final: impl Fn(&E) -> bool,
    state: &mut S,
    mut attempt: impl FnMut(&mut S) -> Attempt<'_, T, E>,
    mut wait: impl FnMut(&E, Duration) -> W,
) -> Result<T, GaveUp<E>> {
    loop {
        match attempt(state).await {
            Ok(value) => {
                backoff.reset();
                return Ok(value);
            }
            Err(e) if is_final(&e) => return Err(GaveUp::Final(e)),
            Err(e) => {
                if !wait(&e, backoff.next_delay()).await {
                    return Err(GaveUp::Stopped);
                }
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

    /// Sleeps the whole delay and tries again, as a plain caller would.
    fn sleep(_: &&str, pause: Duration) -> impl Future<Output = bool> + use<> {
        async move {
            tokio::time::sleep(pause).await;
            true
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_growing_pauses_until_success_then_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let started = Instant::now();
        let attempts = retry(
            &mut backoff,
            is_final,
            &mut failing(&["a", "b", "c"]),
            attempt,
            sleep,
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
            is_final,
            &mut failing(&["final"]),
            attempt,
            sleep,
        )
        .await;
        assert_eq!(result, Err(GaveUp::Final("final")));
        assert_eq!(started.elapsed(), Duration::ZERO, "no pause");
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_error_after_retries_is_returned() {
        let mut backoff = Backoff::default();
        let result = retry(
            &mut backoff,
            is_final,
            &mut failing(&["a", "final"]),
            attempt,
            sleep,
        )
        .await;
        assert_eq!(result, Err(GaveUp::Final("final")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_says_stop_ends_the_loop_with_the_delay_it_was_given() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut delays = Vec::new();
        let result = retry(
            &mut backoff,
            is_final,
            &mut failing(&["a", "b", "c"]),
            attempt,
            |e, pause| {
                delays.push((*e, pause));
                std::future::ready(delays.len() < 2)
            },
        )
        .await;
        assert_eq!(result, Err(GaveUp::Stopped));
        assert_eq!(
            delays.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(
            delays[1].1 >= Duration::from_millis(100),
            "the backoff grows"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_of_borrowed_state_can_run_on_another_thread() {
        let task = tokio::spawn(async {
            let mut backoff = Backoff::default();
            let mut state = failing(&["a"]);
            retry(&mut backoff, is_final, &mut state, attempt, sleep).await
        });
        assert_eq!(task.await.unwrap(), Ok(2));
    }
}
