"""A graph resumes after the server was killed (SIGKILL) and restarted on the same data directory."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import STEP, StartServer
from graphs import AGENT_INPUT, agent_graph, history_view, loop_graph, result_view
from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_config, generate_metadata
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from checkpointd import AsyncClient
from checkpointd.langgraph import AsyncCheckpointdSaver, CheckpointdSaver


async def test_an_interrupted_graph_resumes_after_sigkill(start_server: StartServer) -> None:
    expected_saver = InMemorySaver()
    expected_graph = agent_graph(expected_saver)
    config: dict[str, Any] = {"configurable": {"thread_id": "survivor"}}
    expected = [result_view(await expected_graph.ainvoke(AGENT_INPUT, config))]
    expected.append(result_view(await expected_graph.ainvoke(Command(resume="sub-yes"), config)))
    expected.append(result_view(await expected_graph.ainvoke(Command(resume="approved"), config)))
    expected_history = history_view([s async for s in expected_graph.aget_state_history(config)])

    server = start_server()
    async with AsyncCheckpointdSaver.from_conn_string(server.url) as saver:
        graph = agent_graph(saver)
        # "sync": each checkpoint is acknowledged (so durable) before the next step.
        actual = [result_view(await graph.ainvoke(AGENT_INPUT, config, durability="sync"))]
    server.kill()  # No flush, no goodbye: only what was acknowledged survives.
    server.start()  # Same data directory, same port.
    async with AsyncCheckpointdSaver.from_conn_string(server.url) as saver:
        graph = agent_graph(saver)
        actual.append(result_view(await graph.ainvoke(Command(resume="sub-yes"), config, durability="sync")))
        server.restart()  # Killed again under the live connection: the client reconnects.
        actual.append(result_view(await graph.ainvoke(Command(resume="approved"), config, durability="sync")))
        actual_history = history_view([s async for s in graph.aget_state_history(config)])
    assert actual == expected
    assert actual_history == expected_history


def test_a_run_that_crashed_with_the_server_resumes_where_it_stopped(start_server: StartServer) -> None:
    """A step kills the server and fails; after the restart the run goes on from the last checkpoint."""
    server = start_server()
    steps = 6
    crashed: list[int] = []

    def crash_once(n: int) -> None:
        if n == 3 and not crashed:
            crashed.append(n)
            server.restart()  # SIGKILL, then the same directory again.
            raise RuntimeError("the process died with the server")

    with CheckpointdSaver.from_conn_string(server.url) as saver:
        graph = loop_graph(saver, steps=steps, text_bytes=1000, on_step=crash_once)
        config: dict[str, Any] = {"configurable": {"thread_id": "crash"}}
        try:
            graph.invoke({"text": "", "steps": []}, config, durability="sync")
        except RuntimeError as error:
            assert "died" in str(error)
        else:
            raise AssertionError("the step did not fail")
        state = graph.get_state(config)
        assert state.values["steps"] == [0, 1, 2] and state.next == ("step",)
        assert state.tasks[0].error is not None  # The failure was stored as the task's error write.
        result = graph.invoke(None, config, durability="sync")
    assert result["steps"] == list(range(steps))
    assert crashed == [3]


async def test_a_request_in_flight_when_the_server_dies_is_sent_again(start_server: StartServer) -> None:
    """The connection is lost before the reply: the saver sends the request again on the new one."""
    server = start_server()
    async with AsyncClient.connect(server.url, timeout=STEP) as client:
        saver = AsyncCheckpointdSaver(client)
        config = generate_config("in-flight")
        first = await saver.aput(config, generate_checkpoint(), generate_metadata(step=0), {})
        server.pause()  # The server holds the connection but answers nothing.
        config["configurable"]["checkpoint_id"] = first["configurable"]["checkpoint_id"]
        put = asyncio.create_task(saver.aput(config, generate_checkpoint(), generate_metadata(step=1), {}))
        link = client._link
        assert link is not None
        for _ in range(10_000):  # Until the request is on the wire (a few turns of the loop).
            if link._pending:
                break
            await asyncio.sleep(0)
        assert link._pending, "the request was not sent"
        server.kill()  # Its reply never comes: the request fails with ConnectionLost ...
        server.start()  # ... and is sent again once the client has reconnected.
        second = await put
        found = await saver.aget_tuple(generate_config("in-flight"))
        assert found is not None and found.config == second
        assert found.parent_config == first
