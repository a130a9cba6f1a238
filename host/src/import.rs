//! Streamed NDJSON import of users (`POST /users/import`): the body is read
//! as it arrives and split into lines, each line parsed and validated as a
//! `POST /users` body, and the good ones written and planned in batches.
//!
//! Memory stays within a fixed bound whatever the body's size: a line is
//! kept only up to `MAX_LINE` bytes (a longer one is rejected, its bytes
//! dropped as they arrive), a batch holds at most `BATCH_USERS` lines or
//! about `BATCH_BYTES`, at most one batch is being written while the next
//! is parsed and planned, and the report lists at most `MAX_REPORTED`
//! rejected lines (`rejected_count` counts them all).

use crate::audit::{self, Actor};
use crate::plugin::{Registry, Subject};
use crate::scheduler::{self, NewUsersPlan};
use crate::store::{self, UserFields};
use axum::body::Bytes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Longest line accepted, in bytes (without its newline): one request body.
pub const MAX_LINE: usize = 1 << 20;
/// Most lines in one batch: one transaction, one planning task.
pub const BATCH_USERS: usize = 2_000;
/// A batch is also closed once its lines reach this many bytes.
pub const BATCH_BYTES: usize = 8 << 20;
/// Most rejected lines listed in a report; `rejected_count` has them all.
pub const MAX_REPORTED: usize = 1_000;
/// How often a running import logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What an import did, as `POST /users/import` answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportReport {
    /// Users written.
    pub imported: u64,
    /// Events planned for them.
    pub events_planned: u64,
    /// The first `MAX_REPORTED` rejected lines, in line order.
    pub rejected: Vec<Rejected>,
    /// Every rejected line, listed or not.
    pub rejected_count: u64,
}

/// A line that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rejected {
    /// Counting from 1; blank lines count.
    pub line: u64,
    /// The field at fault, by path (`dates.birthday`); none for a line that
    /// is not JSON or is too long.
    #[schema(required = true)]
    pub field: Option<String>,
    pub error: String,
}

/// Why one line was refused, as `POST /users` would say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub field: Option<String>,
    pub error: String,
}

/// Parses and validates one line: the same rules as a `POST /users` body.
pub type ParseLine = fn(&[u8]) -> Result<UserFields, LineError>;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The body could not be read (the client went away, or sent garbage framing).
    #[error("reading the request body failed: {0}")]
    Body(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("an import task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A line as the splitter cut it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// Line number and its bytes, without the newline.
    Text(u64, Bytes),
    /// Line number of a line longer than the limit; its bytes were dropped.
    TooLong(u64),
}

/// Cuts a byte stream into lines as chunks arrive, holding at most one
/// partial line of at most `max` bytes. A line that fits in one chunk is
/// not copied.
#[derive(Debug)]
pub struct LineSplitter {
    max: usize,
    partial: Vec<u8>,
    too_long: bool,
    line: u64,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            partial: Vec::new(),
            too_long: false,
            line: 0,
        }
    }

    /// Lines seen so far (ended ones).
    pub fn lines(&self) -> u64 {
        self.line
    }

    /// Appends to `out` every line `chunk` ends.
    pub fn push(&mut self, mut chunk: Bytes, out: &mut Vec<Line>) {
        while let Some(at) = memchr::memchr(b'\n', &chunk) {
            let text = chunk.split_to(at + 1).slice(..at);
            self.end_line(text, out);
        }
        if self.too_long || chunk.is_empty() {
            return;
        }
        if self.partial.len() + chunk.len() > self.max {
            self.too_long = true;
            self.partial = Vec::new();
        } else {
            self.partial.extend_from_slice(&chunk);
        }
    }

    /// The last line, when the stream ends without a newline.
    pub fn finish(&mut self, out: &mut Vec<Line>) {
        if self.too_long || !self.partial.is_empty() {
            self.end_line(Bytes::new(), out);
        }
    }

    fn end_line(&mut self, tail: Bytes, out: &mut Vec<Line>) {
        self.line += 1;
        if self.too_long || self.partial.len() + tail.len() > self.max {
            out.push(Line::TooLong(self.line));
            self.partial = Vec::new();
        } else if self.partial.is_empty() {
            out.push(Line::Text(self.line, tail));
        } else {
            self.partial.extend_from_slice(&tail);
            out.push(Line::Text(
                self.line,
                std::mem::take(&mut self.partial).into(),
            ));
        }
        self.too_long = false;
    }
}

/// Lines waiting to be parsed, in line order.
#[derive(Default)]
struct RawBatch {
    lines: Vec<Line>,
    bytes: usize,
}

impl RawBatch {
    fn push(&mut self, line: Line) {
        if let Line::Text(_, text) = &line {
            if text.trim_ascii().is_empty() {
                return;
            }
            self.bytes += text.len();
        }
        self.lines.push(line);
    }

    fn is_full(&self) -> bool {
        self.lines.len() >= BATCH_USERS || self.bytes >= BATCH_BYTES
    }
}

/// A batch parsed and planned, ready to be written.
struct Prepared {
    users: Vec<(Uuid, UserFields)>,
    plan: NewUsersPlan,
    rejected: Vec<Rejected>,
}

fn too_long(line: u64) -> Rejected {
    Rejected {
        line,
        field: None,
        error: format!("the line is longer than {MAX_LINE} bytes"),
    }
}

/// Parses, validates and plans one batch: blocking work, one task per batch.
fn prepare(batch: RawBatch, registry: &Registry, parse: ParseLine) -> Prepared {
    let mut users = Vec::with_capacity(batch.lines.len());
    let mut rejected = Vec::new();
    for line in batch.lines {
        match line {
            Line::Text(n, text) => match parse(&text) {
                // Time-ordered ids: a large import appends to the users'
                // and events' user indexes instead of writing all over them.
                Ok(fields) => users.push((Uuid::now_v7(), fields)),
                Err(e) => rejected.push(Rejected {
                    line: n,
                    field: e.field,
                    error: e.error,
                }),
            },
            Line::TooLong(n) => rejected.push(too_long(n)),
        }
    }
    let subjects: Vec<Subject> = users.iter().map(|(id, f)| f.subject(*id)).collect();
    let plugins = registry.snapshot();
    let plan = scheduler::plan_new_users(plugins.values(), &subjects, chrono::Utc::now());
    Prepared {
        users,
        plan,
        rejected,
    }
}

/// Writes one batch's users and their plans in one transaction; returns the
/// events written. The commit does not wait for the batch to reach disk:
/// `make_durable` waits for every batch at once before the import answers.
async fn write(pool: &PgPool, batch: &Prepared) -> sqlx::Result<u64> {
    store::retry_transient("an import batch", || async move {
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        store::insert_users(&mut tx, &batch.users).await?;
        let written = scheduler::schedule_new_users(&mut tx, &batch.plan).await?;
        tx.commit().await?;
        Ok(written)
    })
    .await
}

/// Writes the import's one audit entry, with its counts, and returns once
/// every batch committed before it is on disk: the entry's transaction
/// commits synchronously, and its commit waits for all the write-ahead log
/// before it, every batch's commit included.
async fn record_and_make_durable(pool: &PgPool, actor: &Actor, detail: Value) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    audit::record(&mut tx, actor, "users.import", "users", detail).await?;
    tx.commit().await
}

/// The rejected lines kept for the report: the first `MAX_REPORTED`, and a count.
#[derive(Default)]
struct Rejections {
    listed: Vec<Rejected>,
    count: u64,
}

impl Rejections {
    fn extend(&mut self, rejected: Vec<Rejected>) {
        self.count += rejected.len() as u64;
        let room = MAX_REPORTED.saturating_sub(self.listed.len());
        self.listed.extend(rejected.into_iter().take(room));
    }
}

/// Imports the NDJSON `body`: good lines are written (and their events
/// planned by every type loaded here), bad ones reported with their line
/// number. Lines already written stay written if the import fails midway.
pub async fn import_users<S, E>(
    pool: &PgPool,
    registry: &Arc<Registry>,
    body: S,
    parse: ParseLine,
    actor: &Actor,
) -> Result<ImportReport, ImportError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let started = Instant::now();
    let imported = AtomicU64::new(0);
    let events_planned = AtomicU64::new(0);
    // One batch in the channel at most: one being written, one waiting, one
    // being parsed or filled.
    let (to_writer, mut batches) = tokio::sync::mpsc::channel::<Prepared>(1);

    let writer = async {
        while let Some(batch) = batches.recv().await {
            let written = write(pool, &batch).await?;
            imported.fetch_add(batch.users.len() as u64, Ordering::Relaxed);
            events_planned.fetch_add(written, Ordering::Relaxed);
        }
        Ok::<(), ImportError>(())
    };

    let reader = async {
        let mut body = body;
        let mut splitter = LineSplitter::new(MAX_LINE);
        let mut rejections = Rejections::default();
        let mut batch = RawBatch::default();
        let mut lines = Vec::new();
        let mut last_progress = Instant::now();
        let mut ended = false;
        while !ended {
            match body.next().await {
                Some(Ok(chunk)) => splitter.push(chunk, &mut lines),
                Some(Err(e)) => return Err(ImportError::Body(e.to_string())),
                None => {
                    splitter.finish(&mut lines);
                    ended = true;
                }
            }
            for line in lines.drain(..) {
                batch.push(line);
            }
            if batch.is_full() || (ended && !batch.lines.is_empty()) {
                let full = std::mem::take(&mut batch);
                let registry = registry.clone();
                let prepared =
                    tokio::task::spawn_blocking(move || prepare(full, &registry, parse)).await?;
                let mut prepared = prepared;
                rejections.extend(std::mem::take(&mut prepared.rejected));
                if !prepared.users.is_empty() && to_writer.send(prepared).await.is_err() {
                    // The writer stopped on an error, which the join reports.
                    break;
                }
            }
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                let seconds = started.elapsed().as_secs_f64();
                tracing::info!(
                    lines = splitter.lines(),
                    imported = imported.load(Ordering::Relaxed),
                    rejected = rejections.count,
                    lines_per_s = (splitter.lines() as f64 / seconds) as u64,
                    "importing users"
                );
            }
        }
        drop(to_writer);
        Ok((splitter.lines(), rejections))
    };

    let joined = tokio::try_join!(reader, writer);
    let (imported, events_planned) = (imported.into_inner(), events_planned.into_inner());
    let ((lines, rejections), ()) = match joined {
        Ok(done) => done,
        Err(error) => {
            // What was written stays written, and is on record as such.
            if imported > 0 {
                let detail = json!({
                    "imported": imported,
                    "events_planned": events_planned,
                    "error": error.to_string(),
                });
                if let Err(e) = record_and_make_durable(pool, actor, detail).await {
                    tracing::error!(error = %e, imported, "recording a failed import in the audit log failed");
                }
            }
            return Err(error);
        }
    };
    if imported > 0 {
        let detail = json!({
            "imported": imported,
            "events_planned": events_planned,
            "rejected": rejections.count,
        });
        record_and_make_durable(pool, actor, detail).await?;
    }
    let report = ImportReport {
        imported,
        events_planned,
        rejected: rejections.listed,
        rejected_count: rejections.count,
    };
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        lines,
        imported = report.imported,
        events_planned = report.events_planned,
        rejected = report.rejected_count,
        elapsed_ms = started.elapsed().as_millis() as u64,
        users_per_s = (report.imported as f64 / seconds) as u64,
        "imported users"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&str], max: usize) -> Vec<Line> {
        let mut splitter = LineSplitter::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.push(Bytes::copy_from_slice(chunk.as_bytes()), &mut out);
        }
        splitter.finish(&mut out);
        out
    }

    fn text(n: u64, s: &str) -> Line {
        Line::Text(n, Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn lines_are_cut_wherever_the_chunks_end() {
        let whole = split(&["a\nbc\n\nd"], 10);
        assert_eq!(
            whole,
            vec![text(1, "a"), text(2, "bc"), text(3, ""), text(4, "d")]
        );
        assert_eq!(split(&["a", "\nb", "c\n", "\n", "d"], 10), whole);
        assert_eq!(split(&["a\n"], 10), vec![text(1, "a")]);
        assert_eq!(split(&[], 10), vec![]);
    }

    #[test]
    fn a_line_over_the_limit_is_reported_by_number_and_dropped() {
        assert_eq!(
            split(&["12345\n123456\nok"], 5),
            vec![text(1, "12345"), Line::TooLong(2), text(3, "ok")]
        );
        // Across chunks, and a last line without a newline.
        assert_eq!(
            split(&["123", "45", "6", "789\nok\n", "1234", "56"], 5),
            vec![Line::TooLong(1), text(2, "ok"), Line::TooLong(3)]
        );
        // Partly kept, then ended by a chunk that makes it too long.
        assert_eq!(
            split(&["1234", "56\n", "x\n"], 5),
            vec![Line::TooLong(1), text(2, "x")]
        );
    }

    #[test]
    fn the_report_lists_the_first_rejections_and_counts_them_all() {
        let mut rejections = Rejections::default();
        for chunk in 0..3u64 {
            rejections.extend(
                (0..600)
                    .map(|i| too_long(chunk * 600 + i + 1))
                    .collect::<Vec<_>>(),
            );
        }
        assert_eq!(rejections.count, 1_800);
        assert_eq!(rejections.listed.len(), MAX_REPORTED);
        assert_eq!(rejections.listed.last().unwrap().line, MAX_REPORTED as u64);
    }

    #[test]
    fn blank_lines_are_skipped_and_batches_close_at_their_limits() {
        let mut batch = RawBatch::default();
        batch.push(text(1, "  \r"));
        batch.push(text(2, ""));
        assert!(batch.lines.is_empty());
        for n in 0..BATCH_USERS as u64 {
            assert!(!batch.is_full());
            batch.push(text(n, "{}"));
        }
        assert!(batch.is_full());
        let mut big = RawBatch::default();
        big.push(Line::Text(1, Bytes::from(vec![b'x'; BATCH_BYTES])));
        assert!(big.is_full());
    }
}
