"""Typed results: one frozen dataclass per result shape of docs/protocol.md.

Each has a ``from_wire`` constructor taking the reply's decoded JSON.
Timestamps become timezone-aware :class:`datetime.datetime` values; states and
metadata stay the JSON values the server returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

JSON = Any
"""Any JSON value as decoded by :mod:`json`."""


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


@dataclass(frozen=True)
class RetentionPolicy:
    """A session's retention policy (``set_retention``)."""

    keep_recent: int | None
    preserve_tags: list[str]

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> RetentionPolicy:
        return cls(keep_recent=data["keep_recent"], preserve_tags=list(data["preserve_tags"]))


@dataclass(frozen=True)
class Session:
    """A session as ``list_sessions`` returns it."""

    id: str
    name: str
    created_at: datetime
    checkpoint_count: int
    last_sequence: int | None
    """Sequence number of the newest stored checkpoint; ``None`` when empty."""
    key: str | None = field(default=None, kw_only=True)
    """The client key (``open_session``); ``None`` for a session created without one."""

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Session:
        return cls(
            id=data["id"],
            name=data["name"],
            created_at=_time(data["created_at"]),
            checkpoint_count=data["checkpoint_count"],
            last_sequence=data["last_sequence"],
            key=data.get("key"),
        )


@dataclass(frozen=True)
class SessionDetails(Session):
    """A session as ``get_session`` returns it: the row plus metadata and policy."""

    metadata: dict[str, JSON]
    retention: RetentionPolicy | None

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> SessionDetails:
        row = Session.from_wire(data)
        retention = data["retention"]
        return cls(
            **vars(row),
            metadata=data["metadata"],
            retention=RetentionPolicy.from_wire(retention) if retention is not None else None,
        )


@dataclass(frozen=True)
class OpenedSession:
    """The result of ``open_session``: the session with that key, and whether this call created it."""

    created: bool
    session: SessionDetails

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> OpenedSession:
        return cls(created=data["created"], session=SessionDetails.from_wire(data["session"]))


@dataclass(frozen=True)
class CopiedSession:
    """The result of ``copy_session``: the target session and how many checkpoints were copied."""

    copied: int
    session: SessionDetails

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> CopiedSession:
        return cls(copied=data["copied"], session=SessionDetails.from_wire(data["session"]))


@dataclass(frozen=True)
class DeletedCheckpoints:
    """The result of ``delete_checkpoints``; while ``more`` is true, matches remain: repeat."""

    deleted: int
    more: bool

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> DeletedCheckpoints:
        return cls(deleted=data["deleted"], more=data["more"])


@dataclass(frozen=True)
class PendingWrite:
    """A write stored by ``put_writes``, as a checkpoint record carries it."""

    task_id: str
    task_path: str
    idx: int
    """Its index in the task's writes; negative for LangGraph's special channels (last stored wins)."""
    channel: str
    value: JSON

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> PendingWrite:
        return cls(
            task_id=data["task_id"],
            task_path=data.get("task_path", ""),
            idx=data["idx"],
            channel=data["channel"],
            value=data["value"],
        )


@dataclass(frozen=True)
class Annotation:
    """A note attached to a checkpoint (``annotate``)."""

    checkpoint_id: str
    note: str
    severity: str
    """``"info"``, ``"warning"`` or ``"critical"``."""
    timestamp: datetime

    @classmethod
    def from_wire(cls, data: dict[str, Any], checkpoint_id: str | None = None) -> Annotation:
        """``checkpoint_id`` fills in the id that annotations nested in a checkpoint lack."""
        return cls(
            checkpoint_id=checkpoint_id if checkpoint_id is not None else data["checkpoint_id"],
            note=data["note"],
            severity=data["severity"],
            timestamp=_time(data["timestamp"]),
        )


@dataclass(frozen=True)
class CheckpointSummary:
    """A checkpoint without its state, as ``list_checkpoints`` returns it."""

    id: str
    session_id: str
    sequence_number: int
    timestamp: datetime
    message: str
    trigger: str
    tags: list[str]
    has_notes: bool
    parent_id: str | None
    namespace: str = field(default="", kw_only=True)
    """The checkpoint's namespace within its session (``""`` by default)."""
    external_id: str | None = field(default=None, kw_only=True)
    """The client's id for the checkpoint, unique within (session, namespace)."""
    parent_external_id: str | None = field(default=None, kw_only=True)
    """The parent's external id, when the checkpoint was stored with one."""

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> CheckpointSummary:
        return cls(
            id=data["id"],
            session_id=data["session_id"],
            sequence_number=data["sequence_number"],
            timestamp=_time(data["timestamp"]),
            message=data["message"],
            trigger=data["trigger"],
            tags=list(data["tags"]),
            has_notes=data["has_notes"],
            parent_id=data["parent_id"],
            namespace=data.get("namespace", ""),
            external_id=data.get("external_id"),
            parent_external_id=data.get("parent_external_id"),
        )


@dataclass(frozen=True)
class Checkpoint(CheckpointSummary):
    """The full record (``get_checkpoint``, and the rows of a ``full`` listing)."""

    state: JSON
    metadata: dict[str, JSON]
    annotations: list[Annotation]
    checksum: str
    writes: list[PendingWrite] = field(default_factory=list, kw_only=True)
    """Its pending writes (``put_writes``), in (task_path, task_id, idx) order."""

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Checkpoint:
        summary = CheckpointSummary.from_wire(data)
        return cls(
            **vars(summary),
            state=data["state"],
            metadata=data["metadata"],
            annotations=[Annotation.from_wire(a, summary.id) for a in data["annotations"]],
            checksum=data["checksum"],
            writes=[PendingWrite.from_wire(w) for w in data.get("writes", ())],
        )


@dataclass(frozen=True)
class Restored:
    """The result of ``restore``: a checkpoint's state and where it came from."""

    checkpoint_id: str
    session_id: str
    sequence_number: int
    state: JSON

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Restored:
        return cls(
            checkpoint_id=data["checkpoint_id"],
            session_id=data["session_id"],
            sequence_number=data["sequence_number"],
            state=data["state"],
        )


@dataclass(frozen=True)
class Compaction:
    """The result of ``compact``."""

    removed: int
    remaining: int

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Compaction:
        return cls(removed=data["removed"], remaining=data["remaining"])


@dataclass(frozen=True)
class Validation:
    """The result of ``validate``; ``invalid_ids`` holds at most 1,000 ids."""

    valid: int
    invalid: int
    invalid_ids: list[str]

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Validation:
        return cls(valid=data["valid"], invalid=data["invalid"], invalid_ids=list(data["invalid_ids"]))


@dataclass(frozen=True)
class Metrics:
    """The result of ``metrics``."""

    total_checkpoints: int
    active_sessions: int
    total_sessions_created: int
    global_sequence: int
    event_sequence: int
    """The newest event's seq: ``subscribe(since=event_sequence)`` starts from now."""
    oldest_event: int | None
    bytes_on_disk: int
    connections: int
    subscriptions: int

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Metrics:
        return cls(
            total_checkpoints=data["total_checkpoints"],
            active_sessions=data["active_sessions"],
            total_sessions_created=data["total_sessions_created"],
            global_sequence=data["global_sequence"],
            event_sequence=data["event_sequence"],
            oldest_event=data["oldest_event"],
            bytes_on_disk=data["bytes_on_disk"],
            connections=data["connections"],
            subscriptions=data["subscriptions"],
        )


@dataclass(frozen=True)
class Space:
    """Bytes of the server's state segments (``health``'s ``space``)."""

    bytes_on_disk: int
    dead_bytes: int
    live_bytes: int

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Space:
        return cls(
            bytes_on_disk=data["bytes_on_disk"],
            dead_bytes=data["dead_bytes"],
            live_bytes=data["live_bytes"],
        )


@dataclass(frozen=True)
class Health:
    """The result of ``health``."""

    healthy: bool
    durability: str
    format_version: int
    connections: int
    max_connections: int
    subscriptions: int
    version: str
    max_message_bytes: int | None
    """The largest request the server accepts; ``None`` from servers that do not say."""
    space: Space | None = None
    """Live, dead and on-disk bytes of the state segments; ``None`` from servers that do not say."""

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Health:
        return cls(
            healthy=data["healthy"],
            durability=data["durability"],
            format_version=data["format_version"],
            connections=data["connections"],
            max_connections=data["max_connections"],
            subscriptions=data["subscriptions"],
            version=data["version"],
            max_message_bytes=data.get("max_message_bytes"),
            space=Space.from_wire(data["space"]) if data.get("space") is not None else None,
        )


@dataclass(frozen=True)
class Event:
    """A journal event pushed to a subscriber.

    The common fields are typed; ``data`` keeps the event's whole ``data``
    object, so event kinds added by newer servers stay readable.
    """

    event_type: str
    """``checkpoint_created``, ``checkpoint_restored``, ``checkpoint_deleted``,
    ``checkpoints_compacted``, ``session_deleted``, ``writes_stored`` or ``session_copied``."""
    seq: int
    session_id: str
    timestamp: datetime
    checkpoint_id: str | None
    sequence_number: int | None
    removed: int | None
    remaining: int | None
    data: dict[str, JSON]

    @classmethod
    def from_wire(cls, message: dict[str, Any]) -> Event:
        data = message["data"]
        return cls(
            event_type=message["event_type"],
            seq=message["seq"],
            session_id=data["session_id"],
            timestamp=_time(data["timestamp"]),
            checkpoint_id=data.get("checkpoint_id"),
            sequence_number=data.get("sequence_number"),
            removed=data.get("removed"),
            remaining=data.get("remaining"),
            data=data,
        )
