//! One fleet, one set of event types: replicas on one database, each with
//! its own data directory, follow the registry in PostgreSQL. A change made
//! on any replica is served by all within 2 s; a deleted type's events are
//! cancelled once; a replica that missed a change catches up; a scheduling
//! pass runs once for the fleet and survives the replica running it.

use crate::helpers::{
    ADMIN_TOKEN, KairosProcess, Receiver, TestApp, ada, eventually, plugin_bytes,
    plugin_dir_with_birthday, spawn_app_on, spawn_app_with,
};
use kairos::config::Settings;
use serde_json::{Value, json};
use std::time::Duration;

/// How quickly a change must reach every replica.
const PROPAGATION: Duration = Duration::from_secs(2);
/// The replicas' heartbeat in these tests: also the timer that catches a
/// lost notification, and a third of the time after which a silent replica
/// is stale.
const HEARTBEAT: Duration = Duration::from_millis(200);

fn fleet_settings(s: &mut Settings) {
    s.heartbeat = HEARTBEAT;
}

/// Another replica on `first`'s database, with its own data directory.
async fn replica(first: &TestApp, name: &str, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = first.settings.clone();
    settings.data_dir = settings.data_dir.with_extension(name);
    configure(&mut settings);
    spawn_app_on(settings, first.receiver.clone()).await
}

/// Three replicas on one fresh database.
async fn fleet_of_three(configure: fn(&mut Settings)) -> (TestApp, TestApp, TestApp) {
    let a = spawn_app_with(|s| {
        fleet_settings(s);
        configure(s);
    })
    .await;
    let b = replica(&a, "b", configure).await;
    let c = replica(&a, "c", configure).await;
    (a, b, c)
}

/// `GET /event-types/{name}` on `app`: the status and, when 200, the entry.
async fn type_on(app: &TestApp, name: &str) -> (u16, Value) {
    let response = app.get(&format!("/event-types/{name}")).await;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Waits (at most `PROPAGATION`) until `app` serves `name` with `sha256`.
async fn serves(app: &TestApp, name: &str, sha256: &Value) {
    eventually(
        &format!("{} to serve {name} {sha256}", app.base),
        PROPAGATION,
        || async {
            let (status, entry) = type_on(app, name).await;
            status == 200 && entry["sha256"] == *sha256
        },
    )
    .await;
}

/// `POST /users/import` of `n` users born on `birthday` and married on
/// `anniversary`; panics unless all are imported.
async fn import_users(app: &TestApp, n: usize, birthday: &str, anniversary: &str) {
    let line = json!({
        "first_name": "Fleet",
        "last_name": "User",
        "timezone": "Europe/Paris",
        "dates": {"birthday": birthday, "anniversary": anniversary},
    })
    .to_string();
    let body = format!("{line}\n").repeat(n);
    let response = app
        .http
        .post(app.url("/users/import"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["imported"], n, "{report}");
}

async fn scalar(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap()
}

#[tokio::test]
async fn a_type_put_on_one_replica_is_served_by_every_replica_within_two_seconds() {
    let (a, b, c) = fleet_of_three(|_| {}).await;
    let response = a
        .put_type(
            "anniversary",
            "?config.send_at=08:30",
            plugin_bytes("kairos-anniversary"),
        )
        .await;
    assert_eq!(response.status(), 201);
    let put: Value = response.json().await.unwrap();
    let sha = put["sha256"].clone();
    let generation = put["generation"].clone();
    assert!(generation.is_i64(), "{put}");
    for replica in [&b, &c] {
        serves(replica, "anniversary", &sha).await;
        let (_, entry) = type_on(replica, "anniversary").await;
        assert_eq!(entry["generation"], generation, "{entry}");
        assert_eq!(entry["config"], json!({"send_at": "08:30"}));
    }

    // A user created on C gets the type's event, planned by C.
    let user = c.create_user(&ada()).await;
    let events = c.events_of(user["id"].as_str().unwrap()).await;
    let anniversary: Vec<_> = events
        .iter()
        .filter(|e| e["event_type"] == "anniversary")
        .collect();
    assert_eq!(anniversary.len(), 1, "{events:#?}");
    assert_eq!(
        anniversary[0]["occurrence"].as_str().unwrap()[10..],
        *"T08:30:00"
    );

    // Every replica lists the same fleet: three replicas, each serving the
    // registry's generation (reported at their next heartbeat).
    for replica in [&a, &b, &c] {
        eventually(
            "every replica to report the generation",
            PROPAGATION,
            || async {
                let (_, entry) = type_on(replica, "anniversary").await;
                let replicas = entry["fleet"]["replicas"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                entry["fleet"]["generation"] == generation
                    && replicas.len() == 3
                    && replicas
                        .iter()
                        .all(|r| r["generation"] == generation && r["stale"] == false)
            },
        )
        .await;
    }
    let metrics = c.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(&format!(
            "kairos_event_type_generation{{event_type=\"anniversary\"}} {generation}"
        )),
        "{metrics}"
    );
    for app in [a, b, c] {
        app.stop().await;
    }
}

#[tokio::test]
async fn replacing_birthday_while_three_replicas_deliver_fails_nothing_and_each_webhook_names_its_version()
 {
    // Slow delivery (small batches, few in flight), so the swap lands in
    // the middle of the backlog.
    let (a, b, c) = fleet_of_three(|s| {
        s.claimer = true;
        s.batch_size = 10;
        s.concurrency = 2;
        s.idle_poll = Duration::from_millis(100);
    })
    .await;
    let old_version = type_on(&a, "birthday").await.1["version"].clone();
    const USERS: usize = 600;
    import_users(&a, USERS, "1990-06-15", "2015-09-01").await;
    // A backlog: this year's birthdays, missed while the fleet was down.
    a.miss_every_event().await;
    a.wake_claimers().await;
    a.receiver.wait_for(20, Duration::from_secs(20)).await;

    let response = b
        .put_type("birthday", "", plugin_bytes("kairos-birthday-next"))
        .await;
    assert_eq!(response.status(), 200, "a replacement");
    let put: Value = response.json().await.unwrap();
    let new_version = put["version"].clone();
    assert_ne!(new_version, old_version);
    for replica in [&a, &c] {
        serves(replica, "birthday", &put["sha256"]).await;
    }
    // Every replica now formats with the new version.
    for replica in [&a, &b, &c] {
        assert_eq!(
            replica.registry.get("birthday").unwrap().info.version,
            new_version.as_str().unwrap()
        );
    }

    let received = a.receiver.wait_for(USERS, Duration::from_secs(60)).await;
    eventually(
        "the backlog to be recorded",
        Duration::from_secs(20),
        || async {
            scalar(
                &a,
                "SELECT count(*) FROM event_history WHERE status = 'delivered'",
            )
            .await
                == USERS as i64
        },
    )
    .await;
    let lost: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT status, last_error, count(*) FROM event_history \
         WHERE status IN ('failed', 'cancelled') GROUP BY 1, 2",
    )
    .fetch_all(&a.pool)
    .await
    .unwrap();
    assert!(
        lost.is_empty(),
        "nothing failed or was cancelled by the swap: {lost:?}"
    );
    // Each webhook names the version that formatted it, and its text is
    // that version's.
    let mut by_version = std::collections::BTreeMap::<String, usize>::new();
    for webhook in &received {
        let version = webhook.body["event_type_version"]
            .as_str()
            .unwrap()
            .to_string();
        let text = webhook.body["message"]["text"].as_str().unwrap();
        assert_eq!(
            text.starts_with("v0.2.0-next:"),
            version == new_version,
            "{version}: {text}"
        );
        *by_version.entry(version).or_default() += 1;
    }
    assert!(
        by_version
            .get(old_version.as_str().unwrap())
            .is_some_and(|n| *n > 0)
            && by_version
                .get(new_version.as_str().unwrap())
                .is_some_and(|n| *n > 0),
        "the swap happened while the backlog was delivered: {by_version:?}"
    );
    // The stored events say the same as their webhooks.
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM event_history WHERE status = 'delivered' AND event_type_version = $1",
    )
    .bind(new_version.as_str().unwrap())
    .fetch_one(&a.pool)
    .await
    .unwrap();
    assert_eq!(stored as usize, by_version[new_version.as_str().unwrap()]);
    // Every user still has exactly one pending birthday: next year's.
    assert_eq!(
        scalar(
            &a,
            "SELECT count(DISTINCT user_id) FROM events WHERE event_type = 'birthday' AND status = 'pending'"
        )
        .await,
        USERS as i64
    );
    assert_eq!(
        scalar(
            &a,
            "SELECT count(*) FROM events WHERE event_type = 'birthday'"
        )
        .await,
        USERS as i64
    );

    // Events coming due after the swap, on whichever replica: all
    // formatted by the new version.
    for replica in [&a, &b, &c] {
        for _ in 0..4 {
            replica.create_user(&ada()).await;
        }
    }
    sqlx::query(
        "UPDATE events SET due_at = now() - interval '1 second', run_at = now() - interval '1 second' \
         WHERE user_id IN (SELECT id FROM users WHERE first_name = 'Ada')",
    )
    .execute(&a.pool)
    .await
    .unwrap();
    a.wake_claimers().await;
    let after = a
        .receiver
        .wait_for(USERS + 12, Duration::from_secs(20))
        .await;
    assert!(
        after[USERS..]
            .iter()
            .all(|w| w.body["event_type_version"] == new_version),
        "{:?}",
        after[USERS..]
            .iter()
            .map(|w| &w.body["event_type_version"])
            .collect::<Vec<_>>()
    );
    for app in [a, b, c] {
        app.stop().await;
    }
}

const LIVE_ANNIVERSARIES: &str = "SELECT count(*) FROM events WHERE event_type = 'anniversary'";

#[tokio::test]
async fn a_type_deleted_on_one_replica_stops_on_every_replica_and_its_events_are_cancelled_once() {
    let (a, b, c) = fleet_of_three(|_| {}).await;
    let response = a
        .put_type("anniversary", "", plugin_bytes("kairos-anniversary"))
        .await;
    let sha = response.json::<Value>().await.unwrap()["sha256"].clone();
    for replica in [&b, &c] {
        serves(replica, "anniversary", &sha).await;
    }
    a.event_types.settle().await;
    for _ in 0..5 {
        b.create_user(&ada()).await;
    }
    assert_eq!(scalar(&a, LIVE_ANNIVERSARIES).await, 5);

    assert_eq!(c.delete_type("anniversary").await.status(), 204);
    assert_eq!(
        type_on(&c, "anniversary").await.0,
        404,
        "at once where it was deleted"
    );
    for replica in [&a, &b] {
        eventually("the type to be retired", PROPAGATION, || async {
            type_on(replica, "anniversary").await.0 == 404
        })
        .await;
        assert!(replica.registry.get("anniversary").is_none());
    }
    // Wait out the replicas' follow-up sweeps: still cancelled once each.
    tokio::time::sleep(3 * HEARTBEAT).await;
    assert_eq!(scalar(&a, LIVE_ANNIVERSARIES).await, 0);
    assert_eq!(
        scalar(
            &a,
            "SELECT count(*) FROM event_history WHERE event_type = 'anniversary' AND status = 'cancelled'"
        )
        .await,
        5
    );
    // A second delete finds nothing.
    assert_eq!(b.delete_type("anniversary").await.status(), 404);
    for app in [a, b, c] {
        app.stop().await;
    }
}

#[tokio::test]
async fn a_replica_that_was_down_during_a_put_catches_up_when_it_starts() {
    let a = spawn_app_with(fleet_settings).await;
    let b = replica(&a, "b", |_| {}).await;
    let b_settings = b.settings.clone();
    b.stop().await;

    let response = a
        .put_type("anniversary", "", plugin_bytes("kairos-anniversary"))
        .await;
    assert_eq!(response.status(), 201);
    let sha = response.json::<Value>().await.unwrap()["sha256"].clone();

    let b = spawn_app_on(b_settings, a.receiver.clone()).await;
    let (status, entry) = type_on(&b, "anniversary").await;
    assert_eq!(status, 200, "served as soon as it started");
    assert_eq!(entry["sha256"], sha);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_replica_that_lost_its_listen_connection_or_a_notification_catches_up_within_its_heartbeat()
 {
    let a = spawn_app_with(fleet_settings).await;
    let b = replica(&a, "b", |_| {}).await;
    let listening = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%kairos_event_types%'",
        )
        .fetch_one(&a.pool)
        .await
        .unwrap()
    };
    eventually("both replicas to listen", PROPAGATION, || async {
        listening().await == 2
    })
    .await;

    // Cut every LISTEN connection: the replicas connect again and compare
    // generations.
    let cut: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%kairos_event_types%'",
    )
    .fetch_one(&a.pool)
    .await
    .unwrap();
    assert_eq!(cut, 2);
    let response = a
        .put_type("anniversary", "", plugin_bytes("kairos-anniversary"))
        .await;
    let sha = response.json::<Value>().await.unwrap()["sha256"].clone();
    serves(&b, "anniversary", &sha).await;

    // A change whose notification never arrives (written without one): B
    // sees it at its next heartbeat.
    sqlx::query(
        "UPDATE event_types SET config = '{\"send_at\": \"07:45\"}', \
             generation = nextval('event_type_generation'), changed_at = now() \
         WHERE name = 'anniversary'",
    )
    .execute(&a.pool)
    .await
    .unwrap();
    eventually("the silent change to be served", 3 * HEARTBEAT, || async {
        let (_, entry) = type_on(&b, "anniversary").await;
        entry["config"] == json!({"send_at": "07:45"})
    })
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_replica_killed_during_a_scheduling_pass_is_replaced_by_another_that_finishes_it() {
    // The users, loaded by a host that does not follow the registry (so it
    // takes no part in what follows).
    let host = spawn_app_with(|s| {
        fleet_settings(s);
        s.follow = false;
    })
    .await;
    const USERS: usize = 3000;
    import_users(&host, USERS, "1990-06-15", "2015-09-01").await;

    // Replica P, a real process: it takes the anniversary upload and runs
    // the pass, ten users per transaction.
    let p = KairosProcess::start(
        &host.database_url,
        &host.receiver,
        &[
            ("KAIROS_HEARTBEAT", "200ms"),
            ("KAIROS_SCHEDULE_BATCH", "10"),
            ("KAIROS_CLAIMER", "false"),
        ],
    )
    .await;
    let response = reqwest::Client::new()
        .put(format!("{}/event-types/anniversary", p.base))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/wasm")
        .body(plugin_bytes("kairos-anniversary"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    // Kill it part-way through its pass.
    eventually(
        "P's pass to be under way",
        Duration::from_secs(30),
        || async {
            let done: Option<i64> = sqlx::query_scalar(
                "SELECT done FROM event_type_passes \
             WHERE event_type = 'anniversary' AND owner IS NOT NULL AND completed_at IS NULL",
            )
            .fetch_optional(&host.pool)
            .await
            .unwrap();
            done.is_some_and(|d| d >= 100)
        },
    )
    .await;
    p.kill().await;
    let (done, completed): (i64, bool) = sqlx::query_as(
        "SELECT done, completed_at IS NOT NULL FROM event_type_passes WHERE event_type = 'anniversary'",
    )
    .fetch_one(&host.pool)
    .await
    .unwrap();
    assert!(
        !completed && (done as usize) < USERS,
        "killed part-way: {done} done"
    );

    // Replica B joins; once P's heartbeat is stale, B takes the pass over
    // from where P left it and finishes it.
    let b = replica(&host, "b", |s| s.follow = true).await;
    eventually("the pass to be finished", Duration::from_secs(60), || async {
        scalar(
            &b,
            "SELECT count(*) FROM event_type_passes WHERE event_type = 'anniversary' AND completed_at IS NOT NULL",
        )
        .await
            == 1
    })
    .await;
    let (_, entry) = type_on(&b, "anniversary").await;
    assert_eq!(entry["pass"]["state"], "done", "{entry}");
    assert_eq!(entry["pass"]["done"], USERS, "{entry}");
    // Every user has exactly one anniversary event.
    let per_user: Vec<i64> = sqlx::query_scalar(
        "SELECT count(e.id) FROM users u \
         LEFT JOIN events e ON e.user_id = u.id AND e.event_type = 'anniversary' \
         GROUP BY u.id",
    )
    .fetch_all(&b.pool)
    .await
    .unwrap();
    assert_eq!(per_user.len(), USERS);
    assert!(per_user.iter().all(|n| *n == 1), "one each");
    b.stop().await;
    host.stop().await;
}

#[tokio::test]
async fn a_plugin_directory_never_undoes_a_later_upload_or_delete_but_a_changed_file_wins() {
    let a = spawn_app_with(fleet_settings).await;
    let settings = a.settings.clone();
    let response = a
        .put_type("birthday", "", plugin_bytes("kairos-birthday-next"))
        .await;
    assert_eq!(response.status(), 200);
    let next_sha = response.json::<Value>().await.unwrap()["sha256"].clone();
    a.stop().await;

    // Restarting with the same directory (the same image) keeps the upload.
    let a = spawn_app_on(settings.clone(), Receiver::start().await).await;
    assert_eq!(type_on(&a, "birthday").await.1["sha256"], next_sha);
    // So does a replica whose directory file is newer but the same.
    let b = replica(&a, "b", |s| {
        s.plugin_dir = plugin_dir_with_birthday(None);
    })
    .await;
    assert_eq!(type_on(&b, "birthday").await.1["sha256"], next_sha);
    b.stop().await;

    // A delete through the API stands too.
    assert_eq!(a.delete_type("birthday").await.status(), 204);
    a.stop().await;
    let a = spawn_app_on(settings.clone(), Receiver::start().await).await;
    assert_eq!(type_on(&a, "birthday").await.0, 404);

    // A changed file (new settings) is a new version from the directory.
    std::fs::write(
        settings.plugin_dir.join("birthday.toml"),
        "[config]\nsend_at = \"10:15\"\n",
    )
    .unwrap();
    eventually(
        "the changed file to be served",
        Duration::from_secs(10),
        || async {
            let (status, entry) = type_on(&a, "birthday").await;
            status == 200 && entry["config"] == json!({"send_at": "10:15"})
        },
    )
    .await;
    let (_, entry) = type_on(&a, "birthday").await;
    assert_eq!(entry["source"]["kind"], "directory", "{entry}");
    assert_eq!(entry["fleet"]["changed_by"], "directory", "{entry}");
    a.stop().await;
}

#[tokio::test]
async fn a_replica_that_cannot_load_a_new_version_keeps_serving_the_old_one_and_says_so() {
    let a = spawn_app_with(fleet_settings).await;
    // B's plugin memory limit is below what the new version needs.
    let b = replica(&a, "b", |s| s.plugin_memory_mib = 2).await;
    let (status, old) = type_on(&b, "birthday").await;
    assert_eq!(status, 200);

    let response = a
        .put_type("birthday", "", plugin_bytes("kairos-birthday-next"))
        .await;
    assert_eq!(response.status(), 200);
    let new: Value = response.json().await.unwrap();

    // A sees B's report: the old generation, and why not the new one.
    eventually("B to report its error", PROPAGATION, || async {
        let (_, entry) = type_on(&a, "birthday").await;
        let replicas = entry["fleet"]["replicas"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        replicas.iter().any(|r| {
            r["id"] == json!(b.event_types.replica())
                && r["generation"] == old["generation"]
                && r["error"].as_str().is_some_and(|e| e.contains("memory"))
        })
    })
    .await;
    let (_, still) = type_on(&b, "birthday").await;
    assert_eq!(still["sha256"], old["sha256"]);
    assert_eq!(still["generation"], old["generation"]);
    assert_eq!(still["fleet"]["generation"], new["generation"]);
    let metrics = b.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("kairos_event_type_load_failed{event_type=\"birthday\"} 1"),
        "{metrics}"
    );

    // B keeps delivering with the version it has.
    let (_, event_id) = b.ada_with_event().await;
    b.make_due(&event_id).await;
    assert_eq!(b.run_claimer_once().await, 1);
    let webhook = &b.receiver.wait_for(1, Duration::from_secs(10)).await[0];
    assert_eq!(webhook.body["event_type_version"], old["version"]);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn uploads_kept_on_disk_by_an_older_version_are_published_once_and_win_over_the_directory() {
    let receiver = Receiver::start().await;
    let mut settings =
        crate::helpers::test_settings(&crate::helpers::fresh_database().await, &receiver);
    // What an older kairos kept of two uploads: a new type, and a birthday
    // that replaced the directory's.
    let uploads = settings.data_dir.join("plugins");
    std::fs::create_dir_all(&uploads).unwrap();
    std::fs::write(
        uploads.join("anniversary.wasm"),
        plugin_bytes("kairos-anniversary"),
    )
    .unwrap();
    std::fs::write(
        uploads.join("anniversary.toml"),
        "[config]\nsend_at = \"07:00\"\n",
    )
    .unwrap();
    std::fs::write(
        uploads.join("birthday.wasm"),
        plugin_bytes("kairos-birthday-next"),
    )
    .unwrap();
    settings.heartbeat = HEARTBEAT;
    let app = spawn_app_on(settings.clone(), receiver.clone()).await;

    let (status, anniversary) = type_on(&app, "anniversary").await;
    assert_eq!(status, 200);
    assert_eq!(anniversary["config"], json!({"send_at": "07:00"}));
    assert_eq!(anniversary["source"]["kind"], "upload");
    let (_, birthday) = type_on(&app, "birthday").await;
    assert_eq!(
        birthday["version"], "0.2.0-next",
        "the upload won: {birthday}"
    );
    assert!(!uploads.exists());
    assert!(
        settings
            .data_dir
            .join("plugins.published/anniversary.wasm")
            .is_file()
    );
    app.stop().await;

    // Read once: a restart serves the same from the registry.
    let app = spawn_app_on(settings, receiver).await;
    assert_eq!(type_on(&app, "birthday").await.1["version"], "0.2.0-next");
    assert_eq!(type_on(&app, "anniversary").await.0, 200);
    app.stop().await;
}
