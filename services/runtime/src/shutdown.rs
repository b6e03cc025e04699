//! The signals that ask a process to stop (Unix, as the rest of the
//! runtime: it sets resource limits through `nix`).

use std::future::Future;
use tokio::signal::unix::{SignalKind, signal};

/// Listens for SIGINT (Ctrl-C) and SIGTERM from the moment it is called,
/// and resolves on the first of them.
///
/// The listeners are installed here, not when the future is first polled:
/// a process polls it only once its services run, and a SIGTERM that came
/// between the listener being bound and that first poll (an orchestrator
/// stopping a task that has just turned ready) took the signal's default
/// action and killed the process without its graceful stop.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    let interrupt = listen(SignalKind::interrupt(), "SIGINT");
    let terminate = listen(SignalKind::terminate(), "SIGTERM");
    async move {
        tokio::select! {
            () = interrupt => tracing::info!("SIGINT received, shutting down"),
            () = terminate => tracing::info!("SIGTERM received, shutting down"),
        }
    }
}

/// Installs the listener for `kind` now; a process that cannot listen is
/// told so and never resolves this signal.
fn listen(kind: SignalKind, name: &'static str) -> impl Future<Output = ()> + Send + 'static {
    let listener = signal(kind);
    if let Err(e) = &listener {
        tracing::error!(error = %e, "cannot listen for {name}");
    }
    async move {
        match listener {
            Ok(mut listener) => {
                listener.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::{Signal, raise};
    use std::time::Duration;

    /// A SIGTERM that arrives before the future is ever polled is not the
    /// process's death: it resolves the future. (Before the listeners were
    /// installed eagerly, this raise killed the test binary.)
    #[tokio::test]
    async fn a_signal_before_the_first_poll_is_caught_not_fatal() {
        let stop = shutdown_signal();
        raise(Signal::SIGTERM).unwrap();
        tokio::time::timeout(Duration::from_secs(10), stop)
            .await
            .expect("the SIGTERM raised before the first poll resolves it");
    }
}
