//! The record: every delivery attempt of an event on record with its
//! outcome, and history kept by day and dropped whole once past retention.

use crate::helpers::{ada, spawn_app};
use chrono::{DateTime, Duration as Days, Utc};
use kairos::retention::{self, Kept};
use serde_json::{Value, json};
use uuid::Uuid;

async fn attempts(app: &crate::helpers::TestApp, event_id: &str) -> Vec<Value> {
    let response = app.get(&format!("/events/{event_id}/attempts")).await;
    assert_eq!(response.status(), 200);
    response
        .json::<Value>()
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn an_event_answered_503_503_then_200_shows_its_three_attempts() {
    let app = spawn_app().await; // max_attempts = 3
    app.receiver.respond_with(&[503, 503]);
    let (_, event_id) = app.ada_with_event().await;
    assert!(
        attempts(&app, &event_id).await.is_empty(),
        "not attempted yet"
    );

    app.make_due(&event_id).await;
    for expected in ["pending", "pending", "delivered"] {
        assert_eq!(app.run_claimer_once().await, 1);
        let event = app.event(&event_id).await;
        assert_eq!(event["status"], expected, "{event}");
        // On record by the time the status shows the outcome.
        let n = event["attempts"].as_u64().unwrap() as usize;
        assert_eq!(attempts(&app, &event_id).await.len(), n, "{event}");
        if expected == "pending" {
            app.make_runnable(&event_id).await;
        }
    }

    let log = attempts(&app, &event_id).await;
    let column = |key: &str| log.iter().map(|a| a[key].clone()).collect::<Vec<_>>();
    assert_eq!(column("n"), [json!(1), json!(2), json!(3)]);
    assert_eq!(column("status"), [json!(503), json!(503), json!(200)]);
    assert_eq!(
        column("outcome"),
        [json!("retry"), json!("retry"), json!("delivered")]
    );
    let at: Vec<DateTime<Utc>> = column("at")
        .iter()
        .map(|a| a.as_str().unwrap().parse().unwrap())
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{at:?}");
    for attempt in &log {
        assert!(attempt["latency_ms"].as_u64().is_some(), "{attempt}");
        assert!(
            Uuid::parse_str(attempt["replica"].as_str().unwrap()).is_ok(),
            "{attempt}"
        );
    }
    let errors = column("error");
    assert!(errors[0].as_str().unwrap().contains("503"), "{errors:?}");
    assert!(errors[1].as_str().unwrap().contains("503"), "{errors:?}");
    assert_eq!(errors[2], Value::Null);
    assert_eq!(app.receiver.received().len(), 3);
}

/// The attempt that fails an event is kept on its history row; a retry by
/// hand moves it to the attempt log, so the next finishing attempt does
/// not take its place.
#[tokio::test]
async fn a_failed_event_retried_by_hand_keeps_every_attempt() {
    let app = spawn_app().await;
    app.receiver.respond_with(&[400]);
    let (_, event_id) = app.ada_with_event().await;
    app.make_due(&event_id).await;
    assert_eq!(app.run_claimer_once().await, 1);
    assert_eq!(app.event(&event_id).await["status"], "failed");
    assert_eq!(attempts(&app, &event_id).await.len(), 1);

    let response = app
        .post_json(&format!("/events/{event_id}/retry"), &json!({}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        attempts(&app, &event_id).await.len(),
        1,
        "kept by the retry"
    );
    assert_eq!(app.run_claimer_once().await, 1);
    assert_eq!(app.event(&event_id).await["status"], "delivered");

    let log = attempts(&app, &event_id).await;
    let column = |key: &str| log.iter().map(|a| a[key].clone()).collect::<Vec<_>>();
    assert_eq!(column("n"), [json!(1), json!(2)]);
    assert_eq!(column("status"), [json!(400), json!(200)]);
    assert_eq!(column("outcome"), [json!("failed"), json!("delivered")]);
    let errors = column("error");
    assert!(errors[0].as_str().unwrap().contains("400"), "{errors:?}");
    assert_eq!(errors[1], Value::Null);
}

#[tokio::test]
async fn attempts_of_an_unknown_event_are_not_found_and_a_bad_id_is_named() {
    let app = spawn_app().await;
    let response = app
        .get(&format!("/events/{}/attempts", Uuid::new_v4()))
        .await;
    assert_eq!(response.status(), 404);
    let response = app.get("/events/not-a-uuid/attempts").await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["field"], "id", "{body}");
}

/// With a month of daily history partitions, planning a batch of next
/// occurrences passes PostgreSQL's `jit_above_cost`, and compiling it took
/// longer than running it: the host's sessions run with JIT off, whatever
/// the server's default.
#[tokio::test]
async fn the_hosts_sessions_never_compile_queries_with_jit() {
    let app = spawn_app().await;
    let server_default: String =
        sqlx::query_scalar("SELECT boot_val FROM pg_settings WHERE name = 'jit'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        server_default, "on",
        "the test cluster should default to JIT on"
    );
    let mut listener = sqlx::postgres::PgListener::connect_with(&app.pool)
        .await
        .unwrap();
    listener.listen("nothing").await.unwrap();
    let pooled: String = sqlx::query_scalar("SHOW jit")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(pooled, "off", "a pooled connection");
    let listening: String = sqlx::query_scalar("SHOW jit")
        .fetch_one(&mut listener)
        .await
        .unwrap();
    assert_eq!(listening, "off", "a LISTEN connection");
}

/// One keeper pass as of `now`, waiting out the app's own pass at start.
async fn keep(app: &crate::helpers::TestApp, now: DateTime<Utc>) -> Kept {
    for _ in 0..200 {
        if let Some(kept) = retention::keep(&app.pool, now, app.settings.retention_settings())
            .await
            .unwrap()
        {
            return kept;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the keeper lock stayed taken");
}

async fn count(app: &crate::helpers::TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Moves a delivered event (and its attempts) `days` back in time: the
/// rows move to that day's partition, as if it had been due then.
async fn age(app: &crate::helpers::TestApp, table: &str, id_column: &str, id: &str, days: i64) {
    let moved = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET due_at = due_at - make_interval(days => $2) WHERE {id_column} = $1"
    )))
    .bind(Uuid::parse_str(id).unwrap())
    .bind(days as i32)
    .execute(&app.pool)
    .await
    .unwrap()
    .rows_affected();
    assert!(moved > 0, "{table} {id}");
}

#[tokio::test]
async fn history_past_retention_goes_by_whole_days_and_pending_events_stay() {
    let app = spawn_app().await; // KAIROS_RETENTION = 30d
    let now = Utc::now();
    // The partitions of 40 days ago, as a keeper running then made them.
    let then = keep(&app, now - Days::days(40)).await;
    assert!(
        then.created.contains(&retention::partition_name(
            "event_history",
            (now - Days::days(40)).date_naive()
        )),
        "{then:?}"
    );

    // Three users' events delivered (one attempt each), then two of them
    // aged 40 days and one 10 days.
    let mut delivered = Vec::new();
    for name in ["Old", "Older", "Recent"] {
        let mut body = ada();
        body["first_name"] = json!(name);
        let user = app.create_user(&body).await;
        let id = app.events_of(user["id"].as_str().unwrap()).await[0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        app.make_due(&id).await;
        assert_eq!(app.run_claimer_once().await, 1);
        assert_eq!(app.event(&id).await["status"], "delivered");
        delivered.push(id);
    }
    // An attempt that finished its event is on the event's history row,
    // so it ages with it.
    assert_eq!(count(&app, "SELECT count(*) FROM event_attempts").await, 0);
    for (id, days) in delivered.iter().zip([40, 40, 10]) {
        age(&app, "event_history", "id", id, days).await;
    }
    // A pending event due 40 days ago (a long outage), with one attempt on
    // record: retention never touches it.
    app.receiver.respond_with(&[503]);
    let user = app.create_user(&ada()).await;
    let pending = app.events_of(user["id"].as_str().unwrap()).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.make_due(&pending).await;
    assert_eq!(app.run_claimer_once().await, 1);
    age(&app, "events", "id", &pending, 40).await;
    age(&app, "event_attempts", "event_id", &pending, 40).await;
    let old_day = (now - Days::days(40)).date_naive();
    let old_history = retention::partition_name("event_history", old_day);
    let old_attempts = retention::partition_name("event_attempts", old_day);
    assert_eq!(
        count(&app, &format!("SELECT count(*) FROM {old_history}")).await,
        2,
        "the aged events are in their day's partition"
    );

    let kept = keep(&app, now).await;
    assert!(kept.dropped.contains(&old_history), "{kept:?}");
    assert!(
        kept.held.contains(&old_attempts),
        "the pending event's attempts keep their day: {kept:?}"
    );
    assert!(!kept.dropped.contains(&old_attempts), "{kept:?}");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_class WHERE relname LIKE 'event_history_p%' ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(!tables.contains(&old_history), "{tables:?}");
    assert!(
        tables.iter().all(|t| t.as_str()
            >= retention::partition_name("event_history", (now - Days::days(30)).date_naive())
                .as_str()),
        "no day past retention is left: {tables:?}"
    );

    // The aged events are gone, with their attempts; the recent one and
    // the pending one are whole.
    for id in &delivered[..2] {
        assert_eq!(
            app.get(&format!("/events/{id}")).await.status(),
            404,
            "{id} dropped"
        );
        assert_eq!(
            app.get(&format!("/events/{id}/attempts")).await.status(),
            404
        );
    }
    assert_eq!(app.event(&delivered[2]).await["status"], "delivered");
    assert_eq!(attempts(&app, &delivered[2]).await.len(), 1);
    let waiting = app.event(&pending).await;
    assert_eq!(waiting["status"], "pending", "{waiting}");
    assert_eq!(attempts(&app, &pending).await.len(), 1);
    assert_eq!(count(&app, "SELECT count(*) FROM event_history").await, 1);

    // A second pass has nothing left to do.
    let again = keep(&app, now).await;
    assert!(
        again.created.is_empty() && again.dropped.is_empty(),
        "{again:?}"
    );

    // The claimer reads the hot table only: no history partition in its plan.
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (COSTS OFF) {}",
        kairos::lease::CLAIM
    )))
    .bind(100i64)
    .bind(Uuid::new_v4())
    .bind(60.0f64)
    .bind(vec!["birthday".to_string()])
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("events"), "{plan}");
    assert!(
        !plan.contains("event_history") && !plan.contains("event_attempts"),
        "{plan}"
    );
}
