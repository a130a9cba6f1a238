//! Claiming and delivery: exactly once, signed, retried, failed, rescued,
//! shared between replicas, caught up after downtime, woken without polling.
//! Most run the host's real claimer loop (`Claimer::run`); a test whose
//! point is one step (a claim, a lease) drives that step itself.

use crate::helpers::{
    SECRET, TestApp, ada, eventually, plugin_dir_with_birthday, plugin_wasm, spawn_app,
    spawn_app_on, spawn_app_with,
};
use kairos::lease::{self, claim_due_events, release_expired_leases};
use kairos::signing;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

/// An app whose claimer loop runs, as `kairos serve` runs it.
async fn running_app() -> TestApp {
    spawn_app_with(|s| s.claimer = true).await
}

#[tokio::test]
async fn a_due_event_is_delivered_once_signed_and_the_next_year_is_scheduled() {
    let app = running_app().await;
    let (user_id, event_id) = app.ada_with_event().await;
    let event = app.event(&event_id).await;
    app.make_due(&event_id).await;
    let delivered = app.wait_for_status(&event_id, "delivered").await;

    let received = app.receiver.received();
    assert_eq!(received.len(), 1, "delivered once");
    let hook = &received[0];
    assert_eq!(hook.body["id"], event_id.as_str());
    assert_eq!(hook.body["event_type"], "birthday");
    assert_eq!(hook.body["user_id"], user_id.as_str());
    assert_eq!(hook.body["occurrence"], event["occurrence"]);
    assert_eq!(hook.body["timezone"], "Europe/London");
    assert!(hook.body["due_at"].is_string());
    assert_eq!(
        hook.body["message"]["text"],
        "Hey, Ada Lovelace it's your birthday"
    );
    assert_eq!(hook.header("idempotency-key"), event_id);
    assert_eq!(hook.header("webhook-id"), event_id);
    assert_eq!(hook.header("content-type"), "application/json");

    let key = signing::decode_secret(SECRET).unwrap();
    let timestamp: i64 = hook.header("webhook-timestamp").parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 300);
    assert!(signing::verify(
        &key,
        &event_id,
        timestamp,
        &hook.raw,
        hook.header("webhook-signature")
    ));
    assert!(!signing::verify(
        &key,
        &event_id,
        timestamp + 1,
        &hook.raw,
        hook.header("webhook-signature")
    ));

    assert_eq!(delivered["attempts"], 1);
    assert!(delivered["delivered_at"].is_string());

    let events = app.events_of(&user_id).await;
    assert_eq!(events.len(), 2, "{events:?}");
    let next = events
        .iter()
        .find(|e| e["status"] == "pending")
        .expect("next occurrence");
    let year = |e: &Value| {
        e["occurrence"].as_str().unwrap()[..4]
            .parse::<i32>()
            .unwrap()
    };
    assert!(year(next) > year(&event), "{next} follows {event}");
}

/// The version a loaded type's component gives in `describe()`, as
/// `GET /event-types` lists it.
async fn loaded_version(app: &TestApp, name: &str) -> Value {
    let types = app.event_types().await;
    let version = types
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not loaded: {types:?}"))["version"]
        .clone();
    assert!(
        version.as_str().is_some_and(|v| !v.is_empty()),
        "{name} has a version: {version}"
    );
    version
}

#[tokio::test]
async fn a_delivered_webhook_and_its_event_name_the_version_of_the_type_that_formatted_it() {
    let app = running_app().await;
    let version = loaded_version(&app, "birthday").await;
    let (user_id, event_id) = app.ada_with_event().await;
    let pending = app.event(&event_id).await;
    assert!(
        pending["event_type_version"].is_null(),
        "no message is made before an attempt: {pending}"
    );
    app.make_due(&event_id).await;
    let delivered = app.wait_for_status(&event_id, "delivered").await;

    let received = app.receiver.received();
    assert_eq!(received.len(), 1);
    let body = &received[0].body;
    assert_eq!(body["event_type_version"], version, "{body}");
    let keys: HashSet<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        HashSet::from([
            "id",
            "event_type",
            "event_type_version",
            "user_id",
            "occurrence",
            "timezone",
            "due_at",
            "message"
        ])
    );

    // The event says the same through both listings; next year's
    // occurrence has had no attempt yet.
    assert_eq!(delivered["event_type_version"], version, "{delivered}");
    let events = app.events_of(&user_id).await;
    assert_eq!(events.len(), 2, "{events:?}");
    for event in &events {
        if event["id"] == event_id.as_str() {
            assert_eq!(event["event_type_version"], version, "{event}");
        } else {
            assert_eq!(event["status"], "pending", "{event}");
            assert!(event["event_type_version"].is_null(), "{event}");
        }
    }
}

/// Steps the claimer, as the point is what each attempt writes.
#[tokio::test]
async fn a_retried_attempt_stores_the_version_and_the_delivery_after_it_keeps_it() {
    let app = spawn_app().await;
    let version = loaded_version(&app, "birthday").await;
    app.receiver.respond_with(&[500]);
    let (_, event_id) = app.ada_with_event().await;

    app.make_due(&event_id).await;
    assert_eq!(app.run_claimer_once().await, 1);
    let retried = app.event(&event_id).await;
    assert_eq!(retried["status"], "pending", "{retried}");
    assert_eq!(retried["attempts"], 1);
    assert!(retried["last_error"].as_str().unwrap().contains("500"));
    assert_eq!(retried["event_type_version"], version, "{retried}");

    app.make_due(&event_id).await;
    assert_eq!(app.run_claimer_once().await, 1);
    let delivered = app.event(&event_id).await;
    assert_eq!(delivered["status"], "delivered", "{delivered}");
    assert_eq!(delivered["attempts"], 2);
    assert_eq!(delivered["event_type_version"], version, "{delivered}");
    let received = app.receiver.received();
    assert_eq!(received.len(), 2);
    for hook in &received {
        assert_eq!(hook.body["event_type_version"], version, "{}", hook.body);
    }
}

/// Steps the claimer, as the point is what each attempt writes.
#[tokio::test]
async fn an_attempt_whose_plugin_failed_keeps_the_version_of_the_last_message_made() {
    let dir = plugin_dir_with_birthday(None);
    std::fs::copy(plugin_wasm("kairos-misbehave"), dir.join("misbehave.wasm")).unwrap();
    let app = spawn_app_with(|s| s.plugin_dir = dir).await; // max_attempts = 3
    let version = loaded_version(&app, "misbehave").await;
    let user = app.create_user(&ada()).await;
    let user_id = user["id"].as_str().unwrap();
    let event_id = app
        .events_of(user_id)
        .await
        .into_iter()
        .find(|e| e["event_type"] == "misbehave")
        .expect("a misbehave event")["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The first attempt makes a message; the receiver fails it.
    app.receiver.respond_with(&[500]);
    app.make_due(&event_id).await;
    assert_eq!(app.run_claimer_once().await, 1);
    assert_eq!(app.event(&event_id).await["event_type_version"], version);

    // From now on the plugin returns an error formatting this user's
    // messages. The event is due, so the change leaves it in place.
    let mut body = ada();
    body["attributes"]["mode.format"] = json!("err");
    assert_eq!(
        app.put_json(&format!("/users/{user_id}"), &body)
            .await
            .status(),
        200
    );

    // A retried attempt without a message keeps the version…
    app.make_due(&event_id).await;
    assert_eq!(app.run_claimer_once().await, 1);
    let retried = app.event(&event_id).await;
    assert_eq!(retried["status"], "pending", "{retried}");
    assert_eq!(retried["attempts"], 2);
    assert!(
        retried["last_error"]
            .as_str()
            .unwrap()
            .starts_with("plugin error"),
        "{retried}"
    );
    assert_eq!(retried["event_type_version"], version, "{retried}");

    // …and so does the last one, which fails the event into the history.
    app.make_due(&event_id).await;
    assert_eq!(app.run_claimer_once().await, 1);
    let failed = app.event(&event_id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["attempts"], 3);
    assert_eq!(failed["event_type_version"], version, "{failed}");
    assert_eq!(
        app.receiver.received().len(),
        1,
        "only the first attempt sent anything"
    );
}

#[tokio::test]
async fn without_a_secret_no_signature_is_sent() {
    let app = spawn_app_with(|s| {
        s.webhook_secret = None;
        s.claimer = true;
    })
    .await;
    let (_, event_id) = app.ada_with_event().await;
    app.make_due(&event_id).await;
    app.wait_for_status(&event_id, "delivered").await;
    let received = app.receiver.received();
    assert_eq!(received.len(), 1);
    assert!(received[0].headers.get("webhook-signature").is_none());
    assert_eq!(received[0].header("webhook-id"), event_id);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_until_success() {
    let app = running_app().await;
    app.receiver.respond_with(&[503, 429]);
    let (_, event_id) = app.ada_with_event().await;
    app.make_due(&event_id).await;

    let done = app.wait_for_status(&event_id, "delivered").await;
    assert_eq!(done["attempts"], 3);
    assert!(
        done["last_error"].as_str().unwrap().contains("429"),
        "the last failure is kept: {done}"
    );
    let received = app.receiver.received();
    assert_eq!(received.len(), 3);
    // Each retry waits its backoff: the base delay (10 ms in tests), then
    // twice it, each less at most 20 % jitter.
    let gaps: Vec<Duration> = received.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(8), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(16), "{gaps:?}");
    let keys: HashSet<&str> = received
        .iter()
        .map(|r| r.header("idempotency-key"))
        .collect();
    assert_eq!(
        keys,
        HashSet::from([event_id.as_str()]),
        "every attempt carries the same key"
    );
}

#[tokio::test]
async fn a_client_error_fails_the_event_at_once() {
    let app = running_app().await;
    app.receiver.respond_with(&[400]);
    let (user_id, event_id) = app.ada_with_event().await;
    app.make_due(&event_id).await;
    let failed = app.wait_for_status(&event_id, "failed").await;
    assert_eq!(failed["attempts"], 1);
    assert!(failed["last_error"].as_str().unwrap().contains("400"));
    // A failed occurrence still leads to the next one.
    let events = app.events_of(&user_id).await;
    assert!(
        events.iter().any(|e| e["status"] == "pending"),
        "{events:?}"
    );
}

#[tokio::test]
async fn exhausted_attempts_fail_and_a_manual_retry_grants_a_fresh_round() {
    // max_attempts = 3, retries 2 s apart (±20 %): Ada's attempts at about
    // 0, 2 and 4 s. Bob is due at 2.8 s and accepted, so the receiver is
    // seen refusing Ada while it accepts others: her last attempt fails her
    // event (a receiver that failed everything would hold it instead).
    let app = spawn_app_with(|s| {
        s.claimer = true;
        s.retry_base = Duration::from_secs(2);
        s.retry_max = Duration::from_secs(2);
    })
    .await;
    app.receiver.respond_with(&[500, 500, 200, 500, 500]);
    let (_, event_id) = app.ada_with_event().await;
    let mut bob = ada();
    bob["first_name"] = json!("Bob");
    let bob = app.create_user(&bob).await;
    let bob_event = app.events_of(bob["id"].as_str().unwrap()).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    sqlx::query(
        "UPDATE events SET due_at = now() + interval '2.8 seconds', \
         run_at = now() + interval '2.8 seconds' WHERE id = $1",
    )
    .bind(uuid::Uuid::parse_str(&bob_event).unwrap())
    .execute(&app.pool)
    .await
    .unwrap();
    app.make_due(&event_id).await;
    let failed = app.wait_for_status(&event_id, "failed").await;
    assert_eq!(failed["attempts"], 3);
    assert_eq!(app.event(&bob_event).await["status"], "delivered");

    // Retrying anything but a failed event is refused.
    let other = app
        .post_json(
            &format!("/events/{}/retry", uuid::Uuid::new_v4()),
            &json!({}),
        )
        .await;
    assert_eq!(other.status(), 404);

    let response = app
        .post_json(&format!("/events/{event_id}/retry"), &json!({}))
        .await;
    assert_eq!(response.status(), 200);
    let retried: Value = response.json().await.unwrap();
    assert_eq!(retried["status"], "pending");
    assert_eq!(retried["attempts"], 3, "a manual retry keeps the count");
    assert!(failed["event_type_version"].is_string(), "{failed}");
    assert_eq!(
        retried["event_type_version"], failed["event_type_version"],
        "and the version of the last message made"
    );

    // One more 500 is within the fresh round, then success.
    let done = app.wait_for_status(&event_id, "delivered").await;
    assert_eq!(done["attempts"], 5);
    assert_eq!(app.receiver.received().len(), 6, "Ada's five and Bob's one");
    let again = app
        .post_json(&format!("/events/{event_id}/retry"), &json!({}))
        .await;
    assert_eq!(again.status(), 409, "a delivered event is not retried");
}

#[tokio::test]
async fn connection_errors_are_retried_and_kept_without_the_urls_secrets() {
    // A port nothing listens on: bind one, learn it, close it. The URL
    // carries credentials and a token in its query.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app = spawn_app_with(|s| {
        s.webhook_url = Some(format!("http://user:s3cret@{closed}/hook?token=abc123"));
        s.claimer = true;
    })
    .await;
    let (_, event_id) = app.ada_with_event().await;
    app.make_due(&event_id).await;
    // Retried up to the limit and on: nothing but connection errors is an
    // endpoint that fails everything, whose events wait instead of failing
    // (a fourth attempt is made, the third not counted).
    eventually(
        "a fourth failed attempt",
        Duration::from_secs(10),
        || async {
            let failures: Option<i64> =
                sqlx::query_scalar("SELECT max(consecutive_failures) FROM endpoints")
                    .fetch_one(&app.pool)
                    .await
                    .unwrap();
            failures.unwrap_or(0) >= 4
        },
    )
    .await;
    let event = app.event(&event_id).await;
    assert_ne!(event["status"], "failed", "{event}");
    assert!(event["attempts"].as_i64().unwrap() <= 3, "{event}");
    let error = event["last_error"].as_str().unwrap();
    assert!(error.starts_with("connection error"), "{error}");
    for secret in ["s3cret", "abc123", "token", "user:"] {
        assert!(!error.contains(secret), "{secret} in {error}");
    }
}

#[tokio::test]
async fn a_deleted_user_gets_nothing() {
    let app = spawn_app().await;
    let (user_id, event_id) = app.ada_with_event().await;
    app.make_due(&event_id).await;
    assert_eq!(app.delete(&format!("/users/{user_id}")).await.status(), 204);
    assert_eq!(app.run_claimer_once().await, 0);
    assert!(app.receiver.received().is_empty());
    assert_eq!(app.event(&event_id).await["status"], "cancelled");
}

#[tokio::test]
async fn an_update_before_the_due_time_is_what_gets_delivered() {
    let app = running_app().await;
    let (user_id, _) = app.ada_with_event().await;
    let mut body = ada();
    body["first_name"] = json!("Augusta");
    body["dates"] = json!({"birthday": "1815-06-15"});
    assert_eq!(
        app.put_json(&format!("/users/{user_id}"), &body)
            .await
            .status(),
        200
    );
    let events = app.events_of(&user_id).await;
    let pending = events.iter().find(|e| e["status"] == "pending").unwrap();
    let pending_id = pending["id"].as_str().unwrap().to_string();
    app.make_due(&pending_id).await;
    app.wait_for_status(&pending_id, "delivered").await;
    let received = app.receiver.received();
    assert_eq!(received.len(), 1, "only the new occurrence was due");
    assert_eq!(received[0].body["id"], pending_id.as_str());
    assert_eq!(
        received[0].body["message"]["text"],
        "Hey, Augusta Lovelace it's your birthday"
    );
}

#[tokio::test]
async fn an_update_never_pushes_an_already_due_event_to_a_later_year() {
    let app = spawn_app().await;
    let (user_id, event_id) = app.ada_with_event().await;
    app.make_due(&event_id).await;
    let mut body = ada();
    body["timezone"] = json!("America/New_York");
    assert_eq!(
        app.put_json(&format!("/users/{user_id}"), &body)
            .await
            .status(),
        200
    );
    assert_eq!(app.event(&event_id).await["status"], "pending");
    assert_eq!(app.run_claimer_once().await, 1);
    assert_eq!(app.event(&event_id).await["status"], "delivered");
    assert_eq!(app.receiver.received()[0].body["id"], event_id.as_str());
}

#[tokio::test]
async fn an_expired_lease_is_redelivered_with_the_same_idempotency_key_and_the_stale_result_is_dropped()
 {
    let app = spawn_app().await;
    let (_, event_id) = app.ada_with_event().await;
    app.make_due(&event_id).await;

    // Host A claims and sends, then dies before recording the outcome.
    let claimed = claim_due_events(&app.pool, 10, Duration::from_secs(30), &["birthday".into()])
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let stale = app.deliverer.deliver(claimed[0].clone()).await;
    assert_eq!(app.event(&event_id).await["status"], "processing");
    assert_eq!(
        release_expired_leases(&app.pool).await.unwrap(),
        0,
        "the lease still holds"
    );

    // Its lease runs out.
    sqlx::query("UPDATE events SET lease_until = now() - interval '1 second' WHERE id = $1::uuid")
        .bind(&event_id)
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(release_expired_leases(&app.pool).await.unwrap(), 1);
    assert_eq!(app.event(&event_id).await["status"], "pending");

    // Host B delivers it again.
    assert_eq!(app.run_claimer_once().await, 1);
    let received = app.receiver.received();
    assert_eq!(received.len(), 2);
    assert_eq!(
        received[0].header("idempotency-key"),
        received[1].header("idempotency-key")
    );
    assert_eq!(received[1].header("idempotency-key"), event_id);
    let delivered = app.event(&event_id).await;
    assert_eq!(delivered["status"], "delivered");
    assert_eq!(delivered["attempts"], 2);

    // Host A's late outcome no longer holds the lease: dropped.
    lease::complete(&app.pool, &[stale]).await.unwrap();
    let after = app.event(&event_id).await;
    assert_eq!(after, delivered);
}

#[tokio::test]
async fn two_replicas_on_one_database_never_deliver_an_event_twice() {
    let first = spawn_app_with(|s| s.batch_size = 7).await;
    let users = 120;
    for i in 0..users {
        let mut body = ada();
        body["first_name"] = json!(format!("Ada{i}"));
        first.create_user(&body).await;
    }
    // Both replicas run their claimer loops against the same database.
    let mut settings = first.settings.clone();
    settings.claimer = true;
    settings.plugin_dir = crate::helpers::plugin_dir_with_birthday(None);
    let second = spawn_app_on(settings.clone(), first.receiver.clone()).await;
    settings.data_dir = settings.data_dir.with_extension("third");
    let third = spawn_app_on(settings, first.receiver.clone()).await;
    sqlx::query("UPDATE events SET due_at = now() - interval '1 second', run_at = now() - interval '1 second'")
        .execute(&first.pool)
        .await
        .unwrap();

    first
        .receiver
        .wait_for(users, Duration::from_secs(30))
        .await;
    crate::helpers::eventually(
        "every event recorded as delivered",
        Duration::from_secs(20),
        || async {
            let delivered: i64 =
                sqlx::query_scalar("SELECT count(*) FROM event_history WHERE status = 'delivered'")
                    .fetch_one(&first.pool)
                    .await
                    .unwrap();
            delivered == users as i64
        },
    )
    .await;
    let received = first.receiver.received();
    let ids: HashSet<&str> = received
        .iter()
        .map(|r| r.header("idempotency-key"))
        .collect();
    assert_eq!(received.len(), users);
    assert_eq!(ids.len(), users, "no event was delivered twice");
    let once: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM event_history WHERE status = 'delivered' AND attempts = 1",
    )
    .fetch_one(&first.pool)
    .await
    .unwrap();
    assert_eq!(once, users as i64);
    second.stop().await;
    third.stop().await;
}

#[tokio::test]
async fn after_downtime_everything_that_came_due_is_delivered_in_due_order() {
    let app = spawn_app().await;
    let mut expected = Vec::new();
    for (i, minutes_ago) in [30, 90, 10, 60, 20].into_iter().enumerate() {
        let mut body = ada();
        body["first_name"] = json!(format!("Ada{i}"));
        let user = app.create_user(&body).await;
        let event_id = app.events_of(user["id"].as_str().unwrap()).await[0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        sqlx::query(
            "UPDATE events SET due_at = now() - make_interval(mins => $2), run_at = now() - make_interval(mins => $2) WHERE id = $1::uuid",
        )
        .bind(&event_id)
        .bind(minutes_ago)
        .execute(&app.pool)
        .await
        .unwrap();
        expected.push((minutes_ago, event_id));
    }
    let mut settings = app.settings.clone();
    let receiver = app.receiver.clone();
    app.stop().await;

    // The host comes back with its claimer running, one delivery at a time.
    settings.claimer = true;
    settings.concurrency = 1;
    let restarted = spawn_app_on(settings, receiver).await;
    let received = restarted
        .receiver
        .wait_for(5, Duration::from_secs(20))
        .await;
    expected.sort_by_key(|(minutes_ago, _)| std::cmp::Reverse(*minutes_ago));
    let expected_order: Vec<&str> = expected.iter().map(|(_, id)| id.as_str()).collect();
    let order: Vec<&str> = received
        .iter()
        .map(|r| r.header("idempotency-key"))
        .collect();
    assert_eq!(order, expected_order);
    restarted.stop().await;
}

#[tokio::test]
async fn a_running_host_is_woken_by_the_database_not_by_its_poll() {
    // With a one-hour poll, only LISTEN/NOTIFY and sleeping until the due time
    // can deliver within the test's limit.
    let app = spawn_app_with(|s| {
        s.claimer = true;
        s.idle_poll = Duration::from_secs(3600);
    })
    .await;
    let (_, event_id) = app.ada_with_event().await;
    sqlx::query("UPDATE events SET due_at = now() + interval '1 second', run_at = now() + interval '1 second' WHERE id = $1::uuid")
        .bind(&event_id)
        .execute(&app.pool)
        .await
        .unwrap();
    let received = app.receiver.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(received[0].header("idempotency-key"), event_id);
    app.stop().await;
}

#[tokio::test]
async fn shutdown_stops_the_host_cleanly_and_leaves_no_event_processing() {
    let app = spawn_app_with(|s| s.claimer = true).await;
    let (_, event_id) = app.ada_with_event().await;
    app.make_due(&event_id).await;
    app.receiver.wait_for(1, Duration::from_secs(15)).await;
    let pool = app.pool.clone();
    let url = app.database_url.clone();
    app.stop().await;
    assert!(pool.is_closed());
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let processing: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE status = 'processing'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(processing, 0);
}

#[tokio::test]
async fn a_finished_event_leaves_the_table_the_claimer_scans_and_reads_the_same_through_the_api() {
    let app = spawn_app().await;
    let (user_id, event_id) = app.ada_with_event().await;
    app.make_due(&event_id).await;
    assert_eq!(app.run_claimer_once().await, 1);

    // The claimer's table holds only next year's occurrence; the delivered
    // one is in the history.
    let live: Vec<(String, String)> =
        sqlx::query_as("SELECT id::text, status FROM events WHERE user_id = $1::uuid")
            .bind(&user_id)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_ne!(live[0].0, event_id);
    assert_eq!(live[0].1, "pending");
    let finished: String =
        sqlx::query_scalar("SELECT status FROM event_history WHERE id = $1::uuid")
            .bind(&event_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(finished, "delivered");

    // Every read answers as before: the user's events, the operator's
    // listing by status, the event itself.
    let statuses: Vec<Value> = app
        .events_of(&user_id)
        .await
        .iter()
        .map(|e| e["status"].clone())
        .collect();
    assert_eq!(statuses, [json!("delivered"), json!("pending")]);
    let delivered: Vec<Value> = app
        .get("/events?status=delivered")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0]["id"], event_id.as_str());
    assert!(delivered[0]["delivered_at"].is_string());
    let pending: Vec<Value> = app
        .get("/events?status=pending")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["id"], live[0].0.as_str());

    // Deleting the user moves its pending event to the history, cancelled.
    assert_eq!(
        app.http
            .delete(app.url(&format!("/users/{user_id}")))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(app.event(&live[0].0).await["status"], "cancelled");
}
