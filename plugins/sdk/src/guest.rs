//! The WIT side, for [`export!`](crate::export) only: the generated bindings
//! of the `event-plugin` world, and the conversions between its records and
//! this crate's plain types.

use crate::{Config as PlainConfig, Date, DateTime, EventType, Level, Subject as PlainSubject};

pub mod bindings {
    wit_bindgen::generate!({
        world: "event-plugin",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_bindings",
    });
}

pub use bindings::export_bindings;
pub use bindings::exports::kairos::plugin::event_handler::{
    Config, Guest, Info, LocalDatetime, Message, Subject,
};
use bindings::kairos::plugin::log as host;

pub fn describe<T: EventType>(version: &str) -> Info {
    Info {
        name: T::NAME.into(),
        version: version.into(),
        description: T::DESCRIPTION.into(),
        dates: T::DATES.iter().map(|d| d.to_string()).collect(),
    }
}

pub fn next_occurrence<T: EventType>(
    subject: Subject,
    after: LocalDatetime,
    config: Config,
) -> Result<Option<LocalDatetime>, String> {
    T::next_occurrence(&subject_of(subject), plain(after), &PlainConfig(config))
        .map(|next| next.map(record))
        .map_err(|e| e.0)
}

pub fn format_message<T: EventType>(
    subject: Subject,
    occurrence: LocalDatetime,
    config: Config,
) -> Result<Message, String> {
    T::format_message(
        &subject_of(subject),
        plain(occurrence),
        &PlainConfig(config),
    )
    .map(|text| Message { text })
    .map_err(|e| e.0)
}

pub fn log(level: Level, message: &str) {
    let level = match level {
        Level::Trace => host::Level::Trace,
        Level::Debug => host::Level::Debug,
        Level::Info => host::Level::Info,
        Level::Warn => host::Level::Warn,
        Level::Error => host::Level::Error,
    };
    host::log(level, message);
}

fn subject_of(s: Subject) -> PlainSubject {
    PlainSubject {
        id: s.id,
        first_name: s.first_name,
        last_name: s.last_name,
        timezone: s.timezone,
        dates: s
            .dates
            .into_iter()
            .map(|(name, d)| (name, Date::new(d.year, d.month, d.day)))
            .collect(),
        attributes: s.attributes,
    }
}

fn plain(t: LocalDatetime) -> DateTime {
    DateTime::new(
        Date::new(t.year, t.month, t.day),
        t.hour,
        t.minute,
        t.second,
    )
}

fn record(t: DateTime) -> LocalDatetime {
    LocalDatetime {
        year: t.date.year,
        month: t.date.month,
        day: t.date.day,
        hour: t.hour,
        minute: t.minute,
        second: t.second,
    }
}
