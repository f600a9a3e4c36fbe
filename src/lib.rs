//! checkpointd: a durable checkpoint server.
//!
//! (Table of contents; see `docs/architecture.md`.)

pub mod client;
pub mod config;
pub mod error;
pub mod model;
pub mod protocol;
pub mod server;
pub mod service;
pub mod storage;

pub use error::{Error, Result};
