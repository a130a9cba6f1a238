//! The benchmark of the hot paths, on real parts, stating ratios measured
//! in one run (machines differ from day to day; compare ratios, not times):
//!
//! 1. plugin call latency: the birthday component's `next-occurrence` and
//!    `format-message`, each in a fresh sandboxed `Store` as the host runs
//!    them (p50/p99);
//!    Then per language, the same for a Rust, a JavaScript and a Python type
//!    (the example types under `plugins/examples/`, when
//!    `plugins/examples/build.sh` has built them): compile time, load time
//!    from the compiled cache, and each call's p50/p99 with how much of it
//!    is the fresh instance;
//! 2. the receiver's speed: a plain HTTP client (reqwest, 64 requests in
//!    flight) POSTs N webhook-sized bodies into a receiver that runs in a
//!    process of its own (this binary, re-run with `--receiver`);
//! 3. kairos's speed: N due birthday events in a fresh PostgreSQL cluster,
//!    one host (claimer + delivery loop, defaults) sending signed webhooks to
//!    the same receiver; the rate is counted at the receiver, first request
//!    to last, as in (2), and stated as a ratio of (2);
//! 4. idle latency: the host idle, 1,000 events come due at one instant;
//!    the receiver records each arrival minus its `due_at` (p50/p99/max).
//!
//! What profiling found (perf at 999 Hz, software clock, on the host during
//! a 100k backlog; `pg_stat_statements` on the cluster), 2026-12-03:
//! - 309 µs of host CPU per delivery, 40 % of it in the kernel: resetting
//!   pooled plugin memories with `madvise` (and the page faults and TLB
//!   shootdowns after it) ~17 %, two `spawn_blocking` hand-offs per event,
//!   and one users query per event. Fixed by keeping slots resident
//!   (PAGEMAP_SCAN), preparing a claimed batch in a few blocking workers,
//!   and reading users in the claim: 111 µs. glibc malloc/free were then
//!   ~15 %: mimalloc.
//! - PostgreSQL: ~235 µs per delivery, mostly index insertions of the three
//!   non-HOT writes per delivery (claim, outcome, next occurrence) at ~7 µs
//!   per index; two of the six indexes went (see the migration
//!   `events_fewer_indexes`), claims wait for half the slots so each takes
//!   more events, and outcomes linger 5 ms to share a transaction. Moving
//!   finished events to `event_history` (one DELETE … INSERT) cost 15 µs
//!   per row where the status UPDATE cost 21, and keeps the claimed table
//!   the size of the backlog: 71 µs of PostgreSQL CPU per delivery.
//!
//! Run with `scripts/bench.sh` (builds the plugins first), or
//! `cargo bench -p kairos --bench throughput -- [--events N] [--calls N] [--with-pass]
//! [--plugins-only] [--history N]`. `--history N` puts N finished events
//! (with their attempts) on record over the 30 days before the run, as a
//! fleet holds at steady state, before the delivery figure.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use futures::StreamExt;
use kairos::config::Settings;
use kairos::embedded_pg::EmbeddedPostgres;
use kairos::plugin::{
    LoadedPlugin, PluginConfig, PluginLimits, PluginRuntime, PluginSource, Subject,
};
use kairos::startup::Application;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Requests a plain client keeps in flight: kairos's default concurrency.
const RAW_IN_FLIGHT: usize = 64;
/// Events due at one instant for the idle-latency figure.
const AT_ONE_INSTANT: usize = 1000;

struct Args {
    events: usize,
    calls: usize,
    /// Run birthday's scheduling pass over every user while delivering (as
    /// after a restart with a changed type): a stress check, slower.
    with_pass: bool,
    /// Only the plugin figures (1 and 1b), not the delivery ones.
    plugins_only: bool,
    /// Finished events (one attempt each) already on record, spread over
    /// the retention before today: the steady state of a running fleet.
    history: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        events: 100_000,
        calls: 20_000,
        with_pass: false,
        plugins_only: false,
        history: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--events" => args.events = it.next().unwrap_or_default().parse()?,
            "--calls" => args.calls = it.next().unwrap_or_default().parse()?,
            "--with-pass" => args.with_pass = true,
            "--plugins-only" => args.plugins_only = true,
            "--history" => args.history = it.next().unwrap_or_default().parse()?,
            // `cargo bench` passes `--bench`; ignore it and any filter.
            "--bench" => {}
            other if other.starts_with("--") => anyhow::bail!("unknown option {other}"),
            _ => {}
        }
    }
    anyhow::ensure!(
        args.events > 0 && args.calls > 0,
        "--events and --calls must be positive"
    );
    Ok(args)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("--receiver") {
        return receiver::serve();
    }
    let args = parse_args()?;
    // Warnings and errors only (RUST_LOG overrides): the figures stay readable
    // and anything that went wrong is on screen.
    if std::env::var_os("RUST_LOG").is_none() {
        // SAFETY: single-threaded here, before any other thread starts.
        unsafe { std::env::set_var("RUST_LOG", "warn") };
    }
    kairos::telemetry::init(kairos::config::LogFormat::Text);
    let wasm = workspace_root().join("dist/plugins/birthday.wasm");
    anyhow::ensure!(
        wasm.exists(),
        "{} is missing: run scripts/setup.sh (or scripts/bench.sh) first",
        wasm.display()
    );
    println!(
        "kairos benchmark, {} ({} cores, {})",
        Utc::now().format("%Y-%m-%d %H:%M UTC"),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model()
    );
    plugin_latency(&wasm, args.calls)?;
    language_costs(&wasm, args.calls)?;
    if args.plugins_only {
        return Ok(());
    }
    let mut receiver = Receiver::start()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        let raw = raw_post_rate(&receiver, args.events).await?;
        delivery_throughput(&wasm, &receiver, &args, raw).await
    });
    receiver.stop();
    result
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The loopback receiver both the plain client and kairos POST into, in a
/// process of its own, as a real receiver would be.
struct Receiver {
    child: Child,
    url: String,
    client: reqwest::Client,
}

impl Receiver {
    fn start() -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--receiver")
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        let port: u16 = line.trim().parse()?;
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        })
    }

    fn hook(&self) -> String {
        format!("{}/hook", self.url)
    }

    async fn reset(&self) -> anyhow::Result<()> {
        self.client
            .post(format!("{}/reset", self.url))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    async fn count(&self) -> anyhow::Result<usize> {
        Ok(self
            .client
            .get(format!("{}/count", self.url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    async fn stats(&self) -> anyhow::Result<receiver::Stats> {
        Ok(self
            .client
            .get(format!("{}/stats", self.url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

mod receiver {
    use super::*;

    #[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
    pub struct Stats {
        pub count: u64,
        /// Microseconds from the first request to the last.
        pub span_us: u64,
        /// Arrival minus the body's `due_at`, in microseconds, sorted.
        pub late_us: Vec<i64>,
    }

    impl Stats {
        pub fn rate(&self) -> f64 {
            if self.span_us == 0 {
                return 0.0;
            }
            // Requests after the first, over the time from first to last.
            (self.count.saturating_sub(1)) as f64 / (self.span_us as f64 / 1e6)
        }

        pub fn late_at(&self, q: f64) -> Duration {
            let i = ((self.late_us.len().saturating_sub(1)) as f64 * q) as usize;
            Duration::from_micros(self.late_us.get(i).copied().unwrap_or(0).max(0) as u64)
        }
    }

    #[derive(Default)]
    struct Seen {
        first: Option<Instant>,
        last: Option<Instant>,
        count: u64,
        late_us: Vec<i64>,
    }

    #[derive(serde::Deserialize)]
    struct Due {
        due_at: DateTime<Utc>,
    }

    type Shared = Arc<Mutex<Seen>>;

    pub fn serve() -> anyhow::Result<()> {
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async {
            let seen: Shared = Arc::default();
            let app = axum::Router::new()
                .route("/hook", axum::routing::post(hook))
                .route("/reset", axum::routing::post(reset))
                .route("/stats", axum::routing::get(stats))
                .route("/count", axum::routing::get(count))
                .with_state(seen);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            println!("{}", listener.local_addr()?.port());
            axum::serve(listener, app).await?;
            Ok(())
        })
    }

    async fn hook(State(seen): State<Shared>, body: axum::body::Bytes) -> StatusCode {
        let now = Instant::now();
        let late = serde_json::from_slice::<Due>(&body).ok().map(|d| {
            (Utc::now() - d.due_at)
                .num_microseconds()
                .unwrap_or(i64::MAX)
        });
        let mut seen = seen.lock().unwrap();
        seen.first.get_or_insert(now);
        seen.last = Some(now);
        seen.count += 1;
        seen.late_us.extend(late);
        StatusCode::NO_CONTENT
    }

    async fn reset(State(seen): State<Shared>) -> StatusCode {
        *seen.lock().unwrap() = Seen::default();
        StatusCode::NO_CONTENT
    }

    async fn count(State(seen): State<Shared>) -> axum::Json<u64> {
        axum::Json(seen.lock().unwrap().count)
    }

    async fn stats(State(seen): State<Shared>) -> axum::Json<Stats> {
        let seen = seen.lock().unwrap();
        let mut late_us = seen.late_us.clone();
        late_us.sort_unstable();
        axum::Json(Stats {
            count: seen.count,
            span_us: match (seen.first, seen.last) {
                (Some(a), Some(b)) => (b - a).as_micros() as u64,
                _ => 0,
            },
            late_us,
        })
    }
}

/// (2): how fast a plain HTTP client gets N webhook-sized bodies into the
/// receiver, `RAW_IN_FLIGHT` at a time.
async fn raw_post_rate(receiver: &Receiver, n: usize) -> anyhow::Result<f64> {
    receiver.reset().await?;
    let client = reqwest::Client::new();
    let hook = receiver.hook();
    let body = serde_json::to_vec(&serde_json::json!({
        "id": uuid::Uuid::new_v4(),
        "event_type": "birthday",
        "user_id": uuid::Uuid::new_v4(),
        "occurrence": "2026-12-10T09:00:00",
        "timezone": "Europe/London",
        "due_at": "2026-12-10T09:00:00Z",
        "message": { "text": "Hey, Ada Lovelace it's your birthday" },
    }))?;
    let failures = futures::stream::iter(0..n)
        .map(|_| {
            client
                .post(&hook)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
        })
        .buffer_unordered(RAW_IN_FLIGHT)
        .filter(|r| std::future::ready(!r.as_ref().is_ok_and(|r| r.status().is_success())))
        .count()
        .await;
    anyhow::ensure!(failures == 0, "{failures} plain POSTs failed");
    let stats = receiver.stats().await?;
    anyhow::ensure!(
        stats.count as usize == n,
        "receiver saw {} of {n}",
        stats.count
    );
    println!(
        "\nreceiver (its own process): a plain HTTP client, {RAW_IN_FLIGHT} in flight, {n} POSTs: {:.0}/s",
        stats.rate()
    );
    Ok(stats.rate())
}

fn plugin_latency(wasm: &Path, calls: usize) -> anyhow::Result<()> {
    let bytes = std::fs::read(wasm)?;
    let runtime = PluginRuntime::new(PluginLimits::default())?;
    let started = Instant::now();
    let plugin = LoadedPlugin::load(
        &runtime,
        &bytes,
        PluginConfig::new(),
        None,
        PluginSource::File(wasm.to_path_buf()),
    )?;
    println!(
        "\nplugin: {} {} ({} KiB), compiled and described in {:.1} ms",
        plugin.info.name,
        plugin.info.version,
        bytes.len() / 1024,
        started.elapsed().as_secs_f64() * 1e3
    );

    let subject = Subject {
        id: uuid::Uuid::new_v4(),
        first_name: "Ada".into(),
        last_name: "Lovelace".into(),
        timezone: "Europe/London".into(),
        dates: BTreeMap::from([(
            "birthday".to_string(),
            NaiveDate::from_ymd_opt(1815, 12, 10).expect("a valid date"),
        )]),
        attributes: BTreeMap::new(),
    };
    let after: NaiveDateTime = "2026-11-22T10:00:00".parse()?;
    let occurrence: NaiveDateTime = "2026-12-10T09:00:00".parse()?;

    let mut next = Vec::with_capacity(calls);
    let mut format = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        let got = plugin.next_occurrence(&subject, after)?;
        next.push(t.elapsed());
        anyhow::ensure!(got == Some(occurrence), "unexpected occurrence {got:?}");

        let t = Instant::now();
        let text = plugin.format_message(&subject, occurrence)?;
        format.push(t.elapsed());
        anyhow::ensure!(text.contains("Ada Lovelace"), "unexpected text {text}");
    }
    println!("{calls} calls each, one fresh Store per call:");
    report("next-occurrence", &mut next);
    report("format-message", &mut format);
    Ok(())
}

/// A component to measure per language, and a first name its type knows.
const LANGUAGES: [(&str, &str, &str); 2] = [
    ("JavaScript", "target/examples/work-anniversary.wasm", "Ada"),
    ("Python", "target/examples/name-day.wasm", "Anna"),
];

/// Compile, cached load and per-call cost of one component per language.
fn language_costs(rust: &Path, calls: usize) -> anyhow::Result<()> {
    let root = workspace_root();
    let mut components = vec![("Rust".to_string(), rust.to_path_buf(), "Ada")];
    for (language, path, first_name) in LANGUAGES {
        let path = root.join(path);
        if path.exists() {
            components.push((language.to_string(), path, first_name));
        } else {
            println!(
                "\n({language}: {} is missing; plugins/examples/build.sh builds it)",
                path.display()
            );
        }
    }
    println!("\nper language: compile, load from the compiled cache, calls in fresh instances");
    for (language, path, first_name) in components {
        let bytes = std::fs::read(&path)?;
        let cache =
            std::env::temp_dir().join(format!("kairos-bench-cache-{}", uuid::Uuid::new_v4()));
        let load = |runtime: &PluginRuntime| {
            let started = Instant::now();
            let plugin = LoadedPlugin::load(
                runtime,
                &bytes,
                PluginConfig::new(),
                None,
                PluginSource::File(path.clone()),
            );
            (plugin, started.elapsed())
        };
        let (fresh, compile) =
            load(&PluginRuntime::new(PluginLimits::default())?.with_cache(&cache)?);
        fresh?;
        let runtime = PluginRuntime::new(PluginLimits::default())?.with_cache(&cache)?;
        let (plugin, cached) = load(&runtime);
        let plugin = plugin?;
        let _ = std::fs::remove_dir_all(&cache);
        let subject = Subject {
            id: uuid::Uuid::new_v4(),
            first_name: first_name.into(),
            last_name: "Lovelace".into(),
            timezone: "Europe/London".into(),
            dates: plugin
                .info
                .dates
                .iter()
                .map(|name| {
                    (
                        name.clone(),
                        NaiveDate::from_ymd_opt(1990, 12, 10).expect("a date"),
                    )
                })
                .collect(),
            attributes: BTreeMap::new(),
        };
        let after: NaiveDateTime = "2026-11-22T10:00:00".parse()?;
        // An interpreter's call costs milliseconds: fewer of them.
        let n = if bytes.len() > 1 << 20 {
            (calls / 20).max(200)
        } else {
            calls
        };
        let (mut next, mut next_start, mut format, mut format_start) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for _ in 0..n {
            let (got, cost) = plugin.next_occurrence_reported(&subject, after);
            let occurrence = got?.ok_or_else(|| anyhow::anyhow!("{language}: no occurrence"))?;
            next.push(cost.elapsed);
            next_start.push(cost.instantiation);
            let (text, cost) = plugin.format_message_reported(&subject, occurrence);
            text?;
            format.push(cost.elapsed);
            format_start.push(cost.instantiation);
        }
        println!(
            "  {language:<10} {} {} ({:.1} MiB): compile {:.2} s, cached load {:.0} ms; {n} calls each:",
            plugin.info.name,
            plugin.info.version,
            bytes.len() as f64 / f64::from(1 << 20),
            compile.as_secs_f64(),
            cached.as_secs_f64() * 1e3
        );
        report("  next-occurrence", &mut next);
        report("    instantiation", &mut next_start);
        report("  format-message", &mut format);
        report("    instantiation", &mut format_start);
    }
    Ok(())
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "  {what:<16} mean {:>6.1} µs   p50 {:>6.1} µs   p99 {:>6.1} µs   max {:>7.1} µs",
        micros(mean),
        micros(at(0.5)),
        micros(at(0.99)),
        micros(at(1.0))
    );
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn delivery_throughput(
    wasm: &Path,
    receiver: &Receiver,
    args: &Args,
    raw: f64,
) -> anyhow::Result<()> {
    let bench_dir = workspace_root().join("target/bench");
    let pg_dir = bench_dir.join("postgres");
    let _ = std::fs::remove_dir_all(&bench_dir);
    let plugin_dir = bench_dir.join("plugins");
    std::fs::create_dir_all(&plugin_dir)?;
    std::fs::copy(wasm, plugin_dir.join("birthday.wasm"))?;

    let mut pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&pg_dir)).await??;
    let result = deliver_all(&pg, &plugin_dir, receiver, args, raw).await;
    tokio::task::spawn_blocking(move || pg.stop()).await??;
    result
}

async fn deliver_all(
    pg: &EmbeddedPostgres,
    plugin_dir: &Path,
    receiver: &Receiver,
    args: &Args,
    raw: f64,
) -> anyhow::Result<()> {
    let (events, with_pass) = (args.events, args.with_pass);
    let url = pg.ensure_database().await?;
    let pool = sqlx::PgPool::connect(&url).await?;
    kairos::startup::migrate(&pool).await?;
    if args.history > 0 {
        fill_history(&pool, args.history).await?;
    }
    let before = record_size(&pool).await?;
    let delivered_before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM event_history WHERE status = 'delivered'")
            .fetch_one(&pool)
            .await?;

    // Users across five offsets, each with a birthday event already due: the
    // birthday was two days ago (before today in every zone), its event is
    // overdue, and the next one is next year's.
    let seeded = Instant::now();
    sqlx::query(
        "INSERT INTO users (id, first_name, last_name, timezone, dates)
         SELECT gen_random_uuid(), 'User', 'No. ' || i,
                (ARRAY['Europe/London', 'America/New_York', 'Asia/Kolkata',
                       'Australia/Sydney', 'Pacific/Kiritimati'])[i % 5 + 1],
                jsonb_build_object('birthday', to_char(current_date - 2 - interval '30 years', 'YYYY-MM-DD'))
         FROM generate_series(1, $1) AS i",
    )
    .bind(events as i64)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO events (id, user_id, event_type, occurrence, timezone, due_at, run_at)
         SELECT gen_random_uuid(), id, 'birthday', (current_date - 2) + time '09:00', timezone,
                now() - interval '1 minute', now() - interval '1 minute'
         FROM users",
    )
    .execute(&pool)
    .await?;
    // Without --with-pass, birthday has been scheduled for everyone before
    // (the steady state of a running deployment): the host skips the start-up
    // scheduling pass, and the figure is deliveries alone. With it, nothing
    // is recorded, so the host's start-up pass walks every user while the
    // deliveries run.
    if !with_pass {
        let sha256 = {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(std::fs::read(plugin_dir.join("birthday.wasm"))?);
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        sqlx::query(
            "INSERT INTO event_type_passes (event_type, sha256, config, completed_at) \
             VALUES ('birthday', $1, '{}', now())",
        )
        .bind(sha256)
        .execute(&pool)
        .await?;
    }
    println!(
        "\ndelivery: {events} due events seeded in {:.1} s",
        seeded.elapsed().as_secs_f64()
    );

    let hook = receiver.hook();
    receiver.reset().await?;

    let settings = Settings::from_args([
        "kairos",
        "--bind",
        "127.0.0.1:0",
        "--database-url",
        &url,
        "--plugin-dir",
        &plugin_dir.display().to_string(),
        "--webhook-url",
        &hook,
        "--webhook-secret",
        SECRET,
    ])?;
    println!(
        "one host: batch {}, concurrency {}, {} database connections, signed webhooks{}",
        settings.batch_size,
        settings.concurrency,
        settings.db_max_connections,
        if with_pass {
            ", birthday's scheduling pass running at the same time"
        } else {
            ""
        }
    );
    let app = Application::build(settings).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let host = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));

    // Progress is read at the receiver, so the database serves the host
    // alone while it drains; the outcomes are checked in the database after.
    let mut last_print = Instant::now();
    loop {
        let received = receiver.count().await?;
        if received >= events {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            println!("  … {received}/{events} received");
            last_print = Instant::now();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "gave up after 10 minutes with {received}/{events} received"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    loop {
        let delivered: i64 =
            sqlx::query_scalar("SELECT count(*) FROM event_history WHERE status = 'delivered'")
                .fetch_one(&pool)
                .await?;
        let delivered = (delivered - delivered_before) as usize;
        if delivered >= events {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "gave up after 10 minutes with {delivered}/{events} delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    let pass_finished_within = if with_pass {
        // The pass must really have run, over every user, during the run.
        let finished: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "SELECT completed_at FROM event_type_passes WHERE event_type = 'birthday'",
        )
        .fetch_optional(&pool)
        .await?
        .flatten();
        Some(finished)
    } else {
        None
    };
    let at_receiver = receiver.stats().await?;
    anyhow::ensure!(
        at_receiver.count as usize == events,
        "receiver saw {} requests for {events} events",
        at_receiver.count
    );
    let planned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE status = 'pending' AND occurrence > current_date",
    )
    .fetch_one(&pool)
    .await?;
    anyhow::ensure!(
        planned as usize == events,
        "{planned} next occurrences planned for {events} deliveries"
    );
    // What this run added to the record.
    let record: Vec<_> = record_size(&pool)
        .await?
        .into_iter()
        .zip(before)
        .map(|((table, rows, bytes), (_, rows_before, bytes_before))| {
            (table, rows - rows_before, bytes - bytes_before)
        })
        .collect();

    let latency = idle_latency(&pool, receiver).await;
    let _ = stop.send(());
    host.await??;
    pool.close().await;
    let latency = latency?;

    println!(
        "  {events} delivered (each: claim, format-message, signed POST, plan next, complete) in {:.2} s",
        elapsed.as_secs_f64()
    );
    println!(
        "  at the receiver, first to last: {:.0}/s = {:.2} x the plain client's {:.0}/s",
        at_receiver.rate(),
        at_receiver.rate() / raw,
        raw
    );
    for (table, rows, bytes) in &record {
        println!(
            "  {table}: {rows} rows, {:.1} MB with indexes = {:.0} bytes per delivery (MB per million deliveries)",
            *bytes as f64 / 1e6,
            *bytes as f64 / events as f64
        );
    }
    println!(
        "\nidle host, {AT_ONE_INSTANT} events due at one instant: due -> received p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        latency.late_at(0.5).as_secs_f64() * 1e3,
        latency.late_at(0.99).as_secs_f64() * 1e3,
        latency.late_at(1.0).as_secs_f64() * 1e3
    );
    match pass_finished_within {
        None => {}
        Some(Some(at)) => println!(
            "  birthday's scheduling pass over all {events} users ran alongside and finished at {at}"
        ),
        Some(None) => println!(
            "  birthday's scheduling pass over all {events} users was still running when the last event was delivered"
        ),
    }
    Ok(())
}

/// `rows` finished events of other users, each delivered at its first
/// attempt, due over the 30 days before today, in the keeper's daily
/// partitions (one keeper pass makes them, as the host's would).
async fn fill_history(pool: &sqlx::PgPool, rows: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let settings = Settings::from_args(["kairos"])?.retention_settings();
    kairos::retention::keep(pool, Utc::now(), settings).await?;
    sqlx::query(
        "INSERT INTO event_history (id, user_id, event_type, occurrence, timezone, due_at, \
             run_at, status, attempts, attempts_before_retry, delivered_at, created_at, \
             updated_at, event_type_version, attempt_at, attempt_replica, attempt_status, \
             attempt_latency_ms, attempt_outcome) \
         SELECT gen_random_uuid(), gen_random_uuid(), 'birthday', \
                date_trunc('day', d) + time '09:00', 'Europe/London', d, d, 'delivered', 1, 0, \
                d, d - interval '1 year', d, '0.1.0', d, gen_random_uuid(), 200, 3, 'delivered' \
         FROM (SELECT current_date - interval '30 days' + random() * interval '30 days' AS d \
               FROM generate_series(1, $1)) s",
    )
    .bind(rows as i64)
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE").execute(pool).await?;
    println!(
        "\nhistory: {rows} finished events and their attempts over the last 30 days, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The record a run left: rows, and bytes on disk with indexes and TOAST
/// over every partition, of the history and the attempt log.
async fn record_size(pool: &sqlx::PgPool) -> anyhow::Result<Vec<(&'static str, i64, i64)>> {
    let mut sizes = Vec::new();
    for table in ["event_history", "event_attempts"] {
        // `table` is one of the two names above.
        let (rows, bytes): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT (SELECT count(*) FROM {table}), \
                 (SELECT coalesce(sum(pg_total_relation_size(relid)), 0)::int8 \
                  FROM pg_partition_tree('{table}'))"
        )))
        .fetch_one(pool)
        .await?;
        sizes.push((table, rows, bytes));
    }
    Ok(sizes)
}

/// (4): with the host idle, `AT_ONE_INSTANT` users whose birthday events all
/// come due at one instant a few seconds ahead; waits until the receiver has
/// them all and returns what it saw.
async fn idle_latency(pool: &sqlx::PgPool, receiver: &Receiver) -> anyhow::Result<receiver::Stats> {
    receiver.reset().await?;
    let due: DateTime<Utc> = sqlx::query_scalar(
        "WITH u AS ( \
             INSERT INTO users (id, first_name, last_name, timezone, dates) \
             SELECT gen_random_uuid(), 'Idle', 'No. ' || i, 'Europe/London', \
                    '{\"birthday\": \"1990-01-01\"}'::jsonb \
             FROM generate_series(1, $1) AS i RETURNING id), \
         t AS (SELECT date_trunc('second', now()) + interval '3 seconds' AS at) \
         INSERT INTO events (id, user_id, event_type, occurrence, timezone, due_at, run_at) \
         SELECT gen_random_uuid(), u.id, 'birthday', '2026-01-01 09:00', 'Europe/London', t.at, t.at \
         FROM u, t RETURNING due_at",
    )
    .bind(AT_ONE_INSTANT as i64)
    .fetch_all(pool)
    .await?
    .into_iter()
    .next()
    .ok_or_else(|| anyhow::anyhow!("no events written"))?;
    let started = Instant::now();
    loop {
        let received = receiver.count().await?;
        if received >= AT_ONE_INSTANT {
            return receiver.stats().await;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "{received} of {AT_ONE_INSTANT} events due at {due} received after a minute"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
