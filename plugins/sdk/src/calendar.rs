//! Dates, local wall times and yearly recurrence: what most event types
//! compute with. Plain Rust, free of any WIT type, so a type's logic is
//! unit-tested natively with `cargo test`.

/// A proleptic Gregorian date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    pub year: i32,
    /// 1..=12
    pub month: u8,
    /// 1..=31
    pub day: u8,
}

impl Date {
    pub const fn new(year: i32, month: u8, day: u8) -> Self {
        Self { year, month, day }
    }

    /// This date at `time`, second 0.
    pub const fn at(self, time: TimeOfDay) -> DateTime {
        DateTime {
            date: self,
            hour: time.hour,
            minute: time.minute,
            second: 0,
        }
    }
}

/// A time of day to the minute, such as a type's `send_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay {
    /// 0..=23
    pub hour: u8,
    /// 0..=59
    pub minute: u8,
}

impl TimeOfDay {
    pub const fn new(hour: u8, minute: u8) -> Self {
        Self { hour, minute }
    }

    /// Strict `HH:MM`, 00:00 to 23:59.
    pub fn parse(text: &str) -> Option<Self> {
        let (h, m) = text.split_once(':')?;
        let two_digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
        if !two_digits(h) || !two_digits(m) {
            return None;
        }
        let hour: u8 = h.parse().ok()?;
        let minute: u8 = m.parse().ok()?;
        (hour < 24 && minute < 60).then_some(Self { hour, minute })
    }
}

/// A local wall-clock time in the subject's timezone, which the host turns
/// into an instant. Field order makes the derived ordering chronological.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DateTime {
    pub date: Date,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl DateTime {
    pub const fn new(date: Date, hour: u8, minute: u8, second: u8) -> Self {
        Self {
            date,
            hour,
            minute,
            second,
        }
    }
}

/// Where a February 29 date falls in a year that has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LeapDay {
    #[default]
    Feb28,
    Mar1,
}

pub fn is_leap_year(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// The day `original` falls on in `year`: itself, or for February 29 in a
/// common year, February 28 or March 1 as `leap_day` says.
pub fn date_in_year(original: Date, year: i32, leap_day: LeapDay) -> Date {
    if original.month == 2 && original.day == 29 && !is_leap_year(year) {
        match leap_day {
            LeapDay::Feb28 => Date::new(year, 2, 28),
            LeapDay::Mar1 => Date::new(year, 3, 1),
        }
    } else {
        Date::new(year, original.month, original.day)
    }
}

/// The first yearly recurrence of `original`, at `time`, strictly after
/// `after`. The original date itself is not an occurrence (year 0); `None`
/// only when the year would overflow.
pub fn next_yearly(
    original: Date,
    after: DateTime,
    time: TimeOfDay,
    leap_day: LeapDay,
) -> Option<DateTime> {
    let first_year = after.date.year.max(original.year.checked_add(1)?);
    (first_year..=first_year.checked_add(1)?)
        .map(|year| date_in_year(original, year, leap_day).at(time))
        .find(|candidate| *candidate > after)
}

/// Whole years from `original` to an occurrence in `year`: at least 1, or an
/// error saying there is no such anniversary.
pub fn years_since(original: Date, year: i32) -> Result<u32, crate::Error> {
    year.checked_sub(original.year)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n >= 1)
        .ok_or_else(|| {
            crate::Error::new(format!(
                "no anniversary in {year} for a date in {}: an anniversary is at least one year after the date",
                original.year
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NINE: TimeOfDay = TimeOfDay::new(9, 0);

    fn at(year: i32, month: u8, day: u8, hour: u8, minute: u8) -> DateTime {
        DateTime::new(Date::new(year, month, day), hour, minute, 0)
    }

    fn next(original: Date, after: DateTime) -> Option<DateTime> {
        next_yearly(original, after, NINE, LeapDay::Feb28)
    }

    #[test]
    fn a_date_later_this_year_is_this_year() {
        let next = next(Date::new(1815, 12, 10), at(2026, 11, 22, 10, 0));
        assert_eq!(next, Some(at(2026, 12, 10, 9, 0)));
    }

    #[test]
    fn a_date_earlier_this_year_is_next_year() {
        let next = next(Date::new(1990, 3, 1), at(2026, 11, 22, 10, 0));
        assert_eq!(next, Some(at(2027, 3, 1, 9, 0)));
    }

    #[test]
    fn the_day_itself_before_the_time_is_today_and_after_it_next_year() {
        let date = Date::new(1990, 11, 22);
        assert_eq!(
            next(date, at(2026, 11, 22, 8, 59)),
            Some(at(2026, 11, 22, 9, 0))
        );
        assert_eq!(
            next(date, at(2026, 11, 22, 9, 0)),
            Some(at(2027, 11, 22, 9, 0))
        );
    }

    #[test]
    fn the_original_date_itself_is_not_an_occurrence() {
        let next = next(Date::new(2026, 12, 10), at(2026, 1, 1, 0, 0));
        assert_eq!(next, Some(at(2027, 12, 10, 9, 0)));
    }

    #[test]
    fn feb_29_falls_on_feb_28_or_mar_1_in_common_years() {
        let leap = Date::new(2000, 2, 29);
        let after = at(2027, 1, 1, 0, 0);
        assert_eq!(
            next_yearly(leap, after, NINE, LeapDay::Feb28),
            Some(at(2027, 2, 28, 9, 0))
        );
        assert_eq!(
            next_yearly(leap, after, NINE, LeapDay::Mar1),
            Some(at(2027, 3, 1, 9, 0))
        );
        assert_eq!(
            next_yearly(leap, at(2028, 1, 1, 0, 0), NINE, LeapDay::Mar1),
            Some(at(2028, 2, 29, 9, 0))
        );
    }

    #[test]
    fn the_time_is_the_one_given() {
        let next = next_yearly(
            Date::new(1815, 12, 10),
            at(2026, 11, 22, 10, 0),
            TimeOfDay::new(7, 45),
            LeapDay::Feb28,
        );
        assert_eq!(next, Some(at(2026, 12, 10, 7, 45)));
    }

    #[test]
    fn no_year_past_the_last_one() {
        assert_eq!(next(Date::new(i32::MAX, 1, 1), at(2026, 1, 1, 0, 0)), None);
    }

    #[test]
    fn leap_years_follow_the_gregorian_rule() {
        assert!(is_leap_year(2000) && is_leap_year(2024));
        assert!(!is_leap_year(1900) && !is_leap_year(2026));
    }

    #[test]
    fn times_of_day_are_strict_hh_mm() {
        assert_eq!(TimeOfDay::parse("17:45"), Some(TimeOfDay::new(17, 45)));
        assert_eq!(TimeOfDay::parse("00:00"), Some(TimeOfDay::new(0, 0)));
        for bad in ["9:00", "24:00", "12:60", "12-00", "", "12:00:00", "+1:00"] {
            assert_eq!(TimeOfDay::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn years_since_counts_whole_years_from_one() {
        let date = Date::new(1835, 7, 8);
        assert_eq!(years_since(date, 1836), Ok(1));
        assert_eq!(years_since(date, 2026), Ok(191));
        let err = years_since(date, 1835).unwrap_err();
        assert!(err.message().contains("at least one year"), "{err}");
        assert!(years_since(date, 1800).is_err());
    }
}
