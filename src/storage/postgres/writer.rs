//! Group commit: one task takes the writes waiting in the queue (at most
//! [`PG_BATCH_WRITES`], and no further one once they carry
//! [`PG_BATCH_BYTES`]) into one transaction. It locks the counters row
//! first (`SELECT ... FOR UPDATE`: every writer of every server waits for
//! it, so numbers are consecutive, follow commit order and are never
//! reused), runs each write in a savepoint of its own (a refused one rolls
//! back only itself and gives its numbers back), updates the counters,
//! trims the journal to its retention, notifies listeners and commits.
//! Only then is any write of the batch acknowledged; if the transaction
//! fails, every write of it fails (`unavailable`) and none is applied.

use super::conn::{Cached, Db, Pool, bounded, db_error};
use super::events::Journal;
use super::ops::{Ctx, Done, Write, exhausted};
use super::read::{self, bound};
use crate::config::{PG_BATCH_BYTES, PG_BATCH_WRITES};
use crate::storage::error::{Result, StorageError};
use crate::storage::records::{Counters, nanos};
use chrono::{DurationRound, TimeDelta, Utc};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The channel NOTIFY wakes event readers on.
pub(crate) const CHANNEL: &str = "checkpointd_events";

/// Where committed batches are reported (metrics), once one is set.
pub(crate) type Observer = std::sync::OnceLock<Arc<dyn crate::storage::commit::CommitObserver>>;

/// One queued write and where its answer goes.
pub(crate) struct Job {
    pub write: Write,
    pub reply: oneshot::Sender<Result<Done>>,
}

pub(crate) async fn run(
    pool: Arc<Pool>,
    mut queue: mpsc::Receiver<Job>,
    journal: Arc<Journal>,
    observer: Arc<Observer>,
    retention: u64,
) {
    while let Some(first) = queue.recv().await {
        let mut bytes = first.write.approx_bytes();
        let mut batch = vec![first];
        while batch.len() < PG_BATCH_WRITES && bytes < PG_BATCH_BYTES {
            match queue.try_recv() {
                Ok(job) => {
                    bytes += job.write.approx_bytes();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let (writes, replies): (Vec<Write>, Vec<_>) = batch.into_iter().map(|j| (j.write, j.reply)).unzip();
        match bounded("a write transaction", commit(&pool, writes, retention)).await {
            Ok((results, counters, committing)) => {
                journal.committed(counters.event_seq);
                if let Some(o) = observer.get() {
                    o.committed(results.len() as u64, committing);
                }
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, writes = replies.len(), "a write transaction failed; nothing of it was applied");
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One transaction: every write in its savepoint; the results, the
/// counters as committed, and how long the COMMIT took.
async fn commit(
    pool: &Arc<Pool>,
    writes: Vec<Write>,
    retention: u64,
) -> Result<(Vec<Result<Done>>, Counters, std::time::Duration)> {
    let mut conn = pool.get().await?;
    let (client, cache) = conn.parts();
    let raw = client.transaction().await.map_err(db_error)?;
    let tx = Cached { c: &raw, cache };
    let row = tx.query_one(&format!("{} FOR UPDATE", read::COUNTERS), &[]).await.map_err(db_error)?;
    let start = read::counters_of(&row);
    // Live times are stamped to the microsecond, as the sled store does.
    let now =
        nanos(Utc::now().duration_trunc(TimeDelta::microseconds(1)).unwrap_or_else(|_| Utc::now())).unwrap_or(i64::MAX);
    let mut ctx = Ctx { tx: &tx, c: start, now };
    let mut results = Vec::with_capacity(writes.len());
    // Whether the previous write's savepoint is still open: it is released
    // in the same round trip that opens the next one, and the last one is
    // committed with the transaction (a savepoint's changes are part of
    // the transaction unless rolled back to).
    let mut open = false;
    for write in writes {
        if exhausted(&ctx.c) {
            results.push(Err(StorageError::sequences_exhausted(&ctx.c)));
            continue;
        }
        let savepoint = if open { "RELEASE SAVEPOINT w; SAVEPOINT w" } else { "SAVEPOINT w" };
        let before = ctx.c;
        // The savepoint goes out in the round trip of the write's first
        // statements, and reaches the server before any of them:
        // `join!` polls the savepoint's future first, and a simple query
        // (`batch_execute`) is queued on the connection on its first poll,
        // before it awaits anything; every statement of the write is queued
        // after it (the connection sends its queue in order), a statement
        // that is still to be prepared with its Parse now and its execution
        // later, still after. If the savepoint fails, the statements after
        // it fail or ran in a transaction that now fails as a whole: its
        // error fails the transaction, whatever the write answered.
        let (opened, outcome) = futures_util::join!(raw.batch_execute(savepoint), write.run(&mut ctx));
        opened.map_err(db_error)?;
        open = true;
        match outcome {
            Ok(done) => results.push(Ok(done)),
            Err(e) => {
                // Refused: nothing of it stays, its numbers are given back.
                // If even that fails, the connection is gone: the whole
                // transaction fails. (The savepoint stays open, empty.)
                ctx.c = before;
                raw.batch_execute("ROLLBACK TO SAVEPOINT w").await.map_err(db_error)?;
                results.push(Err(e));
            }
        }
    }
    let end = ctx.c;
    // The counters, the journal's trim and the wake-up are independent:
    // sent together, in one round trip. A failure of any fails the
    // transaction.
    let counters = [
        bound(end.global_seq),
        bound(end.event_seq),
        bound(end.sessions_created),
        bound(end.active_sessions),
        bound(end.checkpoints),
    ];
    let update = async {
        if end != start {
            tx.execute(
                "UPDATE counters SET global_seq = $1, event_seq = $2, sessions_created = $3, active_sessions = $4, \
                 checkpoints = $5 WHERE id = 1",
                &[&counters[0], &counters[1], &counters[2], &counters[3], &counters[4]],
            )
            .await?;
        }
        Ok(())
    };
    let journaled = end.event_seq != start.event_seq;
    let keep_from = end.event_seq.checked_sub(retention).filter(|_| journaled).map(bound);
    let trim = async {
        if let Some(keep_from) = keep_from {
            tx.execute("DELETE FROM events WHERE seq <= $1", &[&keep_from]).await?;
        }
        Ok(())
    };
    let notified = end.event_seq.to_string();
    let notify = async {
        if journaled {
            // Delivered at COMMIT, in commit order; only a wake-up (the
            // journal is the table).
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &notified]).await?;
        }
        Ok::<_, tokio_postgres::Error>(())
    };
    futures_util::try_join!(update, trim, notify).map_err(db_error)?;
    let committing = std::time::Instant::now();
    raw.commit().await.map_err(db_error)?;
    let committing = committing.elapsed();
    conn.release();
    Ok((results, end, committing))
}
