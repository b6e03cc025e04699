//! The per-racer rate limit: a token bucket per racer, holding at most
//! `burst` records and refilled at `rate` records per second.
//!
//! Each bucket is kept as the one number GCRA (the token bucket's "virtual
//! scheduling" form) needs: the time at which it is full again. A bucket
//! that is full is the same as no bucket, so buckets that have refilled are
//! forgotten, but not at once: a bike sending every second at the default
//! rate of 2 refills its bucket between records, and forgetting it would
//! make every record a new racer, inserted and swept again (7.6% of the
//! server's CPU in the stretch run). So while the map is under half of
//! [`MAX_BUCKETS`] a refilled bucket is kept for one more `burst / rate`
//! (15 s at the defaults); from half on it is forgotten as soon as it has
//! refilled. Past [`MAX_BUCKETS`] a batch of a new racer is refused,
//! counted and logged. Refilled buckets are found by a sweep that goes
//! through the buckets a few at a time as new racers come, so no batch ever
//! pays for a sweep of the whole map, however full it is.
//!
//! The buckets are those of one process: N ingest processes allow a racer N
//! times the rate.

use alleycat_core::dropped::Dropped;
use alleycat_core::{RacerId, Telemetry};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
// Seeded per process: racer ids are the clients', so the map must not be
// one a client can flood with colliding keys.
use foldhash::fast::RandomState;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most racers whose buckets are kept at once (about 40 bytes each): far
/// more racers than one process serves within one refill time.
pub const MAX_BUCKETS: usize = 1_000_000;

/// Least rate, in records per second, `ALLEYCAT_RACER_RATE` may be: one
/// record every 1000 s. Slower is no use to a bike that sends every second,
/// and keeps the bucket's times far from the end of the clock.
pub const MIN_RATE: f64 = 0.001;

/// Nanoseconds a token takes to refill at [`MIN_RATE`].
const MAX_INTERVAL: u64 = 1_000_000_000_000;

/// Longest a bucket takes to refill from empty, a century of nanoseconds: a
/// burst too large to refill within it at its rate is cut to what does (at
/// least 3,153,600 records, more than any batch holds). So no time on the
/// limiter's clock comes near `u64::MAX` within a process's life.
const MAX_TOLERANCE: u64 = 100 * 365 * 86_400 * 1_000_000_000;

/// Parses `ALLEYCAT_RACER_RATE`: a number of records per second, at least
/// [`MIN_RATE`].
///
/// # Errors
///
/// When it is not a finite number, or below [`MIN_RATE`].
pub(crate) fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= MIN_RATE => Ok(rate),
        Ok(rate) if rate.is_finite() && rate > 0.0 => Err(format!(
            "{text} records/s is below the least rate, {MIN_RATE} (one record every 1000 s)"
        )),
        _ => Err(format!(
            "{text:?} is not a rate: a number of records per second, at least {MIN_RATE}"
        )),
    }
}

static REFUSED: Dropped = Dropped::new("batches of new racers past the rate limiter's bound");

/// Why a batch was refused. Nothing of it was taken.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RateLimitError {
    /// A racer of the batch is over its rate.
    #[error(
        "racer {racer} is over its limit of {rate} records/s (burst {burst}); nothing was accepted, retry in {retry_after} s"
    )]
    Exceeded {
        /// The racer (the one that waits longest, if several do).
        racer: RacerId,
        /// `ALLEYCAT_RACER_RATE`.
        rate: f64,
        /// `ALLEYCAT_RACER_BURST`.
        burst: u32,
        /// Whole seconds until the batch would fit.
        retry_after: u64,
    },
    /// A batch holds more records of one racer than its bucket ever holds:
    /// it would never fit, so it is refused as too large, not asked to wait.
    #[error(
        "racer {racer} has {records} records in this batch, more than its burst of {burst} (ALLEYCAT_RACER_BURST): send at most {burst} records of one racer per batch"
    )]
    LargerThanBurst {
        /// The racer.
        racer: RacerId,
        /// Its records in the batch.
        records: u32,
        /// `ALLEYCAT_RACER_BURST`.
        burst: u32,
    },
    /// [`MAX_BUCKETS`] racers are being limited already.
    #[error("too many racers are sending at once; nothing was accepted, retry in {retry_after} s")]
    Full {
        /// Whole seconds until every bucket kept now has refilled.
        retry_after: u64,
    },
}

impl RateLimitError {
    /// Whole seconds the client should wait before sending the batch again,
    /// or `None` when waiting does not help.
    #[must_use]
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            RateLimitError::Exceeded { retry_after, .. } | RateLimitError::Full { retry_after } => {
                Some(*retry_after)
            }
            RateLimitError::LargerThanBurst { .. } => None,
        }
    }
}

/// How many records of each racer a batch holds, racers in ascending order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Demand(Vec<(RacerId, u32)>);

impl Demand {
    pub(crate) fn of(records: &[Telemetry]) -> Demand {
        let mut racers: Vec<RacerId> = records.iter().map(|r| r.racer_id).collect();
        racers.sort_unstable();
        let mut demand: Vec<(RacerId, u32)> = Vec::new();
        for racer in racers {
            match demand.last_mut() {
                Some((last, n)) if *last == racer => *n += 1,
                _ => demand.push((racer, 1)),
            }
        }
        Demand(demand)
    }
}

/// The buckets, on a clock of nanoseconds since the limiter started. Pure:
/// every call is given the time.
///
/// Every time is at most `now + 2 * tolerance` (a bucket is at most
/// `tolerance` ahead of now, a batch adds at most `tolerance` more), which
/// [`MAX_TOLERANCE`] keeps within `u64`; the arithmetic saturates all the
/// same, and a saturated time only ever refuses.
#[derive(Debug)]
struct Buckets {
    /// Per racer, when its bucket is full again ("theoretical arrival time").
    full_at: HashMap<RacerId, u64, RandomState>,
    /// The racers of `full_at`, each once, in no order: what the sweep goes
    /// through.
    racers: Vec<RacerId>,
    /// Where in `racers` the sweep goes on.
    cursor: usize,
    /// When the sweep last started again from the first racer.
    pass_started: u64,
    /// Buckets looked at since then.
    pass_examined: usize,
    /// Buckets looked at by every sweep so far: what sweeping cost.
    #[cfg(test)]
    examined: u64,
    /// Time in which the sweep goes through every bucket, if new racers
    /// come: `tolerance`, at least a second.
    pass: u64,
    /// Time one record's token takes to refill.
    interval: u64,
    /// `burst * interval`: how far ahead of now `full_at` may be.
    tolerance: u64,
    burst: u32,
    /// Most buckets kept.
    cap: usize,
}

/// Buckets the sweep looks at for each new racer: more than one, so that
/// the sweep outruns the racers that come and the map follows the racers
/// of about the last refill time.
const SWEEP_STEP: usize = 4;

/// Least capacity the map is shrunk to.
const MIN_CAPACITY: usize = 1024;

const SECOND: u64 = 1_000_000_000;

impl Buckets {
    fn new(rate: f64, burst: NonZeroU32, cap: usize) -> Buckets {
        let interval = interval(rate);
        let most = u32::try_from(MAX_TOLERANCE / interval).unwrap_or(u32::MAX);
        let burst = burst.get().min(most);
        let tolerance = u64::from(burst) * interval;
        Buckets {
            full_at: HashMap::default(),
            racers: Vec::new(),
            cursor: 0,
            pass_started: 0,
            pass_examined: 0,
            #[cfg(test)]
            examined: 0,
            pass: tolerance.max(SECOND),
            interval,
            tolerance,
            burst,
            cap,
        }
    }

    /// Time `records` tokens take to refill.
    fn cost(&self, records: u32) -> u64 {
        u64::from(records).saturating_mul(self.interval)
    }

    /// Takes the tokens of every racer of `demand`, or none of them.
    /// `Err` holds the nanoseconds to wait (0: never fits) and the racer.
    fn take(&mut self, demand: &Demand, now: u64) -> Result<(), Refusal> {
        let mut new_racers = 0;
        let mut longest: Option<(u64, RacerId)> = None;
        for &(racer, records) in &demand.0 {
            if records > self.burst {
                return Err(Refusal::LargerThanBurst { racer, records });
            }
            let full_at = match self.full_at.get(&racer) {
                Some(&t) => t.max(now),
                None => {
                    new_racers += 1;
                    now
                }
            };
            let after = full_at.saturating_add(self.cost(records));
            let wait = after.saturating_sub(now).saturating_sub(self.tolerance);
            if wait > 0 && longest.is_none_or(|(w, _)| wait > w) {
                longest = Some((wait, racer));
            }
        }
        if let Some((wait, racer)) = longest {
            return Err(Refusal::Wait { wait, racer });
        }
        if new_racers > 0 {
            self.sweep(now, new_racers);
        }
        if self.full_at.len() + new_racers > self.cap {
            return Err(Refusal::Full {
                wait: self.tolerance,
            });
        }
        for &(racer, records) in &demand.0 {
            let cost = self.cost(records);
            match self.full_at.entry(racer) {
                Entry::Occupied(mut kept) => {
                    let full_at = kept.get_mut();
                    *full_at = (*full_at).max(now).saturating_add(cost);
                }
                Entry::Vacant(new) => {
                    new.insert(now.saturating_add(cost));
                    self.racers.push(racer);
                }
            }
        }
        Ok(())
    }

    /// Gives back what [`take`](Self::take) took for a batch that was not
    /// stored after all.
    fn refund(&mut self, demand: &Demand) {
        for &(racer, records) in &demand.0 {
            let cost = self.cost(records);
            if let Some(full_at) = self.full_at.get_mut(&racer) {
                // Below now is simply full: `take` starts from now.
                *full_at = full_at.saturating_sub(cost);
            }
        }
    }

    /// Forgets buckets that have refilled, going on through `racers` from
    /// where it stopped: [`SWEEP_STEP`] buckets per new racer, plus what is
    /// due for a pass over all of them to take no longer than `pass`. So a
    /// batch pays for a few buckets, and the whole map is looked at about
    /// once per `pass`, however full of buckets that have not refilled it
    /// is. While the map is under half its cap a bucket is forgotten a pass
    /// after it refilled, so that a racer sending steadily below its rate
    /// is not a new racer at every record; from half on, as soon as it has
    /// refilled, to make room for new racers. Either way it is forgotten
    /// within three passes of refilling (while new racers come).
    fn sweep(&mut self, now: u64, new_racers: usize) {
        let len = self.racers.len();
        let elapsed = u128::from(now.saturating_sub(self.pass_started));
        let due = (len as u128 * elapsed / u128::from(self.pass)).min(len as u128) as usize;
        let budget = new_racers
            .saturating_mul(SWEEP_STEP)
            .saturating_add(due.saturating_sub(self.pass_examined))
            .min(len);
        let keep = if 2 * self.full_at.len() < self.cap {
            self.pass
        } else {
            0
        };
        for _ in 0..budget {
            if self.cursor >= self.racers.len() {
                if self.racers.is_empty() {
                    break;
                }
                self.cursor = 0;
                self.pass_started = now;
                self.pass_examined = 0;
            }
            self.pass_examined += 1;
            #[cfg(test)]
            {
                self.examined += 1;
            }
            let racer = self.racers[self.cursor];
            if self
                .full_at
                .get(&racer)
                .is_none_or(|&full_at| full_at.saturating_add(keep) <= now)
            {
                self.full_at.remove(&racer);
                // The last racer takes its place, and is looked at next.
                self.racers.swap_remove(self.cursor);
            } else {
                self.cursor += 1;
            }
        }
        // Give memory back once most of it is unused (amortised: it takes
        // as many removals as the shrink moves).
        let kept = self.racers.len().max(MIN_CAPACITY);
        if self.full_at.capacity() > 4 * kept {
            self.full_at.shrink_to(2 * kept);
            self.racers.shrink_to(2 * kept);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.full_at.len()
    }
}

#[derive(Debug, PartialEq)]
enum Refusal {
    Wait { wait: u64, racer: RacerId },
    LargerThanBurst { racer: RacerId, records: u32 },
    Full { wait: u64 },
}

/// Nanoseconds one record's token takes to refill at `rate` records per
/// second: at least 1 (a rate past 10^9 records/s is no limit at all), at
/// most [`MAX_INTERVAL`] (a rate below [`MIN_RATE`], or not a number,
/// counts as [`MIN_RATE`]).
fn interval(rate: f64) -> u64 {
    if rate >= MIN_RATE {
        // The cast saturates; the clamp makes the bounds explicit.
        ((1e9 / rate).round() as u64).clamp(1, MAX_INTERVAL)
    } else {
        MAX_INTERVAL
    }
}

/// The per-racer token buckets of one ingest service (one process: the
/// buckets are not shared between processes).
#[derive(Debug)]
pub struct RateLimiter {
    buckets: Mutex<Buckets>,
    epoch: Instant,
    rate: f64,
    burst: u32,
    cap: usize,
}

impl RateLimiter {
    /// `rate` records per second per racer (at least [`MIN_RATE`]: a lower
    /// rate counts as it), bursts of `burst` (at most what refills in a
    /// century at `rate`).
    #[must_use]
    pub fn new(rate: f64, burst: NonZeroU32) -> RateLimiter {
        RateLimiter::with_cap(rate, burst, MAX_BUCKETS)
    }

    fn with_cap(rate: f64, burst: NonZeroU32, cap: usize) -> RateLimiter {
        let buckets = Buckets::new(rate, burst, cap);
        RateLimiter {
            rate: if rate >= MIN_RATE { rate } else { MIN_RATE },
            burst: buckets.burst,
            buckets: Mutex::new(buckets),
            epoch: Instant::now(),
            cap,
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Takes one token per record from each racer's bucket, all or none.
    pub(crate) fn take(&self, demand: &Demand) -> Result<(), RateLimitError> {
        let now = self.now();
        let refusal = match self
            .buckets
            .lock()
            .expect("never poisoned")
            .take(demand, now)
        {
            Ok(()) => return Ok(()),
            Err(refusal) => refusal,
        };
        Err(match refusal {
            Refusal::Wait { wait, racer } => RateLimitError::Exceeded {
                racer,
                rate: self.rate,
                burst: self.burst,
                retry_after: whole_seconds(wait),
            },
            Refusal::LargerThanBurst { racer, records } => RateLimitError::LargerThanBurst {
                racer,
                records,
                burst: self.burst,
            },
            Refusal::Full { wait } => {
                REFUSED.add(self.cap);
                RateLimitError::Full {
                    retry_after: whole_seconds(wait),
                }
            }
        })
    }

    /// Gives the tokens of a batch that was not stored back.
    pub(crate) fn refund(&self, demand: &Demand) {
        self.buckets.lock().expect("never poisoned").refund(demand);
    }
}

/// Nanoseconds rounded up to whole seconds, at least 1.
fn whole_seconds(nanos: u64) -> u64 {
    Duration::from_nanos(nanos).as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(racers: &[(u64, u32)]) -> Demand {
        Demand(racers.iter().map(|&(r, n)| (RacerId(r), n)).collect())
    }

    fn buckets(rate: f64, burst: u32) -> Buckets {
        Buckets::new(rate, NonZeroU32::new(burst).unwrap(), MAX_BUCKETS)
    }

    #[test]
    fn a_burst_then_the_rate() {
        let mut b = buckets(2.0, 30);
        for i in 0..30 {
            assert_eq!(b.take(&demand(&[(7, 1)]), 0), Ok(()), "record {i}");
        }
        assert_eq!(
            b.take(&demand(&[(7, 1)]), 0),
            Err(Refusal::Wait {
                wait: SECOND / 2,
                racer: RacerId(7)
            })
        );
        // Half a second later one token is back, and only one.
        assert_eq!(b.take(&demand(&[(7, 1)]), SECOND / 2), Ok(()));
        assert!(b.take(&demand(&[(7, 1)]), SECOND / 2).is_err());
        // Another racer has its own bucket.
        assert_eq!(b.take(&demand(&[(8, 30)]), SECOND / 2), Ok(()));
    }

    #[test]
    fn the_wait_is_until_the_whole_batch_fits() {
        let mut b = buckets(2.0, 30);
        assert_eq!(b.take(&demand(&[(7, 30)]), 0), Ok(()));
        assert_eq!(
            b.take(&demand(&[(7, 5)]), SECOND),
            Err(Refusal::Wait {
                wait: 3 * SECOND / 2,
                racer: RacerId(7)
            })
        );
        assert_eq!(whole_seconds(3 * SECOND / 2), 2);
        assert_eq!(whole_seconds(1), 1);
        assert_eq!(whole_seconds(2 * SECOND), 2);
    }

    #[test]
    fn a_batch_of_several_racers_is_taken_whole_or_not_at_all() {
        let mut b = buckets(2.0, 30);
        assert_eq!(b.take(&demand(&[(1, 29)]), 0), Ok(()));
        // Racer 2 fits, racer 1 does not: nothing is taken from racer 2.
        assert!(b.take(&demand(&[(1, 2), (2, 30)]), 0).is_err());
        assert_eq!(b.take(&demand(&[(2, 30)]), 0), Ok(()));
        // The longest wait is reported.
        assert_eq!(
            b.take(&demand(&[(1, 2), (2, 4)]), 0),
            Err(Refusal::Wait {
                wait: 2 * SECOND,
                racer: RacerId(2)
            })
        );
    }

    #[test]
    fn a_refund_gives_the_tokens_back() {
        let mut b = buckets(2.0, 30);
        let all = demand(&[(1, 30), (2, 10)]);
        assert_eq!(b.take(&all, 0), Ok(()));
        assert!(b.take(&demand(&[(1, 1)]), 0).is_err());
        b.refund(&all);
        assert_eq!(b.take(&all, 0), Ok(()), "the same batch fits again");
    }

    #[test]
    fn more_of_one_racer_than_the_burst_never_fits() {
        let mut b = buckets(2.0, 30);
        assert_eq!(
            b.take(&demand(&[(1, 31)]), 0),
            Err(Refusal::LargerThanBurst {
                racer: RacerId(1),
                records: 31
            })
        );
        assert_eq!(b.len(), 0, "nothing taken");
    }

    #[test]
    fn demand_counts_records_per_racer() {
        let record = |racer| {
            let mut t: Telemetry = serde_json::from_value(serde_json::json!({
                "event": "update", "deviceTimestamp": 1, "second": 3, "raceId": 5,
                "name": "H", "racerId": 0, "classId": 1, "cadence": 80.0, "resistance": 50.0
            }))
            .unwrap();
            t.racer_id = RacerId(racer);
            t
        };
        let records: Vec<Telemetry> = [3, 1, 3, 2, 3].into_iter().map(record).collect();
        assert_eq!(Demand::of(&records), demand(&[(1, 1), (2, 1), (3, 3)]));
    }

    /// Made-up racers cannot grow the map: refilled buckets are forgotten,
    /// and past the cap new racers are refused (and counted) until some
    /// bucket refills.
    #[test]
    fn the_map_of_buckets_is_bounded() {
        let cap = 4096;
        let mut b = Buckets::new(2.0, NonZeroU32::new(30).unwrap(), cap);
        // A flood of one-record racers, 1,000 a second for a minute: each
        // bucket refills within half a second, and is kept a pass (15 s)
        // longer only while the map is under half its cap.
        let mut most = 0;
        for i in 0..60_000u64 {
            let now = i * SECOND / 1000;
            assert_eq!(b.take(&demand(&[(i, 1)]), now), Ok(()));
            most = most.max(b.len());
        }
        // About half the cap, the sweep following the racers a few buckets
        // at a time.
        assert!(most <= cap / 2 + cap / 16, "kept {most} buckets");
        // Racers that emptied their buckets stay limited up to the cap...
        let now = 100 * SECOND;
        for racer in 0..cap as u64 {
            assert_eq!(
                b.take(&demand(&[(1_000_000 + racer, 30)]), now),
                Ok(()),
                "{racer}"
            );
        }
        assert_eq!(b.len(), cap);
        // ...and a new one past it is refused, however long it would wait.
        assert_eq!(
            b.take(&demand(&[(9_999_999, 1)]), now),
            Err(Refusal::Full { wait: 15 * SECOND })
        );
        assert_eq!(b.len(), cap);
        // Racers already kept go on.
        assert!(b.take(&demand(&[(1_000_000, 1)]), now + SECOND).is_ok());
        // Once the buckets have refilled (after the wait the refusal named),
        // room is made...
        assert_eq!(
            b.take(&demand(&[(9_999_999, 1)]), now + 16 * SECOND),
            Ok(())
        );
        assert!(b.len() < cap, "{} kept", b.len());
        // ...and within two passes (15 s each) every refilled bucket is
        // forgotten.
        assert_eq!(
            b.take(&demand(&[(8_888_888, 1)]), now + 31 * SECOND),
            Ok(())
        );
        assert_eq!(b.len(), 1, "only the newest racer's bucket is kept");
        assert_eq!(b.racers.len(), b.len());
    }

    /// Racers sending steadily below their rate (bikes: a record a second
    /// at 2 a second) refill between records, yet stay in the map: no
    /// record of theirs inserts a bucket again or pays for a sweep.
    #[test]
    fn steady_racers_keep_their_buckets() {
        let racers = 10_000u64;
        let mut b = buckets(2.0, 30);
        for second in 0..60u64 {
            if second == 1 {
                assert_eq!(b.len(), racers as usize);
                b.examined = 0;
            }
            for racer in 0..racers {
                let now = second * SECOND + racer * SECOND / racers;
                assert_eq!(b.take(&demand(&[(racer, 1)]), now), Ok(()));
            }
        }
        assert_eq!(b.examined, 0, "no sweep after the first second");
        assert_eq!(b.len(), racers as usize);
        // A racer that stops is forgotten all the same, once new racers
        // come: its bucket refilled half a second after its last record,
        // is kept a pass (15 s), and the sweep reaches it within two more.
        let later = 60 * SECOND + 46 * SECOND;
        for i in 0..4 * racers {
            let now = later + i * SECOND / racers;
            assert_eq!(b.take(&demand(&[(1_000_000 + i, 1)]), now), Ok(()));
        }
        assert!(
            (0..racers).all(|racer| !b.full_at.contains_key(&RacerId(racer))),
            "every stopped racer forgotten"
        );
    }

    /// At the cap, with every bucket still emptying, a flood of new racers
    /// is refused at the cost of a few buckets each: no whole-map sweep per
    /// racer, nor every 100 ms.
    #[test]
    fn a_full_map_costs_a_bounded_sweep_per_new_racer() {
        let cap = 4096;
        let mut b = Buckets::new(2.0, NonZeroU32::new(30).unwrap(), cap);
        for racer in 0..cap as u64 {
            assert_eq!(b.take(&demand(&[(racer, 30)]), 0), Ok(()));
        }
        let before = b.examined;
        // 1,000 new racers over 10 s (nothing refills before 15 s).
        let attempts = 1000u64;
        for i in 0..attempts {
            let now = i * 10 * SECOND / attempts;
            assert_eq!(
                b.take(&demand(&[(1_000_000 + i, 1)]), now),
                Err(Refusal::Full { wait: 15 * SECOND })
            );
        }
        let examined = b.examined - before;
        // A few buckets per racer, and two thirds of a pass (10 s of 15):
        // a sweep of the whole map every 100 ms would be 100 * 4096.
        let bound = attempts * SWEEP_STEP as u64 + 2 * cap as u64 / 3 + 1;
        assert!(examined <= bound, "{examined} buckets looked at");
        assert_eq!(b.len(), cap);
    }

    #[test]
    fn the_rate_has_a_floor() {
        assert_eq!(parse_rate("2"), Ok(2.0));
        assert_eq!(parse_rate("0.001"), Ok(MIN_RATE));
        assert_eq!(parse_rate("1e9"), Ok(1e9));
        for low in ["0.0009", "1e-300", "5e-324"] {
            let error = parse_rate(low).unwrap_err();
            assert!(error.contains("below the least rate, 0.001"), "{error}");
        }
        for bad in ["0", "-1", "", "two", "NaN", "inf", "-0"] {
            let error = parse_rate(bad).unwrap_err();
            assert!(error.contains("at least 0.001"), "{bad}: {error}");
        }
    }

    /// However slow the rate and large the burst, the arithmetic neither
    /// overflows (a panic in debug, a wrap in release that let a racer
    /// through) nor saturates into no limit.
    #[test]
    fn extreme_settings_still_limit() {
        for (rate, burst) in [
            (1e-300, 30),
            (f64::MIN_POSITIVE, u32::MAX),
            (MIN_RATE, u32::MAX),
            (f64::NAN, 30),
            (1e300, u32::MAX),
        ] {
            let mut b = Buckets::new(rate, NonZeroU32::new(burst).unwrap(), MAX_BUCKETS);
            assert!(b.interval >= 1 && b.interval <= MAX_INTERVAL, "{rate}");
            assert!(b.tolerance <= MAX_TOLERANCE, "{rate} {burst}");
            let most = b.burst;
            assert!(most >= 30, "{rate} {burst}");
            for now in [0, SECOND] {
                // The racer empties its bucket...
                let racer = now;
                assert_eq!(b.take(&demand(&[(racer, most)]), now), Ok(()), "{rate}");
                // ...and the next record must wait for a token.
                let refused = b.take(&demand(&[(racer, 1)]), now);
                if b.interval > 1 {
                    assert!(
                        matches!(refused, Err(Refusal::Wait { .. })),
                        "{rate} {burst}: {refused:?}"
                    );
                }
                assert!(b.take(&demand(&[(racer, most)]), now).is_err());
            }
        }
        // A rate below the floor is the floor: 30 records, then one every
        // 1000 s.
        let limiter = RateLimiter::new(1e-12, NonZeroU32::new(30).unwrap());
        limiter.take(&demand(&[(1, 30)])).unwrap();
        let refused = limiter.take(&demand(&[(1, 1)])).unwrap_err();
        assert_eq!(refused.retry_after(), Some(1000));
        assert!(refused.to_string().contains("0.001 records/s"), "{refused}");
    }

    #[test]
    fn refusals_past_the_cap_are_counted() {
        let limiter = RateLimiter::with_cap(1.0, NonZeroU32::new(1).unwrap(), 2);
        limiter.take(&demand(&[(1, 1), (2, 1)])).unwrap();
        let before = REFUSED.total();
        let refused = limiter.take(&demand(&[(3, 1)])).unwrap_err();
        assert_eq!(refused, RateLimitError::Full { retry_after: 1 });
        assert_eq!(refused.retry_after(), Some(1));
        assert!(REFUSED.total() > before);
    }
}
