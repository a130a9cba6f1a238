//! The host's own loops: a claimer that fails is started again and `/ready`
//! says so meanwhile; SIGTERM ends within the grace, giving back the leases
//! of deliveries still in flight.

use crate::helpers::{HANG, eventually, spawn_app_with};
use serde_json::Value;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_claimer_killed_by_an_injected_fault_is_restarted_and_ready_says_so_meanwhile() {
    let app = spawn_app_with(|s| {
        s.claimer = true;
        s.idle_poll = Duration::from_millis(50);
    })
    .await;
    let ready = app.get("/ready").await;
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["loops"]["claimer"]["running"], true, "{body}");
    assert_eq!(body["loops"]["replanner"]["running"], true, "{body}");

    // The fault holds until cleared: every restart fails at once.
    app.claimer_state.inject_fault(true);
    eventually(
        "/ready to report the claimer down",
        Duration::from_secs(10),
        || async {
            let response = app.get("/ready").await;
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            status == 503
                && body["loops"]["claimer"]["running"] == false
                && body["loops"]["claimer"]["last_error"] == "injected fault"
        },
    )
    .await;
    assert!(app.claimer_state.restarts() >= 1);

    app.claimer_state.inject_fault(false);
    eventually("/ready to recover", Duration::from_secs(40), || async {
        app.get("/ready").await.status() == 200
    })
    .await;
    // The restarted claimer delivers.
    let (_, event_id) = app.ada_with_event().await;
    app.make_due(&event_id).await;
    app.wait_for_status(&event_id, "delivered").await;
}

#[tokio::test]
async fn sigterm_with_deliveries_stuck_past_the_grace_releases_their_leases_and_exits_within_the_grace()
 {
    let grace = Duration::from_secs(1);
    let app = spawn_app_with(|s| {
        s.claimer = true;
        s.shutdown_grace = grace;
        s.http_timeout = Duration::from_secs(20);
        s.lease = Duration::from_secs(60);
    })
    .await;
    app.receiver.respond_with(&[HANG]);
    let (_, event_id) = app.ada_with_event().await;
    app.make_due(&event_id).await;
    app.receiver.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(app.event(&event_id).await["status"], "processing");

    let pool = app.pool.clone();
    let url = app.database_url.clone();
    let started = Instant::now();
    app.stop().await;
    let took = started.elapsed();
    assert!(
        took < grace + Duration::from_secs(2),
        "stopping took {took:?} with a grace of {grace:?}"
    );
    assert!(pool.is_closed());

    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let (status, lease): (String, Option<uuid::Uuid>) =
        sqlx::query_as("SELECT status, lease_id FROM events WHERE id = $1::uuid")
            .bind(&event_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "pending", "released, to be delivered again");
    assert_eq!(lease, None);
}
