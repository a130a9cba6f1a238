//! The test harness: one throwaway PostgreSQL cluster per test run (from the
//! machine's binaries), a migrated template database cloned per test, the real
//! plugin components built from source, a real webhook receiver on port 0,
//! and the app itself on port 0.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use kairos::claimer::Claimer;
use kairos::config::Settings;
use kairos::delivery::Deliverer;
use kairos::embedded_pg::EmbeddedPostgres;
use kairos::event_types::EventTypes;
use kairos::plugin::Registry;
use kairos::replan::Replanner;
use kairos::startup::Application;
use kairos::supervisor::LoopState;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};
use uuid::Uuid;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const ADMIN_TOKEN: &str = "test-admin-token";
const TEMPLATE_DB: &str = "kairos_template";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

struct Cluster {
    pg: Mutex<Option<EmbeddedPostgres>>,
    url_base: String,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static CREATE_DB: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

extern "C" fn stop_cluster() {
    if let Some(cluster) = CLUSTER.get()
        && let Ok(mut pg) = cluster.pg.lock()
        && let Some(mut pg) = pg.take()
    {
        let _ = pg.stop();
    }
}

/// Starts a fresh cluster for this test process and migrates the template.
fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        std::thread::spawn(|| {
            let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
            remove_stale_clusters(&tmp);
            // One cluster per test process: two test runs at once (another
            // worktree sharing this target directory) each keep their own.
            let dir = tmp.join(format!("test-postgres-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let pg = EmbeddedPostgres::start(&dir.join("postgres"))
                .expect("start the test PostgreSQL cluster");
            let url_base = pg.url("DBNAME");
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let admin = PgPool::connect(&url_base.replace("DBNAME", "postgres"))
                    .await
                    .unwrap();
                sqlx::query(concat!("CREATE DATABASE ", "kairos_template"))
                    .execute(&admin)
                    .await
                    .unwrap();
                let template = PgPool::connect(&url_base.replace("DBNAME", TEMPLATE_DB))
                    .await
                    .unwrap();
                kairos::startup::migrate(&template).await.unwrap();
                template.close().await;
                admin.close().await;
            });
            // SAFETY: registering a plain extern "C" function with no captured state.
            unsafe { libc::atexit(stop_cluster) };
            Cluster {
                pg: Mutex::new(Some(pg)),
                url_base,
            }
        })
        .join()
        .expect("cluster set-up")
    })
}

/// Stops and removes the clusters of test processes that are gone (a run
/// that died leaves its cluster running).
fn remove_stale_clusters(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("test-postgres"))
            .map(|rest| rest.trim_start_matches('-'))
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && Path::new("/proc").join(pid).exists() {
            continue;
        }
        let dir = entry.path();
        if dir.join("postgres/data/PG_VERSION").exists()
            && let Ok(mut old) = EmbeddedPostgres::start(&dir.join("postgres"))
        {
            let _ = old.stop();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A fresh, migrated database of the test cluster.
pub async fn fresh_database() -> String {
    let cluster = cluster();
    let name = format!("test_{}", Uuid::new_v4().simple());
    let _guard = CREATE_DB.lock().await;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&cluster.url_base.replace("DBNAME", "postgres"))
        .await
        .unwrap();
    // The name is ours: "test_" and a UUID's hex digits.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}"
    )))
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
    cluster.url_base.replace("DBNAME", &name)
}

/// The compiled component of a plugin crate under `plugins/`, built once per
/// test run from its current source.
pub fn plugin_wasm(crate_name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let target_dir = workspace_root().join("target/plugins");
    BUILT.get_or_init(|| {
        let status = Command::new(option_env!("CARGO").unwrap_or("cargo"))
            .current_dir(workspace_root())
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--target-dir",
            ])
            .arg(&target_dir)
            .args(["-p", "kairos-birthday", "-p", "kairos-anniversary"])
            .args(["-p", "kairos-misbehave", "-p", "kairos-compat-v0-1-0"])
            .args(["-p", "kairos-birthday-next"])
            .status()
            .expect("run cargo to build the plugins");
        assert!(
            status.success(),
            "building the plugins failed (is the wasm32-wasip2 target installed?)"
        );
    });
    target_dir
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", crate_name.replace('-', "_")))
}

/// The bytes of a built plugin crate's component.
pub fn plugin_bytes(crate_name: &str) -> Vec<u8> {
    std::fs::read(plugin_wasm(crate_name)).unwrap()
}

/// Waits until `check` holds, polling; fails the test after `limit`. For
/// what happens on its own time (file-system events), not for the clock.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plugin directory holding the birthday plugin, with an optional `birthday.toml`.
pub fn plugin_dir_with_birthday(toml: Option<&str>) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("plugins-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(plugin_wasm("kairos-birthday"), dir.join("birthday.wasm")).unwrap();
    if let Some(toml) = toml {
        std::fs::write(dir.join("birthday.toml"), toml).unwrap();
    }
    dir
}

/// One webhook request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: std::time::Instant,
    /// Path and query the request was sent to.
    pub uri: String,
    pub headers: HeaderMap,
    pub raw: Bytes,
    pub body: Value,
    /// The status the receiver answered with.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    /// Statuses to answer with, in order; 200 once empty. `HANG` never answers.
    script: Mutex<VecDeque<u16>>,
    /// While set: every request is answered with this status and, when
    /// given, this `Retry-After` (an outage), scripts aside.
    outage: Mutex<Option<(u16, Option<String>)>>,
    arrived: Notify,
}

/// A real HTTP webhook receiver on a loopback port.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
}

impl Receiver {
    pub async fn start() -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap()).await
    }

    /// A receiver on this address (one that refused connections until now).
    pub async fn start_at(addr: SocketAddr) -> Self {
        let state = Arc::new(ReceiverState::default());
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answer the next requests with these statuses (or `HANG`), then 200.
    pub fn respond_with(&self, statuses: &[u16]) {
        self.state.script.lock().unwrap().extend(statuses);
    }

    /// Answers every request with `status` (and `Retry-After: retry_after`)
    /// until `end_outage`.
    pub fn start_outage(&self, status: u16, retry_after: Option<&str>) {
        *self.state.outage.lock().unwrap() = Some((status, retry_after.map(str::to_string)));
    }

    pub fn end_outage(&self) {
        *self.state.outage.lock().unwrap() = None;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests have arrived, or fails after `limit`.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        tokio::time::timeout(limit, async {
            loop {
                let notified = self.state.arrived.notified();
                if self.state.received.lock().unwrap().len() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "expected {n} webhook(s) within {limit:?}, got {}",
                self.received().len()
            )
        });
        self.received()
    }
}

/// A scripted "status" that never answers: the request stays in flight
/// until the sender gives up.
pub const HANG: u16 = 0;

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let outage = state.outage.lock().unwrap().clone();
    let (status, retry_after) = match outage {
        Some(answer) => answer,
        None => (
            state.script.lock().unwrap().pop_front().unwrap_or(200),
            None,
        ),
    };
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    state.received.lock().unwrap().push(Received {
        at: std::time::Instant::now(),
        uri: uri.to_string(),
        headers,
        raw,
        body,
        status,
    });
    state.arrived.notify_waiters();
    if status == HANG {
        std::future::pending::<()>().await;
    }
    let status = StatusCode::from_u16(status).unwrap();
    match retry_after {
        Some(value) => (status, [("retry-after", value)]).into_response(),
        None => status.into_response(),
    }
}

/// The app under test, its database and its receiver.
pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub pool: PgPool,
    pub receiver: Receiver,
    pub database_url: String,
    pub settings: Settings,
    pub deliverer: Arc<Deliverer>,
    pub registry: Arc<Registry>,
    pub event_types: Arc<EventTypes>,
    pub endpoints: Arc<kairos::endpoints::Endpoints>,
    /// The supervised claimer's state (fault injection, restarts).
    pub claimer_state: Arc<LoopState>,
    claimer: Claimer,
    replanner: Replanner,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Test settings: loopback port 0, the receiver as webhook, a signing secret,
/// fast retries, and the background claimer off (tests step it).
pub fn test_settings(database_url: &str, receiver: &Receiver) -> Settings {
    let mut settings = Settings::from_args(["kairos-test"]).unwrap();
    settings.database_url = Some(database_url.to_string());
    settings.bind = "127.0.0.1:0".parse().unwrap();
    settings.data_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("data-{}", Uuid::new_v4().simple()));
    settings.plugin_dir = plugin_dir_with_birthday(None);
    settings.webhook_url = Some(receiver.url());
    settings.webhook_secret = Some(SECRET.to_string());
    settings.retry_base = Duration::from_millis(10);
    settings.retry_max = Duration::from_millis(50);
    settings.http_timeout = Duration::from_secs(2);
    settings.lease = Duration::from_secs(30);
    settings.max_attempts = 3;
    settings.claimer = false;
    settings.db_max_connections = 5;
    settings.admin_token = Some(ADMIN_TOKEN.to_string());
    settings.watch_debounce = Duration::from_millis(50);
    settings
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let receiver = Receiver::start().await;
    let database_url = fresh_database().await;
    let mut settings = test_settings(&database_url, &receiver);
    configure(&mut settings);
    spawn_app_on(settings, receiver).await
}

/// With `KAIROS_TEST_LOG` set (an `EnvFilter`, e.g. `kairos=debug`), the
/// host's logs go to each test's captured output, shown when it fails.
fn init_test_logs() {
    if let Ok(filter) = std::env::var("KAIROS_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Starts an app with exactly these settings (a second replica, a restart).
pub async fn spawn_app_on(settings: Settings, receiver: Receiver) -> TestApp {
    init_test_logs();
    let database_url = settings.database_url.clone().unwrap();
    let app = Application::build(settings.clone())
        .await
        .expect("build the app");
    let base = format!("http://{}", app.local_addr());
    let pool = app.state().pool.clone();
    let claimer = app.claimer();
    let replanner = app.replanner();
    let claimer_state = app.claimer_state();
    let deliverer = app.deliverer();
    let registry = app.state().registry.clone();
    let event_types = app.state().event_types.clone();
    let endpoints = app.state().endpoints.clone();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    // The start-up scheduling passes finish first: a pass still running
    // would rightly replace an event whose due time a test moved by hand.
    event_types.settle().await;
    TestApp {
        base,
        http: reqwest::Client::new(),
        pool,
        receiver,
        database_url,
        settings,
        deliverer,
        registry,
        event_types,
        endpoints,
        claimer_state,
        claimer,
        replanner,
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .put(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.http.delete(self.url(path)).send().await.unwrap()
    }

    /// `PUT /event-types/{name}` with the admin token and `query` (e.g. `?config.send_at=10:00`).
    pub async fn put_type(&self, name: &str, query: &str, bytes: Vec<u8>) -> reqwest::Response {
        self.http
            .put(self.url(&format!("/event-types/{name}{query}")))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/wasm")
            .body(bytes)
            .send()
            .await
            .unwrap()
    }

    /// `DELETE /event-types/{name}` with the admin token.
    pub async fn delete_type(&self, name: &str) -> reqwest::Response {
        self.http
            .delete(self.url(&format!("/event-types/{name}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
    }

    /// The loaded types as `GET /event-types` lists them.
    pub async fn event_types(&self) -> Vec<Value> {
        let response = self.get("/event-types").await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Creates a user and returns its JSON; panics unless 201.
    pub async fn create_user(&self, body: &Value) -> Value {
        let response = self.post_json("/users", body).await;
        let status = response.status();
        let json: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "{json}");
        json
    }

    pub async fn events_of(&self, user_id: &str) -> Vec<Value> {
        let response = self.get(&format!("/users/{user_id}/events")).await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Creates Ada and returns (user id, her birthday event id).
    pub async fn ada_with_event(&self) -> (String, String) {
        let user = self.create_user(&ada()).await;
        let user_id = user["id"].as_str().unwrap().to_string();
        let event_id = self.events_of(&user_id).await[0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        (user_id, event_id)
    }

    /// Makes an event due now, as if its time had come.
    pub async fn make_due(&self, event_id: &str) {
        let id = Uuid::parse_str(event_id).unwrap();
        let updated = sqlx::query(
            "UPDATE events SET due_at = now() - interval '1 second', run_at = now() - interval '1 second' WHERE id = $1",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .unwrap()
        .rows_affected();
        assert_eq!(updated, 1);
    }

    /// Makes a pending event runnable now without moving its due time, as
    /// a claimer whose clock runs ahead would take it (its history and
    /// attempts are filed by that due time).
    pub async fn make_runnable(&self, event_id: &str) {
        let updated =
            sqlx::query("UPDATE events SET run_at = now() - interval '1 second' WHERE id = $1")
                .bind(Uuid::parse_str(event_id).unwrap())
                .execute(&self.pool)
                .await
                .unwrap()
                .rows_affected();
        assert_eq!(updated, 1);
    }

    /// One claimer step: claim due events, deliver, record. Returns the count claimed.
    pub async fn run_claimer_once(&self) -> usize {
        self.claimer.run_once().await.expect("claimer step")
    }

    /// One replanner step: plans the recorded pairs of the types loaded here.
    pub async fn run_replanner_once(&self) -> usize {
        self.replanner.run_once().await.expect("replanner step")
    }

    /// Waits until the event's status is `status` (the claimer loop runs on
    /// its own time), and returns it.
    pub async fn wait_for_status(&self, event_id: &str, status: &str) -> Value {
        let id = Uuid::parse_str(event_id).unwrap();
        eventually(
            &format!("event {event_id} to be {status}"),
            Duration::from_secs(20),
            || async {
                let now: String = sqlx::query_scalar("SELECT status FROM all_events WHERE id = $1")
                    .bind(id)
                    .fetch_one(&self.pool)
                    .await
                    .unwrap();
                now == status
            },
        )
        .await;
        self.event(event_id).await
    }

    /// The recorded (user, type) pairs waiting to be planned again, with
    /// their reason and attempts.
    pub async fn replans(&self) -> Vec<(Uuid, String, String, i32)> {
        sqlx::query_as(
            "SELECT user_id, event_type, reason, attempts FROM replans ORDER BY user_id, event_type",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    pub async fn event(&self, event_id: &str) -> Value {
        let all: Vec<Value> = self.get("/events?limit=1000").await.json().await.unwrap();
        all.into_iter()
            .find(|e| e["id"] == event_id)
            .unwrap_or_else(|| panic!("event {event_id} not listed"))
    }

    /// Wakes every claimer on this database, as an event becoming due does.
    pub async fn wake_claimers(&self) {
        sqlx::query("SELECT pg_notify('kairos_events', '')")
            .execute(&self.pool)
            .await
            .unwrap();
    }

    /// Turns every event into one missed while the hosts were down: its
    /// occurrence a year earlier, so it is due (and long past) now.
    pub async fn miss_every_event(&self) {
        sqlx::query(
            "UPDATE events SET occurrence = occurrence - interval '1 year', \
                 due_at = due_at - interval '1 year', run_at = due_at - interval '1 year'",
        )
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// Finished events that did not end delivered (failed or cancelled).
    pub async fn finished_undelivered(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM event_history WHERE status <> 'delivered'")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Stops the app as SIGTERM would and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn ada() -> Value {
    serde_json::json!({
        "first_name": "Ada",
        "last_name": "Lovelace",
        "timezone": "Europe/London",
        "dates": {"birthday": "1815-12-10", "anniversary": "1835-07-08"},
        "attributes": {"email": "ada@example.com"}
    })
}

/// `text` percent-encoded for a query string.
pub fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `kairos serve` as a real process on `database_url`, sending to
/// `receiver`, with these extra settings (environment variables): a replica
/// a test can kill with SIGKILL. Output goes to `<data dir>.log`.
pub struct KairosProcess {
    pub child: tokio::process::Child,
    pub base: String,
}

impl KairosProcess {
    /// Starts it and waits until `/ready` answers `200`.
    pub async fn start(database_url: &str, receiver: &Receiver, env: &[(&str, &str)]) -> Self {
        let data_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("process-{}", Uuid::new_v4().simple()));
        Self::start_in(&data_dir, database_url, receiver, env).await
    }

    /// `start` with this data directory (a restart of the same replica).
    pub async fn start_in(
        data_dir: &Path,
        database_url: &str,
        receiver: &Receiver,
        env: &[(&str, &str)],
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .unwrap();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kairos"));
        command
            .arg("serve")
            .env("DATABASE_URL", database_url)
            .env("KAIROS_BIND", format!("127.0.0.1:{port}"))
            .env("KAIROS_DATA_DIR", data_dir)
            .env("KAIROS_PLUGIN_DIR", plugin_dir_with_birthday(None))
            .env("KAIROS_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("KAIROS_WEBHOOK_URL", receiver.url())
            .env("KAIROS_WEBHOOK_SECRET", SECRET)
            .env("KAIROS_WATCH", "false")
            .env("RUST_LOG", "kairos=info")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        let child = command.spawn().expect("start a kairos process");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        eventually(
            "the process to be ready",
            Duration::from_secs(30),
            || async {
                http.get(format!("{base}/ready"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            },
        )
        .await;
        Self { child, base }
    }

    /// SIGKILL, and waits for it to be gone.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}
