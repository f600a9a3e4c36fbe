"""A real LangGraph graph on checkpointd gives the same results as on LangGraph's InMemorySaver.

The graph (tests/graphs.py) fans out with ``Send``, runs a subgraph that
interrupts, interrupts again, carries bytes, and is forked with
``update_state``; every result, state and the whole history are compared.
"""

from __future__ import annotations

from typing import Any

from conftest import Server
from graphs import AGENT_INPUT, agent_graph, history_view, result_view, snapshot_view
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from checkpointd import AsyncClient
from checkpointd.langgraph import AsyncCheckpointdSaver


async def run_agent(checkpointer: BaseCheckpointSaver[Any], thread_id: str) -> dict[str, Any]:
    """Runs the agent graph through both interrupts, then two forks; returns what it observed."""
    graph = agent_graph(checkpointer)
    config: dict[str, Any] = {"configurable": {"thread_id": thread_id}}
    seen: dict[str, Any] = {}

    async def history(of: dict[str, Any], **options: Any) -> list[Any]:
        return [snapshot async for snapshot in graph.aget_state_history(of, **options)]

    seen["to_subgraph_interrupt"] = result_view(await graph.ainvoke(AGENT_INPUT, config))
    seen["in_subgraph"] = snapshot_view(await graph.aget_state(config, subgraphs=True), {})
    seen["to_review_interrupt"] = result_view(await graph.ainvoke(Command(resume="sub-yes"), config))
    seen["at_review"] = snapshot_view(await graph.aget_state(config, subgraphs=True), {})
    seen["done"] = result_view(await graph.ainvoke(Command(resume="approved"), config))

    # Fork 1: change the state before the review, run the review again.
    first_history = await history(config)
    before_review = next(s for s in first_history if s.next == ("review",))
    fork = await graph.aupdate_state(before_review.config, {"note": "forked"})
    seen["fork_to_review"] = result_view(await graph.ainvoke(None, fork))
    seen["fork_done"] = result_view(await graph.ainvoke(Command(resume="rejected"), fork))

    # Fork 2: as if `plan` had written something else, from the very start.
    before_plan = next(s for s in first_history if s.next == ("plan",))
    replanned = await graph.aupdate_state(before_plan.config, {"items": ["replanned"]}, as_node="plan")
    seen["replanned_to_subgraph"] = result_view(await graph.ainvoke(None, replanned))
    seen["replanned_state"] = snapshot_view(await graph.aget_state(replanned, subgraphs=True), {})

    everything = await history(config)
    seen["history"] = history_view(everything)
    seen["updates"] = history_view(await history(config, filter={"source": "update"}))
    seen["page"] = history_view(await history(config, before=everything[2].config, limit=3))
    seen["latest"] = snapshot_view(await graph.aget_state(config), {})
    return seen


async def test_agent_graph_matches_in_memory_saver(client: AsyncClient) -> None:
    expected = await run_agent(InMemorySaver(), "agent")
    actual = await run_agent(AsyncCheckpointdSaver(client), "agent-on-checkpointd")
    assert set(actual) == set(expected)
    for key in expected:
        assert actual[key] == expected[key], key
    # The run really went through the interrupts, the fan-out and the forks.
    assert expected["done"]["approved"] == "approved"
    assert (
        expected["done"]["blob"] == b"\x01\x00\xff\x10plan\x00\x00\x00\x00\x00\x01\x01\x01\x01\x01\x02\x02\x02\x02\x02!"
    )
    assert expected["fork_done"]["note"] == "forked" and expected["fork_done"]["approved"] == "rejected"
    assert len(expected["history"]) >= 10 and expected["updates"] != []


async def test_subgraph_checkpoints_live_in_their_own_namespace(server: Server) -> None:
    async with AsyncCheckpointdSaver.from_conn_string(server.url) as saver:
        graph = agent_graph(saver)
        config: dict[str, Any] = {"configurable": {"thread_id": "namespaces"}}
        await graph.ainvoke(AGENT_INPUT, config)
        state = await graph.aget_state(config, subgraphs=True)
        (sub_task,) = state.tasks
        sub_config = sub_task.state.config
        namespace = sub_config["configurable"]["checkpoint_ns"]
        assert namespace.startswith("sub:")
        # Listing one namespace, or all of them.
        root = [t async for t in saver.alist({"configurable": {"thread_id": "namespaces", "checkpoint_ns": ""}})]
        sub = [t async for t in saver.alist({"configurable": {"thread_id": "namespaces", "checkpoint_ns": namespace}})]
        every = [t async for t in saver.alist({"configurable": {"thread_id": "namespaces"}})]
        assert root and sub and len(every) == len(root) + len(sub)
        assert {t.config["configurable"]["checkpoint_ns"] for t in sub} == {namespace}
        session = await saver.client.get_session(key="namespaces")
        assert session.checkpoint_count == len(every)
