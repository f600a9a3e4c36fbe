"""Subscriptions: replay, live events, and resumption across a server restart."""

from __future__ import annotations

import asyncio

import pytest
from conftest import STEP, StartServer

from checkpointd import AsyncClient, Compacted, ConnectionLost, Event, Subscription


async def next_event(subscription: Subscription) -> Event:
    return await asyncio.wait_for(anext(subscription), STEP)


async def reconnected(client: AsyncClient) -> None:
    """Waits until a request succeeds again after the server went away.

    A request sent before the client noticed the loss fails with
    ConnectionLost; later ones wait for the new connection.
    """
    async with asyncio.timeout(STEP):
        while True:
            try:
                await client.health()
                return
            except ConnectionLost:
                continue


async def test_replay_then_live(client: AsyncClient) -> None:
    session_id = await client.create_session("replay")
    first = await client.checkpoint(session_id, state=1)
    await client.restore(session_id, first)
    async with client.subscribe(session_id, since=0) as events:
        created, restored = await next_event(events), await next_event(events)
        assert (created.event_type, created.checkpoint_id, created.session_id) == (
            "checkpoint_created",
            first,
            session_id,
        )
        assert (restored.event_type, restored.checkpoint_id) == ("checkpoint_restored", first)
        assert restored.seq > created.seq

        second = await client.checkpoint(session_id)
        live = await next_event(events)
        assert (live.event_type, live.checkpoint_id) == ("checkpoint_created", second)
        assert live.sequence_number == (await client.get_checkpoint(second)).sequence_number

        await client.delete_checkpoint(second)
        await client.compact(session_id, keep_recent=0)
        await client.delete_session(session_id)
        kinds = [(await next_event(events)).event_type for _ in range(3)]
        assert kinds == ["checkpoint_deleted", "checkpoints_compacted", "session_deleted"]
        assert events.last_seq == (await client.metrics()).event_sequence


async def test_without_since_starts_from_now(client: AsyncClient) -> None:
    session_id = await client.create_session("from now")
    await client.checkpoint(session_id, message="before")
    async with client.subscribe(session_id) as events:
        after = await client.checkpoint(session_id, message="after")
        assert (await next_event(events)).checkpoint_id == after


async def test_only_the_subscribed_session(client: AsyncClient) -> None:
    mine, other = await client.create_session("mine"), await client.create_session("other")
    async with client.subscribe(mine) as events:
        await client.checkpoint(other)
        expected = await client.checkpoint(mine)
        assert (await next_event(events)).checkpoint_id == expected


async def test_iteration_starts_the_subscription_and_unsubscribe_ends_it(client: AsyncClient) -> None:
    session_id = await client.create_session("iterate")
    ids = [await client.checkpoint(session_id) for _ in range(3)]
    seen: list[str | None] = []
    async with asyncio.timeout(STEP):
        async for event in client.subscribe(session_id, since=0):
            seen.append(event.checkpoint_id)
            if len(seen) == len(ids):
                await client.unsubscribe(session_id)
    assert seen == ids


async def test_one_subscription_per_session_per_client(client: AsyncClient) -> None:
    session_id = await client.create_session("twice")
    async with client.subscribe(session_id):
        with pytest.raises(RuntimeError, match="already subscribed"):
            await client.subscribe(session_id).start()


async def test_closing_the_client_ends_subscriptions(client: AsyncClient) -> None:
    events = await client.subscribe(await client.create_session("closing")).start()
    await client.close()
    with pytest.raises(StopAsyncIteration):
        await next_event(events)


async def test_resume_after_kill_and_restart(start_server: StartServer) -> None:
    server = start_server(token="s3cret")
    async with (
        AsyncClient.connect(server.url, token="s3cret", timeout=STEP) as watcher,
        AsyncClient.connect(server.url, token="s3cret", timeout=STEP) as writer,
    ):
        session_id = await writer.create_session("survivor")
        async with watcher.subscribe(session_id) as events:
            before = [await writer.checkpoint(session_id, state=i) for i in range(3)]
            assert [(await next_event(events)).checkpoint_id for _ in before] == before

            server.restart()
            # The writer reconnects (and authenticates again) on its own;
            # these are written whether or not the watcher is back yet.
            await reconnected(writer)
            after = [await writer.checkpoint(session_id, state=i) for i in range(3, 6)]
            received = [await next_event(events) for _ in after]
            assert [event.checkpoint_id for event in received] == after
            seqs = [event.seq for event in received]
            assert seqs == sorted(set(seqs))

            # The restored server keeps what was acknowledged before the kill.
            assert (await watcher.restore(session_id, before[-1])).state == 2


async def test_resume_reports_compacted_events(start_server: StartServer) -> None:
    server = start_server("--event-retention", "3")
    async with AsyncClient.connect(server.url, timeout=STEP) as client:
        session_id = await client.create_session("compacted")
        events = await client.subscribe(session_id).start()
        await client.checkpoint(session_id)
        await next_event(events)

        # While the client cannot reach it (another port), the server
        # journals more than it keeps; then it is back where the client looks.
        port = server.port
        server.kill()
        server.port = 0
        async with AsyncClient.connect(server.start().url, timeout=STEP) as other:
            for _ in range(5):
                await other.checkpoint(session_id)
        server.kill()
        server.port = port
        server.start()
        with pytest.raises(Compacted):
            await next_event(events)
        await events.aclose()
