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
        "fuel {}, peak memory {:.1} MiB, time {:.0} µs (instantiation {:.0} µs)",
        report.fuel_used,
        report.peak_memory as f64 / f64::from(1 << 20),
        report.elapsed.as_secs_f64() * 1e6,
        report.instantiation.as_secs_f64() * 1e6
    )
}

/// Where a new plugin crate gets the `kairos-plugin` SDK from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sdk {
    Path(PathBuf),
    Git(String),
}

impl Sdk {
    /// The SDK in the source tree this binary was built from, if it is
    /// still there.
    pub fn from_source_tree() -> anyhow::Result<Self> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk");
        match dir.join("Cargo.toml").is_file() {
            true => Ok(Self::Path(dir.canonicalize()?)),
            false => anyhow::bail!(
                "the kairos-plugin SDK is not at {} (this binary was built elsewhere): \
                 pass --sdk-path DIR (a kairos checkout's plugins/sdk) or --sdk-git URL",
                dir.display()
            ),
        }
    }

    /// The line of `Cargo.toml` that depends on it.
    fn dependency(&self) -> String {
        let quoted = |text: &str| toml::Value::String(text.to_string()).to_string();
        match self {
            Self::Path(path) => format!(
                "kairos-plugin = {{ path = {} }}",
                quoted(&path.to_string_lossy())
            ),
            Self::Git(url) => format!("kairos-plugin = {{ git = {} }}", quoted(url)),
        }
    }
}

/// `name` as a Rust type name: `name-day` → `NameDay`.
fn type_ident(name: &str) -> String {
    let ident: String = name
        .split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            let first = chars.next().map(|c| c.to_ascii_uppercase());
            first.into_iter().chain(chars).collect::<String>()
        })
        .collect();
    match ident.chars().next() {
        Some(c) if c.is_ascii_alphabetic() => ident,
        _ => format!("Type{ident}"),
    }
}

/// The language `kairos plugin new` writes a type in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A crate on the `kairos-plugin` SDK.
    Rust,
    /// A project built by componentize-js.
    Js,
    /// A project built by componentize-py.
    Python,
}

/// The WIT package the host is built against: a JavaScript or Python
/// project gets a copy, which its build tool reads.
const WIT: &str = include_str!("../../wit/event-plugin.wit");

/// The commands that build and check a new plugin, as the README gives them.
pub fn next_steps(name: &str, lang: Lang) -> String {
    match lang {
        Lang::Rust => format!(
            "  cargo test\n  cargo build --release --target wasm32-wasip2\n  kairos plugin check target/wasm32-wasip2/release/kairos_plugin_{}.wasm",
            name.replace('-', "_")
        ),
        Lang::Js => format!("  npm install\n  npm run build\n  kairos plugin check {name}.wasm"),
        Lang::Python => format!(
            "  python3 -m venv .venv\n  .venv/bin/pip install -r requirements.txt\n  .venv/bin/componentize-py -d wit -w event-plugin componentize app -o {name}.wasm\n  kairos plugin check {name}.wasm"
        ),
    }
}

/// Creates a plugin for the type `name` in `dir`, in `lang` (a Rust crate
/// on the SDK from `sdk`); returns the files written.
pub fn new_plugin(
    name: &str,
    dir: &Path,
    lang: Lang,
    sdk: Option<&Sdk>,
) -> anyhow::Result<Vec<PathBuf>> {
    anyhow::ensure!(
        valid_type_name(name),
        "{name:?} is not a type name: use 1 to 64 of a-z, 0-9, '-' and '_', starting with a letter or digit"
    );
    anyhow::ensure!(
        !dir.exists() || std::fs::read_dir(dir)?.next().is_none(),
        "{} exists and is not empty",
        dir.display()
    );
    // What `kairos plugin new` writes names the type; the WIT is copied as it is.
    let template = |text: &str| text.replace("{name}", name);
    let files: Vec<(&str, String)> = match lang {
        Lang::Rust => {
            let sdk = sdk.context("a Rust plugin needs the kairos-plugin SDK")?;
            if let Sdk::Path(path) = sdk {
                anyhow::ensure!(
                    path.join("Cargo.toml").is_file(),
                    "{} is not the kairos-plugin crate (no Cargo.toml in it)",
                    path.display()
                );
            }
            let crate_name = format!("kairos-plugin-{name}");
            vec![
                (
                    "Cargo.toml",
                    CARGO_TOML
                        .replace("{crate}", &crate_name)
                        .replace("{sdk}", &sdk.dependency()),
                ),
                (".gitignore", "/target\n".to_string()),
                (
                    "src/lib.rs",
                    template(LIB_RS).replace("{Type}", &type_ident(name)),
                ),
                (
                    "README.md",
                    template(README_MD).replace("{artifact}", &crate_name.replace('-', "_")),
                ),
            ]
        }
        Lang::Js => vec![
            (
                "package.json",
                template(include_str!("../templates/js/package.json")),
            ),
            ("app.js", template(include_str!("../templates/js/app.js"))),
            (
                ".gitignore",
                template(include_str!("../templates/js/gitignore")),
            ),
            (
                "README.md",
                template(include_str!("../templates/js/README.md")),
            ),
            ("wit/event-plugin.wit", WIT.to_string()),
        ],
        Lang::Python => vec![
            (
                "app.py",
                template(include_str!("../templates/python/app.py")),
            ),
            (
                "requirements.txt",
                template(include_str!("../templates/python/requirements.txt")),
            ),
            (
                ".gitignore",
                template(include_str!("../templates/python/gitignore")),
            ),
            (
                "README.md",
                template(include_str!("../templates/python/README.md")),
            ),
            ("wit/event-plugin.wit", WIT.to_string()),
        ],
    };
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
# cdylib: the component; rlib: so `cargo test` runs the logic natively.
crate-type = ["cdylib", "rlib"]

[dependencies]
# The kairos SDK: the interface's bindings, plain types, and export!.
{sdk}

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
//! This file is the whole type: `kairos-plugin` turns it into a component
//! (`cargo build --release --target wasm32-wasip2`), and `cargo test` runs
//! the tests below natively.

use kairos_plugin::{Config, DateTime, Error, EventType, Level, Subject, log, next_yearly};

pub struct {Type};

impl EventType for {Type} {
    const NAME: &'static str = "{name}";
    const DESCRIPTION: &'static str =
        "A yearly {name} message at send_at (default 09:00) local time";
    /// Users without a `{name}` date get no events of this type.
    const DATES: &'static [&'static str] = &["{name}"];

    fn next_occurrence(
        subject: &Subject,
        after: DateTime,
        config: &Config,
    ) -> Result<Option<DateTime>, Error> {
        let date = subject.date("{name}")?;
        let next = next_yearly(date, after, config.send_at()?, config.leap_day()?);
        if next.is_none() {
            log(Level::Debug, &format!("no occurrence after {after:?}"));
        }
        Ok(next)
    }

    fn format_message(
        subject: &Subject,
        _occurrence: DateTime,
        config: &Config,
    ) -> Result<String, Error> {
        config.send_at()?;
        Ok(format!(
            "Hey, {} {}: happy {name}!",
            subject.first_name, subject.last_name
        ))
    }
}

kairos_plugin::export!({Type});

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_plugin::Date;

    fn at(year: i32, month: u8, day: u8, hour: u8) -> DateTime {
        DateTime::new(Date::new(year, month, day), hour, 0, 0)
    }

    fn next(date: Date, after: DateTime, config: &Config) -> Option<DateTime> {
        let subject = Subject::new("Ada", "Lovelace").with_date("{name}", date);
        {Type}::next_occurrence(&subject, after, config).unwrap()
    }

    #[test]
    fn later_the_same_year() {
        let next = next(Date::new(1990, 12, 10), at(2026, 11, 22, 10), &Config::default());
        assert_eq!(next, Some(at(2026, 12, 10, 9)));
    }

    #[test]
    fn past_this_year_means_next_year() {
        let next = next(Date::new(1990, 3, 1), at(2026, 11, 22, 10), &Config::default());
        assert_eq!(next, Some(at(2027, 3, 1, 9)));
    }

    #[test]
    fn feb_29_falls_on_feb_28_in_common_years() {
        let leap = Date::new(2000, 2, 29);
        assert_eq!(next(leap, at(2027, 1, 1, 0), &Config::default()), Some(at(2027, 2, 28, 9)));
        assert_eq!(next(leap, at(2028, 1, 1, 0), &Config::default()), Some(at(2028, 2, 29, 9)));
    }

    #[test]
    fn send_at_sets_the_time_and_a_bad_one_is_an_error_naming_it() {
        let evening = Config::new([("send_at", "18:30")]);
        let next = next(Date::new(1990, 12, 10), at(2026, 11, 22, 10), &evening);
        assert_eq!(next, Some(DateTime::new(Date::new(2026, 12, 10), 18, 30, 0)));
        let subject = Subject::new("Ada", "Lovelace").with_date("{name}", Date::new(1990, 1, 1));
        let bad = Config::new([("send_at", "25:00")]);
        let err = {Type}::next_occurrence(&subject, at(2026, 1, 1, 0), &bad).unwrap_err();
        assert!(err.message().contains("send_at"), "{err}");
    }

    #[test]
    fn the_message_names_the_subject() {
        let subject = Subject::new("Ada", "Lovelace");
        let text = {Type}::format_message(&subject, at(2026, 12, 10, 9), &Config::default());
        assert_eq!(text.unwrap(), "Hey, Ada Lovelace: happy {name}!");
    }

    #[test]
    fn a_subject_without_the_date_is_an_error() {
        let subject = Subject::new("Ada", "Lovelace");
        let err = {Type}::next_occurrence(&subject, at(2026, 1, 1, 0), &Config::default());
        assert!(err.unwrap_err().message().contains("{name}"));
    }
}
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
a message every year. The interface, documented, is `wit/event-plugin.wit`
in kairos; `kairos-plugin`'s own docs (`cargo doc --open`) show what the SDK
gives you.
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_become_rust_type_names() {
        assert_eq!(type_ident("birthday"), "Birthday");
        assert_eq!(type_ident("name-day"), "NameDay");
        assert_eq!(type_ident("work_anniversary-2"), "WorkAnniversary2");
        assert_eq!(type_ident("1st-job"), "Type1stJob");
    }

    #[test]
    fn the_sdk_dependency_is_a_quoted_toml_path_or_git_url() {
        let path = Sdk::Path(PathBuf::from(r#"/src/k "x"/plugins/sdk"#));
        let git = Sdk::Git("https://example.com/kairos.git".into());
        assert_eq!(
            git.dependency(),
            r#"kairos-plugin = { git = "https://example.com/kairos.git" }"#
        );
        let parsed: toml::Table = path.dependency().parse().unwrap();
        assert_eq!(
            parsed["kairos-plugin"]["path"].as_str(),
            Some(r#"/src/k "x"/plugins/sdk"#)
        );
    }

    #[test]
    fn javascript_and_python_projects_name_the_type_and_copy_the_interface_as_it_is() {
        let root = std::env::temp_dir().join(format!("kairos-new-{}", uuid::Uuid::new_v4()));
        for (lang, source) in [(Lang::Js, "app.js"), (Lang::Python, "app.py")] {
            let dir = root.join(source);
            let files = new_plugin("hire-day", &dir, lang, None).unwrap();
            assert_eq!(files.len(), 5, "{files:?}");
            let code = std::fs::read_to_string(dir.join(source)).unwrap();
            assert!(!code.contains("{name}"), "{code}");
            assert!(code.contains("happy hire-day!"), "{code}");
            let wit = std::fs::read_to_string(dir.join("wit/event-plugin.wit")).unwrap();
            assert_eq!(wit, WIT);
            let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
            assert!(
                readme.contains("kairos plugin check hire-day.wasm"),
                "{readme}"
            );
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_new_plugin_depends_on_the_sdk_and_refuses_a_bad_sdk_path() {
        let root = std::env::temp_dir().join(format!("kairos-new-{}", uuid::Uuid::new_v4()));
        let sdk = Sdk::from_source_tree().unwrap();
        let files = new_plugin("name-day", &root.join("ok"), Lang::Rust, Some(&sdk)).unwrap();
        let manifest = std::fs::read_to_string(&files[0]).unwrap();
        assert!(manifest.contains(&sdk.dependency()), "{manifest}");
        let lib = std::fs::read_to_string(root.join("ok/src/lib.rs")).unwrap();
        assert!(lib.contains("impl EventType for NameDay"), "{lib}");
        assert!(lib.contains("kairos_plugin::export!(NameDay);"), "{lib}");
        let missing = Sdk::Path(root.join("nowhere"));
        let err =
            new_plugin("name-day", &root.join("bad"), Lang::Rust, Some(&missing)).unwrap_err();
        assert!(
            err.to_string().contains("not the kairos-plugin crate"),
            "{err}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
