//! `POST /users/import` and `kairos import`: NDJSON streamed in, good lines
//! written with their events planned, bad lines named by number and field
//! and not written, and the host's memory bounded whatever the body's size.

use crate::helpers::{ADMIN_TOKEN, TestApp, plugin_bytes, spawn_app, spawn_app_on, spawn_app_with};
use axum::body::Bytes;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

const CLIENT_TOKEN: &str = "import-client-token";

fn user(first: &str, timezone: &str, birthday: &str) -> Value {
    json!({
        "first_name": first,
        "last_name": "Imported",
        "timezone": timezone,
        "dates": {"birthday": birthday},
    })
}

/// `POST /users/import` with `body` as NDJSON; the status and the JSON answer.
async fn import(
    app: &TestApp,
    body: impl Into<reqwest::Body>,
    token: Option<&str>,
) -> (u16, Value) {
    let mut request = app
        .http
        .post(app.url("/users/import"))
        .header("content-type", "application/x-ndjson")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn count(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap()
}

/// Ids of the users with this first name.
async fn ids_named(app: &TestApp, first_name: &str) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT id FROM users WHERE first_name = $1")
        .bind(first_name)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_import_keeps_the_good_lines_with_their_birthdays_and_names_each_bad_line() {
    let app = spawn_app().await;
    let mut unknown_field = user("Nick", "UTC", "1990-01-01");
    unknown_field["nickname"] = json!("Nicky");
    let lines: Vec<String> = vec![
        user("Ada", "Europe/London", "1815-12-10").to_string(),
        r#"{"first_name": "Broken", "last_name": "#.to_string(),
        user("Grace", "America/New_York", "1906-12-09").to_string(),
        user("Mars", "Mars/Olympus_Mons", "1990-01-01").to_string(),
        String::new(),
        user("Future", "Asia/Tokyo", "2999-01-01").to_string(),
        unknown_field.to_string(),
        user("   ", "UTC", "1990-01-01").to_string(),
        format!("{}\r", user("Alan", "Asia/Kolkata", "1912-06-23")),
        // The last line has no newline.
        user("Edsger", "Europe/Amsterdam", "1930-05-11").to_string(),
    ];
    let (status, report) = import(&app, lines.join("\n"), None).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["imported"], 4, "{report}");
    assert_eq!(report["events_planned"], 4, "{report}");
    assert_eq!(report["rejected_count"], 5, "{report}");

    let rejected = report["rejected"].as_array().unwrap();
    let expected = [
        (2, Value::Null, "malformed JSON"),
        (4, json!("timezone"), "unknown timezone"),
        (6, json!("dates.birthday"), "in the future"),
        (7, json!("nickname"), "unknown field"),
        (8, json!("first_name"), "must not be empty"),
    ];
    assert_eq!(rejected.len(), expected.len(), "{report}");
    for ((line, field, error), got) in expected.iter().zip(rejected) {
        assert_eq!(got["line"], *line, "{got}");
        assert_eq!(got["field"], *field, "{got}");
        assert!(got["error"].as_str().unwrap().contains(error), "{got}");
        // The same line as a `POST /users` body gets the same answer.
        let body: Value = serde_json::from_str(&lines[*line - 1]).unwrap_or(Value::Null);
        if body.is_object() {
            let alone = app.post_json("/users", &body).await;
            assert!(alone.status().is_client_error());
            let alone: Value = alone.json().await.unwrap();
            assert_eq!(alone["field"], got["field"], "line {line}");
            assert_eq!(alone["error"], got["error"], "line {line}");
        }
    }

    assert_eq!(count(&app, "SELECT count(*) FROM users").await, 4);
    for (name, zone, month_day) in [
        ("Ada", "Europe/London", "-12-10T09:00:00"),
        ("Grace", "America/New_York", "-12-09T09:00:00"),
        ("Alan", "Asia/Kolkata", "-06-23T09:00:00"),
        ("Edsger", "Europe/Amsterdam", "-05-11T09:00:00"),
    ] {
        let ids = ids_named(&app, name).await;
        assert_eq!(ids.len(), 1, "{name}");
        let user: Value = app
            .get(&format!("/users/{}", ids[0]))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(user["timezone"], zone);
        assert_eq!(user["last_name"], "Imported");
        let events = app.events_of(&ids[0].to_string()).await;
        assert_eq!(events.len(), 1, "{name}: {events:?}");
        assert_eq!(events[0]["event_type"], "birthday");
        assert_eq!(events[0]["status"], "pending");
        assert_eq!(events[0]["timezone"], zone);
        assert!(
            events[0]["occurrence"]
                .as_str()
                .unwrap()
                .ends_with(month_day),
            "{name}: {events:?}"
        );
    }
    for name in ["Broken", "Mars", "Future", "Nick"] {
        assert!(ids_named(&app, name).await.is_empty(), "{name} was written");
    }
    assert!(app.replans().await.is_empty());
}

#[tokio::test]
async fn an_imported_user_whose_plugin_fails_is_kept_and_recorded_to_plan_again() {
    let app = spawn_app().await;
    let response = app
        .put_type("misbehave", "", plugin_bytes("kairos-misbehave"))
        .await;
    assert_eq!(response.status(), 201);
    app.event_types.settle().await;

    let mut failing = user("Failing", "UTC", "1990-03-04");
    failing["attributes"] = json!({"mode": "err"});
    let body = format!("{}\n{failing}\n", user("Fine", "UTC", "1990-03-04"));
    let (status, report) = import(&app, body, None).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["imported"], 2, "{report}");
    assert_eq!(report["rejected_count"], 0, "{report}");

    let fine = ids_named(&app, "Fine").await[0];
    let failing = ids_named(&app, "Failing").await[0];
    let types = |events: Vec<Value>| -> Vec<String> {
        let mut types: Vec<String> = events
            .iter()
            .map(|e| e["event_type"].as_str().unwrap().to_string())
            .collect();
        types.sort();
        types
    };
    assert_eq!(
        types(app.events_of(&fine.to_string()).await),
        ["birthday", "misbehave"]
    );
    assert_eq!(
        types(app.events_of(&failing.to_string()).await),
        ["birthday"]
    );
    let replans = app.replans().await;
    assert_eq!(replans.len(), 1, "{replans:?}");
    assert_eq!(
        (replans[0].0, replans[0].1.as_str()),
        (failing, "misbehave")
    );
    assert!(replans[0].2.contains("deliberate error"), "{replans:?}");
}

#[tokio::test]
async fn users_imported_on_a_replica_without_a_type_get_it_from_a_replica_that_has_it() {
    let a = spawn_app().await;
    // A second replica on the same database that does not follow the
    // registry: it keeps only the bundled birthday.
    let mut settings = a.settings.clone();
    settings.data_dir = settings.data_dir.with_extension("replica-b");
    settings.follow = false;
    let b = spawn_app_on(settings, a.receiver.clone()).await;
    let response = a
        .put_type("anniversary", "", plugin_bytes("kairos-anniversary"))
        .await;
    assert_eq!(response.status(), 201);
    a.event_types.settle().await;
    assert!(b.registry.get("anniversary").is_none());

    let mut married = user("Married", "Europe/Paris", "1980-02-03");
    married["dates"]["anniversary"] = json!("2010-06-05");
    let (status, report) = import(&b, format!("{married}\n"), None).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["imported"], 1, "{report}");
    let id = ids_named(&b, "Married").await[0];
    let replans = b.replans().await;
    assert_eq!(replans.len(), 1, "{replans:?}");
    assert_eq!((replans[0].0, replans[0].1.as_str()), (id, "anniversary"));

    assert_eq!(a.run_replanner_once().await, 1);
    let events = a.events_of(&id.to_string()).await;
    let mut types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(types, ["anniversary", "birthday"], "{events:?}");
    assert!(a.replans().await.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn an_import_body_that_is_not_ndjson_is_400_and_writes_nothing() {
    let app = spawn_app().await;
    let response = app
        .http
        .post(app.url("/users/import"))
        .header("content-type", "text/csv")
        .body(user("Ada", "UTC", "1990-01-01").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["field"], "content-type", "{body}");
    assert_eq!(count(&app, "SELECT count(*) FROM users").await, 0);
}

/// The test process's resident memory in bytes (`VmRSS`), which holds the
/// app: it runs in-process.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// The contract's bound on the host's memory above idle during an import.
const MEMORY_BOUND: u64 = 256 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_larger_than_the_memory_bound_runs_within_it() {
    let app = spawn_app().await;
    // The body, made on the fly and never held whole: line 1 is one line of
    // 320 MiB (over-long: rejected without being buffered), then 12,000
    // lines of 20 KB each (240 MB), most of them rejected (an attribute
    // over 10,000 characters) and every 20th one good, then a last good
    // line. 560 MB in all, more than twice the bound: a host that buffered
    // the body, a line, a batch without limit or every rejected line would
    // grow past the bound, while a debug build still gets through it in
    // seconds (it is mostly bytes to scan, not users to write).
    const LONG_LINE_MIB: usize = 320;
    const LINES: usize = 12_000;
    let mib_of_x = Bytes::from(vec![b'x'; 1 << 20]);
    let line_with_note = |first: &str, chars: usize| {
        let mut line = user(first, "UTC", "1990-01-01");
        line["attributes"] = json!({ "note": "n".repeat(chars) });
        Bytes::from(format!("{line}\n"))
    };
    let bad = line_with_note("Bad", 20_000);
    let good = line_with_note("Good", 5_000);
    let last = line_with_note("Last", 10);
    let body_bytes =
        (LONG_LINE_MIB << 20) + 1 + LINES / 20 * good.len() + (LINES - LINES / 20) * bad.len();
    assert!(body_bytes as u64 > 2 * MEMORY_BOUND, "{body_bytes}");
    let chunks = std::iter::repeat_n(mib_of_x, LONG_LINE_MIB)
        .chain(std::iter::once(Bytes::from_static(b"\n")))
        .chain((0..LINES).map(move |i| {
            if i % 20 == 0 {
                good.clone()
            } else {
                bad.clone()
            }
        }))
        .chain(std::iter::once(last))
        .map(Ok::<_, std::io::Error>);
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));

    let idle = resident_bytes();
    let peak = Arc::new(AtomicU64::new(idle));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(resident_bytes(), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
    };
    let (status, report) = import(&app, body, None).await;
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let grew = peak.load(Ordering::Relaxed).saturating_sub(idle);
    eprintln!(
        "resident memory grew by {} MiB during a {} MiB import",
        grew >> 20,
        body_bytes >> 20
    );

    assert_eq!(status, 200, "{report}");
    assert_eq!(report["imported"], LINES / 20 + 1);
    assert_eq!(report["rejected_count"], 1 + LINES - LINES / 20);
    let rejected = report["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1_000, "the list is capped");
    assert_eq!(rejected[0]["line"], 1);
    assert_eq!(rejected[0]["field"], Value::Null);
    assert!(
        rejected[0]["error"]
            .as_str()
            .unwrap()
            .contains("longer than"),
        "{}",
        rejected[0]
    );
    assert_eq!(rejected[1]["line"], 3);
    assert_eq!(rejected[1]["field"], "attributes.note");
    let last_line = (1 + 1 + LINES) as u64;
    assert_eq!(ids_named(&app, "Last").await.len(), 1, "line {last_line}");
    assert!(ids_named(&app, "Bad").await.is_empty());
    assert!(
        grew < MEMORY_BOUND,
        "resident memory grew by {} MiB during a {} MiB import",
        grew >> 20,
        body_bytes >> 20
    );
}

#[tokio::test]
async fn importing_takes_a_client_token_when_tokens_are_configured() {
    let app = spawn_app_with(|s| s.api_tokens = Some(CLIENT_TOKEN.to_string())).await;
    let line = format!("{}\n", user("Ada", "UTC", "1990-01-01"));
    for token in [None, Some("wrong")] {
        let (status, body) = import(&app, line.clone(), token).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
    }
    assert_eq!(count(&app, "SELECT count(*) FROM users").await, 0);

    for token in [CLIENT_TOKEN, ADMIN_TOKEN] {
        let (status, body) = import(&app, line.clone(), Some(token)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["imported"], 1, "{body}");
    }
    assert_eq!(count(&app, "SELECT count(*) FROM users").await, 2);

    let file = ndjson_file(&line);
    let refused = kairos_import(&app, &file, None, None).await;
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(refused.stderr.contains("401"), "{refused:?}");
    let accepted = kairos_import(&app, &file, Some(CLIENT_TOKEN), None).await;
    assert_eq!(accepted.code, Some(0), "{accepted:?}");
    assert_eq!(count(&app, "SELECT count(*) FROM users").await, 3);
}

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn ndjson_file(text: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("import-{}.ndjson", Uuid::new_v4().simple()));
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the built `kairos import FILE` against the app (awaited, so the app
/// keeps serving on this runtime); `stdin` is piped in when given.
async fn kairos_import(
    app: &TestApp,
    file: &std::path::Path,
    token: Option<&str>,
    stdin: Option<&str>,
) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kairos"));
    command
        .arg("import")
        .arg(file)
        .args(["--url", &app.base])
        .env_remove("KAIROS_API_TOKEN")
        .env_remove("KAIROS_URL")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    let mut child = command.spawn().expect("run the kairos binary");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).await.unwrap();
    }
    let output = child.wait_with_output().await.unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test]
async fn kairos_import_prints_the_summary_and_each_rejected_line_and_exits_by_outcome() {
    let app = spawn_app().await;
    let mixed = format!(
        "{}\n{}\n{}\n",
        user("Ada", "Europe/London", "1815-12-10"),
        user("Mars", "Mars/Olympus_Mons", "1990-01-01"),
        user("Grace", "America/New_York", "1906-12-09"),
    );
    let run = kairos_import(&app, &ndjson_file(&mixed), None, None).await;
    assert_eq!(run.code, Some(1), "a rejected line exits 1: {run:?}");
    assert!(
        run.stdout
            .contains("imported 2 users (2 events planned); rejected 1 lines"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("line 2: timezone: unknown timezone"),
        "{run:?}"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM users").await, 2);

    // `-` reads standard input; a clean import exits 0.
    let clean = format!("{}\n", user("Alan", "Asia/Kolkata", "1912-06-23"));
    let run = kairos_import(&app, std::path::Path::new("-"), None, Some(&clean)).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("imported 1 users"), "{run:?}");
    assert_eq!(ids_named(&app, "Alan").await.len(), 1);

    // A file that is not there, and a host that is not there: exit 2.
    let missing = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("no-such-file.ndjson");
    let run = kairos_import(&app, &missing, None, None).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("no-such-file.ndjson"), "{run:?}");
}
