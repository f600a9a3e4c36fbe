"""The asyncio client: :class:`AsyncClient` and its :class:`Subscription`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Generator, Sequence
from types import TracebackType
from typing import Any, Literal, overload

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import WebSocketException

from ._link import Link
from .errors import Capacity, CheckpointdError, ConnectionLost, Unavailable
from .models import (
    JSON,
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
    Restored,
    RetentionPolicy,
    Session,
    SessionDetails,
    Validation,
)

log = logging.getLogger("checkpointd")

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""The server's default ``--max-message-bytes``, assumed when ``health`` does not say."""

RECONNECT_DELAY_FIRST = 0.05
"""Seconds before the first reconnection attempt; doubled after each failure."""
RECONNECT_DELAY_MAX = 2.0
"""The longest wait between reconnection attempts."""

_RETRYABLE = (OSError, TimeoutError, WebSocketException, Capacity, Unavailable)
"""Failures of a reconnection attempt worth another try; any other is final."""


def _params(**params: Any) -> dict[str, Any]:
    """The request's params: those given, without the ones left at ``None``."""
    return {name: value for name, value in params.items() if value is not None}


class AsyncClient:
    """A connection to checkpointd for asyncio code.

    ``client = await AsyncClient.connect(url)`` or
    ``async with AsyncClient.connect(url) as client: ...``. Requests may be
    issued concurrently from many tasks: one reader task matches each reply
    to its request by id. If the connection drops, requests in flight fail
    with :class:`ConnectionLost`; the client reconnects in the background
    (with ``reconnect=True``), and resumes every subscription from the last
    event it received. Requests issued while it is reconnecting wait for the
    new connection, within their timeout.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        reconnect: bool = True,
    ) -> None:
        """Prepares a client; :meth:`open` (or ``async with``) connects it.

        ``timeout`` bounds each request in seconds, including the wait for a
        reconnection; ``connect_timeout`` bounds the opening handshake.
        """
        self.url = url
        self.timeout = timeout
        self._token = token
        self._connect_timeout = connect_timeout
        self._reconnect = reconnect
        self._link: Link | None = None
        self._closed = False
        self._failure: BaseException | None = None
        self._settled = asyncio.Event()
        """Set while there is a live link or a final failure: what waiters wait for."""
        self._max_request_bytes = DEFAULT_MAX_MESSAGE_BYTES
        self._subscriptions: dict[str, Subscription] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        reconnect: bool = True,
    ) -> _Connecting:
        """Connects to ``url`` (``ws://host:port``); await it, or use it with ``async with``.

        With ``token``, the connection authenticates first. Raises
        :class:`Unauthorized` for a wrong token, :class:`Capacity` when the
        server is full, and :class:`OSError` or a :mod:`websockets` error
        when the server cannot be reached.
        """
        client = cls(url, token=token, timeout=timeout, connect_timeout=connect_timeout, reconnect=reconnect)
        return _Connecting(client)

    async def open(self) -> None:
        """Opens the first connection; failures are raised, not retried."""
        if self._closed or self._supervisor is not None:
            raise RuntimeError("a client is opened once")
        self._attach(*await self._dial())
        self._supervisor = asyncio.create_task(self._supervise(), name="checkpointd-supervisor")

    async def close(self) -> None:
        """Closes the connection; open subscriptions end, waiting requests fail."""
        if self._closed:
            return
        self._closed = True
        self._fail(ConnectionLost("the client was closed"), ending=None)
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._link is not None:
            await self._link.close()

    async def __aenter__(self) -> AsyncClient:
        if self._supervisor is None:
            await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def max_request_bytes(self) -> int:
        """The largest request the server accepts (from ``health``, else its default)."""
        return self._max_request_bytes

    async def call(self, method: str, params: dict[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        """Sends any request and returns its raw ``result``.

        The typed methods below are built on this; it also reaches methods
        this client does not know yet. ``timeout`` (seconds) defaults to the
        client's. Raises the reply's :class:`CheckpointdError`,
        :class:`ConnectionLost` or :class:`TimeoutError`.
        """
        limit = self.timeout if timeout is None else timeout
        async with asyncio.timeout(limit):
            link = await self._live_link()
            return await link.request(method, params or {}, self._max_request_bytes)

    # One method per protocol method (docs/protocol.md), in its order.

    async def authenticate(self, token: str) -> None:
        """Authenticates this connection (done by :meth:`connect` when given a token).

        The token is kept and used again after a reconnection.
        """
        await self.call("authenticate", {"token": token})
        self._token = token

    async def create_session(self, name: str | None = None, *, metadata: dict[str, JSON] | None = None) -> str:
        """Creates a session and returns its id (``name`` defaults to ``"unnamed"``)."""
        result: str = await self.call("create_session", _params(name=name, metadata=metadata))
        return result

    async def checkpoint(
        self,
        session_id: str,
        *,
        state: JSON = None,
        message: str | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, JSON] | None = None,
        parent_id: str | None = None,
        trigger: str | None = None,
        namespace: str | None = None,
        external_id: str | None = None,
        parent_external_id: str | None = None,
    ) -> str:
        """Stores a checkpoint and returns its id.

        ``state`` is any JSON value, stored and returned exactly (``None``
        stores JSON ``null``); ``trigger`` is ``"manual"`` (the default),
        ``"scheduled"``, ``"auto"`` or ``"auto:<kind>"``. ``namespace``
        (default ``""``) files it under a namespace of the session;
        ``external_id`` is the caller's id for it, unique within (session,
        namespace): storing the same external id again stores nothing and
        returns the stored checkpoint's id. ``parent_external_id`` names the
        parent by its external id in the same namespace.
        """
        params = _params(
            session_id=session_id,
            message=message,
            tags=tags,
            metadata=metadata,
            parent_id=parent_id,
            trigger=trigger,
            namespace=namespace,
            external_id=external_id,
            parent_external_id=parent_external_id,
        )
        params["state"] = state
        result: str = await self.call("checkpoint", params)
        return result

    @overload
    async def list_checkpoints(
        self,
        session_id: str,
        *,
        limit: int | None = None,
        after: int | str | None = None,
        before: int | str | None = None,
        tag: str | None = None,
        order: Literal["asc", "desc"] | None = None,
        namespace: str | None = None,
        metadata: dict[str, JSON] | None = None,
        full: Literal[False] = False,
    ) -> list[CheckpointSummary]: ...

    @overload
    async def list_checkpoints(
        self,
        session_id: str,
        *,
        limit: int | None = None,
        after: int | str | None = None,
        before: int | str | None = None,
        tag: str | None = None,
        order: Literal["asc", "desc"] | None = None,
        namespace: str | None = None,
        metadata: dict[str, JSON] | None = None,
        full: Literal[True],
    ) -> list[Checkpoint]: ...

    async def list_checkpoints(
        self,
        session_id: str,
        *,
        limit: int | None = None,
        after: int | str | None = None,
        before: int | str | None = None,
        tag: str | None = None,
        order: Literal["asc", "desc"] | None = None,
        namespace: str | None = None,
        metadata: dict[str, JSON] | None = None,
        full: bool = False,
    ) -> list[CheckpointSummary] | list[Checkpoint]:
        """One page of a session's checkpoints, by sequence number.

        ``after`` / ``before`` are exclusive bounds: sequence numbers, or
        external ids (resolved in ``namespace``, else ``""``). Page on with
        ``after`` = the last row's ``sequence_number`` (``before`` with
        ``order="desc"``). ``namespace`` keeps one namespace (default: all);
        ``metadata`` keeps the checkpoints whose metadata has each of its
        top-level keys with an equal value. With ``full=True`` the rows are
        full records (:class:`Checkpoint`, with state and pending writes). A
        page holds at most ``limit`` (at most 10,000) rows, and ends at 4 MiB
        of messages and tags (of records, with ``full``).
        """
        params = _params(
            session_id=session_id,
            limit=limit,
            after=after,
            before=before,
            tag=tag,
            order=order,
            namespace=namespace,
            metadata=metadata,
            full=True if full else None,
        )
        rows = await self.call("list_checkpoints", params)
        if full:
            return [Checkpoint.from_wire(row) for row in rows]
        return [CheckpointSummary.from_wire(row) for row in rows]

    @overload
    async def search_checkpoints(
        self,
        *,
        metadata: dict[str, JSON] | None = None,
        namespace: str | None = None,
        limit: int | None = None,
        before: int | None = None,
        full: Literal[False] = False,
    ) -> list[CheckpointSummary]: ...

    @overload
    async def search_checkpoints(
        self,
        *,
        metadata: dict[str, JSON] | None = None,
        namespace: str | None = None,
        limit: int | None = None,
        before: int | None = None,
        full: Literal[True],
    ) -> list[Checkpoint]: ...

    async def search_checkpoints(
        self,
        *,
        metadata: dict[str, JSON] | None = None,
        namespace: str | None = None,
        limit: int | None = None,
        before: int | None = None,
        full: bool = False,
    ) -> list[CheckpointSummary] | list[Checkpoint]:
        """One page of the checkpoints of every session, newest first.

        The filters are those of :meth:`list_checkpoints`; ``before`` is a
        global sequence number (exclusive): page on with the last row's
        ``sequence_number``.
        """
        params = _params(
            metadata=metadata, namespace=namespace, limit=limit, before=before, full=True if full else None
        )
        rows = await self.call("search_checkpoints", params)
        if full:
            return [Checkpoint.from_wire(row) for row in rows]
        return [CheckpointSummary.from_wire(row) for row in rows]

    def subscribe(self, session_id: str, *, since: int | None = None) -> Subscription:
        """The session's events, as an async iterator; see :class:`Subscription`.

        With ``since`` (an event seq), retained events after it are replayed
        first; without it, the subscription starts from now. It starts on
        ``async with`` or at the first iteration.
        """
        return Subscription(self, session_id, since)

    async def metrics(self) -> Metrics:
        """Server-wide counters."""
        return Metrics.from_wire(await self.call("metrics"))

    async def get_checkpoint(
        self,
        checkpoint_id: str | None = None,
        *,
        session_id: str | None = None,
        namespace: str | None = None,
        external_id: str | None = None,
    ) -> Checkpoint:
        """The full record of a checkpoint: state, metadata, annotations and pending writes.

        Either by ``checkpoint_id``, or by ``session_id`` with ``namespace``
        (default ``""``) and ``external_id``; without ``external_id``, the
        newest checkpoint of (session, namespace). Raises :class:`NotFound`
        when there is none.
        """
        params = _params(
            checkpoint_id=checkpoint_id, session_id=session_id, namespace=namespace, external_id=external_id
        )
        return Checkpoint.from_wire(await self.call("get_checkpoint", params))

    async def put_writes(
        self,
        session_id: str,
        *,
        external_id: str,
        task_id: str,
        writes: Sequence[tuple[int, str, JSON]],
        namespace: str | None = None,
        task_path: str | None = None,
    ) -> int:
        """Stores a task's pending writes for the checkpoint ``external_id`` of (session, namespace).

        Each write is ``(idx, channel, value)``. A repeated ``idx`` >= 0 of
        the same task is ignored (the first stored is kept); a repeated
        negative ``idx`` replaces the stored one. The checkpoint need not be
        stored yet. Returns how many writes were stored or replaced (at most
        10,000 writes per call).
        """
        params = _params(
            session_id=session_id,
            namespace=namespace,
            external_id=external_id,
            task_id=task_id,
            task_path=task_path,
        )
        params["writes"] = [{"idx": idx, "channel": channel, "value": value} for idx, channel, value in writes]
        result = await self.call("put_writes", params)
        stored: int = result["stored"]
        return stored

    async def restore(self, session_id: str, checkpoint_id: str) -> Restored:
        """A checkpoint's state; journals a ``checkpoint_restored`` event."""
        params = {"session_id": session_id, "checkpoint_id": checkpoint_id}
        return Restored.from_wire(await self.call("restore", params))

    async def delete_checkpoint(self, checkpoint_id: str, *, session_id: str | None = None) -> None:
        """Deletes a checkpoint (which must be in ``session_id``, when given)."""
        await self.call("delete_checkpoint", _params(checkpoint_id=checkpoint_id, session_id=session_id))

    async def compact(
        self,
        session_id: str,
        *,
        keep_recent: int | None = None,
        preserve_tags: list[str] | None = None,
        per_namespace: bool | None = None,
    ) -> Compaction:
        """Removes all but the ``keep_recent`` newest checkpoints and those with a preserved tag.

        With ``per_namespace=True``, ``keep_recent`` counts within each
        namespace of the session.
        """
        params = _params(
            session_id=session_id, keep_recent=keep_recent, preserve_tags=preserve_tags, per_namespace=per_namespace
        )
        return Compaction.from_wire(await self.call("compact", params))

    async def set_retention(
        self, session_id: str, *, keep_recent: int | None = None, preserve_tags: list[str] | None = None
    ) -> RetentionPolicy | None:
        """Sets the policy applied as checkpoints are added; with neither argument, clears it."""
        params = _params(session_id=session_id, keep_recent=keep_recent, preserve_tags=preserve_tags)
        result = await self.call("set_retention", params)
        return RetentionPolicy.from_wire(result) if result is not None else None

    async def list_sessions(
        self, *, limit: int | None = None, after: str | None = None, key_prefix: str | None = None
    ) -> list[Session]:
        """One page of sessions in creation order; page on with ``after`` = the last id.

        ``key_prefix`` keeps the sessions whose client key starts with it.
        """
        params = _params(limit=limit, after=after, key_prefix=key_prefix)
        return [Session.from_wire(row) for row in await self.call("list_sessions", params)]

    async def get_session(self, session_id: str | None = None, *, key: str | None = None) -> SessionDetails:
        """A session with its metadata and retention policy, by id or by client ``key``."""
        return SessionDetails.from_wire(await self.call("get_session", _params(session_id=session_id, key=key)))

    async def open_session(
        self, key: str, *, name: str | None = None, metadata: dict[str, JSON] | None = None
    ) -> OpenedSession:
        """The session with client key ``key``, created (with ``name`` and ``metadata``) if none has it.

        Clients racing with one key get one session; ``created`` tells
        whether this call created it.
        """
        params = _params(key=key, name=name, metadata=metadata)
        return OpenedSession.from_wire(await self.call("open_session", params))

    async def copy_session(
        self,
        session_id: str,
        *,
        key: str | None = None,
        name: str | None = None,
        metadata: dict[str, JSON] | None = None,
    ) -> CopiedSession:
        """Copies every checkpoint and pending write of a session into the session with client ``key``.

        The target is created if no session has ``key`` (a new session
        without ``key``); checkpoints whose (namespace, external id) it
        already has are not copied. All or nothing.
        """
        params = _params(session_id=session_id, key=key, name=name, metadata=metadata)
        return CopiedSession.from_wire(await self.call("copy_session", params))

    async def delete_checkpoints(
        self, *, metadata: dict[str, JSON], session_id: str | None = None, namespace: str | None = None
    ) -> DeletedCheckpoints:
        """Deletes up to 1024 checkpoints whose metadata matches (of one session, or all).

        Repeat while the result's ``more`` is true.
        """
        params = _params(metadata=metadata, session_id=session_id, namespace=namespace)
        return DeletedCheckpoints.from_wire(await self.call("delete_checkpoints", params))

    async def delete_session(self, session_id: str) -> None:
        """Deletes a session with its checkpoints and annotations."""
        await self.call("delete_session", {"session_id": session_id})

    async def annotate(
        self, checkpoint_id: str, note: str, *, severity: Literal["info", "warning", "critical"] | None = None
    ) -> Annotation:
        """Attaches a note to a checkpoint; ``severity`` is ``info`` (default), ``warning`` or ``critical``."""
        params = _params(checkpoint_id=checkpoint_id, note=note, severity=severity)
        return Annotation.from_wire(await self.call("annotate", params))

    async def validate(self, session_id: str | None = None) -> Validation:
        """Verifies the checksums of every stored record (of one session, or all)."""
        return Validation.from_wire(await self.call("validate", _params(session_id=session_id)))

    async def unsubscribe(self, session_id: str) -> None:
        """Ends this client's subscription to the session (its iterator stops)."""
        subscription = self._subscriptions.pop(session_id, None)
        if subscription is not None:
            subscription._end(None)
        await self.call("unsubscribe", {"session_id": session_id})

    async def health(self) -> Health:
        """Whether the store accepts writes, and the server's limits."""
        return Health.from_wire(await self.call("health"))

    # Connection management.

    async def _dial(self) -> tuple[Link, Health]:
        """Opens a socket, authenticates, and reads ``health``."""
        # Replies may exceed the server's own request limit: no size cap here.
        ws = await ws_connect(self.url, open_timeout=self._connect_timeout, max_size=None)
        link = Link(ws, self._on_event, self._on_lost)
        try:
            async with asyncio.timeout(self.timeout):
                if self._token is not None:
                    await link.request("authenticate", {"token": self._token}, DEFAULT_MAX_MESSAGE_BYTES)
                health = Health.from_wire(await link.request("health", {}, DEFAULT_MAX_MESSAGE_BYTES))
        except BaseException:
            await link.close()
            raise
        return link, health

    def _attach(self, link: Link, health: Health) -> None:
        self._link = link
        self._max_request_bytes = health.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES
        self._settled.set()

    def _on_lost(self, link: Link) -> None:
        if link is self._link and self._failure is None:
            self._settled.clear()

    def _fail(self, error: BaseException, *, ending: BaseException | None) -> None:
        """Makes every later request raise ``error``; subscriptions end with ``ending``."""
        self._failure = error
        self._settled.set()
        subscriptions, self._subscriptions = self._subscriptions, {}
        for subscription in subscriptions.values():
            subscription._end(ending)

    async def _live_link(self) -> Link:
        while True:
            if self._failure is not None:
                raise self._failure
            if self._supervisor is None:
                raise RuntimeError("the client is not open: use `await AsyncClient.connect(url)`")
            link = self._link
            if link is not None and link.lost is None:
                return link
            await self._settled.wait()

    async def _supervise(self) -> None:
        """Replaces each lost link, then resumes the subscriptions on the new one."""
        while True:
            assert self._link is not None
            lost = await self._link.wait_lost()
            if not self._reconnect:
                self._fail(lost, ending=lost)
                return
            log.info("checkpointd: %s; reconnecting to %s", lost, self.url)
            delay = RECONNECT_DELAY_FIRST
            while True:
                try:
                    link, health = await self._dial()
                    break
                except _RETRYABLE as error:
                    log.debug("checkpointd: reconnection failed (%s); next try in %.2fs", error, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_DELAY_MAX)
                except CheckpointdError as error:
                    self._fail(error, ending=error)
                    return
            self._attach(link, health)
            await asyncio.gather(*(self._resume(s) for s in list(self._subscriptions.values())))

    async def _resume(self, subscription: Subscription) -> None:
        """Subscribes again from the last event received; a refusal ends the subscription."""
        try:
            await self._send_subscribe(subscription)
        except CheckpointdError as error:
            if self._subscriptions.get(subscription.session_id) is subscription:
                del self._subscriptions[subscription.session_id]
            subscription._end(error)
        except (ConnectionLost, TimeoutError):
            pass  # Resumed again after the next reconnection.

    async def _start(self, subscription: Subscription) -> None:
        session_id = subscription.session_id
        if session_id in self._subscriptions:
            raise RuntimeError(f"this client is already subscribed to session {session_id}")
        if subscription.last_seq is None:
            # "From now", made exact: a resumption needs a seq to start from.
            subscription.last_seq = (await self.metrics()).event_sequence
        self._subscriptions[session_id] = subscription
        try:
            await self._send_subscribe(subscription)
        except BaseException:
            if self._subscriptions.get(session_id) is subscription:
                del self._subscriptions[session_id]
            raise

    async def _send_subscribe(self, subscription: Subscription) -> None:
        await self.call("subscribe", {"session_id": subscription.session_id, "since": subscription.last_seq})

    async def _stop(self, subscription: Subscription) -> None:
        if self._subscriptions.get(subscription.session_id) is subscription:
            await self.unsubscribe(subscription.session_id)
        subscription._end(None)

    def _on_event(self, message: dict[str, Any]) -> None:
        if message["event_type"] == "subscription_lagged":
            session_id = message["data"]["session_id"]
            subscription = self._subscriptions.get(session_id)
            if subscription is not None:
                log.warning(
                    "checkpointd: subscription to %s lagged; resuming after seq %s", session_id, subscription.last_seq
                )
                task = asyncio.create_task(self._resume(subscription))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            return
        event = Event.from_wire(message)
        subscription = self._subscriptions.get(event.session_id)
        if subscription is not None:
            subscription._deliver(event)


class _Connecting:
    """What :meth:`AsyncClient.connect` returns: awaitable, and an async context manager."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def __await__(self) -> Generator[Any, None, AsyncClient]:
        return self._client.__aenter__().__await__()

    async def __aenter__(self) -> AsyncClient:
        return await self._client.__aenter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._client.close()


class Ended:
    """Queued after a subscription's last event: why it ended (``None``: closed)."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class Subscription:
    """The events of one session, in ``seq`` order, as an async iterator.

    Across reconnections it resumes from the last event received, so events
    are neither missed nor repeated. If the server no longer retains the
    events needed to resume, iteration raises :class:`Compacted`; if the
    session is gone, :class:`NotFound`. A ``subscription_lagged`` notice from
    the server is logged and answered by resuming. Iteration stops after
    :meth:`aclose` or when the client closes. One client holds at most one
    subscription per session.
    """

    def __init__(self, client: AsyncClient, session_id: str, since: int | None) -> None:
        self.session_id = session_id
        self.last_seq: int | None = since
        """The seq of the last event received (where a resumption starts)."""
        self._client = client
        self._events: asyncio.Queue[Event | Ended] = asyncio.Queue()
        self._started = False
        self._ended = False

    async def start(self) -> Subscription:
        """Subscribes now (``async with`` and the first iteration do it otherwise)."""
        if self._started:
            raise RuntimeError(f"the subscription to {self.session_id} has already started")
        self._started = True
        try:
            await self._client._start(self)
        except Exception as error:
            self._end(error)  # Iterating again raises it again.
            raise
        return self

    async def aclose(self) -> None:
        """Unsubscribes; iteration stops after the events already received."""
        await self._client._stop(self)

    async def __aenter__(self) -> Subscription:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        if not self._started:
            await self.start()
        item = await self._events.get()
        if isinstance(item, Ended):
            self._events.put_nowait(item)  # Every later call ends the same way.
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item

    def _deliver(self, event: Event) -> None:
        # After a replaced subscription (a resumption) the server may send an
        # event twice; seq order makes the repeat recognisable.
        if self.last_seq is not None and event.seq <= self.last_seq:
            return
        self.last_seq = event.seq
        self._events.put_nowait(event)

    def _end(self, error: BaseException | None) -> None:
        if not self._ended:
            self._ended = True
            self._events.put_nowait(Ended(error))
