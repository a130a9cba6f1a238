//! The claimer: takes due events of the types loaded here (`lease`), hands
//! them to delivery, returns expired leases to `pending`, and sleeps until
//! the next due time unless `LISTEN/NOTIFY` says sooner.

use crate::delivery::Deliverer;
use crate::endpoints::Endpoints;
use crate::lease::{self, Claimed, Completion};
use crate::plugin::Registry;
use crate::supervisor::LoopState;
use futures::StreamExt;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;
use uuid::Uuid;

/// The channel the `events_notify_pending` trigger notifies.
pub const WAKEUP_CHANNEL: &str = "kairos_events";

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

/// A delivery in flight: its lease, and the handle that stops it when
/// shutdown's grace runs out.
type InFlight = Arc<Mutex<HashMap<Uuid, (Uuid, AbortHandle)>>>;

#[derive(Clone)]
pub struct Claimer {
    pool: PgPool,
    deliverer: Arc<Deliverer>,
    registry: Arc<Registry>,
    settings: ClaimerSettings,
    state: Arc<LoopState>,
    /// Types whose endpoint is disabled are not claimed (but probed).
    endpoints: Option<Arc<Endpoints>>,
}

impl Claimer {
    pub fn new(
        pool: PgPool,
        deliverer: Arc<Deliverer>,
        registry: Arc<Registry>,
        settings: ClaimerSettings,
        state: Arc<LoopState>,
    ) -> Self {
        Self {
            pool,
            deliverer,
            registry,
            settings,
            state,
            endpoints: None,
        }
    }

    /// Leaves out of claims the types whose endpoint is disabled, and probes
    /// those endpoints.
    pub fn with_endpoints(mut self, endpoints: Arc<Endpoints>) -> Self {
        self.endpoints = Some(endpoints);
        self
    }

    /// The types this host can deliver: the only ones it claims.
    fn loaded_types(&self) -> Vec<String> {
        self.registry.snapshot().keys().cloned().collect()
    }

    /// What to claim now, from what each type's endpoint allows: the types
    /// claimed as usual (endpoint neither disabled, paused nor rate-limited),
    /// and events already claimed here: the probes this replica won (one
    /// due event per disabled endpoint per `KAIROS_ENDPOINT_PROBE`, across
    /// the fleet) and, for each rate-limited endpoint, as many as the
    /// tokens it took from the fleet's bucket, within `room` in all.
    async fn claimable(&self, room: usize) -> sqlx::Result<Claimable> {
        let types = self.loaded_types();
        let Some(endpoints) = &self.endpoints else {
            return Ok(Claimable {
                wait_types: types.clone(),
                types,
                ..Claimable::default()
            });
        };
        let plan = endpoints.plan_claims(types);
        let mut claimable = Claimable {
            wait_types: plan.claim.clone(),
            types: plan.claim,
            claimed: Vec::new(),
            wake_in: plan.next_change,
        };
        for (endpoint, types) in plan.probes {
            if endpoints.take_probe(&endpoint).await? {
                let claimed =
                    lease::claim_due_events(&self.pool, 1, self.settings.lease, &types).await?;
                if !claimed.is_empty() {
                    tracing::info!(endpoint, "probing a disabled endpoint with one due event");
                }
                claimable.claimed.extend(claimed);
            }
        }
        for (endpoint, rate, types) in plan.limited {
            let room = room.saturating_sub(claimable.claimed.len());
            let granted = if room > 0 {
                endpoints.take_tokens(&endpoint, rate, room).await?
            } else {
                0
            };
            let claimed = if granted > 0 {
                lease::claim_due_events(&self.pool, granted, self.settings.lease, &types).await?
            } else {
                Vec::new()
            };
            endpoints
                .return_tokens(&endpoint, rate, granted - claimed.len())
                .await?;
            if claimed.len() == granted {
                // Out of tokens (or of room): more may be due; the bucket
                // has another token in 1/rate.
                let next = Duration::from_secs_f64(1.0 / rate).max(PROBE_GRANULARITY / 5);
                claimable.wake_in = Some(claimable.wake_in.map_or(next, |w| w.min(next)));
            } else {
                claimable.wait_types.extend(types);
            }
            claimable.claimed.extend(claimed);
        }
        Ok(claimable)
    }

    /// Writes a batch of outcomes, then their counts per endpoint.
    async fn complete(&self, completions: &[Completion]) -> anyhow::Result<()> {
        complete(&self.pool, self.endpoints.as_deref(), completions).await
    }

    /// One step: claim what is due now, deliver it, record the outcomes.
    /// Returns how many events were claimed. For tests whose point is one step.
    pub async fn run_once(&self) -> anyhow::Result<usize> {
        let Claimable {
            types, mut claimed, ..
        } = self.claimable(self.settings.batch_size).await?;
        let room = self.settings.batch_size.saturating_sub(claimed.len());
        if room > 0 {
            claimed.extend(
                lease::claim_due_events(&self.pool, room, self.settings.lease, &types).await?,
            );
        }
        let count = claimed.len();
        if count == 0 {
            return Ok(0);
        }
        let completions: Vec<Completion> = futures::stream::iter(self.deliverer.prepare(claimed))
            .map(|preparing| self.deliverer.deliver_prepared(preparing))
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;
        self.complete(&completions).await?;
        Ok(count)
    }

    /// Claims and delivers until `shutdown` resolves; then stops claiming,
    /// waits up to the grace period for deliveries in flight, stops the ones
    /// still running and gives back their leases. Returns an error when it
    /// cannot go on (its supervisor restarts it).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let settings = self.settings;
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(WAKEUP_CHANNEL).await?;

        let slots = Arc::new(Semaphore::new(settings.concurrency));
        let in_flight: InFlight = Arc::default();
        let (completions_tx, completions_rx) = mpsc::channel(settings.concurrency.max(1) * 2);
        let completer = tokio::spawn(run_completer(
            self.pool.clone(),
            self.endpoints.clone(),
            completions_rx,
        ));

        let rescue_every = (settings.lease / 4).max(Duration::from_millis(100));
        let mut last_rescue: Option<tokio::time::Instant> = None;
        // While the database fails, each turn waits longer before the next,
        // so an outage is not a busy loop (a lost LISTEN connection answers
        // at once); the first turn that claims resets it.
        let max_pause = settings.idle_poll.min(Duration::from_secs(5));
        let first_pause = Duration::from_millis(100).min(max_pause);
        let longer = |pause: Duration| (pause * 2).clamp(first_pause, max_pause);
        let mut pause = Duration::ZERO;
        // Under load a claim waits for half the slots (or of a batch) to be
        // free: one claim of many events costs the database far less per
        // event than many claims of a few (profiling showed claims
        // averaging 20 events when each took whatever slot freed).
        let enough = (settings.concurrency.min(settings.batch_size) / 2).max(1);
        tokio::pin!(shutdown);

        loop {
            self.state.check_fault()?;
            if !pause.is_zero() {
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
            let mut database_failed = false;
            if last_rescue.is_none_or(|t| t.elapsed() >= rescue_every) {
                match lease::release_expired_leases(&self.pool).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::warn!(events = n, "returned events with expired leases to pending")
                    }
                    Err(error) => tracing::error!(%error, "releasing expired leases failed"),
                }
                last_rescue = Some(tokio::time::Instant::now());
            }

            let free = slots.available_permits().min(settings.batch_size);
            let room = if free >= enough { free } else { 0 };
            let Claimable {
                types,
                wait_types,
                claimed: early,
                wake_in,
            } = match self.claimable(room).await {
                Ok(claimable) => claimable,
                Err(error) => {
                    tracing::error!(%error, "claiming for endpoints (probes, rates) failed");
                    Claimable {
                        wait_types: self.loaded_types(),
                        ..Claimable::default()
                    }
                }
            };
            let room = room.saturating_sub(early.len());
            let mut claimed_full_batch = false;
            if room > 0 || !early.is_empty() {
                let claim = if room > 0 {
                    lease::claim_due_events(&self.pool, room, settings.lease, &types).await
                } else {
                    Ok(Vec::new())
                };
                match claim.map(|mut claimed| {
                    claimed_full_batch = room > 0 && claimed.len() == room;
                    claimed.extend(early);
                    claimed
                }) {
                    Ok(claimed) => {
                        for preparing in self.deliverer.prepare(claimed) {
                            let permit = slots.clone().acquire_owned().await?;
                            let (id, lease_id) = (preparing.event.id, preparing.event.lease_id);
                            let deliverer = self.deliverer.clone();
                            let tx = completions_tx.clone();
                            let tracked = in_flight.clone();
                            // Held until the task is tracked, so it cannot
                            // untrack itself before it is tracked.
                            let mut tracking = in_flight.lock().unwrap();
                            let task = tokio::spawn(async move {
                                let completion = deliverer.deliver_prepared(preparing).await;
                                // Untracked before the completion is handed
                                // over: from here shutdown lets it be recorded.
                                tracked.lock().unwrap().remove(&id);
                                // A send fails only when the completer is gone; the
                                // lease then expires and the event is redelivered.
                                let _ = tx.send(completion).await;
                                drop(permit);
                            });
                            tracking.insert(id, (lease_id, task.abort_handle()));
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, "claiming due events failed");
                        database_failed = true;
                    }
                }
            }
            pause = if database_failed {
                longer(pause)
            } else {
                Duration::ZERO
            };
            if claimed_full_batch {
                continue;
            }

            let wait = if free < enough {
                settings.idle_poll
            } else {
                match lease::time_until_next_run(&self.pool, &wait_types).await {
                    Ok(Some(next)) => next.min(settings.idle_poll),
                    Ok(None) => settings.idle_poll,
                    Err(error) => {
                        tracing::error!(%error, "reading the next due time failed");
                        settings.idle_poll
                    }
                }
            };
            let wait = wake_in.map_or(wait, |w| wait.min(w.max(PROBE_GRANULARITY / 5)));
            let endpoint_changed = async {
                match &self.endpoints {
                    Some(endpoints) => endpoints.changed.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(wait) => {}
                notification = listener.recv() => {
                    if let Err(error) = notification {
                        tracing::warn!(%error, "LISTEN connection lost; reconnecting");
                        pause = longer(pause);
                    }
                }
                permits = slots.clone().acquire_many_owned(enough as u32), if free < enough => drop(permits),
                () = endpoint_changed => {}
            }
        }

        tracing::info!("stopped claiming; waiting for deliveries in flight");
        let all = u32::try_from(settings.concurrency).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(settings.shutdown_grace, slots.acquire_many(all)).await;
        if drained.is_err() {
            let unfinished: Vec<(Uuid, Uuid)> = in_flight
                .lock()
                .unwrap()
                .drain()
                .map(|(id, (lease_id, task))| {
                    task.abort();
                    (id, lease_id)
                })
                .collect();
            let released = lease::release_leases(&self.pool, &unfinished).await?;
            tracing::warn!(
                events = released,
                grace = %humantime::format_duration(settings.shutdown_grace),
                "stopped deliveries still in flight after the grace and released their leases; they will be delivered again under the same id"
            );
        }
        drop(completions_tx);
        if completer.await.is_err() {
            tracing::error!("the completer task panicked");
        }
        Ok(())
    }
}

/// Most outcomes recorded by one transaction.
const COMPLETION_BATCH: usize = 512;
/// How long a small batch of outcomes waits for more before it is written.
/// Under load each transaction then records many outcomes (its commit and
/// statements cost the database the same for 40 as for 200); an idle host
/// shows an outcome a few milliseconds later.
const COMPLETION_LINGER: Duration = Duration::from_millis(5);

/// Five times the shortest wait for an endpoint's change (a probe due, a
/// pause over, a token in a bucket): the view may say a probe is due that
/// another replica has just taken.
const PROBE_GRANULARITY: Duration = Duration::from_millis(100);

/// What `Claimer::claimable` found.
#[derive(Default)]
struct Claimable {
    /// Types to claim as usual.
    types: Vec<String>,
    /// Types whose next due time wakes the claimer (rate-limited ones out
    /// of tokens wake it by `wake_in` instead).
    wait_types: Vec<String>,
    /// Events claimed already: probes and rate-limited endpoints' share.
    claimed: Vec<Claimed>,
    /// When an endpoint's state next allows more.
    wake_in: Option<Duration>,
}

/// Counts the attempts per endpoint, which may disable or enable one, then
/// records the outcomes (`lease::complete`): an event retried from another
/// replica finds the fleet's failing streak already counting its attempt.
async fn complete(
    pool: &PgPool,
    endpoints: Option<&Endpoints>,
    completions: &[Completion],
) -> anyhow::Result<()> {
    if let Some(endpoints) = endpoints {
        let attempted: Vec<_> = completions
            .iter()
            .filter_map(|c| c.attempted.clone())
            .collect();
        if let Err(error) = endpoints.record(&attempted).await {
            tracing::warn!(%error, "counting attempts per endpoint failed");
        }
    }
    lease::complete(pool, completions).await?;
    Ok(())
}

/// Writes outcomes in batches: what has arrived within `COMPLETION_LINGER`
/// of the first, up to `COMPLETION_BATCH` at a time.
async fn run_completer(
    pool: PgPool,
    endpoints: Option<Arc<Endpoints>>,
    mut rx: mpsc::Receiver<Completion>,
) {
    let mut batch = Vec::with_capacity(COMPLETION_BATCH);
    while rx.recv_many(&mut batch, COMPLETION_BATCH).await > 0 {
        let until = tokio::time::Instant::now() + COMPLETION_LINGER;
        while batch.len() < COMPLETION_BATCH {
            let room = COMPLETION_BATCH - batch.len();
            match tokio::time::timeout_at(until, rx.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let completions = std::mem::take(&mut batch);
        if let Err(error) = complete(&pool, endpoints.as_deref(), &completions).await {
            tracing::error!(
                error = format!("{error:#}"),
                "recording delivery outcomes failed; leases will expire and the events be redelivered"
            );
        }
    }
}
