//! Configuration: every setting is a flag of `kairos serve` and an
//! environment variable; defaults serve a single machine well.

use crate::claimer::ClaimerSettings;
use crate::delivery::{DeliverySettings, RetryPolicy};
use crate::outbound::{self, AllowList};
use crate::plugin::PluginLimits;
use crate::signing;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "kairos",
    version,
    about = "Timezone-aware event scheduler with WebAssembly event types"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the REST API, the claimer and the delivery loop.
    Serve(Box<Settings>),
    /// Tools for plugin authors.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Import users from an NDJSON file (one `POST /users` body per line)
    /// into a running host, streamed to its `POST /users/import`. Prints the
    /// summary and each rejected line; exits 1 if any line was rejected,
    /// 2 if the import failed.
    Import(ImportArgs),
    /// Print every message the host's loaded types would send with `due_at`
    /// in [FROM, TO), in due time order, from its `GET /simulate`. Reads
    /// only: nothing is written or claimed. Exits 2 if it failed.
    Simulate(SimulateArgs),
    /// Print the host's audit log (`GET /audit`) as a table, oldest first:
    /// who changed what, when. Exits 2 if it could not be read.
    Audit(AuditArgs),
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only entries after this id (the last id a previous run printed).
    #[arg(long, default_value_t = 0)]
    pub after: i64,
    /// At most this many entries; 0 prints every one.
    #[arg(long, default_value_t = 100)]
    pub limit: u64,
    /// The host's base URL.
    #[arg(long, env = "KAIROS_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The host's admin token.
    #[arg(long, env = "KAIROS_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Start of the window, included: RFC 3339 (2027-03-28T00:00:00Z) or a
    /// date (2027-03-28, midnight UTC).
    #[arg(long)]
    pub from: String,
    /// End of the window, excluded; at most five years after FROM.
    #[arg(long)]
    pub to: String,
    /// Only this event type.
    #[arg(long = "type", value_name = "NAME")]
    pub event_type: Option<String>,
    /// Only this user (id).
    #[arg(long = "user", value_name = "ID")]
    pub user_id: Option<String>,
    /// `ndjson` (the API's lines) or `csv` (with a header row).
    #[arg(long, value_enum, default_value_t = crate::ahead_cli::Format::Ndjson)]
    pub format: crate::ahead_cli::Format,
    /// The host's base URL.
    #[arg(long, env = "KAIROS_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// A client token (one of the host's `KAIROS_API_TOKENS`, or its admin token).
    #[arg(long, env = "KAIROS_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The NDJSON file; `-` reads standard input.
    pub file: PathBuf,
    /// The host's base URL.
    #[arg(long, env = "KAIROS_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// A client token (one of the host's `KAIROS_API_TOKENS`, or its admin token).
    #[arg(long, env = "KAIROS_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Load a component as the host would, run the self-check subjects (and
    /// any given subject), and print each result with fuel, memory and time.
    /// Exits non-zero on any failure.
    Check {
        /// The component (`NAME.wasm`).
        file: PathBuf,
        /// Config for the type, as KEY=VALUE; repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        config: Vec<(String, String)>,
        /// A subject as JSON, in the shape of `POST /users` (plus an optional
        /// "after": "YYYY-MM-DDTHH:MM:SS" local time; default: now); repeatable.
        #[arg(long = "subject", value_name = "FILE.json")]
        subjects: Vec<PathBuf>,
        /// Wall-clock time one call may take.
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        deadline: Duration,
        /// Fuel one call may burn.
        #[arg(long, default_value_t = 50_000_000)]
        fuel: u64,
        /// Linear memory one instance may use, in MiB.
        #[arg(long, default_value_t = 32)]
        memory_mib: usize,
    },
    /// Show what loading FILE.wasm as the type NAME would change, on a
    /// running host's real users, without loading it: each user's next
    /// message before and after, and the users it fails for (a dry run,
    /// `PUT /event-types/NAME?dry_run=true`). Exits 1 if it fails for any
    /// user, 2 if the dry run itself failed (a bad component, say).
    Diff {
        /// The event type's name.
        name: String,
        /// The candidate component.
        file: PathBuf,
        /// The candidate's config, as KEY=VALUE (its whole config, as in an
        /// upload); repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        config: Vec<(String, String)>,
        /// Users listed (failed first, then changed, then unchanged), 1 to 1000.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// The host's base URL.
        #[arg(long, env = "KAIROS_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The host's admin token.
        #[arg(long, env = "KAIROS_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Create a plugin (a Rust crate, or a JavaScript or Python project) that
    /// builds and passes `kairos plugin check` as it is.
    New {
        /// The event type's name (a-z, 0-9, '-', '_').
        name: String,
        /// Where to create it; default: ./NAME.
        #[arg(long)]
        path: Option<PathBuf>,
        /// The language to write it in.
        #[arg(long, value_enum, default_value_t = crate::plugin_kit::Lang::Rust)]
        lang: crate::plugin_kit::Lang,
        /// Rust only: the `kairos-plugin` SDK crate to depend on, by path (a kairos
        /// checkout's `plugins/sdk`); default: the one in the source tree
        /// this binary was built from.
        #[arg(long, value_name = "DIR", conflicts_with = "sdk_git")]
        sdk_path: Option<PathBuf>,
        /// Rust only: the SDK from a git repository of kairos instead (cargo finds the
        /// `kairos-plugin` crate in it).
        #[arg(long, value_name = "URL")]
        sdk_git: Option<String>,
    },
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// PostgreSQL URL; without it, an embedded cluster under the data directory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Address the HTTP API listens on.
    #[arg(long, env = "KAIROS_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Embedded cluster, compiled-plugin cache and uploaded plugins live here.
    #[arg(long, env = "KAIROS_DATA_DIR", default_value = "./.kairos")]
    pub data_dir: PathBuf,
    /// Directory of event-type plugins (`NAME.wasm` + optional `NAME.toml`).
    #[arg(long, env = "KAIROS_PLUGIN_DIR", default_value = "./dist/plugins")]
    pub plugin_dir: PathBuf,
    /// Where webhooks go, for types without a `webhook_url` of their own.
    #[arg(long, env = "KAIROS_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// `whsec_<base64>`: signs webhooks (Standard Webhooks) when set.
    #[arg(long, env = "KAIROS_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Bearer token for the admin routes (it is accepted on client routes too).
    #[arg(long, env = "KAIROS_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Bearer tokens for the client routes, comma-separated. Without any,
    /// client routes are open, which is allowed only on a loopback bind.
    #[arg(long, env = "KAIROS_API_TOKENS", hide_env_values = true)]
    pub api_tokens: Option<String>,
    /// CIDRs webhooks may go to although they are private, loopback,
    /// link-local or otherwise special (comma-separated; `none` for none).
    #[arg(long, env = "KAIROS_WEBHOOK_ALLOW", default_value = outbound::DEFAULT_WEBHOOK_ALLOW, value_parser = parse_allow_list)]
    pub webhook_allow: AllowList,
    /// Delivery attempts before an event is `failed`.
    #[arg(long, env = "KAIROS_MAX_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt.
    #[arg(long, env = "KAIROS_RETRY_BASE", default_value = "2s", value_parser = parse_duration)]
    pub retry_base: Duration,
    /// Longest retry delay.
    #[arg(long, env = "KAIROS_RETRY_MAX", default_value = "1h", value_parser = parse_duration)]
    pub retry_max: Duration,
    /// An endpoint whose attempts have all failed with retryable errors for
    /// this long is disabled: its events wait, and it is probed.
    #[arg(long, env = "KAIROS_ENDPOINT_DISABLE_AFTER", default_value = "5m", value_parser = parse_duration)]
    pub endpoint_disable_after: Duration,
    /// A disabled (failing) endpoint gets one due event this often; a
    /// success enables it again.
    #[arg(long, env = "KAIROS_ENDPOINT_PROBE", default_value = "1m", value_parser = parse_duration)]
    pub endpoint_probe: Duration,
    /// Finished events and their attempts are kept this long after they
    /// were due, then dropped a whole day at a time.
    #[arg(long, env = "KAIROS_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub retention: Duration,
    /// The audit log is kept this long.
    #[arg(long, env = "KAIROS_AUDIT_RETENTION", default_value = "365d", value_parser = parse_duration)]
    pub audit_retention: Duration,
    /// Where the fleet posts operational webhooks (`endpoint.disabled`,
    /// `endpoint.enabled`, `replica.stale`, `type.failing`), signed like
    /// every webhook and through the same allow list.
    #[arg(long, env = "KAIROS_OPS_WEBHOOK_URL")]
    pub ops_webhook_url: Option<String>,
    /// How long a claimed event is held before another host may take it back.
    #[arg(long, env = "KAIROS_LEASE", default_value = "60s", value_parser = parse_duration)]
    pub lease: Duration,
    /// Webhook request timeout; must be shorter than the lease.
    #[arg(long, env = "KAIROS_HTTP_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_timeout: Duration,
    /// Events due longer ago than this are failed instead of sent late.
    #[arg(long, env = "KAIROS_MAX_LATENESS", value_parser = parse_duration)]
    pub max_lateness: Option<Duration>,
    /// Most events claimed by one statement.
    #[arg(long, env = "KAIROS_BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// Most webhook deliveries in flight at once.
    #[arg(long, env = "KAIROS_CONCURRENCY", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Longest sleep of an idle claimer with no notification.
    #[arg(long, env = "KAIROS_IDLE_POLL", default_value = "5s", value_parser = parse_duration)]
    pub idle_poll: Duration,
    /// How long shutdown waits for deliveries in flight.
    #[arg(long, env = "KAIROS_SHUTDOWN_GRACE", default_value = "15s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Database connections per host.
    #[arg(long, env = "KAIROS_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// Wall-clock time one plugin call may take.
    #[arg(long, env = "KAIROS_PLUGIN_DEADLINE", default_value = "500ms", value_parser = parse_duration)]
    pub plugin_deadline: Duration,
    /// Fuel one plugin call may burn.
    #[arg(long, env = "KAIROS_PLUGIN_FUEL", default_value_t = 50_000_000)]
    pub plugin_fuel: u64,
    /// Linear memory one plugin instance may use, in MiB.
    #[arg(long, env = "KAIROS_PLUGIN_MEMORY_MIB", default_value_t = 32)]
    pub plugin_memory_mib: usize,
    /// Log format.
    #[arg(long, env = "KAIROS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Run the claimer and delivery loop (off: API only).
    #[arg(long, env = "KAIROS_CLAIMER", default_value_t = true, action = clap::ArgAction::Set)]
    pub claimer: bool,
    /// Watch the plugin directory and load, replace or unload types as files change.
    #[arg(long, env = "KAIROS_WATCH", default_value_t = true, action = clap::ArgAction::Set)]
    pub watch: bool,
    /// Quiet time after the last change in the plugin directory before it is read.
    #[arg(long, env = "KAIROS_WATCH_DEBOUNCE", default_value = "300ms", value_parser = parse_duration)]
    pub watch_debounce: Duration,
    /// How often a replica plans again what could not be planned before
    /// (a plugin failed, or the type was not loaded where a user changed).
    #[arg(long, env = "KAIROS_REPLAN_EVERY", default_value = "1s", value_parser = parse_duration)]
    pub replan_every: Duration,
    /// How often this replica reports itself to the fleet and compares the
    /// registry's generations (a lost notification costs at most this); one
    /// that misses three is stale, and its scheduling passes are taken over.
    #[arg(long, env = "KAIROS_HEARTBEAT", default_value = "5s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// Follow the fleet's registry after start (off: serve the types loaded
    /// at start until restarted, e.g. to hold one replica back while looking
    /// into a rollout; it still reports itself every heartbeat).
    #[arg(long, env = "KAIROS_FOLLOW", default_value_t = true, action = clap::ArgAction::Set)]
    pub follow: bool,
    /// Users per transaction when a loaded type is scheduled for everyone.
    #[arg(long, env = "KAIROS_SCHEDULE_BATCH", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub schedule_batch: u32,
}

fn parse_allow_list(text: &str) -> Result<AllowList, String> {
    text.parse()
        .map_err(|e: outbound::BadAllowEntry| e.to_string())
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (use forms like 500ms, 10s, 1h)"))
}

impl Settings {
    /// The defaults, read from `args` and the environment as `kairos serve` would.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            settings: Settings,
        }
        Wrapper::try_parse_from(args).map(|w| w.settings)
    }

    /// An empty optional setting (`KAIROS_ADMIN_TOKEN=` in a compose file)
    /// means unset, not an empty token or URL.
    pub fn without_empty_values(mut self) -> Self {
        for value in [
            &mut self.database_url,
            &mut self.webhook_url,
            &mut self.ops_webhook_url,
            &mut self.webhook_secret,
            &mut self.admin_token,
            &mut self.api_tokens,
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                *value = None;
            }
        }
        self
    }

    /// Checks what clap cannot: relations between settings and secret syntax.
    pub fn validate(&self) -> anyhow::Result<()> {
        // A delivery waits at most one plugin deadline for its turn in its
        // batch's plugin work, formats and plans the next occurrence (two
        // calls), and sends: all of it must end inside the lease.
        anyhow::ensure!(
            self.http_timeout + 3 * self.plugin_deadline < self.lease,
            "KAIROS_HTTP_TIMEOUT ({}) plus three times KAIROS_PLUGIN_DEADLINE ({}) must be shorter than KAIROS_LEASE ({})",
            humantime::format_duration(self.http_timeout),
            humantime::format_duration(self.plugin_deadline),
            humantime::format_duration(self.lease)
        );
        // Each delivery in flight may hold a plugin instance; API calls,
        // passes and the replanner need some of the pool's slots too.
        let most_deliveries = crate::plugin::MAX_CONCURRENT_CALLS - 200;
        anyhow::ensure!(
            self.concurrency <= most_deliveries,
            "KAIROS_CONCURRENCY ({}) must be at most {most_deliveries}: each delivery in flight may hold a plugin instance, and a host keeps {} of them",
            self.concurrency,
            crate::plugin::MAX_CONCURRENT_CALLS
        );
        anyhow::ensure!(
            self.has_api_tokens() || self.bind.ip().is_loopback(),
            "KAIROS_API_TOKENS is required when KAIROS_BIND ({}) is not a loopback address: \
             without it anyone who reaches the port could read and change every user \
             (set KAIROS_API_TOKENS to one or more comma-separated tokens)",
            self.bind
        );
        anyhow::ensure!(
            self.heartbeat >= Duration::from_millis(50)
                && self.heartbeat <= Duration::from_secs(3600),
            "KAIROS_HEARTBEAT ({}) must be between 50ms and 1h",
            humantime::format_duration(self.heartbeat)
        );
        anyhow::ensure!(
            self.retry_base <= self.retry_max,
            "KAIROS_RETRY_BASE must not exceed KAIROS_RETRY_MAX"
        );
        if let Some(secret) = &self.webhook_secret {
            signing::decode_secret(secret)
                .map_err(|e| anyhow::anyhow!("KAIROS_WEBHOOK_SECRET: {e}"))?;
        }
        if let Some(url) = &self.webhook_url {
            reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("KAIROS_WEBHOOK_URL: {e}"))?;
        }
        if let Some(url) = &self.ops_webhook_url {
            reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("KAIROS_OPS_WEBHOOK_URL: {e}"))?;
        }
        Ok(())
    }

    /// Whether `KAIROS_API_TOKENS` holds at least one token.
    pub fn has_api_tokens(&self) -> bool {
        self.api_tokens
            .as_deref()
            .is_some_and(|t| t.split(',').any(|t| !t.trim().is_empty()))
    }

    pub fn plugin_limits(&self) -> PluginLimits {
        PluginLimits {
            deadline: self.plugin_deadline,
            fuel: self.plugin_fuel,
            memory: self.plugin_memory_mib << 20,
        }
    }

    pub fn delivery(&self) -> DeliverySettings {
        DeliverySettings {
            default_webhook_url: self.webhook_url.clone(),
            signing_key: self
                .webhook_secret
                .as_deref()
                .and_then(|s| signing::decode_secret(s).ok()),
            retry: RetryPolicy {
                base: self.retry_base,
                max: self.retry_max,
                max_attempts: self.max_attempts,
            },
            max_lateness: self.max_lateness,
            allow: std::sync::Arc::new(self.webhook_allow.clone()),
            plugin_deadline: self.plugin_deadline,
        }
    }

    /// The operational webhooks' settings; `None` without
    /// `KAIROS_OPS_WEBHOOK_URL` (checked by `validate`).
    pub fn ops_settings(&self) -> Option<crate::ops::OpsSettings> {
        let delivery = self.delivery();
        Some(crate::ops::OpsSettings {
            url: reqwest::Url::parse(self.ops_webhook_url.as_deref()?).ok()?,
            signing_key: delivery.signing_key,
            retry: delivery.retry,
            allow: delivery.allow,
            timeout: self.http_timeout,
        })
    }

    pub fn retention_settings(&self) -> crate::retention::RetentionSettings {
        crate::retention::RetentionSettings {
            retention: self.retention,
            audit_retention: self.audit_retention,
        }
    }

    pub fn endpoint_settings(&self) -> crate::endpoints::EndpointSettings {
        crate::endpoints::EndpointSettings {
            disable_after: self.endpoint_disable_after,
            probe: self.endpoint_probe,
        }
    }

    pub fn claimer_settings(&self) -> ClaimerSettings {
        ClaimerSettings {
            batch_size: self.batch_size as usize,
            concurrency: self.concurrency as usize,
            lease: self.lease,
            idle_poll: self.idle_poll,
            shutdown_grace: self.shutdown_grace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_optional_values_mean_unset() {
        let mut s =
            Settings::from_args(["kairos", "--admin-token", "", "--webhook-url", " "]).unwrap();
        s.webhook_secret = Some(String::new());
        let s = s.without_empty_values();
        assert_eq!(s.admin_token, None);
        assert_eq!(s.webhook_url, None);
        assert_eq!(s.webhook_secret, None);
        s.validate().unwrap();
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = Settings::from_args(["kairos"]).unwrap();
        assert_eq!(s.max_attempts, 10);
        assert_eq!(
            (s.retry_base, s.retry_max),
            (Duration::from_secs(2), Duration::from_secs(3600))
        );
        assert_eq!(
            (s.lease, s.http_timeout),
            (Duration::from_secs(60), Duration::from_secs(10))
        );
        assert_eq!(s.bind, "127.0.0.1:8080".parse().unwrap());
    }

    #[test]
    fn durations_read_like_500ms_10s_1h() {
        let s =
            Settings::from_args(["kairos", "--lease", "1h", "--http-timeout", "500ms"]).unwrap();
        assert_eq!(
            (s.lease, s.http_timeout),
            (Duration::from_secs(3600), Duration::from_millis(500))
        );
        assert!(Settings::from_args(["kairos", "--lease", "soon"]).is_err());
    }

    #[test]
    fn a_delivery_that_could_outlast_the_lease_is_refused() {
        let s = Settings::from_args(["kairos", "--lease", "10s", "--http-timeout", "9s"]).unwrap();
        let error = s.validate().unwrap_err().to_string();
        assert!(error.contains("KAIROS_HTTP_TIMEOUT"), "{error}");
        assert!(error.contains("KAIROS_PLUGIN_DEADLINE"), "{error}");
        let s = Settings::from_args(["kairos", "--lease", "10s", "--http-timeout", "8s"]).unwrap();
        s.validate().unwrap();
    }

    #[test]
    fn concurrency_leaves_plugin_instances_for_the_api() {
        Settings::from_args(["kairos", "--concurrency", "800"])
            .unwrap()
            .validate()
            .unwrap();
        let error = Settings::from_args(["kairos", "--concurrency", "801"])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(error.contains("KAIROS_CONCURRENCY"), "{error}");
    }

    #[test]
    fn client_routes_need_tokens_unless_the_bind_is_loopback() {
        for bind in ["127.0.0.1:8080", "[::1]:8080"] {
            Settings::from_args(["kairos", "--bind", bind])
                .unwrap()
                .validate()
                .unwrap();
        }
        for bind in ["0.0.0.0:8080", "10.1.2.3:8080", "[::]:8080"] {
            let error = Settings::from_args(["kairos", "--bind", bind, "--admin-token", "a"])
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(error.contains("KAIROS_API_TOKENS"), "{bind}: {error}");
        }
        Settings::from_args(["kairos", "--bind", "0.0.0.0:8080", "--api-tokens", "t1,t2"])
            .unwrap()
            .validate()
            .unwrap();
        // An empty value (`KAIROS_API_TOKENS=` in a compose file) is no token.
        for empty in [" ", ",", " , "] {
            let s =
                Settings::from_args(["kairos", "--bind", "0.0.0.0:8080", "--api-tokens", empty])
                    .unwrap()
                    .without_empty_values();
            assert!(s.validate().is_err(), "{empty:?}");
        }
    }
}
