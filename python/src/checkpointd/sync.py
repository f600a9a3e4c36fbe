"""The synchronous client: an :class:`AsyncClient` on a private event loop.

:class:`Client` starts an event loop in a background thread, runs an
:class:`AsyncClient` on it and forwards each call there, so any number of
threads may share one client (their requests are in flight together on its
one connection).
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from .aio import AsyncClient, Ended, Subscription
from .errors import ConnectionLost
from .models import Event

P = ParamSpec("P")
T = TypeVar("T")

STOP_TIMEOUT = 10.0
"""Seconds :meth:`Client.close` waits for the loop thread to finish."""


def _forward(
    method: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[Client, P], T]:
    """The blocking twin of an :class:`AsyncClient` method, with its signature and docstring."""

    def blocking(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(method(self._client, *args, **kwargs))

    functools.update_wrapper(blocking, method)
    return blocking


class Client:
    """A connection to checkpointd for synchronous code, safe to share between threads.

    ``client = Client.connect(url)`` or ``with Client.connect(url) as client:``.
    Every method blocks until its reply (bounded by the client's ``timeout``)
    and behaves as the :class:`AsyncClient` method of the same name.
    """

    def __init__(self, client: AsyncClient, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        """Use :meth:`connect`."""
        self._client = client
        self._loop = loop
        self._thread = thread
        self._closed = False
        self._pumps: set[asyncio.Task[None]] = set()
        """Tasks moving subscription events to threads; they end with their subscription."""

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        reconnect: bool = True,
    ) -> Client:
        """Connects to ``url``; the options are those of :meth:`AsyncClient.connect`."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="checkpointd-client", daemon=True)
        thread.start()
        client = cls(
            AsyncClient(url, token=token, timeout=timeout, connect_timeout=connect_timeout, reconnect=reconnect),
            loop,
            thread,
        )
        try:
            client._run(client._client.open())
        except BaseException:
            client._stop_loop()
            raise
        return client

    def close(self) -> None:
        """Closes the connection and stops the loop thread."""
        if self._closed:
            return
        try:
            self._run(self._close())
        finally:
            self._closed = True
            self._stop_loop()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def max_request_bytes(self) -> int:
        """The largest request the server accepts."""
        return self._client.max_request_bytes

    @property
    def async_client(self) -> AsyncClient:
        """The :class:`AsyncClient` this client drives, on :attr:`loop`.

        For code that runs its own coroutines on the client's loop (as the
        LangGraph saver does): call its methods only from coroutines running
        on :attr:`loop`, e.g. through :func:`asyncio.run_coroutine_threadsafe`.
        """
        return self._client

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The private event loop (on its own thread) that runs :attr:`async_client`."""
        return self._loop

    call = _forward(AsyncClient.call)
    authenticate = _forward(AsyncClient.authenticate)
    create_session = _forward(AsyncClient.create_session)
    checkpoint = _forward(AsyncClient.checkpoint)
    list_checkpoints = _forward(AsyncClient.list_checkpoints)
    search_checkpoints = _forward(AsyncClient.search_checkpoints)
    metrics = _forward(AsyncClient.metrics)
    get_checkpoint = _forward(AsyncClient.get_checkpoint)
    put_writes = _forward(AsyncClient.put_writes)
    restore = _forward(AsyncClient.restore)
    delete_checkpoint = _forward(AsyncClient.delete_checkpoint)
    compact = _forward(AsyncClient.compact)
    set_retention = _forward(AsyncClient.set_retention)
    list_sessions = _forward(AsyncClient.list_sessions)
    get_session = _forward(AsyncClient.get_session)
    open_session = _forward(AsyncClient.open_session)
    copy_session = _forward(AsyncClient.copy_session)
    delete_checkpoints = _forward(AsyncClient.delete_checkpoints)
    delete_session = _forward(AsyncClient.delete_session)
    annotate = _forward(AsyncClient.annotate)
    validate = _forward(AsyncClient.validate)
    unsubscribe = _forward(AsyncClient.unsubscribe)
    health = _forward(AsyncClient.health)

    def subscribe(
        self, session_id: str, *, since: int | None = None, callback: Callable[[Event], None] | None = None
    ) -> SyncSubscription:
        """Subscribes now; events come through the returned object.

        Without ``callback``, iterate over it (or call
        :meth:`SyncSubscription.get` with a timeout). With ``callback``, a
        thread of its own calls it for each event in order until the
        subscription ends (then do not iterate as well). ``since`` is as in :meth:`AsyncClient.subscribe`.
        """
        events: queue.SimpleQueue[Event | Ended] = queue.SimpleQueue()
        subscription = self._run(self._start_pump(session_id, since, events))
        return SyncSubscription(self, subscription, events, callback)

    async def _start_pump(
        self, session_id: str, since: int | None, events: queue.SimpleQueue[Event | Ended]
    ) -> Subscription:
        """Starts a subscription, and a task that moves its events into ``events`` until it ends."""
        subscription = await self._client.subscribe(session_id, since=since).start()

        async def pump() -> None:
            try:
                async for event in subscription:
                    events.put(event)
            except Exception as error:
                events.put(Ended(error))
            else:
                events.put(Ended(None))

        task = asyncio.create_task(pump(), name=f"checkpointd-pump-{session_id}")
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)
        return subscription

    async def _close(self) -> None:
        await self._client.close()
        # Closing ended every subscription: let each tell its thread so.
        await asyncio.gather(*self._pumps)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs ``coroutine`` on the client's loop and waits for its outcome."""
        if self._closed:
            coroutine.close()
            raise ConnectionLost("the client was closed")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STOP_TIMEOUT)
        if not self._thread.is_alive():
            self._loop.close()


class SyncSubscription:
    """A subscription for synchronous code: an iterator of events, or a callback thread.

    The events and the resumption rules are those of :class:`Subscription`.
    """

    def __init__(
        self,
        client: Client,
        subscription: Subscription,
        events: queue.SimpleQueue[Event | Ended],
        callback: Callable[[Event], None] | None,
    ) -> None:
        """Use :meth:`Client.subscribe`."""
        self.session_id = subscription.session_id
        self._client = client
        self._subscription = subscription
        self._events = events
        self._ended: Ended | None = None
        self._callback_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if callback is not None:
            self._thread = threading.Thread(
                target=self._call_back, args=(callback,), name=f"checkpointd-events-{self.session_id}", daemon=True
            )
            self._thread.start()

    @property
    def last_seq(self) -> int | None:
        """The seq of the last event received."""
        return self._subscription.last_seq

    def get(self, timeout: float | None = None) -> Event:
        """The next event, waiting at most ``timeout`` seconds (``None``: no limit).

        Raises :class:`TimeoutError` when none came in time, the error that
        ended the subscription (e.g. :class:`Compacted`), or
        :class:`StopIteration` once it was closed.
        """
        if self._ended is None:
            try:
                item = self._events.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no event from session {self.session_id} within {timeout}s") from None
            if isinstance(item, Event):
                return item
            self._ended = item
        if self._ended.error is not None:
            raise self._ended.error
        raise StopIteration

    def __iter__(self) -> SyncSubscription:
        return self

    def __next__(self) -> Event:
        return self.get()

    def close(self) -> None:
        """Unsubscribes, and waits for the callback thread to deliver what was received.

        Raises what ended the callback thread early: the callback's exception
        or the subscription's error.
        """
        if not self._client._closed:  # Closing the client ended the subscription.
            self._client._run(self._subscription.aclose())
        if self._thread is not None:
            self._thread.join()
        if self._callback_error is not None:
            raise self._callback_error

    def __enter__(self) -> SyncSubscription:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call_back(self, callback: Callable[[Event], None]) -> None:
        try:
            for event in self:
                callback(event)
        except BaseException as error:  # Re-raised by close().
            self._callback_error = error
