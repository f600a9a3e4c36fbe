//! The journal's live feed on PostgreSQL. The `events` table is the
//! journal; notifications only wake its reader:
//!
//! - the listener holds one connection with `LISTEN checkpointd_events`;
//!   every write transaction that journals an event notifies at COMMIT
//!   (whichever server made it). A lost connection is reopened after
//!   [`PG_EVENT_POLL`]; notifications sent meanwhile are lost, which is
//!   why
//! - the reader also reads every [`PG_EVENT_POLL`] without being woken,
//!   and after each of this server's commits.
//!
//! The reader reads `events WHERE seq > fed ORDER BY seq` and the counters'
//! event sequence in one snapshot. Writers hold the counters row lock until
//! their COMMIT is visible, so committed events form a prefix without gaps:
//! what one read returns is complete up to the counters it saw. Numbers
//! before the first row it returns were trimmed by retention before the
//! reader got to them (or raised by an import without events): the feed
//! says so ([`Appended::Trimmed`]), and the hub ends its subscriptions with
//! a lag notice instead of leaving a silent gap. Only committed
//! events are read, so the mark given to the hub ([`Journal::marks`]) moves
//! to what was read, and events reach subscribers only once committed.

use super::conn::{Cached, Db, Pool, db_error};
use super::read::{self, EVENT_COLS, bound};
use super::writer::CHANNEL;
use crate::config::{PG_CONNECT_TIMEOUT, PG_EVENT_PAGE, PG_EVENT_POLL};
use crate::storage::backend::{Appended, EventFeed};
use crate::storage::commit::Synced;
use crate::storage::error::Result;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc, watch};
use tokio_postgres::{AsyncMessage, IsolationLevel, NoTls};

/// What the feed has read and handed out, shared by the store, its writer
/// and its reader tasks.
pub(crate) struct Journal {
    /// The highest event sequence seen: read from the journal, committed
    /// by this server, or read from the counters.
    seen: AtomicU64,
    /// Every event up to here was given to the feeds.
    fed: AtomicU64,
    feeds: Mutex<Vec<mpsc::Sender<Appended>>>,
    /// Wakes the reader.
    wake: Notify,
    marks: watch::Sender<Synced>,
    /// The last read of the journal succeeded.
    reachable: AtomicBool,
    /// The store is closing: one more read, then the feeds end.
    closing: AtomicBool,
}

impl Journal {
    pub fn new(event_seq: u64) -> Journal {
        let (marks, _) = watch::channel(Synced { event_seq, ..Synced::default() });
        Journal {
            seen: AtomicU64::new(event_seq),
            fed: AtomicU64::new(event_seq),
            feeds: Mutex::new(Vec::new()),
            wake: Notify::new(),
            marks,
            reachable: AtomicBool::new(true),
            closing: AtomicBool::new(false),
        }
    }

    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::Acquire)
    }

    pub fn saw(&self, seq: u64) {
        self.seen.fetch_max(seq, Ordering::AcqRel);
    }

    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Acquire)
    }

    /// This server committed up to `event_seq`: read it now.
    pub fn committed(&self, event_seq: u64) {
        self.saw(event_seq);
        self.wake.notify_one();
    }

    pub fn marks(&self) -> watch::Receiver<Synced> {
        self.marks.subscribe()
    }

    /// A new feed: every event read from now on.
    pub fn feed(&self) -> Box<dyn EventFeed> {
        let (tx, rx) = mpsc::channel(crate::config::PG_FEED_EVENTS);
        self.feeds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(tx);
        Box::new(Feed { rx })
    }

    /// The store closes: the reader reads once more (so that every event
    /// of an acknowledged write is handed out), then the mark says closed.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// The feeds themselves end only when the store is dropped (the hub
    /// ends its subscriptions on the closed mark, not on a feed's end).
    fn finish(&self) {
        self.marks.send_modify(|m| m.closed = true);
    }

    /// Gives one event (or news of lost ones), up to `seq`, to every feed,
    /// waiting while a feed is full.
    async fn hand_out(&self, seq: u64, appended: Appended) {
        // Seen before the feeds are listed: a feed added after the list was
        // taken starts past this event (see `Hub::start`'s watched_after).
        self.saw(seq);
        let feeds = self.feeds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        for feed in feeds {
            if feed.send(appended.clone()).await.is_err() {
                let mut feeds = self.feeds.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                feeds.retain(|f| !f.same_channel(&feed));
            }
        }
        self.fed.store(seq, Ordering::Release);
    }

    /// Reads the journal after what was fed, up to what is committed, and
    /// moves the mark there.
    async fn read(&self, pool: &Arc<Pool>) -> Result<()> {
        let mut conn = pool.get().await?;
        loop {
            let fed = self.fed.load(Ordering::Acquire);
            let (client, cache) = conn.parts();
            let raw = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(db_error)?;
            let tx = Cached { c: &raw, cache };
            let page = i64::try_from(PG_EVENT_PAGE).unwrap_or(i64::MAX);
            let sql = format!("SELECT {EVENT_COLS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2");
            let fed_bound = bound(fed);
            // Both in one round trip: one snapshot (repeatable read) sees
            // the same committed state whichever runs first.
            let (top, rows) = futures_util::try_join!(read::counters(&tx), async {
                tx.query(&sql, &[&fed_bound, &page]).await.map_err(db_error)
            })?;
            let top = top.event_seq;
            raw.commit().await.map_err(db_error)?;
            let complete = rows.len() < PG_EVENT_PAGE;
            // Committed numbers after `fed` that the journal no longer
            // holds: retention removed them before this read (or an import
            // raised the sequence without events). Said, not skipped.
            let missing_through = match rows.first() {
                Some(row) => read::num(row.get(0)).saturating_sub(1),
                None if complete => top,
                None => fed,
            };
            if missing_through > fed {
                self.hand_out(missing_through, Appended::Trimmed { from: fed + 1, through: missing_through }).await;
            }
            for row in &rows {
                let seq = read::num(row.get(0));
                let appended = match read::event_of(row) {
                    Ok(event) => Appended::Event(event),
                    Err(seq) => Appended::Undecodable { seq },
                };
                self.hand_out(seq, appended).await;
            }
            let reached =
                if complete { top.max(self.fed.load(Ordering::Acquire)) } else { self.fed.load(Ordering::Acquire) };
            self.fed.fetch_max(reached, Ordering::AcqRel);
            self.saw(reached);
            self.marks.send_if_modified(|m| {
                let moved = reached > m.event_seq;
                m.event_seq = m.event_seq.max(reached);
                moved
            });
            if complete {
                conn.release();
                return Ok(());
            }
        }
    }
}

/// The journal reader: reads when woken and every [`PG_EVENT_POLL`].
pub(crate) async fn read_loop(journal: Arc<Journal>, pool: Arc<Pool>) {
    loop {
        tokio::select! {
            () = journal.wake.notified() => {}
            () = tokio::time::sleep(PG_EVENT_POLL) => {}
        }
        let closing = journal.closing.load(Ordering::Acquire);
        let read = journal.read(&pool).await;
        if closing {
            // After this last read (or its failure: the database is gone,
            // and so are the events no read reached) nothing more comes.
            if let Err(e) = read {
                tracing::warn!(error = %e, "closing: the last read of the journal failed");
            }
            journal.finish();
            return;
        }
        match read {
            Ok(()) => {
                if !journal.reachable.swap(true, Ordering::AcqRel) {
                    tracing::info!("the journal is readable again");
                }
            }
            Err(e) => {
                if journal.reachable.swap(false, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "cannot read the journal; retrying every poll interval");
                }
            }
        }
    }
}

/// The listener: one connection that LISTENs and wakes the reader at
/// every notification; reopened after [`PG_EVENT_POLL`] when lost.
pub(crate) async fn listen_loop(journal: Arc<Journal>, config: tokio_postgres::Config) {
    loop {
        let connected = tokio::time::timeout(PG_CONNECT_TIMEOUT, config.connect(NoTls)).await;
        if let Ok(Ok((client, mut connection))) = connected {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            let wake = &journal.wake;
            let drain = async {
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "the notification connection ended");
                            break;
                        }
                    }
                }
            };
            tokio::pin!(drain);
            let listen = format!("LISTEN {CHANNEL}");
            let listening = tokio::select! {
                r = client.batch_execute(&listen) => r.is_ok(),
                () = &mut drain => false,
            };
            if listening {
                // Whatever was committed while nobody listened.
                journal.wake.notify_one();
                drain.await;
            }
        }
        tokio::time::sleep(PG_EVENT_POLL).await;
    }
}

/// What `watch_events` returns: events as the reader hands them out.
struct Feed {
    rx: mpsc::Receiver<Appended>,
}

impl EventFeed for Feed {
    fn next_blocking(&mut self) -> Option<Appended> {
        self.rx.blocking_recv()
    }
}
