//! `GET /`: the status page. Rendered on the server (maud), with no build
//! step and nothing from outside: the page's small script fetches `/` again
//! every 5 s and swaps the figures in place. Without the admin token it
//! shows counts, the chart, endpoints and types — no person's name or
//! date; with it (typed into the page, sent as a bearer token), the latest
//! failures with their error and every attempt, and retry and enable
//! buttons.

use super::AppState;
use super::error::ApiError;
use crate::endpoints::Endpoint;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use sqlx::PgPool;
use uuid::Uuid;

/// Counts are exact up to this; above it, an estimate.
const EXACT_UP_TO: i64 = 10_000;
/// Failures listed with the admin token.
const FAILURES_LISTED: i64 = 20;
const STATUSES: [&str; 5] = ["pending", "processing", "delivered", "failed", "cancelled"];

#[utoipa::path(
    get,
    path = "/",
    tag = "operations",
    responses(
        (status = 200, description = "The status page (HTML). With the admin token as a bearer token, it lists the latest failures with retry and enable buttons", content_type = "text/html"),
        (status = 500, description = "Unexpected failure (logged, not shown)", body = super::error::ErrorBody),
    )
)]
pub(super) async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let admin = state.tokens.admin_in(&headers);
    let token_given = headers.contains_key(header::AUTHORIZATION);
    let figures = Figures::read(&state, admin).await?;
    let body = render(&figures, admin, token_given);
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.into_string(),
    )
        .into_response())
}

/// Everything the page shows, read once per request.
struct Figures {
    at: DateTime<Utc>,
    counts: Vec<(&'static str, i64, bool)>,
    due_hour: i64,
    due_day: i64,
    /// Per minute, oldest first: (delivered, failed), 60 of them.
    minutes: Vec<(i64, i64)>,
    endpoints: Vec<Endpoint>,
    types: Vec<TypeLine>,
    /// With the admin token only.
    failures: Vec<Failure>,
}

struct TypeLine {
    name: String,
    version: String,
    replicas: Vec<(String, bool)>,
}

#[derive(sqlx::FromRow)]
struct Failure {
    id: Uuid,
    user_id: Uuid,
    event_type: String,
    due_at: DateTime<Utc>,
    attempts: i32,
    last_error: Option<String>,
    /// Its attempt log, oldest first.
    #[sqlx(skip)]
    tries: Vec<Try>,
}

/// One attempt of a failed event, as the admin view lists it.
#[derive(sqlx::FromRow)]
struct Try {
    event_id: Uuid,
    n: i64,
    at: DateTime<Utc>,
    status: Option<i16>,
    latency_ms: i32,
    outcome: String,
    error: Option<String>,
}

impl Figures {
    async fn read(state: &AppState, admin: bool) -> Result<Self, ApiError> {
        let pool = &state.pool;
        let mut counts = Vec::new();
        for status in STATUSES {
            let (count, exact) = count_status(pool, status).await?;
            counts.push((status, count, exact));
        }
        let due_within = |interval: &'static str| async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM (SELECT 1 FROM events WHERE status = 'pending' \
                 AND run_at < now() + $1::interval LIMIT 10001) s",
            )
            .bind(interval)
            .fetch_one(pool)
            .await
        };
        let due_hour = due_within("1 hour").await?;
        let due_day = due_within("1 day").await?;
        let rows: Vec<(i32, String, i64)> = sqlx::query_as(
            "SELECT floor(extract(epoch FROM now() - updated_at) / 60)::int4 AS ago, status, \
                 count(*) \
             FROM event_history \
             WHERE updated_at > now() - interval '60 minutes' AND status IN ('delivered', 'failed') \
             GROUP BY 1, 2",
        )
        .fetch_all(pool)
        .await?;
        let mut minutes = vec![(0, 0); 60];
        for (ago, status, count) in rows {
            if let Some(slot) = usize::try_from(ago).ok().filter(|a| *a < 60) {
                let minute = &mut minutes[59 - slot];
                if status == "delivered" {
                    minute.0 += count;
                } else {
                    minute.1 += count;
                }
            }
        }
        let replicas = crate::fleet::replicas(pool).await?;
        let types = state
            .registry
            .snapshot()
            .values()
            .map(|plugin| TypeLine {
                name: plugin.name().to_string(),
                version: plugin.info.version.clone(),
                replicas: replicas
                    .iter()
                    .filter(|r| {
                        r.serving
                            .get(plugin.name())
                            .is_some_and(|s| s.generation.is_some())
                    })
                    .map(|r| (r.host.clone(), r.stale))
                    .collect(),
            })
            .collect();
        let failures = if admin {
            failures(pool).await?
        } else {
            Vec::new()
        };
        Ok(Self {
            at: Utc::now(),
            counts,
            due_hour,
            due_day,
            minutes,
            endpoints: state.endpoints.list().await?,
            types,
            failures,
        })
    }
}

/// The latest failed events, each with its attempts.
async fn failures(pool: &PgPool) -> sqlx::Result<Vec<Failure>> {
    let mut failures: Vec<Failure> = sqlx::query_as(
        "SELECT id, user_id, event_type, due_at, attempts, last_error FROM event_history \
         WHERE status = 'failed' ORDER BY updated_at DESC, id LIMIT $1",
    )
    .bind(FAILURES_LISTED)
    .fetch_all(pool)
    .await?;
    let ids: Vec<Uuid> = failures.iter().map(|f| f.id).collect();
    let tries: Vec<Try> = sqlx::query_as(concat!(
        "SELECT event_id, row_number() OVER (PARTITION BY event_id ORDER BY at) AS n, at, \
             status, latency_ms, outcome, error FROM (",
        crate::store::attempts_of!("= ANY($1)"),
        ") a ORDER BY event_id, at"
    ))
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    for attempt in tries {
        if let Some(f) = failures.iter_mut().find(|f| f.id == attempt.event_id) {
            f.tries.push(attempt);
        }
    }
    Ok(failures)
}

/// Events with `status`: exact up to `EXACT_UP_TO`, else the planner's
/// estimate (the table's rows times the status's share in its statistics).
async fn count_status(pool: &PgPool, status: &str) -> sqlx::Result<(i64, bool)> {
    let table = if matches!(status, "pending" | "processing") {
        "events"
    } else {
        "event_history"
    };
    // The table name is one of the two above.
    let exact: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM (SELECT 1 FROM {table} WHERE status = $1 LIMIT $2) s"
    )))
    .bind(status)
    .bind(EXACT_UP_TO + 1)
    .fetch_one(pool)
    .await?;
    if exact <= EXACT_UP_TO {
        return Ok((exact, true));
    }
    let estimate: Option<f64> = sqlx::query_scalar(
        "SELECT c.reltuples * coalesce(( \
             SELECT f.freq FROM pg_stats s, \
                 unnest(s.most_common_vals::text::text[], s.most_common_freqs) AS f(val, freq) \
             WHERE s.tablename = $1 AND s.attname = 'status' AND f.val = $2), 0)::float8 \
         FROM pg_class c WHERE c.oid = $1::regclass",
    )
    .bind(table)
    .bind(status)
    .fetch_optional(pool)
    .await?
    .flatten();
    Ok((
        estimate.map_or(exact, |e| (e.round() as i64).max(exact)),
        false,
    ))
}

fn render(figures: &Figures, admin: bool, token_given: bool) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "kairos status" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { "kairos" }
                    form id="token-form" {
                        label {
                            "Admin token "
                            input type="password" name="token" autocomplete="off" placeholder="press Enter to apply";
                        }
                        button type="button" id="forget" { "Forget" }
                    }
                }
                main id="live" {
                    (live(figures, admin, token_given))
                }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    }
}

/// The part the page's script swaps in on each refresh.
fn live(figures: &Figures, admin: bool, token_given: bool) -> Markup {
    html! {
        p class="as-of" {
            "As of " time datetime=(figures.at.to_rfc3339()) { (figures.at.format("%Y-%m-%d %H:%M:%S UTC")) }
            @if admin { " · admin view" } @else if token_given { " · that token is not the admin token" }
        }
        section {
            h2 { "Events" }
            div class="counts" {
                @for (status, count, exact) in &figures.counts {
                    div class={ "count " (status) } {
                        span class="label" { (status) }
                        span class="number" data-status=(status) data-exact=(exact) { (count) }
                    }
                }
                div class="count" {
                    span class="label" { "due in the next hour" }
                    span class="number" data-due="hour" { (figures.due_hour) }
                }
                div class="count" {
                    span class="label" { "due in the next day" }
                    span class="number" data-due="day" { (figures.due_day) }
                }
            }
            h3 { "Delivered and failed per minute, last hour" }
            (chart(&figures.minutes))
        }
        section {
            h2 { "Endpoints" }
            @if figures.endpoints.is_empty() {
                p { "None yet." }
            } @else {
                table id="endpoints" {
                    thead { tr { th { "URL" } th { "state" } th { "waiting" } th { "failures in a row" } th { "last error" } th { "rate" } @if admin { th {} } } }
                    tbody {
                        @for e in &figures.endpoints {
                            tr data-endpoint=(e.id) data-state=(e.state) {
                                td { code { (e.url) } }
                                td class={ "state " (e.state) } {
                                    (e.state)
                                    @if let Some(reason) = &e.disabled_reason { " (" (reason) ")" }
                                }
                                td data-waiting=(e.waiting) { (e.waiting) }
                                td { (e.consecutive_failures) }
                                td class="error" { (e.last_error.as_deref().unwrap_or("")) }
                                td { @if let Some(rate) = e.rate_per_s { (rate) "/s" } @else { "unlimited" } }
                                @if admin {
                                    td {
                                        @if e.state == "disabled" {
                                            button type="button" class="enable" data-endpoint=(e.id) { "Enable" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Event types" }
            table id="types" {
                thead { tr { th { "type" } th { "version" } th { "served by" } } }
                tbody {
                    @for t in &figures.types {
                        tr data-type=(t.name) {
                            td { (t.name) }
                            td { (t.version) }
                            td {
                                @for (host, stale) in &t.replicas {
                                    span class={ "replica" @if *stale { " stale" } } { (host) }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if admin {
            section id="failures" {
                h2 { "Latest failures" }
                @if figures.failures.is_empty() {
                    p { "None." }
                } @else {
                    table {
                        thead { tr { th { "event" } th { "user" } th { "type" } th { "due" } th { "attempts" } th { "error" } th {} } }
                        tbody {
                            @for f in &figures.failures {
                                tr data-event=(f.id) {
                                    td { code { (f.id) } }
                                    td { code { (f.user_id) } }
                                    td { (f.event_type) }
                                    td { (f.due_at.format("%Y-%m-%d %H:%M UTC")) }
                                    td { (f.attempts) }
                                    td class="error" { (f.last_error.as_deref().unwrap_or("")) }
                                    td { button type="button" class="retry" data-event=(f.id) { "Retry" } }
                                }
                                @if !f.tries.is_empty() {
                                    tr class="attempts" data-attempts-of=(f.id) {
                                        td colspan="7" {
                                            ol {
                                                @for t in &f.tries {
                                                    li data-outcome=(t.outcome) {
                                                        "#" (t.n) " · " (t.at.format("%Y-%m-%d %H:%M:%S UTC"))
                                                        " · " @if let Some(status) = t.status { "HTTP " (status) } @else { "no answer" }
                                                        " · " (t.latency_ms) " ms · " (t.outcome)
                                                        @if let Some(error) = &t.error { " · " span class="error" { (error) } }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Delivered (bars up, green) and failed (bars down, red) per minute, as an
/// inline SVG scaled to the busiest minute.
fn chart(minutes: &[(i64, i64)]) -> Markup {
    const WIDTH: f64 = 600.0;
    const HALF: f64 = 60.0;
    let peak = minutes
        .iter()
        .map(|(d, f)| (*d).max(*f))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let bar = WIDTH / minutes.len().max(1) as f64;
    html! {
        svg id="chart" viewBox={ "0 0 " (WIDTH) " " (HALF * 2.0 + 14.0) } role="img"
            aria-label="delivered and failed per minute over the last hour" {
            line x1="0" y1=(HALF) x2=(WIDTH) y2=(HALF) class="axis" {}
            @for (i, (delivered, failed)) in minutes.iter().enumerate() {
                @let x = i as f64 * bar;
                @if *delivered > 0 {
                    @let h = *delivered as f64 / peak * HALF;
                    rect class="delivered" x=(x) y=(HALF - h) width=(bar - 1.0) height=(h) {
                        title { (delivered) " delivered, " (59 - i) " min ago" }
                    }
                }
                @if *failed > 0 {
                    @let h = *failed as f64 / peak * HALF;
                    rect class="failed" x=(x) y=(HALF) width=(bar - 1.0) height=(h) {
                        title { (failed) " failed, " (59 - i) " min ago" }
                    }
                }
            }
            text x="0" y=(HALF * 2.0 + 12.0) class="tick" { "-60 min" }
            text x=(WIDTH) y=(HALF * 2.0 + 12.0) class="tick end" { "now · peak " (peak as i64) "/min" }
        }
    }
}

const STYLE: &str = r#"
body { font: 15px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 70rem; padding: 1rem 1.5rem; color: #1d2330; }
header { display: flex; justify-content: space-between; align-items: center; gap: 1rem; flex-wrap: wrap; }
h1 { margin: 0; font-size: 1.6rem; } h2 { font-size: 1.15rem; margin: 1.4rem 0 .5rem; } h3 { font-size: .95rem; font-weight: 600; color: #555; }
.as-of { color: #666; font-size: .85rem; }
.counts { display: flex; flex-wrap: wrap; gap: .75rem; }
.count { border: 1px solid #d9dde6; border-radius: 6px; padding: .5rem .8rem; min-width: 7.5rem; }
.count .label { display: block; color: #666; font-size: .8rem; }
.count .number { font-size: 1.5rem; font-variant-numeric: tabular-nums; }
.count.failed .number { color: #b3261e; } .count.delivered .number { color: #1b7f3b; }
svg { width: 100%; max-width: 60rem; height: auto; background: #fafbfc; border: 1px solid #eceef3; }
rect.delivered { fill: #3aa663; } rect.failed { fill: #d9534f; } .axis { stroke: #c5cad6; }
.tick { font-size: 10px; fill: #777; } .tick.end { text-anchor: end; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid #eceef3; vertical-align: top; }
tr.attempts td { border-bottom: 1px solid #d9dde6; padding-top: 0; }
tr.attempts ol { margin: 0; padding-left: 1.5rem; color: #555; font-size: .8rem; }
span.error, td.error { color: #8a1c16; max-width: 28rem; overflow-wrap: anywhere; }
.state.disabled { color: #b3261e; font-weight: 600; } .state.active { color: #1b7f3b; }
.replica { display: inline-block; background: #eef1f7; border-radius: 4px; padding: 0 .4rem; margin: 0 .25rem .2rem 0; font-size: .8rem; }
.replica.stale { background: #fbe9e7; color: #8a1c16; }
button { font: inherit; padding: .15rem .7rem; }
"#;

/// Polls `/` every 5 s with the tab's token and swaps `#live`; the token is
/// applied on Enter and kept in `sessionStorage` (this tab only). Buttons
/// post with the token, then refresh at once.
const SCRIPT: &str = r#"
(() => {
  const KEY = 'kairos-admin-token';
  const input = document.querySelector('input[name=token]');
  const headers = () => {
    const token = sessionStorage.getItem(KEY);
    return token ? { Authorization: 'Bearer ' + token } : {};
  };
  let refreshing = null;
  const refresh = () => {
    refreshing = refreshing || fetch('/', { headers: headers(), cache: 'no-store' })
      .then(r => r.text())
      .then(text => {
        const next = new DOMParser().parseFromString(text, 'text/html').getElementById('live');
        if (next) document.getElementById('live').replaceWith(next);
        document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
      })
      .catch(() => {})
      .finally(() => { refreshing = null; });
    return refreshing;
  };
  document.getElementById('token-form').addEventListener('submit', e => {
    e.preventDefault();
    sessionStorage.setItem(KEY, input.value);
    input.value = '';
    refresh();
  });
  document.getElementById('forget').addEventListener('click', () => {
    sessionStorage.removeItem(KEY);
    refresh();
  });
  document.addEventListener('click', e => {
    const button = e.target.closest('button.retry, button.enable');
    if (!button) return;
    const url = button.classList.contains('retry')
      ? '/events/' + button.dataset.event + '/retry'
      : '/endpoints/' + button.dataset.endpoint + '/enable';
    button.disabled = true;
    fetch(url, { method: 'POST', headers: headers() }).then(refresh);
  });
  if (sessionStorage.getItem(KEY)) refresh();
  setInterval(refresh, 5000);
})();
"#;
