//! The WebSocket viewers, by class, each behind a bounded inbox that keeps
//! only the latest push of each race: a push is the whole standings at its
//! second, so a newer one replaces the one still waiting. A viewer that
//! reads slowly gets fewer, fresher pushes; one whose socket takes nothing
//! for [`STALLED_AFTER`] is dropped rather than allowed to delay the others
//! or hold memory.
//!
//! (Until 2026-12-02 a viewer had a queue of 16 pushes and was dropped when
//! it filled. In the stretch run the server's own sockets, sharing a
//! saturated CPU, drained queues slower than the engine filled them:
//! 8,479 of 10,000 viewers were dropped, and the queues held about 1 GB.)

use crate::metrics::METRICS;
use alleycat_core::{ClassId, RaceId, RacerId};
use axum::extract::ws::Utf8Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Most races whose pushes a viewer may have waiting; past it, the oldest
/// race's waiting push gives way.
pub const QUEUE: usize = 16;

/// How long pushes may wait without the viewer's socket taking any before
/// the viewer counts as stalled and is dropped (closed 1008).
pub const STALLED_AFTER: Duration = Duration::from_secs(5);

/// What a viewer follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Its class.
    pub class_id: ClassId,
    /// Only this race, if given.
    pub race_id: Option<RaceId>,
    /// Its own racer, if given.
    pub racer_id: Option<RacerId>,
    /// Racers it follows (at most [`MAX_FOLLOWED`]), if given.
    pub follow: Option<std::sync::Arc<[RacerId]>>,
}

/// Most racers one viewer may follow.
pub const MAX_FOLLOWED: usize = 100;

impl Filter {
    /// Whether the viewer gets messages of its own (a racer or a follow list).
    #[must_use]
    pub fn is_personal(&self) -> bool {
        self.racer_id.is_some() || self.follow.is_some()
    }
}

struct Viewer {
    filter: Filter,
    inbox: Arc<Inbox>,
}

/// A viewer's pushes waiting to be sent: at most one per race, oldest race
/// first.
#[derive(Default)]
pub struct Inbox {
    state: Mutex<InboxState>,
    ready: Notify,
}

#[derive(Default)]
struct InboxState {
    waiting: VecDeque<(RaceId, Utf8Bytes)>,
    /// Since when pushes have waited without one being taken.
    since: Option<Instant>,
    /// Dropped: nothing more is taken or given.
    closed: bool,
}

/// What became of a push offered to a viewer.
#[derive(Debug, PartialEq, Eq)]
enum Offer {
    Queued,
    /// It replaced a waiting push (of its race, or the oldest race's).
    Replaced,
    /// The viewer's socket has taken nothing for [`STALLED_AFTER`].
    Stalled,
}

impl Inbox {
    fn state(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn offer(&self, race: RaceId, message: Utf8Bytes, now: Instant) -> Offer {
        let mut state = self.state();
        if state
            .since
            .is_some_and(|since| now.duration_since(since) >= STALLED_AFTER)
        {
            state.closed = true;
            state.waiting.clear();
            drop(state);
            self.ready.notify_one();
            return Offer::Stalled;
        }
        let offer = if let Some(slot) = state.waiting.iter_mut().find(|(r, _)| *r == race) {
            slot.1 = message;
            Offer::Replaced
        } else {
            let full = state.waiting.len() >= QUEUE;
            if full {
                state.waiting.pop_front();
            }
            state.waiting.push_back((race, message));
            state.since.get_or_insert(now);
            if full { Offer::Replaced } else { Offer::Queued }
        };
        drop(state);
        self.ready.notify_one();
        offer
    }

    /// The next push, waiting for one; `None` once the viewer was dropped.
    pub async fn recv(&self) -> Option<Utf8Bytes> {
        loop {
            if let Some(message) = self.try_recv() {
                return Some(message);
            }
            if self.state().closed {
                return None;
            }
            // A push offered since the check above left a permit: this
            // returns at once.
            self.ready.notified().await;
        }
    }

    /// The next push, if one is waiting.
    pub fn try_recv(&self) -> Option<Utf8Bytes> {
        let mut state = self.state();
        let (_, message) = state.waiting.pop_front()?;
        // Taking one is progress: the rest have waited from now.
        state.since = (!state.waiting.is_empty()).then(Instant::now);
        Some(message)
    }
}

/// Every connected viewer, and each live race's last shared message.
#[derive(Default)]
pub struct Viewers {
    next_id: AtomicU64,
    by_class: RwLock<HashMap<ClassId, HashMap<u64, Viewer>>>,
    /// Per class, each live race's last shared message: what a viewer
    /// gets at once when it connects. Bounded by the engine's live races;
    /// a race is forgotten when the engine forgets it.
    latest: RwLock<HashMap<ClassId, HashMap<RaceId, Utf8Bytes>>>,
}

/// Where a viewer's messages arrive; dropped viewers see it close.
pub struct Subscription {
    /// Identifies the viewer, to unregister it.
    pub id: u64,
    /// Its messages.
    pub messages: Arc<Inbox>,
}

impl Viewers {
    /// Registers a viewer, with the latest state of its class's live races
    /// (of its race, if it names one) already queued: a viewer that
    /// connects, or reconnects, sees the race at once, not at its next
    /// change. (A viewer following a racer gets the shared message first;
    /// its own lines come with the next push.)
    pub fn add(&self, filter: Filter) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let inbox = Arc::new(Inbox::default());
        if let Some(races) = self
            .latest
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&filter.class_id)
        {
            let wanted = races
                .iter()
                .filter(|(race, _)| filter.race_id.is_none_or(|r| r == **race));
            let now = Instant::now();
            for (race, message) in wanted.take(QUEUE) {
                inbox.offer(*race, message.clone(), now);
            }
        }
        self.write().entry(filter.class_id).or_default().insert(
            id,
            Viewer {
                filter,
                inbox: Arc::clone(&inbox),
            },
        );
        Subscription {
            id,
            messages: inbox,
        }
    }

    /// Unregisters a viewer.
    pub fn remove(&self, class_id: ClassId, id: u64) {
        if let Some(class) = self.write().get_mut(&class_id) {
            class.remove(&id);
        }
    }

    /// Number of viewers connected.
    #[must_use]
    pub fn len(&self) -> usize {
        self.read().values().map(HashMap::len).sum()
    }

    /// Whether no viewer is connected.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether anyone watches `class`.
    #[must_use]
    pub fn watching(&self, class: ClassId) -> bool {
        self.read().get(&class).is_some_and(|v| !v.is_empty())
    }

    /// Offers a race's message to its class's viewers: `personal` gives the
    /// message for a viewer following a racer (or `None` for the shared
    /// one). A push replaces the one of its race still waiting; viewers
    /// whose socket has stalled, or that are gone, are dropped. Returns how
    /// many viewers got the message.
    pub fn publish(
        &self,
        class: ClassId,
        race: RaceId,
        shared: &Utf8Bytes,
        mut personal: impl FnMut(&Filter) -> Option<String>,
    ) -> usize {
        let mut dropped = Vec::new();
        let (mut sent, mut replaced, mut slow) = (0, 0, 0);
        let now = Instant::now();
        self.latest
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(class)
            .or_default()
            .insert(race, shared.clone());
        {
            let viewers = self.read();
            let Some(viewers) = viewers.get(&class) else {
                return 0;
            };
            for (id, viewer) in viewers {
                if viewer.filter.race_id.is_some_and(|r| r != race) {
                    continue;
                }
                // Gone already (its socket's task dropped its end): that
                // task removes it too.
                if Arc::strong_count(&viewer.inbox) == 1 {
                    dropped.push(*id);
                    continue;
                }
                let message = Some(&viewer.filter)
                    .filter(|f| f.is_personal())
                    .and_then(&mut personal)
                    .map_or_else(|| shared.clone(), Utf8Bytes::from);
                match viewer.inbox.offer(race, message, now) {
                    Offer::Queued => sent += 1,
                    Offer::Replaced => {
                        sent += 1;
                        replaced += 1;
                    }
                    Offer::Stalled => {
                        slow += 1;
                        dropped.push(*id);
                    }
                }
            }
        }
        METRICS.messages.increment(sent as u64);
        METRICS.messages_replaced.increment(replaced);
        if slow > 0 {
            METRICS.viewers_dropped.increment(slow);
            tracing::info!(%class, viewers = slow, "dropping viewers whose sockets took no push for {STALLED_AFTER:?}");
        }
        if !dropped.is_empty() {
            let mut viewers = self.write();
            if let Some(class) = viewers.get_mut(&class) {
                for id in dropped {
                    class.remove(&id);
                }
            }
        }
        sent
    }

    /// Forgets a race that ended: new viewers no longer get its last state.
    pub fn forget(&self, class: ClassId, race: RaceId) {
        let mut latest = self
            .latest
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(races) = latest.get_mut(&class) {
            races.remove(&race);
            if races.is_empty() {
                latest.remove(&class);
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ClassId, HashMap<u64, Viewer>>> {
        self.by_class
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<ClassId, HashMap<u64, Viewer>>> {
        self.by_class
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(race: Option<u64>, racer: Option<u64>) -> Filter {
        Filter {
            class_id: ClassId(1),
            race_id: race.map(RaceId),
            racer_id: racer.map(RacerId),
            follow: None,
        }
    }

    #[test]
    fn publishes_by_class_and_race_and_personalizes() {
        let viewers = Viewers::default();
        let all = viewers.add(filter(None, None));
        let other_race = viewers.add(filter(Some(8), None));
        let me = viewers.add(filter(Some(7), Some(42)));
        let shared = Utf8Bytes::from("shared");
        let sent = viewers.publish(ClassId(1), RaceId(7), &shared, |f| {
            Some(format!("for {}", f.racer_id.unwrap()))
        });
        assert_eq!(sent, 2);
        assert_eq!(all.messages.try_recv().unwrap(), "shared");
        assert!(other_race.messages.try_recv().is_none());
        assert_eq!(me.messages.try_recv().unwrap(), "for 42");
        assert_eq!(viewers.publish(ClassId(2), RaceId(7), &shared, |_| None), 0);
    }

    #[test]
    fn a_viewer_gets_the_latest_state_of_its_races_at_once_until_they_end() {
        let viewers = Viewers::default();
        let _watcher = viewers.add(filter(None, None));
        viewers.publish(ClassId(1), RaceId(7), &Utf8Bytes::from("7 at 3"), |_| None);
        viewers.publish(ClassId(1), RaceId(7), &Utf8Bytes::from("7 at 4"), |_| None);
        viewers.publish(ClassId(1), RaceId(8), &Utf8Bytes::from("8 at 1"), |_| None);
        let all = viewers.add(filter(None, None));
        let mut got = vec![
            all.messages.try_recv().unwrap().to_string(),
            all.messages.try_recv().unwrap().to_string(),
        ];
        got.sort();
        assert_eq!(
            got,
            ["7 at 4", "8 at 1"],
            "each race's latest, nothing older"
        );
        assert!(all.messages.try_recv().is_none());
        let one_race = viewers.add(filter(Some(8), Some(42)));
        assert_eq!(one_race.messages.try_recv().unwrap(), "8 at 1");
        assert!(one_race.messages.try_recv().is_none());
        let other_class = viewers.add(Filter {
            class_id: ClassId(2),
            ..filter(None, None)
        });
        assert!(other_class.messages.try_recv().is_none());
        viewers.forget(ClassId(1), RaceId(7));
        viewers.forget(ClassId(1), RaceId(8));
        let late = viewers.add(filter(None, None));
        assert!(
            late.messages.try_recv().is_none(),
            "an ended race is not shown"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_viewer_gets_each_race_s_latest_push_and_a_stalled_one_is_dropped() {
        let viewers = Viewers::default();
        let slow = viewers.add(filter(None, None));
        let fast = viewers.add(filter(None, None));
        let message = |text: &str| Utf8Bytes::from(text);
        for n in 0..100 {
            let text = format!("race 1 at {n}");
            assert_eq!(
                viewers.publish(ClassId(1), RaceId(1), &message(&text), |_| None),
                2
            );
            assert_eq!(fast.messages.try_recv().unwrap(), text.as_str());
        }
        viewers.publish(ClassId(1), RaceId(2), &message("race 2 at 1"), |_| None);
        viewers.publish(ClassId(1), RaceId(1), &message("race 1 at 100"), |_| None);
        // However many pushes went by, the slow one holds one per race, the
        // latest, its races in the order they first waited.
        assert_eq!(slow.messages.try_recv().unwrap(), "race 1 at 100");
        assert_eq!(slow.messages.try_recv().unwrap(), "race 2 at 1");
        assert!(slow.messages.try_recv().is_none());
        // Past QUEUE races waiting, the oldest race's push gives way.
        for race in 0..=QUEUE as u64 {
            viewers.publish(
                ClassId(1),
                RaceId(100 + race),
                &message(&race.to_string()),
                |_| None,
            );
        }
        assert_eq!(slow.messages.try_recv().unwrap(), "1");
        let mut left = 1;
        while slow.messages.try_recv().is_some() {
            left += 1;
        }
        assert_eq!(left, QUEUE);

        // Taking a push is progress: a viewer whose socket takes one within
        // STALLED_AFTER stays, however long the pushes keep coming.
        while fast.messages.try_recv().is_some() {}
        for _ in 0..3 {
            viewers.publish(ClassId(1), RaceId(1), &message("m"), |_| None);
            assert!(fast.messages.try_recv().is_some());
            tokio::time::advance(STALLED_AFTER - Duration::from_millis(1)).await;
            assert!(slow.messages.try_recv().is_some());
        }
        // One whose pushes wait STALLED_AFTER is dropped at the next push,
        // and its socket's task hears so; the other keeps getting them.
        viewers.publish(ClassId(1), RaceId(1), &message("m"), |_| None);
        assert!(fast.messages.try_recv().is_some());
        tokio::time::advance(STALLED_AFTER).await;
        assert_eq!(
            viewers.publish(ClassId(1), RaceId(1), &message("n"), |_| None),
            1
        );
        assert_eq!(viewers.len(), 1);
        assert_eq!(slow.messages.recv().await, None);
        assert_eq!(fast.messages.recv().await.unwrap(), "n");
        // A vanished viewer (its end dropped) is dropped too.
        drop(fast);
        assert_eq!(
            viewers.publish(ClassId(1), RaceId(1), &message("o"), |_| None),
            0
        );
        assert!(viewers.is_empty());
    }

    #[tokio::test]
    async fn a_waiting_socket_task_wakes_for_the_next_push() {
        let viewers = Arc::new(Viewers::default());
        let viewer = viewers.add(filter(None, None));
        let waiting = tokio::spawn(async move { viewer.messages.recv().await });
        tokio::task::yield_now().await;
        viewers.publish(ClassId(1), RaceId(1), &Utf8Bytes::from("x"), |_| None);
        let got = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(got.unwrap().unwrap().unwrap(), "x");
    }
}
