//! Write a kairos event type in Rust as its logic and nothing else.
//!
//! An event type answers two questions about a person: when is your next
//! occurrence, in your local wall time, and what is the message. Implement
//! [`EventType`] on a unit struct and hand it to [`export!`]; this crate
//! generates the WIT bindings of `kairos:plugin/event-handler`, converts its
//! records to the plain types here ([`Subject`], [`DateTime`], [`Config`]),
//! and turns your [`Error`]s into the `err` the host records on the event.
//!
//! ```
//! use kairos_plugin::{Config, DateTime, Error, EventType, Subject, next_yearly};
//!
//! pub struct Birthday;
//!
//! impl EventType for Birthday {
//!     const NAME: &'static str = "birthday";
//!     const DESCRIPTION: &'static str = "A birthday greeting at send_at local time";
//!     const DATES: &'static [&'static str] = &["birthday"];
//!
//!     fn next_occurrence(s: &Subject, after: DateTime, config: &Config) -> Result<Option<DateTime>, Error> {
//!         Ok(next_yearly(s.date("birthday")?, after, config.send_at()?, config.leap_day()?))
//!     }
//!
//!     fn format_message(s: &Subject, _at: DateTime, _config: &Config) -> Result<String, Error> {
//!         Ok(format!("Hey, {} {} it's your birthday", s.first_name, s.last_name))
//!     }
//! }
//!
//! kairos_plugin::export!(Birthday);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` (the crate is a
//! `cdylib`); the bindings and the export exist on wasm32 only, so the same
//! crate's `cargo test` runs your logic natively. The type's version, as
//! `describe()` reports it, is your crate's `version`.

mod calendar;
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod guest;

pub use calendar::{
    Date, DateTime, LeapDay, TimeOfDay, date_in_year, is_leap_year, next_yearly, years_since,
};
use std::fmt;

/// What an event type is, and its two answers.
pub trait EventType {
    /// The name operators load it under: 1 to 64 of `a-z`, `0-9`, `-`, `_`.
    const NAME: &'static str;
    /// One line for operators.
    const DESCRIPTION: &'static str;
    /// The subject's dates this type needs: a subject lacking any of them
    /// gets no events of this type and is never asked about.
    const DATES: &'static [&'static str];

    /// The first occurrence strictly after `after` (the subject's local time
    /// now, or the occurrence just delivered), in the subject's local wall
    /// time; `None` when there is none.
    fn next_occurrence(
        subject: &Subject,
        after: DateTime,
        config: &Config,
    ) -> Result<Option<DateTime>, Error>;

    /// The text delivered for `occurrence`, from the subject as it is now.
    fn format_message(
        subject: &Subject,
        occurrence: DateTime,
        config: &Config,
    ) -> Result<String, Error>;
}

/// The person an event is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The user's id (a UUID, as text).
    pub id: String,
    pub first_name: String,
    pub last_name: String,
    /// IANA timezone name, such as `Europe/London`.
    pub timezone: String,
    /// Named dates, sorted by name.
    pub dates: Vec<(String, Date)>,
    /// Free-form attributes, sorted by key.
    pub attributes: Vec<(String, String)>,
}

impl Subject {
    /// A subject with these names, in UTC, with no dates or attributes: for
    /// tests, with [`Subject::with_date`] and [`Subject::with_attribute`].
    pub fn new(first_name: &str, last_name: &str) -> Self {
        Self {
            id: "00000000-0000-0000-0000-000000000000".into(),
            first_name: first_name.into(),
            last_name: last_name.into(),
            timezone: "UTC".into(),
            dates: Vec::new(),
            attributes: Vec::new(),
        }
    }

    pub fn with_date(mut self, name: &str, date: Date) -> Self {
        self.dates.retain(|(n, _)| n != name);
        self.dates.push((name.into(), date));
        self.dates.sort_by(|a, b| a.0.cmp(&b.0));
        self
    }

    pub fn with_attribute(mut self, key: &str, value: &str) -> Self {
        self.attributes.retain(|(k, _)| k != key);
        self.attributes.push((key.into(), value.into()));
        self.attributes.sort_by(|a, b| a.0.cmp(&b.0));
        self
    }

    /// The date named `name`, or an error saying the subject has none.
    pub fn date(&self, name: &str) -> Result<Date, Error> {
        self.dates
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, date)| *date)
            .ok_or_else(|| Error::new(format!("subject has no `{name}` date")))
    }

    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The operator's settings for this type (`send_at` = `HH:MM`, ...). Keys a
/// type does not know are ignored; values it cannot use are [`Error`]s
/// naming the key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config(Vec<(String, String)>);

impl Config {
    pub fn new<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `key` read by `parse`, or `default` when it is not set; a value
    /// `parse` refuses is an error naming the key and what was `expected`.
    pub fn parse_or<T>(
        &self,
        key: &str,
        default: T,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, Error> {
        match self.get(key) {
            None => Ok(default),
            Some(value) => parse(value).ok_or_else(|| Error::config(key, expected, value)),
        }
    }

    /// `key` as one of `choices` (by name), or `default` when not set.
    pub fn one_of<T: Copy>(
        &self,
        key: &str,
        default: T,
        choices: &[(&str, T)],
    ) -> Result<T, Error> {
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        let expected = names.join(" or ");
        self.parse_or(key, default, &expected, |value| {
            choices
                .iter()
                .find(|(name, _)| *name == value)
                .map(|(_, choice)| *choice)
        })
    }

    /// `send_at`: the local time of day to send at (`HH:MM`), 09:00 when not set.
    pub fn send_at(&self) -> Result<TimeOfDay, Error> {
        self.parse_or("send_at", TimeOfDay::new(9, 0), "HH:MM", TimeOfDay::parse)
    }

    /// `leap_day`: `feb28` (when not set) or `mar1`, where a February 29
    /// date falls in a common year.
    pub fn leap_day(&self) -> Result<LeapDay, Error> {
        self.one_of(
            "leap_day",
            LeapDay::Feb28,
            &[("feb28", LeapDay::Feb28), ("mar1", LeapDay::Mar1)],
        )
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

/// Why a call failed: its text lands in the event's `last_error` as
/// `plugin error: …`. Say what is wrong and, for config, which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// A config value this type cannot use: `config KEY: expected …, got "…"`.
    pub fn config(key: &str, expected: &str, got: &str) -> Self {
        Self(format!("config {key}: expected {expected}, got {got:?}"))
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Self(message.into())
    }
}

/// How much a log line matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Logs into the host's log, tagged with the type's name and version (rate-
/// and size-limited by the host). In native tests, to stderr.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    guest::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// Exports an [`EventType`] as the component's `event-handler`. On targets
/// other than wasm32 it expands to nothing, so the crate's tests run natively.
#[macro_export]
macro_rules! export {
    ($type:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct KairosEventHandler;

            impl $crate::guest::Guest for KairosEventHandler {
                fn describe() -> $crate::guest::Info {
                    $crate::guest::describe::<$type>(env!("CARGO_PKG_VERSION"))
                }

                fn next_occurrence(
                    subject: $crate::guest::Subject,
                    after: $crate::guest::LocalDatetime,
                    config: $crate::guest::Config,
                ) -> Result<Option<$crate::guest::LocalDatetime>, String> {
                    $crate::guest::next_occurrence::<$type>(subject, after, config)
                }

                fn format_message(
                    subject: $crate::guest::Subject,
                    occurrence: $crate::guest::LocalDatetime,
                    config: $crate::guest::Config,
                ) -> Result<$crate::guest::Message, String> {
                    $crate::guest::format_message::<$type>(subject, occurrence, config)
                }
            }

            $crate::guest::export_bindings!(KairosEventHandler with_types_in $crate::guest::bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subjects_date_is_found_by_name_or_named_in_the_error() {
        let ada = Subject::new("Ada", "Lovelace").with_date("birthday", Date::new(1815, 12, 10));
        assert_eq!(ada.date("birthday"), Ok(Date::new(1815, 12, 10)));
        assert_eq!(
            ada.date("anniversary").unwrap_err().message(),
            "subject has no `anniversary` date"
        );
    }

    #[test]
    fn config_values_are_read_with_defaults_and_errors_name_the_key() {
        let empty = Config::default();
        assert_eq!(empty.send_at(), Ok(TimeOfDay::new(9, 0)));
        assert_eq!(empty.leap_day(), Ok(LeapDay::Feb28));

        let set = Config::new([("send_at", "17:45"), ("leap_day", "mar1"), ("other", "x")]);
        assert_eq!(set.send_at(), Ok(TimeOfDay::new(17, 45)));
        assert_eq!(set.leap_day(), Ok(LeapDay::Mar1));
        assert_eq!(set.get("other"), Some("x"));

        let bad = Config::new([("send_at", "9:00"), ("leap_day", "feb29")]);
        assert_eq!(
            bad.send_at().unwrap_err().message(),
            r#"config send_at: expected HH:MM, got "9:00""#
        );
        assert_eq!(
            bad.leap_day().unwrap_err().message(),
            r#"config leap_day: expected feb28 or mar1, got "feb29""#
        );
    }

    #[test]
    fn attributes_are_found_by_key() {
        let ada = Subject::new("Ada", "Lovelace").with_attribute("email", "ada@example.com");
        assert_eq!(ada.attribute("email"), Some("ada@example.com"));
        assert_eq!(ada.attribute("phone"), None);
    }
}
