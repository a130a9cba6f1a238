//! Endpoints: a receiver that goes down loses nothing and needs no one. Its
//! events wait instead of failing, it is probed once per interval, and when
//! it answers again its events go out in due order; an operator's disable
//! holds events on every replica until enabled.

use crate::helpers::{ADMIN_TOKEN, Received, TestApp, eventually, spawn_app_on, spawn_app_with};
use kairos::config::Settings;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Short knobs: disabled after 1 s of failures, one probe per second.
fn short_knobs(s: &mut Settings) {
    s.claimer = true;
    s.concurrency = 1;
    s.idle_poll = Duration::from_millis(200);
    s.endpoint_disable_after = Duration::from_secs(1);
    s.endpoint_probe = Duration::from_secs(1);
}

async fn endpoints(app: &TestApp) -> Vec<Value> {
    let response = app
        .http
        .get(app.url("/endpoints"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn by_hand(app: &TestApp, id: &str, action: &str) -> Value {
    let response = app
        .http
        .post(app.url(&format!("/endpoints/{id}/{action}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{action}");
    response.json().await.unwrap()
}

/// `n` users whose birthday events are due, a second apart, the earliest
/// `n` seconds ago; returns the event ids in due order.
async fn due_events(app: &TestApp, n: usize) -> Vec<String> {
    for i in 0..n {
        app.create_user(&json!({
            "first_name": format!("Due{i}"), "last_name": "Endpoint", "timezone": "UTC",
            "dates": {"birthday": "1990-01-15"},
        }))
        .await;
    }
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
        "UPDATE events e SET due_at = now() - n * interval '1 second', \
             run_at = now() - n * interval '1 second' \
         FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM events) o \
         WHERE e.id = o.id RETURNING e.id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(ids.len(), n);
    let ordered: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM events ORDER BY due_at, id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    app.wake_claimers().await;
    ordered.iter().map(|id| id.to_string()).collect()
}

async fn failed_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM event_history WHERE status = 'failed'")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

fn delivered_ids(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.body["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_receiver_down_for_a_while_loses_nothing_and_gets_its_events_in_due_order() {
    let app = spawn_app_with(short_knobs).await;
    app.receiver.start_outage(503, None);
    let due = due_events(&app, 6).await;

    // Every attempt fails: retries run out, yet nothing fails; the endpoint
    // is disabled with its events waiting.
    eventually(
        "the endpoint to be disabled",
        Duration::from_secs(20),
        || async {
            endpoints(&app)
                .await
                .iter()
                .any(|e| e["state"] == "disabled")
        },
    )
    .await;
    let endpoint = endpoints(&app).await.remove(0);
    assert_eq!(endpoint["disabled_reason"], "failing", "{endpoint}");
    assert_eq!(endpoint["waiting"], 6, "{endpoint}");
    assert!(
        endpoint["last_error"].as_str().unwrap().contains("503"),
        "{endpoint}"
    );
    assert_eq!(endpoint["event_types"], json!(["birthday"]));
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let id = endpoint["id"].as_str().unwrap().to_string();
    assert!(
        metrics.contains(&format!("kairos_endpoint_disabled{{endpoint=\"{id}\"}} 1")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("kairos_endpoint_waiting{{endpoint=\"{id}\"}} 6")),
        "{metrics}"
    );

    // While disabled: at most one probe per second.
    let (start, before) = (Instant::now(), app.receiver.received().len());
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let probes = app.receiver.received().len() - before;
    let allowed = (start.elapsed().as_secs_f64() / 1.0).floor() as usize + 1;
    assert!(
        probes <= allowed,
        "{probes} requests in {:?}",
        start.elapsed()
    );
    assert!(probes >= 1, "no probe in {:?}", start.elapsed());
    assert_eq!(failed_count(&app).await, 0);
    let attempts: Vec<i32> = sqlx::query_scalar("SELECT attempts FROM events")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(
        attempts.iter().all(|a| *a <= 3),
        "attempts spent while disabled: {attempts:?}"
    );

    // It recovers: the next probe enables it, every event is delivered, the
    // ones after the probe in due order, and nothing failed.
    app.receiver.end_outage();
    eventually(
        "every event to be delivered",
        Duration::from_secs(20),
        || async { delivered_ids(&app.receiver.received()).len() == 6 },
    )
    .await;
    let delivered = delivered_ids(&app.receiver.received());
    let mut after_probe: Vec<String> = due
        .iter()
        .filter(|id| **id != delivered[0])
        .cloned()
        .collect();
    after_probe.retain(|id| delivered.contains(id));
    assert_eq!(delivered[1..], after_probe[..], "due order: {due:?}");
    assert_eq!(failed_count(&app).await, 0);
    let endpoint = endpoints(&app).await.remove(0);
    assert_eq!(endpoint["state"], "active", "{endpoint}");
    assert!(endpoint["disabled_reason"].is_null());
    assert_eq!(endpoint["consecutive_failures"], 0);
    assert!(endpoint["last_success_at"].is_string());
}

#[tokio::test]
async fn retries_spent_across_replicas_on_a_failing_receiver_wait_instead_of_failing() {
    // Two attempts from A, the last from B, which has seen nothing else of
    // the receiver: the fleet's streak says it fails everything, so the
    // event waits, as it would had one replica made all three attempts.
    let a = spawn_app_with(|s| {
        short_knobs(s);
        s.claimer = false;
        s.endpoint_disable_after = Duration::from_secs(600);
    })
    .await;
    let mut b_settings = a.settings.clone();
    b_settings.data_dir = b_settings.data_dir.with_extension("b");
    let b = spawn_app_on(b_settings, a.receiver.clone()).await;
    a.receiver.start_outage(503, None);
    let event = due_events(&a, 1).await.remove(0);
    for app in [&a, &a, &b] {
        a.make_due(&event).await;
        assert_eq!(app.run_claimer_once().await, 1);
    }
    assert_eq!(a.receiver.received().len(), 3);
    let waiting = a.event(&event).await;
    assert_eq!(waiting["status"], "pending", "{waiting}");
    assert_eq!(failed_count(&a).await, 0);
    assert_eq!(endpoints(&a).await[0]["state"], "active");
}

#[tokio::test]
async fn a_disable_by_hand_holds_events_on_every_replica_until_enabled() {
    let a = spawn_app_with(|s| {
        short_knobs(s);
        s.claimer = false;
    })
    .await;
    let mut b_settings = a.settings.clone();
    b_settings.data_dir = b_settings.data_dir.with_extension("b");
    let b = spawn_app_on(b_settings, a.receiver.clone()).await;
    let id = endpoints(&a).await[0]["id"].as_str().unwrap().to_string();

    let disabled = by_hand(&a, &id, "disable").await;
    assert_eq!(disabled["state"], "disabled");
    assert_eq!(disabled["disabled_reason"], "manual");
    let due = due_events(&a, 3).await;
    // Within 2 s, B's view says disabled: neither replica claims anything,
    // and a disabled-by-hand endpoint is not probed.
    eventually(
        "B to see the endpoint disabled",
        Duration::from_secs(2),
        || async { b.endpoints.disabled(&id) },
    )
    .await;
    for app in [&a, &b] {
        assert_eq!(app.run_claimer_once().await, 0);
    }
    assert!(a.receiver.received().is_empty());
    assert_eq!(endpoints(&b).await[0]["waiting"], 3);

    // Enabled through B: A delivers them, in due order.
    let enabled = by_hand(&b, &id, "enable").await;
    assert_eq!(enabled["state"], "active");
    eventually(
        "A to see the endpoint enabled",
        Duration::from_secs(2),
        || async { !a.endpoints.disabled(&id) },
    )
    .await;
    // Released at a rate that starts at 10/s: a step may find no token yet.
    let mut claimed = 0;
    while claimed < 3 {
        claimed += a.run_claimer_once().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = a.receiver.wait_for(3, Duration::from_secs(10)).await;
    let mut delivered = delivered_ids(&received);
    delivered.sort_by_key(|id| due.iter().position(|d| d == id));
    assert_eq!(delivered, due);

    let response = a
        .http
        .post(a.url("/endpoints/0000000000000000/enable"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = a.http.get(a.url("/endpoints")).send().await.unwrap();
    assert_eq!(response.status(), 401);
}

async fn set_rate(app: &TestApp, id: &str, rate: Value) -> reqwest::Response {
    app.http
        .put(app.url(&format!("/endpoints/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "rate_per_s": rate }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_rate_caps_two_replicas_together_and_everything_arrives() {
    let a = spawn_app_with(|s| {
        s.claimer = true;
        s.idle_poll = Duration::from_millis(500);
    })
    .await;
    let mut b_settings = a.settings.clone();
    b_settings.data_dir = b_settings.data_dir.with_extension("b");
    let b = spawn_app_on(b_settings, a.receiver.clone()).await;
    let id = endpoints(&a).await[0]["id"].as_str().unwrap().to_string();

    for (rate, field) in [
        (json!(0), "rate_per_s"),
        (json!(-1), "rate_per_s"),
        (json!(1e9), "rate_per_s"),
    ] {
        let response = set_rate(&a, &id, rate).await;
        assert_eq!(response.status(), 422);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["field"], field, "{body}");
    }
    let response = a
        .http
        .put(a.url(&format!("/endpoints/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"rate": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        set_rate(&a, "0000000000000000", json!(5)).await.status(),
        404
    );

    let response = set_rate(&a, &id, json!(20)).await;
    assert_eq!(response.status(), 200);
    let endpoint: Value = response.json().await.unwrap();
    assert_eq!(endpoint["rate_per_s"], 20.0);
    eventually("B to see the rate", Duration::from_secs(2), || async {
        b.endpoints
            .plan_claims(vec!["birthday".into()])
            .limited
            .len()
            == 1
    })
    .await;

    let lines: Vec<String> = (0..400)
        .map(|i| {
            json!({"first_name": format!("R{i}"), "last_name": "Rate", "timezone": "UTC",
                   "dates": {"birthday": "1990-01-15"}})
            .to_string()
        })
        .collect();
    let response = a
        .http
        .post(a.url("/users/import"))
        .header("content-type", "application/x-ndjson")
        .body(lines.join("\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    sqlx::query("UPDATE events SET due_at = now(), run_at = now()")
        .execute(&a.pool)
        .await
        .unwrap();
    a.wake_claimers().await;
    let received = a.receiver.wait_for(400, Duration::from_secs(60)).await;
    assert_eq!(delivered_ids(&received).len(), 400);
    let at: Vec<Instant> = received.iter().map(|r| r.at).collect();
    let busiest = at
        .iter()
        .map(|start| {
            at.iter()
                .filter(|t| **t >= *start && t.duration_since(*start) < Duration::from_secs(10))
                .count()
        })
        .max()
        .unwrap();
    assert!(
        busiest <= 240,
        "{busiest} webhooks in a 10 s window at 20/s"
    );
    let span = at.last().unwrap().duration_since(at[0]);
    assert!(span >= Duration::from_secs(15), "400 at 20/s took {span:?}");
}

#[tokio::test]
async fn a_retry_after_pauses_every_send_to_the_endpoint() {
    let app = spawn_app_with(|s| {
        s.claimer = true;
        s.concurrency = 1;
        s.idle_poll = Duration::from_millis(200);
        // A pause is capped by KAIROS_RETRY_MAX.
        s.retry_max = Duration::from_secs(10);
    })
    .await;
    app.receiver.start_outage(429, Some("5"));
    let due = due_events(&app, 4).await;
    let first = app.receiver.wait_for(1, Duration::from_secs(10)).await[0].clone();
    app.receiver.end_outage();
    assert_eq!(first.status, 429);
    let received = app.receiver.wait_for(5, Duration::from_secs(20)).await;
    let gap = received[1].at.duration_since(first.at);
    assert!(
        gap >= Duration::from_millis(4_900),
        "the next send came {gap:?} after the 429"
    );
    let mut delivered = delivered_ids(&received);
    delivered.sort();
    let mut expected = due.clone();
    expected.sort();
    assert_eq!(delivered, expected);
    assert_eq!(failed_count(&app).await, 0);
}

#[tokio::test]
async fn an_endpoint_enabled_again_gets_its_backlog_paced_not_all_at_once() {
    let app = spawn_app_with(|s| {
        s.claimer = true;
        s.idle_poll = Duration::from_millis(200);
    })
    .await;
    let id = endpoints(&app).await[0]["id"].as_str().unwrap().to_string();
    by_hand(&app, &id, "disable").await;
    let lines: Vec<String> = (0..100)
        .map(|i| {
            json!({"first_name": format!("P{i}"), "last_name": "Paced", "timezone": "UTC",
                   "dates": {"birthday": "1990-01-15"}})
            .to_string()
        })
        .collect();
    let response = app
        .http
        .post(app.url("/users/import"))
        .header("content-type", "application/x-ndjson")
        .body(lines.join("\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    sqlx::query("UPDATE events SET due_at = now() - interval '1 minute', run_at = now() - interval '1 minute'")
        .execute(&app.pool)
        .await
        .unwrap();
    app.wake_claimers().await;
    assert_eq!(endpoints(&app).await[0]["waiting"], 100);
    assert!(app.receiver.received().is_empty());

    by_hand(&app, &id, "enable").await;
    let received = app.receiver.wait_for(100, Duration::from_secs(30)).await;
    let first = received[0].at;
    let in_first_second = received
        .iter()
        .filter(|r| r.at.duration_since(first) < Duration::from_secs(1))
        .count();
    // 10/s to start (a bucket of one second's worth), doubling every 5 s.
    assert!(
        in_first_second <= 25,
        "{in_first_second} in the first second"
    );
    assert_eq!(delivered_ids(&received).len(), 100);
}
