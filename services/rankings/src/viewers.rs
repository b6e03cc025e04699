//! The WebSocket viewers, by class, each behind a bounded queue: a viewer
//! that cannot keep up is dropped rather than allowed to delay the others.

use crate::metrics::METRICS;
use alleycat_core::{ClassId, RaceId, RacerId};
use axum::extract::ws::Utf8Bytes;
use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// Messages a viewer may have queued before it is considered too slow.
pub const QUEUE: usize = 16;

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
    queue: mpsc::Sender<Utf8Bytes>,
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
    pub messages: mpsc::Receiver<Utf8Bytes>,
}

impl Viewers {
    /// Registers a viewer, with the latest state of its class's live races
    /// (of its race, if it names one) already queued: a viewer that
    /// connects, or reconnects, sees the race at once, not at its next
    /// change. (A viewer following a racer gets the shared message first;
    /// its own lines come with the next push.)
    pub fn add(&self, filter: Filter) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (queue, messages) = mpsc::channel(QUEUE);
        if let Some(races) = self
            .latest
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&filter.class_id)
        {
            let wanted = races
                .iter()
                .filter(|(race, _)| filter.race_id.is_none_or(|r| r == **race));
            // Leave room in the queue for the pushes that follow.
            for (_, message) in wanted.take(QUEUE / 2) {
                let _ = queue.try_send(message.clone());
            }
        }
        self.write()
            .entry(filter.class_id)
            .or_default()
            .insert(id, Viewer { filter, queue });
        Subscription { id, messages }
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
    /// one). Viewers whose queue is full or closed are dropped. Returns how
    /// many viewers got the message.
    pub fn publish(
        &self,
        class: ClassId,
        race: RaceId,
        shared: &Utf8Bytes,
        mut personal: impl FnMut(&Filter) -> Option<String>,
    ) -> usize {
        let mut dropped = Vec::new();
        let mut sent = 0;
        let mut slow = 0;
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
                let message = Some(&viewer.filter)
                    .filter(|f| f.is_personal())
                    .and_then(&mut personal)
                    .map_or_else(|| shared.clone(), Utf8Bytes::from);
                match viewer.queue.try_send(message) {
                    Ok(()) => sent += 1,
                    Err(TrySendError::Full(_)) => {
                        slow += 1;
                        dropped.push(*id);
                    }
                    // Gone already: its socket's task removes it too.
                    Err(TrySendError::Closed(_)) => dropped.push(*id),
                }
            }
        }
        METRICS.messages.increment(sent as u64);
        if slow > 0 {
            METRICS.viewers_dropped.increment(slow);
            tracing::info!(%class, viewers = slow, "dropping viewers that cannot keep up");
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
        let mut all = viewers.add(filter(None, None));
        let mut other_race = viewers.add(filter(Some(8), None));
        let mut me = viewers.add(filter(Some(7), Some(42)));
        let shared = Utf8Bytes::from("shared");
        let sent = viewers.publish(ClassId(1), RaceId(7), &shared, |f| {
            Some(format!("for {}", f.racer_id.unwrap()))
        });
        assert_eq!(sent, 2);
        assert_eq!(all.messages.try_recv().unwrap(), "shared");
        assert!(other_race.messages.try_recv().is_err());
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
        let mut all = viewers.add(filter(None, None));
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
        assert!(all.messages.try_recv().is_err());
        let mut one_race = viewers.add(filter(Some(8), Some(42)));
        assert_eq!(one_race.messages.try_recv().unwrap(), "8 at 1");
        assert!(one_race.messages.try_recv().is_err());
        let mut other_class = viewers.add(Filter {
            class_id: ClassId(2),
            ..filter(None, None)
        });
        assert!(other_class.messages.try_recv().is_err());
        viewers.forget(ClassId(1), RaceId(7));
        viewers.forget(ClassId(1), RaceId(8));
        let mut late = viewers.add(filter(None, None));
        assert!(
            late.messages.try_recv().is_err(),
            "an ended race is not shown"
        );
    }

    #[test]
    fn a_viewer_that_does_not_read_is_dropped_and_others_keep_going() {
        let viewers = Viewers::default();
        let slow = viewers.add(filter(None, None));
        let mut fast = viewers.add(filter(None, None));
        let shared = Utf8Bytes::from("m");
        for _ in 0..QUEUE {
            assert_eq!(viewers.publish(ClassId(1), RaceId(1), &shared, |_| None), 2);
            fast.messages.try_recv().unwrap();
        }
        // The slow one's queue is full: it is dropped, the fast one still served.
        assert_eq!(viewers.publish(ClassId(1), RaceId(1), &shared, |_| None), 1);
        assert_eq!(viewers.len(), 1);
        assert!(fast.messages.try_recv().is_ok());
        drop(slow);
        // A vanished viewer (receiver dropped) is dropped too.
        drop(fast);
        assert_eq!(viewers.publish(ClassId(1), RaceId(1), &shared, |_| None), 0);
        assert!(viewers.is_empty());
    }
}
