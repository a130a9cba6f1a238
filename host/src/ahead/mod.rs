//! Seeing ahead: what a candidate version of a type would change for the
//! real users (`preview`), and every message the loaded types would send in
//! a window (`simulate`).
//!
//! Both read in one `REPEATABLE READ, READ ONLY` transaction, so PostgreSQL
//! itself refuses any write and every batch sees the same snapshot. Both
//! plan with the scheduler's own functions (`plan_next_after_now`,
//! `plan_successor`) and format as delivery does, so what they show is what
//! the scheduler and the claimer would do. Plugin calls run on every core, a
//! batch of users at a time, under the usual limits (fuel, memory, deadline).

pub mod preview;
mod runs;
pub mod simulate;

use crate::plugin::LoadedPlugin;
use crate::store::{self, User};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

/// Users read per round trip.
const USER_BATCH: i64 = 2_000;

/// A transaction that can only read, on one snapshot.
async fn read_only(pool: &PgPool) -> sqlx::Result<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// The next batch of users after `after`, by id (`user_id` narrows it to one).
async fn users_after(
    conn: &mut PgConnection,
    after: Option<Uuid>,
    only: Option<Uuid>,
) -> sqlx::Result<Vec<User>> {
    store::users_page(conn, after, only, USER_BATCH).await
}

/// The same component and config as `plugin`, with health counters of its
/// own: a preview's or a simulation's calls do not show in the live type's
/// health or metrics.
fn shadow(plugin: &LoadedPlugin) -> LoadedPlugin {
    plugin.reconfigured(
        plugin.config.clone(),
        plugin.webhook_url.clone(),
        plugin.source.clone(),
    )
}

/// `f` over `items` on every core, in order.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}
