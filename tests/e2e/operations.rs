//! What production does to a host: the database restarting under it while
//! it delivers, and the host killed with SIGKILL again and again. Nothing is
//! lost, every event ends delivered once, and a webhook sent twice (its
//! outcome was never recorded) carries the same id both times.

use crate::helpers::{
    KairosProcess, Receiver, TestApp, fresh_database, spawn_app_on, test_settings,
};
use kairos::embedded_pg::EmbeddedPostgres;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// `POST /users/import` of `n` users whose birthdays are all due now: a
/// backlog (this year's birthday, missed while the host was down).
async fn backlog(app: &TestApp, n: usize) {
    let line = json!({
        "first_name": "Backlog",
        "last_name": "User",
        "timezone": "Europe/Paris",
        "dates": {"birthday": "1990-06-15"},
    })
    .to_string();
    let response = app
        .http
        .post(app.url("/users/import"))
        .header("content-type", "application/x-ndjson")
        .body(format!("{line}\n").repeat(n))
        .send()
        .await
        .unwrap();
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["imported"], n, "{report}");
    app.miss_every_event().await;
}

async fn delivered(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM event_history WHERE status = 'delivered'")
        .fetch_one(pool)
        .await
        .unwrap_or(-1)
}

/// Every webhook's `webhook-id`, `Idempotency-Key` and body `id` agree; the
/// deliveries per event id.
fn deliveries_per_event(received: &[crate::helpers::Received]) -> BTreeMap<String, Vec<Instant>> {
    let mut per_event: BTreeMap<String, Vec<Instant>> = BTreeMap::new();
    for webhook in received {
        let id = webhook.body["id"].as_str().unwrap().to_string();
        assert_eq!(webhook.header("webhook-id"), id);
        assert_eq!(webhook.header("idempotency-key"), id);
        per_event.entry(id).or_default().push(webhook.at);
    }
    per_event
}

#[tokio::test]
async fn a_database_restart_while_delivering_loses_nothing_and_each_event_ends_delivered_once() {
    // A cluster of its own, to restart.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("restart-postgres-{}", Uuid::new_v4().simple()));
    let dir_for_start = dir.clone();
    let mut pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir_for_start))
        .await
        .unwrap()
        .unwrap();
    let url = pg.ensure_database().await.unwrap();
    let receiver = Receiver::start().await;
    let mut settings = test_settings(&url, &receiver);
    settings.claimer = true;
    settings.batch_size = 20;
    settings.concurrency = 8;
    // Outcomes that could not be written come back when their lease ends.
    settings.lease = Duration::from_secs(3);
    settings.http_timeout = Duration::from_secs(1);
    settings.plugin_deadline = Duration::from_millis(300);
    // Without its LISTEN connection back, the claimer would sleep this long.
    settings.idle_poll = Duration::from_secs(60);
    let app = spawn_app_on(settings, receiver.clone()).await;
    const USERS: usize = 1500;
    backlog(&app, USERS).await;
    app.wake_claimers().await;

    // A fast shutdown, then an immediate one (a crash), each while the
    // backlog is being delivered.
    for (round, immediate) in [false, true].into_iter().enumerate() {
        receiver
            .wait_for(300 * (round + 1), Duration::from_secs(60))
            .await;
        tokio::task::spawn_blocking(move || {
            if immediate {
                pg.stop_immediately().unwrap();
            } else {
                pg.stop().unwrap();
            }
        })
        .await
        .unwrap();
        // The probes answer at once: not ready, but alive.
        for _ in 0..3 {
            let asked = Instant::now();
            let ready = app.get("/ready").await;
            assert_eq!(ready.status(), 503);
            assert!(
                asked.elapsed() < Duration::from_secs(1),
                "{:?}",
                asked.elapsed()
            );
            let body: Value = ready.json().await.unwrap();
            assert_ne!(body["database"], "ok", "{body}");
            let asked = Instant::now();
            assert_eq!(app.get("/health").await.status(), 200);
            assert!(asked.elapsed() < Duration::from_millis(200));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let dir = dir.clone();
        pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir).unwrap())
            .await
            .unwrap();
    }

    // Everything ends delivered, once in the database.
    let check = sqlx::PgPool::connect(&url).await.unwrap();
    let started = Instant::now();
    while delivered(&check).await < USERS as i64 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{} of {USERS} delivered",
            delivered(&check).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (failed, unfinished): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM event_history WHERE status <> 'delivered'), \
                (SELECT count(*) FROM events WHERE due_at < now())",
    )
    .fetch_one(&check)
    .await
    .unwrap();
    assert_eq!((failed, unfinished), (0, 0));
    let per_event = deliveries_per_event(&receiver.received());
    assert_eq!(per_event.len(), USERS, "every event reached the receiver");
    let twice = per_event.values().filter(|d| d.len() > 1).count();
    eprintln!("database restarts: {twice} of {USERS} events were sent twice, with the same id");

    // The claimer's LISTEN connection is back: a new due event is sent at
    // once, not after the 60 s idle poll.
    let before = receiver.received().len();
    let user = app
        .create_user(&json!({
            "first_name": "After",
            "last_name": "Restart",
            "timezone": "UTC",
            "dates": {"birthday": "1990-01-01"},
        }))
        .await;
    let id = user["id"].as_str().unwrap();
    let event_id = app.events_of(id).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.make_due(&event_id).await;
    sqlx::query("SELECT pg_notify('kairos_events', '')")
        .execute(&check)
        .await
        .unwrap();
    receiver.wait_for(before + 1, Duration::from_secs(10)).await;
    check.close().await;
    app.stop().await;
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap()
        .unwrap();
}

/// A small deterministic generator for the kill moments; the seed is
/// printed so a failing run can be repeated.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test]
async fn a_host_killed_ten_times_while_delivering_loses_nothing_and_resends_only_what_was_in_flight()
 {
    // The users and their backlog, loaded by an in-process host that does
    // not deliver.
    let database_url = fresh_database().await;
    let receiver = Receiver::start().await;
    let loader = spawn_app_on(test_settings(&database_url, &receiver), receiver.clone()).await;
    const EVENTS: usize = 40_000;
    backlog(&loader, EVENTS).await;

    let seed = std::env::var("KAIROS_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("kill moments from KAIROS_KILL_SEED={seed}");
    let mut moments = Lcg(seed);
    let settings = [
        ("KAIROS_LEASE", "3s"),
        ("KAIROS_HTTP_TIMEOUT", "1s"),
        ("KAIROS_PLUGIN_DEADLINE", "300ms"),
        ("KAIROS_HEARTBEAT", "500ms"),
    ];
    let data_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("killed-{}", Uuid::new_v4().simple()));
    let mut kills = Vec::new();
    for _ in 0..10 {
        let host = KairosProcess::start_in(&data_dir, &database_url, &receiver, &settings).await;
        tokio::time::sleep(Duration::from_millis(100 + moments.below(600))).await;
        let before = Instant::now();
        host.kill().await;
        // Bytes it wrote just before dying may still reach the receiver.
        kills.push((before, Instant::now() + Duration::from_millis(200)));
    }
    assert!(
        delivered(&loader.pool).await < EVENTS as i64,
        "the kills came while the backlog was being delivered"
    );
    // The last start runs to the end.
    let host = KairosProcess::start_in(&data_dir, &database_url, &receiver, &settings).await;
    let started = Instant::now();
    while delivered(&loader.pool).await < EVENTS as i64 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{} of {EVENTS} delivered",
            delivered(&loader.pool).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    host.kill().await;

    assert_eq!(loader.finished_undelivered().await, 0);
    let per_event = deliveries_per_event(&receiver.received());
    assert_eq!(per_event.len(), EVENTS, "zero lost");
    // An event sent more than once was in flight at a kill: a kill falls
    // between each of its sends and the next.
    let mut resent = 0;
    for (id, sends) in &per_event {
        for pair in sends.windows(2) {
            resent += 1;
            assert!(
                kills
                    .iter()
                    .any(|(from, to)| pair[0] <= *to && *from <= pair[1]),
                "event {id} was sent twice with no kill between"
            );
        }
    }
    eprintln!("kill -9 ×10: {resent} resends of {EVENTS} events, each across a kill, same ids");
    loader.stop().await;
}

/// Settings for a host that delivers on its own with fast retries: an
/// outage of a few seconds crosses many retry rounds.
fn retrying(s: &mut kairos::config::Settings) {
    s.claimer = true;
    s.idle_poll = Duration::from_millis(100);
    s.retry_base = Duration::from_millis(200);
    s.retry_max = Duration::from_secs(2);
    s.max_attempts = 30;
}

async fn wait_delivered(app: &TestApp, n: i64) {
    crate::helpers::eventually(
        "every event to be delivered",
        Duration::from_secs(30),
        || async { delivered(&app.pool).await == n },
    )
    .await;
}

#[tokio::test]
async fn a_receiver_answering_503_gets_everything_once_it_recovers_at_the_pace_its_retry_after_asks()
 {
    let app = crate::helpers::spawn_app_with(retrying).await;
    let receiver = app.receiver.clone();
    receiver.start_outage(503, Some("1"));
    const EVENTS: usize = 20;
    backlog(&app, EVENTS).await;
    app.wake_claimers().await;
    // Three rounds of 503s for every event, then the receiver recovers.
    receiver.wait_for(3 * EVENTS, Duration::from_secs(30)).await;
    receiver.end_outage();
    wait_delivered(&app, EVENTS as i64).await;

    assert_eq!(app.finished_undelivered().await, 0);
    let received = receiver.received();
    let mut per_event: BTreeMap<&str, Vec<(Instant, u16)>> = BTreeMap::new();
    for webhook in &received {
        per_event
            .entry(webhook.body["id"].as_str().unwrap())
            .or_default()
            .push((webhook.at, webhook.status));
    }
    assert_eq!(per_event.len(), EVENTS);
    for (id, attempts) in &per_event {
        let statuses: Vec<u16> = attempts.iter().map(|(_, s)| *s).collect();
        assert_eq!(statuses.last(), Some(&200), "{id}: {statuses:?}");
        assert!(
            statuses[..statuses.len() - 1].iter().all(|s| *s == 503),
            "{id}: {statuses:?}"
        );
        // `Retry-After: 1` paces the retries, not the 200 ms backoff.
        for pair in attempts.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            assert!(
                gap >= Duration::from_millis(950),
                "{id}: retried after {gap:?}"
            );
        }
    }

    // A `Retry-After` longer than KAIROS_RETRY_MAX (2 s) waits the maximum.
    let before = receiver.received().len();
    receiver.start_outage(429, Some("3600"));
    let (_, event_id) = app.ada_with_event().await;
    app.make_due(&event_id).await;
    app.wake_claimers().await;
    receiver.wait_for(before + 1, Duration::from_secs(10)).await;
    receiver.end_outage();
    let sends = receiver.wait_for(before + 2, Duration::from_secs(10)).await;
    let gap = sends[before + 1].at - sends[before].at;
    assert!(
        gap >= Duration::from_millis(1900) && gap < Duration::from_secs(4),
        "capped at KAIROS_RETRY_MAX: {gap:?}"
    );
    assert_eq!(sends[before + 1].status, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_refusing_connections_gets_everything_once_it_recovers_and_retries_back_off() {
    // Nothing listens on this address until the receiver recovers.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app = crate::helpers::spawn_app_with(|s| {
        retrying(s);
        s.webhook_url = Some(format!("http://{addr}/hook"));
    })
    .await;
    const EVENTS: usize = 20;
    backlog(&app, EVENTS).await;
    let outage_began = Instant::now();
    app.wake_claimers().await;
    // Four failed attempts for every event.
    crate::helpers::eventually(
        "four refused attempts each",
        Duration::from_secs(30),
        || async {
            let least: Option<i32> =
                sqlx::query_scalar("SELECT min(attempts) FROM events WHERE due_at < now()")
                    .fetch_one(&app.pool)
                    .await
                    .unwrap();
            least.is_some_and(|n| n >= 4)
        },
    )
    .await;
    let (most, error): (i32, String) =
        sqlx::query_as("SELECT max(attempts), min(last_error) FROM events WHERE due_at < now()")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let outage = outage_began.elapsed();
    assert!(error.contains("connect"), "{error}");
    // The retries back off: n attempts need at least the sum of the first
    // n − 1 delays (200 ms doubling, up to 2 s, less 20 % jitter).
    let least_wait: Duration = (1..most as u32)
        .map(|n| Duration::from_millis(200 * 2u64.pow(n - 1)).min(Duration::from_secs(2)) * 4 / 5)
        .sum();
    assert!(least_wait <= outage, "{most} attempts in {outage:?}");

    let receiver = Receiver::start_at(addr).await;
    wait_delivered(&app, EVENTS as i64).await;
    let per_event = deliveries_per_event(&receiver.received());
    assert_eq!(per_event.len(), EVENTS);
    assert!(per_event.values().all(|sends| sends.len() == 1));
    assert_eq!(app.finished_undelivered().await, 0);
    app.stop().await;
}
