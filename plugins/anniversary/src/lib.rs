//! The anniversary event type: "Hey, {first_name} {last_name} happy {n} year
//! anniversary", at `send_at` local time (09:00 by default) on the subject's
//! `anniversary`, where n is the number of years since the date. The date
//! itself (year 0) is never an occurrence; a February 29 date follows
//! `leap_day` in common years, as birthday does.

use kairos_plugin::{Config, DateTime, Error, EventType, Subject, next_yearly, years_since};

pub struct Anniversary;

impl EventType for Anniversary {
    const NAME: &'static str = "anniversary";
    const DESCRIPTION: &'static str =
        "An anniversary greeting with the number of years, at send_at (default 09:00) local time";
    const DATES: &'static [&'static str] = &["anniversary"];

    fn next_occurrence(
        subject: &Subject,
        after: DateTime,
        config: &Config,
    ) -> Result<Option<DateTime>, Error> {
        let date = subject.date("anniversary")?;
        Ok(next_yearly(
            date,
            after,
            config.send_at()?,
            config.leap_day()?,
        ))
    }

    fn format_message(
        subject: &Subject,
        occurrence: DateTime,
        config: &Config,
    ) -> Result<String, Error> {
        config.send_at()?;
        config.leap_day()?;
        let years = years_since(subject.date("anniversary")?, occurrence.date.year)?;
        Ok(format!(
            "Hey, {} {} happy {years} year anniversary",
            subject.first_name, subject.last_name
        ))
    }
}

kairos_plugin::export!(Anniversary);

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_plugin::Date;

    fn at(year: i32, month: u8, day: u8, hour: u8) -> DateTime {
        DateTime::new(Date::new(year, month, day), hour, 0, 0)
    }

    fn married(date: Date) -> Subject {
        Subject::new("Ada", "Lovelace").with_date("anniversary", date)
    }

    #[test]
    fn the_text_counts_whole_years_since_the_date() {
        let ada = married(Date::new(1835, 7, 8));
        let text = Anniversary::format_message(&ada, at(2026, 7, 8, 9), &Config::default());
        assert_eq!(
            text.unwrap(),
            "Hey, Ada Lovelace happy 191 year anniversary"
        );
    }

    #[test]
    fn a_wedding_this_year_is_first_celebrated_next_year() {
        let newlyweds = married(Date::new(2026, 6, 1));
        let next =
            Anniversary::next_occurrence(&newlyweds, at(2026, 11, 22, 10), &Config::default());
        assert_eq!(next, Ok(Some(at(2027, 6, 1, 9))));
        let text = Anniversary::format_message(&newlyweds, at(2027, 6, 1, 9), &Config::default());
        assert_eq!(text.unwrap(), "Hey, Ada Lovelace happy 1 year anniversary");
    }

    #[test]
    fn year_zero_is_refused() {
        let newlyweds = married(Date::new(2026, 6, 1));
        let err = Anniversary::format_message(&newlyweds, at(2026, 6, 1, 9), &Config::default());
        assert!(err.unwrap_err().message().contains("at least one year"));
    }

    #[test]
    fn feb_29_follows_leap_day_in_common_years() {
        let leap = married(Date::new(2000, 2, 29));
        let feb28 = Anniversary::next_occurrence(&leap, at(2027, 1, 1, 0), &Config::default());
        assert_eq!(feb28, Ok(Some(at(2027, 2, 28, 9))));
        let mar1 = Config::new([("leap_day", "mar1")]);
        let next = Anniversary::next_occurrence(&leap, at(2027, 1, 1, 0), &mar1);
        assert_eq!(next, Ok(Some(at(2027, 3, 1, 9))));
    }
}
