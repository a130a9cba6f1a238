//! The birthday event type: "Hey, {first_name} {last_name} it's your
//! birthday", at `send_at` local time (09:00 by default) on the subject's
//! `birthday`; a February 29 birthday follows `leap_day` (`feb28` or `mar1`)
//! in common years. The calendar is `kairos-plugin`'s.

use kairos_plugin::{Config, DateTime, Error, EventType, Subject, next_yearly};

pub struct Birthday;

impl EventType for Birthday {
    const NAME: &'static str = "birthday";
    const DESCRIPTION: &'static str = "A birthday greeting at send_at (default 09:00) local time";
    const DATES: &'static [&'static str] = &["birthday"];

    fn next_occurrence(
        subject: &Subject,
        after: DateTime,
        config: &Config,
    ) -> Result<Option<DateTime>, Error> {
        let birthday = subject.date("birthday")?;
        Ok(next_yearly(
            birthday,
            after,
            config.send_at()?,
            config.leap_day()?,
        ))
    }

    fn format_message(
        subject: &Subject,
        _occurrence: DateTime,
        config: &Config,
    ) -> Result<String, Error> {
        // A config that cannot schedule cannot deliver either.
        config.send_at()?;
        config.leap_day()?;
        Ok(format!(
            "Hey, {} {} it's your birthday",
            subject.first_name, subject.last_name
        ))
    }
}

kairos_plugin::export!(Birthday);

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_plugin::Date;

    fn at(year: i32, month: u8, day: u8, hour: u8, minute: u8) -> DateTime {
        DateTime::new(Date::new(year, month, day), hour, minute, 0)
    }

    fn ada() -> Subject {
        Subject::new("Ada", "Lovelace").with_date("birthday", Date::new(1815, 12, 10))
    }

    #[test]
    fn the_next_birthday_is_at_send_at_local_time() {
        let config = Config::new([("send_at", "07:45")]);
        let next = Birthday::next_occurrence(&ada(), at(2026, 11, 22, 10, 0), &config);
        assert_eq!(next, Ok(Some(at(2026, 12, 10, 7, 45))));
    }

    #[test]
    fn feb_29_follows_leap_day() {
        let leap = Subject::new("Leap", "Day").with_date("birthday", Date::new(2000, 2, 29));
        let mar1 = Config::new([("leap_day", "mar1")]);
        let next = Birthday::next_occurrence(&leap, at(2027, 1, 1, 0, 0), &mar1);
        assert_eq!(next, Ok(Some(at(2027, 3, 1, 9, 0))));
    }

    #[test]
    fn the_text_is_the_contracts_and_bad_config_is_an_error_naming_its_key() {
        let text = Birthday::format_message(&ada(), at(2026, 12, 10, 9, 0), &Config::default());
        assert_eq!(text.unwrap(), "Hey, Ada Lovelace it's your birthday");
        let bad = Config::new([("leap_day", "feb30")]);
        let err = Birthday::format_message(&ada(), at(2026, 12, 10, 9, 0), &bad).unwrap_err();
        assert!(err.message().contains("leap_day"), "{err}");
    }

    #[test]
    fn a_subject_without_a_birthday_is_an_error() {
        let none = Subject::new("No", "Date");
        let err = Birthday::next_occurrence(&none, at(2026, 1, 1, 0, 0), &Config::default());
        assert_eq!(err.unwrap_err().message(), "subject has no `birthday` date");
    }
}
