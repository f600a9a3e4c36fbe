"""The saver's own rules, beyond the conformance suite: metadata, stale sessions, parents, searches."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from conftest import Server, StartServer
from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_config, generate_metadata
from langgraph.checkpoint.memory import InMemorySaver

from checkpointd import AsyncClient, Unauthorized
from checkpointd.langgraph import CONNECTIONS, RESERVED_KEY, AsyncCheckpointdSaver, CheckpointdSaver


def thread() -> str:
    return f"thread-{uuid.uuid4()}"


async def put(
    saver: AsyncCheckpointdSaver, thread_id: str, *, parent: Any = None, ns: str = "", **metadata: Any
) -> Any:
    config = generate_config(thread_id, checkpoint_ns=ns)
    if parent is not None:
        config["configurable"]["checkpoint_id"] = parent["configurable"]["checkpoint_id"]
    return await saver.aput(config, generate_checkpoint(), generate_metadata(**metadata), {})


async def test_metadata_that_json_cannot_carry_round_trips(client: AsyncClient) -> None:
    """Values plain JSON would change come back as LangGraph's InMemorySaver gives them back."""
    saver = AsyncCheckpointdSaver(client)
    odd = {
        "pair": (1, 2),
        "raw": b"\x00\xff",
        "nan": float("nan"),
        "nested": {"t": (3,)},
        RESERVED_KEY: 1,
    }
    plain = {"source": "loop", "step": 7, "label": "plain", "list": [1, {"a": None}], "float": 0.5, "big": 2**64 - 1}
    metadata = {**plain, **odd}
    stored = await put(saver, thread(), **metadata)
    in_memory = InMemorySaver()
    expected = await in_memory.aget_tuple(await put(in_memory, thread(), **metadata))
    found = await saver.aget_tuple(stored)
    assert found is not None and expected is not None
    nan = found.metadata.pop("nan")
    assert nan != nan and expected.metadata.pop("nan") is not None  # NaN is never equal, even to itself.
    assert found.metadata == expected.metadata
    assert found.metadata["raw"] == b"\x00\xff" and found.metadata["big"] == 2**64 - 1
    # On the server, the plain keys are plain JSON (filters see them), the others serde values.
    session_id = (await client.get_session(key=stored["configurable"]["thread_id"])).id
    record = await client.get_checkpoint(session_id=session_id)
    assert {k: record.metadata[k] for k in plain} == plain
    assert set(record.metadata[RESERVED_KEY]["serde"]) == set(odd)


async def test_filters_on_plain_and_on_other_values(client: AsyncClient) -> None:
    saver = AsyncCheckpointdSaver(client)
    thread_id = thread()
    first = await put(saver, thread_id, step=1, raw=b"\x01", tag="a")
    second = await put(saver, thread_id, step=2, raw=b"\x02", tag="a")
    config = generate_config(thread_id)

    async def ids(**options: Any) -> list[str]:
        return [t.config["configurable"]["checkpoint_id"] async for t in saver.alist(config, **options)]

    first_id, second_id = first["configurable"]["checkpoint_id"], second["configurable"]["checkpoint_id"]
    assert await ids(filter={"tag": "a"}) == [second_id, first_id]  # By the server.
    assert await ids(filter={"raw": b"\x01"}) == [first_id]  # Here, after decoding.
    assert await ids(filter={"tag": "a", "raw": b"\x02"}, limit=1) == [second_id]
    assert await ids(filter={"tag": "a", "raw": b"\x03"}) == []


async def test_a_session_deleted_by_another_client_is_found_again(client: AsyncClient) -> None:
    saver = AsyncCheckpointdSaver(client)
    thread_id = thread()
    await put(saver, thread_id)
    old = (await client.get_session(key=thread_id)).id
    await client.delete_session(old)  # Behind the saver's back: its cached id is stale.
    assert await saver.aget_tuple(generate_config(thread_id)) is None
    stored = await put(saver, thread_id)  # Opens a new session under the same key.
    new = (await client.get_session(key=thread_id)).id
    assert new != old
    found = await saver.aget_tuple(generate_config(thread_id))
    assert found is not None and found.config == stored
    # Again, and this time another saver writes the thread anew: listing finds its new session.
    other = AsyncCheckpointdSaver(client)
    await other.adelete_thread(thread_id)
    again = await put(other, thread_id)
    assert [t.config async for t in saver.alist(generate_config(thread_id))] == [again]


async def test_a_parent_no_longer_stored_is_still_named(client: AsyncClient) -> None:
    saver = AsyncCheckpointdSaver(client)
    thread_id = thread()
    run = str(uuid.uuid4())
    parent = await put(saver, thread_id, run_id=run)
    await saver.adelete_for_runs([run])
    child = await put(saver, thread_id, parent=parent)
    found = await saver.aget_tuple(child)
    assert found is not None and found.parent_config is not None
    assert found.parent_config["configurable"]["checkpoint_id"] == parent["configurable"]["checkpoint_id"]
    assert RESERVED_KEY not in found.metadata


async def test_list_without_a_thread_searches_every_thread(client: AsyncClient) -> None:
    saver = AsyncCheckpointdSaver(client)
    run = str(uuid.uuid4())
    threads = [thread(), thread()]
    stored = [await put(saver, t, run_id=run, ns=ns) for t in threads for ns in ("", "child:1")]
    found = [t.config async for t in saver.alist(None, filter={"run_id": run})]
    assert found == stored[::-1]  # Newest first, each under its own thread and namespace.
    older = [t.config async for t in saver.alist(None, filter={"run_id": run}, before=stored[2], limit=1)]
    assert older == [stored[1]]


async def test_before_a_checkpoint_of_another_namespace(client: AsyncClient) -> None:
    saver = AsyncCheckpointdSaver(client)
    thread_id = thread()
    root = await put(saver, thread_id)
    child = await put(saver, thread_id, ns="child:1")
    newer_root = await put(saver, thread_id, parent=root)
    # `before` names a checkpoint the root namespace does not have: ids are compared instead.
    config = generate_config(thread_id, checkpoint_ns="")
    found = [t.config async for t in saver.alist(config, before=child)]
    assert found == [root]
    assert [t.config async for t in saver.alist(config)] == [newer_root, root]


async def test_copy_and_prune_of_threads_without_sessions_do_nothing(client: AsyncClient) -> None:
    saver = AsyncCheckpointdSaver(client)
    source, target = thread(), thread()
    await saver.acopy_thread(source, target)
    await saver.aprune([source], strategy="keep_latest")
    await saver.adelete_thread(source)
    sessions = await client.list_sessions(key_prefix="thread-")
    assert not {source, target} & {s.key for s in sessions}


async def test_from_conn_string_with_a_token(start_server: StartServer) -> None:
    secured = start_server(token="s3cret")
    with pytest.raises(Unauthorized):
        async with AsyncCheckpointdSaver.from_conn_string(secured.url, token="wrong"):
            pass
    async with AsyncCheckpointdSaver.from_conn_string(secured.url, token="s3cret") as saver:
        stored = await put(saver, thread())
        assert await saver.aget_tuple(stored) is not None
    with CheckpointdSaver.from_conn_string(secured.url, token="s3cret") as sync_saver:
        assert sync_saver.get_tuple(stored) is not None


async def test_from_conn_string_spreads_threads_over_its_connections(server: Server) -> None:
    async with AsyncCheckpointdSaver.from_conn_string(server.url) as saver:
        connections = {id(c): c for c in saver._clients}
        assert len(connections) == CONNECTIONS
        threads = [thread() for _ in range(32)]
        assert {id(saver._client_for(t)) for t in threads} == set(connections)
        assert all(saver._client_for(t) is saver._client_for(t) for t in threads)  # A thread keeps to one.
        for t in threads[:8]:
            stored = await put(saver, t)
            assert await saver.aget_tuple(stored) is not None
    with CheckpointdSaver.from_conn_string(server.url) as sync_saver:
        assert len({id(c) for c in sync_saver._clients}) == CONNECTIONS
        assert sync_saver.get_tuple(stored) is not None
