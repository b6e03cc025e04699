//! The simulated fleet, as the original simulator behaved: every racer
//! seeded for repeatable runs, cadence and resistance trending linearly over
//! each race, one message a second, `final` on the race's last second, a new
//! race every `race_seconds` (`raceId = floor(epoch_ms / race_ms)`).

use serde::Serialize;

/// The fleet's shape.
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    /// Racers.
    pub racers: u64,
    /// Classes used, 1 to this.
    pub classes: u8,
    /// Seconds per race.
    pub race_seconds: u16,
    /// Seed of every racer's ride.
    pub seed: u64,
}

/// One telemetry message, in the wire format.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// `update` or `final`.
    pub event: &'static str,
    /// The bike's clock.
    pub device_timestamp: u64,
    /// Second of the race, from 1.
    pub second: u16,
    /// The race.
    pub race_id: u64,
    /// The racer's name.
    pub name: String,
    /// The racer.
    pub racer_id: u64,
    /// Its class.
    pub class_id: u8,
    /// Cadence.
    pub cadence: f64,
    /// Resistance.
    pub resistance: f64,
}

impl Message {
    /// Its output, by the backend's formula.
    #[must_use]
    pub fn output(&self) -> f64 {
        alleycat_core::output(self.cadence, self.resistance)
    }
}

impl Fleet {
    /// Racer `index`'s id: offset by the seed so runs with different seeds
    /// do not mix their racers' histories.
    #[must_use]
    pub fn racer_id(&self, index: u64) -> u64 {
        (self.seed % 1000) * 1_000_000 + index
    }

    /// Racer `index`'s class.
    #[must_use]
    pub fn class_of(&self, index: u64) -> u8 {
        (index % u64::from(self.classes)) as u8 + 1
    }

    /// Up to `n` other racers of racer `index`'s class (indexes), the ones
    /// after it in the class, wrapping round: whom a viewer following
    /// `index` follows besides.
    #[must_use]
    pub fn classmates(&self, index: u64, n: usize) -> Vec<u64> {
        let step = u64::from(self.classes);
        let first = index % step;
        let in_class = (self.racers - first).div_ceil(step);
        (1..in_class)
            .take(n)
            .map(|k| first + (index / step + k) % in_class * step)
            .collect()
    }

    /// Where a racer's messages fall within each second, in ms: spread so a
    /// fleet does not send in one burst.
    #[must_use]
    pub fn phase_ms(&self, index: u64) -> u64 {
        index * 1000 / self.racers.max(1)
    }

    /// The race and second running at `epoch_ms`.
    #[must_use]
    pub fn race_at(&self, epoch_ms: u64) -> (u64, u16) {
        let race_ms = u64::from(self.race_seconds) * 1000;
        (epoch_ms / race_ms, (epoch_ms % race_ms / 1000) as u16 + 1)
    }

    /// Racer `index`'s message for `second` of `race`.
    #[must_use]
    pub fn message(&self, index: u64, race: u64, second: u16, device_ms: u64) -> Message {
        // Each racer's ride in each race is its own seeded trend.
        let mut rng = fastrand::Rng::with_seed(
            self.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ race.rotate_left(17),
        );
        let (c0, c1) = (rng.f64() * 60.0 + 30.0, rng.f64() * 60.0 + 30.0);
        let (r0, r1) = (rng.f64() * 53.0 + 33.0, rng.f64() * 53.0 + 33.0);
        let t = f64::from(second.saturating_sub(1)) / f64::from(self.race_seconds.max(2) - 1);
        let round2 = |x: f64| (x * 100.0).round() / 100.0;
        Message {
            event: if second >= self.race_seconds {
                "final"
            } else {
                "update"
            },
            device_timestamp: device_ms,
            second,
            race_id: race,
            name: format!("Racer {}", self.racer_id(index)),
            racer_id: self.racer_id(index),
            class_id: self.class_of(index),
            cadence: round2(c0 + (c1 - c0) * t),
            resistance: round2(r0 + (r1 - r0) * t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> Fleet {
        Fleet {
            racers: 1000,
            classes: 6,
            race_seconds: 300,
            seed: 7,
        }
    }

    #[test]
    fn classmates_are_other_racers_of_the_same_class() {
        let f = fleet();
        for index in [0, 5, 994, 999] {
            let mates = f.classmates(index, 20);
            assert_eq!(mates.len(), 20);
            for m in &mates {
                assert!(*m < f.racers && *m != index);
                assert_eq!(f.class_of(*m), f.class_of(index));
            }
            let mut unique = mates.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), 20, "{mates:?}");
        }
        // A class smaller than the list: everyone else in it, once.
        let small = Fleet {
            racers: 14,
            ..fleet()
        };
        assert_eq!(small.classmates(1, 20), [7, 13]);
        assert_eq!(small.classmates(13, 20), [1, 7]);
        assert_eq!(small.classmates(5, 20), [11], "class 6 has racers 5 and 11");
    }

    #[test]
    fn races_follow_the_wall_clock() {
        assert_eq!(fleet().race_at(5_397_285 * 300_000), (5_397_285, 1));
        assert_eq!(
            fleet().race_at(5_397_285 * 300_000 + 299_999),
            (5_397_285, 300)
        );
    }

    #[test]
    fn rides_are_repeatable_trend_linearly_and_end_with_final() {
        let f = fleet();
        let a = f.message(3, 10, 1, 0);
        let b = f.message(3, 10, 1, 0);
        assert_eq!((a.cadence, a.resistance), (b.cadence, b.resistance));
        let mid = f.message(3, 10, 150, 0);
        let end = f.message(3, 10, 300, 0);
        assert!((a.cadence.min(end.cadence)..=a.cadence.max(end.cadence)).contains(&mid.cadence));
        assert!((30.0..=90.0).contains(&a.cadence) && (33.0..=86.0).contains(&a.resistance));
        assert_eq!((a.event, end.event), ("update", "final"));
        assert_ne!(
            f.message(3, 11, 1, 0).cadence,
            a.cadence,
            "another race, another ride"
        );
        assert_eq!(a.class_id, 4);
    }

    #[test]
    fn phases_spread_over_the_second() {
        let f = fleet();
        assert_eq!(f.phase_ms(0), 0);
        assert_eq!(f.phase_ms(500), 500);
        assert!(f.phase_ms(999) < 1000);
    }
}
