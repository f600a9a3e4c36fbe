//! Test support shared by every integration test file. Cargo builds each
//! `tests/*.rs` as a crate of its own: each declares `mod common;` and uses
//! the part it needs (hence `dead_code` is allowed here).
//!
//! - [`inproc`]: the in-process harness. A store from one backend factory
//!   (`open_backend`), the service on it, and the WebSocket server serving it
//!   on a loopback port (`TestServer`). The service and server tests reach
//!   storage only through the storage interface, so that they can run
//!   against another backend by changing that factory alone.
//! - [`child`]: the child-process harness. The real `checkpointd`
//!   (`Daemon`: ready line, signals, restart, killed on drop),
//!   `checkpoint-dump`, and this test binary re-run as a child.
//! - [`pg`]: a private PostgreSQL cluster per test process (unix socket in a
//!   temporary directory, removed when the process exits), a database per
//!   test.
//! - [`wire`]: bounded calls over a WebSocket with the crate's client, to
//!   either harness's server.
//! - [`svc`]: bounded calls on the service and its subscriptions.
//! - [`fs`]: temporary directories, `copy_dir`, raw sled opens, and the one
//!   wait for a data directory's lock.
//! - [`fixtures`]: `tests/fixtures/`, and a directory with one of everything.
//! - [`http`]: plain HTTP requests to a server's probes and metrics.
//!
//! Rules every test keeps: servers bind port 0 on loopback only; every loop
//! is bounded in count and time; nothing sleeps to synchronise (waits are on
//! channels, locks, replies or deadlines).

#![allow(dead_code)]

pub mod child;
pub mod fixtures;
pub mod fs;
pub mod http;
pub mod inproc;
pub mod pg;
pub mod svc;
pub mod wire;
