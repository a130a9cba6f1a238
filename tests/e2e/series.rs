//! A series is never lost: a user changed where a type is not loaded, a
//! plugin that fails for one user, a claim by a host without the type, a
//! slow plugin after delivery. What could not be planned is recorded and
//! planned later, by a replica that has the type.

use crate::helpers::{TestApp, ada, plugin_bytes, spawn_app, spawn_app_on, spawn_app_with};
use kairos::replan::NOT_LOADED_HERE;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

fn of_type<'a>(events: &'a [Value], event_type: &str, status: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event_type"] == event_type && e["status"] == status)
        .collect()
}

/// The user's one pending event of `event_type`.
async fn pending_of(app: &TestApp, user_id: &str, event_type: &str) -> Value {
    let events = app.events_of(user_id).await;
    let pending = of_type(&events, event_type, "pending");
    assert_eq!(pending.len(), 1, "{events:#?}");
    pending[0].clone()
}

/// Sets attributes of users behind the API's back (no rescheduling), as a
/// way to make the misbehave type fail for them from now on.
async fn set_attributes(app: &TestApp, user_ids: &[&str], attributes: Value) {
    let ids: Vec<Uuid> = user_ids.iter().map(|id| id.parse().unwrap()).collect();
    sqlx::query("UPDATE users SET attributes = attributes || $2 WHERE id = ANY($1)")
        .bind(&ids)
        .bind(sqlx::types::Json(attributes))
        .execute(&app.pool)
        .await
        .unwrap();
}

/// Makes the recorded pairs due now, as if their backoff had passed.
async fn make_replans_due(app: &TestApp) {
    sqlx::query("UPDATE replans SET run_at = now() - interval '1 millisecond'")
        .execute(&app.pool)
        .await
        .unwrap();
}

/// A second replica on `a`'s database, started before anniversary is
/// uploaded and not following the registry: it has only birthday, as a
/// replica has while a change is on its way to it, or when it cannot load
/// the type's component.
async fn replica_with_birthday_only(a: &TestApp) -> TestApp {
    assert!(a.registry.get("anniversary").is_none());
    let mut settings = a.settings.clone();
    settings.data_dir = settings.data_dir.with_extension("replica-b");
    settings.follow = false;
    spawn_app_on(settings, a.receiver.clone()).await
}

async fn upload(app: &TestApp, name: &str, crate_name: &str) {
    let response = app.put_type(name, "", plugin_bytes(crate_name)).await;
    let status = response.status();
    assert!(
        status == 201 || status == 200,
        "{}",
        response.text().await.unwrap()
    );
    app.event_types.settle().await;
}

#[tokio::test]
async fn a_user_updated_on_a_replica_without_anniversary_keeps_their_anniversary_event() {
    // Replica A has anniversary (uploaded there); replica B, on the same
    // database with its own data directory, has only birthday.
    let a = spawn_app().await;
    let b = replica_with_birthday_only(&a).await;
    upload(&a, "anniversary", "kairos-anniversary").await;
    assert!(b.registry.get("anniversary").is_none());

    let user = a.create_user(&ada()).await;
    let user_id = user["id"].as_str().unwrap();
    let before = pending_of(&a, user_id, "anniversary").await;
    assert_eq!(before["occurrence"].as_str().unwrap()[5..10], *"07-08");

    // B takes an edit that moves the anniversary to June 1st.
    let mut edited = ada();
    edited["dates"]["anniversary"] = json!("1835-06-01");
    let response = b.put_json(&format!("/users/{user_id}"), &edited).await;
    assert_eq!(response.status(), 200);

    // B could not plan anniversary: the event stays, and the pair waits.
    let kept = pending_of(&b, user_id, "anniversary").await;
    assert_eq!(kept["id"], before["id"], "not cancelled");
    let replans = b.replans().await;
    assert_eq!(replans.len(), 1, "{replans:?}");
    assert_eq!(replans[0].0.to_string(), user_id);
    assert_eq!(replans[0].1, "anniversary");
    assert_eq!(replans[0].2, NOT_LOADED_HERE);
    // B's replanner does not take a type it lacks.
    assert_eq!(b.run_replanner_once().await, 0);

    // A plans it from the edited user.
    assert_eq!(a.run_replanner_once().await, 1);
    let after = pending_of(&a, user_id, "anniversary").await;
    assert_eq!(after["occurrence"].as_str().unwrap()[5..10], *"06-01");
    let events = a.events_of(user_id).await;
    assert_eq!(of_type(&events, "anniversary", "cancelled").len(), 1);
    assert!(a.replans().await.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn a_user_created_on_a_replica_without_a_type_gets_it_from_a_replica_that_has_it() {
    let a = spawn_app().await;
    let b = replica_with_birthday_only(&a).await;
    upload(&a, "anniversary", "kairos-anniversary").await;
    assert!(b.registry.get("anniversary").is_none());

    let user = b.create_user(&ada()).await;
    let user_id = user["id"].as_str().unwrap();
    let events = b.events_of(user_id).await;
    assert!(of_type(&events, "anniversary", "pending").is_empty());
    assert_eq!(a.run_replanner_once().await, 1);
    pending_of(&a, user_id, "anniversary").await;
    b.stop().await;
}

#[tokio::test]
async fn a_plugin_that_fails_for_one_user_during_put_leaves_their_events_and_is_planned_later() {
    let app = spawn_app().await;
    upload(&app, "misbehave", "kairos-misbehave").await;
    let user = app.create_user(&ada()).await;
    let user_id = user["id"].as_str().unwrap();
    let birthday = pending_of(&app, user_id, "birthday").await;
    let misbehave = pending_of(&app, user_id, "misbehave").await;

    // The edit makes misbehave fail for this user only.
    let mut edited = ada();
    edited["attributes"]["mode"] = json!("err");
    let response = app.put_json(&format!("/users/{user_id}"), &edited).await;
    assert_eq!(response.status(), 200, "the edit itself is saved");

    assert_eq!(
        pending_of(&app, user_id, "birthday").await["id"],
        birthday["id"]
    );
    assert_eq!(
        pending_of(&app, user_id, "misbehave").await["id"],
        misbehave["id"],
        "the failed type's event is not cancelled"
    );
    let replans = app.replans().await;
    assert_eq!(replans.len(), 1, "{replans:?}");
    assert_eq!(replans[0].1, "misbehave");
    assert!(replans[0].2.contains("deliberate error"), "{replans:?}");
    assert_eq!(replans[0].3, 1);

    // Visible: on the type and in the metrics.
    let types = app.event_types().await;
    let entry = types.iter().find(|t| t["name"] == "misbehave").unwrap();
    assert_eq!(entry["health"]["unplanned"], 1, "{entry}");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("kairos_unplanned{event_type=\"misbehave\"} 1"),
        "{metrics}"
    );

    // Still failing: one more attempt, still waiting.
    make_replans_due(&app).await;
    assert_eq!(app.run_replanner_once().await, 1);
    assert_eq!(app.replans().await[0].3, 2);

    // The plugin answers again (here: the attribute is gone): planned.
    set_attributes(&app, &[user_id], json!({"mode": "ok"})).await;
    make_replans_due(&app).await;
    assert_eq!(app.run_replanner_once().await, 1);
    assert!(app.replans().await.is_empty());
    pending_of(&app, user_id, "misbehave").await;
    let entry = app.event_types().await;
    let entry = entry.iter().find(|t| t["name"] == "misbehave").unwrap();
    assert_eq!(entry["health"]["unplanned"], 0);
}

#[tokio::test]
async fn a_scheduling_pass_keeps_the_events_of_users_its_plugin_fails_on() {
    let app = spawn_app().await;
    upload(&app, "misbehave", "kairos-misbehave").await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let mut body = ada();
        body["first_name"] = json!(format!("Ada{i}"));
        ids.push(
            app.create_user(&body).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let before = pending_of(&app, &ids[0], "misbehave").await;
    set_attributes(&app, &[&ids[0]], json!({"mode": "trap"})).await;

    // A new config is a new pass over every user.
    let response = app
        .put_type(
            "misbehave",
            "?config.note=v2",
            plugin_bytes("kairos-misbehave"),
        )
        .await;
    assert_eq!(response.status(), 200);
    app.event_types.settle().await;
    let pass: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT completed_at FROM event_type_passes WHERE event_type = 'misbehave' \
         AND config = '{\"note\": \"v2\"}'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(pass.is_some(), "the pass ran to its end");

    assert_eq!(
        pending_of(&app, &ids[0], "misbehave").await["id"],
        before["id"],
        "the user the pass failed on keeps their event"
    );
    for id in &ids[1..] {
        pending_of(&app, id, "misbehave").await;
    }
    let replans = app.replans().await;
    assert_eq!(replans.len(), 1, "{replans:?}");
    assert_eq!(replans[0].0.to_string(), ids[0]);
    assert!(replans[0].2.starts_with("trap"), "{replans:?}");
}

#[tokio::test]
async fn an_event_claimed_by_a_host_without_its_type_still_has_a_pending_series_afterwards() {
    let a = spawn_app().await;
    let b = replica_with_birthday_only(&a).await;
    upload(&a, "anniversary", "kairos-anniversary").await;
    let user = a.create_user(&ada()).await;
    let user_id = user["id"].as_str().unwrap();
    let event = pending_of(&a, user_id, "anniversary").await;
    let event_id = event["id"].as_str().unwrap();
    a.make_due(event_id).await;

    // B, without anniversary, steps its claimer more often than there are
    // attempts: it never takes the event.
    assert!(b.registry.get("anniversary").is_none());
    for _ in 0..=b.settings.max_attempts {
        assert_eq!(b.run_claimer_once().await, 0);
    }
    let untouched = a.event(event_id).await;
    assert_eq!(untouched["status"], "pending");
    assert_eq!(untouched["attempts"], 0);
    assert!(a.receiver.received().is_empty());

    // A has it: delivered, and the series goes on.
    assert_eq!(a.run_claimer_once().await, 1);
    assert_eq!(a.event(event_id).await["status"], "delivered");
    let next = pending_of(&a, user_id, "anniversary").await;
    assert!(next["occurrence"].as_str().unwrap() > event["occurrence"].as_str().unwrap());
    b.stop().await;
}

#[tokio::test]
async fn a_plugin_slower_than_the_lease_after_delivery_does_not_duplicate_its_batch() {
    // Planning each successor takes the whole plugin deadline (the plugin
    // loops until stopped); eight of them one after another would outlast
    // the lease. The claimer wakes often, so its rescuer would take back an
    // expired lease at once, as another replica's would.
    let app = spawn_app_with(|s| {
        s.claimer = true;
        s.idle_poll = Duration::from_millis(100);
        s.lease = Duration::from_secs(2);
        s.http_timeout = Duration::from_millis(700);
        s.plugin_deadline = Duration::from_millis(400);
        s.plugin_fuel = 50_000_000_000;
    })
    .await;
    upload(&app, "misbehave", "kairos-misbehave").await;
    let mut events = Vec::new();
    let mut users = Vec::new();
    for i in 0..8 {
        let mut body = ada();
        body["first_name"] = json!(format!("Ada{i}"));
        let id = app.create_user(&body).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        events.push(
            pending_of(&app, &id, "misbehave").await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        users.push(id);
    }
    let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
    set_attributes(
        &app,
        &user_refs,
        json!({"mode": "loop", "mode.format": "ok"}),
    )
    .await;
    let ids: Vec<Uuid> = events.iter().map(|id| id.parse().unwrap()).collect();
    sqlx::query("UPDATE events SET due_at = now(), run_at = now() WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&app.pool)
        .await
        .unwrap();

    for id in &events {
        let delivered = app.wait_for_status(id, "delivered").await;
        assert_eq!(delivered["attempts"], 1, "{delivered}");
    }
    let received = app.receiver.received();
    let keys: HashSet<&str> = received.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(received.len(), 8, "each sent once");
    assert_eq!(keys.len(), 8);
    // Every successor failed to plan (the deadline), and each is on record.
    let replans = app.replans().await;
    assert_eq!(replans.len(), 8, "{replans:?}");
    assert!(
        replans
            .iter()
            .all(|r| r.1 == "misbehave" && r.2.contains("timeout")),
        "{replans:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_event_whose_type_is_unloaded_here_after_its_claim_is_given_back_unattempted() {
    let app = spawn_app().await;
    upload(&app, "anniversary", "kairos-anniversary").await;
    let user = app.create_user(&ada()).await;
    let event = pending_of(&app, user["id"].as_str().unwrap(), "anniversary").await;
    let event_id = event["id"].as_str().unwrap();
    app.make_due(event_id).await;

    let claimed = kairos::lease::claim_due_events(
        &app.pool,
        10,
        Duration::from_secs(30),
        &["anniversary".to_string()],
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), 1);
    // The type goes away on this replica while the event is in its hands.
    app.registry.remove("anniversary").unwrap();
    let completion = app.deliverer.deliver(claimed[0].clone()).await;
    kairos::lease::complete(&app.pool, &[completion])
        .await
        .unwrap();

    let back = app.event(event_id).await;
    assert_eq!(back["status"], "pending", "{back}");
    assert_eq!(back["attempts"], 0, "not counted as an attempt: {back}");
    assert!(app.receiver.received().is_empty());
}

#[tokio::test]
async fn a_plan_behind_the_series_does_not_cancel_the_next_occurrence() {
    // Ada's birthday is delivered before its local time (as a host whose
    // clock runs behind the database's sees every delivery): the series
    // goes on with next year's.
    let app = spawn_app().await;
    let (user_id, event_id) = app.ada_with_event().await;
    let delivered = pending_of(&app, &user_id, "birthday").await;
    app.make_runnable(&event_id).await;
    assert_eq!(app.run_claimer_once().await, 1);
    let next = pending_of(&app, &user_id, "birthday").await;
    assert!(next["occurrence"].as_str() > delivered["occurrence"].as_str());

    // An edit now plans "the first birthday after now": the one delivered.
    // Its insert is refused (delivered already), and next year's stays.
    let response = app.put_json(&format!("/users/{user_id}"), &ada()).await;
    assert_eq!(response.status(), 200);
    let after = pending_of(&app, &user_id, "birthday").await;
    assert_eq!(after["id"], next["id"], "next year's is kept");
    // A scheduling pass over everyone plans the same and keeps it too.
    let response = app
        .put_type(
            "birthday",
            "?config.leap_day=feb28",
            plugin_bytes("kairos-birthday"),
        )
        .await;
    assert_eq!(response.status(), 200);
    app.event_types.settle().await;
    assert_eq!(
        pending_of(&app, &user_id, "birthday").await["id"],
        next["id"]
    );
    let events = app.events_of(&user_id).await;
    assert!(
        of_type(&events, "birthday", "cancelled").is_empty(),
        "{events:#?}"
    );
}
