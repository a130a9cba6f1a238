//! Operational webhooks: with two replicas running, an endpoint disabled by
//! its health and enabled by hand, and a third replica killed without a
//! goodbye, the ops receiver gets each change exactly once, signed, and a
//! repeat keeps its `webhook-id`.

use crate::helpers::{
    ADMIN_TOKEN, KairosProcess, Receiver, SECRET, TestApp, ada, eventually, spawn_app_on,
    spawn_app_with,
};
use kairos::config::Settings;
use kairos::signing;
use serde_json::Value;
use std::time::Duration;

const HEARTBEAT: Duration = Duration::from_millis(500);

fn knobs(s: &mut Settings, ops: &Receiver) {
    s.claimer = true;
    s.concurrency = 1;
    s.idle_poll = Duration::from_millis(200);
    s.endpoint_disable_after = Duration::from_secs(1);
    s.endpoint_probe = Duration::from_secs(60);
    s.heartbeat = HEARTBEAT;
    s.ops_webhook_url = Some(ops.url());
}

async fn endpoints(app: &TestApp) -> Vec<Value> {
    app.http
        .get(app.url("/endpoints"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The messages the ops receiver accepted, by type.
fn accepted(ops: &Receiver, kind: &str) -> Vec<crate::helpers::Received> {
    ops.received()
        .into_iter()
        .filter(|r| r.status == 200 && r.body["type"] == kind)
        .collect()
}

#[tokio::test]
async fn each_change_reaches_the_ops_receiver_once_across_the_fleet() {
    let ops = Receiver::start().await;
    // The first message is refused once: its repeat keeps its webhook-id.
    ops.respond_with(&[500]);
    let a = spawn_app_with(|s| knobs(s, &ops)).await;
    let mut settings = a.settings.clone();
    settings.data_dir = settings.data_dir.with_extension("b");
    let b = spawn_app_on(settings, a.receiver.clone()).await;

    // A third replica, killed: it never says goodbye.
    let heartbeat = format!("{}ms", HEARTBEAT.as_millis());
    let c = KairosProcess::start(
        &a.database_url,
        &a.receiver,
        &[
            ("KAIROS_HEARTBEAT", &heartbeat),
            ("KAIROS_CLAIMER", "false"),
        ],
    )
    .await;
    c.kill().await;

    // The receiver fails everything: the endpoint is disabled by its health.
    a.receiver.start_outage(503, None);
    let user = a.create_user(&ada()).await;
    let event = a.events_of(user["id"].as_str().unwrap()).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    a.make_due(&event).await;
    a.wake_claimers().await;
    eventually(
        "the endpoint to be disabled",
        Duration::from_secs(20),
        || async { endpoints(&a).await.iter().any(|e| e["state"] == "disabled") },
    )
    .await;
    // Enabled by hand through the other replica, the receiver back.
    a.receiver.end_outage();
    let id = endpoints(&b).await[0]["id"].as_str().unwrap().to_string();
    let response = b
        .http
        .post(b.url(&format!("/endpoints/{id}/enable")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    a.wait_for_status(&event, "delivered").await;

    eventually(
        "one message of each change",
        Duration::from_secs(20),
        || async {
            ["endpoint.disabled", "endpoint.enabled", "replica.stale"]
                .iter()
                .all(|kind| !accepted(&ops, kind).is_empty())
        },
    )
    .await;
    // Nothing more to send anywhere: each change was told once, and noting
    // the stale replica again finds it told.
    let client = reqwest::Client::new();
    for app in [&a, &b] {
        let settings = app.settings.ops_settings().unwrap();
        let sent = kairos::ops::send_due(&app.pool, &client, &settings)
            .await
            .unwrap();
        assert_eq!(sent, 0);
    }
    assert_eq!(kairos::ops::note_stale_replicas(&a.pool).await.unwrap(), 0);
    let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM ops_events WHERE sent_at IS NULL")
        .fetch_one(&a.pool)
        .await
        .unwrap();
    assert_eq!(unsent, 0);
    for kind in ["endpoint.disabled", "endpoint.enabled", "replica.stale"] {
        assert_eq!(
            accepted(&ops, kind).len(),
            1,
            "{kind}: {:?}",
            ops.received()
        );
    }
    assert_eq!(accepted(&ops, "type.failing").len(), 0);

    // Signed like every webhook; the refused first message was sent again
    // under the same webhook-id.
    let key = signing::decode_secret(SECRET).unwrap();
    let all = ops.received();
    for message in &all {
        let (id, timestamp) = (
            message.header("webhook-id"),
            message.header("webhook-timestamp"),
        );
        assert!(
            signing::verify(
                &key,
                id,
                timestamp.parse().unwrap(),
                &message.raw,
                message.header("webhook-signature")
            ),
            "{message:?}"
        );
        assert!(message.body["at"].is_string() && message.body["detail"].is_object());
    }
    assert_eq!(all[0].status, 500);
    let repeats: Vec<_> = all[1..]
        .iter()
        .filter(|m| m.header("webhook-id") == all[0].header("webhook-id"))
        .collect();
    assert_eq!(repeats.len(), 1, "{all:?}");
    assert_eq!(repeats[0].body, all[0].body);

    // What each one says.
    let disabled = &accepted(&ops, "endpoint.disabled")[0].body["detail"];
    assert_eq!(disabled["endpoint"], id.as_str());
    assert_eq!(disabled["reason"], "failing");
    assert_eq!(disabled["by"], "kairos");
    assert!(
        disabled["last_error"].as_str().unwrap().contains("503"),
        "{disabled}"
    );
    let enabled = &accepted(&ops, "endpoint.enabled")[0].body["detail"];
    assert_eq!(enabled["by"], kairos::audit::fingerprint(ADMIN_TOKEN));
    let stale = &accepted(&ops, "replica.stale")[0].body["detail"];
    let live: Vec<String> = [&a, &b]
        .iter()
        .map(|app| app.event_types.replica().to_string())
        .collect();
    assert!(
        !live.contains(&stale["replica"].as_str().unwrap().to_string()),
        "{stale}"
    );

    // The automatic change is in the audit log too, by "kairos".
    let entries: Vec<Value> = a
        .http
        .get(a.url("/audit"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let endpoint_entries: Vec<(&str, &str)> = entries
        .iter()
        .filter(|e| e["target"] == id.as_str())
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    let admin = kairos::audit::fingerprint(ADMIN_TOKEN);
    assert_eq!(
        endpoint_entries,
        [
            ("endpoint.disable", "kairos"),
            ("endpoint.enable", admin.as_str())
        ]
    );
}

#[tokio::test]
async fn a_type_failing_for_more_than_one_percent_of_users_in_a_pass_is_told_once() {
    let ops = Receiver::start().await;
    let app = spawn_app_with(|s| knobs(s, &ops)).await;
    // Two users whose planning the type cannot do, recorded as a pass
    // records them, then the pass's end noted twice (as two replicas might).
    for _ in 0..2 {
        let user = app.create_user(&ada()).await;
        sqlx::query(
            "INSERT INTO replans (user_id, event_type, reason, attempts) VALUES ($1, 'birthday', 'trap', 1)",
        )
        .bind(uuid::Uuid::parse_str(user["id"].as_str().unwrap()).unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let generation = app.event_types.generation("birthday").unwrap();
    // 2 of 100 users: told; 2 of 1000: not.
    assert!(
        !kairos::ops::note_type_failing(&app.pool, "birthday", generation, 1000)
            .await
            .unwrap()
    );
    assert!(
        kairos::ops::note_type_failing(&app.pool, "birthday", generation, 100)
            .await
            .unwrap()
    );
    assert!(
        !kairos::ops::note_type_failing(&app.pool, "birthday", generation, 100)
            .await
            .unwrap()
    );
    let got = ops.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].body["type"], "type.failing");
    assert_eq!(got[0].body["detail"]["event_type"], "birthday");
    assert_eq!(got[0].body["detail"]["failing"], 2);
}
