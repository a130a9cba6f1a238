//! Delivery: format the message with the event's plugin, POST it as a signed
//! webhook, decide the outcome (delivered, retry later, failed), and for an
//! occurrence that is over, plan its successor, so that recording a batch of
//! outcomes (`lease::complete`) runs no plugin.

use crate::endpoints::{Attempted, Contact, Endpoints};
use crate::lease::{AttemptRecord, Claimed, ClaimedEvent, Completion, DeliveryOutcome, Successor};
use crate::outbound::{self, AllowList};
use crate::plugin::{LoadedPlugin, Registry, Subject};
use crate::store::{User, format_local};
use crate::{metrics, scheduler, signing};
use chrono::{DateTime, Utc};
use rand::{Rng, RngExt};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::oneshot;
use uuid::Uuid;

/// Capped exponential backoff with ±20 % jitter:
/// `min(max, base · 2^(n−1))` after the n-th failed attempt.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// The delay before the next attempt, without jitter.
    pub fn backoff(&self, failed_attempts: u32) -> Duration {
        let exponent = failed_attempts.saturating_sub(1).min(62);
        self.base
            .checked_mul(1u32.checked_shl(exponent.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The delay with jitter drawn from `rng`.
    pub fn delay(&self, failed_attempts: u32, rng: &mut impl Rng) -> Duration {
        self.backoff(failed_attempts)
            .mul_f64(rng.random_range(0.8..=1.2))
    }
}

#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Used for types without a `webhook_url` of their own.
    pub default_webhook_url: Option<String>,
    /// The decoded `whsec_` key; `None` sends no signature.
    pub signing_key: Option<Vec<u8>>,
    pub retry: RetryPolicy,
    /// Events due longer ago than this are failed rather than sent late.
    pub max_lateness: Option<Duration>,
    /// Special-purpose addresses webhooks may reach anyway
    /// (`KAIROS_WEBHOOK_ALLOW`); names are checked by the client's resolver,
    /// IP literals here.
    pub allow: Arc<AllowList>,
    /// The plugin call deadline: how long a claimed event may wait for its
    /// turn in its batch's plugin work (`Deliverer::prepare`).
    pub plugin_deadline: Duration,
}

/// Everything a delivery needs, shared by all of them.
pub struct Deliverer {
    registry: Arc<Registry>,
    client: reqwest::Client,
    settings: DeliverySettings,
    /// The fleet's endpoints: attempts are counted per endpoint, and an
    /// event whose endpoint fails everything waits instead of failing.
    endpoints: Option<Arc<Endpoints>>,
    /// This replica, as the attempt log names it.
    replica: Uuid,
}

/// Why an attempt failed, and whether another attempt may succeed.
struct AttemptError {
    message: String,
    retryable: bool,
    /// What the receiver asked for in `Retry-After` (on `429` and `503`).
    retry_after: Option<Duration>,
    /// What the attempt told about the endpoint; `None` when nothing was
    /// sent (no message, no URL, a refused address).
    contact: Option<Contact>,
    /// The receiver's HTTP status, when it answered.
    status: Option<u16>,
    /// The target is not an allowed address: no connection was made.
    refused: bool,
}

impl AttemptError {
    fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            retry_after: None,
            contact: None,
            status: None,
            refused: false,
        }
    }
    fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            retry_after: None,
            contact: None,
            status: None,
            refused: false,
        }
    }
    fn with_contact(self, contact: Contact) -> Self {
        Self {
            contact: Some(contact),
            ..self
        }
    }
    /// Sent to an address the allow list refuses.
    fn refused(message: impl Into<String>) -> Self {
        Self {
            refused: true,
            ..Self::permanent(message)
        }
    }
}

/// A `Retry-After` value: delay-seconds, or an HTTP date (a date in the
/// past is no wait). `None` when absent or unreadable.
fn retry_after(value: Option<&reqwest::header::HeaderValue>, now: SystemTime) -> Option<Duration> {
    let text = value?.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(text.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A claimed event with its plugin work done: the message to send and the
/// series' next occurrence, or the outcome when there is nothing to attempt.
pub struct Prepared {
    event: ClaimedEvent,
    work: Work,
}

enum Work {
    /// Not attempted: the type was unloaded here since the claim (given back
    /// for a replica that has it) or the user is gone.
    Settled(DeliveryOutcome),
    Attempt {
        plugin: Arc<LoadedPlugin>,
        /// The text, or why the plugin could not make it.
        message: Result<String, String>,
        /// Used when the attempt finishes the occurrence.
        successor: Next,
    },
}

/// A series' next occurrence, as prepared for an attempt.
enum Next {
    Planned(Successor),
    /// The message failed: a failing type is not also asked for a next
    /// occurrence that a retry would not use. Planned from this user only if
    /// the attempt finishes the occurrence (attempts exhausted).
    Deferred(User),
}

/// An event whose plugin work is under way in a batch (`Deliverer::prepare`).
pub struct Preparing {
    pub event: ClaimedEvent,
    ready: oneshot::Receiver<Prepared>,
}

/// Claimed events waiting for a worker, shared by a batch's workers.
type Queue = Arc<Mutex<VecDeque<(Claimed, oneshot::Sender<Prepared>)>>>;

/// Events one blocking worker prepares before another one is started.
const EVENTS_PER_WORKER: usize = 64;

impl Deliverer {
    pub fn new(
        registry: Arc<Registry>,
        client: reqwest::Client,
        settings: DeliverySettings,
        replica: Uuid,
    ) -> Self {
        Self {
            registry,
            client,
            settings,
            endpoints: None,
            replica,
        }
    }

    /// Counts attempts per endpoint in `endpoints`, and holds an event
    /// whose endpoint fails everything rather than failing it.
    pub fn with_endpoints(mut self, endpoints: Arc<Endpoints>) -> Self {
        self.endpoints = Some(endpoints);
        self
    }

    /// Makes one delivery attempt for a claimed event and, when its
    /// occurrence is over, plans the next one.
    pub async fn deliver(&self, claimed: Claimed) -> Completion {
        let registry = self.registry.clone();
        let event = claimed.event.clone();
        match tokio::task::spawn_blocking(move || prepare_one(&registry, claimed, Utc::now())).await
        {
            Ok(prepared) => self.send(prepared).await,
            Err(error) => self.unprepared(event, &error.to_string()),
        }
    }

    /// Starts the plugin work of a claimed batch off the async runtime: one
    /// blocking worker per `EVENTS_PER_WORKER` events, in place of two
    /// blocking tasks per event (profiling showed the thread hand-offs and
    /// wake-ups costing more than the calls). Should the plugins be slow,
    /// every event still waiting after one plugin deadline gets a worker of
    /// its own, so a delivery waits at most one deadline for its turn.
    pub fn prepare(&self, claimed: Vec<Claimed>) -> Vec<Preparing> {
        let mut preparing = Vec::with_capacity(claimed.len());
        let mut queue = VecDeque::with_capacity(claimed.len());
        for c in claimed {
            let (tx, rx) = oneshot::channel();
            preparing.push(Preparing {
                event: c.event.clone(),
                ready: rx,
            });
            queue.push_back((c, tx));
        }
        if queue.is_empty() {
            return preparing;
        }
        let workers = queue.len().div_ceil(EVENTS_PER_WORKER);
        let queue: Queue = Arc::new(Mutex::new(queue));
        let now = Utc::now();
        for _ in 0..workers {
            let (queue, registry) = (queue.clone(), self.registry.clone());
            tokio::task::spawn_blocking(move || work_through(&queue, &registry, now, usize::MAX));
        }
        let (queue, registry) = (queue, self.registry.clone());
        let budget = self.settings.plugin_deadline;
        tokio::spawn(async move {
            tokio::time::sleep(budget).await;
            let waiting = queue.lock().unwrap_or_else(|e| e.into_inner()).len();
            for _ in 0..waiting {
                let (queue, registry) = (queue.clone(), registry.clone());
                tokio::task::spawn_blocking(move || work_through(&queue, &registry, now, 1));
            }
        });
        preparing
    }

    /// Waits for an event's plugin work, then attempts it.
    pub async fn deliver_prepared(&self, preparing: Preparing) -> Completion {
        let Preparing { event, ready } = preparing;
        match ready.await {
            Ok(prepared) => self.send(prepared).await,
            Err(_) => self.unprepared(event, "its preparing worker stopped"),
        }
    }

    /// The outcome of an event whose plugin work did not complete (a worker
    /// panicked): tried again later, like any transient failure. Should that
    /// use its last attempt, its series is recorded to be planned again.
    fn unprepared(&self, event: ClaimedEvent, why: &str) -> Completion {
        metrics::delivery_attempt();
        let attempt = self.record(Utc::now(), std::time::Instant::now(), None, false);
        let why = format!("trap: {why}");
        let outcome = self.after_failure(&event, AttemptError::retryable(why.clone()), None);
        let successor = if outcome.finishes_occurrence() {
            Successor::Replan { reason: why }
        } else {
            Successor::NotNeeded
        };
        Completion {
            event,
            outcome,
            successor,
            event_type_version: None,
            attempted: None,
            attempt: Some(attempt),
        }
    }

    /// The attempt log's row for an attempt started at `at` (`started`).
    fn record(
        &self,
        at: DateTime<Utc>,
        started: std::time::Instant,
        status: Option<u16>,
        refused: bool,
    ) -> AttemptRecord {
        AttemptRecord {
            at,
            replica: self.replica,
            status,
            latency: started.elapsed(),
            refused,
        }
    }

    /// Sends a prepared event and decides its outcome.
    async fn send(&self, prepared: Prepared) -> Completion {
        let Prepared { event, work } = prepared;
        let mut attempted = None;
        let mut attempt = None;
        let (outcome, successor, event_type_version) = match work {
            Work::Settled(outcome) => (outcome, Successor::NotNeeded, None),
            Work::Attempt {
                plugin,
                message,
                successor,
            } => {
                metrics::delivery_attempt();
                // The plugin that made the message, even if the type has
                // been replaced since.
                let version = message.is_ok().then(|| plugin.info.version.clone());
                let endpoint = self
                    .endpoints
                    .as_ref()
                    .and_then(|e| Some((e, e.id_of(e.url_of(&plugin)?))));
                let paused = endpoint
                    .as_ref()
                    .and_then(|(endpoints, id)| endpoints.paused_until(id));
                let result = match paused {
                    // The receiver asked for a pause: not sent, not counted.
                    Some(until) => Err(AttemptError::retryable(format!(
                        "held: the endpoint asked for a pause (Retry-After) until {until}"
                    ))),
                    None => {
                        let (at, started) = (Utc::now(), std::time::Instant::now());
                        let result = self.attempt(&event, &plugin, message).await;
                        let (status, refused) = match &result {
                            Ok(status) => (Some(*status), false),
                            Err(error) => (error.status, error.refused),
                        };
                        attempt = Some(self.record(at, started, status, refused));
                        result.map(|_| ())
                    }
                };
                if let (Err(error), Some((endpoints, id))) = (&result, &endpoint)
                    && let (Some(asked), Some(Contact::Down)) = (error.retry_after, error.contact)
                    && let Err(db) = endpoints
                        .pause(id, asked.min(self.settings.retry.max))
                        .await
                {
                    tracing::warn!(error = %db, "recording an endpoint's pause failed");
                }
                let outcome = match result {
                    Ok(()) => {
                        metrics::delivered(
                            (Utc::now() - event.due_at).to_std().unwrap_or_default(),
                        );
                        if let Some((endpoints, id)) = &endpoint {
                            endpoints.observe(id, Contact::Success);
                            attempted = Some(Attempted {
                                endpoint: id.clone(),
                                contact: Contact::Success,
                                error: None,
                            });
                        }
                        DeliveryOutcome::Delivered
                    }
                    Err(error) => {
                        let held_by = match (&endpoint, error.contact) {
                            (Some((endpoints, id)), Some(contact)) => {
                                endpoints.observe(id, contact);
                                attempted = Some(Attempted {
                                    endpoint: id.clone(),
                                    contact,
                                    error: Some(error.message.clone()),
                                });
                                // Since this event's previous attempt (the
                                // shortest its retry delay could have been).
                                let this_round =
                                    u32::try_from(event.attempts - event.attempts_before_retry)
                                        .unwrap_or(0);
                                let gap = self.settings.retry.backoff(this_round.saturating_sub(1));
                                let since = std::time::Instant::now()
                                    .checked_sub(gap.mul_f64(0.8))
                                    .unwrap_or_else(std::time::Instant::now);
                                match contact {
                                    Contact::Down => {
                                        let mut failing = endpoints.failing_everything(id, since);
                                        // This replica may have seen only the
                                        // last of the round's attempts: the
                                        // fleet's streak decides.
                                        if !failing
                                            && this_round >= self.settings.retry.max_attempts
                                        {
                                            failing = endpoints
                                                .failing_in_fleet(id, gap.mul_f64(0.8))
                                                .await
                                                .unwrap_or(false);
                                        }
                                        Some((endpoints.disabled(id), failing))
                                    }
                                    _ => None,
                                }
                            }
                            _ => None,
                        };
                        match paused {
                            Some(until) => DeliveryOutcome::Held {
                                error: error.message,
                                run_at: until,
                            },
                            None => self.after_failure(&event, error, held_by),
                        }
                    }
                };
                let successor = match successor {
                    _ if !outcome.finishes_occurrence() => Successor::NotNeeded,
                    Next::Planned(successor) => successor,
                    Next::Deferred(user) => {
                        let finished = event.clone();
                        tokio::task::spawn_blocking(move || {
                            let subject = user.subject();
                            plan_successor(
                                &plugin,
                                &subject,
                                user.updated_at,
                                &finished,
                                Utc::now(),
                            )
                        })
                        .await
                        .unwrap_or_else(|error| Successor::Replan {
                            reason: format!("planning task failed: {error}"),
                        })
                    }
                };
                (outcome, successor, version)
            }
        };
        Completion {
            event,
            outcome,
            successor,
            event_type_version,
            attempted,
            attempt,
        }
    }

    async fn attempt(
        &self,
        event: &ClaimedEvent,
        plugin: &Arc<LoadedPlugin>,
        message: Result<String, String>,
    ) -> Result<u16, AttemptError> {
        if let Some(max) = self.settings.max_lateness {
            let late = (Utc::now() - event.due_at).to_std().unwrap_or_default();
            if late > max {
                return Err(AttemptError::permanent(format!(
                    "missed: due {} ago, more than KAIROS_MAX_LATENESS ({})",
                    humantime::format_duration(Duration::from_secs(late.as_secs())),
                    humantime::format_duration(max)
                )));
            }
        }
        let text = message.map_err(AttemptError::retryable)?;

        let url = plugin
            .webhook_url
            .as_deref()
            .or(self.settings.default_webhook_url.as_deref())
            .ok_or_else(|| {
                AttemptError::retryable("no webhook URL configured (KAIROS_WEBHOOK_URL)")
            })?;
        let url = reqwest::Url::parse(url)
            .map_err(|e| AttemptError::permanent(format!("the webhook URL is not a URL: {e}")))?;
        outbound::check_literal(&url, &self.settings.allow)
            .map_err(|refused| AttemptError::refused(refused.to_string()))?;
        let body = serde_json::to_vec(&Payload {
            id: event.id,
            event_type: &event.event_type,
            event_type_version: &plugin.info.version,
            user_id: event.user_id,
            occurrence: format_local(&event.occurrence),
            timezone: &event.timezone,
            due_at: event.due_at,
            message: PayloadMessage { text: &text },
        })
        .expect("a payload serialises");

        let id = event.id.to_string();
        let timestamp = Utc::now().timestamp();
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", &id)
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string());
        if let Some(key) = &self.settings.signing_key {
            request = request.header(
                "webhook-signature",
                signing::sign(key, &id, timestamp, &body),
            );
        }
        let sent = std::time::Instant::now();
        let response = request.body(body).send().await;
        metrics::webhook_duration(sent.elapsed());
        let response = response.map_err(|e| {
            // A name that resolves to a refused address: no connection was
            // made, and none will be.
            match outbound::refusal_in(&e) {
                Some(refused) => AttemptError::refused(refused.to_string()),
                None => AttemptError::retryable(outbound::describe_send_error(e))
                    .with_contact(Contact::Down),
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(status.as_u16());
        }
        let asked = matches!(
            status,
            reqwest::StatusCode::TOO_MANY_REQUESTS | reqwest::StatusCode::SERVICE_UNAVAILABLE
        )
        .then(|| {
            retry_after(
                response.headers().get(reqwest::header::RETRY_AFTER),
                SystemTime::now(),
            )
        })
        .flatten();
        let snippet = response_snippet(response).await;
        let message = format!("HTTP {status}{snippet}");
        let error = if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        {
            AttemptError {
                retry_after: asked,
                ..AttemptError::retryable(message).with_contact(Contact::Down)
            }
        } else {
            AttemptError::permanent(message).with_contact(Contact::Answered)
        };
        Err(AttemptError {
            status: Some(status.as_u16()),
            ..error
        })
    }

    /// The outcome of a failed attempt. `endpoint_down` is, for a retryable
    /// failure at the endpoint, whether it is disabled and whether it fails
    /// everything: then the event waits, its attempt not spent, rather than
    /// failing when its retries run out (or being retried while disabled).
    fn after_failure(
        &self,
        event: &ClaimedEvent,
        error: AttemptError,
        endpoint_down: Option<(bool, bool)>,
    ) -> DeliveryOutcome {
        let this_round = u32::try_from(event.attempts - event.attempts_before_retry).unwrap_or(0);
        let exhausted = this_round >= self.settings.retry.max_attempts;
        match endpoint_down {
            Some((true, _)) => {
                return DeliveryOutcome::Held {
                    error: error.message,
                    run_at: Utc::now(),
                };
            }
            Some((false, true)) if exhausted => {
                return DeliveryOutcome::Held {
                    error: error.message,
                    run_at: Utc::now() + self.settings.retry.delay(this_round, &mut rand::rng()),
                };
            }
            _ => {}
        }
        if error.retryable && !exhausted {
            metrics::delivery_retried();
            // The receiver's own `Retry-After` wins over the backoff, up to
            // KAIROS_RETRY_MAX.
            let delay = match error.retry_after {
                Some(asked) => asked.min(self.settings.retry.max),
                None => self.settings.retry.delay(this_round, &mut rand::rng()),
            };
            DeliveryOutcome::Retry {
                error: error.message,
                run_at: Utc::now() + delay,
            }
        } else {
            metrics::delivery_failed();
            DeliveryOutcome::Failed {
                error: error.message,
            }
        }
    }
}

/// The webhook body (the contract's delivery payload).
#[derive(Serialize)]
struct Payload<'a> {
    id: Uuid,
    event_type: &'a str,
    /// The version of the type's component that formatted `message`.
    event_type_version: &'a str,
    user_id: Uuid,
    occurrence: String,
    timezone: &'a str,
    due_at: DateTime<Utc>,
    message: PayloadMessage<'a>,
}

#[derive(Serialize)]
struct PayloadMessage<'a> {
    text: &'a str,
}

/// Takes events off a batch's queue and prepares them, at most `limit`.
fn work_through(queue: &Queue, registry: &Registry, now: DateTime<Utc>, limit: usize) {
    for _ in 0..limit {
        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
        let Some((claimed, ready)) = next else {
            return;
        };
        // The delivery may have been stopped (shutdown): nobody waits.
        let _ = ready.send(prepare_one(registry, claimed, now));
    }
}

/// An event's plugin work: its message and its series' next occurrence.
/// Each call runs under the plugin's deadline.
fn prepare_one(registry: &Registry, claimed: Claimed, now: DateTime<Utc>) -> Prepared {
    let Claimed { event, user } = claimed;
    let Some(plugin) = registry.get(&event.event_type) else {
        return Prepared {
            event,
            work: Work::Settled(DeliveryOutcome::Released),
        };
    };
    let Some(user) = user else {
        return Prepared {
            event,
            work: Work::Settled(DeliveryOutcome::Cancelled {
                reason: "user deleted".into(),
            }),
        };
    };
    let subject = user.subject();
    let message = plugin
        .format_message(&subject, event.occurrence)
        .map_err(|error| {
            metrics::plugin_failure(&event.event_type);
            error.to_string()
        });
    let successor = match message {
        Ok(_) => Next::Planned(plan_successor(
            &plugin,
            &subject,
            user.updated_at,
            &event,
            now,
        )),
        Err(_) => Next::Deferred(user),
    };
    Prepared {
        event,
        work: Work::Attempt {
            plugin,
            message,
            successor,
        },
    }
}

/// The occurrence after a finished one (`scheduler::plan_successor`).
fn plan_successor(
    plugin: &LoadedPlugin,
    subject: &Subject,
    user_version: DateTime<Utc>,
    finished: &ClaimedEvent,
    now: DateTime<Utc>,
) -> Successor {
    if scheduler::parse_tz(&subject.timezone).is_none() {
        return Successor::End;
    }
    match scheduler::plan_successor(plugin, subject, finished.occurrence, now) {
        Ok(Some(plan)) => Successor::Planned { plan, user_version },
        Ok(None) => Successor::End,
        Err(error) => {
            metrics::plugin_failure(&finished.event_type);
            Successor::Replan {
                reason: error.to_string(),
            }
        }
    }
}

/// The start of a receiver's error body, read up to `ERROR_BODY_CAP` bytes.
async fn response_snippet(response: reqwest::Response) -> String {
    let bytes = outbound::read_capped(response, outbound::ERROR_BODY_CAP)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::{PluginLimits, PluginRuntime};

    fn deliverer(max_attempts: u32) -> Deliverer {
        let runtime = PluginRuntime::new(PluginLimits::default()).unwrap();
        Deliverer::new(
            Arc::new(Registry::new(runtime)),
            reqwest::Client::new(),
            DeliverySettings {
                default_webhook_url: None,
                signing_key: None,
                retry: RetryPolicy {
                    base: Duration::from_secs(2),
                    max: Duration::from_secs(60),
                    max_attempts,
                },
                max_lateness: None,
                allow: Arc::new(AllowList::default()),
                plugin_deadline: Duration::from_millis(500),
            },
            Uuid::nil(),
        )
    }

    fn claimed_on_attempt(attempts: i32) -> ClaimedEvent {
        ClaimedEvent {
            id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            event_type: "birthday".into(),
            occurrence: "2026-12-10T09:00:00".parse().unwrap(),
            timezone: "Europe/London".into(),
            due_at: Utc::now(),
            attempts,
            attempts_before_retry: 0,
            lease_id: Uuid::new_v4(),
        }
    }

    #[test]
    fn an_event_whose_preparation_died_is_retried_and_on_its_last_attempt_keeps_its_series() {
        let deliverer = deliverer(3);
        let early = deliverer.unprepared(claimed_on_attempt(1), "worker panicked");
        assert!(
            matches!(early.outcome, DeliveryOutcome::Retry { .. }),
            "{:?}",
            early.outcome
        );
        assert_eq!(early.successor, Successor::NotNeeded);

        let last = deliverer.unprepared(claimed_on_attempt(3), "worker panicked");
        assert!(
            matches!(last.outcome, DeliveryOutcome::Failed { .. }),
            "{:?}",
            last.outcome
        );
        assert!(
            matches!(&last.successor, Successor::Replan { reason } if reason.contains("worker panicked")),
            "the series is recorded to be planned again: {:?}",
            last.successor
        );
    }

    #[test]
    fn backoff_doubles_from_base_and_stops_at_max() {
        let policy = RetryPolicy {
            base: Duration::from_secs(2),
            max: Duration::from_secs(3600),
            max_attempts: 10,
        };
        let delays: Vec<u64> = (1..=13).map(|n| policy.backoff(n).as_secs()).collect();
        assert_eq!(
            delays,
            [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3600, 3600]
        );
        assert_eq!(policy.backoff(200), Duration::from_secs(3600));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        use reqwest::header::HeaderValue;
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        let read = |text: &str| retry_after(Some(&HeaderValue::from_str(text).unwrap()), now);
        assert_eq!(read("120"), Some(Duration::from_secs(120)));
        assert_eq!(read(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            read("Sun, 06 Nov 1994 08:51:37 GMT"),
            Some(Duration::from_secs(120))
        );
        // The obsolete forms HTTP still allows.
        assert_eq!(
            read("Sunday, 06-Nov-94 08:50:37 GMT"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            read("Sun Nov  6 08:49:47 1994"),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            read("Sun, 06 Nov 1994 08:00:00 GMT"),
            Some(Duration::ZERO),
            "past"
        );
        assert_eq!(read("soon"), None);
        assert_eq!(read("-5"), None);
        assert_eq!(retry_after(None, now), None);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let policy = RetryPolicy {
            base: Duration::from_secs(10),
            max: Duration::from_secs(3600),
            max_attempts: 10,
        };
        let mut rng = rand::rng();
        let delays: Vec<Duration> = (0..1000).map(|_| policy.delay(1, &mut rng)).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_secs(8) && *d <= Duration::from_secs(12))
        );
        assert!(
            delays.iter().any(|d| *d != delays[0]),
            "jitter varies the delay"
        );
    }
}
