//! The self-check every component passes before it is loaded (admin upload,
//! watched directory) and that `kairos plugin check` prints: fixed subjects
//! on the edges a scheduler gets wrong — a Feb 29 date in a non-leap year, a
//! zone with DST gaps, UTC+14 and UTC−11.

use super::{CallReport, LoadedPlugin, PluginError, Subject};
use crate::scheduler;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use std::collections::BTreeMap;

/// One fixed subject: every date the type needs is set to `date`.
#[derive(Debug, Clone, Copy)]
pub struct Fixture {
    pub label: &'static str,
    pub timezone: &'static str,
    pub date: (i32, u32, u32),
    /// The local time the next occurrence must come after.
    pub after: (i32, u32, u32, u32, u32),
}

pub const FIXTURES: [Fixture; 4] = [
    Fixture {
        label: "Feb 29 date in a non-leap year",
        timezone: "Europe/London",
        date: (2000, 2, 29),
        after: (2027, 1, 1, 0, 0),
    },
    Fixture {
        label: "DST-gap zone around spring forward",
        timezone: "America/New_York",
        date: (1990, 3, 8),
        after: (2026, 3, 1, 0, 0),
    },
    Fixture {
        label: "UTC+14 at the end of the year",
        timezone: "Pacific/Kiritimati",
        date: (1985, 12, 31),
        after: (2026, 12, 31, 23, 59),
    },
    Fixture {
        label: "UTC-11 in mid-year",
        timezone: "Pacific/Pago_Pago",
        date: (1970, 1, 1),
        after: (2026, 6, 15, 12, 0),
    },
];

impl Fixture {
    /// The fixture as a subject of `plugin`: its dates all set to `self.date`.
    pub fn subject(&self, plugin: &LoadedPlugin) -> Subject {
        let (y, m, d) = self.date;
        let date = NaiveDate::from_ymd_opt(y, m, d).expect("fixture dates exist");
        Subject {
            id: uuid::Uuid::nil(),
            first_name: "Ada".into(),
            last_name: "Lovelace".into(),
            timezone: self.timezone.into(),
            dates: plugin
                .info
                .dates
                .iter()
                .map(|name| (name.clone(), date))
                .collect(),
            attributes: BTreeMap::from([("email".to_string(), "ada@example.com".to_string())]),
        }
    }

    pub fn after(&self) -> NaiveDateTime {
        let (y, m, d, h, min) = self.after;
        NaiveDate::from_ymd_opt(y, m, d)
            .and_then(|d| d.and_hms_opt(h, min, 0))
            .expect("fixture times exist")
    }
}

/// What a type did for one subject: the next occurrence and, when there is
/// one, the message for it.
#[derive(Debug)]
pub struct Run {
    pub next: Result<Option<NaiveDateTime>, PluginError>,
    pub next_report: CallReport,
    pub due_at: Option<DateTime<Utc>>,
    pub message: Option<(Result<String, PluginError>, CallReport)>,
}

impl Run {
    /// The first failure, if any.
    pub fn error(&self) -> Option<String> {
        if let Err(e) = &self.next {
            return Some(format!("next-occurrence: {e}"));
        }
        match &self.message {
            Some((Err(e), _)) => Some(format!("format-message: {e}")),
            Some((Ok(text), _)) if text.trim().is_empty() => {
                Some("format-message: returned an empty text".into())
            }
            _ => None,
        }
    }
}

/// Runs generation and formatting for `subject` after local time `after`.
pub fn run(plugin: &LoadedPlugin, subject: &Subject, after: NaiveDateTime) -> Run {
    let (next, next_report) = plugin.next_occurrence_reported(subject, after);
    let tz = scheduler::parse_tz(&subject.timezone);
    let (due_at, message) = match (&next, tz) {
        (Ok(Some(occurrence)), Some(tz)) => (
            Some(scheduler::local_to_utc(*occurrence, tz)),
            Some(plugin.format_message_reported(subject, *occurrence)),
        ),
        _ => (None, None),
    };
    Run {
        next,
        next_report,
        due_at,
        message,
    }
}

/// Runs every fixture; the first failure is the reason a component is refused.
pub fn self_check(plugin: &LoadedPlugin) -> Result<(), String> {
    for fixture in &FIXTURES {
        let run = run(plugin, &fixture.subject(plugin), fixture.after());
        if let Some(error) = run.error() {
            return Err(format!(
                "self-check failed on \"{}\": {error}",
                fixture.label
            ));
        }
    }
    Ok(())
}
