"""LangGraph checkpointers that keep their checkpoints in checkpointd.

:class:`AsyncCheckpointdSaver` (on the caller's event loop) and
:class:`CheckpointdSaver` (on a private loop thread, for synchronous code)
implement every method of LangGraph's ``BaseCheckpointSaver``, synchronous
and asynchronous::

    async with AsyncCheckpointdSaver.from_conn_string("ws://127.0.0.1:7700") as saver:
        graph = builder.compile(checkpointer=saver)

    with CheckpointdSaver.from_conn_string("ws://127.0.0.1:7700") as saver:
        graph = builder.compile(checkpointer=saver)

How LangGraph's model maps onto checkpointd's (docs/protocol.md, "Namespaces,
client ids, pending writes"):

- a thread is the session whose client key is the thread id
  (``open_session``), created by the first write to it; reads of a thread
  that has no session find nothing and create nothing;
- a checkpoint is a checkpoint of that session in namespace
  ``checkpoint_ns``, with ``external_id`` = its LangGraph id and
  ``parent_external_id`` = its parent's; its ``state`` is the whole
  LangGraph checkpoint (channel values included) as one serde value
  ``{"type": ..., "base64": ...}`` (the saver's ``serde.dumps_typed``);
- its metadata is a JSON object, so the server filters on it: every
  top-level value that is plain JSON is stored as it is; any other value (a
  tuple, bytes, an object) is stored as a serde value under the reserved key
  ``"__checkpointd__"`` and restored on reading, as LangGraph's in-memory
  saver gives it back;
- pending writes are ``put_writes`` with ``idx`` from LangGraph's
  ``WRITES_IDX_MAP`` (the server keeps the first write of an ``idx`` >= 0 and
  the last of a negative one), each value a serde value.

A saver caches each thread's session id; when another client deleted the
session, the saver finds the thread again (by key) and retries once.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import math
import random
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from .aio import AsyncClient
from .errors import ConnectionLost, NotFound
from .models import JSON
from .models import Checkpoint as Record
from .sync import Client

__all__ = ["AsyncCheckpointdSaver", "CheckpointdSaver"]

T = TypeVar("T")

RESERVED_KEY = "__checkpointd__"
"""The metadata key holding what plain JSON cannot: ``{"serde": {key: serde value}, "parent": id}``."""
CONNECTIONS = 4
"""Connections a saver opens in ``from_conn_string``: checkpointd answers each connection's
requests in order, so concurrent threads on separate connections share fsyncs."""
SESSION_NAME = "langgraph"
"""The name of the sessions a saver creates (their client key is the thread id)."""
PAGE = 100
"""Rows asked for per listing request (a page of full records also ends at 4 MiB)."""
MAX_WRITES_PER_REQUEST = 10_000
"""The server's limit on the writes of one ``put_writes``."""
MAX_DELETE_ROUNDS = 1_000_000
"""Bound on the ``delete_checkpoints`` requests for one run id (each deletes up to 1024)."""
_PLAIN_DEPTH = 64
"""Metadata values nested deeper than this are stored as serde values."""
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
"""Integers the server's JSON keeps exactly."""


def _pack(serde: SerializerProtocol, value: Any) -> dict[str, str]:
    """A value as the wire's serde value ``{"type": ..., "base64": ...}``."""
    kind, data = serde.dumps_typed(value)
    return {"type": kind, "base64": base64.b64encode(data).decode("ascii")}


def _unpack(serde: SerializerProtocol, wire: dict[str, str]) -> Any:
    return serde.loads_typed((wire["type"], base64.b64decode(wire["base64"])))


def _is_serde_value(value: JSON) -> bool:
    return isinstance(value, dict) and isinstance(value.get("type"), str) and isinstance(value.get("base64"), str)


def _is_plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` survives a JSON round trip unchanged (same types, same value)."""
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return True
    if kind is int:
        return bool(_INT_MIN <= value <= _INT_MAX)
    if kind is float:
        return math.isfinite(value)
    if depth >= _PLAIN_DEPTH:
        return False
    if kind is list:
        return all(_is_plain(item, depth + 1) for item in value)
    if kind is dict:
        return all(type(k) is str and _is_plain(v, depth + 1) for k, v in value.items())
    return False


def _encode_metadata(
    serde: SerializerProtocol, metadata: dict[str, Any], dangling_parent: str | None = None
) -> dict[str, JSON]:
    """LangGraph metadata as the JSON object stored in the checkpoint's ``metadata``."""
    plain: dict[str, JSON] = {}
    packed: dict[str, JSON] = {}
    for key, value in metadata.items():
        if key != RESERVED_KEY and _is_plain(value):
            plain[key] = value
        else:
            packed[key] = _pack(serde, value)
    reserved: dict[str, JSON] = {}
    if packed:
        reserved["serde"] = packed
    if dangling_parent is not None:
        reserved["parent"] = dangling_parent
    if reserved:
        plain[RESERVED_KEY] = reserved
    return plain


def _decode_metadata(serde: SerializerProtocol, stored: dict[str, JSON]) -> tuple[dict[str, Any], str | None]:
    """The LangGraph metadata of a record, and the parent id kept in it (if any)."""
    metadata: dict[str, Any] = dict(stored)
    reserved = metadata.pop(RESERVED_KEY, None)
    if not isinstance(reserved, dict):
        return metadata, None
    for key, wire in reserved.get("serde", {}).items():
        metadata[key] = _unpack(serde, wire)
    return metadata, reserved.get("parent")


def _split_filter(filter: dict[str, Any] | None) -> tuple[dict[str, JSON] | None, dict[str, Any]]:
    """A metadata filter as the part the server applies (plain values) and the part left to the saver."""
    if not filter:
        return None, {}
    server = {k: v for k, v in filter.items() if k != RESERVED_KEY and _is_plain(v)}
    local = {k: v for k, v in filter.items() if k not in server}
    return server or None, local


class _Listing:
    """One ``list`` call: pages of full records, newest first, turned into checkpoint tuples.

    :meth:`next_page` returns the next non-empty batch of tuples, or ``[]``
    once everything was listed. Every request moves the cursor past the rows
    it returned, so the listing ends.
    """

    def __init__(
        self,
        saver: _CheckpointdSaverBase,
        *,
        thread_id: str | None,
        session_id: str | None,
        namespace: str | None,
        checkpoint_id: str | None,
        filter: dict[str, Any] | None,
        before_id: str | None,
        before_seq: int | None,
        limit: int | None,
    ) -> None:
        self._saver = saver
        self._thread_id = thread_id
        self._session_id = session_id
        self._namespace = namespace
        self._checkpoint_id = checkpoint_id
        self._server_filter, self._local_filter = _split_filter(filter)
        self._before_id = before_id
        """A ``before`` checkpoint id, sent as an external-id bound on the first request."""
        self._local_before: str | None = None
        """A ``before`` id the server could not resolve: compared with ids here, as LangGraph's savers do."""
        self._cursor = before_seq
        self._remaining = limit
        self._done = (limit is not None and limit <= 0) or (thread_id is not None and session_id is None)
        self._refound = False
        """Whether the thread's session was looked up again after a ``not_found``."""

    async def next_page(self) -> list[CheckpointTuple]:
        while not self._done:
            rows = await self._fetch()
            if not rows:
                self._done = True
                return []
            last = rows[-1].sequence_number
            if self._cursor is not None and last >= self._cursor:  # Never expected: guards the loop.
                raise RuntimeError(f"checkpointd listing did not advance (at sequence {self._cursor})")
            self._cursor = last
            tuples = [t for t in await self._saver._tuples(rows, self._thread_id) if self._keep(t)]
            if self._remaining is not None:
                tuples = tuples[: self._remaining]
                self._remaining -= len(tuples)
                self._done = self._remaining <= 0
            if tuples and self._checkpoint_id is not None:
                self._done = True  # The one checkpoint the config names was found.
            if tuples:
                return tuples
        return []

    def _keep(self, found: CheckpointTuple) -> bool:
        checkpoint_id = found.config["configurable"]["checkpoint_id"]
        if self._checkpoint_id is not None and checkpoint_id != self._checkpoint_id:
            return False
        if self._local_before is not None and checkpoint_id >= self._local_before:
            return False
        return all(found.metadata.get(k) == v for k, v in self._local_filter.items())

    def _page_size(self) -> int:
        if self._remaining is not None and not self._local_filter and self._checkpoint_id is None:
            return max(1, min(self._remaining, PAGE))
        return PAGE

    async def _fetch(self) -> list[Record]:
        client = self._saver._client_for(self._thread_id) if self._thread_id is not None else self._saver._client
        if self._session_id is None:
            return await self._saver._call(
                lambda: client.search_checkpoints(
                    metadata=self._server_filter,
                    namespace=self._namespace,
                    before=self._cursor,
                    limit=self._page_size(),
                    full=True,
                )
            )
        before: int | str | None = self._cursor
        if before is None and self._before_id is not None:
            before = self._before_id
        session_id = self._session_id
        try:
            return await self._saver._call(
                lambda: client.list_checkpoints(
                    session_id,
                    namespace=self._namespace,
                    metadata=self._server_filter,
                    before=before,
                    order="desc",
                    limit=self._page_size(),
                    full=True,
                )
            )
        except NotFound:
            if isinstance(before, str):
                # The `before` checkpoint is not in this thread (namespace):
                # bound by id instead, as LangGraph's own savers do.
                self._before_id, self._local_before = None, before
                return await self._fetch()
            if not self._refound:
                # The session was deleted by another client: list the
                # thread's new session, if it has one (once).
                self._refound = True
                assert self._thread_id is not None
                self._saver._forget(self._thread_id)
                self._session_id = await self._saver._find_session(self._thread_id, create=False)
                if self._session_id is not None and self._session_id != session_id:
                    return await self._fetch()
            return []


class _CheckpointdSaverBase(BaseCheckpointSaver[str]):
    """The shared implementation: coroutines on :attr:`loop` over its :class:`AsyncClient` connections.

    The ``a*`` methods run them on :attr:`loop` (directly when called there,
    else by handing them over); the synchronous methods block on them from
    any other thread.
    """

    def __init__(
        self,
        clients: Sequence[AsyncClient],
        loop: asyncio.AbstractEventLoop,
        *,
        serde: SerializerProtocol | None = None,
    ) -> None:
        super().__init__(serde=serde)
        if not clients:
            raise ValueError("a saver needs at least one client")
        self._clients = tuple(clients)
        self._client = self._clients[0]
        """The connection of the requests that concern no one thread (searches, deletions by run)."""
        self.loop = loop
        """The event loop the clients' requests run on."""
        self._sessions: dict[str, str] = {}
        """Thread id -> session id, for the threads met so far."""
        self._keys: dict[str, str | None] = {}
        """Session id -> thread id (its client key), for search results."""

    # Running the coroutines on the client's loop.

    def _block(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs ``coroutine`` on :attr:`loop` and waits for it, from synchronous code."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            coroutine.close()
            raise asyncio.InvalidStateError(
                f"synchronous calls to {type(self).__name__} are only allowed from another thread than its "
                "event loop's: there, use the async methods (`await saver.aget_tuple(...)`, `graph.ainvoke(...)`)"
            )
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    async def _hop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs ``coroutine`` on :attr:`loop` from async code on any loop."""
        if asyncio.get_running_loop() is self.loop:
            return await coroutine
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    async def _call(self, request: Callable[[], Awaitable[T]]) -> T:
        """``await request()``, sent once more if the connection was lost before its reply.

        Every request of the saver can be repeated: a checkpoint with a
        stored external id, or a write with a stored index, is not stored
        twice, and the others read or delete. The client waits for its
        reconnection within its timeout.
        """
        try:
            return await request()
        except ConnectionLost:
            return await request()

    def _client_for(self, thread_id: str) -> AsyncClient:
        """The connection that carries a thread's requests: always the same one for a thread.

        The server answers one connection's requests in order, so threads
        spread over several connections have their writes made durable
        together (one fsync for many); one thread's requests keep their order.
        """
        if len(self._clients) == 1:
            return self._client
        return self._clients[zlib.crc32(thread_id.encode()) % len(self._clients)]

    # Threads and sessions.

    async def _find_session(self, thread_id: str, *, create: bool) -> str | None:
        """The thread's session id: cached, else looked up by key (created when ``create``)."""
        session_id = self._sessions.get(thread_id)
        if session_id is not None:
            return session_id
        if create:
            opened = await self._call(lambda: self._client_for(thread_id).open_session(thread_id, name=SESSION_NAME))
            session_id = opened.session.id
        else:
            try:
                session_id = (await self._call(lambda: self._client_for(thread_id).get_session(key=thread_id))).id
            except NotFound:
                return None
        self._sessions[thread_id] = session_id
        self._keys[session_id] = thread_id
        return session_id

    def _forget(self, thread_id: str) -> None:
        session_id = self._sessions.pop(thread_id, None)
        if session_id is not None:
            self._keys.pop(session_id, None)

    async def _in_session(self, thread_id: str, create: bool, operation: Any) -> Any:
        """``await operation(session_id)`` on the thread's session; ``None`` when it has none (and not ``create``).

        A :class:`NotFound` may mean that the cached session was deleted by
        another client: the thread is looked up again, and the operation
        retried once on its new session. When the session is unchanged, the
        :class:`NotFound` was about something else and is raised.
        """
        session_id = await self._find_session(thread_id, create=create)
        if session_id is None:
            return None
        try:
            return await self._call(lambda: operation(session_id))
        except NotFound:
            self._forget(thread_id)
            fresh = await self._find_session(thread_id, create=create)
            if fresh is None:
                return None
            if fresh == session_id:
                raise
            return await self._call(lambda: operation(fresh))

    async def _thread_of(self, session_id: str) -> str | None:
        """The thread id (client key) of a session, ``None`` for a session that has none."""
        if session_id not in self._keys:
            try:
                self._keys[session_id] = (await self._call(lambda: self._client.get_session(session_id))).key
            except NotFound:
                return None
        return self._keys[session_id]

    # Records to LangGraph values.

    async def _tuples(self, records: Sequence[Record], thread_id: str | None) -> list[CheckpointTuple]:
        """The checkpoint tuples of ``records`` (of ``thread_id``, else of their sessions' keys).

        Records that LangGraph did not store (no external id, a state that is
        not a serde value, a session without a key) are left out.
        """
        tuples = []
        for record in records:
            thread = thread_id if thread_id is not None else await self._thread_of(record.session_id)
            if thread is not None and record.external_id is not None and _is_serde_value(record.state):
                tuples.append(self._tuple(thread, record))
        return tuples

    def _tuple(self, thread_id: str, record: Record) -> CheckpointTuple:
        namespace = record.namespace
        metadata, dangling_parent = _decode_metadata(self.serde, record.metadata)
        parent_id = record.parent_external_id or dangling_parent
        return CheckpointTuple(
            config={
                "configurable": {
                    "thread_id": thread_id,
                    "checkpoint_ns": namespace,
                    "checkpoint_id": record.external_id,
                }
            },
            checkpoint=_unpack(self.serde, record.state),
            metadata=metadata,  # type: ignore[arg-type]
            parent_config=(
                {"configurable": {"thread_id": thread_id, "checkpoint_ns": namespace, "checkpoint_id": parent_id}}
                if parent_id is not None
                else None
            ),
            pending_writes=[(w.task_id, w.channel, _unpack(self.serde, w.value)) for w in record.writes],
        )

    # The operations, as coroutines on the client's loop.

    async def _get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        configurable = config["configurable"]
        thread_id: str = configurable["thread_id"]
        namespace: str = configurable.get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config)

        async def get(session_id: str) -> Record:
            return await self._client_for(thread_id).get_checkpoint(
                session_id=session_id, namespace=namespace, external_id=checkpoint_id
            )

        try:
            record = await self._in_session(thread_id, False, get)
        except NotFound:
            return None
        if record is None:
            return None
        found = await self._tuples([record], thread_id)
        return found[0] if found else None

    async def _list(
        self,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
    ) -> _Listing:
        before_id = get_checkpoint_id(before) if before else None
        if config is None:
            before_seq = None
            if before is not None and before_id is not None:
                before_seq = await self._sequence_of(before)
            return _Listing(
                self,
                thread_id=None,
                session_id=None,
                namespace=None,
                checkpoint_id=None,
                filter=filter,
                before_id=None,
                before_seq=before_seq,
                limit=limit,
            )
        configurable = config["configurable"]
        thread_id = configurable["thread_id"]
        return _Listing(
            self,
            thread_id=thread_id,
            session_id=await self._find_session(thread_id, create=False),
            namespace=configurable.get("checkpoint_ns"),
            checkpoint_id=get_checkpoint_id(config),
            filter=filter,
            before_id=before_id,
            before_seq=None,
            limit=limit,
        )

    async def _sequence_of(self, config: RunnableConfig) -> int | None:
        """The global sequence number of the checkpoint ``config`` names (for a search's ``before``)."""
        found = await self._get_record(config)
        return found.sequence_number if found is not None else None

    async def _get_record(self, config: RunnableConfig) -> Record | None:
        configurable = config["configurable"]

        async def get(session_id: str) -> Record:
            return await self._client_for(configurable["thread_id"]).get_checkpoint(
                session_id=session_id,
                namespace=configurable.get("checkpoint_ns", ""),
                external_id=configurable.get("checkpoint_id"),
            )

        try:
            record: Record | None = await self._in_session(configurable["thread_id"], False, get)
        except NotFound:
            return None
        return record

    async def _put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        configurable = config["configurable"]
        thread_id: str = configurable["thread_id"]
        namespace: str = configurable.get("checkpoint_ns", "")
        parent_id: str | None = configurable.get("checkpoint_id")
        full_metadata = dict(get_checkpoint_metadata(config, metadata))
        state = _pack(self.serde, checkpoint)

        async def store(session_id: str, parent: str | None, dangling: str | None) -> str:
            return await self._client_for(thread_id).checkpoint(
                session_id,
                namespace=namespace,
                external_id=checkpoint["id"],
                parent_external_id=parent,
                state=state,
                metadata=_encode_metadata(self.serde, full_metadata, dangling),
                message="",
            )

        try:
            await self._in_session(thread_id, True, lambda session_id: store(session_id, parent_id, None))
        except NotFound:
            if parent_id is None:
                raise
            # The parent is not stored in this namespace (deleted since, or
            # never stored here): keep its id in the metadata's reserved key,
            # so that parent_config still names it.
            await self._in_session(thread_id, True, lambda session_id: store(session_id, None, parent_id))
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": namespace, "checkpoint_id": checkpoint["id"]}}

    async def _put_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str
    ) -> None:
        if not writes:
            return
        configurable = config["configurable"]
        thread_id: str = configurable["thread_id"]
        wire = [
            (WRITES_IDX_MAP.get(channel, idx), channel, _pack(self.serde, value))
            for idx, (channel, value) in enumerate(writes)
        ]
        # Batches under the server's limits on writes and on request size.
        client = self._client_for(thread_id)
        budget = client.max_request_bytes // 2
        batches: list[list[tuple[int, str, JSON]]] = [[]]
        size = 0
        for write in wire:
            write_size = len(write[1]) + len(write[2]["base64"]) + 64
            if batches[-1] and (len(batches[-1]) >= MAX_WRITES_PER_REQUEST or size + write_size > budget):
                batches.append([])
                size = 0
            batches[-1].append(write)
            size += write_size

        async def put(session_id: str) -> None:
            for batch in batches:
                await client.put_writes(
                    session_id,
                    namespace=configurable.get("checkpoint_ns", ""),
                    external_id=configurable["checkpoint_id"],
                    task_id=task_id,
                    task_path=task_path,
                    writes=batch,
                )

        await self._in_session(thread_id, True, put)

    async def _delete_thread(self, thread_id: str) -> None:
        session_id = await self._find_session(thread_id, create=False)
        self._forget(thread_id)
        if session_id is None:
            return
        try:
            await self._call(lambda: self._client_for(thread_id).delete_session(session_id))
        except NotFound:
            # Deleted by another client since it was cached: its key may have
            # a new session by now.
            fresh = await self._find_session(thread_id, create=False)
            self._forget(thread_id)
            if fresh is not None and fresh != session_id:
                await self._call(lambda: self._client_for(thread_id).delete_session(fresh))

    async def _delete_for_runs(self, run_ids: Sequence[str]) -> None:
        for run_id in run_ids:
            for _ in range(MAX_DELETE_ROUNDS):
                result = await self._call(
                    functools.partial(self._client.delete_checkpoints, metadata={"run_id": run_id})
                )
                if not result.more:
                    break

    async def _copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        async def copy(session_id: str) -> None:
            copied = await self._client_for(source_thread_id).copy_session(
                session_id, key=target_thread_id, name=SESSION_NAME
            )
            self._forget(target_thread_id)
            self._sessions[target_thread_id] = copied.session.id
            self._keys[copied.session.id] = target_thread_id

        await self._in_session(source_thread_id, False, copy)

    async def _prune(self, thread_ids: Sequence[str], strategy: str) -> None:
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r}: use 'keep_latest' or 'delete'")
        for thread_id in thread_ids:
            if strategy == "delete":
                await self._delete_thread(thread_id)
            else:
                await self._in_session(thread_id, False, functools.partial(self._keep_latest, thread_id))

    async def _keep_latest(self, thread_id: str, session_id: str) -> None:
        await self._client_for(thread_id).compact(session_id, keep_recent=1, per_namespace=True)

    # BaseCheckpointSaver: the asynchronous methods.

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (its ``checkpoint_id``, else the thread's newest in
        ``checkpoint_ns``) with its pending writes; ``None`` when there is none."""
        return await self._hop(self._get_tuple(config))

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """The checkpoints of a thread (of every thread when ``config`` is ``None``), newest first.

        ``checkpoint_ns`` in ``config`` keeps one namespace (absent: all);
        ``filter`` keeps those whose metadata has each of its keys with an
        equal value; ``before`` keeps those stored before that checkpoint;
        ``limit`` bounds the count.
        """
        listing = await self._hop(self._list(config, filter, before, limit))
        while page := await self._hop(listing.next_page()):
            for found in page:
                yield found

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Stores a checkpoint in the thread's session; returns the config naming it."""
        return await self._hop(self._put(config, checkpoint, metadata, new_versions))

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Stores a task's writes for the checkpoint ``config`` names."""
        await self._hop(self._put_writes(config, writes, task_id, task_path))

    async def adelete_thread(self, thread_id: str) -> None:
        """Deletes the thread's session with its checkpoints and writes (nothing when it has none)."""
        await self._hop(self._delete_thread(thread_id))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Deletes the checkpoints (with their writes) whose metadata ``run_id`` is one of ``run_ids``."""
        await self._hop(self._delete_for_runs(run_ids))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copies every checkpoint and write of a thread into another (nothing when the source has none)."""
        await self._hop(self._copy_thread(source_thread_id, target_thread_id))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``"keep_latest"`` keeps each thread's newest checkpoint per namespace; ``"delete"`` deletes the threads."""
        await self._hop(self._prune(thread_ids, strategy))

    # BaseCheckpointSaver: the synchronous methods, from any thread but the loop's.

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """As :meth:`aget_tuple`."""
        return self._block(self._get_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """As :meth:`alist`."""
        listing = self._block(self._list(config, filter, before, limit))
        while page := self._block(listing.next_page()):
            yield from page

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """As :meth:`aput`."""
        return self._block(self._put(config, checkpoint, metadata, new_versions))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """As :meth:`aput_writes`."""
        self._block(self._put_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        """As :meth:`adelete_thread`."""
        self._block(self._delete_thread(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """As :meth:`adelete_for_runs`."""
        self._block(self._delete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """As :meth:`acopy_thread`."""
        self._block(self._copy_thread(source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """As :meth:`aprune`."""
        self._block(self._prune(thread_ids, strategy))

    def get_next_version(self, current: str | None, channel: None) -> str:
        """The next channel version: ``"<counter, 32 digits>.<random>"``, as LangGraph's own savers make."""
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(current.split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"


class AsyncCheckpointdSaver(_CheckpointdSaverBase):
    """A LangGraph checkpointer on checkpointd for asyncio code.

    ``async with AsyncCheckpointdSaver.from_conn_string(url) as saver:``, or
    ``AsyncCheckpointdSaver(client)`` over one open :class:`AsyncClient` or
    a sequence of them (created inside a running event loop, which their
    requests then use; each LangGraph thread keeps to one of them). Its
    synchronous methods may be called from other threads (a graph's
    ``invoke`` in a worker thread), not from the loop's own thread.
    """

    def __init__(self, client: AsyncClient | Sequence[AsyncClient], *, serde: SerializerProtocol | None = None) -> None:
        clients = [client] if isinstance(client, AsyncClient) else list(client)
        super().__init__(clients, asyncio.get_running_loop(), serde=serde)

    @property
    def client(self) -> AsyncClient:
        """The saver's first connection (that of searches and deletions by run)."""
        return self._client

    @classmethod
    @asynccontextmanager
    async def from_conn_string(cls, url: str, *, token: str | None = None) -> AsyncIterator[AsyncCheckpointdSaver]:
        """A saver on :data:`CONNECTIONS` new connections to ``url`` (``ws://host:port``), closed at the end."""
        async with AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(AsyncClient.connect(url, token=token)) for _ in range(CONNECTIONS)
            ]
            yield cls(clients)


class CheckpointdSaver(_CheckpointdSaverBase):
    """A LangGraph checkpointer on checkpointd for synchronous code, safe to share between threads.

    ``with CheckpointdSaver.from_conn_string(url) as saver:``, or
    ``CheckpointdSaver(client)`` over an open :class:`Client`. Its requests
    run on the client's private loop thread; its ``a*`` methods work too,
    from any event loop.
    """

    def __init__(self, client: Client, *, serde: SerializerProtocol | None = None) -> None:
        super().__init__([client.async_client], client.loop, serde=serde)
        self._sync_client = client

    @property
    def client(self) -> Client:
        """The saver's first connection (that of searches and deletions by run)."""
        return self._sync_client

    @classmethod
    @contextmanager
    def from_conn_string(cls, url: str, *, token: str | None = None) -> Iterator[CheckpointdSaver]:
        """A saver on :data:`CONNECTIONS` new connections to ``url`` (``ws://host:port``), closed at the end."""
        with Client.connect(url, token=token) as client:
            saver = cls(client)
            more: list[AsyncClient] = []

            async def connect() -> AsyncClient:
                return await AsyncClient.connect(url, token=token)

            try:
                # The other connections are AsyncClients on the first one's loop thread.
                for _ in range(CONNECTIONS - 1):
                    more.append(saver._block(connect()))
                saver._clients = (saver._client, *more)
                yield saver
            finally:
                for each in more:
                    saver._block(each.close())
