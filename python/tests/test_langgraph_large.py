"""Large LangGraph states (hundreds of KiB) through the saver."""

from __future__ import annotations

import os
from typing import Any

from graphs import loop_graph
from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_config, generate_metadata

from checkpointd import AsyncClient
from checkpointd.langgraph import AsyncCheckpointdSaver

KIB = 1024


async def test_a_graph_with_a_large_text_channel(client: AsyncClient) -> None:
    saver = AsyncCheckpointdSaver(client)
    steps, size = 5, 400 * KIB
    graph = loop_graph(saver, steps=steps, text_bytes=size)
    config: dict[str, Any] = {"configurable": {"thread_id": "large-text"}}
    result = await graph.ainvoke({"text": "", "steps": []}, config, durability="sync")
    assert len(result["text"]) == size and result["steps"] == list(range(steps))
    history = [s async for s in graph.aget_state_history(config)]
    assert len(history) == steps + 2
    for snapshot in history[:-2]:  # Each step's checkpoint holds its own text.
        n = snapshot.values["steps"][-1]
        assert snapshot.values["text"] == (f"{n:08d}" * (size // 8 + 1))[:size]


async def test_large_binary_values_and_writes(client: AsyncClient) -> None:
    saver = AsyncCheckpointdSaver(client)
    blob = os.urandom(700 * KIB)
    checkpoint = generate_checkpoint(
        channel_values={"blob": blob, "small": "x"}, channel_versions={"blob": 1, "small": 1}
    )
    stored = await saver.aput(generate_config("large-binary"), checkpoint, generate_metadata(), {"blob": 1, "small": 1})
    # Writes that together exceed what one request may carry go in several.
    writes = [("chunk", os.urandom(3 * 1024 * KIB)) for _ in range(8)]
    await saver.aput_writes(stored, writes, "big-task")
    found = await saver.aget_tuple(stored)
    assert found is not None
    assert found.checkpoint["channel_values"] == {"blob": blob, "small": "x"}
    assert found.pending_writes == [("big-task", "chunk", value) for _, value in writes]


async def test_listing_pages_past_the_servers_4_mib_per_page(client: AsyncClient) -> None:
    """A full page ends at 4 MiB: the saver pages on until every checkpoint was listed."""
    saver = AsyncCheckpointdSaver(client)
    config = generate_config("large-pages")
    stored = []
    for n in range(12):
        if stored:
            config["configurable"]["checkpoint_id"] = stored[-1]["configurable"]["checkpoint_id"]
        blob = bytes([n]) * (500 * KIB)  # 12 x ~670 KiB on the wire: at least 2 pages.
        checkpoint = generate_checkpoint(channel_values={"blob": blob}, channel_versions={"blob": n + 1})
        stored.append(await saver.aput(config, checkpoint, generate_metadata(step=n), {"blob": n + 1}))
    listed = [t async for t in saver.alist(generate_config("large-pages"))]
    assert [t.config for t in listed] == stored[::-1]
    assert [t.checkpoint["channel_values"]["blob"][0] for t in listed] == list(range(11, -1, -1))
    session_id = (await client.get_session(key="large-pages")).id
    first_page = await client.list_checkpoints(session_id, order="desc", full=True)
    assert 1 <= len(first_page) < 12
    two = [t async for t in saver.alist(generate_config("large-pages"), limit=2, filter={"step": 3})]
    assert [t.metadata["step"] for t in two] == [3]
