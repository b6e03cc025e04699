//! Waiting for work run on tokio's blocking pool (file I/O, compression).

use tokio::task::JoinError;

/// The work never ran: its runtime is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("cancelled: the runtime is shutting down")]
pub struct Cancelled;

/// Runs `f` on the blocking pool and waits for it.
///
/// A panic in `f` goes on unwinding here, as if `f` had been called in
/// place: it is a bug. A runtime shutting down cancels work not started
/// yet: that is [`Cancelled`], for the caller to handle like any failed
/// step (its work stays to be done), not a panic in the middle of an
/// orderly shutdown.
pub async fn run<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Cancelled> {
    finished(tokio::task::spawn_blocking(f).await)
}

fn finished<T>(joined: Result<T, JoinError>) -> Result<T, Cancelled> {
    match joined {
        Ok(value) => Ok(value),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Cancelled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_and_its_result_comes_back() {
        assert_eq!(run(|| 6 * 7).await.unwrap(), 42);
    }

    #[tokio::test]
    async fn cancelled_work_is_an_error_and_a_panic_stays_a_panic() {
        let never = tokio::spawn(std::future::pending::<()>());
        never.abort();
        assert!(matches!(finished(never.await), Err(Cancelled)));

        let panicked = tokio::spawn(async { panic!("disk on fire") }).await;
        let unwound =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| finished::<()>(panicked)))
                .unwrap_err();
        assert_eq!(unwound.downcast_ref::<&str>(), Some(&"disk on fire"));
    }
}
