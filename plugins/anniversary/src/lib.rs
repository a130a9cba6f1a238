//! The anniversary event type: "Hey, {first_name} {last_name} happy {n} year
//! anniversary", at `send_at` local time (09:00 by default) on the subject's
//! `anniversary`, where n is the number of years since the date. The date
//! itself (year 0) is never an occurrence; a February 29 date follows
//! `leap_day` in common years, as birthday does.
//!
//! Generation is `kairos-calendar`'s; what is this type's own — the count and
//! the text — is below, unit-tested on the host target. The WIT glue in
//! `component` is built for wasm32 only.

#[cfg(target_arch = "wasm32")]
mod component;

/// The name of the subject's date this type uses.
pub const DATE_NAME: &str = "anniversary";

/// Years from the anniversary date to an occurrence in `occurrence_year`.
/// An occurrence must be at least one year after the date.
pub fn years_since(date_year: i32, occurrence_year: i32) -> Result<u32, String> {
    occurrence_year
        .checked_sub(date_year)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n >= 1)
        .ok_or_else(|| {
            format!(
                "no anniversary in {occurrence_year} for a date in {date_year}: an anniversary is at least one year after the date"
            )
        })
}

pub fn message(first_name: &str, last_name: &str, years: u32) -> String {
    format!("Hey, {first_name} {last_name} happy {years} year anniversary")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_calendar::{Date, DateTime, LeapDay, Settings, next_anniversary_of};

    fn at(year: i32, month: u8, day: u8, hour: u8) -> DateTime {
        DateTime {
            date: Date::new(year, month, day),
            hour,
            minute: 0,
            second: 0,
        }
    }

    #[test]
    fn counts_whole_years_since_the_date() {
        assert_eq!(years_since(1835, 1836), Ok(1));
        assert_eq!(years_since(1835, 2026), Ok(191));
    }

    #[test]
    fn year_zero_and_earlier_are_refused() {
        assert!(
            years_since(2026, 2026)
                .unwrap_err()
                .contains("at least one year")
        );
        assert!(years_since(2026, 2025).is_err());
    }

    #[test]
    fn the_text_is_the_contracts() {
        assert_eq!(
            message("Ada", "Lovelace", 191),
            "Hey, Ada Lovelace happy 191 year anniversary"
        );
    }

    #[test]
    fn a_wedding_this_year_is_first_celebrated_next_year() {
        let settings = Settings::default();
        let next =
            next_anniversary_of(Date::new(2026, 6, 1), at(2026, 11, 22, 10), &settings).unwrap();
        assert_eq!(next, at(2027, 6, 1, 9));
        assert_eq!(years_since(2026, next.date.year), Ok(1));
    }

    #[test]
    fn feb_29_follows_leap_day_in_common_years() {
        let date = Date::new(2000, 2, 29);
        let after = at(2027, 1, 1, 0);
        let feb28 = next_anniversary_of(date, after, &Settings::default()).unwrap();
        assert_eq!(feb28, at(2027, 2, 28, 9));
        let mar1 = Settings {
            leap_day: LeapDay::Mar1,
            ..Settings::default()
        };
        assert_eq!(
            next_anniversary_of(date, after, &mar1).unwrap(),
            at(2027, 3, 1, 9)
        );
        assert_eq!(
            next_anniversary_of(date, at(2028, 1, 1, 0), &mar1).unwrap(),
            at(2028, 2, 29, 9)
        );
        assert_eq!(years_since(2000, 2027), Ok(27));
    }
}
