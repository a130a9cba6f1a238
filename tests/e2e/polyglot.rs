//! Event types written in other languages than Rust (issue #10): the
//! examples under `plugins/examples/`, built from their sources by
//! `plugins/examples/build.sh`, loaded into a running host and delivering.
//! A language whose tools (node and npm, python3) this machine lacks is
//! skipped, with a line saying so.

use crate::helpers::{SECRET, spawn_app, spawn_app_with};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeZone, Utc};
use kairos::signing;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Language {
    JavaScript,
    Python,
}

impl Language {
    /// The commands `build.sh` needs for this language.
    fn tools(self) -> &'static [&'static str] {
        match self {
            Language::JavaScript => &["node", "npm"],
            Language::Python => &["python3"],
        }
    }

    fn component(self) -> &'static str {
        match self {
            Language::JavaScript => "work-anniversary.wasm",
            Language::Python => "name-day.wasm",
        }
    }
}

fn worktree() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The first of `language`'s tools this machine lacks.
fn missing_tool(language: Language) -> Option<&'static str> {
    language.tools().iter().copied().find(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    })
}

/// The example component of `language`, built from its source by
/// `plugins/examples/build.sh` once per test process (for every language
/// whose tools are here); `None` after a "skipped: …" line when this
/// language's tools are missing.
fn example_wasm(language: Language) -> Option<PathBuf> {
    static BUILT: OnceLock<()> = OnceLock::new();
    if let Some(tool) = missing_tool(language) {
        eprintln!(
            "skipped: `{tool}` is not installed, so the {language:?} example cannot be built"
        );
        return None;
    }
    BUILT.get_or_init(|| {
        let available: Vec<Language> = [Language::JavaScript, Language::Python]
            .into_iter()
            .filter(|l| missing_tool(*l).is_none())
            .collect();
        let mut command = Command::new(worktree().join("plugins/examples/build.sh"));
        if let [only] = available[..] {
            command.args([
                "--only",
                if only == Language::JavaScript {
                    "js"
                } else {
                    "python"
                },
            ]);
        }
        let status = command.status().expect("run plugins/examples/build.sh");
        assert!(status.success(), "plugins/examples/build.sh failed");
    });
    Some(
        worktree()
            .join("target/examples")
            .join(language.component()),
    )
}

/// The first `month`/`day` at `hour`:`minute` strictly after `now`.
fn next_yearly(now: NaiveDateTime, month: u32, day: u32, hour: u32, minute: u32) -> NaiveDateTime {
    let in_year = |year| {
        NaiveDate::from_ymd_opt(year, month, day)
            .unwrap()
            .and_hms_opt(hour, minute, 0)
            .unwrap()
    };
    let this_year = in_year(now.year());
    if this_year > now {
        this_year
    } else {
        in_year(now.year() + 1)
    }
}

/// The one event of `event_type` for the user (after every scheduling pass).
async fn the_event(app: &crate::helpers::TestApp, user_id: &str, event_type: &str) -> Value {
    app.event_types.settle().await;
    let events = app.events_of(user_id).await;
    let of_type: Vec<&Value> = events
        .iter()
        .filter(|e| e["event_type"] == event_type)
        .collect();
    assert_eq!(of_type.len(), 1, "{events:?}");
    of_type[0].clone()
}

fn due_at(event: &Value) -> DateTime<Utc> {
    event["due_at"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_javascript_work_anniversary_uploaded_through_the_api_delivers_a_signed_greeting() {
    let Some(wasm) = example_wasm(Language::JavaScript) else {
        return;
    };
    let app = spawn_app().await;
    let response = app
        .put_type(
            "work-anniversary",
            "?config.company=Acme&config.send_at=08:30",
            std::fs::read(&wasm).unwrap(),
        )
        .await;
    let status = response.status();
    let described: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{described}");
    assert_eq!(described["dates"], json!(["work_start"]));
    assert_eq!(described["version"], "0.1.0");

    // Grace started in New York on 3 June 2019.
    let user = app
        .create_user(&json!({
            "first_name": "Grace",
            "last_name": "Hopper",
            "timezone": "America/New_York",
            "dates": {"work_start": "2019-06-03"},
        }))
        .await;
    let user_id = user["id"].as_str().unwrap();
    let tz = chrono_tz::America::New_York;
    let expected = next_yearly(Utc::now().with_timezone(&tz).naive_local(), 6, 3, 8, 30);
    let event = the_event(&app, user_id, "work-anniversary").await;
    assert_eq!(
        event["occurrence"],
        expected.format("%Y-%m-%dT%H:%M:%S").to_string()
    );
    assert_eq!(
        due_at(&event),
        tz.from_local_datetime(&expected).unwrap().to_utc(),
        "08:30 in New York"
    );

    let event_id = event["id"].as_str().unwrap();
    app.make_due(event_id).await;
    assert_eq!(app.run_claimer_once().await, 1);
    let received = app.receiver.wait_for(1, Duration::from_secs(10)).await;
    let hook = &received[0];
    assert_eq!(hook.body["event_type"], "work-anniversary");
    assert_eq!(hook.body["event_type_version"], "0.1.0");
    assert_eq!(
        hook.body["message"]["text"],
        format!(
            "Congratulations Grace on {} years at Acme",
            expected.year() - 2019
        )
    );
    let key = signing::decode_secret(SECRET).unwrap();
    let timestamp: i64 = hook.header("webhook-timestamp").parse().unwrap();
    assert!(signing::verify(
        &key,
        event_id,
        timestamp,
        &hook.raw,
        hook.header("webhook-signature")
    ));
    assert_eq!(app.event(event_id).await["status"], "delivered");
}

#[tokio::test]
async fn a_python_name_day_from_the_plugin_directory_and_then_the_api_delivers_and_refuses_a_bad_send_at()
 {
    let Some(wasm) = example_wasm(Language::Python) else {
        return;
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("polyglot-plugins-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&wasm, dir.join("name-day.wasm")).unwrap();
    std::fs::write(
        dir.join("name-day.toml"),
        "[config]\ncalendar = \"sv\"\nsend_at = \"07:15\"\n",
    )
    .unwrap();
    let app = spawn_app_with(|s| s.plugin_dir = dir.clone()).await;
    let types = app.event_types().await;
    let name_day = types.iter().find(|t| t["name"] == "name-day");
    let name_day = name_day.unwrap_or_else(|| panic!("name-day not loaded: {types:?}"));
    assert_eq!(name_day["dates"], json!([]));
    assert_eq!(
        name_day["config"],
        json!({"calendar": "sv", "send_at": "07:15"})
    );

    // Lucia's name day in the Swedish calendar is 13 December; Ada has none.
    let person = |first_name: &str| {
        json!({
            "first_name": first_name,
            "last_name": "Lind",
            "timezone": "Europe/Stockholm",
        })
    };
    let lucia = app.create_user(&person("Lucia")).await;
    let ada = app.create_user(&person("Ada")).await;
    app.event_types.settle().await;
    assert!(
        app.events_of(ada["id"].as_str().unwrap()).await.is_empty(),
        "a name the calendar lacks gets no event"
    );
    let tz = chrono_tz::Europe::Stockholm;
    let expected = next_yearly(Utc::now().with_timezone(&tz).naive_local(), 12, 13, 7, 15);
    let event = the_event(&app, lucia["id"].as_str().unwrap(), "name-day").await;
    assert_eq!(
        event["occurrence"],
        expected.format("%Y-%m-%dT%H:%M:%S").to_string()
    );
    assert_eq!(
        due_at(&event),
        tz.from_local_datetime(&expected).unwrap().to_utc()
    );

    let event_id = event["id"].as_str().unwrap();
    app.make_due(event_id).await;
    assert_eq!(app.run_claimer_once().await, 1);
    let received = app.receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(received[0].body["event_type"], "name-day");
    assert_eq!(
        received[0].body["message"]["text"],
        "Happy name day, Lucia!"
    );

    // A bad send_at fails the self-check with the key named, and changes
    // nothing (the compiled component comes from the cache: no recompile).
    let response = app
        .put_type(
            "name-day",
            "?config.send_at=7am",
            std::fs::read(&wasm).unwrap(),
        )
        .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("config send_at: expected HH:MM"), "{error}");
    let types = app.event_types().await;
    let name_day = types.iter().find(|t| t["name"] == "name-day").unwrap();
    assert_eq!(name_day["config"]["send_at"], "07:15", "{name_day}");

    // The same component through the admin API, with the Czech calendar:
    // Anna's name day moves from 9 December (sv) to 26 July (cs), at 08:00.
    let anna = app.create_user(&person("Anna")).await;
    let anna_id = anna["id"].as_str().unwrap();
    let response = app
        .put_type(
            "name-day",
            "?config.calendar=cs&config.send_at=08:00",
            std::fs::read(&wasm).unwrap(),
        )
        .await;
    assert_eq!(response.status(), 200, "a replacement");
    app.event_types.settle().await;
    let expected = next_yearly(Utc::now().with_timezone(&tz).naive_local(), 7, 26, 8, 0);
    // The replacement cancels the December event and plans July's.
    let events = app.events_of(anna_id).await;
    let statuses: Vec<&Value> = events.iter().map(|e| &e["status"]).collect();
    assert_eq!(
        statuses,
        [&json!("cancelled"), &json!("pending")],
        "{events:?}"
    );
    let event = events[1].clone();
    assert_eq!(
        event["occurrence"],
        expected.format("%Y-%m-%dT%H:%M:%S").to_string()
    );
    app.make_due(event["id"].as_str().unwrap()).await;
    assert_eq!(app.run_claimer_once().await, 1);
    let received = app.receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(received[1].body["message"]["text"], "Happy name day, Anna!");
}

#[tokio::test]
async fn a_javascript_type_from_the_plugin_directory_delivers_and_its_errors_are_refused_or_recorded()
 {
    let Some(wasm) = example_wasm(Language::JavaScript) else {
        return;
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("polyglot-plugins-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&wasm, dir.join("work-anniversary.wasm")).unwrap();
    std::fs::write(
        dir.join("work-anniversary.toml"),
        "[config]\ncompany = \"Initech\"\n",
    )
    .unwrap();
    let app = spawn_app_with(|s| s.plugin_dir = dir.clone()).await;
    let bytes = std::fs::read(&wasm).unwrap();

    // Loaded through the directory, it delivers.
    let ada = app
        .create_user(&json!({
            "first_name": "Ada",
            "last_name": "King",
            "timezone": "Asia/Kolkata",
            "dates": {"work_start": "2019-03-15"},
        }))
        .await;
    let event = the_event(&app, ada["id"].as_str().unwrap(), "work-anniversary").await;
    let occurrence: NaiveDateTime = event["occurrence"].as_str().unwrap().parse().unwrap();
    app.make_due(event["id"].as_str().unwrap()).await;
    assert_eq!(app.run_claimer_once().await, 1);
    let received = app.receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(
        received[0].body["message"]["text"],
        format!(
            "Congratulations Ada on {} years at Initech",
            occurrence.year() - 2019
        )
    );

    // Bad config fails the self-check: a 400 naming the key, nothing changed.
    let response = app
        .put_type("work-anniversary", "?config.send_at=9", bytes)
        .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("plugin error: config send_at: expected HH:MM, got \"9\""),
        "{error}"
    );
    let types = app.event_types().await;
    let loaded = types
        .iter()
        .find(|t| t["name"] == "work-anniversary")
        .unwrap();
    assert_eq!(loaded["config"], json!({"company": "Initech"}), "{loaded}");

    // An event already due stays when its user loses the date; formatting
    // its message then fails in the plugin, and the error is recorded.
    let mut grace = json!({
        "first_name": "Grace",
        "last_name": "Hopper",
        "timezone": "Europe/Lisbon",
        "dates": {"work_start": "2020-02-29"},
    });
    let user = app.create_user(&grace).await;
    let user_id = user["id"].as_str().unwrap();
    let event = the_event(&app, user_id, "work-anniversary").await;
    let event_id = event["id"].as_str().unwrap();
    app.make_due(event_id).await;
    grace["dates"] = json!({});
    let response = app.put_json(&format!("/users/{user_id}"), &grace).await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.run_claimer_once().await, 1);
    let failed = app.event(event_id).await;
    assert_eq!(failed["status"], "pending", "retried later: {failed}");
    assert_eq!(failed["attempts"], 1);
    assert_eq!(
        failed["last_error"],
        "plugin error: subject has no `work_start` date"
    );
    assert_eq!(app.receiver.received().len(), 1, "only Ada's webhook");
}

/// `kairos plugin new hire-day --lang LANG`, then each command it prints
/// after `next:` run as printed in the new directory (the last one is
/// `kairos plugin check`, run with this build's binary): the project builds
/// and passes the check as generated.
fn scaffold_builds_and_passes_check(language: Language, lang: &str) {
    if let Some(tool) = missing_tool(language) {
        eprintln!("skipped: `{tool}` is not installed, so a {language:?} scaffold cannot be built");
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("scaffold-{lang}-{}", Uuid::new_v4().simple()));
    let kairos = env!("CARGO_BIN_EXE_kairos");
    let created = Command::new(kairos)
        .args(["plugin", "new", "hire-day", "--lang", lang, "--path"])
        .arg(&dir)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&created.stdout).into_owned();
    assert!(created.status.success(), "{printed}");
    assert!(dir.join("wit/event-plugin.wit").is_file(), "{printed}");
    let steps: Vec<&str> = printed
        .split("next:")
        .nth(1)
        .expect("the next steps are printed")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("cd "))
        .collect();
    assert!(
        steps.last().unwrap().starts_with("kairos plugin check "),
        "{steps:?}"
    );
    let mut check_output = String::new();
    for step in &steps {
        let (program, args) = step.split_once(' ').unwrap();
        let program = if program == "kairos" { kairos } else { program };
        let output = Command::new(program)
            .args(args.split_whitespace())
            .current_dir(&dir)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "`{step}` failed:\n{text}");
        check_output = text;
    }
    assert!(check_output.contains("check passed"), "{check_output}");
    assert!(
        check_output.contains(r#"format-message → "Hey, Ada Lovelace: happy hire-day!""#),
        "{check_output}"
    );
    // node_modules or a virtual environment: hundreds of MiB each run.
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_javascript_scaffold_builds_with_its_printed_commands_and_passes_check() {
    scaffold_builds_and_passes_check(Language::JavaScript, "js");
}

#[test]
fn a_python_scaffold_builds_with_its_printed_commands_and_passes_check() {
    scaffold_builds_and_passes_check(Language::Python, "python");
}
