"""LangGraph graphs for the saver's tests, and a checkpointer-independent view of their states.

The same graph runs once on LangGraph's ``InMemorySaver`` and once on a
checkpointd saver; the tests compare :func:`history_view` of both. Checkpoint
and task ids are fresh in each run (uuid6 from the clock), so the views
replace them by positions.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Send, StateSnapshot, interrupt

WORKERS = 3


def _concat(left: bytes, right: bytes) -> bytes:
    return left + right


class AgentState(TypedDict):
    items: Annotated[list[str], operator.add]
    note: str
    blob: Annotated[bytes, _concat]
    approved: str


class SubState(TypedDict):
    items: Annotated[list[str], operator.add]
    note: str


def _sub_first(state: SubState) -> dict[str, Any]:
    return {"items": ["sub-first"], "note": state["note"] + "|sub"}


def _sub_ask(state: SubState) -> dict[str, Any]:
    # Interrupts inside the subgraph: its checkpoints live in a child namespace.
    answer = interrupt({"question": "subgraph ok?", "items": len(state["items"])})
    return {"items": [f"sub-answer:{answer}"]}


def _plan(state: AgentState) -> dict[str, Any]:
    return {"items": ["plan"], "blob": b"\x00\xff\x10plan"}


def _fan_out(state: AgentState) -> list[Send]:
    return [Send("work", {"job": n, "blob": bytes([n]) * 5}) for n in range(WORKERS)]


def _work(job: dict[str, Any]) -> dict[str, Any]:
    return {"items": [f"done-{job['job']}"], "blob": job["blob"]}


def _review(state: AgentState) -> dict[str, Any]:
    answer = interrupt({"question": "approve?", "items": len(state["items"])})
    return {"approved": answer, "blob": b"!"}


def agent_graph(checkpointer: BaseCheckpointSaver[Any]) -> CompiledStateGraph[Any, Any, Any, Any]:
    """plan -> Send fan-out to 3 workers -> a subgraph that interrupts -> review, which interrupts.

    ``blob`` is bytes, concatenated by the workers' writes.
    """
    sub = StateGraph(SubState)
    sub.add_node("sub_first", _sub_first)
    sub.add_node("sub_ask", _sub_ask)
    sub.add_edge(START, "sub_first")
    sub.add_edge("sub_first", "sub_ask")
    sub.add_edge("sub_ask", END)

    builder = StateGraph(AgentState)
    builder.add_node("plan", _plan)
    builder.add_node("work", _work)
    builder.add_node("sub", sub.compile())
    builder.add_node("review", _review)
    builder.add_edge(START, "plan")
    builder.add_conditional_edges("plan", _fan_out, ["work"])
    builder.add_edge("work", "sub")
    builder.add_edge("sub", "review")
    builder.add_edge("review", END)
    return builder.compile(checkpointer=checkpointer)


AGENT_INPUT: dict[str, Any] = {"items": [], "note": "start", "blob": b"\x01", "approved": ""}


class LoopState(TypedDict):
    text: str
    steps: Annotated[list[int], operator.add]


def loop_graph(
    checkpointer: BaseCheckpointSaver[Any],
    *,
    steps: int,
    text_bytes: int,
    on_step: Callable[[int], None] | None = None,
) -> Any:
    """A loop of ``steps`` steps, each replacing a ``text_bytes`` text and appending to a list.

    ``on_step(n)`` is called at the start of step ``n`` (from 0).
    """

    def step(state: LoopState) -> dict[str, Any]:
        n = len(state["steps"])
        if on_step is not None:
            on_step(n)
        return {"text": (f"{n:08d}" * (text_bytes // 8 + 1))[:text_bytes], "steps": [n]}

    def more(state: LoopState) -> str:
        return "step" if len(state["steps"]) < steps else END

    builder = StateGraph(LoopState)
    builder.add_node("step", step)
    builder.add_edge(START, "step")
    builder.add_conditional_edges("step", more, ["step", END])
    return builder.compile(checkpointer=checkpointer)


def _checkpoint_id(config: Any) -> str | None:
    return config["configurable"].get("checkpoint_id") if config else None


def namespace_view(namespace: str) -> str:
    """A checkpoint namespace without its task ids (``sub:1f0a…|x:77`` -> ``sub|x``)."""
    return "|".join(part.split(":")[0] for part in namespace.split("|"))


def result_view(result: Any) -> Any:
    """A graph's result with its interrupts as their values (their ids differ between runs)."""
    if isinstance(result, dict) and "__interrupt__" in result:
        return {**result, "__interrupt__": [i.value for i in result["__interrupt__"]]}
    return result


def snapshot_view(snapshot: StateSnapshot, index: dict[str, int]) -> dict[str, Any]:
    """What a state snapshot says, with ids replaced by their positions in ``index``."""
    return {
        "values": snapshot.values,
        "next": snapshot.next,
        "namespace": namespace_view(snapshot.config["configurable"].get("checkpoint_ns", "")),
        "source": snapshot.metadata.get("source") if snapshot.metadata else None,
        "step": snapshot.metadata.get("step") if snapshot.metadata else None,
        "parent_namespaces": sorted(namespace_view(ns) for ns in (snapshot.metadata or {}).get("parents", {})),
        "parent": index.get(_checkpoint_id(snapshot.parent_config) or ""),
        "tasks": [
            (
                task.name,
                [namespace_view(p) if isinstance(p, str) else p for p in task.path],
                [i.value for i in task.interrupts],
                repr(task.error),
                task.result,
                snapshot_view(task.state, {}) if isinstance(task.state, StateSnapshot) else None,
            )
            for task in snapshot.tasks
        ],
        "interrupts": [i.value for i in snapshot.interrupts],
    }


def history_view(history: list[StateSnapshot]) -> list[dict[str, Any]]:
    """A thread's history (``get_state_history``, newest first) as comparable views."""
    index = {_checkpoint_id(s.config) or "": n for n, s in enumerate(history)}
    return [snapshot_view(s, index) for s in history]
