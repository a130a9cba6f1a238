//! Calendar arithmetic for yearly event types (birthday, anniversary), free
//! of any WIT type so it is unit-tested on the host target.

/// A proleptic Gregorian date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

impl Date {
    pub const fn new(year: i32, month: u8, day: u8) -> Self {
        Self { year, month, day }
    }
}

/// A local wall-clock time; field order makes the derived ordering chronological.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DateTime {
    pub date: Date,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

/// Where a February 29 date falls in a year that has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeapDay {
    Feb28,
    Mar1,
}

/// The operator's config for a yearly event type, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub send_hour: u8,
    pub send_minute: u8,
    pub leap_day: LeapDay,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            send_hour: 9,
            send_minute: 0,
            leap_day: LeapDay::Feb28,
        }
    }
}

impl Settings {
    /// Reads `send_at` (`HH:MM`) and `leap_day` (`feb28` | `mar1`); other keys are ignored.
    pub fn from_config(config: &[(String, String)]) -> Result<Self, String> {
        let mut settings = Self::default();
        for (key, value) in config {
            match key.as_str() {
                "send_at" => {
                    let (hour, minute) = parse_hh_mm(value)
                        .ok_or_else(|| format!("config send_at: expected HH:MM, got {value:?}"))?;
                    settings.send_hour = hour;
                    settings.send_minute = minute;
                }
                "leap_day" => {
                    settings.leap_day = match value.as_str() {
                        "feb28" => LeapDay::Feb28,
                        "mar1" => LeapDay::Mar1,
                        _ => {
                            return Err(format!(
                                "config leap_day: expected feb28 or mar1, got {value:?}"
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(settings)
    }
}

fn parse_hh_mm(value: &str) -> Option<(u8, u8)> {
    let (h, m) = value.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let hour: u8 = h.parse().ok()?;
    let minute: u8 = m.parse().ok()?;
    (hour < 24 && minute < 60).then_some((hour, minute))
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

/// The first yearly recurrence of `original` at the configured time that is
/// strictly after `after`. The original date itself is not an occurrence (year
/// 0); `None` only when the year would overflow.
pub fn next_anniversary_of(
    original: Date,
    after: DateTime,
    settings: &Settings,
) -> Option<DateTime> {
    let first_year = after.date.year.max(original.year.checked_add(1)?);
    (first_year..=first_year.checked_add(1)?)
        .map(|year| DateTime {
            date: date_in_year(original, year, settings.leap_day),
            hour: settings.send_hour,
            minute: settings.send_minute,
            second: 0,
        })
        .find(|candidate| *candidate > after)
}

/// A wall time as a plain tuple `(year, month, day, hour, minute, second)`:
/// what each plugin's WIT glue converts its `local-datetime` to and from.
pub type WallTime = (i32, u8, u8, u8, u8, u8);

/// `next-occurrence` for a yearly type, on plain values: the first
/// recurrence of `date` (year, month, day) at the configured `send_at`
/// strictly after `after`. Config errors name the key.
pub fn next_occurrence(
    date: (i32, u8, u8),
    after: WallTime,
    config: &[(String, String)],
) -> Result<Option<WallTime>, String> {
    let settings = Settings::from_config(config)?;
    let (y, mo, d, h, mi, s) = after;
    let after = DateTime {
        date: Date::new(y, mo, d),
        hour: h,
        minute: mi,
        second: s,
    };
    Ok(
        next_anniversary_of(Date::new(date.0, date.1, date.2), after, &settings).map(|next| {
            (
                next.date.year,
                next.date.month,
                next.date.day,
                next.hour,
                next.minute,
                next.second,
            )
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(year: i32, month: u8, day: u8, hour: u8, minute: u8) -> DateTime {
        DateTime {
            date: Date::new(year, month, day),
            hour,
            minute,
            second: 0,
        }
    }

    #[test]
    fn a_birthday_later_this_year_is_this_year() {
        let next = next_anniversary_of(
            Date::new(1990, 12, 10),
            at(2026, 11, 22, 12, 0),
            &Settings::default(),
        );
        assert_eq!(next, Some(at(2026, 12, 10, 9, 0)));
    }

    #[test]
    fn a_birthday_earlier_this_year_is_next_year() {
        let next = next_anniversary_of(
            Date::new(1990, 3, 1),
            at(2026, 11, 22, 12, 0),
            &Settings::default(),
        );
        assert_eq!(next, Some(at(2027, 3, 1, 9, 0)));
    }

    #[test]
    fn today_before_send_time_is_today_and_after_it_is_next_year() {
        let born = Date::new(1990, 11, 22);
        let settings = Settings::default();
        assert_eq!(
            next_anniversary_of(born, at(2026, 11, 22, 8, 59), &settings),
            Some(at(2026, 11, 22, 9, 0))
        );
        assert_eq!(
            next_anniversary_of(born, at(2026, 11, 22, 9, 0), &settings),
            Some(at(2027, 11, 22, 9, 0))
        );
    }

    #[test]
    fn the_day_of_birth_itself_is_not_an_occurrence() {
        let born = Date::new(2026, 11, 22);
        let next = next_anniversary_of(born, at(2026, 11, 22, 0, 0), &Settings::default());
        assert_eq!(next, Some(at(2027, 11, 22, 9, 0)));
    }

    #[test]
    fn feb_29_falls_on_feb_28_or_mar_1_in_common_years() {
        let born = Date::new(2000, 2, 29);
        let feb28 = Settings::default();
        let mar1 = Settings {
            leap_day: LeapDay::Mar1,
            ..Settings::default()
        };
        assert_eq!(
            next_anniversary_of(born, at(2026, 1, 1, 0, 0), &feb28),
            Some(at(2026, 2, 28, 9, 0))
        );
        assert_eq!(
            next_anniversary_of(born, at(2026, 1, 1, 0, 0), &mar1),
            Some(at(2026, 3, 1, 9, 0))
        );
        assert_eq!(
            next_anniversary_of(born, at(2027, 6, 1, 0, 0), &feb28),
            Some(at(2028, 2, 29, 9, 0))
        );
    }

    #[test]
    fn send_at_and_leap_day_are_read_from_config() {
        let config = vec![
            ("send_at".to_string(), "17:45".to_string()),
            ("leap_day".to_string(), "mar1".to_string()),
            ("unrelated".to_string(), "x".to_string()),
        ];
        let settings = Settings::from_config(&config).unwrap();
        assert_eq!(
            (settings.send_hour, settings.send_minute, settings.leap_day),
            (17, 45, LeapDay::Mar1)
        );
    }

    #[test]
    fn bad_config_values_are_errors_naming_the_key() {
        for (key, value) in [
            ("send_at", "9:00"),
            ("send_at", "24:00"),
            ("send_at", "12:60"),
            ("leap_day", "feb29"),
        ] {
            let err = Settings::from_config(&[(key.to_string(), value.to_string())]).unwrap_err();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn leap_years_follow_the_gregorian_rule() {
        assert!(is_leap_year(2000) && is_leap_year(2024));
        assert!(!is_leap_year(1900) && !is_leap_year(2026));
    }

    #[test]
    fn next_occurrence_on_plain_values_reads_the_config() {
        let config = [("send_at".to_string(), "07:45".to_string())];
        assert_eq!(
            next_occurrence((1815, 12, 10), (2026, 11, 22, 10, 0, 0), &config),
            Ok(Some((2026, 12, 10, 7, 45, 0)))
        );
        let bad = [("leap_day".to_string(), "feb30".to_string())];
        assert!(
            next_occurrence((2000, 2, 29), (2027, 1, 1, 0, 0, 0), &bad)
                .unwrap_err()
                .contains("leap_day")
        );
    }
}
