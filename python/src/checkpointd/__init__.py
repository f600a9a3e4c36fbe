"""Python client for checkpointd, the durable checkpoint server.

:class:`AsyncClient` is the asyncio client; :class:`Client` is its
synchronous twin, safe to share between threads. Both speak the JSON protocol
of docs/protocol.md over one WebSocket.
"""

from .aio import DEFAULT_MAX_MESSAGE_BYTES, AsyncClient, Subscription
from .errors import (
    Capacity,
    CheckpointdError,
    Compacted,
    Conflict,
    ConnectionLost,
    Internal,
    InvalidJson,
    InvalidParams,
    NotFound,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnknownMethod,
)
from .models import (
    Annotation,
    Checkpoint,
    CheckpointSummary,
    Compaction,
    CopiedSession,
    DeletedCheckpoints,
    Event,
    Health,
    Metrics,
    OpenedSession,
    PendingWrite,
    Restored,
    RetentionPolicy,
    Session,
    SessionDetails,
    Space,
    Validation,
)
from .sync import Client, SyncSubscription

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Annotation",
    "AsyncClient",
    "Capacity",
    "Checkpoint",
    "CheckpointSummary",
    "CheckpointdError",
    "Client",
    "Compacted",
    "Compaction",
    "Conflict",
    "ConnectionLost",
    "CopiedSession",
    "DeletedCheckpoints",
    "Event",
    "Health",
    "Internal",
    "InvalidJson",
    "InvalidParams",
    "Metrics",
    "NotFound",
    "OpenedSession",
    "PendingWrite",
    "Restored",
    "RetentionPolicy",
    "Session",
    "SessionDetails",
    "Space",
    "Subscription",
    "SyncSubscription",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UnknownMethod",
    "Validation",
]
