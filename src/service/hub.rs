//! Fan-out of journal events to subscribers, only once they are durable.
//!
//! One task drains sled's watch subscription on the events tree continuously
//! (sled blocks writers once a subscriber holds 1024 undrained events, and
//! dropping a subscriber while a writer is blocked deadlocks, sled #1515), so
//! there is exactly one sled subscriber and it is never left undrained. Events
//! wait in `pending` until the committer's durable mark passes them, then go,
//! in sequence order, into each subscriber's bounded queue. A full queue ends
//! that subscription with a lag notice; nobody else waits for it.

use crate::config::{REPLAY_PAGE_EVENTS, SUBSCRIBER_QUEUE_EVENTS};
use crate::error::Result;
use crate::model::{JournalEvent, SessionId};
use crate::storage::{EventWatch, Store};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

pub struct Hub {
    store: Arc<Store>,
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
    pub fn start(store: Arc<Store>) -> Arc<Hub> {
        let marks = store.durable_marks();
        let dispatched = marks.borrow().event_seq;
        let watch = store.watch_events();
        let hub = Arc::new(Hub { store, state: Mutex::new(HubState { dispatched, subs: HashMap::new(), next_id: 0 }) });
        tokio::spawn(Arc::clone(&hub).run(watch, marks));
        hub
    }

    async fn run(
        self: Arc<Self>,
        mut watch: EventWatch,
        mut marks: tokio::sync::watch::Receiver<crate::storage::DurableMark>,
    ) {
        let mut pending = BTreeMap::new();
        loop {
            tokio::select! {
                event = watch.next() => match event {
                    Some(event) => { pending.insert(event.seq, event); }
                    None => return,
                },
                changed = marks.changed() => if changed.is_err() { return },
            }
            let durable = marks.borrow_and_update().event_seq;
            if let Err(e) = self.release(&mut pending, durable) {
                tracing::error!(error = %e, "event dispatch failed to read the journal");
            }
        }
    }

    /// Offers every pending event up to `durable`, in order.
    fn release(&self, pending: &mut BTreeMap<u64, JournalEvent>, durable: u64) -> Result<()> {
        let mut state = self.state.lock().expect("hub lock");
        // Anything at or below the mark was offered already (or predates us).
        while pending.first_key_value().is_some_and(|(&seq, _)| seq <= state.dispatched) {
            pending.pop_first();
        }
        while state.dispatched < durable {
            let next = state.dispatched + 1;
            let event = match pending.remove(&next) {
                Some(event) => event,
                // Not seen through the watch (yet): the journal has it.
                None => match self.store.events(state.dispatched, next, None, 1)?.pop() {
                    Some(event) => event,
                    None => {
                        // Trimmed by retention before we got to it.
                        state.dispatched = next;
                        continue;
                    }
                },
            };
            state.dispatched = next;
            state.offer(Arc::new(event));
        }
        Ok(())
    }

    /// Subscribes to `session_id`. With `since`, first replays the journal
    /// events after it (refused with `compacted` if they are gone).
    pub fn subscribe(self: &Arc<Self>, session_id: SessionId, since: Option<u64>) -> Result<Subscription> {
        if let Some(since) = since {
            self.store.check_replay(since)?;
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE_EVENTS);
        let lagged = Arc::new(AtomicBool::new(false));
        let mut state = self.state.lock().expect("hub lock");
        let id = state.next_id;
        state.next_id += 1;
        state.subs.entry(session_id).or_default().push(Sub { id, tx, lagged: Arc::clone(&lagged) });
        let through = state.dispatched;
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

impl HubState {
    fn offer(&mut self, event: Arc<JournalEvent>) {
        let Some(subs) = self.subs.get_mut(&event.session_id) else { return };
        subs.retain(|sub| match sub.tx.try_send(Arc::clone(&event)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Dropping the sender ends the stream after what is queued.
                sub.lagged.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
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
            match self.hub.store.events(self.last_seq, self.replay_through, Some(self.session_id), REPLAY_PAGE_EVENTS) {
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
