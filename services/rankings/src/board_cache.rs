//! Ranked leaderboards kept between requests: ranking a board of 100,000
//! entries costs far more than asking the store whether it changed.
//!
//! Clients choose which past period they read (`at`), so the cache is
//! bounded, and when full it drops the board used least recently (counted
//! and logged): a client walking through old periods cannot push out the
//! current boards every page asks for.

use crate::period::Board;
use crate::results::RankedEntry;
use alleycat_core::ClassId;
use alleycat_core::disqualification::Disqualifications;
use alleycat_core::dropped::Dropped;
use alleycat_storage::ETag;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Most ranked leaderboards kept. The current boards of six classes and
/// four periods fit many times over.
pub(crate) const CACHED_BOARDS: usize = 256;

static EVICTED: Dropped = Dropped::new("ranked leaderboards cached");

/// One ranked board, for the version it was read at and the
/// disqualification list it was ranked under.
struct Cached {
    version: ETag,
    ranked_under: Arc<Disqualifications>,
    ranked: Arc<Vec<RankedEntry>>,
    /// When it was last used, on the cache's own count of uses.
    used: u64,
}

/// The cache, shared by the routes.
#[derive(Default)]
pub struct BoardCache(Mutex<Boards>);

#[derive(Default)]
struct Boards {
    boards: HashMap<(ClassId, Board), Cached>,
    uses: u64,
}

impl BoardCache {
    /// The ranking of `board` of `class` if it is cached for `version` and
    /// was ranked under `disqualified`.
    pub(crate) fn get(
        &self,
        class: ClassId,
        board: Board,
        version: &ETag,
        disqualified: &Arc<Disqualifications>,
    ) -> Option<Arc<Vec<RankedEntry>>> {
        let mut cache = self.0.lock().expect("not poisoned");
        cache.uses += 1;
        let uses = cache.uses;
        let cached = cache.boards.get_mut(&(class, board))?;
        if cached.version != *version || !Arc::ptr_eq(&cached.ranked_under, disqualified) {
            return None;
        }
        cached.used = uses;
        Some(Arc::clone(&cached.ranked))
    }

    /// Keeps a ranking, dropping the least recently used one when full.
    pub(crate) fn put(
        &self,
        class: ClassId,
        board: Board,
        version: ETag,
        ranked_under: Arc<Disqualifications>,
        ranked: Arc<Vec<RankedEntry>>,
    ) {
        let mut cache = self.0.lock().expect("not poisoned");
        cache.uses += 1;
        let used = cache.uses;
        let key = (class, board);
        if cache.boards.len() >= CACHED_BOARDS && !cache.boards.contains_key(&key) {
            let oldest = cache
                .boards
                .iter()
                .min_by_key(|(_, c)| c.used)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                cache.boards.remove(&oldest);
                EVICTED.add(CACHED_BOARDS);
            }
        }
        cache.boards.insert(
            key,
            Cached {
                version,
                ranked_under,
                ranked,
                used,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap().boards.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(n: u64) -> Board {
        let first: chrono::NaiveDate = "2026-01-01".parse().unwrap();
        Board::Day(first + chrono::Days::new(n))
    }

    #[test]
    fn a_full_cache_drops_the_board_used_least_recently() {
        let cache = BoardCache::default();
        let none = Arc::new(Disqualifications::default());
        let version = ETag("v1".to_owned());
        let class = ClassId(1);
        let put = |board| {
            cache.put(
                class,
                board,
                version.clone(),
                Arc::clone(&none),
                Arc::default(),
            )
        };
        put(Board::All);
        for n in 0..(CACHED_BOARDS as u64 - 1) {
            put(day(n));
        }
        assert_eq!(cache.len(), CACHED_BOARDS);
        // Someone keeps reading the all-time board while a client walks
        // through a thousand past days: it stays, the oldest days go.
        for n in CACHED_BOARDS as u64..1_000 {
            assert!(
                cache.get(class, Board::All, &version, &none).is_some(),
                "{n}"
            );
            put(day(n));
            assert_eq!(cache.len(), CACHED_BOARDS);
        }
        assert!(cache.get(class, day(0), &version, &none).is_none());
        assert!(cache.get(class, day(999), &version, &none).is_some());
        // Another version, or another disqualification list: not a hit.
        let v2 = ETag("v2".to_owned());
        assert!(cache.get(class, Board::All, &v2, &none).is_none());
        let other = Arc::new(Disqualifications::default());
        assert!(cache.get(class, Board::All, &version, &other).is_none());
    }
}
