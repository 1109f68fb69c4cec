//! `core.cron`: when a cron expression fires next, in a time zone, across daylight-saving
//! changes. The expression is matched against the *wall clock* of its zone, and each wall-clock
//! time fires once:
//! - a time that does not exist (the hour skipped when clocks go forward) fires when the skipped
//!   hour ends (02:30 on a spring-forward night fires at 03:00);
//! - a time that exists twice (the hour repeated when clocks go back) fires at its first
//!   occurrence only (an hourly job runs once in the repeated hour, not twice).
//!
//! This is Vixie cron's behaviour for jobs at fixed times, and what a person reading `30 2 * * *`
//! expects: once a day, every day.

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::{
    parser::{CronParser, Seconds, Year},
    Cron,
};

/// A parsed `core.cron` trigger: 5 fields (minute hour day-of-month month day-of-week) or 6 with
/// seconds first; `timezone` is an IANA name (`Europe/Berlin`), UTC when absent.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    tz: Tz,
}

impl CronSchedule {
    pub fn parse(expression: &str, timezone: Option<&str>) -> Result<CronSchedule, String> {
        let fields = expression.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "{expression:?} has {fields} fields; a cron expression has 5 (minute hour day month weekday) or 6 (seconds first)"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|e| format!("{expression:?} is not a cron expression: {e}"))?;
        let tz = match timezone {
            None => Tz::UTC,
            Some(name) => name.parse::<Tz>().map_err(|_| {
                format!("{name:?} is not a time zone; use an IANA name such as Europe/Berlin or UTC")
            })?,
        };
        Ok(CronSchedule { cron, tz })
    }

    /// The first firing strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Wall-clock times of the zone, searched as if they were UTC (which has no DST).
        let mut wall = Utc.from_utc_datetime(&after.with_timezone(&self.tz).naive_local());
        for _ in 0..10_000 {
            wall = self.cron.find_next_occurrence(&wall, false).ok()?;
            let at = self.instant(wall.naive_utc())?;
            if at > after {
                return Some(at);
            }
        }
        None
    }

    /// The instant a wall-clock time of the zone stands for, by the rules above.
    fn instant(&self, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.tz.from_local_datetime(&wall) {
            LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
            LocalResult::None => (1..=24 * 60).find_map(|m| {
                match self.tz.from_local_datetime(&(wall + Duration::minutes(m))) {
                    // The first minute after the gap, back to its start: the transition itself.
                    LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                        let t = t.with_timezone(&Utc);
                        Some(t - Duration::seconds(i64::from(chrono::Timelike::second(&t))))
                    }
                    LocalResult::None => None,
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn run(expr: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        let s = CronSchedule::parse(expr, Some(tz)).unwrap();
        let mut t = utc(from);
        (0..n)
            .map(|_| {
                t = s.next_after(t).unwrap();
                t.with_timezone(&s.tz).to_rfc3339()
            })
            .collect()
    }

    #[test]
    fn the_skipped_hour_fires_when_it_ends_and_the_repeated_hour_once() {
        // Europe/Berlin: 2026-03-29 02:00 → 03:00 (skipped); 2026-10-25 03:00 → 02:00 (repeated).
        assert_eq!(
            run("30 2 * * *", "Europe/Berlin", "2026-03-27T12:00:00Z", 3),
            ["2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]
        );
        assert_eq!(
            run("30 2 * * *", "Europe/Berlin", "2026-10-23T12:00:00Z", 3),
            ["2026-10-24T02:30:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
        );
        // Hourly through the repeated hour: 02:00 once (its first occurrence), then 03:00.
        assert_eq!(
            run("0 * * * *", "Europe/Berlin", "2026-10-24T23:30:00Z", 3),
            ["2026-10-25T02:00:00+02:00", "2026-10-25T03:00:00+01:00", "2026-10-25T04:00:00+01:00"]
        );
        // Hourly through the skipped hour: 01:00, then 03:00 (02:00 does not exist; its firing is
        // the end of the gap, which is 03:00 itself), then 04:00.
        assert_eq!(
            run("0 * * * *", "Europe/Berlin", "2026-03-28T23:30:00Z", 3),
            ["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00"]
        );
    }

    #[test]
    fn fields_seconds_and_zones() {
        assert_eq!(
            run("*/20 * * * * *", "UTC", "2026-01-01T00:00:05Z", 2),
            ["2026-01-01T00:00:20+00:00", "2026-01-01T00:00:40+00:00"]
        );
        assert_eq!(
            run("0 9 * * MON", "America/New_York", "2026-01-01T00:00:00Z", 1),
            ["2026-01-05T09:00:00-05:00"]
        );
        assert_eq!(
            run("0 9 * * 0", "UTC", "2026-01-01T00:00:00Z", 1),
            ["2026-01-04T09:00:00+00:00"],
            "0 is Sunday"
        );
        for (expr, tz) in [
            ("* * *", "UTC"),
            ("61 * * * *", "UTC"),
            ("0 9 * * *", "Mars/Olympus"),
            ("0 0 9 * * * 2030", "UTC"),
        ] {
            assert!(CronSchedule::parse(expr, Some(tz)).is_err(), "{expr} {tz}");
        }
    }
}
