"""LangGraph's own conformance suite (langgraph-checkpoint-conformance) against the real server.

Every capability is detected and run, for the asyncio saver and for the
synchronous one (whose ``a*`` methods hop onto its client's loop thread).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from conftest import Server
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES
from langgraph.checkpoint.conformance.report import CapabilityReport

from checkpointd.langgraph import AsyncCheckpointdSaver, CheckpointdSaver

TESTS = 81
"""The tests of langgraph-checkpoint-conformance 0.0.2, all capabilities."""


def assert_full(report: CapabilityReport) -> None:
    """Every capability detected, every test passed: 81 of 81."""
    report.print_report()  # Shown by pytest when the test fails.
    failures = [failure for result in report.results.values() for failure in result.failures]
    assert failures == []
    assert {name for name, result in report.results.items() if result.detected} == {c.value for c in ALL_CAPABILITIES}
    assert report.conformance_level() == "FULL"
    assert sum(result.tests_passed for result in report.results.values()) == TESTS


async def test_async_saver_passes_the_whole_conformance_suite(server: Server) -> None:
    @checkpointer_test(name="AsyncCheckpointdSaver")
    async def saver() -> AsyncIterator[AsyncCheckpointdSaver]:
        async with AsyncCheckpointdSaver.from_conn_string(server.url) as each:
            yield each

    assert_full(await validate(saver))


async def test_sync_saver_passes_the_whole_conformance_suite(server: Server) -> None:
    @checkpointer_test(name="CheckpointdSaver")
    async def saver() -> AsyncIterator[CheckpointdSaver]:
        with CheckpointdSaver.from_conn_string(server.url) as each:
            yield each

    assert_full(await validate(saver))
