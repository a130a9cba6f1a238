//! Rough figures for the two hot paths, on real parts:
//!
//! 1. plugin call latency: the birthday component's `next-occurrence` and
//!    `format-message`, each in a fresh sandboxed `Store` as the host runs them;
//! 2. delivery throughput: N due events in a fresh PostgreSQL cluster, one
//!    host (claimer + delivery loop) sending signed webhooks to a loopback
//!    receiver, timed from start until every event is `delivered`.
//!
//! Run with `scripts/bench.sh` (builds the plugins first), or
//! `cargo bench -p kairos --bench throughput -- [--events N] [--calls N] [--with-pass]`.

use axum::http::StatusCode;
use chrono::{NaiveDate, NaiveDateTime};
use kairos::config::Settings;
use kairos::embedded_pg::EmbeddedPostgres;
use kairos::plugin::{
    LoadedPlugin, PluginConfig, PluginLimits, PluginRuntime, PluginSource, Subject,
};
use kairos::startup::Application;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

struct Args {
    events: usize,
    calls: usize,
    /// Run birthday's scheduling pass over every user while delivering (as
    /// after a restart with a changed type): a stress check, slower.
    with_pass: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        events: 20_000,
        calls: 20_000,
        with_pass: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--events" => args.events = it.next().unwrap_or_default().parse()?,
            "--calls" => args.calls = it.next().unwrap_or_default().parse()?,
            "--with-pass" => args.with_pass = true,
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
        "kairos benchmark ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    plugin_latency(&wasm, args.calls)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(delivery_throughput(&wasm, args.events, args.with_pass))
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

async fn delivery_throughput(wasm: &Path, events: usize, with_pass: bool) -> anyhow::Result<()> {
    let bench_dir = workspace_root().join("target/bench");
    let pg_dir = bench_dir.join("postgres");
    let _ = std::fs::remove_dir_all(&bench_dir);
    let plugin_dir = bench_dir.join("plugins");
    std::fs::create_dir_all(&plugin_dir)?;
    std::fs::copy(wasm, plugin_dir.join("birthday.wasm"))?;

    let mut pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&pg_dir)).await??;
    let result = deliver_all(&pg, &plugin_dir, events, with_pass).await;
    tokio::task::spawn_blocking(move || pg.stop()).await??;
    result
}

async fn deliver_all(
    pg: &EmbeddedPostgres,
    plugin_dir: &Path,
    events: usize,
    with_pass: bool,
) -> anyhow::Result<()> {
    let url = pg.ensure_database().await?;
    let pool = sqlx::PgPool::connect(&url).await?;
    kairos::startup::migrate(&pool).await?;

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

    let received = Arc::new(AtomicUsize::new(0));
    let receiver = {
        let received = received.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let received = received.clone();
                async move {
                    received.fetch_add(1, Ordering::Relaxed);
                    StatusCode::NO_CONTENT
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, receiver).await });

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

    let mut last_print = Instant::now();
    loop {
        let delivered: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE status = 'delivered'")
                .fetch_one(&pool)
                .await?;
        if delivered as usize >= events {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            println!("  … {delivered}/{events} delivered");
            last_print = Instant::now();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "gave up after 10 minutes with {delivered}/{events} delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
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
    let _ = stop.send(());
    host.await??;

    let planned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE status = 'pending' AND occurrence > current_date",
    )
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    anyhow::ensure!(
        received.load(Ordering::Relaxed) == events,
        "receiver saw {} requests for {events} events",
        received.load(Ordering::Relaxed)
    );
    anyhow::ensure!(
        planned as usize == events,
        "{planned} next occurrences planned for {events} deliveries"
    );
    println!(
        "  {events} delivered (each: claim, format-message, signed POST, plan next, complete) in {:.2} s = {:.0} deliveries/s",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64()
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
