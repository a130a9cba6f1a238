//! The WIT glue: records in, calendar logic, records out.

use kairos_calendar::{self as calendar, Date, DateTime, Settings};

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
        let settings = Settings::from_config(&config)?;
        let born = birth_date(&subject)?;
        let after = DateTime {
            date: Date::new(after.year, after.month, after.day),
            hour: after.hour,
            minute: after.minute,
            second: after.second,
        };
        Ok(
            calendar::next_anniversary_of(born, after, &settings).map(|next| LocalDatetime {
                year: next.date.year,
                month: next.date.month,
                day: next.date.day,
                hour: next.hour,
                minute: next.minute,
                second: next.second,
            }),
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
