//! Long-lived background loops (the claimer, the replanner) run supervised:
//! a loop that fails or panics is logged and restarted with backoff, and
//! `/ready` answers `503` while one is not running, so a host never looks
//! healthy while it does nothing.

use serde_json::{Value, json};
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// First wait before a failed loop is started again; it doubles per failure
/// in a row, up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A loop that ran this long before failing starts again from `FIRST_BACKOFF`.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// What `/ready` and the logs know of one supervised loop.
#[derive(Debug)]
pub struct LoopState {
    pub name: &'static str,
    running: AtomicBool,
    restarts: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Set by `inject_fault`: while set, the loop fails at each turn.
    fault: AtomicBool,
}

impl LoopState {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            running: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            last_error: Mutex::new(None),
            fault: AtomicBool::new(false),
        }
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::SeqCst)
    }

    /// The loop's state as `/ready` shows it.
    pub fn describe(&self) -> Value {
        json!({
            "running": self.is_running(),
            "restarts": self.restarts(),
            "last_error": *self.last_error.lock().unwrap_or_else(|e| e.into_inner()),
        })
    }

    /// While `on`, the loop fails at each turn as a real fault would (every
    /// restart fails too), so the restart path and `/ready` can be exercised
    /// on a running host.
    pub fn inject_fault(&self, on: bool) {
        self.fault.store(on, Ordering::SeqCst);
    }

    /// Called by the loop at each turn: an injected fault is an error.
    pub fn check_fault(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.fault.load(Ordering::SeqCst), "injected fault");
        Ok(())
    }
}

/// Runs the loop `start` makes until `stop` turns true, starting it again
/// with backoff whenever it returns an error, returns early or panics.
pub async fn supervise<F, Fut>(
    state: std::sync::Arc<LoopState>,
    mut start: F,
    mut stop: watch::Receiver<bool>,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = tokio::time::Instant::now();
        state.running.store(true, Ordering::SeqCst);
        let result = tokio::spawn(start()).await;
        state.running.store(false, Ordering::SeqCst);
        if *stop.borrow() {
            return;
        }
        let error = match result {
            Ok(Ok(())) => "returned without being asked to stop".to_string(),
            Ok(Err(error)) => format!("{error:#}"),
            Err(join) => format!("panicked: {join}"),
        };
        if started.elapsed() >= HEALTHY_RUN {
            backoff = FIRST_BACKOFF;
        }
        tracing::error!(
            task = state.name,
            %error,
            restart_in = %humantime::format_duration(backoff),
            "background loop failed; starting it again"
        );
        *state.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
        state.restarts.fetch_add(1, Ordering::SeqCst);
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
