//! The wire protocol: JSON text frames carrying the seed's request envelope.
//! `request` turns a frame into a [`Command`]; `reply` renders results,
//! errors and events. Nothing here touches sockets or storage.

pub mod reply;
pub mod request;

pub use reply::{render_error, render_event, render_lagged, render_ok};
pub use request::{Command, METHODS, Request, known_method, parse_frame, parse_request, request_id};
