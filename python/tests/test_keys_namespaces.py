"""The format-2 methods through AsyncClient: client keys, namespaces, external ids, pending writes,
filtered and full listings, search, copies and deletion by metadata."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from conftest import STEP, StartServer

from checkpointd import (
    AsyncClient,
    Checkpoint,
    CheckpointSummary,
    InvalidParams,
    NotFound,
    OpenedSession,
    PendingWrite,
)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4()}"


async def test_open_session_by_key(client: AsyncClient) -> None:
    key = unique("thread")
    opened = await client.open_session(key, name="support bot", metadata={"team": "a"})
    assert isinstance(opened, OpenedSession) and opened.created
    assert (opened.session.key, opened.session.name, opened.session.metadata) == (key, "support bot", {"team": "a"})
    again = await client.open_session(key)
    assert not again.created and again.session.id == opened.session.id
    assert (await client.get_session(key=key)).id == opened.session.id
    with pytest.raises(NotFound):
        await client.get_session(key=unique("nobody"))


async def test_racing_opens_of_one_key_get_one_session(client: AsyncClient) -> None:
    key = unique("race")
    opened = await asyncio.gather(*(client.open_session(key) for _ in range(20)))
    assert len({o.session.id for o in opened}) == 1
    assert sum(o.created for o in opened) == 1


async def test_list_sessions_by_key_prefix(client: AsyncClient) -> None:
    prefix = unique("prefix")
    ids = [(await client.open_session(f"{prefix}/{n}")).session.id for n in range(3)]
    await client.open_session(unique("other"))
    rows = await client.list_sessions(key_prefix=prefix)
    assert [row.id for row in rows] == ids
    assert [row.key for row in rows] == [f"{prefix}/{n}" for n in range(3)]


async def test_a_deleted_session_frees_its_key(client: AsyncClient) -> None:
    key = unique("freed")
    first = await client.open_session(key)
    await client.delete_session(first.session.id)
    with pytest.raises(NotFound):
        await client.get_session(key=key)
    second = await client.open_session(key)
    assert second.created and second.session.id != first.session.id


async def test_checkpoints_by_namespace_and_external_id(client: AsyncClient) -> None:
    session_id = (await client.open_session(unique("ns"))).session.id
    root1 = await client.checkpoint(session_id, external_id="r1", state=1)
    root2 = await client.checkpoint(session_id, external_id="r2", parent_external_id="r1", state=2)
    child = await client.checkpoint(session_id, namespace="child:1", external_id="c1", state=3)
    # The same external id again stores nothing and answers the stored checkpoint.
    assert await client.checkpoint(session_id, external_id="r2", state="ignored") == root2

    record = await client.get_checkpoint(session_id=session_id, external_id="r2")
    assert (record.id, record.state, record.namespace) == (root2, 2, "")
    assert (record.external_id, record.parent_external_id, record.parent_id) == ("r2", "r1", root1)
    latest_root = await client.get_checkpoint(session_id=session_id)
    latest_child = await client.get_checkpoint(session_id=session_id, namespace="child:1")
    assert (latest_root.id, latest_child.id, latest_child.namespace) == (root2, child, "child:1")
    with pytest.raises(NotFound):
        await client.get_checkpoint(session_id=session_id, external_id="c1")  # Not in namespace "".
    with pytest.raises(NotFound):
        await client.checkpoint(session_id, external_id="r3", parent_external_id="missing")

    every = await client.list_checkpoints(session_id)
    assert [row.id for row in every] == [root1, root2, child]
    assert all(isinstance(row, CheckpointSummary) and not isinstance(row, Checkpoint) for row in every)
    children = await client.list_checkpoints(session_id, namespace="child:1")
    assert [(row.id, row.namespace, row.external_id) for row in children] == [(child, "child:1", "c1")]
    roots = await client.list_checkpoints(session_id, namespace="", order="desc")
    assert [row.external_id for row in roots] == ["r2", "r1"]


async def test_put_writes_first_wins_and_special_last_wins(client: AsyncClient) -> None:
    session_id = (await client.open_session(unique("writes"))).session.id
    # Writes may come before their checkpoint.
    stored = await client.put_writes(
        session_id,
        external_id="cp",
        task_id="t-2",
        task_path="b",
        writes=[(0, "messages", "first"), (-1, "__error__", "e1")],
    )
    assert stored == 2
    assert (
        await client.put_writes(
            session_id, external_id="cp", task_id="t-2", task_path="b", writes=[(0, "messages", "second")]
        )
        == 0
    )
    assert (
        await client.put_writes(
            session_id, external_id="cp", task_id="t-2", task_path="b", writes=[(-1, "__error__", "e2")]
        )
        == 1
    )
    await client.put_writes(
        session_id, external_id="cp", task_id="t-1", task_path="a", writes=[(1, "x", {"n": 1}), (0, "y", None)]
    )
    await client.put_writes(session_id, namespace="child", external_id="cp", task_id="t-9", writes=[(0, "z", 9)])
    await client.checkpoint(session_id, external_id="cp", state="s")

    record = await client.get_checkpoint(session_id=session_id, external_id="cp")
    # Ordered by (task_path, task_id, idx); another namespace's writes are not this checkpoint's.
    assert record.writes == [
        PendingWrite(task_id="t-1", task_path="a", idx=0, channel="y", value=None),
        PendingWrite(task_id="t-1", task_path="a", idx=1, channel="x", value={"n": 1}),
        PendingWrite(task_id="t-2", task_path="b", idx=-1, channel="__error__", value="e2"),
        PendingWrite(task_id="t-2", task_path="b", idx=0, channel="messages", value="first"),
    ]
    assert (await client.get_checkpoint(record.id)).writes == record.writes
    with pytest.raises(NotFound):
        await client.put_writes(str(uuid.uuid4()), external_id="cp", task_id="t", writes=[(0, "c", 1)])


async def test_full_listings_filtered_by_metadata_and_external_ids(client: AsyncClient) -> None:
    session_id = (await client.open_session(unique("filters"))).session.id
    for step in range(4):
        await client.checkpoint(
            session_id,
            external_id=f"e{step}",
            parent_external_id=f"e{step - 1}" if step else None,
            state={"step": step},
            metadata={"source": "input" if step % 2 == 0 else "loop", "step": step, "nested": {"a": [step]}},
        )
    await client.put_writes(session_id, external_id="e3", task_id="t", writes=[(0, "c", "v")])

    inputs = await client.list_checkpoints(session_id, metadata={"source": "input"}, order="desc")
    assert [row.external_id for row in inputs] == ["e2", "e0"]
    both = await client.list_checkpoints(session_id, metadata={"source": "loop", "step": 3})
    assert [row.external_id for row in both] == ["e3"]
    assert await client.list_checkpoints(session_id, metadata={"nested": {"a": [1]}}) != []
    assert await client.list_checkpoints(session_id, metadata={"source": "update"}) == []

    full = await client.list_checkpoints(session_id, order="desc", full=True)
    assert all(isinstance(row, Checkpoint) for row in full)
    assert [(row.external_id, row.state) for row in full] == [(f"e{n}", {"step": n}) for n in (3, 2, 1, 0)]
    assert [len(row.writes) for row in full] == [1, 0, 0, 0]

    before = await client.list_checkpoints(session_id, before="e2", order="desc", full=True)
    assert [row.external_id for row in before] == ["e1", "e0"]
    after = await client.list_checkpoints(session_id, after="e1")
    assert [row.external_id for row in after] == ["e2", "e3"]
    page = await client.list_checkpoints(session_id, before="e3", order="desc", limit=1, metadata={"source": "input"})
    assert [row.external_id for row in page] == ["e2"]
    with pytest.raises(NotFound):
        await client.list_checkpoints(session_id, before="no-such-id")


async def test_search_checkpoints_across_sessions(client: AsyncClient) -> None:
    run = unique("run")
    first = (await client.open_session(unique("search-a"))).session.id
    second = (await client.open_session(unique("search-b"))).session.id
    ids = [
        await client.checkpoint(first, external_id="a", metadata={"run_id": run}),
        await client.checkpoint(second, external_id="b", namespace="child", metadata={"run_id": run}),
        await client.checkpoint(first, external_id="c", metadata={"run_id": run}, state={"big": "x" * 100}),
    ]
    rows = await client.search_checkpoints(metadata={"run_id": run})
    assert [row.id for row in rows] == ids[::-1]
    assert [row.session_id for row in rows] == [first, second, first]
    full = await client.search_checkpoints(metadata={"run_id": run}, full=True, limit=1)
    assert [row.state for row in full] == [{"big": "x" * 100}]
    older = await client.search_checkpoints(metadata={"run_id": run}, before=full[0].sequence_number)
    assert [row.id for row in older] == ids[1::-1]
    children = await client.search_checkpoints(metadata={"run_id": run}, namespace="child")
    assert [row.id for row in children] == [ids[1]]


async def test_copy_session_into_a_key(client: AsyncClient) -> None:
    source = (await client.open_session(unique("copy-src"))).session.id
    await client.checkpoint(source, external_id="1", state=1, metadata={"m": 1}, message="one", tags=["t"])
    await client.checkpoint(source, external_id="2", parent_external_id="1", state=2)
    await client.checkpoint(source, namespace="child", external_id="1", state=3)
    await client.put_writes(source, external_id="2", task_id="t", writes=[(0, "c", "v")])
    target_key = unique("copy-dst")
    copied = await client.copy_session(source, key=target_key)
    assert copied.copied == 3 and copied.session.key == target_key
    target = copied.session.id
    rows = await client.list_checkpoints(target, full=True)
    assert [(r.namespace, r.external_id, r.state, r.parent_external_id) for r in rows] == [
        ("", "1", 1, None),
        ("", "2", 2, "1"),
        ("child", "1", 3, None),
    ]
    assert rows[0].message == "one" and rows[0].tags == ["t"] and rows[0].metadata == {"m": 1}
    assert rows[1].parent_id == rows[0].id  # The copy's parent is the copied parent.
    assert [w.value for w in rows[1].writes] == ["v"]
    # Again into the same key: nothing new is copied.
    assert (await client.copy_session(source, key=target_key)).copied == 0
    with pytest.raises(NotFound):
        await client.copy_session(str(uuid.uuid4()), key=unique("nowhere"))


async def test_delete_checkpoints_by_metadata(client: AsyncClient) -> None:
    run, other = unique("run"), unique("run")
    session_id = (await client.open_session(unique("delete-run"))).session.id
    for n in range(3):
        await client.checkpoint(session_id, external_id=f"d{n}", metadata={"run_id": run if n < 2 else other})
    await client.put_writes(session_id, external_id="d0", task_id="t", writes=[(0, "c", 1)])
    result = await client.delete_checkpoints(metadata={"run_id": run})
    assert (result.deleted, result.more) == (2, False)
    assert [row.external_id for row in await client.list_checkpoints(session_id)] == ["d2"]
    assert (await client.delete_checkpoints(metadata={"run_id": run}, session_id=session_id)).deleted == 0
    with pytest.raises(InvalidParams):
        await client.delete_checkpoints(metadata={})


async def test_compact_per_namespace_keeps_the_newest_of_each(client: AsyncClient) -> None:
    session_id = (await client.open_session(unique("prune"))).session.id
    for namespace in ("", "child"):
        for n in range(3):
            await client.checkpoint(session_id, namespace=namespace, external_id=f"{namespace}{n}")
    compaction = await client.compact(session_id, keep_recent=1, per_namespace=True)
    assert (compaction.removed, compaction.remaining) == (4, 2)
    assert [(r.namespace, r.external_id) for r in await client.list_checkpoints(session_id)] == [
        ("", "2"),
        ("child", "child2"),
    ]


async def test_events_of_writes_and_copies(client: AsyncClient) -> None:
    source = (await client.open_session(unique("events-src"))).session.id
    target_key = unique("events-dst")
    target = (await client.open_session(target_key)).session.id
    await client.checkpoint(source, external_id="e", state=1)
    async with client.subscribe(source) as source_events, client.subscribe(target) as target_events:
        await client.put_writes(source, namespace="ns", external_id="x", task_id="t", writes=[(0, "c", 1), (1, "d", 2)])
        await client.put_writes(source, namespace="ns", external_id="x", task_id="t", writes=[(0, "c", 1)])  # Nothing.
        copied = await client.copy_session(source, key=target_key)
        assert copied.session.id == target
        stored = await anext(source_events)
        assert stored.event_type == "writes_stored"
        assert {k: stored.data[k] for k in ("namespace", "external_id", "task_id", "stored")} == {
            "namespace": "ns",
            "external_id": "x",
            "task_id": "t",
            "stored": 2,
        }
        copy = await anext(target_events)  # One event for the copy, no checkpoint_created.
        assert (copy.event_type, copy.session_id) == ("session_copied", target)
        assert (copy.data["source_session_id"], copy.data["copied"]) == (source, 1)
        marker = await client.checkpoint(source, state="marker")  # The next event of each, in order.
        assert (await anext(source_events)).checkpoint_id == marker
        await client.put_writes(target, external_id="e", task_id="t2", writes=[(0, "c", 3)])
        assert (await anext(target_events)).event_type == "writes_stored"


async def test_delete_checkpoints_in_rounds_of_1024(start_server: StartServer) -> None:
    server = start_server("--durability", "async")
    async with AsyncClient.connect(server.url, timeout=STEP) as client:
        session_id = (await client.open_session("many")).session.id
        total = 1100
        for first in range(0, total, 100):
            await asyncio.gather(
                *(
                    client.checkpoint(session_id, external_id=f"m{n}", metadata={"run_id": "r"})
                    for n in range(first, min(first + 100, total))
                )
            )
        first_round = await client.delete_checkpoints(metadata={"run_id": "r"})
        assert (first_round.deleted, first_round.more) == (1024, True)
        second_round = await client.delete_checkpoints(metadata={"run_id": "r"})
        assert (second_round.deleted, second_round.more) == (total - 1024, False)
        assert (await client.get_session(session_id)).checkpoint_count == 0
