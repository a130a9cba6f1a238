//! Delivery: format the message with the event's plugin, POST it as a signed
//! webhook, decide the outcome (delivered, retry later, failed), and record a
//! batch of outcomes with each finished event's next occurrence in one
//! transaction.

use crate::claimer::ClaimedEvent;
use crate::plugin::Registry;
use crate::scheduler::{self, PlannedEvent};
use crate::store::{self, User, format_local};
use crate::{metrics, signing};
use chrono::{DateTime, Utc};
use rand::{Rng, RngExt};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    /// A retryable failure with attempts left: pending again at `run_at`.
    Retry {
        error: String,
        run_at: DateTime<Utc>,
    },
    /// Given up: a non-retryable failure or attempts exhausted.
    Failed {
        error: String,
    },
    /// Nothing to deliver to any more (user deleted, type unloaded).
    Cancelled {
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub event: ClaimedEvent,
    pub outcome: DeliveryOutcome,
}

/// Everything a delivery needs, shared by all of them.
pub struct Deliverer {
    pool: PgPool,
    registry: Arc<Registry>,
    client: reqwest::Client,
    settings: DeliverySettings,
}

/// Why an attempt failed, and whether another attempt may succeed.
struct AttemptError {
    message: String,
    retryable: bool,
}

impl AttemptError {
    fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }
    fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

impl Deliverer {
    pub fn new(
        pool: PgPool,
        registry: Arc<Registry>,
        client: reqwest::Client,
        settings: DeliverySettings,
    ) -> Self {
        Self {
            pool,
            registry,
            client,
            settings,
        }
    }

    /// Makes one delivery attempt for a claimed event.
    pub async fn deliver(&self, event: ClaimedEvent) -> Completion {
        let outcome = match self.attempt(&event).await {
            Ok(None) => {
                metrics::delivered();
                DeliveryOutcome::Delivered
            }
            Ok(Some(reason)) => DeliveryOutcome::Cancelled { reason },
            Err(error) => self.after_failure(&event, error),
        };
        Completion { event, outcome }
    }

    /// `Ok(None)`: delivered; `Ok(Some(reason))`: nothing to deliver to.
    async fn attempt(&self, event: &ClaimedEvent) -> Result<Option<String>, AttemptError> {
        metrics::delivery_attempt();
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
        // Not loaded *here*: another replica may have it (types are loaded
        // per replica), or an operator may load it again. A retryable attempt
        // leaves the event for them and ends `failed`, visible and retryable,
        // rather than silently cancelled. (Unloading a type cancels its
        // pending events on purpose.)
        let Some(plugin) = self.registry.get(&event.event_type) else {
            return Err(AttemptError::retryable(format!(
                "event type {} is not loaded on this host",
                event.event_type
            )));
        };
        let Some(user) = store::get_user(&self.pool, event.user_id)
            .await
            .map_err(|e| AttemptError::retryable(format!("database: {e}")))?
        else {
            return Ok(Some("user deleted".into()));
        };
        let occurrence = event.occurrence;
        let plugin_for_call = plugin.clone();
        let text = tokio::task::spawn_blocking(move || {
            plugin_for_call.format_message(&user.subject(), occurrence)
        })
        .await
        .map_err(|e| AttemptError::retryable(format!("trap: {e}")))?
        .map_err(|e| {
            metrics::plugin_failure(&event.event_type);
            AttemptError::retryable(e.to_string())
        })?;

        let url = plugin
            .webhook_url
            .as_deref()
            .or(self.settings.default_webhook_url.as_deref())
            .ok_or_else(|| {
                AttemptError::retryable("no webhook URL configured (KAIROS_WEBHOOK_URL)")
            })?;
        let body = serde_json::to_vec(&serde_json::json!({
            "id": event.id,
            "event_type": event.event_type,
            "user_id": event.user_id,
            "occurrence": format_local(&event.occurrence),
            "timezone": event.timezone,
            "due_at": event.due_at,
            "message": { "text": text },
        }))
        .expect("a JSON value serialises");

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
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| AttemptError::retryable(describe_reqwest_error(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(None);
        }
        let snippet = response_snippet(response).await;
        let message = format!("HTTP {status}{snippet}");
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            Err(AttemptError::retryable(message))
        } else {
            Err(AttemptError::permanent(message))
        }
    }

    fn after_failure(&self, event: &ClaimedEvent, error: AttemptError) -> DeliveryOutcome {
        let this_round = u32::try_from(event.attempts - event.attempts_before_retry).unwrap_or(0);
        if error.retryable && this_round < self.settings.retry.max_attempts {
            metrics::delivery_retried();
            let delay = self.settings.retry.delay(this_round, &mut rand::rng());
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

    /// Records outcomes where this host still holds the lease (a lost lease
    /// drops the result), and in the same transaction generates the next
    /// occurrence of every event that finished.
    pub async fn complete(&self, completions: Vec<Completion>) -> anyhow::Result<()> {
        if completions.is_empty() {
            return Ok(());
        }
        // A deadlock with a concurrent transaction (say a scheduling pass
        // inserting the same next occurrences) rolls the whole batch back;
        // the same batch tried again goes through.
        let mut tries = 0;
        loop {
            match self.complete_once(&completions).await {
                Err(error)
                    if tries < 4
                        && error
                            .downcast_ref::<sqlx::Error>()
                            .is_some_and(store::is_transient) =>
                {
                    tries += 1;
                    tracing::debug!(%error, tries, "recording outcomes collided with another transaction; trying again");
                }
                result => return result,
            }
        }
    }

    async fn complete_once(&self, completions: &[Completion]) -> anyhow::Result<()> {
        let mut ids = Vec::with_capacity(completions.len());
        let mut leases = Vec::with_capacity(completions.len());
        let mut statuses = Vec::with_capacity(completions.len());
        let mut errors: Vec<Option<&str>> = Vec::with_capacity(completions.len());
        let mut run_ats: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(completions.len());
        for c in completions {
            ids.push(c.event.id);
            leases.push(c.event.lease_id);
            let (status, error, run_at) = match &c.outcome {
                DeliveryOutcome::Delivered => ("delivered", None, None),
                DeliveryOutcome::Retry { error, run_at } => {
                    ("pending", Some(error.as_str()), Some(*run_at))
                }
                DeliveryOutcome::Failed { error } => ("failed", Some(error.as_str()), None),
                DeliveryOutcome::Cancelled { reason } => ("cancelled", Some(reason.as_str()), None),
            };
            statuses.push(status);
            errors.push(error);
            run_ats.push(run_at);
        }

        let mut tx = self.pool.begin().await?;
        let finished_users: Vec<Uuid> = completions
            .iter()
            .filter(|c| {
                matches!(
                    c.outcome,
                    DeliveryOutcome::Delivered | DeliveryOutcome::Failed { .. }
                )
            })
            .map(|c| c.event.user_id)
            .collect();
        let users = store::lock_users(&mut tx, &finished_users).await?;

        let applied: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE events e SET status = c.status, \
                 last_error = CASE WHEN c.status = 'delivered' THEN e.last_error ELSE c.error END, \
                 run_at = coalesce(c.run_at, e.run_at), \
                 delivered_at = CASE WHEN c.status = 'delivered' THEN now() END, \
                 lease_id = NULL, lease_until = NULL, updated_at = now() \
             FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[]) \
                  AS c(id, lease_id, status, error, run_at) \
             WHERE e.id = c.id AND e.lease_id = c.lease_id AND e.status = 'processing' \
             RETURNING e.id",
        )
        .bind(&ids)
        .bind(&leases)
        .bind(&statuses)
        .bind(&errors)
        .bind(&run_ats)
        .fetch_all(&mut *tx)
        .await?;
        if applied.len() < completions.len() {
            tracing::warn!(
                lost = completions.len() - applied.len(),
                "dropped outcomes of events whose lease this host no longer holds"
            );
        }

        let applied: std::collections::HashSet<Uuid> = applied.into_iter().collect();
        let finished: Vec<ClaimedEvent> = completions
            .iter()
            .filter(|c| applied.contains(&c.event.id))
            .filter(|c| {
                matches!(
                    c.outcome,
                    DeliveryOutcome::Delivered | DeliveryOutcome::Failed { .. }
                )
            })
            .map(|c| c.event.clone())
            .collect();
        if !finished.is_empty() {
            let registry = self.registry.clone();
            let plans =
                tokio::task::spawn_blocking(move || plan_following(&registry, &finished, users))
                    .await?;
            store::insert_planned(&mut tx, &plans).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The occurrence after each finished one: after the later of the finished
/// occurrence and the user's local time now, so a long outage does not replay
/// years of stale occurrences.
fn plan_following(
    registry: &Registry,
    finished: &[ClaimedEvent],
    users: Vec<User>,
) -> Vec<PlannedEvent> {
    let users: HashMap<Uuid, User> = users.into_iter().map(|u| (u.id, u)).collect();
    let now = Utc::now();
    finished
        .iter()
        .filter_map(|event| {
            let user = users.get(&event.user_id)?;
            let plugin = registry.get(&event.event_type)?;
            let subject = user.subject();
            let tz = scheduler::parse_tz(&subject.timezone)?;
            let after = event.occurrence.max(scheduler::utc_to_local(now, tz));
            match scheduler::plan_next(&plugin, &subject, after) {
                Ok(plan) => plan,
                Err(error) => {
                    metrics::plugin_failure(plugin.name());
                    tracing::warn!(event_type = plugin.name(), user_id = %user.id, %error, "generating the next occurrence failed");
                    None
                }
            }
        })
        .collect()
}

fn describe_reqwest_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout: the webhook did not answer in time".into()
    } else if e.is_connect() {
        format!("connection error: {e}")
    } else {
        format!("request error: {e}")
    }
}

async fn response_snippet(response: reqwest::Response) -> String {
    let bytes = response.bytes().await.unwrap_or_default();
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
