"""Typed errors carrying the wire code, connection failures and timeouts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable

import pytest
from conftest import STEP, Server, StartServer

import checkpointd
from checkpointd import (
    AsyncClient,
    Capacity,
    CheckpointdError,
    Compacted,
    Conflict,
    ConnectionLost,
    InvalidParams,
    NotFound,
    TooLarge,
    Unauthorized,
    UnknownMethod,
)


async def test_error_classes_carry_their_code(client: AsyncClient) -> None:
    session_id = await client.create_session("errors")
    other = await client.create_session("other")
    foreign_parent = await client.checkpoint(other)
    cases: list[tuple[type[CheckpointdError], str, Awaitable[object]]] = [
        (NotFound, "not_found", client.get_checkpoint(str(uuid.uuid4()))),
        (NotFound, "not_found", client.checkpoint(str(uuid.uuid4()))),
        (InvalidParams, "invalid_params", client.get_session("not-a-uuid")),
        (InvalidParams, "invalid_params", client.compact(session_id)),
        (Conflict, "conflict", client.checkpoint(session_id, parent_id=foreign_parent)),
        (TooLarge, "too_large", client.checkpoint(session_id, tags=[f"t{i}" for i in range(65)])),
        (UnknownMethod, "unknown_method", client.call("no_such_method")),
    ]
    for cls, code, request in cases:
        with pytest.raises(cls) as caught:
            await request
        assert caught.value.code == code
        assert isinstance(caught.value, CheckpointdError)
        assert caught.value.message


def test_unknown_codes_stay_readable() -> None:
    error = checkpointd.errors.error_from_wire("brand_new", "a newer server's code")
    assert type(error) is CheckpointdError
    assert (error.code, error.message) == ("brand_new", "a newer server's code")
    assert isinstance(checkpointd.errors.error_from_wire("unavailable", "x"), checkpointd.Unavailable)
    assert isinstance(checkpointd.errors.error_from_wire("internal", "x"), checkpointd.Internal)


async def test_subscribe_errors(client: AsyncClient, start_server: StartServer) -> None:
    session_id = await client.create_session("subscribe errors")
    newest = (await client.metrics()).event_sequence
    with pytest.raises(Conflict):
        await client.subscribe(session_id, since=newest + 1000).start()
    missing = client.subscribe(str(uuid.uuid4()), since=0)
    with pytest.raises(NotFound):
        await missing.start()
    with pytest.raises(NotFound):  # Iterating a subscription that failed to start repeats why.
        await anext(missing)

    short = start_server("--event-retention", "2")
    async with AsyncClient.connect(short.url, timeout=STEP) as small:
        session_id = await small.create_session("retention")
        for _ in range(5):
            await small.checkpoint(session_id)
        with pytest.raises(Compacted) as caught:
            await small.subscribe(session_id, since=0).start()
        assert "oldest retained event" in caught.value.message


async def test_token(start_server: StartServer) -> None:
    secured = start_server(token="s3cret")
    with pytest.raises(Unauthorized):
        await AsyncClient.connect(secured.url, timeout=STEP)
    with pytest.raises(Unauthorized):
        await AsyncClient.connect(secured.url, token="wrong", timeout=STEP)
    async with AsyncClient.connect(secured.url, token="s3cret", timeout=STEP) as client:
        assert (await client.health()).healthy


async def test_capacity(start_server: StartServer) -> None:
    full = start_server("--max-connections", "1")
    async with AsyncClient.connect(full.url, timeout=STEP):
        with pytest.raises(Capacity):
            await AsyncClient.connect(full.url, timeout=STEP)


async def test_request_over_the_limit_is_refused_before_sending(client: AsyncClient) -> None:
    session_id = await client.create_session("too large")
    with pytest.raises(TooLarge, match="at most"):
        await client.checkpoint(session_id, state="x" * client.max_request_bytes)
    # The connection survived: nothing was sent.
    assert (await client.get_session(session_id)).checkpoint_count == 0


async def test_timeout_then_recovery(start_server: StartServer) -> None:
    paused = start_server()
    async with AsyncClient.connect(paused.url, timeout=STEP) as client:
        paused.pause()
        try:
            with pytest.raises(TimeoutError):
                await client.call("health", timeout=0.3)
        finally:
            paused.resume()
        # The late reply is dropped; the next request gets its own.
        assert (await client.health()).healthy


async def test_requests_in_flight_fail_when_the_server_dies(start_server: StartServer) -> None:
    doomed = start_server()
    async with AsyncClient.connect(doomed.url, timeout=STEP, reconnect=False) as client:
        session_id = await client.create_session("doomed")
        doomed.pause()
        in_flight = [asyncio.create_task(client.checkpoint(session_id, state=i)) for i in range(20)]
        await asyncio.sleep(0)  # One turn of the loop: every task sends and awaits its reply.
        doomed.kill()
        for outcome in await asyncio.gather(*in_flight, return_exceptions=True):
            assert isinstance(outcome, ConnectionLost), outcome
        with pytest.raises(ConnectionLost):
            await client.metrics()


async def test_closed_client(server: Server) -> None:
    client = await AsyncClient.connect(server.url, timeout=STEP)
    await client.close()
    with pytest.raises(ConnectionLost, match="closed"):
        await client.metrics()
    await client.close()  # Idempotent.
