"""One open WebSocket to the server: requests out, replies matched by id.

A :class:`Link` never reconnects; :class:`checkpointd.AsyncClient` replaces a
lost link with a new one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from .errors import CheckpointdError, ConnectionLost, TooLarge, error_from_wire

log = logging.getLogger("checkpointd")

INIT_ID = "init"
"""The id of the reply a server at capacity sends before closing."""


class Link:
    """A connected WebSocket and the one reader task that serves it.

    The reader resolves each request's future from the reply with its id and
    hands every pushed event to ``on_event``. When the socket closes, every
    request still waiting fails with :class:`ConnectionLost` (or with the
    server's refusal, e.g. ``capacity``) and ``on_lost`` is called once.
    """

    def __init__(
        self,
        ws: ClientConnection,
        on_event: Callable[[dict[str, Any]], None],
        on_lost: Callable[[Link], None],
    ) -> None:
        self._ws = ws
        self._on_event = on_event
        self._on_lost = on_lost
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._refusal: CheckpointdError | None = None
        self.lost: ConnectionLost | None = None
        """Why the link is gone; ``None`` while it is open."""
        self._reader = asyncio.create_task(self._read(), name="checkpointd-reader")

    async def request(self, method: str, params: dict[str, Any], max_bytes: int) -> Any:
        """Sends one request and returns the reply's ``result``.

        Raises the reply's error, :class:`TooLarge` (without sending) for a
        request over ``max_bytes``, or :class:`ConnectionLost`.
        """
        if self.lost is not None:
            raise self.lost
        request_id = str(next(self._ids))
        text = json.dumps({"id": request_id, "method": method, "params": params}, ensure_ascii=False)
        size = len(text.encode())
        if size > max_bytes:
            # The server would close the whole connection (1009), failing
            # every other request in flight on it.
            raise TooLarge(f"the {method} request is {size} bytes; the server accepts at most {max_bytes}")
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = reply
        try:
            await self._ws.send(text)
        except ConnectionClosed:
            # The reader sees the same close and fails every waiting reply,
            # this one included, with the reason.
            await asyncio.shield(self._reader)
        try:
            return await reply
        finally:
            self._pending.pop(request_id, None)

    async def wait_lost(self) -> ConnectionLost:
        """Waits until the socket has closed; returns why."""
        await asyncio.shield(self._reader)
        assert self.lost is not None
        return self.lost

    async def close(self) -> None:
        """Closes the socket and waits for the reader to finish."""
        await self._ws.close()
        await asyncio.shield(self._reader)

    async def _read(self) -> None:
        try:
            async for text in self._ws:
                self._dispatch(json.loads(text))
        except ConnectionClosed:
            pass  # Described below from the close frame.
        except (ValueError, KeyError, TypeError):
            log.exception("checkpointd: unreadable message from the server; closing the connection")
            await self._ws.close()
        finally:
            ws = self._ws
            self.lost = ConnectionLost(
                f"connection to the server closed (code {ws.close_code}, reason {ws.close_reason!r})"
            )
            failure: Exception = self._refusal if self._refusal is not None else self.lost
            for reply in self._pending.values():
                if not reply.done():
                    reply.set_exception(failure)
            self._pending.clear()
            self._on_lost(self)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "event_type" in message:
            self._on_event(message)
            return
        request_id = message.get("id")
        error = None if message.get("success") else error_from_wire(message.get("code", ""), message.get("error", ""))
        if request_id == INIT_ID and error is not None:
            self._refusal = error
            return
        reply = self._pending.get(request_id) if isinstance(request_id, str) else None
        if reply is None or reply.done():
            # A request that timed out, or an answer to no request of ours.
            log.debug("checkpointd: dropped a reply to no waiting request: %.200r", message)
        elif error is not None:
            reply.set_exception(error)
        else:
            reply.set_result(message.get("result"))
