//! The per-racer rate limit: a token bucket per racer, holding at most
//! `burst` records and refilled at `rate` records per second.
//!
//! Each bucket is kept as the one number GCRA (the token bucket's "virtual
//! scheduling" form) needs: the time at which it is full again. A bucket
//! that is full is the same as no bucket, so buckets that have refilled are
//! forgotten: the map holds only the racers that sent something in the last
//! `burst / rate` seconds (15 s at the defaults), and never more than
//! [`MAX_BUCKETS`]; past that a batch of a new racer is refused, counted and
//! logged.

use alleycat_core::dropped::Dropped;
use alleycat_core::{RacerId, Telemetry};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most racers whose buckets are kept at once (about 32 bytes each): far
/// more racers than one process serves within one refill time.
pub const MAX_BUCKETS: usize = 1_000_000;

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
#[derive(Debug)]
struct Buckets {
    /// Per racer, when its bucket is full again ("theoretical arrival time").
    full_at: HashMap<RacerId, u64>,
    /// Time one record's token takes to refill.
    interval: u64,
    /// `burst * interval`: how far ahead of now `full_at` may be.
    tolerance: u64,
    burst: u32,
    /// Most buckets kept.
    cap: usize,
    /// Size at which full buckets are swept next (amortised: doubles).
    sweep_at: usize,
    /// No sweep before this time: at the cap, a flood of new racers must
    /// not buy a sweep of the whole map each.
    next_sweep: u64,
}

const MIN_SWEEP: usize = 1024;

/// Least time between two sweeps.
const SWEEP_PAUSE: u64 = 100_000_000;

impl Buckets {
    fn new(rate: f64, burst: NonZeroU32, cap: usize) -> Buckets {
        // At least 1 ns: a rate past 10^9 records/s is no limit at all.
        let interval = (1e9 / rate).round().max(1.0) as u64;
        Buckets {
            full_at: HashMap::new(),
            interval,
            tolerance: interval.saturating_mul(u64::from(burst.get())),
            burst: burst.get(),
            cap,
            sweep_at: MIN_SWEEP.min(cap),
            next_sweep: 0,
        }
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
            let after = full_at + u64::from(records) * self.interval;
            let wait = (after - now).saturating_sub(self.tolerance);
            if wait > 0 && longest.is_none_or(|(w, _)| wait > w) {
                longest = Some((wait, racer));
            }
        }
        if let Some((wait, racer)) = longest {
            return Err(Refusal::Wait { wait, racer });
        }
        if self.full_at.len() + new_racers > self.sweep_at && now >= self.next_sweep {
            self.sweep(now);
        }
        if self.full_at.len() + new_racers > self.cap {
            return Err(Refusal::Full {
                wait: self.tolerance,
            });
        }
        for &(racer, records) in &demand.0 {
            let full_at = self.full_at.entry(racer).or_insert(now);
            *full_at = (*full_at).max(now) + u64::from(records) * self.interval;
        }
        Ok(())
    }

    /// Gives back what [`take`](Self::take) took for a batch that was not
    /// stored after all.
    fn refund(&mut self, demand: &Demand) {
        for &(racer, records) in &demand.0 {
            if let Some(full_at) = self.full_at.get_mut(&racer) {
                // Below now is simply full: `take` starts from now.
                *full_at = full_at.saturating_sub(u64::from(records) * self.interval);
            }
        }
    }

    /// Forgets the buckets that have refilled.
    fn sweep(&mut self, now: u64) {
        self.full_at.retain(|_, full_at| *full_at > now);
        self.sweep_at = (self.full_at.len() * 2).clamp(MIN_SWEEP.min(self.cap), self.cap);
        self.full_at.shrink_to(self.sweep_at);
        self.next_sweep = now + SWEEP_PAUSE;
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

/// The per-racer token buckets of one ingest service.
#[derive(Debug)]
pub struct RateLimiter {
    buckets: Mutex<Buckets>,
    epoch: Instant,
    rate: f64,
    burst: u32,
    cap: usize,
}

impl RateLimiter {
    /// `rate` records per second per racer (positive), bursts of `burst`.
    #[must_use]
    pub fn new(rate: f64, burst: NonZeroU32) -> RateLimiter {
        RateLimiter::with_cap(rate, burst, MAX_BUCKETS)
    }

    fn with_cap(rate: f64, burst: NonZeroU32, cap: usize) -> RateLimiter {
        RateLimiter {
            buckets: Mutex::new(Buckets::new(rate, burst, cap)),
            epoch: Instant::now(),
            rate,
            burst: burst.get(),
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

    const SECOND: u64 = 1_000_000_000;

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
        // bucket refills within half a second, so few are kept.
        let mut most = 0;
        for i in 0..60_000u64 {
            let now = i * SECOND / 1000;
            assert_eq!(b.take(&demand(&[(i, 1)]), now), Ok(()));
            most = most.max(b.len());
        }
        assert!(most <= 2 * MIN_SWEEP + 1, "kept {most} buckets");
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
        // Once the buckets have refilled, they are forgotten and room is made.
        assert_eq!(
            b.take(&demand(&[(9_999_999, 1)]), now + 16 * SECOND),
            Ok(())
        );
        assert!(b.len() <= MIN_SWEEP, "{} kept", b.len());
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
