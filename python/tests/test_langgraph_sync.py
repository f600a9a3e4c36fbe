"""The synchronous saver (CheckpointdSaver): graphs and direct calls from several threads at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import STEP, Server
from graphs import AGENT_INPUT, agent_graph, history_view, loop_graph, result_view
from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_config, generate_metadata
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from checkpointd.langgraph import AsyncCheckpointdSaver, CheckpointdSaver

THREADS = 8
LOOP_STEPS = 6


def run_agent_sync(graph: Any, thread_id: str) -> dict[str, Any]:
    config: dict[str, Any] = {"configurable": {"thread_id": thread_id}}
    seen = {
        "first": result_view(graph.invoke(AGENT_INPUT, config)),
        "second": result_view(graph.invoke(Command(resume=f"sub-{thread_id}"), config)),
        "done": result_view(graph.invoke(Command(resume=f"ok-{thread_id}"), config)),
    }
    seen["history"] = history_view(list(graph.get_state_history(config)))
    return seen


def test_graphs_on_several_threads_share_one_sync_saver(server: Server) -> None:
    expected = {f"t{n}": run_agent_sync(agent_graph(InMemorySaver()), f"t{n}") for n in range(THREADS)}
    with CheckpointdSaver.from_conn_string(server.url) as saver:
        graph = agent_graph(saver)
        start = threading.Barrier(THREADS, timeout=STEP)

        def work(n: int) -> dict[str, Any]:
            start.wait()  # Every thread runs its graph at the same time.
            return run_agent_sync(graph, f"t{n}")

        with ThreadPoolExecutor(THREADS) as pool:
            actual = dict(zip(expected, pool.map(work, range(THREADS)), strict=True))
    assert actual == expected


def test_concurrent_writes_to_one_checkpoint_from_several_threads(server: Server) -> None:
    with CheckpointdSaver.from_conn_string(server.url) as saver:
        stored = saver.put(generate_config("shared"), generate_checkpoint(), generate_metadata(), {})
        start = threading.Barrier(THREADS, timeout=STEP)

        def work(n: int) -> None:
            start.wait()
            for round_ in range(5):  # Repeats are ignored (idx >= 0: the first write stays).
                saver.put_writes(stored, [("ch", f"task{n}"), ("other", n)], f"task-{n}", task_path=f"p{n}")
                assert saver.get_tuple(stored) is not None, round_

        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(work, range(THREADS)))
        found = saver.get_tuple(stored)
        assert found is not None
        assert found.pending_writes == [
            (f"task-{n}", channel, value)
            for n in range(THREADS)
            for channel, value in (("ch", f"task{n}"), ("other", n))
        ]


def test_sync_and_async_methods_of_both_savers(server: Server) -> None:
    """Each saver's other half: the sync saver's a* methods, the async saver's sync methods."""
    import asyncio

    with CheckpointdSaver.from_conn_string(server.url) as saver:
        graph = loop_graph(saver, steps=LOOP_STEPS, text_bytes=100)
        config: dict[str, Any] = {"configurable": {"thread_id": "halves"}}
        result = asyncio.run(graph.ainvoke({"text": "", "steps": []}, config))
        assert result["steps"] == list(range(LOOP_STEPS))
        assert len(list(saver.list(config))) == LOOP_STEPS + 2  # input, then one per step, then the end

    async def from_a_worker_thread() -> list[Any]:
        async with AsyncCheckpointdSaver.from_conn_string(server.url) as saver:
            # A sync graph in a worker thread, while this loop serves its requests.
            graph = loop_graph(saver, steps=LOOP_STEPS, text_bytes=100)
            config = {"configurable": {"thread_id": "halves"}}
            await asyncio.to_thread(graph.invoke, {"text": "", "steps": []}, config)
            with pytest.raises(asyncio.InvalidStateError):
                saver.get_tuple(config)  # Blocking the saver's own loop would deadlock.
            return [t async for t in saver.alist(config)]

    tuples = asyncio.run(from_a_worker_thread())
    # The second run went on from the first run's state (same thread).
    assert tuples[0].checkpoint["channel_values"]["steps"] == [*range(LOOP_STEPS), LOOP_STEPS]
