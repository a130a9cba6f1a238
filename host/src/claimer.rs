//! The claimer: takes due events with one short `FOR UPDATE SKIP LOCKED`
//! statement, hands them to delivery, returns expired leases to `pending`,
//! and sleeps until the next due time unless `LISTEN/NOTIFY` says sooner.

use crate::delivery::{Completion, Deliverer};
use chrono::{DateTime, NaiveDateTime, Utc};
use futures::StreamExt;
use sqlx::postgres::PgListener;
use sqlx::{FromRow, PgPool};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use uuid::Uuid;

/// The channel the `events_notify_pending` trigger notifies.
pub const WAKEUP_CHANNEL: &str = "kairos_events";

/// An event this host holds a lease on. Every write about it checks `lease_id`.
#[derive(Debug, Clone, FromRow)]
pub struct ClaimedEvent {
    pub id: Uuid,
    pub user_id: Uuid,
    pub event_type: String,
    pub occurrence: NaiveDateTime,
    pub timezone: String,
    pub due_at: DateTime<Utc>,
    /// Attempts including this one.
    pub attempts: i32,
    pub attempts_before_retry: i32,
    pub lease_id: Uuid,
}

#[derive(Debug, Clone, Copy)]
pub struct ClaimerSettings {
    /// Most events claimed by one statement.
    pub batch_size: usize,
    /// Most deliveries in flight at once.
    pub concurrency: usize,
    /// How long a claim is held before another host may take it back.
    pub lease: Duration,
    /// Longest sleep with nothing due and no notification (a safety net).
    pub idle_poll: Duration,
    /// How long shutdown waits for in-flight deliveries before releasing them.
    pub shutdown_grace: Duration,
}

/// Claims up to `limit` due events, oldest first, under a fresh lease.
pub async fn claim_due_events(
    pool: &PgPool,
    limit: usize,
    lease: Duration,
) -> sqlx::Result<Vec<ClaimedEvent>> {
    sqlx::query_as(
        "WITH due AS MATERIALIZED ( \
             SELECT id FROM events \
             WHERE status = 'pending' AND run_at <= now() \
             ORDER BY run_at \
             LIMIT $1 \
             FOR UPDATE SKIP LOCKED) \
         UPDATE events e SET status = 'processing', attempts = e.attempts + 1, \
             lease_id = $2, lease_until = now() + make_interval(secs => $3), updated_at = now() \
         FROM due WHERE e.id = due.id \
         RETURNING e.id, e.user_id, e.event_type, e.occurrence, e.timezone, e.due_at, \
             e.attempts, e.attempts_before_retry, e.lease_id",
    )
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .bind(Uuid::new_v4())
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await
    .map(|mut claimed: Vec<ClaimedEvent>| {
        claimed.sort_by_key(|e| e.due_at);
        claimed
    })
}

/// Returns events whose lease expired (their host died) to `pending`, to be
/// delivered again under the same id, hence the same idempotency key.
pub async fn release_expired_leases(pool: &PgPool) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE events SET status = 'pending', run_at = now(), lease_id = NULL, \
         lease_until = NULL, updated_at = now() \
         WHERE status = 'processing' AND lease_until < now()",
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// Gives back leases this host holds but will not complete (shutdown).
pub async fn release_leases(pool: &PgPool, events: &[(Uuid, Uuid)]) -> sqlx::Result<u64> {
    let ids: Vec<Uuid> = events.iter().map(|(id, _)| *id).collect();
    let leases: Vec<Uuid> = events.iter().map(|(_, lease)| *lease).collect();
    Ok(sqlx::query(
        "UPDATE events e SET status = 'pending', run_at = now(), lease_id = NULL, \
         lease_until = NULL, updated_at = now() \
         FROM unnest($1::uuid[], $2::uuid[]) AS r(id, lease_id) \
         WHERE e.id = r.id AND e.lease_id = r.lease_id AND e.status = 'processing'",
    )
    .bind(&ids)
    .bind(&leases)
    .execute(pool)
    .await?
    .rows_affected())
}

/// How long until the earliest pending event may run, by the database's clock;
/// `None` when nothing is pending.
pub async fn time_until_next_run(pool: &PgPool) -> sqlx::Result<Option<Duration>> {
    let seconds: Option<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM (min(run_at) - clock_timestamp()))::float8 \
         FROM events WHERE status = 'pending'",
    )
    .fetch_one(pool)
    .await?;
    Ok(seconds.map(|s| Duration::from_secs_f64(s.max(0.0))))
}

pub struct Claimer {
    pool: PgPool,
    deliverer: Arc<Deliverer>,
    settings: ClaimerSettings,
}

impl Claimer {
    pub fn new(pool: PgPool, deliverer: Arc<Deliverer>, settings: ClaimerSettings) -> Self {
        Self {
            pool,
            deliverer,
            settings,
        }
    }

    /// One step: claim what is due now, deliver it, record the outcomes.
    /// Returns how many events were claimed. Tests drive the claimer with this.
    pub async fn run_once(&self) -> anyhow::Result<usize> {
        let claimed =
            claim_due_events(&self.pool, self.settings.batch_size, self.settings.lease).await?;
        let count = claimed.len();
        if count == 0 {
            return Ok(0);
        }
        let completions: Vec<Completion> = futures::stream::iter(claimed)
            .map(|event| self.deliverer.deliver(event))
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;
        self.deliverer.complete(completions).await?;
        Ok(count)
    }

    /// Claims and delivers until `shutdown` resolves; then stops claiming,
    /// waits up to the grace period for deliveries in flight and gives back
    /// the leases of any that did not finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let settings = self.settings;
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(WAKEUP_CHANNEL).await?;

        let slots = Arc::new(Semaphore::new(settings.concurrency));
        let in_flight: Arc<Mutex<HashMap<Uuid, Uuid>>> = Arc::default();
        let (completions_tx, completions_rx) = mpsc::channel(settings.concurrency.max(1) * 2);
        let completer = tokio::spawn(run_completer(self.deliverer.clone(), completions_rx));

        let rescue_every = (settings.lease / 4).max(Duration::from_millis(100));
        let mut last_rescue: Option<tokio::time::Instant> = None;
        tokio::pin!(shutdown);

        loop {
            if last_rescue.is_none_or(|t| t.elapsed() >= rescue_every) {
                match release_expired_leases(&self.pool).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::warn!(events = n, "returned events with expired leases to pending")
                    }
                    Err(error) => tracing::error!(%error, "releasing expired leases failed"),
                }
                last_rescue = Some(tokio::time::Instant::now());
            }

            let free = slots.available_permits().min(settings.batch_size);
            let mut claimed_full_batch = false;
            if free > 0 {
                match claim_due_events(&self.pool, free, settings.lease).await {
                    Ok(claimed) => {
                        claimed_full_batch = claimed.len() == free;
                        for event in claimed {
                            let permit = slots.clone().acquire_owned().await?;
                            in_flight.lock().unwrap().insert(event.id, event.lease_id);
                            let deliverer = self.deliverer.clone();
                            let tx = completions_tx.clone();
                            let in_flight = in_flight.clone();
                            tokio::spawn(async move {
                                let completion = deliverer.deliver(event).await;
                                let id = completion.event.id;
                                // A send fails only when the completer is gone; the
                                // lease then expires and the event is redelivered.
                                let _ = tx.send(completion).await;
                                in_flight.lock().unwrap().remove(&id);
                                drop(permit);
                            });
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, "claiming due events failed");
                    }
                }
            }
            if claimed_full_batch {
                continue;
            }

            let wait = if free == 0 {
                settings.idle_poll
            } else {
                match time_until_next_run(&self.pool).await {
                    Ok(Some(next)) => next.min(settings.idle_poll),
                    Ok(None) => settings.idle_poll,
                    Err(error) => {
                        tracing::error!(%error, "reading the next due time failed");
                        settings.idle_poll
                    }
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(wait) => {}
                notification = listener.recv() => {
                    if let Err(error) = notification {
                        tracing::warn!(%error, "LISTEN connection lost; reconnecting");
                    }
                }
                permit = slots.clone().acquire_owned(), if free == 0 => drop(permit),
            }
        }

        tracing::info!("stopped claiming; waiting for deliveries in flight");
        let all = u32::try_from(settings.concurrency).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(settings.shutdown_grace, slots.acquire_many(all)).await;
        drop(completions_tx);
        if completer.await.is_err() {
            tracing::error!("the completer task panicked");
        }
        let unfinished: Vec<(Uuid, Uuid)> = in_flight.lock().unwrap().drain().collect();
        if drained.is_err() && !unfinished.is_empty() {
            let released = release_leases(&self.pool, &unfinished).await?;
            tracing::warn!(
                events = released,
                "released deliveries that did not finish in time"
            );
        }
        Ok(())
    }
}

/// Writes outcomes in batches: whatever has arrived, up to 512 at a time.
async fn run_completer(deliverer: Arc<Deliverer>, mut rx: mpsc::Receiver<Completion>) {
    let mut batch = Vec::with_capacity(512);
    while rx.recv_many(&mut batch, 512).await > 0 {
        let completions = std::mem::take(&mut batch);
        if let Err(error) = deliverer.complete(completions).await {
            tracing::error!(
                error = format!("{error:#}"),
                "recording delivery outcomes failed; leases will expire and the events be redelivered"
            );
        }
    }
}
