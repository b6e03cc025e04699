//! The delivery buffer: collects items until they reach a size or have
//! waited an interval, like Kinesis Data Firehose's buffering hints.
//!
//! Pure state, driven by the caller: `push` says when a batch is full, and
//! [`Batcher::deadline`] says when the open batch is due, so the caller can
//! sleep until then. Time is `tokio::time::Instant`, so tests run on paused
//! time.

use std::num::NonZeroUsize;
use std::time::Duration;
use tokio::time::Instant;

/// When a batch is flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchLimits {
    /// Flush once the items' sizes add up to this many bytes; a batch never
    /// exceeds it unless one item alone does, or it filled while catching up.
    pub(crate) max_bytes: NonZeroUsize,
    /// ...or this many, for items pushed while catching up; at least
    /// `max_bytes` (`TransformerArgs::limits` makes it so). A batch that
    /// grew past `max_bytes` while catching up goes with the next item
    /// pushed after it (or at its deadline).
    pub(crate) catch_up_bytes: NonZeroUsize,
    /// Flush once the oldest item has waited this long.
    pub(crate) max_age: Duration,
}

/// A buffer of items that flushes by size or age.
#[derive(Debug)]
pub(crate) struct Batcher<T> {
    limits: BatchLimits,
    items: Vec<T>,
    bytes: usize,
    opened_at: Option<Instant>,
}

impl<T> Batcher<T> {
    /// An empty buffer.
    #[must_use]
    pub(crate) fn new(limits: BatchLimits) -> Self {
        Batcher {
            limits,
            items: Vec::new(),
            bytes: 0,
            opened_at: None,
        }
    }

    /// Adds an item of `size` bytes. Returns a batch to flush now: the
    /// previous items when this one would not fit beside them (it then opens
    /// the next batch), or every item when this one filled the buffer.
    ///
    /// `catching_up`: the item comes from a backlog, and batches fill at
    /// `catch_up_bytes`. Records already late gain nothing from small
    /// objects, and each object costs a write and a checkpoint in turn, so
    /// fewer, larger ones catch up faster (as Firehose raises its buffer
    /// size when delivery falls behind).
    pub(crate) fn push(&mut self, item: T, size: usize, catching_up: bool) -> Option<Vec<T>> {
        let max = if catching_up {
            self.limits.catch_up_bytes
        } else {
            self.limits.max_bytes
        }
        .get();
        let flushed = if !self.items.is_empty() && self.bytes + size > max {
            Some(self.take())
        } else {
            None
        };
        if self.items.is_empty() {
            self.opened_at = Some(Instant::now());
        }
        self.items.push(item);
        self.bytes += size;
        match flushed {
            Some(batch) => Some(batch),
            None if self.bytes >= max => Some(self.take()),
            None => None,
        }
    }

    /// When the open batch must be flushed, if one is open.
    #[must_use]
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|at| at + self.limits.max_age)
    }

    /// The open batch, if its deadline has passed.
    pub(crate) fn take_if_due(&mut self) -> Option<Vec<T>> {
        match self.deadline() {
            Some(deadline) if deadline <= Instant::now() => Some(self.take()),
            _ => None,
        }
    }

    /// Everything buffered (possibly nothing), e.g. at shutdown.
    pub(crate) fn take(&mut self) -> Vec<T> {
        self.bytes = 0;
        self.opened_at = None;
        std::mem::take(&mut self.items)
    }

    /// The first (oldest) item buffered, if any.
    #[must_use]
    pub(crate) fn first(&self) -> Option<&T> {
        self.items.first()
    }

    /// Whether nothing is buffered.
    #[must_use]
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(bytes: usize, ms: u64) -> BatchLimits {
        BatchLimits {
            max_bytes: NonZeroUsize::new(bytes).unwrap(),
            catch_up_bytes: NonZeroUsize::new(bytes * 4).unwrap(),
            max_age: Duration::from_millis(ms),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_when_size_is_reached() {
        let mut b = Batcher::new(limits(10, 5000));
        assert_eq!(b.push("a", 4, false), None);
        assert_eq!(b.push("b", 4, false), None);
        assert_eq!(b.push("c", 2, false), Some(vec!["a", "b", "c"]));
        assert!(b.is_empty());
        assert_eq!(b.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_item_that_does_not_fit_starts_the_next_batch() {
        let mut b = Batcher::new(limits(10, 5000));
        assert_eq!(b.push("a", 6, false), None);
        assert_eq!(b.push("b", 6, false), Some(vec!["a"]));
        // "b" opened the next batch: 4 more bytes fill it.
        assert_eq!(b.push("c", 4, false), Some(vec!["b", "c"]));
        assert_eq!(b.take(), Vec::<&str>::new());
        // An oversized item alone is flushed at once rather than held.
        assert_eq!(b.push("huge", 50, false), Some(vec!["huge"]));
    }

    #[tokio::test(start_paused = true)]
    async fn catching_up_fills_larger_batches_until_it_stops() {
        let mut b = Batcher::new(limits(10, 5000));
        for item in 0..7 {
            assert_eq!(b.push(item, 5, true), None, "item {item}");
        }
        assert_eq!(b.push(7, 5, true), Some((0..8).collect()));
        // Caught up: a batch past the usual size goes with the next item,
        // and batches fill at the usual size again.
        for item in 0..3 {
            assert_eq!(b.push(item, 5, true), None);
        }
        assert_eq!(b.push(3, 5, false), Some(vec![0, 1, 2]));
        assert_eq!(b.push(4, 5, false), Some(vec![3, 4]));
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_when_the_oldest_item_is_due() {
        let mut b = Batcher::new(limits(1_000_000, 5000));
        assert_eq!(b.take_if_due(), None);
        b.push(1, 10, false);
        let opened = Instant::now();
        assert_eq!(b.deadline(), Some(opened + Duration::from_secs(5)));
        tokio::time::advance(Duration::from_millis(3000)).await;
        b.push(2, 10, false);
        // The deadline follows the oldest item, not the newest.
        assert_eq!(b.deadline(), Some(opened + Duration::from_secs(5)));
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert_eq!(b.take_if_due(), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.take_if_due(), Some(vec![1, 2]));
        assert_eq!(b.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn sleeping_until_the_deadline_flushes_it() {
        let mut b = Batcher::new(limits(1_000_000, 250));
        b.push("x", 1, false);
        tokio::time::sleep_until(b.deadline().unwrap()).await;
        assert_eq!(b.take_if_due(), Some(vec!["x"]));
    }
}
