//! Wiring: database (embedded or given), migrations, plugins, HTTP server,
//! the supervised claimer and replanner, and a shutdown that stops them in
//! order within the grace period.

use crate::claimer::Claimer;
use crate::config::Settings;
use crate::delivery::Deliverer;
use crate::embedded_pg::EmbeddedPostgres;
use crate::endpoints::Endpoints;
use crate::event_types::{EventTypes, FleetSettings};
use crate::http::{self, AppState};
use crate::outbound::{self, AllowList};
use crate::plugin::{PluginRuntime, Registry, watcher};
use crate::replan::Replanner;
use crate::supervisor::{self, LoopState};
use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use tokio::net::TcpListener;

pub struct Application {
    settings: Settings,
    listener: TcpListener,
    state: AppState,
    deliverer: Arc<Deliverer>,
    /// The claimer's state, shared by every claimer the supervisor starts.
    claimer_state: Arc<LoopState>,
    replanner_state: Arc<LoopState>,
    follower_state: Arc<LoopState>,
    endpoints_state: Arc<LoopState>,
    keeper_state: Arc<LoopState>,
    /// The operational webhooks' sender, when `KAIROS_OPS_WEBHOOK_URL` is set.
    ops_state: Option<Arc<LoopState>>,
    /// Kept so the embedded cluster stops when the application is dropped.
    embedded: Option<EmbeddedPostgres>,
    /// Kept so the plugin directory stays watched while the application runs.
    watcher: Option<watcher::DirWatcher>,
}

impl Application {
    /// Connects (starting the embedded cluster if no URL is given), migrates,
    /// loads the plugin directory and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let settings = settings.without_empty_values();
        settings.validate()?;
        crate::metrics::install();
        let (database_url, embedded) = match &settings.database_url {
            Some(url) => (url.clone(), None),
            None => {
                let dir = settings.data_dir.join("postgres");
                let embedded = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir))
                    .await?
                    .context(
                        "starting the embedded PostgreSQL (set DATABASE_URL to use another)",
                    )?;
                (embedded.ensure_database().await?, Some(embedded))
            }
        };
        // JIT off for the host's sessions: PostgreSQL compiles a query with
        // LLVM once its estimated cost passes `jit_above_cost`, and planning
        // 500 rows against a month of daily history partitions passes it —
        // `insert_planned` then spent ~100 ms compiling for 27 ms of work.
        // Every statement here is short; none gains from JIT.
        let options = PgConnectOptions::from_str(&database_url)
            .context("DATABASE_URL is not a PostgreSQL URL")?
            .options([("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.db_max_connections)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(options)
            .await
            .context("connecting to PostgreSQL")?;
        migrate(&pool).await?;

        let listener = TcpListener::bind(settings.bind)
            .await
            .with_context(|| format!("binding {}", settings.bind))?;
        let runtime = PluginRuntime::new(settings.plugin_limits())?
            .with_cache(&settings.data_dir.join("cache"))?;
        let registry = Arc::new(Registry::new(runtime));
        let fleet = FleetSettings {
            replica: uuid::Uuid::now_v7(),
            host: replica_host(listener.local_addr()?),
            heartbeat: settings.heartbeat,
            batch: settings.schedule_batch as usize,
            follow: settings.follow,
        };
        tracing::info!(replica = %fleet.replica, host = %fleet.host, "joining the fleet");
        let replica = fleet.replica;
        let event_types = Arc::new(EventTypes::new(
            pool.clone(),
            registry.clone(),
            settings.plugin_dir.clone(),
            settings.data_dir.join("plugins"),
            fleet,
        ));
        let loaded = event_types.start().await?;
        tracing::info!(types = ?loaded, dir = %settings.plugin_dir.display(), "serving the fleet's event types");
        let watcher = if settings.watch && settings.plugin_dir.is_dir() {
            let (watcher, changes) = watcher::watch(&settings.plugin_dir, settings.watch_debounce)
                .context("watching the plugin directory")?;
            tokio::spawn(follow_plugin_dir(event_types.clone(), changes));
            Some(watcher)
        } else {
            None
        };

        let allow = Arc::new(settings.webhook_allow.clone());
        tracing::info!(allow = %allow, "webhooks may reach public addresses and these ranges (KAIROS_WEBHOOK_ALLOW)");
        if let Some(url) = &settings.webhook_url {
            warn_if_refused("KAIROS_WEBHOOK_URL", url, &allow).await;
        }
        let client = outbound::client_builder(allow.clone())
            .timeout(settings.http_timeout)
            .connect_timeout(settings.http_timeout)
            .user_agent(concat!("kairos/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let endpoints = Arc::new(Endpoints::new(
            pool.clone(),
            registry.clone(),
            settings.webhook_url.clone(),
            settings.endpoint_settings(),
        ));
        endpoints
            .refresh()
            .await
            .context("reading the fleet's endpoints")?;
        let deliverer = Arc::new(
            Deliverer::new(registry.clone(), client, settings.delivery(), replica)
                .with_endpoints(endpoints.clone()),
        );
        let tokens = http::auth::Tokens::new(
            settings.admin_token.as_deref(),
            settings.api_tokens.as_deref(),
        );
        if tokens.clients_open() {
            tracing::warn!(
                bind = %settings.bind,
                "KAIROS_API_TOKENS is not set: client routes (/users, /events) are open to anyone who can reach this loopback address"
            );
        }
        let claimer_state = Arc::new(LoopState::new("claimer"));
        let replanner_state = Arc::new(LoopState::new("replanner"));
        let follower_state = Arc::new(LoopState::new("follower"));
        let endpoints_state = Arc::new(LoopState::new("endpoints"));
        let keeper_state = Arc::new(LoopState::new("keeper"));
        let ops_state = settings
            .ops_webhook_url
            .is_some()
            .then(|| Arc::new(LoopState::new("ops")));
        let mut loops = Vec::new();
        if settings.claimer {
            loops.extend([claimer_state.clone(), replanner_state.clone()]);
        }
        loops.extend([
            follower_state.clone(),
            endpoints_state.clone(),
            keeper_state.clone(),
        ]);
        loops.extend(ops_state.clone());
        Ok(Self {
            state: AppState {
                pool,
                registry,
                event_types,
                tokens: Arc::new(tokens),
                loops: loops.into(),
                webhook_allow: allow,
                endpoints,
            },
            deliverer,
            claimer_state,
            replanner_state,
            follower_state,
            endpoints_state,
            keeper_state,
            ops_state,
            listener,
            settings,
            embedded,
            watcher,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn deliverer(&self) -> Arc<Deliverer> {
        self.deliverer.clone()
    }

    /// A claimer over this application's database and plugins; tests step it.
    pub fn claimer(&self) -> Claimer {
        Claimer::new(
            self.state.pool.clone(),
            self.deliverer.clone(),
            self.state.registry.clone(),
            self.settings.claimer_settings(),
            self.claimer_state.clone(),
        )
        .with_endpoints(self.state.endpoints.clone())
    }

    /// The claimer's supervised state (`/ready` reads it).
    pub fn claimer_state(&self) -> Arc<LoopState> {
        self.claimer_state.clone()
    }

    /// A replanner over this application's database and plugins; tests step it.
    pub fn replanner(&self) -> Replanner {
        Replanner::new(
            self.state.pool.clone(),
            self.state.registry.clone(),
            self.settings.replan_every,
        )
    }

    /// Serves until `shutdown` resolves, then stops claiming, lets deliveries
    /// in flight finish within `KAIROS_SHUTDOWN_GRACE` (releasing the leases
    /// of any that do not), drains HTTP within what is left of the grace and
    /// stops the embedded database.
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let wait_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        };
        let mut loops = Vec::new();
        if self.settings.claimer {
            let (claimer, rx) = (self.claimer(), stop_rx.clone());
            loops.push(tokio::spawn(supervisor::supervise(
                self.claimer_state.clone(),
                move || claimer.clone().run(wait_stop(rx.clone())),
                stop_rx.clone(),
            )));
            let (replanner, rx) = (self.replanner(), stop_rx.clone());
            loops.push(tokio::spawn(supervisor::supervise(
                self.replanner_state.clone(),
                move || replanner.clone().run(wait_stop(rx.clone())),
                stop_rx.clone(),
            )));
        }
        let (event_types, rx) = (self.state.event_types.clone(), stop_rx.clone());
        loops.push(tokio::spawn(supervisor::supervise(
            self.follower_state.clone(),
            move || event_types.clone().follow(wait_stop(rx.clone())),
            stop_rx.clone(),
        )));
        let (endpoints, rx) = (self.state.endpoints.clone(), stop_rx.clone());
        loops.push(tokio::spawn(supervisor::supervise(
            self.endpoints_state.clone(),
            move || endpoints.clone().run(wait_stop(rx.clone())),
            stop_rx.clone(),
        )));
        let (pool, retention, rx) = (
            self.state.pool.clone(),
            self.settings.retention_settings(),
            stop_rx.clone(),
        );
        loops.push(tokio::spawn(supervisor::supervise(
            self.keeper_state.clone(),
            move || crate::retention::run(pool.clone(), retention, wait_stop(rx.clone())),
            stop_rx.clone(),
        )));
        if let (Some(state), Some(ops)) = (self.ops_state.clone(), self.settings.ops_settings()) {
            let (pool, rx) = (self.state.pool.clone(), stop_rx.clone());
            loops.push(tokio::spawn(supervisor::supervise(
                state,
                move || crate::ops::run(pool.clone(), ops.clone(), wait_stop(rx.clone())),
                stop_rx.clone(),
            )));
        }
        tracing::info!(addr = %self.local_addr(), "kairos is serving");
        let app = http::router(self.state.clone());
        let server = axum::serve(self.listener, app).with_graceful_shutdown(wait_stop(stop_rx));
        let mut server = tokio::spawn(async move { server.await });

        shutdown.await;
        let deadline = tokio::time::Instant::now() + self.settings.shutdown_grace;
        tracing::info!("shutting down");
        self.watcher.take();
        let _ = stop_tx.send(true);
        for task in loops {
            task.await.context("a background loop's supervisor")?;
        }
        self.state.event_types.leave().await;
        // Requests still open when the grace is over are cut.
        let margin = std::time::Duration::from_millis(500);
        let drain_until = deadline.max(tokio::time::Instant::now() + margin);
        match tokio::time::timeout_at(drain_until, &mut server).await {
            Ok(served) => served??,
            Err(_) => {
                server.abort();
                tracing::warn!("HTTP requests still open after the grace were cut");
            }
        }
        self.state.pool.close().await;
        if let Some(mut embedded) = self.embedded.take() {
            tokio::task::spawn_blocking(move || embedded.stop()).await??;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// How a replica names itself in the fleet's list: its host name and the
/// address it serves on.
fn replica_host(addr: SocketAddr) -> String {
    let name = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "unknown".into());
    format!("{name} {addr}")
}

/// Says at start when the default webhook URL goes where delivery will
/// refuse to send (checked again at every send: DNS answers change).
async fn warn_if_refused(name: &str, url: &str, allow: &AllowList) {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return;
    };
    let checked = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        outbound::check_url(&parsed, allow),
    )
    .await;
    if let Ok(Err(refused)) = checked {
        tracing::warn!(
            url = %outbound::redact_url(&parsed),
            "{name}: {refused}; events sent there will fail"
        );
    }
}

/// Applies each debounced change of the plugin directory, one at a time.
async fn follow_plugin_dir(
    event_types: Arc<EventTypes>,
    mut changes: tokio::sync::mpsc::Receiver<std::collections::BTreeSet<String>>,
) {
    while let Some(names) = changes.recv().await {
        for name in names {
            event_types.sync_from_dir(&name).await;
        }
    }
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::migrate!("../migrations")
        .run(pool)
        .await
        .context("running database migrations")
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
