//! Fan-out of journal events to subscribers, only once they are durable.
//!
//! One thread drains sled's watch subscription on the events tree continuously
//! (sled blocks writers once a subscriber holds 1024 undrained events, and
//! dropping a subscriber while a writer is blocked deadlocks, sled #1515), so
//! there is exactly one sled subscriber and it is never left undrained. Events
//! wait in `pending` until the committer's durable mark passes them, then go,
//! in sequence order, into each subscriber's bounded queue. A full queue ends
//! that subscription with a lag notice; nobody else waits for it.

use crate::config::{DISPATCH_RETRY, REPLAY_PAGE_EVENTS, SUBSCRIBER_QUEUE_EVENTS, WATCH_FORWARD_EVENTS};
use crate::error::{Error, Result};
use crate::model::{JournalEvent, SessionId};
use crate::storage::{Appended, DurableMark, SharedBackend, StorageError};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use tokio::sync::{Notify, mpsc};

pub struct Hub {
    store: SharedBackend,
    /// Every event after this sequence reaches the hub through the watch.
    watched_after: u64,
    state: Mutex<HubState>,
}

struct HubState {
    /// Every event up to this sequence has been offered to subscribers.
    dispatched: u64,
    subs: HashMap<SessionId, Vec<Sub>>,
    next_id: u64,
}

struct Sub {
    id: u64,
    tx: mpsc::Sender<Arc<JournalEvent>>,
    lagged: Arc<AtomicBool>,
    /// Events up to here were asked to be skipped (`since` ahead of the
    /// dispatcher): they are not queued, so they cannot overflow the queue.
    skip_through: u64,
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Event(Arc<JournalEvent>),
    /// The queue overflowed; resubscribe with `since: last_seq`.
    Lagged {
        last_seq: u64,
    },
}

/// One client's subscription to one session: replay, then live events.
pub struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    session_id: SessionId,
    /// Highest sequence handed out (or skipped as already seen).
    last_seq: u64,
    /// Replay reads the journal up to here; live events follow it.
    replay_through: u64,
    replay: VecDeque<JournalEvent>,
    rx: mpsc::Receiver<Arc<JournalEvent>>,
    lagged: Arc<AtomicBool>,
    ended: bool,
}

impl Hub {
    /// Starts the dispatch task. Call inside a tokio runtime.
    pub fn start(store: SharedBackend) -> Arc<Hub> {
        let marks = store.durable_marks();
        let dispatched = marks.borrow().event_seq;
        let mut watch = store.watch_events();
        // Read after the watch began: later events all come through it.
        let watched_after = store.event_sequence();
        let state = Mutex::new(HubState { dispatched, subs: HashMap::new(), next_id: 0 });
        let hub = Arc::new(Hub { store, watched_after, state });
        // sled blocks every writer once its subscriber holds 1024 undrained
        // events, so a thread of its own drains it: busy or blocked runtime
        // workers (writers run sled synchronously) can never stall it. It
        // ends when the store is gone; the hub task may end before it.
        // The hand-over is bounded too: a dispatcher the runtime never runs
        // makes writers wait once WATCH_FORWARD_EVENTS are held, instead of
        // memory growing.
        let handover = Arc::new(Handover::default());
        let forward = Arc::clone(&handover);
        std::thread::Builder::new()
            .name("checkpointd-events".into())
            .spawn(move || {
                while let Some(appended) = watch.next_blocking() {
                    forward.put(appended);
                }
                forward.end();
            })
            .expect("spawn the journal watch thread");
        // The task holds the hub weakly: once the service and its
        // subscriptions are gone, the store (and its directory lock) is
        // released.
        tokio::spawn(Hub::run(Arc::downgrade(&hub), handover, marks));
        hub
    }

    async fn run(hub: Weak<Hub>, handover: Arc<Handover>, mut marks: tokio::sync::watch::Receiver<DurableMark>) {
        // Once the task is gone (also aborted), the thread drops what it drains.
        let _close = CloseOnDrop(Arc::clone(&handover));
        let mut pending = BTreeMap::new();
        // The last journal read failed (logged once per outage).
        let mut failing = false;
        loop {
            tokio::select! {
                () = handover.arrived.notified() => {}
                changed = marks.changed() => if changed.is_err() { return },
            }
            loop {
                // Take every event already forwarded, so that few have to be
                // read back from the journal (where retention may have
                // trimmed them).
                if handover.take(&mut pending) {
                    return;
                }
                let mark = *marks.borrow_and_update();
                let Some(hub) = hub.upgrade() else { return };
                let all_out = match hub.release(&mut pending, mark.event_seq).await {
                    Ok(all_out) => {
                        if std::mem::take(&mut failing) {
                            tracing::info!("event dispatch reads the journal again");
                        }
                        all_out
                    }
                    // The journal cannot be read now (a database restarting):
                    // nothing is skipped; the same event is tried again.
                    Err(e) if !mark.closed => {
                        if !std::mem::replace(&mut failing, true) {
                            tracing::warn!(error = %e, "event dispatch cannot read the journal; retrying");
                        }
                        drop(hub);
                        tokio::time::sleep(DISPATCH_RETRY).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "event dispatch failed to read the journal after the store closed");
                        true
                    }
                };
                if mark.closed && all_out {
                    // The final flush's events are out; nothing follows them:
                    // every subscription ends after what it has queued.
                    hub.state.lock().expect("hub lock").subs.clear();
                    return;
                }
                // Out up to the mark: wait for it to move. Else an event up
                // to it is still on its way: wait for that (unless it came
                // meanwhile).
                if all_out || handover.want() {
                    break;
                }
            }
        }
    }

    /// Offers every pending event up to `durable`, in order. Returns whether
    /// it got that far (or is still waiting for the watch to forward one).
    ///
    /// A sequence number up to `durable` belongs to a change already applied,
    /// so its event is in `pending`, still on its way from the watch thread,
    /// in the journal, trimmed from it, or was never written (an import
    /// raises the event sequence without writing events). Only "on its way"
    /// is worth waiting for, and the watch forwards appends in sequence
    /// order: once a later one has arrived, an earlier one is not coming.
    async fn release(&self, pending: &mut BTreeMap<u64, Held>, durable: u64) -> Result<bool> {
        loop {
            // What is at hand is offered under the lock; an event that has
            // to be read back from the journal is read without it (only
            // this task moves `dispatched`, so it cannot move meanwhile).
            let next = {
                let mut state = self.state.lock().expect("hub lock");
                // Anything at or below the mark was offered already (or predates us).
                while let Some((seq, held)) = pending.pop_first() {
                    if seq > state.dispatched {
                        pending.insert(seq, held);
                        break;
                    }
                    // What is left of a lost range still has to be passed.
                    if let Held::Lost { through } = held
                        && through > state.dispatched
                    {
                        pending.insert(state.dispatched + 1, Held::Lost { through });
                        break;
                    }
                }
                if state.dispatched >= durable {
                    return Ok(true);
                }
                let next = state.dispatched + 1;
                let watched = next > self.watched_after;
                let at_hand = match pending.remove(&next) {
                    Some(Held::Event(event)) => Some(Some(event)),
                    Some(Held::Undecodable) => Some(None),
                    Some(Held::Lost { through }) => {
                        // The feed could not read them (retention removed
                        // them first): whose they were is unknown, so every
                        // subscription ends with a lag notice rather than a
                        // silent gap.
                        let upto = through.min(durable);
                        if upto < through {
                            pending.insert(upto + 1, Held::Lost { through });
                        }
                        state.dispatched = upto;
                        state.lag_unskipped(upto);
                        continue;
                    }
                    // Not coming through the watch: never written.
                    None if watched && pending.first_key_value().is_some_and(|(&seq, _)| seq > next) => Some(None),
                    None => None,
                };
                match at_hand {
                    Some(event) => {
                        state.dispatch(next, event);
                        continue;
                    }
                    None => next,
                }
            };
            let lookup = self.journal_event(next).await?;
            let mut state = self.state.lock().expect("hub lock");
            match lookup {
                Lookup::Found(event) => state.dispatch(next, Some(event)),
                Lookup::Missing => state.dispatch(next, None),
                // Still on its way from the watch thread (it was applied,
                // then trimmed by a small retention): wait.
                Lookup::Trimmed if next > self.watched_after => return Ok(false),
                Lookup::Trimmed => {
                    // Appended before the watch began and trimmed before we
                    // got to it. Whose it was is unknown: rather than a
                    // silent gap, every subscription ends with a lag notice.
                    state.dispatched = next;
                    state.lag_unskipped(next);
                }
            }
        }
    }

    /// Looks up one applied event in the journal.
    async fn journal_event(&self, seq: u64) -> Result<Lookup> {
        match self.store.events(seq - 1, seq, None, 1).await {
            Ok(mut found) => {
                if let Some(event) = found.pop() {
                    return Ok(Lookup::Found(event));
                }
            }
            Err(StorageError::Corrupt(e)) => {
                tracing::error!(seq, error = %e, "undecodable journal event; not delivered");
                return Ok(Lookup::Missing);
            }
            // Unreadable for now (a database restarting): not a hole.
            Err(e) => return Err(e.into()),
        }
        // The journal is a contiguous suffix, trimmed from its oldest end.
        Ok(match self.store.oldest_event().await? {
            Some(oldest) if seq < oldest => Lookup::Trimmed,
            _ => Lookup::Missing,
        })
    }

    /// Subscribes to `session_id`. With `since`, first replays the journal
    /// events after it (refused with `compacted` if they are gone).
    pub async fn subscribe(self: &Arc<Self>, session_id: SessionId, since: Option<u64>) -> Result<Subscription> {
        if let Some(since) = since {
            self.check_replay(since).await?;
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE_EVENTS);
        let lagged = Arc::new(AtomicBool::new(false));
        let mut state = self.state.lock().expect("hub lock");
        let id = state.next_id;
        state.next_id += 1;
        let through = state.dispatched;
        let skip_through = since.unwrap_or(through);
        state.subs.entry(session_id).or_default().push(Sub { id, tx, lagged: Arc::clone(&lagged), skip_through });
        Ok(Subscription {
            hub: Arc::clone(self),
            id,
            session_id,
            last_seq: since.unwrap_or(through),
            replay_through: through,
            replay: VecDeque::new(),
            rx,
            lagged,
            ended: false,
        })
    }

    /// Refuses a replay from before the oldest retained event.
    /// Also refuses one from beyond the newest event (durable or not):
    /// skipping to a seq this journal has not reached would silently drop
    /// the events that will take those numbers (the client saw them on a
    /// directory since restored from a backup, or lost in an async crash).
    async fn check_replay(&self, since: u64) -> Result<()> {
        let last = self.store.newest_event_sequence().await?;
        if since > last {
            return Err(Error::Conflict(format!(
                "since {since} is after the newest event, {last}: this server never delivered it; subscribe with since at most {last}"
            )));
        }
        match self.store.oldest_event().await? {
            Some(oldest) if since.saturating_add(1) < oldest => Err(Error::Compacted { requested: since, oldest }),
            None if since < last => Err(Error::Compacted { requested: since, oldest: last.saturating_add(1) }),
            _ => Ok(()),
        }
    }

    /// Number of live subscriptions (for metrics).
    pub fn subscriptions(&self) -> usize {
        self.state.lock().expect("hub lock").subs.values().map(Vec::len).sum()
    }

    fn remove(&self, session_id: SessionId, id: u64) {
        let mut state = self.state.lock().expect("hub lock");
        if let Some(subs) = state.subs.get_mut(&session_id) {
            subs.retain(|s| s.id != id);
            if subs.is_empty() {
                state.subs.remove(&session_id);
            }
        }
    }
}

/// Where [`Hub::release`] found an applied event it had not been given.
enum Lookup {
    Found(JournalEvent),
    /// Never written (or undecodable): there is nothing to deliver.
    Missing,
    /// Below the oldest event the journal retains.
    Trimmed,
}

/// The journal watch thread's hand-over to the dispatch task. Appended
/// events wait here until the task takes them, which it does whenever the
/// durable mark moves (an event is dispatched only once durable); the thread
/// wakes the task only when it waits for an event still on its way, or when
/// the queue is full. So a write costs the task no wakeup of its own.
#[derive(Default)]
struct Handover {
    state: Mutex<Forwarded>,
    /// The thread waits here while the queue is full.
    room: Condvar,
    /// Wakes the task.
    arrived: Notify,
}

#[derive(Default)]
struct Forwarded {
    queue: Vec<Appended>,
    /// The task waits for the next arrival.
    wanted: bool,
    /// The watch has ended (the store is gone).
    ended: bool,
    /// The task is gone: what is drained is dropped.
    closed: bool,
}

impl Handover {
    /// The thread forwards one event; it waits while the queue is full.
    fn put(&self, appended: Appended) {
        let Ok(mut f) = self.state.lock() else { return };
        while f.queue.len() >= WATCH_FORWARD_EVENTS && !f.closed {
            // The task takes them whether the mark moved or not.
            self.arrived.notify_one();
            f = match self.room.wait(f) {
                Ok(f) => f,
                Err(_) => return,
            };
        }
        if f.closed {
            return;
        }
        f.queue.push(appended);
        if std::mem::take(&mut f.wanted) {
            drop(f);
            self.arrived.notify_one();
        }
    }

    /// The watch has ended.
    fn end(&self) {
        if let Ok(mut f) = self.state.lock() {
            f.ended = true;
        }
        self.arrived.notify_one();
    }

    /// Holds everything forwarded so far; returns whether the watch has ended.
    fn take(&self, pending: &mut BTreeMap<u64, Held>) -> bool {
        let (taken, ended) = match self.state.lock() {
            Ok(mut f) => (std::mem::take(&mut f.queue), f.ended),
            Err(_) => return true,
        };
        if taken.len() >= WATCH_FORWARD_EVENTS {
            self.room.notify_all();
        }
        for appended in taken {
            hold(pending, appended);
        }
        ended
    }

    /// Asks to be woken at the next arrival; `false` when there is no need
    /// (something arrived meanwhile, or the watch has ended).
    fn want(&self) -> bool {
        match self.state.lock() {
            Ok(mut f) if f.queue.is_empty() && !f.ended => {
                f.wanted = true;
                true
            }
            _ => false,
        }
    }
}

struct CloseOnDrop(Arc<Handover>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Ok(mut f) = self.0.state.lock() {
            f.closed = true;
            f.queue = Vec::new();
        }
        self.0.room.notify_all();
    }
}

/// What the watch forwarded, held until its sequence is durable.
enum Held {
    Event(JournalEvent),
    /// Logged when it was read; dispatch passes over it.
    Undecodable,
    /// Every event from this key through `through` is lost to the feed.
    Lost {
        through: u64,
    },
}

fn hold(pending: &mut BTreeMap<u64, Held>, appended: Appended) {
    match appended {
        Appended::Event(event) => {
            pending.insert(event.seq, Held::Event(event));
        }
        Appended::Undecodable { seq } => {
            pending.insert(seq, Held::Undecodable);
        }
        Appended::Trimmed { from, through } => {
            pending.insert(from, Held::Lost { through });
        }
    }
}

impl HubState {
    /// Moves the mark past `seq`, offering its event. An undecodable event
    /// (`None`) was logged when it was read; nobody can be given it
    /// (`verify` reports the record).
    fn dispatch(&mut self, seq: u64, event: Option<JournalEvent>) {
        self.dispatched = seq;
        if let Some(event) = event {
            self.offer(Arc::new(event));
        }
    }

    /// Ends every subscription after what it has queued, with a lag notice.
    /// Events up to `through` cannot be delivered and whose they were is
    /// unknown: every subscription that has not skipped past them ends
    /// with a lag notice.
    fn lag_unskipped(&mut self, through: u64) {
        for subs in self.subs.values_mut() {
            subs.retain(|sub| {
                let keep = sub.skip_through >= through;
                if !keep {
                    sub.lagged.store(true, Ordering::Release);
                }
                keep
            });
        }
        self.subs.retain(|_, subs| !subs.is_empty());
    }

    fn offer(&mut self, event: Arc<JournalEvent>) {
        let Some(subs) = self.subs.get_mut(&event.session_id) else { return };
        subs.retain(|sub| {
            if event.seq <= sub.skip_through {
                return true;
            }
            match sub.tx.try_send(Arc::clone(&event)) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Dropping the sender ends the stream after what is queued.
                    sub.lagged.store(true, Ordering::Release);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        if subs.is_empty() {
            self.subs.remove(&event.session_id);
        }
    }
}

impl Subscription {
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// The next event, or the lag notice that ends the subscription. `None`
    /// once it has ended.
    pub async fn next(&mut self) -> Option<Delivery> {
        if self.ended {
            return None;
        }
        while self.last_seq < self.replay_through {
            if let Some(event) = self.replay.pop_front() {
                self.last_seq = event.seq;
                return Some(Delivery::Event(Arc::new(event)));
            }
            let page = self
                .hub
                .store
                .events(self.last_seq, self.replay_through, Some(self.session_id), REPLAY_PAGE_EVENTS)
                .await;
            // Retention may have trimmed events after `last_seq` before this
            // read: then the page has a hole. End with a lag notice instead
            // (resuming from `last_seq` then reports `compacted`).
            if page.is_ok() && self.hub.check_replay(self.last_seq).await.is_err() {
                self.ended = true;
                return Some(Delivery::Lagged { last_seq: self.last_seq });
            }
            match page {
                Ok(page) if page.len() == REPLAY_PAGE_EVENTS => self.replay.extend(page),
                Ok(page) => {
                    self.replay.extend(page);
                    // Nothing of ours between the last page and the end.
                    if self.replay.is_empty() {
                        self.last_seq = self.replay_through;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "replay failed to read the journal");
                    self.ended = true;
                    return Some(Delivery::Lagged { last_seq: self.last_seq });
                }
            }
        }
        loop {
            match self.rx.recv().await {
                Some(event) if event.seq <= self.last_seq => continue,
                Some(event) => {
                    self.last_seq = event.seq;
                    return Some(Delivery::Event(event));
                }
                None => {
                    self.ended = true;
                    return self.lagged.load(Ordering::Acquire).then_some(Delivery::Lagged { last_seq: self.last_seq });
                }
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(self.session_id, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::model::{EventKind, NewCheckpoint};
    use crate::service::Service;
    use crate::storage::{ImportBatch, Store};
    use std::time::Duration;

    /// The next delivery, or a failure naming what stalled.
    async fn next(sub: &mut Subscription, what: &str) -> Delivery {
        tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap_or_else(|_| panic!("dispatch stalled: {what}"))
            .expect("subscription ended")
    }

    /// An event record the hub cannot decode is passed over: later events
    /// still reach their subscribers.
    #[tokio::test]
    async fn an_undecodable_event_does_not_stop_dispatch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(StoreConfig::new(dir.path())).unwrap());
        let service = Service::new(Arc::clone(&store) as SharedBackend);
        let s = service.create_session(None, None).await.unwrap().id;
        let mut sub = service.subscribe(s, None).await.unwrap();
        let bad = store.append_raw_event(b"not an event record").await.unwrap();
        let cp = service.checkpoint(NewCheckpoint::new(s, "m")).await.unwrap();
        let Delivery::Event(event) = next(&mut sub, "after an undecodable event").await else { panic!("lagged") };
        assert_eq!(event.seq, bad + 1);
        assert_eq!(event.kind, EventKind::CheckpointCreated { checkpoint_id: cp.id, sequence_number: 1 });
    }

    /// An event sequence raised without events (as import does) while the
    /// hub runs: the numbers it skipped are not waited for.
    #[tokio::test]
    async fn a_sequence_raised_without_events_does_not_stall_dispatch() {
        let dir = tempfile::tempdir().unwrap();
        let service = Service::open(StoreConfig::new(dir.path())).unwrap();
        let floor = 40;
        service.store().import(ImportBatch { event_seq_floor: floor, ..ImportBatch::default() }).await.unwrap();
        let s = service.create_session(None, None).await.unwrap().id;
        let mut sub = service.subscribe(s, None).await.unwrap();
        let cp = service.checkpoint(NewCheckpoint::new(s, "m")).await.unwrap();
        let Delivery::Event(event) = next(&mut sub, "after an import raised the sequence").await else {
            panic!("lagged")
        };
        assert_eq!(event.seq, floor + 1);
        assert_eq!(event.kind, EventKind::CheckpointCreated { checkpoint_id: cp.id, sequence_number: 1 });
        // Also when the raised sequence is the last thing written: a
        // subscriber from there on gets the next event.
        service.store().import(ImportBatch { event_seq_floor: 100, ..ImportBatch::default() }).await.unwrap();
        let mut late = service.subscribe(s, Some(100)).await.unwrap();
        service.checkpoint(NewCheckpoint::new(s, "m")).await.unwrap();
        let Delivery::Event(event) = next(&mut late, "after a raise at the end of the journal").await else {
            panic!("lagged")
        };
        assert_eq!(event.seq, 101);
    }

    /// The replay bounds are computed without overflow at the end of the
    /// range of sequences.
    #[tokio::test]
    async fn a_replay_check_at_the_end_of_the_sequences_does_not_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let service = Service::open(StoreConfig::new(dir.path())).unwrap();
        let floor = u64::MAX - 1;
        service.store().import(ImportBatch { event_seq_floor: floor, ..ImportBatch::default() }).await.unwrap();
        assert!(service.hub.check_replay(floor).await.is_ok());
        assert_eq!(service.hub.check_replay(u64::MAX).await.unwrap_err().code(), "conflict");
    }
}
