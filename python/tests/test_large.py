"""States of several hundred KiB, alone and many at once."""

from __future__ import annotations

import asyncio

from conftest import STEP, Server

from checkpointd import AsyncClient, Client
from checkpointd.models import JSON


def big_state(kib: int, salt: int = 0) -> JSON:
    """A nested JSON state of about ``kib`` KiB: a list of records with text."""
    return {
        "salt": salt,
        "messages": [{"role": "tool", "n": n, "text": f"{salt}:{n}:" + "é" * 500} for n in range(kib)],
    }


async def test_large_state_round_trip(client: AsyncClient) -> None:
    session_id = await client.create_session("large")
    state = big_state(600)
    checkpoint_id = await client.checkpoint(session_id, state=state, message="big")
    assert (await client.get_checkpoint(checkpoint_id)).state == state
    assert (await client.restore(session_id, checkpoint_id)).state == state


async def test_large_states_in_flight_together(client: AsyncClient) -> None:
    session_id = await client.create_session("large, together")
    states = [big_state(300, salt) for salt in range(8)]
    ids = await asyncio.gather(*(client.checkpoint(session_id, state=s) for s in states))
    restored = await asyncio.gather(*(client.restore(session_id, i) for i in ids))
    assert [r.state for r in restored] == states


def test_large_state_sync(server: Server) -> None:
    with Client.connect(server.url, timeout=STEP) as client:
        session_id = client.create_session("large, sync")
        state = big_state(400)
        assert client.restore(session_id, client.checkpoint(session_id, state=state)).state == state
