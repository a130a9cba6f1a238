//! Seeing ahead: a dry run of a new event-type version on the real users,
//! and the simulation of a window, checked against an independent reading
//! of the zone database and against what the receiver then gets. Neither
//! writes a row.

use crate::helpers::{ADMIN_TOKEN, TestApp, plugin_bytes, spawn_app, spawn_app_with};
use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc, Weekday};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;

fn person(first: &str, zone: &str, dates: Value, attributes: Value) -> Value {
    json!({
        "first_name": first,
        "last_name": "Tester",
        "timezone": zone,
        "dates": dates,
        "attributes": attributes,
    })
}

async fn dry_run(app: &TestApp, name: &str, query: &str, bytes: Vec<u8>) -> (u16, Value) {
    let response = app
        .http
        .put(app.url(&format!("/event-types/{name}?dry_run=true{query}")))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Every row of every table a change could touch, as text, table by table:
/// two equal snapshots mean nothing was written. (`replicas` is left out:
/// each replica's heartbeat writes it every few seconds.)
#[derive(PartialEq)]
struct Rows(BTreeMap<String, String>);

impl std::fmt::Debug for Rows {
    /// Row counts only: the rows themselves would drown the message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counts: BTreeMap<_, _> = self
            .0
            .iter()
            .map(|(table, text)| (table, text.lines().count()))
            .collect();
        write!(f, "{counts:?}")
    }
}

async fn rows(app: &TestApp) -> Rows {
    let mut all = BTreeMap::new();
    for table in [
        "users",
        "events",
        "event_history",
        "replans",
        "event_type_passes",
        "components",
        "event_types",
    ] {
        // The table names are the constants above.
        let text: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT string_agg(t::text, E'\\n' ORDER BY t::text) FROM {table} t"
        )))
        .fetch_one(&app.pool)
        .await
        .unwrap();
        all.insert(table.to_string(), text.unwrap_or_default());
    }
    Rows(all)
}

/// `GET /event-types` without what changes on its own (heartbeats).
async fn types_listed(app: &TestApp) -> Value {
    let mut types = Value::Array(app.event_types().await);
    for entry in types.as_array_mut().unwrap() {
        for replica in entry["fleet"]["replicas"].as_array_mut().unwrap() {
            replica.as_object_mut().unwrap().remove("heartbeat_at");
        }
    }
    types
}

/// The plugin directory's files and their bytes.
fn directory(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            (name, std::fs::read(&path).unwrap())
        })
        .collect()
}

async fn simulate(app: &TestApp, query: &str) -> (u16, Vec<Value>, String) {
    let response = app.get(&format!("/simulate?{query}")).await;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let lines = if status == 200 {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    } else {
        Vec::new()
    };
    (status, lines, text)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[tokio::test]
async fn a_dry_run_of_a_new_send_at_shows_every_user_moved_and_changes_nothing() {
    let app = spawn_app().await;
    let zones = ["Europe/London", "Asia/Tokyo", "America/Chicago"];
    let mut ids = Vec::new();
    for (i, zone) in zones.iter().enumerate() {
        let user = app
            .create_user(&person(
                &format!("P{i}"),
                zone,
                json!({"birthday": format!("19{}0-06-1{i}", i + 5)}),
                json!({}),
            ))
            .await;
        ids.push(user["id"].as_str().unwrap().to_string());
    }
    // Without the date: not counted.
    app.create_user(&person("Dateless", "UTC", json!({}), json!({})))
        .await;
    let rows_before = rows(&app).await;
    let types_before = types_listed(&app).await;
    let dir_before = directory(&app.settings.plugin_dir);

    let (status, preview) = dry_run(
        &app,
        "birthday",
        "&config.send_at=10:30",
        plugin_bytes("kairos-birthday"),
    )
    .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["event_type"], "birthday");
    let version = &types_before[0]["version"];
    assert_eq!(&preview["live_version"], version, "{preview}");
    assert_eq!(&preview["candidate_version"], version, "{preview}");
    assert_eq!(preview["users"], 3, "{preview}");
    assert_eq!(preview["changed"], 3, "{preview}");
    assert_eq!(preview["failed"], 0, "{preview}");
    let changes = preview["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 3);
    for change in changes {
        assert!(ids.contains(&change["user_id"].as_str().unwrap().to_string()));
        let (before, after) = (&change["before"], &change["after"]);
        let (old, new) = (
            before["occurrence"].as_str().unwrap(),
            after["occurrence"].as_str().unwrap(),
        );
        assert!(old.ends_with("T09:00:00"), "{change}");
        assert!(new.ends_with("T10:30:00"), "{change}");
        assert_eq!(old[..10], new[..10], "{change}");
        let moved = after["due_at"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap()
            - before["due_at"]
                .as_str()
                .unwrap()
                .parse::<DateTime<Utc>>()
                .unwrap();
        assert_eq!(moved, Duration::minutes(90), "{change}");
        assert_eq!(before["text"], after["text"], "{change}");
        assert!(change["error"].is_null());
    }
    // The pending events still say 09:00, as do they all.
    let events: Vec<String> =
        sqlx::query_scalar("SELECT occurrence::text FROM events WHERE event_type = 'birthday'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|o| o.ends_with("09:00:00")), "{events:?}");
    assert_eq!(rows(&app).await, rows_before);
    assert_eq!(types_listed(&app).await, types_before);
    assert_eq!(directory(&app.settings.plugin_dir), dir_before);

    // `limit` keeps the list short; the counts stay whole.
    let (status, preview) = dry_run(
        &app,
        "birthday",
        "&config.send_at=10:30&limit=1",
        plugin_bytes("kairos-birthday"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(preview["changed"], 3);
    assert_eq!(preview["changes"].as_array().unwrap().len(), 1);
    // Unchanged users fill the list after the changed ones.
    let (_, same) = dry_run(&app, "birthday", "", plugin_bytes("kairos-birthday")).await;
    assert_eq!(same["changed"], 0, "{same}");
    let listed = same["changes"].as_array().unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|c| c["before"] == c["after"]), "{same}");
}

#[tokio::test]
async fn a_dry_run_of_a_type_not_loaded_yet_has_no_before() {
    let app = spawn_app().await;
    let married = app
        .create_user(&person(
            "Wed",
            "Europe/Paris",
            json!({"birthday": "1980-01-02", "anniversary": "2010-05-20"}),
            json!({}),
        ))
        .await;
    app.create_user(&person(
        "Single",
        "UTC",
        json!({"birthday": "1990-03-04"}),
        json!({}),
    ))
    .await;
    let rows_before = rows(&app).await;
    let (status, preview) =
        dry_run(&app, "anniversary", "", plugin_bytes("kairos-anniversary")).await;
    assert_eq!(status, 200, "{preview}");
    assert!(preview["live_version"].is_null(), "{preview}");
    assert_eq!(preview["users"], 1);
    assert_eq!(preview["changed"], 1);
    let change = &preview["changes"][0];
    assert_eq!(change["user_id"], married["id"]);
    assert!(change["before"].is_null(), "{change}");
    assert!(change["after"]["occurrence"].as_str().unwrap()[4..].starts_with("-05-20T09:00:00"));
    assert!(
        change["after"]["text"]
            .as_str()
            .unwrap()
            .contains("anniversary"),
        "{change}"
    );
    assert_eq!(rows(&app).await, rows_before);
    assert!(app.registry.get("anniversary").is_none());
    assert_eq!(app.get("/event-types/anniversary").await.status(), 404);
}

#[tokio::test]
async fn a_candidate_that_fails_for_some_users_lists_them_with_their_error() {
    let app = spawn_app().await;
    let mut plain = Vec::new();
    for i in 0..3 {
        let user = app
            .create_user(&person(
                &format!("Fine{i}"),
                "UTC",
                json!({"birthday": "1990-07-01"}),
                json!({}),
            ))
            .await;
        plain.push(user["id"].clone());
    }
    let erring = app
        .create_user(&person(
            "Erring",
            "UTC",
            json!({"birthday": "1990-07-02"}),
            json!({"mode": "err"}),
        ))
        .await;
    let trapping = app
        .create_user(&person(
            "Trapping",
            "UTC",
            json!({"birthday": "1990-07-03"}),
            json!({"mode": "trap"}),
        ))
        .await;
    let rows_before = rows(&app).await;
    let (status, preview) = dry_run(
        &app,
        "misbehave",
        "&limit=2",
        plugin_bytes("kairos-misbehave"),
    )
    .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["users"], 5, "{preview}");
    assert_eq!(preview["failed"], 2, "{preview}");
    // A failed user counts in `failed`, not in `changed`.
    assert_eq!(preview["changed"], 3, "{preview}");
    let failed: BTreeMap<String, String> = preview["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert!(c["after"].is_null(), "{c}");
            (
                c["user_id"].as_str().unwrap().to_string(),
                c["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(failed.len(), 2, "{preview}");
    let erring_error = &failed[erring["id"].as_str().unwrap()];
    assert!(erring_error.contains("deliberate error"), "{erring_error}");
    let trap = &failed[trapping["id"].as_str().unwrap()];
    assert!(trap.starts_with("trap"), "{trap}");
    assert_eq!(rows(&app).await, rows_before);
    assert!(app.registry.get("misbehave").is_none());
}

#[tokio::test]
async fn a_bad_component_gets_the_same_400_from_a_dry_run_as_from_a_real_put() {
    let app = spawn_app().await;
    for (name, bytes) in [
        ("birthday", b"not a component".to_vec()),
        ("other", plugin_bytes("kairos-birthday")),
    ] {
        let real = app.put_type(name, "", bytes.clone()).await;
        let real_status = real.status().as_u16();
        let real_body: Value = real.json().await.unwrap();
        let (status, body) = dry_run(&app, name, "", bytes).await;
        assert_eq!(real_status, 400, "{real_body}");
        assert_eq!((status, &body), (real_status, &real_body));
    }
    for query in ["&limit=0", "&limit=1001", "&limit=x"] {
        let (status, body) =
            dry_run(&app, "birthday", query, plugin_bytes("kairos-birthday")).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["field"], "limit", "{body}");
    }
    let response = app
        .put_type(
            "birthday",
            "?dry_run=maybe",
            plugin_bytes("kairos-birthday"),
        )
        .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["field"], "dry_run", "{body}");
    let response = app
        .put_type("birthday", "?limit=5", plugin_bytes("kairos-birthday"))
        .await;
    assert_eq!(response.status(), 400);
    // A client token may not dry-run.
    let response = app
        .http
        .put(app.url("/event-types/birthday?dry_run=true"))
        .header("content-type", "application/wasm")
        .body(plugin_bytes("kairos-birthday"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn a_streamed_dry_run_reports_progress_then_the_preview() {
    let app = spawn_app().await;
    let users: Vec<String> = (0..4_100)
        .map(|i| {
            person(
                &format!("U{i}"),
                "Asia/Kolkata",
                json!({"birthday": "1991-09-09"}),
                json!({}),
            )
            .to_string()
        })
        .collect();
    let response = app
        .http
        .post(app.url("/users/import"))
        .header("content-type", "application/x-ndjson")
        .body(users.join("\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = app
        .http
        .put(app.url("/event-types/birthday?dry_run=true&config.send_at=08:00"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/wasm")
        .header("accept", "application/x-ndjson")
        .body(plugin_bytes("kairos-birthday"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let progress: Vec<u64> = lines
        .iter()
        .filter_map(|l| l["progress"]["users_read"].as_u64())
        .collect();
    assert_eq!(progress, [2_000, 4_000, 4_100], "{text}");
    assert!(
        lines
            .iter()
            .all(|l| l.get("progress").is_none() || l["progress"]["users_total"] == 4_100)
    );
    let last = lines.last().unwrap();
    assert_eq!(last["preview"]["changed"], 4_100, "{last}");
}

// --- Simulation -----------------------------------------------------------

/// The first year after this one without a February 29: its window holds
/// the leap-day rule and this year's DST changes are behind it.
fn simulated_year() -> i32 {
    let mut year = Utc::now().year() + 1;
    while NaiveDate::from_ymd_opt(year, 2, 29).is_some() {
        year += 1;
    }
    year
}

/// The `n`th `weekday` of `month` (n = -1: the last).
fn nth_weekday(year: i32, month: u32, weekday: Weekday, n: i32) -> NaiveDate {
    if n > 0 {
        NaiveDate::from_weekday_of_month_opt(year, month, weekday, n as u8).unwrap()
    } else {
        let mut day = NaiveDate::from_ymd_opt(year, month + 1, 1)
            .unwrap()
            .pred_opt()
            .unwrap();
        while day.weekday() != weekday {
            day = day.pred_opt().unwrap();
        }
        day
    }
}

/// What `zoneinfo` (Python's reading of the system's zone database, not
/// chrono-tz) says each person's birthday in `year` is at `send_at` local,
/// with the contract's rules: a time in a gap moves forward by the gap
/// (`fold=0` reads it with the offset before the change), an ambiguous time
/// takes the earlier instant (`fold=0`), February 29 falls per `leap_day`.
fn oracle(people: &[(String, String, String)], year: i32, leap_day: &str) -> Vec<Value> {
    let script = r#"
import calendar, json, sys
from datetime import datetime, timezone
from zoneinfo import ZoneInfo
spec = json.load(sys.stdin)
out = []
for user_id, zone, birthday in spec["people"]:
    year = spec["year"]
    month, day = int(birthday[5:7]), int(birthday[8:10])
    if (month, day) == (2, 29) and not calendar.isleap(year):
        month, day = (2, 28) if spec["leap_day"] == "feb28" else (3, 1)
    local = datetime(year, month, day, 2, 30, tzinfo=ZoneInfo(zone))
    due = local.astimezone(timezone.utc)
    out.append({"user_id": user_id, "timezone": zone,
                "occurrence": local.strftime("%Y-%m-%dT%H:%M:%S"),
                "due_at": due.strftime("%Y-%m-%dT%H:%M:%SZ")})
out.sort(key=lambda line: (line["due_at"], line["user_id"]))
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (scripts/setup.sh installs it)");
    let spec = json!({"people": people, "year": year, "leap_day": leap_day});
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn a_year_simulated_across_zones_matches_the_zone_database() {
    let app = spawn_app_with(|s| {
        std::fs::write(
            s.plugin_dir.join("birthday.toml"),
            "[config]\nsend_at = \"02:30\"\nleap_day = \"feb28\"\n",
        )
        .unwrap();
    })
    .await;
    let year = simulated_year();
    let day = |d: NaiveDate| format!("1990-{:02}-{:02}", d.month(), d.day());
    // Each birthday falls on the day its zone's clocks change in `year`
    // where the case needs it: 02:30 is in the gap or the overlap then.
    let people_spec = [
        ("Europe/Berlin", day(nth_weekday(year, 3, Weekday::Sun, -1))), // gap
        (
            "Europe/Berlin",
            day(nth_weekday(year, 10, Weekday::Sun, -1)),
        ), // overlap
        (
            "America/New_York",
            day(nth_weekday(year, 3, Weekday::Sun, 2)),
        ), // gap
        (
            "Australia/Adelaide",
            day(nth_weekday(year, 10, Weekday::Sun, 1)),
        ), // +9:30, gap
        ("Asia/Kolkata", "1980-06-15".to_string()),                     // +5:30
        ("Asia/Kathmandu", "1975-01-20".to_string()),                   // +5:45
        ("Pacific/Chatham", "1992-08-04".to_string()),                  // +12:45
        ("America/St_Johns", "1977-07-01".to_string()),                 // -2:30
        ("Australia/Lord_Howe", "1999-11-11".to_string()),              // half-hour DST
        ("America/Mexico_City", "1960-07-31".to_string()),              // DST abolished 2022
        ("America/Sao_Paulo", "1965-11-05".to_string()),                // DST abolished 2019
        ("UTC", "2000-02-29".to_string()),                              // leap day
        ("Pacific/Kiritimati", "1996-02-29".to_string()),               // leap day, +14
        ("America/Los_Angeles", "1996-02-29".to_string()),              // leap day, -8
    ];
    let mut people = Vec::new();
    for (i, (zone, birthday)) in people_spec.iter().enumerate() {
        let user = app
            .create_user(&person(
                &format!("Z{i}"),
                zone,
                json!({"birthday": birthday}),
                json!({}),
            ))
            .await;
        people.push((
            user["id"].as_str().unwrap().to_string(),
            zone.to_string(),
            birthday.clone(),
        ));
    }
    let from = format!("{year}-01-01T00:00:00Z");
    let to = format!("{}-01-01T00:00:00Z", year + 1);
    let window = format!("from={from}&to={to}");

    for leap_day in ["feb28", "mar1"] {
        if leap_day == "mar1" {
            let response = app
                .put_type(
                    "birthday",
                    "?config.send_at=02:30&config.leap_day=mar1",
                    plugin_bytes("kairos-birthday"),
                )
                .await;
            assert_eq!(response.status(), 200);
            app.event_types.settle().await;
        }
        let rows_before = rows(&app).await;
        let (status, lines, text) = simulate(&app, &window).await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(rows(&app).await, rows_before, "the simulation wrote");
        let expected = oracle(&people, year, leap_day);
        assert_eq!(lines.len(), people.len(), "{text}");
        let got: Vec<Value> = lines
            .iter()
            .map(|l| {
                let first = &people.iter().position(|p| p.0 == l["user_id"]).unwrap();
                assert_eq!(
                    l["text"],
                    format!("Hey, Z{first} Tester it's your birthday"),
                    "{l}"
                );
                assert_eq!(l["event_type"], "birthday");
                json!({
                    "user_id": l["user_id"], "timezone": l["timezone"],
                    "occurrence": l["occurrence"], "due_at": l["due_at"],
                })
            })
            .collect();
        assert_eq!(got, expected, "leap_day={leap_day}");
    }
}

#[tokio::test]
async fn a_window_ending_seconds_from_now_is_exactly_what_the_receiver_gets() {
    let app = spawn_app().await;
    assert_eq!(
        app.put_type("anniversary", "", plugin_bytes("kairos-anniversary"))
            .await
            .status(),
        201
    );
    for (i, zone) in [
        "Asia/Tokyo",
        "America/Denver",
        "Europe/Madrid",
        "Australia/Perth",
    ]
    .iter()
    .enumerate()
    {
        app.create_user(&person(
            &format!("Now{i}"),
            zone,
            json!({"birthday": format!("1985-04-0{}", i + 1), "anniversary": "2015-08-15"}),
            json!({}),
        ))
        .await;
    }
    // Each event comes due, a second apart, up to one second ago.
    let moved = sqlx::query(
        "UPDATE events e SET due_at = now() - n * interval '1 second', run_at = now() - n * interval '1 second' \
         FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM events) o WHERE e.id = o.id",
    )
    .execute(&app.pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(moved, 8);
    let now = Utc::now();
    let window = format!(
        "from={}&to={}",
        rfc3339(now - Duration::hours(1)),
        rfc3339(now + Duration::seconds(3))
    );
    let (status, lines, text) = simulate(&app, &window).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(lines.len(), 8, "{text}");
    let due: Vec<&str> = lines
        .iter()
        .map(|l| l["due_at"].as_str().unwrap())
        .collect();
    assert!(due.windows(2).all(|w| w[0] <= w[1]), "{due:?}");

    assert_eq!(app.run_claimer_once().await, 8);
    let received = app
        .receiver
        .wait_for(8, std::time::Duration::from_secs(10))
        .await;
    let mut delivered: Vec<Value> = received
        .iter()
        .map(|r| {
            let b = &r.body;
            json!({
                "user_id": b["user_id"], "event_type": b["event_type"],
                "event_type_version": b["event_type_version"],
                "occurrence": b["occurrence"], "timezone": b["timezone"],
                "due_at": b["due_at"], "text": b["message"]["text"],
            })
        })
        .collect();
    delivered.sort_by_key(|l| {
        (
            l["due_at"].as_str().unwrap().to_string(),
            l["user_id"].as_str().unwrap().to_string(),
        )
    });
    assert_eq!(lines, delivered);
}

#[tokio::test]
async fn a_simulation_refuses_bad_windows_by_name_and_narrows_by_type_and_user() {
    let app = spawn_app().await;
    let user = app
        .create_user(&person(
            "Solo",
            "Europe/Lisbon",
            json!({"birthday": "1990-05-05"}),
            json!({}),
        ))
        .await;
    app.create_user(&person(
        "Other",
        "UTC",
        json!({"birthday": "1990-05-06"}),
        json!({}),
    ))
    .await;
    let now = Utc::now();
    let (from, to) = (rfc3339(now), rfc3339(now + Duration::days(366)));
    for (query, field) in [
        (format!("to={to}"), "from"),
        (format!("from={from}"), "to"),
        (format!("from=yesterday&to={to}"), "from"),
        (format!("from={to}&to={from}"), "to"),
        (format!("from={from}&to={from}"), "to"),
        (
            format!("from={from}&to={}", rfc3339(now + Duration::days(5 * 366))),
            "to",
        ),
        (format!("from={from}&to={to}&event_type=nope"), "event_type"),
        (format!("from={from}&to={to}&user_id=x"), "user_id"),
        (format!("from={from}&to={to}&colour=red"), "colour"),
    ] {
        let (status, _, text) = simulate(&app, &query).await;
        assert_eq!(status, 400, "{query}: {text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["field"], field, "{query}: {body}");
    }
    let (status, _, _) = simulate(
        &app,
        &format!("from={from}&to={to}&user_id={}", uuid::Uuid::new_v4()),
    )
    .await;
    assert_eq!(status, 404);

    let (status, all, _) = simulate(&app, &format!("from={from}&to={to}")).await;
    assert_eq!(status, 200);
    assert_eq!(all.len(), 2);
    let (_, one, _) = simulate(
        &app,
        &format!(
            "from={from}&to={to}&user_id={}",
            user["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["user_id"], user["id"]);
    let (_, typed, _) = simulate(&app, &format!("from={from}&to={to}&event_type=birthday")).await;
    assert_eq!(typed, all);
    // Five years of a yearly type: five messages each, in order.
    let (status, long, text) = simulate(
        &app,
        &format!("from={from}&to={}", rfc3339(now + Duration::days(5 * 365))),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(long.len(), 10, "{text}");
    let occurrences: Vec<&str> = long
        .iter()
        .filter(|l| l["user_id"] == user["id"])
        .map(|l| l["occurrence"].as_str().unwrap())
        .collect();
    let years: Vec<i32> = occurrences
        .iter()
        .map(|o| o[..4].parse().unwrap())
        .collect();
    assert!(
        years.windows(2).all(|w| w[1] == w[0] + 1),
        "{occurrences:?}"
    );
    assert!(
        occurrences.iter().all(|o| o.ends_with("-05-05T09:00:00")),
        "{occurrences:?}"
    );
}

// --- The command line -----------------------------------------------------

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the built `kairos` with `args` (awaited, so the app keeps serving
/// on this runtime).
async fn kairos(args: &[&str]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kairos"))
        .args(args)
        .env_remove("KAIROS_URL")
        .env_remove("KAIROS_API_TOKEN")
        .env_remove("KAIROS_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).to_string(),
    }
}

#[tokio::test]
async fn kairos_simulate_prints_the_api_lines_or_csv() {
    let app = spawn_app().await;
    for (i, zone) in ["Asia/Kathmandu", "America/Halifax", "Africa/Lagos"]
        .iter()
        .enumerate()
    {
        app.create_user(&person(
            &format!("Cli{i}"),
            zone,
            json!({"birthday": format!("1970-0{}-21", i + 3)}),
            json!({}),
        ))
        .await;
    }
    let now = Utc::now();
    let (from, to) = (
        now.date_naive().to_string(),
        (now + Duration::days(400)).date_naive().to_string(),
    );
    let (status, _, api) =
        simulate(&app, &format!("from={from}T00:00:00Z&to={to}T00:00:00Z")).await;
    assert_eq!(status, 200);
    assert_eq!(api.lines().count(), 3, "{api}");

    let ndjson = kairos(&["simulate", "--from", &from, "--to", &to, "--url", &app.base]).await;
    assert_eq!(ndjson.code, Some(0), "{}", ndjson.stderr);
    assert_eq!(ndjson.stdout, api);

    let csv = kairos(&[
        "simulate", "--from", &from, "--to", &to, "--format", "csv", "--type", "birthday", "--url",
        &app.base,
    ])
    .await;
    assert_eq!(csv.code, Some(0), "{}", csv.stderr);
    let rows: Vec<&str> = csv.stdout.lines().collect();
    assert_eq!(
        rows[0],
        "user_id,event_type,event_type_version,occurrence,timezone,due_at,text"
    );
    assert_eq!(rows.len(), 4, "{}", csv.stdout);
    for (row, line) in rows[1..].iter().zip(api.lines()) {
        let line: Value = serde_json::from_str(line).unwrap();
        assert!(
            row.starts_with(&format!("{},birthday,", line["user_id"].as_str().unwrap())),
            "{row}"
        );
        assert!(
            row.ends_with(&format!("\"{}\"", line["text"].as_str().unwrap())),
            "{row}"
        );
    }

    let bad = kairos(&["simulate", "--from", &to, "--to", &from, "--url", &app.base]).await;
    assert_eq!(bad.code, Some(2));
    assert!(
        bad.stderr.contains("to: must be after from"),
        "{}",
        bad.stderr
    );
}

#[tokio::test]
async fn kairos_plugin_diff_prints_the_preview_and_exits_by_its_outcome() {
    let app = spawn_app().await;
    app.create_user(&person(
        "Diff",
        "Europe/Oslo",
        json!({"birthday": "1980-08-08"}),
        json!({}),
    ))
    .await;
    let erring = app
        .create_user(&person(
            "Err",
            "UTC",
            json!({"birthday": "1980-08-09"}),
            json!({"mode": "err"}),
        ))
        .await;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let birthday = crate::helpers::plugin_wasm("kairos-birthday");
    let misbehave = crate::helpers::plugin_wasm("kairos-misbehave");
    let junk = dir.join(format!("junk-{}.wasm", uuid::Uuid::new_v4().simple()));
    std::fs::write(&junk, b"junk").unwrap();
    let rows_before = rows(&app).await;

    let moved = kairos(&[
        "plugin",
        "diff",
        "birthday",
        birthday.to_str().unwrap(),
        "--config",
        "send_at=07:15",
        "--url",
        &app.base,
        "--token",
        ADMIN_TOKEN,
    ])
    .await;
    assert_eq!(moved.code, Some(0), "{}", moved.stderr);
    assert!(
        moved
            .stdout
            .contains("2 users with its dates: 2 changed, 0 failed"),
        "{}",
        moved.stdout
    );
    assert!(moved.stdout.contains("T07:15:00"), "{}", moved.stdout);

    let failing = kairos(&[
        "plugin",
        "diff",
        "misbehave",
        misbehave.to_str().unwrap(),
        "--url",
        &app.base,
        "--token",
        ADMIN_TOKEN,
    ])
    .await;
    assert_eq!(failing.code, Some(1), "{}", failing.stderr);
    let failed_row = failing
        .stdout
        .lines()
        .find(|l| l.starts_with("failed"))
        .unwrap_or_else(|| panic!("{}", failing.stdout));
    assert!(
        failed_row.contains(erring["id"].as_str().unwrap()),
        "{failed_row}"
    );
    assert!(
        failed_row.ends_with("plugin error: deliberate error"),
        "{failed_row}"
    );

    let bad = kairos(&[
        "plugin",
        "diff",
        "birthday",
        junk.to_str().unwrap(),
        "--url",
        &app.base,
        "--token",
        ADMIN_TOKEN,
    ])
    .await;
    assert_eq!(bad.code, Some(2));
    assert!(
        bad.stderr.contains("400") && bad.stderr.contains("body:"),
        "{}",
        bad.stderr
    );
    let refused = kairos(&[
        "plugin",
        "diff",
        "birthday",
        birthday.to_str().unwrap(),
        "--url",
        &app.base,
    ])
    .await;
    assert_eq!(refused.code, Some(2));
    assert!(refused.stderr.contains("401"), "{}", refused.stderr);
    assert_eq!(rows(&app).await, rows_before);
}
