//! The REST API: every endpoint, every validation rule, and that a rejected
//! request writes nothing.

use crate::helpers::{ada, spawn_app};
use serde_json::{Value, json};

async fn count_rows(app: &crate::helpers::TestApp) -> (i64, i64) {
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM all_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    (users, events)
}

#[tokio::test]
async fn creating_a_user_returns_it_with_an_id_and_schedules_its_birthday() {
    let app = spawn_app().await;
    let user = app.create_user(&ada()).await;
    let id = user["id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok());
    assert_eq!(user["first_name"], "Ada");
    assert_eq!(user["dates"]["birthday"], "1815-12-10");
    assert_eq!(user["attributes"]["email"], "ada@example.com");

    let fetched: Value = app.get(&format!("/users/{id}")).await.json().await.unwrap();
    assert_eq!(fetched, user);

    let events = app.events_of(id).await;
    assert_eq!(events.len(), 1, "only birthday is loaded: {events:?}");
    let event = &events[0];
    assert_eq!(event["event_type"], "birthday");
    assert_eq!(event["status"], "pending");
    assert_eq!(event["attempts"], 0);
    assert_eq!(event["timezone"], "Europe/London");
    assert!(
        event["occurrence"]
            .as_str()
            .unwrap()
            .ends_with("-12-10T09:00:00"),
        "{event}"
    );
    // London in December is UTC+0.
    assert!(
        event["due_at"]
            .as_str()
            .unwrap()
            .contains("-12-10T09:00:00"),
        "{event}"
    );
    for key in ["id", "last_error", "delivered_at", "event_type_version"] {
        assert!(event.get(key).is_some(), "event lacks {key}");
    }
    assert!(event["event_type_version"].is_null(), "not formatted yet");
}

#[tokio::test]
async fn names_are_stored_trimmed() {
    let app = spawn_app().await;
    let mut body = ada();
    body["first_name"] = json!("  Ada  ");
    let user = app.create_user(&body).await;
    assert_eq!(user["first_name"], "Ada");
}

#[tokio::test]
async fn a_missing_user_is_404_and_a_bad_id_is_400() {
    let app = spawn_app().await;
    let missing = uuid::Uuid::new_v4();
    for path in [
        format!("/users/{missing}"),
        format!("/users/{missing}/events"),
    ] {
        assert_eq!(app.get(&path).await.status(), 404, "{path}");
    }
    assert_eq!(app.delete(&format!("/users/{missing}")).await.status(), 404);
    assert_eq!(
        app.put_json(&format!("/users/{missing}"), &ada())
            .await
            .status(),
        404
    );
    let response = app.get("/users/not-a-uuid").await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["field"], "id");
}

/// Each bad body, the status it must get and the field it must name.
fn bad_bodies() -> Vec<(&'static str, Value, u16, &'static str)> {
    let with = |key: &str, value: Value| {
        let mut body = ada();
        body[key] = value;
        body
    };
    let with_date = |value: &str| {
        let mut body = ada();
        body["dates"]["birthday"] = json!(value);
        body
    };
    let without = |key: &str| {
        let mut body = ada();
        body.as_object_mut().unwrap().remove(key);
        body
    };
    vec![
        (
            "unknown timezone",
            with("timezone", json!("Mars/Olympus")),
            422,
            "timezone",
        ),
        (
            "date that does not exist",
            with_date("2001-02-29"),
            422,
            "dates.birthday",
        ),
        (
            "date not in YYYY-MM-DD",
            with_date("10/12/1815"),
            422,
            "dates.birthday",
        ),
        (
            "date in the future",
            with_date("2999-01-01"),
            422,
            "dates.birthday",
        ),
        (
            "empty first name",
            with("first_name", json!("   ")),
            422,
            "first_name",
        ),
        (
            "over-long last name",
            with("last_name", json!("x".repeat(201))),
            422,
            "last_name",
        ),
        (
            "control character in a name",
            with("first_name", json!("A\u{0000}da")),
            422,
            "first_name",
        ),
        (
            "unknown field",
            with("nickname", json!("Ada")),
            400,
            "nickname",
        ),
        ("missing field", without("timezone"), 400, "timezone"),
        (
            "name of the wrong type",
            with("first_name", json!(42)),
            400,
            "first_name",
        ),
        (
            "attribute that is not a string",
            with("attributes", json!({"email": 5})),
            400,
            "attributes.email",
        ),
        (
            "date that is not a string",
            with("dates", json!({"birthday": 1815})),
            400,
            "dates.birthday",
        ),
    ]
}

#[tokio::test]
async fn every_invalid_create_is_a_4xx_naming_the_field_and_writes_nothing() {
    let app = spawn_app().await;
    for (case, body, status, field) in bad_bodies() {
        let response = app.post_json("/users", &body).await;
        assert_eq!(response.status().as_u16(), status, "{case}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["field"], field, "{case}: {error}");
        assert!(
            error["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{case}: {error}"
        );
    }
    assert_eq!(count_rows(&app).await, (0, 0));
}

#[tokio::test]
async fn every_invalid_replacement_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let user = app.create_user(&ada()).await;
    let id = user["id"].as_str().unwrap();
    let events_before = app.events_of(id).await;
    for (case, body, status, field) in bad_bodies() {
        let response = app.put_json(&format!("/users/{id}"), &body).await;
        assert_eq!(response.status().as_u16(), status, "{case}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["field"], field, "{case}");
    }
    let after: Value = app.get(&format!("/users/{id}")).await.json().await.unwrap();
    assert_eq!(after, user);
    assert_eq!(app.events_of(id).await, events_before);
}

#[tokio::test]
async fn malformed_json_and_oversized_bodies_get_the_json_error_shape() {
    let app = spawn_app().await;
    let response = app
        .http
        .post(app.url("/users"))
        .header("content-type", "application/json")
        .body("{\"first_name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("malformed JSON"),
        "{error}"
    );

    let mut huge = ada();
    huge["attributes"]["blob"] = json!("x".repeat(1 << 20));
    let response = app.post_json("/users", &huge).await;
    assert_eq!(response.status(), 413);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("larger than"),
        "{error}"
    );
    assert_eq!(count_rows(&app).await, (0, 0));
}

#[tokio::test]
async fn today_is_an_allowed_date_in_the_users_own_timezone() {
    let app = spawn_app().await;
    // Kiritimati (UTC+14) is the first place where any date begins.
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Pacific::Kiritimati)
        .date_naive();
    let mut body = ada();
    body["timezone"] = json!("Pacific/Kiritimati");
    body["dates"] = json!({"birthday": today.to_string()});
    app.create_user(&body).await;

    // The same date is in the future where it has not begun yet (UTC-11),
    // unless UTC-11 has already reached it.
    let pago_today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Pacific::Pago_Pago)
        .date_naive();
    if pago_today < today {
        body["timezone"] = json!("Pacific/Pago_Pago");
        let response = app.post_json("/users", &body).await;
        assert_eq!(response.status(), 422);
    }
}

#[tokio::test]
async fn users_page_by_id_with_limit_and_after() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            app.create_user(&ada()).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    ids.sort();
    let first: Vec<Value> = app.get("/users?limit=2").await.json().await.unwrap();
    let first_ids: Vec<&str> = first.iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!(first_ids, &ids[..2]);
    let next: Vec<Value> = app
        .get(&format!("/users?limit=2&after={}", ids[1]))
        .await
        .json()
        .await
        .unwrap();
    let next_ids: Vec<&str> = next.iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!(next_ids, &ids[2..4]);
    let all: Vec<Value> = app.get("/users").await.json().await.unwrap();
    assert_eq!(all.len(), 5);

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("after=nope", "after"),
        ("sort=name", "sort"),
    ] {
        let response = app.get(&format!("/users?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["field"], field, "{query}");
    }
}

#[tokio::test]
async fn replacing_a_user_changes_it_and_reschedules_its_events() {
    let app = spawn_app().await;
    let user = app.create_user(&ada()).await;
    let id = user["id"].as_str().unwrap();
    let before = app.events_of(id).await;

    let mut body = ada();
    body["first_name"] = json!("Augusta");
    body["timezone"] = json!("Asia/Tokyo");
    body["dates"] = json!({"birthday": "1815-06-15"});
    let response = app.put_json(&format!("/users/{id}"), &body).await;
    assert_eq!(response.status(), 200);
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["first_name"], "Augusta");
    assert_eq!(updated["timezone"], "Asia/Tokyo");
    assert_eq!(updated["id"], user["id"]);

    let events = app.events_of(id).await;
    let cancelled: Vec<&Value> = events
        .iter()
        .filter(|e| e["status"] == "cancelled")
        .collect();
    let pending: Vec<&Value> = events.iter().filter(|e| e["status"] == "pending").collect();
    assert_eq!(cancelled.len(), 1, "{events:?}");
    assert_eq!(cancelled[0]["id"], before[0]["id"]);
    assert_eq!(pending.len(), 1, "{events:?}");
    assert!(
        pending[0]["occurrence"]
            .as_str()
            .unwrap()
            .ends_with("-06-15T09:00:00")
    );
    assert_eq!(pending[0]["timezone"], "Asia/Tokyo");
    // 09:00 in Tokyo (UTC+9) is midnight UTC.
    assert!(
        pending[0]["due_at"]
            .as_str()
            .unwrap()
            .contains("-06-15T00:00:00"),
        "{}",
        pending[0]
    );
}

#[tokio::test]
async fn replacing_a_user_without_date_changes_keeps_its_event() {
    let app = spawn_app().await;
    let user = app.create_user(&ada()).await;
    let id = user["id"].as_str().unwrap();
    let before = app.events_of(id).await;
    let mut body = ada();
    body["last_name"] = json!("King");
    assert_eq!(
        app.put_json(&format!("/users/{id}"), &body).await.status(),
        200
    );
    assert_eq!(app.events_of(id).await, before);
}

#[tokio::test]
async fn deleting_a_user_cancels_its_pending_events() {
    let app = spawn_app().await;
    let user = app.create_user(&ada()).await;
    let id = user["id"].as_str().unwrap();
    let event_id = app.events_of(id).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(app.delete(&format!("/users/{id}")).await.status(), 204);
    assert_eq!(app.get(&format!("/users/{id}")).await.status(), 404);
    assert_eq!(app.event(&event_id).await["status"], "cancelled");
    assert_eq!(app.delete(&format!("/users/{id}")).await.status(), 404);
}

#[tokio::test]
async fn events_list_filters_by_status_and_type_and_checks_its_query() {
    let app = spawn_app().await;
    app.create_user(&ada()).await;
    let pending: Vec<Value> = app
        .get("/events?status=pending&event_type=birthday")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    let delivered: Vec<Value> = app
        .get("/events?status=delivered")
        .await
        .json()
        .await
        .unwrap();
    assert!(delivered.is_empty());
    let other: Vec<Value> = app
        .get("/events?event_type=anniversary")
        .await
        .json()
        .await
        .unwrap();
    assert!(other.is_empty());
    let response = app.get("/events?status=lost").await;
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["field"], "status");
}

#[tokio::test]
async fn health_ready_and_metrics_answer() {
    let app = spawn_app().await;
    assert_eq!(app.get("/health").await.status(), 200);
    let ready = app.get("/ready").await;
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["event_types"], json!(["birthday"]));
    let (_, event_id) = app.ada_with_event().await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        sample(&metrics, "kairos_events_due"),
        Some(0.0),
        "{metrics}"
    );
    assert!(
        metrics.contains("kairos_event_types_loaded{event_type=\"birthday\"} 1"),
        "{metrics}"
    );
    app.make_due(&event_id).await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        sample(&metrics, "kairos_events_due"),
        Some(1.0),
        "{metrics}"
    );

    // A delivery feeds the histograms (shared by every host of this test
    // process, so at least one sample each).
    assert_eq!(app.run_claimer_once().await, 1);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        sample(&metrics, "kairos_events_due"),
        Some(0.0),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE kairos_events_delivered_total counter"));
    for histogram in [
        "# TYPE kairos_delivery_lag_seconds histogram",
        "# TYPE kairos_webhook_duration_seconds histogram",
        "# TYPE kairos_plugin_call_seconds histogram",
        "# TYPE kairos_claim_batch_size histogram",
    ] {
        assert!(metrics.contains(histogram), "{histogram}: {metrics}");
    }
    for count in [
        "kairos_delivery_lag_seconds_count",
        "kairos_webhook_duration_seconds_count",
        "kairos_plugin_call_seconds_count{event_type=\"birthday\"}",
        "kairos_claim_batch_size_count",
        "kairos_events_delivered_total",
    ] {
        assert!(
            sample(&metrics, count).is_some_and(|n| n >= 1.0),
            "{count}: {metrics}"
        );
    }
    assert!(
        sample(
            &metrics,
            "kairos_plugin_calls_total{event_type=\"birthday\"}"
        )
        .is_some_and(|n| n >= 2.0)
    );
}

/// The value of the sample named exactly `name` (with its labels).
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
}

#[tokio::test]
async fn an_unknown_route_is_a_json_404() {
    let app = spawn_app().await;
    let response = app.get("/nope").await;
    assert_eq!(response.status(), 404);
    assert!(response.json::<Value>().await.unwrap()["error"].is_string());
}
