//! Leaderboard periods: UTC days, ISO weeks, calendar months and all time.
//!
//! A result belongs to the period in which it was ridden: the middle of the
//! racer's ride, from its `final` record's arrival on the stream less half
//! its recorded seconds ([`crate::store::Final::ridden_ms`]). That time
//! comes from the stream, not from the process that reads it, so every
//! rankings process, and the same process after a restart, files a result
//! under the same boards and their merges converge; and a race that ends at
//! midnight counts, for every racer, for the day it was ridden, though some
//! finals arrive after it.

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, Utc};
use std::fmt;
use std::sync::Arc;

/// Which board of a class: one per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// A UTC day.
    Day,
    /// An ISO week (Monday to Sunday, UTC).
    Week,
    /// A calendar month (UTC).
    Month,
    /// Every race since the start.
    All,
}

impl Period {
    /// The periods whose boards a result is filed under.
    pub const ALL: [Period; 4] = [Period::Day, Period::Week, Period::Month, Period::All];

    /// The name used in queries and answers.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::All => "all",
        }
    }

    /// The period named `name` in a query.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Period> {
        Period::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The board of this period that holds `date`.
    #[must_use]
    pub fn board_of(self, date: NaiveDate) -> Board {
        match self {
            Period::Day => Board::Day(date),
            Period::Week => {
                let week = date.iso_week();
                Board::Week {
                    year: week.year(),
                    week: week.week(),
                }
            }
            Period::Month => Board::Month {
                year: date.year(),
                month: date.month(),
            },
            Period::All => Board::All,
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One leaderboard of a class: all time, or one day, week or month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Board {
    /// A UTC day.
    Day(NaiveDate),
    /// An ISO week of an ISO week-numbering year.
    Week {
        /// The ISO year (the first days of January can belong to the
        /// previous year's last week, the last days of December to the
        /// next year's first).
        year: i32,
        /// 1 to 53.
        week: u32,
    },
    /// A calendar month.
    Month {
        /// The year.
        year: i32,
        /// 1 to 12.
        month: u32,
    },
    /// All time.
    All,
}

impl Board {
    /// The boards a result of a race that finished at `finished_ms` (ms
    /// since the epoch) is filed under: its day, week and month, and all
    /// time. A time chrono cannot represent goes to all time only.
    #[must_use]
    pub fn all_holding(finished_ms: i64) -> Vec<Board> {
        match DateTime::<Utc>::from_timestamp_millis(finished_ms) {
            Some(at) => Period::ALL
                .into_iter()
                .map(|p| p.board_of(at.date_naive()))
                .collect(),
            None => vec![Board::All],
        }
    }

    /// Where the board is kept, below the results prefix: the all-time
    /// board keeps the key it always had.
    #[must_use]
    pub fn key_part(&self) -> String {
        match self {
            Board::Day(date) => format!("day/{}", date.format("%Y-%m-%d")),
            Board::Week { year, week } => format!("week/{year:04}-W{week:02}"),
            Board::Month { year, month } => format!("month/{year:04}-{month:02}"),
            Board::All => String::new(),
        }
    }

    /// Its period.
    #[must_use]
    pub fn period(&self) -> Period {
        match self {
            Board::Day(_) => Period::Day,
            Board::Week { .. } => Period::Week,
            Board::Month { .. } => Period::Month,
            Board::All => Period::All,
        }
    }

    /// Its first and last day (UTC), both included; `None` for all time.
    #[must_use]
    pub fn days(&self) -> Option<(NaiveDate, NaiveDate)> {
        match *self {
            Board::Day(date) => Some((date, date)),
            Board::Week { year, week } => {
                let monday = NaiveDate::from_isoywd_opt(year, week, chrono::Weekday::Mon)?;
                Some((monday, monday.checked_add_days(Days::new(6))?))
            }
            Board::Month { year, month } => {
                let first = NaiveDate::from_ymd_opt(year, month, 1)?;
                let last = first
                    .checked_add_months(Months::new(1))?
                    .pred_opt()
                    .unwrap_or(first);
                Some((first, last))
            }
            Board::All => None,
        }
    }
}

/// What a rankings process takes as the current time (ms since the epoch):
/// the system clock, or a test's.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
#[must_use]
pub fn system_clock() -> Clock {
    Arc::new(|| Utc::now().timestamp_millis())
}

/// The UTC day `clock` says it is.
#[must_use]
pub fn today(clock: &Clock) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_millis(clock())
        .unwrap_or_default()
        .date_naive()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    fn keys(finished: &str) -> Vec<String> {
        Board::all_holding(ms(finished))
            .iter()
            .map(Board::key_part)
            .collect()
    }

    #[test]
    fn a_result_is_filed_under_its_utc_day_iso_week_month_and_all_time() {
        assert_eq!(
            keys("2026-12-02T10:00:00Z"),
            ["day/2026-12-02", "week/2026-W49", "month/2026-12", ""]
        );
        // One millisecond apart across midnight UTC: two days, one week
        // (a Wednesday into a Thursday).
        assert_eq!(
            keys("2026-12-02T23:59:59.999Z")[..2],
            ["day/2026-12-02", "week/2026-W49"]
        );
        assert_eq!(
            keys("2026-12-03T00:00:00Z")[..2],
            ["day/2026-12-03", "week/2026-W49"]
        );
        // Midnight in another zone is not a boundary: 23:30 at UTC-5 is
        // the next UTC day.
        assert_eq!(keys("2026-12-02T23:30:00-05:00")[0], "day/2026-12-03");
        // Sunday into Monday: a new ISO week.
        assert_eq!(keys("2026-12-06T23:59:59Z")[1], "week/2026-W49");
        assert_eq!(keys("2026-12-07T00:00:00Z")[1], "week/2026-W50");
    }

    #[test]
    fn iso_weeks_belong_to_their_iso_year_across_new_year() {
        // 2026-12-31 is a Thursday: week 53 of 2026. 2027-01-03, a Sunday,
        // still is; 2027-01-04 starts week 1 of 2027.
        assert_eq!(
            keys("2026-12-31T12:00:00Z")[1..3],
            ["week/2026-W53", "month/2026-12"]
        );
        assert_eq!(
            keys("2027-01-03T12:00:00Z")[1..3],
            ["week/2026-W53", "month/2027-01"]
        );
        assert_eq!(keys("2027-01-04T00:00:00Z")[1], "week/2027-W01");
        // 2024-12-30, a Monday, is in week 1 of 2025.
        assert_eq!(keys("2024-12-30T00:00:00Z")[1], "week/2025-W01");
    }

    #[test]
    fn each_board_knows_its_days() {
        let at = date("2024-02-14");
        assert_eq!(Period::Day.board_of(at).days(), Some((at, at)));
        assert_eq!(
            Period::Week.board_of(at).days(),
            Some((date("2024-02-12"), date("2024-02-18")))
        );
        assert_eq!(
            Period::Month.board_of(at).days(),
            Some((date("2024-02-01"), date("2024-02-29"))),
            "a leap year's February"
        );
        assert_eq!(
            Period::Month.board_of(date("2026-12-31")).days(),
            Some((date("2026-12-01"), date("2026-12-31")))
        );
        assert_eq!(Period::All.board_of(at).days(), None);
        // Every day of a week's range is filed under that week.
        let week = Period::Week.board_of(at);
        let (first, last) = week.days().unwrap();
        for day in first.iter_days().take_while(|d| *d <= last) {
            assert_eq!(Period::Week.board_of(day), week);
        }
        assert_ne!(Period::Week.board_of(last.succ_opt().unwrap()), week);
    }

    #[test]
    fn periods_round_trip_their_names() {
        for p in Period::ALL {
            assert_eq!(Period::from_name(p.name()), Some(p));
        }
        assert_eq!(Period::from_name("year"), None);
        assert_eq!(Period::from_name("Day"), None);
    }

    #[test]
    fn a_time_out_of_chronos_range_goes_to_all_time_only() {
        assert_eq!(Board::all_holding(i64::MAX), [Board::All]);
    }

    #[test]
    fn the_clocks_day_is_utc() {
        let clock: Clock = Arc::new(|| ms("2026-12-02T23:59:59.999Z"));
        assert_eq!(today(&clock), date("2026-12-02"));
        let clock: Clock = Arc::new(|| ms("2026-12-03T00:00:00Z"));
        assert_eq!(today(&clock), date("2026-12-03"));
    }
}
