//! Endpoints: the webhook URLs events go to, with their health, as the
//! fleet shares it in the `endpoints` table.
//!
//! An endpoint whose attempts have all failed with retryable errors for
//! `KAIROS_ENDPOINT_DISABLE_AFTER` is disabled: its events wait, `pending`,
//! their attempts unspent, and one due event is sent every
//! `KAIROS_ENDPOINT_PROBE` (one replica wins each probe); a success enables
//! it again and its waiting events go out in due order. An operator can
//! disable and enable one by hand.
//!
//! Each replica keeps a view of the table, read every second (so a change
//! through any replica is obeyed by all within 2 s), and leaves the types
//! whose endpoint is disabled out of its claims: a disabled endpoint costs
//! the claim nothing per event. Outcomes are counted per endpoint and
//! written once per batch of completions.

use crate::audit::Actor;
use crate::outbound;
use crate::plugin::{LoadedPlugin, Registry};
use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{FromRow, PgPool};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The audit entries and operational webhooks of endpoint changes, as
/// CTEs of the statement that makes them: from `changed` (`id`, `url`,
/// `was`, `now`, `reason`, `last_error`, `changed_at`: the endpoints the
/// statement changed), by `$actor` (an SQL expression). An audit entry per
/// change; an `endpoint.disabled` or `endpoint.enabled` message per change
/// of state, keyed by the change so that it is told once.
macro_rules! endpoint_changes_on_record {
    ($actor:literal) => {
        concat!(
            ", audit AS (INSERT INTO audit_log (actor, action, target, detail) \
                SELECT ",
            $actor,
            ", CASE WHEN c.now = 'disabled' THEN 'endpoint.disable' \
                    ELSE 'endpoint.enable' END, c.id, \
                    jsonb_strip_nulls(jsonb_build_object('url', c.url, 'state', c.now, \
                        'reason', c.reason, 'last_error', c.last_error)) \
                FROM changed c), \
            ops AS (INSERT INTO ops_events (id, key, type, detail) \
                SELECT gen_random_uuid(), \
                    'endpoint:' || c.id || ':' || extract(epoch FROM c.changed_at), \
                    CASE WHEN c.now = 'disabled' THEN 'endpoint.disabled' \
                        ELSE 'endpoint.enabled' END, \
                    jsonb_strip_nulls(jsonb_build_object('endpoint', c.id, 'url', c.url, \
                        'reason', c.reason, 'last_error', c.last_error, 'by', ",
            $actor,
            ")) \
                FROM changed c WHERE c.was <> c.now \
                ON CONFLICT (key) DO NOTHING) "
        )
    };
}

/// How often a replica reads the fleet's endpoints.
const REFRESH: Duration = Duration::from_secs(1);
/// After an endpoint is enabled, its deliveries start at this rate across
/// the fleet, doubling every `RAMP_DOUBLING`, for `RAMP_FOR` (then 40,960/s,
/// which is no cap): a receiver that just came back is not flooded with its
/// backlog the same second.
const RAMP_START: f64 = 10.0;
const RAMP_DOUBLING: Duration = Duration::from_secs(5);
const RAMP_FOR: Duration = Duration::from_secs(60);

/// The rate an endpoint enabled at `released_at` may take now, while it ramps up.
fn ramp(released_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<f64> {
    let elapsed = (now - released_at?).to_std().unwrap_or_default();
    (elapsed < RAMP_FOR)
        .then(|| RAMP_START * 2f64.powf(elapsed.as_secs_f64() / RAMP_DOUBLING.as_secs_f64()))
}

#[derive(Debug, Clone, Copy)]
pub struct EndpointSettings {
    /// Nothing but retryable failures for this long disables an endpoint.
    pub disable_after: Duration,
    /// A disabled (failing) endpoint gets one due event this often.
    pub probe: Duration,
}

/// What an attempt told about its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contact {
    /// A `2xx`.
    Success,
    /// An answer that is not a retryable failure (a `4xx` other than
    /// `429`): the receiver is up, it refused this one.
    Answered,
    /// A retryable failure: `5xx`, `429`, timeout, connection error.
    Down,
}

/// One attempt's contact with an endpoint, for the batch's counts.
#[derive(Debug, Clone)]
pub struct Attempted {
    pub endpoint: Arc<str>,
    pub contact: Contact,
    pub error: Option<String>,
}

/// What a replica knows of one endpoint between refreshes.
#[derive(Debug, Clone, PartialEq)]
struct View {
    disabled: bool,
    reason: Option<String>,
    next_probe_at: Option<DateTime<Utc>>,
    paused_until: Option<DateTime<Utc>>,
    rate_per_s: Option<f64>,
    released_at: Option<DateTime<Utc>>,
}

/// What the claimer is to do with the types loaded here, from the view.
#[derive(Debug, Default)]
pub struct ClaimPlan {
    /// Types claimed as usual.
    pub claim: Vec<String>,
    /// Disabled (failing) endpoints due a probe, with their types.
    pub probes: Vec<(String, Vec<String>)>,
    /// Rate-limited endpoints, with their rate and types: claimed within
    /// the tokens taken from the fleet's bucket.
    pub limited: Vec<(String, f64, Vec<String>)>,
    /// When a pause ends or a probe is due next: the claimer wakes then.
    pub next_change: Option<Duration>,
}

/// An endpoint as `GET /endpoints` shows it.
#[derive(Debug, Clone, Serialize, FromRow, utoipa::ToSchema)]
pub struct Endpoint {
    pub id: String,
    /// Without credentials or query string.
    pub url: String,
    /// `active` or `disabled`.
    pub state: String,
    /// `failing` (disabled by the host, probed) or `manual`; null while active.
    pub disabled_reason: Option<String>,
    pub consecutive_failures: i64,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Events held for it: its pending events (and a probe in flight),
    /// while it is disabled.
    #[sqlx(default)]
    pub waiting: i64,
    /// Deliveries per second across the fleet; null: unlimited.
    pub rate_per_s: Option<f64>,
    /// The event types whose webhooks go to it (on this replica).
    #[sqlx(skip)]
    pub event_types: Vec<String>,
}

pub struct Endpoints {
    pool: PgPool,
    registry: Arc<Registry>,
    default_url: Option<String>,
    settings: EndpointSettings,
    view: ArcSwap<HashMap<String, View>>,
    /// Endpoints whose row this replica has made sure of.
    known: Mutex<HashSet<String>>,
    /// Endpoints whose attempts from this replica have failed, with nothing
    /// but retryable failures since its last success here: since when.
    failing_here: Mutex<HashMap<String, Instant>>,
    /// Woken when an endpoint is enabled or disabled: the claimer's types change.
    pub changed: Notify,
    /// Endpoint ids by URL, so a delivery does not hash its URL.
    ids: ArcSwap<HashMap<String, Arc<str>>>,
    /// Whether `failing_here` may hold anything: a success then costs no lock.
    any_failing: AtomicBool,
}

/// The id of the endpoint for `url`: the first 16 hex digits of its SHA-256.
pub fn endpoint_id(url: &str) -> String {
    let digest = Sha256::digest(url.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// `url` without credentials or query string.
fn shown(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => outbound::redact_url(&parsed).to_string(),
        Err(_) => "(not a URL)".into(),
    }
}

impl Endpoints {
    pub fn new(
        pool: PgPool,
        registry: Arc<Registry>,
        default_url: Option<String>,
        settings: EndpointSettings,
    ) -> Self {
        Self {
            pool,
            registry,
            default_url,
            settings,
            view: ArcSwap::default(),
            known: Mutex::default(),
            failing_here: Mutex::default(),
            changed: Notify::new(),
            ids: ArcSwap::default(),
            any_failing: AtomicBool::new(false),
        }
    }

    /// The id of the endpoint for `url` (`endpoint_id`), remembered.
    pub fn id_of(&self, url: &str) -> Arc<str> {
        if let Some(id) = self.ids.load().get(url) {
            return id.clone();
        }
        let id: Arc<str> = endpoint_id(url).into();
        self.ids.rcu(|ids| {
            let mut ids = HashMap::clone(ids);
            ids.insert(url.to_string(), id.clone());
            ids
        });
        id
    }

    /// Where `plugin`'s webhooks go.
    pub fn url_of<'a>(&'a self, plugin: &'a LoadedPlugin) -> Option<&'a str> {
        plugin
            .webhook_url
            .as_deref()
            .or(self.default_url.as_deref())
    }

    /// The endpoint of each type loaded here.
    fn endpoints_by_type(&self) -> BTreeMap<String, (String, String)> {
        self.registry
            .snapshot()
            .values()
            .filter_map(|p| {
                let url = self.url_of(p)?;
                Some((
                    p.name().to_string(),
                    (self.id_of(url).to_string(), url.to_string()),
                ))
            })
            .collect()
    }

    /// The types loaded here whose webhooks go to `endpoint`.
    pub fn types_of(&self, endpoint: &str) -> Vec<String> {
        self.endpoints_by_type()
            .into_iter()
            .filter(|(_, (id, _))| id == endpoint)
            .map(|(name, _)| name)
            .collect()
    }

    /// Makes sure every endpoint in use here has its row, then reads the
    /// fleet's view of them; wakes the claimer when one was enabled or
    /// disabled.
    pub async fn refresh(&self) -> sqlx::Result<()> {
        let mut new_ids = Vec::new();
        let mut new_urls = Vec::new();
        {
            let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            for (id, url) in self.endpoints_by_type().into_values() {
                if !known.contains(&id) && !new_ids.contains(&id) {
                    new_ids.push(id);
                    new_urls.push(shown(&url));
                }
            }
        }
        if !new_ids.is_empty() {
            sqlx::query(
                "INSERT INTO endpoints (id, url) SELECT * FROM unnest($1::text[], $2::text[]) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&new_ids)
            .bind(&new_urls)
            .execute(&self.pool)
            .await?;
            self.known
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(new_ids);
        }
        #[derive(FromRow)]
        struct Row {
            id: String,
            state: String,
            disabled_reason: Option<String>,
            next_probe_at: Option<DateTime<Utc>>,
            paused_until: Option<DateTime<Utc>>,
            rate_per_s: Option<f64>,
            released_at: Option<DateTime<Utc>>,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, state, disabled_reason, next_probe_at, paused_until, rate_per_s, \
             released_at FROM endpoints",
        )
        .fetch_all(&self.pool)
        .await?;
        let view: HashMap<String, View> = rows
            .into_iter()
            .map(|row| {
                let view = View {
                    disabled: row.state == "disabled",
                    reason: row.disabled_reason,
                    next_probe_at: row.next_probe_at,
                    paused_until: row.paused_until,
                    rate_per_s: row.rate_per_s,
                    released_at: row.released_at,
                };
                (row.id, view)
            })
            .collect();
        let before = self.view.load();
        // A pause this replica just recorded may be newer than what it read.
        let mut view = view;
        for (id, v) in &mut view {
            if let Some(mine) = before.get(id).and_then(|b| b.paused_until) {
                v.paused_until = Some(v.paused_until.map_or(mine, |theirs| theirs.max(mine)));
            }
        }
        let flipped = view.iter().any(|(id, v)| {
            before.get(id).is_none_or(|b| {
                (b.disabled, b.paused_until, b.rate_per_s)
                    != (v.disabled, v.paused_until, v.rate_per_s)
            })
        });
        self.view.store(Arc::new(view));
        if flipped {
            self.changed.notify_one();
        }
        Ok(())
    }

    /// Reads the fleet's endpoints every second until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        loop {
            if let Err(error) = self.refresh().await {
                tracing::warn!(%error, "reading the fleet's endpoints failed");
            }
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(REFRESH) => {}
            }
        }
    }

    /// Whether `endpoint` is disabled, as this replica last read it.
    pub fn disabled(&self, endpoint: &str) -> bool {
        self.view.load().get(endpoint).is_some_and(|v| v.disabled)
    }

    /// Whether sends to `endpoint` are paused (a receiver's `Retry-After`),
    /// and until when.
    pub fn paused_until(&self, endpoint: &str) -> Option<DateTime<Utc>> {
        self.view
            .load()
            .get(endpoint)
            .and_then(|v| v.paused_until)
            .filter(|until| *until > Utc::now())
    }

    /// Sorts `types` by what their endpoint allows now: claimed as usual,
    /// left out (disabled, paused), probed, or claimed within a rate.
    pub fn plan_claims(&self, types: Vec<String>) -> ClaimPlan {
        let view = self.view.load();
        let by_type = self.endpoints_by_type();
        let now = Utc::now();
        let mut plan = ClaimPlan::default();
        let mut probes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut limited: BTreeMap<String, (f64, Vec<String>)> = BTreeMap::new();
        let mut next_change: Option<DateTime<Utc>> = None;
        let mut soonest = |at: DateTime<Utc>| {
            next_change = Some(next_change.map_or(at, |n| n.min(at)));
        };
        for name in types {
            let Some((id, v)) = by_type
                .get(&name)
                .and_then(|(id, _)| Some((id, view.get(id)?)))
            else {
                plan.claim.push(name);
                continue;
            };
            if v.disabled {
                if v.reason.as_deref() == Some("failing") {
                    match v.next_probe_at {
                        Some(at) if at > now => soonest(at),
                        _ => probes.entry(id.clone()).or_default().push(name),
                    }
                }
            } else if let Some(until) = v.paused_until.filter(|until| *until > now) {
                soonest(until);
            } else if let Some(rate) = match (v.rate_per_s, ramp(v.released_at, now)) {
                (Some(rate), Some(ramp)) => Some(rate.min(ramp)),
                (rate, ramp) => rate.or(ramp),
            } {
                limited
                    .entry(id.clone())
                    .or_insert((rate, Vec::new()))
                    .1
                    .push(name);
            } else {
                plan.claim.push(name);
            }
        }
        plan.probes = probes.into_iter().collect();
        plan.limited = limited
            .into_iter()
            .map(|(id, (rate, types))| (id, rate, types))
            .collect();
        plan.next_change = next_change.map(|at| (at - now).to_std().unwrap_or_default());
        plan
    }

    /// Pauses sends to `endpoint` for `pause` (a receiver's `Retry-After`):
    /// at once on this replica, within a second on the others.
    pub async fn pause(&self, endpoint: &str, pause: Duration) -> sqlx::Result<()> {
        let until = Utc::now() + pause;
        let mut view = (**self.view.load()).clone();
        if let Some(v) = view.get_mut(endpoint) {
            v.paused_until = Some(v.paused_until.map_or(until, |u| u.max(until)));
        }
        self.view.store(Arc::new(view));
        sqlx::query(
            "UPDATE endpoints SET paused_until = greatest(paused_until, now() + make_interval(secs => $2)) \
             WHERE id = $1",
        )
        .bind(endpoint)
        .bind(pause.as_secs_f64())
        .execute(&self.pool)
        .await?;
        tracing::info!(endpoint, pause = %humantime::format_duration(pause), "the receiver asked for a pause (Retry-After): no sends to this endpoint until it is over");
        Ok(())
    }

    /// Takes up to `want` deliveries from `endpoint`'s bucket, shared by the
    /// fleet: the bucket holds at most one second's worth and fills at
    /// `rate` (its `rate_per_s`, or less while it ramps up after being
    /// enabled). Returns how many were granted.
    pub async fn take_tokens(&self, endpoint: &str, rate: f64, want: usize) -> sqlx::Result<usize> {
        let granted: Option<i64> = sqlx::query_scalar(
            "WITH cur AS ( \
                 SELECT id, least($3, tokens + $3 * \
                     extract(epoch FROM clock_timestamp() - tokens_at)::float8) AS tokens \
                 FROM endpoints WHERE id = $1 FOR UPDATE) \
             UPDATE endpoints e SET tokens = cur.tokens - least(floor(cur.tokens), $2), \
                 tokens_at = clock_timestamp() \
             FROM cur WHERE e.id = cur.id \
             RETURNING least(floor(cur.tokens), $2)::int8",
        )
        .bind(endpoint)
        .bind(want as f64)
        .bind(rate)
        .fetch_optional(&self.pool)
        .await?;
        Ok(granted.unwrap_or(0).max(0) as usize)
    }

    /// Gives back tokens taken but not used (fewer events were due).
    pub async fn return_tokens(
        &self,
        endpoint: &str,
        rate: f64,
        unused: usize,
    ) -> sqlx::Result<()> {
        if unused > 0 {
            sqlx::query("UPDATE endpoints SET tokens = least($3, tokens + $2) WHERE id = $1")
                .bind(endpoint)
                .bind(unused as f64)
                .bind(rate)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Sets or lifts (`None`) the fleet-wide rate of `endpoint`; `None` when
    /// there is no such endpoint.
    pub async fn set_rate(
        &self,
        id: &str,
        rate: Option<f64>,
        actor: &Actor,
    ) -> sqlx::Result<Option<Endpoint>> {
        let updated: i64 = sqlx::query_scalar(
            "WITH upd AS (UPDATE endpoints SET rate_per_s = $2, tokens = 0, tokens_at = now(), \
                 changed_at = now() WHERE id = $1 RETURNING id, url), \
             audit AS (INSERT INTO audit_log (actor, action, target, detail) \
                 SELECT $3, 'endpoint.update', id, \
                     jsonb_build_object('url', url, 'rate_per_s', $2::float8) FROM upd) \
             SELECT count(*) FROM upd",
        )
        .bind(id)
        .bind(rate)
        .bind(actor.as_str())
        .fetch_one(&self.pool)
        .await?;
        if updated == 0 {
            return Ok(None);
        }
        tracing::info!(endpoint = id, rate_per_s = ?rate, "endpoint rate set");
        self.refresh().await?;
        self.get(id).await
    }

    /// Takes the fleet's next probe of `endpoint`, if it is due and no other
    /// replica took it: `true` when this replica is to send it.
    pub async fn take_probe(&self, endpoint: &str) -> sqlx::Result<bool> {
        let next: Option<DateTime<Utc>> = sqlx::query_scalar(
            "UPDATE endpoints SET next_probe_at = now() + make_interval(secs => $2) \
             WHERE id = $1 AND state = 'disabled' AND disabled_reason = 'failing' \
               AND (next_probe_at IS NULL OR next_probe_at <= now()) \
             RETURNING next_probe_at",
        )
        .bind(endpoint)
        .bind(self.settings.probe.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        let Some(next) = next else {
            return Ok(false);
        };
        let mut view = (**self.view.load()).clone();
        if let Some(v) = view.get_mut(endpoint) {
            v.next_probe_at = Some(next);
        }
        self.view.store(Arc::new(view));
        Ok(true)
    }

    /// Notes an attempt's contact with `endpoint` from this replica.
    pub fn observe(&self, endpoint: &str, contact: Contact) {
        if contact != Contact::Down && !self.any_failing.load(Ordering::Relaxed) {
            return;
        }
        let mut failing = self.failing_here.lock().unwrap_or_else(|e| e.into_inner());
        if contact == Contact::Down {
            if !failing.contains_key(endpoint) {
                failing.insert(endpoint.to_string(), Instant::now());
            }
        } else {
            failing.remove(endpoint);
        }
        self.any_failing
            .store(!failing.is_empty(), Ordering::Relaxed);
    }

    /// Whether the fleet's attempts to `endpoint` have all failed for at
    /// least `for_at_least` (its failing streak, as the replicas recorded
    /// it). Asked only when an event runs out of retries and this replica's
    /// own view is too short to tell: its earlier attempts may have gone
    /// out from other replicas.
    pub async fn failing_in_fleet(
        &self,
        endpoint: &str,
        for_at_least: Duration,
    ) -> sqlx::Result<bool> {
        sqlx::query_scalar(
            "SELECT coalesce(failing_since <= now() - make_interval(secs => $2), false) \
             FROM endpoints WHERE id = $1",
        )
        .bind(endpoint)
        .bind(for_at_least.as_secs_f64())
        .fetch_optional(&self.pool)
        .await
        .map(|f| f.unwrap_or(false))
    }

    /// Whether everything sent to `endpoint` since `since` failed: it is
    /// disabled, or this replica's attempts have all failed since before
    /// `since` (no success or answer in between). An event that runs out of
    /// retries then waits instead of failing; one refused while others get
    /// through (a success since its previous attempt) fails.
    pub fn failing_everything(&self, endpoint: &str, since: Instant) -> bool {
        self.disabled(endpoint)
            || self
                .failing_here
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(endpoint)
                .is_some_and(|start| *start <= since)
    }

    /// Writes a batch of attempts' counts per endpoint; disables an endpoint
    /// failing for `disable_after`, enables one a success reached (a probe),
    /// and then releases its waiting events in due order.
    pub async fn record(&self, attempts: &[Attempted]) -> sqlx::Result<()> {
        if attempts.is_empty() {
            return Ok(());
        }
        #[derive(Default)]
        struct Counts {
            succeeded: i32,
            answered: i32,
            down: i32,
            error: Option<String>,
        }
        let mut by_endpoint: BTreeMap<&str, Counts> = BTreeMap::new();
        for a in attempts {
            let counts = by_endpoint.entry(&a.endpoint).or_default();
            match a.contact {
                Contact::Success => counts.succeeded += 1,
                Contact::Answered => counts.answered += 1,
                Contact::Down => counts.down += 1,
            }
            if a.error.is_some() {
                counts.error.clone_from(&a.error);
            }
        }
        let ids: Vec<&str> = by_endpoint.keys().copied().collect();
        let succeeded: Vec<i32> = by_endpoint.values().map(|c| c.succeeded).collect();
        let answered: Vec<i32> = by_endpoint.values().map(|c| c.answered).collect();
        let down: Vec<i32> = by_endpoint.values().map(|c| c.down).collect();
        let errors: Vec<Option<&str>> = by_endpoint.values().map(|c| c.error.as_deref()).collect();
        let changes: Vec<(String, String, String, Option<String>)> = sqlx::query_as(RECORD)
            .bind(&ids)
            .bind(&succeeded)
            .bind(&answered)
            .bind(&down)
            .bind(&errors)
            .bind(self.settings.disable_after.as_secs_f64())
            .bind(self.settings.probe.as_secs_f64())
            .fetch_all(&self.pool)
            .await?;
        for (id, was, now, error) in &changes {
            if was == now {
                continue;
            }
            let url = self.url_shown(id);
            if now == "disabled" {
                crate::metrics::endpoint_changed(id, true);
                tracing::warn!(
                    endpoint = %id,
                    url,
                    last_error = error.as_deref().unwrap_or(""),
                    disable_after = %humantime::format_duration(self.settings.disable_after),
                    probe = %humantime::format_duration(self.settings.probe),
                    "endpoint disabled: every attempt failed for KAIROS_ENDPOINT_DISABLE_AFTER; its events wait, and one is sent every KAIROS_ENDPOINT_PROBE"
                );
            } else {
                crate::metrics::endpoint_changed(id, false);
                let released = self.release_waiting(id).await?;
                tracing::info!(endpoint = %id, url, released, "endpoint enabled: a probe succeeded; its waiting events go out in due order");
            }
        }
        if changes.iter().any(|(_, was, now, _)| was != now) {
            self.refresh().await?;
        }
        Ok(())
    }

    fn url_shown(&self, endpoint: &str) -> String {
        self.endpoints_by_type()
            .into_values()
            .find(|(id, _)| id == endpoint)
            .map(|(_, url)| shown(&url))
            .unwrap_or_default()
    }

    /// Makes the waiting events of `endpoint`'s types due now, in due
    /// order: the claimer takes them by `run_at`, which becomes `due_at`
    /// for every one whose retry was later.
    async fn release_waiting(&self, endpoint: &str) -> sqlx::Result<u64> {
        let types = self.types_of(endpoint);
        Ok(sqlx::query(
            "UPDATE events SET run_at = due_at, updated_at = now() \
             WHERE status = 'pending' AND event_type = ANY($1) AND run_at > due_at",
        )
        .bind(&types)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Disables (`enable = false`) or enables an endpoint by hand; `None`
    /// when there is no such endpoint.
    pub async fn set_by_hand(
        &self,
        id: &str,
        enable: bool,
        actor: &Actor,
    ) -> sqlx::Result<Option<Endpoint>> {
        let changed: Option<(String,)> = sqlx::query_as(if enable {
            concat!(
                "WITH old AS (SELECT id, state FROM endpoints WHERE id = $1 FOR UPDATE), \
                 upd AS (UPDATE endpoints e SET state = 'active', disabled_reason = NULL, \
                     next_probe_at = NULL, failing_since = NULL, consecutive_failures = 0, \
                     released_at = CASE WHEN old.state = 'active' THEN e.released_at ELSE now() END, \
                     tokens = CASE WHEN old.state = 'active' THEN e.tokens ELSE 0 END, \
                     tokens_at = CASE WHEN old.state = 'active' THEN e.tokens_at ELSE now() END, \
                     changed_at = CASE WHEN old.state = 'active' THEN e.changed_at ELSE now() END \
                 FROM old WHERE e.id = old.id \
                 RETURNING e.id, e.url, old.state AS was, e.state AS now, \
                     e.disabled_reason AS reason, e.last_error, e.changed_at), \
                 changed AS (SELECT * FROM upd WHERE was <> now) ",
                endpoint_changes_on_record!("$2::text"),
                "SELECT was FROM upd"
            )
        } else {
            concat!(
                "WITH old AS (SELECT id, state, disabled_reason FROM endpoints \
                     WHERE id = $1 FOR UPDATE), \
                 upd AS (UPDATE endpoints e SET state = 'disabled', disabled_reason = 'manual', \
                     next_probe_at = NULL, \
                     changed_at = CASE WHEN e.disabled_reason = 'manual' THEN e.changed_at \
                         ELSE now() END \
                 FROM old WHERE e.id = old.id \
                 RETURNING e.id, e.url, old.state AS was, e.state AS now, \
                     e.disabled_reason AS reason, e.last_error, e.changed_at, \
                     old.disabled_reason IS DISTINCT FROM 'manual' AS news), \
                 changed AS (SELECT * FROM upd WHERE news) ",
                endpoint_changes_on_record!("$2::text"),
                "SELECT was FROM upd"
            )
        })
        .bind(id)
        .bind(actor.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some((was,)) = changed else {
            return Ok(None);
        };
        if enable {
            if was == "disabled" {
                let released = self.release_waiting(id).await?;
                tracing::info!(endpoint = %id, released, "endpoint enabled by hand; its waiting events go out in due order");
            }
            self.failing_here
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
        } else {
            tracing::warn!(endpoint = %id, "endpoint disabled by hand; its events wait until it is enabled by hand");
        }
        crate::metrics::endpoint_changed(id, !enable);
        self.refresh().await?;
        self.get(id).await
    }

    /// Every endpoint, with its waiting events and the types that use it here.
    pub async fn list(&self) -> sqlx::Result<Vec<Endpoint>> {
        let mut endpoints: Vec<Endpoint> = sqlx::query_as(
            "SELECT id, url, state, disabled_reason, consecutive_failures, last_success_at, \
             last_failure_at, last_error, rate_per_s FROM endpoints ORDER BY url, id",
        )
        .fetch_all(&self.pool)
        .await?;
        let by_type = self.endpoints_by_type();
        for endpoint in &mut endpoints {
            endpoint.event_types = by_type
                .iter()
                .filter(|(_, (id, _))| *id == endpoint.id)
                .map(|(name, _)| name.clone())
                .collect();
            if endpoint.state == "disabled" {
                endpoint.waiting =
                    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = ANY($1)")
                        .bind(&endpoint.event_types)
                        .fetch_one(&self.pool)
                        .await?;
            }
        }
        Ok(endpoints)
    }

    pub async fn get(&self, id: &str) -> sqlx::Result<Option<Endpoint>> {
        Ok(self.list().await?.into_iter().find(|e| e.id == id))
    }
}

/// Adds a batch's counts to each endpoint. Any success or answer ends a
/// failing streak (and enables an endpoint the host disabled: a probe got
/// through); nothing but retryable failures starts or continues one, and
/// one older than `disable_after` disables the endpoint. Returns each
/// endpoint's state before and after, and its last error.
const RECORD: &str = concat!(
    "WITH b AS ( \
        SELECT * FROM unnest($1::text[], $2::int[], $3::int[], $4::int[], $5::text[]) \
        AS b(id, succeeded, answered, down, error)), \
    old AS (SELECT e.id, e.state FROM endpoints e JOIN b USING (id) ORDER BY e.id FOR UPDATE OF e), \
    upd AS (UPDATE endpoints e SET \
        consecutive_failures = CASE WHEN a.alive THEN 0 ELSE e.consecutive_failures + b.down END, \
        failing_since = CASE WHEN a.alive THEN NULL ELSE coalesce(e.failing_since, now()) END, \
        last_success_at = CASE WHEN b.succeeded > 0 THEN now() ELSE e.last_success_at END, \
        last_failure_at = CASE WHEN b.down > 0 THEN now() ELSE e.last_failure_at END, \
        last_error = coalesce(b.error, e.last_error), \
        state = CASE \
            WHEN a.alive AND e.disabled_reason = 'failing' THEN 'active' \
            WHEN NOT a.alive AND e.state = 'active' \
                 AND coalesce(e.failing_since, now()) <= now() - d.after THEN 'disabled' \
            ELSE e.state END, \
        disabled_reason = CASE \
            WHEN a.alive AND e.disabled_reason = 'failing' THEN NULL \
            WHEN NOT a.alive AND e.state = 'active' \
                 AND coalesce(e.failing_since, now()) <= now() - d.after THEN 'failing' \
            ELSE e.disabled_reason END, \
        next_probe_at = CASE \
            WHEN a.alive AND e.disabled_reason = 'failing' THEN NULL \
            WHEN NOT a.alive AND e.state = 'active' \
                 AND coalesce(e.failing_since, now()) <= now() - d.after THEN now() + d.probe \
            ELSE e.next_probe_at END, \
        released_at = CASE WHEN a.alive AND e.disabled_reason = 'failing' THEN now() \
            ELSE e.released_at END, \
        tokens = CASE WHEN a.alive AND e.disabled_reason = 'failing' THEN 0 ELSE e.tokens END, \
        tokens_at = CASE WHEN a.alive AND e.disabled_reason = 'failing' THEN now() \
            ELSE e.tokens_at END, \
        changed_at = CASE \
            WHEN (a.alive AND e.disabled_reason = 'failing') \
              OR (NOT a.alive AND e.state = 'active' \
                  AND coalesce(e.failing_since, now()) <= now() - d.after) THEN now() \
            ELSE e.changed_at END \
    FROM b CROSS JOIN LATERAL (SELECT b.succeeded + b.answered > 0 AS alive) a, old, \
        (SELECT make_interval(secs => $6) AS after, make_interval(secs => $7) AS probe) d \
    WHERE e.id = b.id AND old.id = e.id \
    RETURNING e.id, e.url, old.state AS was, e.state AS now, e.disabled_reason AS reason, \
        e.last_error, e.changed_at), \
    changed AS (SELECT * FROM upd WHERE was <> now) ",
    endpoint_changes_on_record!("'kairos'"),
    "SELECT id, was, now, last_error FROM upd"
);
