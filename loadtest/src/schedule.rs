//! When the run sends. Bikes and viewers connect first and the clock for
//! `--duration` starts once all of them are on line, as a fleet is connected
//! before its riders start; how long connecting took is reported apart.

use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long bikes and viewers stay connected after sending stops: the last
/// answers and pushes still arrive, and thousands of sockets closing at once
/// do not overlap the measured seconds (a real fleet does not hang up all at
/// the same moment).
pub const DRAIN: Duration = Duration::from_secs(2);

/// The sending window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Sending starts.
    pub begin: Instant,
    /// Sending stops.
    pub until: Instant,
}

impl Window {
    /// When bikes and viewers hang up.
    #[must_use]
    pub fn closing(&self) -> Instant {
        self.until + DRAIN
    }
}

/// Where bikes and viewers learn the window, once it is set.
#[derive(Debug, Clone)]
pub struct Schedule(watch::Receiver<Option<Window>>);

/// Sets the window; held by whoever decides that everyone is connected.
#[derive(Debug)]
pub struct Starter(watch::Sender<Option<Window>>);

/// A schedule not started yet.
#[must_use]
pub fn new() -> (Starter, Schedule) {
    let (tx, rx) = watch::channel(None);
    (Starter(tx), Schedule(rx))
}

impl Starter {
    /// Starts sending now, for `duration`.
    pub fn start(self, duration: Duration) -> Window {
        let begin = Instant::now();
        let window = Window {
            begin,
            until: begin + duration,
        };
        self.0.send_replace(Some(window));
        window
    }
}

impl Schedule {
    /// Waits until the window is set; `None` if it never will be.
    pub async fn window(&mut self) -> Option<Window> {
        self.0.wait_for(Option::is_some).await.ok().and_then(|w| *w)
    }

    /// The window, if set yet.
    #[must_use]
    pub fn known(&self) -> Option<Window> {
        *self.0.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn everyone_learns_the_same_window_once_started() {
        let (starter, schedule) = new();
        assert_eq!(schedule.known(), None);
        let mut waiting = schedule.clone();
        let waiter = tokio::spawn(async move { waiting.window().await });
        let window = starter.start(Duration::from_secs(5));
        assert_eq!(waiter.await.unwrap(), Some(window));
        assert_eq!(schedule.known(), Some(window));
        assert_eq!(window.until - window.begin, Duration::from_secs(5));
        assert_eq!(window.closing(), window.until + DRAIN);
    }

    #[tokio::test]
    async fn a_schedule_never_started_ends_the_wait() {
        let (starter, mut schedule) = new();
        drop(starter);
        assert_eq!(schedule.window().await, None);
    }
}
