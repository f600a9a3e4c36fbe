"""Many requests in flight on one connection, and the sync client from many threads."""

from __future__ import annotations

import asyncio
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import STEP, Server

from checkpointd import AsyncClient, Client, ConnectionLost, Event, NotFound

THREADS = 8
PER_THREAD = 25


async def test_many_requests_in_flight_on_one_connection(client: AsyncClient) -> None:
    session_id = await client.create_session("in flight")
    ids = await asyncio.gather(*(client.checkpoint(session_id, state={"n": n}) for n in range(200)))
    assert len(set(ids)) == 200
    records = await asyncio.gather(*(client.get_checkpoint(i) for i in ids))
    assert [record.state for record in records] == [{"n": n} for n in range(200)]
    # Replies of different kinds interleave with each other correctly.
    mixed = await asyncio.gather(client.metrics(), client.get_session(session_id), client.health())
    assert mixed[1].checkpoint_count == 200


def test_sync_client_from_many_threads(server: Server) -> None:
    with Client.connect(server.url, timeout=STEP) as client:
        session_id = client.create_session("threads")
        start = threading.Barrier(THREADS, timeout=STEP)

        def work(worker: int) -> list[str]:
            start.wait()  # All threads issue their requests at once.
            ids = []
            for n in range(PER_THREAD):
                checkpoint_id = client.checkpoint(session_id, state=[worker, n], tags=[f"w{worker}"])
                assert client.restore(session_id, checkpoint_id).state == [worker, n]
                ids.append(checkpoint_id)
            return ids

        with ThreadPoolExecutor(THREADS) as pool:
            results = [future.result(STEP) for future in [pool.submit(work, w) for w in range(THREADS)]]
        assert len({i for ids in results for i in ids}) == THREADS * PER_THREAD
        for worker, ids in enumerate(results):
            assert [row.id for row in client.list_checkpoints(session_id, tag=f"w{worker}")] == ids


def test_sync_subscription_iterator(server: Server) -> None:
    with Client.connect(server.url, timeout=STEP) as client:
        session_id = client.create_session("sync events")
        first = client.checkpoint(session_id)
        with client.subscribe(session_id, since=0) as events:
            second = client.checkpoint(session_id)
            assert [events.get(STEP).checkpoint_id, next(events).checkpoint_id] == [first, second]
            assert events.last_seq == client.metrics().event_sequence


def test_sync_subscription_callback(server: Server) -> None:
    with Client.connect(server.url, timeout=STEP) as client:
        session_id = client.create_session("callback")
        received: list[Event] = []
        three = threading.Event()

        def on_event(event: Event) -> None:
            received.append(event)
            if len(received) == 3:
                three.set()

        events = client.subscribe(session_id, callback=on_event)
        ids = [client.checkpoint(session_id) for _ in range(3)]
        assert three.wait(STEP)
        events.close()
        assert [event.checkpoint_id for event in received] == ids


def test_sync_errors_are_typed(server: Server) -> None:
    with Client.connect(server.url, timeout=STEP) as client:
        with pytest.raises(NotFound) as caught:
            client.get_session(str(uuid.uuid4()))
        assert caught.value.code == "not_found"
    with pytest.raises(ConnectionLost, match="closed"):
        client.metrics()


def test_closing_the_sync_client_ends_its_subscriptions(server: Server) -> None:
    client = Client.connect(server.url, timeout=STEP)
    events = client.subscribe(client.create_session("closing"))
    client.close()
    with pytest.raises(StopIteration):
        events.get(STEP)
    events.close()
