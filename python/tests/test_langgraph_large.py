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
