//! The plugin author's tools: `kairos plugin check` (load a component as the
//! host would and show what it does on the self-check subjects) and
//! `kairos plugin new` (a crate that builds and passes the check as it is).

use crate::plugin::check::{self, FIXTURES, Run};
use crate::plugin::{
    CallReport, LoadedPlugin, PluginConfig, PluginLimits, PluginRuntime, PluginSource, Subject,
    valid_type_name,
};
use crate::scheduler;
use anyhow::Context;
use chrono::{NaiveDate, NaiveDateTime, Utc};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The WIT package the host is built against; a new plugin gets a copy.
pub const WIT: &str = include_str!("../../wit/event-plugin.wit");

/// A subject file for `--subject`: the `POST /users` body, plus `after`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectFile {
    first_name: String,
    last_name: String,
    timezone: String,
    #[serde(default)]
    dates: BTreeMap<String, NaiveDate>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    /// Local time the next occurrence must follow; default: now in `timezone`.
    after: Option<NaiveDateTime>,
}

/// What `check` found, printed as it goes; `passed` decides the exit code.
pub struct CheckOutcome {
    pub report: String,
    pub passed: bool,
}

/// Loads `file` under `limits` with `config` and runs the self-check
/// subjects and every subject file.
pub fn check(
    file: &Path,
    config: PluginConfig,
    subjects: &[PathBuf],
    limits: PluginLimits,
) -> anyhow::Result<CheckOutcome> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let runtime = PluginRuntime::new(limits)?;
    let mut out = String::new();
    let started = Instant::now();
    let plugin = match LoadedPlugin::load(
        &runtime,
        &bytes,
        config,
        None,
        PluginSource::File(file.to_path_buf()),
    ) {
        Ok(plugin) => plugin,
        Err(error) => {
            let _ = writeln!(out, "✗ {} does not load: {error:#}", file.display());
            return Ok(CheckOutcome {
                report: out,
                passed: false,
            });
        }
    };
    let _ = writeln!(
        out,
        "{} {} — {}\n  dates: {}\n  sha256: {}\n  size: {} KiB, compiled and described in {:.0} ms\n  limits: deadline {}, fuel {}, memory {} MiB",
        plugin.info.name,
        plugin.info.version,
        plugin.info.description,
        plugin.info.dates.join(", "),
        plugin.sha256,
        bytes.len().div_ceil(1024),
        started.elapsed().as_secs_f64() * 1e3,
        humantime::format_duration(limits.deadline),
        limits.fuel,
        limits.memory >> 20,
    );
    let mut passed = true;
    if let Some(stem) = file.file_stem().and_then(|s| s.to_str())
        && stem != plugin.info.name
    {
        let _ = writeln!(
            out,
            "  note: a host loads this type from a file named {}.wasm (this file is {stem}.wasm)",
            plugin.info.name
        );
    }
    if !valid_type_name(&plugin.info.name) {
        passed = false;
    }

    let _ = writeln!(out, "\nself-check subjects:");
    for fixture in &FIXTURES {
        let subject = fixture.subject(&plugin);
        let run = check::run(&plugin, &subject, fixture.after());
        passed &= print_run(&mut out, fixture.label, &subject, fixture.after(), &run);
    }
    if !subjects.is_empty() {
        let _ = writeln!(out, "\ngiven subjects:");
    }
    for path in subjects {
        let (subject, after) = read_subject(path)?;
        let run = check::run(&plugin, &subject, after);
        passed &= print_run(&mut out, &path.display().to_string(), &subject, after, &run);
    }
    let _ = writeln!(
        out,
        "\n{}",
        if passed {
            "check passed"
        } else {
            "check FAILED"
        }
    );
    Ok(CheckOutcome {
        report: out,
        passed,
    })
}

fn read_subject(path: &Path) -> anyhow::Result<(Subject, NaiveDateTime)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: SubjectFile =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let tz = scheduler::parse_tz(&file.timezone).with_context(|| {
        format!(
            "{}: timezone {:?} is not an IANA timezone name",
            path.display(),
            file.timezone
        )
    })?;
    let after = file
        .after
        .unwrap_or_else(|| scheduler::utc_to_local(Utc::now(), tz));
    Ok((
        Subject {
            id: uuid::Uuid::nil(),
            first_name: file.first_name,
            last_name: file.last_name,
            timezone: file.timezone,
            dates: file.dates,
            attributes: file.attributes,
        },
        after,
    ))
}

fn print_run(
    out: &mut String,
    label: &str,
    subject: &Subject,
    after: NaiveDateTime,
    run: &Run,
) -> bool {
    let error = run.error();
    let dates: Vec<String> = subject
        .dates
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(
        out,
        "  {} {label}\n      subject: {}, dates: {}, after {after}",
        if error.is_none() { "✓" } else { "✗" },
        subject.timezone,
        if dates.is_empty() {
            "none".to_string()
        } else {
            dates.join(", ")
        },
    );
    let next = match &run.next {
        Ok(Some(t)) => match run.due_at {
            Some(due) => format!("{t} (due {})", due.format("%Y-%m-%dT%H:%M:%SZ")),
            None => t.to_string(),
        },
        Ok(None) => "none".to_string(),
        Err(e) => format!("error: {e}"),
    };
    let _ = writeln!(
        out,
        "      next-occurrence → {next}\n        {}",
        cost(&run.next_report)
    );
    if let Some((message, report)) = &run.message {
        let text = match message {
            Ok(text) if text.chars().count() > 200 => {
                format!(
                    "{:?}… ({} bytes)",
                    text.chars().take(200).collect::<String>(),
                    text.len()
                )
            }
            Ok(text) => format!("{text:?}"),
            Err(e) => format!("error: {e}"),
        };
        let _ = writeln!(
            out,
            "      format-message → {text}\n        {}",
            cost(report)
        );
    }
    if let Some(error) = error {
        let _ = writeln!(out, "      FAILED: {error}");
        return false;
    }
    true
}

fn cost(report: &CallReport) -> String {
    format!(
        "fuel {}, peak memory {:.1} MiB, time {:.0} µs",
        report.fuel_used,
        report.peak_memory as f64 / f64::from(1 << 20),
        report.elapsed.as_secs_f64() * 1e6
    )
}

/// Creates a plugin crate for the type `name` in `dir`; returns the files written.
pub fn new_plugin(name: &str, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    anyhow::ensure!(
        valid_type_name(name),
        "{name:?} is not a type name: use 1 to 64 of a-z, 0-9, '-' and '_', starting with a letter or digit"
    );
    anyhow::ensure!(
        !dir.exists() || std::fs::read_dir(dir)?.next().is_none(),
        "{} exists and is not empty",
        dir.display()
    );
    let crate_name = format!("kairos-plugin-{name}");
    let files = [
        ("Cargo.toml", CARGO_TOML.replace("{crate}", &crate_name)),
        (".gitignore", "/target\n".to_string()),
        ("wit/event-plugin.wit", WIT.to_string()),
        ("src/lib.rs", LIB_RS.replace("{name}", name)),
        ("src/component.rs", COMPONENT_RS.replace("{name}", name)),
        (
            "README.md",
            README_MD
                .replace("{name}", name)
                .replace("{artifact}", &crate_name.replace('-', "_")),
        ),
    ];
    let mut written = Vec::new();
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("files are under dir"))?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

const CARGO_TOML: &str = r#"[package]
name = "{crate}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# cdylib: the component; rlib: so `cargo test` runs the date logic natively.
crate-type = ["cdylib", "rlib"]

[dependencies]
wit-bindgen = "0.63.0"

[profile.release]
opt-level = "s"
lto = true
strip = true

# A crate of its own, not part of any enclosing workspace.
[workspace]
"#;

const LIB_RS: &str = r#"//! The `{name}` event type for kairos: a yearly message on the subject's
//! `{name}` date, at `send_at` local time (09:00 by default).
//!
//! The logic is plain Rust, unit-tested natively (`cargo test`); the WIT glue
//! in `component.rs` is built for wasm32 only.

#[cfg(target_arch = "wasm32")]
mod component;

/// The name of the subject's date this type uses.
pub const DATE: &str = "{name}";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DateTime {
    pub year: i32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

/// `send_at` from the config: `HH:MM`, default 09:00.
pub fn send_at(config: &[(String, String)]) -> Result<(u8, u8), String> {
    let Some((_, value)) = config.iter().find(|(k, _)| k == "send_at") else {
        return Ok((9, 0));
    };
    let parsed = value
        .split_once(':')
        .filter(|(h, m)| h.len() == 2 && m.len() == 2)
        .and_then(|(h, m)| Some((h.parse::<u8>().ok()?, m.parse::<u8>().ok()?)))
        .filter(|(h, m)| *h < 24 && *m < 60);
    parsed.ok_or_else(|| format!("config send_at: expected HH:MM, got {value:?}"))
}

pub fn is_leap_year(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// The first yearly occurrence of (`month`, `day`) from `since_year` on, at
/// `at`, strictly after `after`. Feb 29 falls on Feb 28 in common years.
pub fn next_yearly(
    (month, day): (u8, u8),
    since_year: i32,
    at: (u8, u8),
    after: DateTime,
) -> Option<DateTime> {
    let first = after.year.max(since_year + 1);
    (first..=first + 1).find_map(|year| {
        let day = if month == 2 && day == 29 && !is_leap_year(year) { 28 } else { day };
        let candidate = DateTime { year, month, day, hour: at.0, minute: at.1, second: 0 };
        (candidate > after).then_some(candidate)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(year: i32, month: u8, day: u8, hour: u8) -> DateTime {
        DateTime { year, month, day, hour, minute: 0, second: 0 }
    }

    #[test]
    fn later_the_same_year() {
        assert_eq!(next_yearly((12, 10), 1990, (9, 0), at(2026, 11, 22, 10)), Some(at(2026, 12, 10, 9)));
    }

    #[test]
    fn past_this_year_means_next_year() {
        assert_eq!(next_yearly((3, 1), 1990, (9, 0), at(2026, 11, 22, 10)), Some(at(2027, 3, 1, 9)));
    }

    #[test]
    fn on_the_day_after_send_at_means_next_year() {
        assert_eq!(next_yearly((11, 22), 1990, (9, 0), at(2026, 11, 22, 9)), Some(at(2027, 11, 22, 9)));
    }

    #[test]
    fn feb_29_falls_on_feb_28_in_common_years() {
        assert_eq!(next_yearly((2, 29), 2000, (9, 0), at(2027, 1, 1, 0)), Some(at(2027, 2, 28, 9)));
        assert_eq!(next_yearly((2, 29), 2000, (9, 0), at(2028, 1, 1, 0)), Some(at(2028, 2, 29, 9)));
    }

    #[test]
    fn never_in_the_year_of_the_date_itself() {
        assert_eq!(next_yearly((12, 10), 2026, (9, 0), at(2026, 1, 1, 0)), Some(at(2027, 12, 10, 9)));
    }

    #[test]
    fn send_at_is_checked() {
        assert_eq!(send_at(&[]), Ok((9, 0)));
        assert_eq!(send_at(&[("send_at".into(), "18:30".into())]), Ok((18, 30)));
        assert!(send_at(&[("send_at".into(), "25:00".into())]).unwrap_err().contains("send_at"));
    }
}
"#;

const COMPONENT_RS: &str = r#"//! The WIT glue: records in, the logic in `lib.rs`, records out.

use crate::{DATE, DateTime, next_yearly, send_at};

wit_bindgen::generate!({
    world: "event-plugin",
    path: "wit",
});

use exports::kairos::plugin::event_handler::{
    Config, Guest, Info, LocalDatetime, Message, Subject,
};
use kairos::plugin::log::{Level, log};

struct Plugin;

impl Guest for Plugin {
    fn describe() -> Info {
        Info {
            name: "{name}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "A yearly {name} message at send_at (default 09:00) local time".into(),
            dates: vec![DATE.into()],
        }
    }

    fn next_occurrence(
        subject: Subject,
        after: LocalDatetime,
        config: Config,
    ) -> Result<Option<LocalDatetime>, String> {
        let at = send_at(&config)?;
        let date = subject
            .dates
            .iter()
            .find(|(name, _)| name == DATE)
            .map(|(_, d)| *d)
            .ok_or_else(|| format!("subject has no `{DATE}` date"))?;
        let after = DateTime {
            year: after.year,
            month: after.month,
            day: after.day,
            hour: after.hour,
            minute: after.minute,
            second: after.second,
        };
        let next = next_yearly((date.month, date.day), date.year, at, after);
        if next.is_none() {
            log(Level::Debug, &format!("no occurrence after {after:?}"));
        }
        Ok(next.map(|t| LocalDatetime {
            year: t.year,
            month: t.month,
            day: t.day,
            hour: t.hour,
            minute: t.minute,
            second: t.second,
        }))
    }

    fn format_message(
        subject: Subject,
        _occurrence: LocalDatetime,
        config: Config,
    ) -> Result<Message, String> {
        send_at(&config)?;
        Ok(Message {
            text: format!("Hey, {} {}: happy {name}!", subject.first_name, subject.last_name),
        })
    }
}

export!(Plugin);
"#;

const README_MD: &str = r#"# {name} — a kairos event type

Build the component (needs `rustup target add wasm32-wasip2`):

    cargo build --release --target wasm32-wasip2
    cp target/wasm32-wasip2/release/{artifact}.wasm {name}.wasm

Test the logic natively, then check the component as a host would load it:

    cargo test
    kairos plugin check {name}.wasm

Load it into a running host, either by dropping it into the plugin directory:

    cp {name}.wasm "$KAIROS_PLUGIN_DIR/"

or through the admin API:

    curl -X PUT -H "Authorization: Bearer $KAIROS_ADMIN_TOKEN" \
         -H 'content-type: application/wasm' --data-binary @{name}.wasm \
         'http://127.0.0.1:8080/event-types/{name}?config.send_at=09:00'

Users who have a `{name}` date (`"dates": {"{name}": "YYYY-MM-DD"}`) then get
a message every year. `wit/event-plugin.wit` is the interface, documented.
"#;
