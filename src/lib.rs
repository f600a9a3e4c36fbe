//! checkpointd: a durable checkpoint server.
//!
//! Programs save snapshots of their state over WebSocket, list and restore
//! them after a crash, and watch new ones appear live. This crate is the
//! server, its storage engine, a client, and the `checkpoint-dump` tool.
//!
//! # One command, from the socket to the disk
//!
//! A client sends `{"id":"7","method":"checkpoint","params":{...}}`:
//!
//! 1. [`server::run`]'s accept loop takes a socket permit, accepts the TCP
//!    connection and gives it a client slot; `server::connection::serve`
//!    completes the WebSocket handshake and reads text frames, one request
//!    at a time, handing each to the connection's handler.
//! 2. [`protocol::parse_request`] turns the frame into a
//!    [`protocol::Command`]: the envelope and every param are checked here,
//!    with the seed's exact error strings.
//! 3. `server::handler::Handler::apply` (one handler per connection) — one
//!    `match` over `Command` — calls [`service::Service::checkpoint`], which
//!    checks the input against [`rules`] and calls the store through the
//!    storage interface, [`storage::Backend::put_checkpoint`]; the result is
//!    rendered by a shape of [`protocol::reply`] (here
//!    [`protocol::reply::created`]).
//! 4. The sled [`storage::Store`] takes its write lock and runs
//!    [`storage::writes`]' `put_checkpoint`, which gathers the record, its
//!    indexes, the counters and a `checkpoint_created` journal event into one
//!    [`storage::change`], taking the next global sequence number; the change
//!    is applied atomically (one intent record, then each key).
//! 5. The write returns a ticket; [`storage::commit`] (group commit)
//!    `fdatasync`s the state segments, where each change's intent is (the
//!    first writer waiting syncs for everyone waiting at that moment; sled's
//!    own log is flushed about once a second), and only then wakes the
//!    writer: the reply is sent.
//! 6. The same durable mark releases the journal event:
//!    [`service::hub`]'s thread has been draining sled's `watch_prefix` on the events
//!    tree, and now offers the event to each subscriber's bounded queue; the
//!    handler's forwarding task for that subscription renders it with
//!    [`protocol::render_event`] and queues it with the connection's replies.
//!
//! # Modules
//!
//! - [`config`]: durability levels, limits, defaults — every tunable number.
//! - [`error`]: one error enum; each variant has a stable wire code.
//! - [`model`]: sessions, checkpoints, events as the service hands them out.
//! - [`rules`]: the input rules, for live operations and import alike.
//! - [`storage`]: the storage interface ([`storage::Backend`], its contract)
//!   and its sled implementation: trees ([`storage::keys`] is the whole key
//!   schema), atomic changes, one read path, group commit, format versions;
//!   and the PostgreSQL one ([`storage::postgres`], `--database-url`).
//! - [`service`]: the operations, over the storage interface; the event hub.
//! - [`protocol`]: request parsing and reply/event rendering: every JSON
//!   shape on the wire.
//! - [`server`]: listener, connections, handlers, shutdown; it never builds
//!   JSON itself.
//! - [`client`]: a small async client for the protocol.
//! - [`panics`]: panics caught around untrusted data, and one-line reports.
//! - [`dump`]: the `checkpoint-dump` commands, read from a private copy of a
//!   data directory ([`storage::inspect`]) or a read-only snapshot of a
//!   PostgreSQL database, both through [`storage::source`].
//! - [`transfer`]: export / import as JSON lines, and forge-reasoning import.
//! - [`snapshot`]: consistent copies of a live data directory (a running
//!   server pauses writes through its control socket) and backups.
//! - [`metrics`]: the Prometheus metrics `GET /metrics` serves
//!   (`server::http` answers plain HTTP on the listener; `server::tls`
//!   serves `wss://`).
//! - [`telemetry`]: logs as text or JSON lines.
//! - [`cli`]: the `checkpointd call` and `watch` client commands.
//! - [`progress`]: progress of long jobs (import, export, migrations).

pub mod cli;
pub mod client;
pub mod config;
pub mod dump;
pub mod error;
pub mod metrics;
pub mod model;
pub mod panics;
pub mod progress;
pub mod protocol;
pub mod rules;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod storage;
pub mod telemetry;
pub mod transfer;

pub use error::{Error, Result};
