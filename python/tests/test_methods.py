"""Every protocol method through AsyncClient, against the real server."""

from __future__ import annotations

from datetime import UTC

from checkpointd import (
    Annotation,
    AsyncClient,
    Checkpoint,
    CheckpointSummary,
    Compaction,
    RetentionPolicy,
    Session,
    SessionDetails,
)


async def test_create_and_get_session(client: AsyncClient) -> None:
    session_id = await client.create_session("agent-7", metadata={"model": "x"})
    session = await client.get_session(session_id)
    assert isinstance(session, SessionDetails)
    assert (session.id, session.name, session.metadata) == (session_id, "agent-7", {"model": "x"})
    assert (session.checkpoint_count, session.last_sequence, session.retention) == (0, None, None)
    assert session.created_at.tzinfo == UTC

    unnamed = await client.get_session(await client.create_session())
    assert unnamed.name == "unnamed"


async def test_checkpoint_round_trip(client: AsyncClient) -> None:
    session_id = await client.create_session("round-trip")
    parent = await client.checkpoint(session_id, state={"step": 1})
    state = {"step": 2, "text": "héllo", "list": [1, 2.5, None, True], "nested": {"a": {"b": []}}}
    checkpoint_id = await client.checkpoint(
        session_id,
        state=state,
        message="step 2",
        tags=["plan", "plan", "tool"],
        metadata={"source": "test"},
        parent_id=parent,
        trigger="auto:tool_call",
    )
    record = await client.get_checkpoint(checkpoint_id)
    assert isinstance(record, Checkpoint)
    assert record.id == checkpoint_id and record.session_id == session_id
    assert (record.state, record.message, record.metadata) == (state, "step 2", {"source": "test"})
    assert record.tags == ["plan", "tool"]
    assert (record.parent_id, record.trigger, record.has_notes, record.annotations) == (
        parent,
        "auto:tool_call",
        False,
        [],
    )
    assert len(record.checksum) == 8

    restored = await client.restore(session_id, checkpoint_id)
    assert (restored.checkpoint_id, restored.session_id, restored.state) == (checkpoint_id, session_id, state)
    assert restored.sequence_number == record.sequence_number

    defaults = await client.get_checkpoint(await client.checkpoint(session_id))
    assert (defaults.state, defaults.message, defaults.trigger, defaults.tags) == (None, "Checkpoint", "manual", [])


async def test_list_checkpoints_pages(client: AsyncClient) -> None:
    session_id = await client.create_session("pages")
    ids = [await client.checkpoint(session_id, message=f"m{i}", tags=["even"] if i % 2 == 0 else []) for i in range(5)]

    first = await client.list_checkpoints(session_id, limit=2)
    assert all(isinstance(row, CheckpointSummary) for row in first)
    assert [row.id for row in first] == ids[:2]
    rest = await client.list_checkpoints(session_id, after=first[-1].sequence_number)
    assert [row.id for row in rest] == ids[2:]

    newest = await client.list_checkpoints(session_id, order="desc", limit=2)
    assert [row.id for row in newest] == [ids[4], ids[3]]
    older = await client.list_checkpoints(session_id, order="desc", before=newest[-1].sequence_number)
    assert [row.id for row in older] == [ids[2], ids[1], ids[0]]

    tagged = await client.list_checkpoints(session_id, tag="even")
    assert [row.message for row in tagged] == ["m0", "m2", "m4"]


async def test_annotate(client: AsyncClient) -> None:
    session_id = await client.create_session("notes")
    checkpoint_id = await client.checkpoint(session_id)
    note = await client.annotate(checkpoint_id, "looks wrong", severity="warning")
    assert isinstance(note, Annotation)
    assert (note.checkpoint_id, note.note, note.severity) == (checkpoint_id, "looks wrong", "warning")
    assert (await client.annotate(checkpoint_id, "fine")).severity == "info"

    record = await client.get_checkpoint(checkpoint_id)
    assert record.has_notes
    assert record.annotations[0] == note
    assert [a.note for a in record.annotations] == ["looks wrong", "fine"]


async def test_delete_checkpoint(client: AsyncClient) -> None:
    session_id = await client.create_session("delete")
    first = await client.checkpoint(session_id)
    second = await client.checkpoint(session_id)
    await client.delete_checkpoint(first)
    await client.delete_checkpoint(second, session_id=session_id)
    assert await client.list_checkpoints(session_id) == []


async def test_compact_and_retention(client: AsyncClient) -> None:
    session_id = await client.create_session("compact")
    for i in range(6):
        await client.checkpoint(session_id, tags=["milestone"] if i == 0 else [])
    assert await client.compact(session_id, keep_recent=2, preserve_tags=["milestone"]) == Compaction(
        removed=3, remaining=3
    )

    policy = await client.set_retention(session_id, keep_recent=1)
    assert policy == RetentionPolicy(keep_recent=1, preserve_tags=[])
    assert (await client.get_session(session_id)).retention == policy
    newest = await client.checkpoint(session_id)
    assert [row.id for row in await client.list_checkpoints(session_id)] == [newest]

    assert await client.set_retention(session_id) is None
    assert (await client.get_session(session_id)).retention is None


async def test_list_and_delete_sessions(client: AsyncClient) -> None:
    ids = [await client.create_session(f"s{i}") for i in range(3)]
    await client.checkpoint(ids[1])
    everything: list[Session] = []
    after: str | None = None
    while page := await client.list_sessions(limit=2, after=after):
        everything += page
        after = page[-1].id
    mine = [s for s in everything if s.id in ids]
    assert [s.name for s in mine] == ["s0", "s1", "s2"]
    assert [s.checkpoint_count for s in mine] == [0, 1, 0]
    assert mine[1].last_sequence is not None

    await client.delete_session(ids[0])
    assert ids[0] not in [s.id for s in await client.list_sessions()]


async def test_validate(client: AsyncClient) -> None:
    session_id = await client.create_session("validate")
    await client.checkpoint(session_id, state=[1, 2, 3])
    report = await client.validate(session_id)
    assert (report.invalid, report.invalid_ids) == (0, [])
    assert report.valid >= 1
    assert (await client.validate()).valid >= report.valid


async def test_metrics_and_health(client: AsyncClient) -> None:
    before = await client.metrics()
    session_id = await client.create_session("metrics")
    await client.checkpoint(session_id)
    after = await client.metrics()
    assert after.total_sessions_created == before.total_sessions_created + 1
    assert after.global_sequence == before.global_sequence + 1
    assert after.event_sequence == before.event_sequence + 1
    assert after.connections >= 1

    health = await client.health()
    assert health.healthy and health.durability == "sync"
    assert health.format_version == 4 and health.max_connections == 1024
    assert health.space is not None
    assert health.space.bytes_on_disk == health.space.live_bytes + health.space.dead_bytes
    # Servers that report their request limit are believed; today's do not.
    assert client.max_request_bytes == (health.max_message_bytes or 16 * 1024 * 1024)


async def test_raw_call(client: AsyncClient) -> None:
    session_id = await client.call("create_session", {"name": "raw"})
    assert (await client.call("get_session", {"session_id": session_id}))["name"] == "raw"
    assert await client.call("authenticate", {"token": "ignored without a configured token"}) == {"authenticated": True}
