//! The WIT glue: records in, calendar logic, records out.

use kairos_calendar::{self as calendar, Date, Settings};

wit_bindgen::generate!({
    world: "event-plugin",
    path: "../../wit",
});

use exports::kairos::plugin::event_handler::{
    Config, Guest, Info, LocalDatetime, Message, Subject,
};

const DATE_NAME: &str = "birthday";

struct Birthday;

impl Guest for Birthday {
    fn describe() -> Info {
        Info {
            name: "birthday".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "A birthday greeting at send_at (default 09:00) local time".into(),
            dates: vec![DATE_NAME.into()],
        }
    }

    fn next_occurrence(
        subject: Subject,
        after: LocalDatetime,
        config: Config,
    ) -> Result<Option<LocalDatetime>, String> {
        let date = birth_date(&subject)?;
        let after = (
            after.year,
            after.month,
            after.day,
            after.hour,
            after.minute,
            after.second,
        );
        Ok(
            calendar::next_occurrence((date.year, date.month, date.day), after, &config)?.map(
                |(year, month, day, hour, minute, second)| LocalDatetime {
                    year,
                    month,
                    day,
                    hour,
                    minute,
                    second,
                },
            ),
        )
    }

    fn format_message(
        subject: Subject,
        _occurrence: LocalDatetime,
        config: Config,
    ) -> Result<Message, String> {
        Settings::from_config(&config)?;
        Ok(Message {
            text: format!(
                "Hey, {} {} it's your birthday",
                subject.first_name, subject.last_name
            ),
        })
    }
}

fn birth_date(subject: &Subject) -> Result<Date, String> {
    subject
        .dates
        .iter()
        .find(|(name, _)| name == DATE_NAME)
        .map(|(_, d)| Date::new(d.year, d.month, d.day))
        .ok_or_else(|| format!("subject has no `{DATE_NAME}` date"))
}

export!(Birthday);
