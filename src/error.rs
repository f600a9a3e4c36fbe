//! One error type for the whole crate. Every variant maps to a stable wire
//! `code` (see `docs/protocol.md`); the message is what clients read.

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Text that is not JSON, or JSON that is not a request envelope.
    #[error("{0}")]
    InvalidJson(String),
    /// A parameter is missing, of the wrong type, empty or out of range.
    #[error("{0}")]
    InvalidParams(String),
    #[error("{0}")]
    UnknownMethod(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts stored state (a parent from another session, ...).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// A replay was requested from before the oldest event the journal retains.
    #[error("events after {requested} are no longer retained; the oldest retained event is {oldest}")]
    Compacted { requested: u64, oldest: u64 },
    #[error("{0}")]
    Capacity(String),
    /// Storage refuses work: a failed disk write (fail-closed), a locked or
    /// too-new data directory, shutdown in progress.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The stable wire code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidJson(_) => "invalid_json",
            Error::InvalidParams(_) => "invalid_params",
            Error::UnknownMethod(_) => "unknown_method",
            Error::Unauthorized(_) => "unauthorized",
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::TooLarge(_) => "too_large",
            Error::Compacted { .. } => "compacted",
            Error::Capacity(_) => "capacity",
            Error::Unavailable(_) => "unavailable",
            Error::Internal(_) => "internal",
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidParams(msg.into())
    }

    /// The same error (the same code), its message prefixed with where it
    /// happened, e.g. `line 7: `.
    pub fn context(self, at: impl std::fmt::Display) -> Self {
        let prefixed = |m: String| format!("{at}: {m}");
        match self {
            Error::InvalidJson(m) => Error::InvalidJson(prefixed(m)),
            Error::InvalidParams(m) => Error::InvalidParams(prefixed(m)),
            Error::UnknownMethod(m) => Error::UnknownMethod(prefixed(m)),
            Error::Unauthorized(m) => Error::Unauthorized(prefixed(m)),
            Error::NotFound(m) => Error::NotFound(prefixed(m)),
            Error::Conflict(m) => Error::Conflict(prefixed(m)),
            Error::TooLarge(m) => Error::TooLarge(prefixed(m)),
            compacted @ Error::Compacted { .. } => compacted,
            Error::Capacity(m) => Error::Capacity(prefixed(m)),
            Error::Unavailable(m) => Error::Unavailable(prefixed(m)),
            Error::Internal(m) => Error::Internal(prefixed(m)),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Unavailable(format!("I/O error: {e}"))
    }
}
