//! Delivery: format the message with the event's plugin, POST it as a signed
//! webhook, decide the outcome (delivered, retry later, failed), and for an
//! occurrence that is over, plan its successor, so that recording a batch of
//! outcomes (`lease::complete`) runs no plugin.

use crate::lease::{ClaimedEvent, Completion, DeliveryOutcome, Successor};
use crate::outbound::{self, AllowList};
use crate::plugin::{LoadedPlugin, Registry};
use crate::store::{self, User, format_local};
use crate::{metrics, scheduler, signing};
use chrono::Utc;
use rand::{Rng, RngExt};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

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

    /// Makes one delivery attempt for a claimed event and, when its
    /// occurrence is over, plans the next one.
    pub async fn deliver(&self, event: ClaimedEvent) -> Completion {
        let (outcome, successor) = match self.prepare(&event).await {
            Err(outcome) => (outcome, Successor::NotNeeded),
            Ok((plugin, user)) => {
                metrics::delivery_attempt();
                let outcome = match self.attempt(&event, &plugin, &user).await {
                    Ok(()) => {
                        metrics::delivered();
                        DeliveryOutcome::Delivered
                    }
                    Err(error) => self.after_failure(&event, error),
                };
                let successor = if outcome.finishes_occurrence() {
                    plan_successor(plugin, user, &event).await
                } else {
                    Successor::NotNeeded
                };
                (outcome, successor)
            }
        };
        Completion {
            event,
            outcome,
            successor,
        }
    }

    /// The event's type and user; or the outcome when there is nothing to
    /// attempt: the type was unloaded here since the claim (given back for a
    /// replica that has it), the user is gone, or the database failed.
    async fn prepare(
        &self,
        event: &ClaimedEvent,
    ) -> Result<(Arc<LoadedPlugin>, User), DeliveryOutcome> {
        let plugin = self
            .registry
            .get(&event.event_type)
            .ok_or(DeliveryOutcome::Released)?;
        match store::get_user(&self.pool, event.user_id).await {
            Ok(Some(user)) => Ok((plugin, user)),
            Ok(None) => Err(DeliveryOutcome::Cancelled {
                reason: "user deleted".into(),
            }),
            Err(error) => {
                Err(self
                    .after_failure(event, AttemptError::retryable(format!("database: {error}"))))
            }
        }
    }

    async fn attempt(
        &self,
        event: &ClaimedEvent,
        plugin: &Arc<LoadedPlugin>,
        user: &User,
    ) -> Result<(), AttemptError> {
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
        let occurrence = event.occurrence;
        let (plugin_for_call, subject) = (plugin.clone(), user.subject());
        let text = tokio::task::spawn_blocking(move || {
            plugin_for_call.format_message(&subject, occurrence)
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
        let url = reqwest::Url::parse(url)
            .map_err(|e| AttemptError::permanent(format!("the webhook URL is not a URL: {e}")))?;
        outbound::check_literal(&url, &self.settings.allow)
            .map_err(|refused| AttemptError::permanent(refused.to_string()))?;
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
        let response = request.body(body).send().await.map_err(|e| {
            // A name that resolves to a refused address: no connection was
            // made, and none will be.
            match outbound::refusal_in(&e) {
                Some(refused) => AttemptError::permanent(refused.to_string()),
                None => AttemptError::retryable(outbound::describe_send_error(e)),
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
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
}

/// The occurrence after a finished one: after the later of the finished
/// occurrence and the user's local time now, so a long outage does not replay
/// years of stale occurrences. Runs under the plugin's deadline, so a
/// delivery stays bounded by deadline + HTTP timeout + deadline.
async fn plan_successor(plugin: Arc<LoadedPlugin>, user: User, event: &ClaimedEvent) -> Successor {
    let finished = event.occurrence;
    let user_version = user.updated_at;
    let planned = tokio::task::spawn_blocking(move || {
        let subject = user.subject();
        let tz = scheduler::parse_tz(&subject.timezone)?;
        let after = finished.max(scheduler::utc_to_local(Utc::now(), tz));
        Some(scheduler::plan_next(&plugin, &subject, after))
    })
    .await;
    match planned {
        Ok(Some(Ok(Some(plan)))) => Successor::Planned { plan, user_version },
        Ok(Some(Ok(None)) | None) => Successor::End,
        Ok(Some(Err(error))) => {
            metrics::plugin_failure(&event.event_type);
            Successor::Replan {
                reason: error.to_string(),
            }
        }
        Err(error) => Successor::Replan {
            reason: format!("planning task failed: {error}"),
        },
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
