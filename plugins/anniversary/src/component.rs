//! The WIT glue: records in, calendar logic, records out.

use crate::{DATE_NAME, message, years_since};
use kairos_calendar::{self as calendar, Date, DateTime, Settings};

wit_bindgen::generate!({
    world: "event-plugin",
    path: "../../wit",
});

use exports::kairos::plugin::event_handler::{
    Config, Guest, Info, LocalDatetime, Message, Subject,
};

struct Anniversary;

impl Guest for Anniversary {
    fn describe() -> Info {
        Info {
            name: "anniversary".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description:
                "An anniversary greeting with the number of years, at send_at (default 09:00) local time"
                    .into(),
            dates: vec![DATE_NAME.into()],
        }
    }

    fn next_occurrence(
        subject: Subject,
        after: LocalDatetime,
        config: Config,
    ) -> Result<Option<LocalDatetime>, String> {
        let settings = Settings::from_config(&config)?;
        let date = anniversary_date(&subject)?;
        let after = DateTime {
            date: Date::new(after.year, after.month, after.day),
            hour: after.hour,
            minute: after.minute,
            second: after.second,
        };
        Ok(
            calendar::next_anniversary_of(date, after, &settings).map(|next| LocalDatetime {
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
        occurrence: LocalDatetime,
        config: Config,
    ) -> Result<Message, String> {
        Settings::from_config(&config)?;
        let date = anniversary_date(&subject)?;
        let years = years_since(date.year, occurrence.year)?;
        Ok(Message {
            text: message(&subject.first_name, &subject.last_name, years),
        })
    }
}

fn anniversary_date(subject: &Subject) -> Result<Date, String> {
    subject
        .dates
        .iter()
        .find(|(name, _)| name == DATE_NAME)
        .map(|(_, d)| Date::new(d.year, d.month, d.day))
        .ok_or_else(|| format!("subject has no `{DATE_NAME}` date"))
}

export!(Anniversary);
