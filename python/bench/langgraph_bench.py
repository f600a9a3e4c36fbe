"""LangGraph on checkpointd against LangGraph on SQLite: steps per second, side by side.

One graph, a loop of steps; each step replaces a large text channel and
appends to a list. It runs with ``AsyncSqliteSaver`` (langgraph-checkpoint-
sqlite: WAL, SQLite's default ``synchronous=FULL``, so one fsync of the WAL
per commit) and with ``AsyncCheckpointdSaver`` (a checkpointd started here
with ``--durability sync``, its default: an acknowledged write is fsynced),
for each combination of

- state size: the text channel, 4 KiB or 256 KiB;
- concurrency: 1 or 8 LangGraph threads running at once (asyncio tasks on
  one event loop, one saver);
- LangGraph's durability: its default (``"async"``: a checkpoint is saved
  while the next step runs) or ``"sync"`` (each step waits for its save).

LangGraph's ``InMemorySaver`` runs the same cells as a reference: it stores
nothing durably, so its rate is what LangGraph's own Python costs, the
ceiling of any saver in one process.

Each cell is the median of ``--repeats`` runs; a run is ``--steps`` steps on
each LangGraph thread (new threads each run), timed from the first
``ainvoke`` to the last one's return. The savers take turns run by run. Both data directories are in one
temporary directory (``--dir``), on the same file system.

Run (from the repository root, after ``cargo build --release --bin checkpointd``)::

    python3 -m venv target/benchenv
    target/benchenv/bin/pip install -c python/constraints.txt './python[test,langgraph,bench]'
    target/benchenv/bin/python python/bench/langgraph_bench.py

``--profile`` runs one configuration under cProfile instead and prints
where the Python side spends its time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from checkpointd.langgraph import AsyncCheckpointdSaver

REPO = Path(__file__).resolve().parents[2]
# The benchmark's graph is the tests' loop graph (python/tests/graphs.py).
sys.path.insert(0, str(REPO / "python" / "tests"))
from graphs import loop_graph  # noqa: E402
KIB = 1024
READY_PREFIX = "listening on ws://"
START_TIMEOUT = 30.0
"""Seconds to wait for checkpointd's ready line."""


@asynccontextmanager
async def checkpointd_server(binary: Path, data_dir: Path) -> AsyncIterator[str]:
    """A checkpointd on a free loopback port with ``--durability sync``; yields its URL."""
    process = subprocess.Popen(
        [str(binary), "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), "--durability", "sync"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), START_TIMEOUT)
        if not line.startswith(READY_PREFIX):
            raise RuntimeError(f"checkpointd did not start: {line!r}")
        yield "ws://" + line.removeprefix(READY_PREFIX).strip()
    finally:
        process.terminate()
        process.wait(START_TIMEOUT)


async def run_once(
    saver: BaseCheckpointSaver[Any], *, threads: int, steps: int, text_bytes: int, durability: str | None
) -> float:
    """Runs the loop graph on ``threads`` new LangGraph threads at once; returns steps per second."""
    graph = loop_graph(saver, steps=steps, text_bytes=text_bytes)
    options: dict[str, Any] = {} if durability is None else {"durability": durability}
    run = uuid.uuid4().hex

    async def one(n: int) -> None:
        config = {"configurable": {"thread_id": f"{run}-{n}"}}
        result = await graph.ainvoke({"text": "", "steps": []}, config, **options)
        assert len(result["steps"]) == steps

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(threads)))
    return threads * steps / (time.perf_counter() - started)


async def measure(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Every cell; within a cell the savers take turns, run after run, so that a change
    in the machine's load meets them alike."""
    rows: list[dict[str, Any]] = []
    async with (
        checkpointd_server(Path(args.binary), work / "checkpointd") as url,
        AsyncSqliteSaver.from_conn_string(str(work / "sqlite.db")) as sqlite,
        AsyncCheckpointdSaver.from_conn_string(url) as checkpointd,
    ):
        savers: dict[str, BaseCheckpointSaver[Any]] = {
            "sqlite": sqlite,
            "checkpointd": checkpointd,
            # No storage at all: what LangGraph itself costs, the ceiling of any saver here.
            "memory": InMemorySaver(),
        }
        for size in args.sizes:
            steps = args.steps if size <= 16 else max(5, args.steps // 3)
            for threads in args.threads:
                for durability in args.durability:
                    mode = None if durability == "default" else durability
                    for saver in savers.values():  # Warm-up.
                        await run_once(saver, threads=threads, steps=2, text_bytes=size * KIB, durability=mode)
                    rates: dict[str, list[float]] = {name: [] for name in savers}
                    for _ in range(args.repeats):
                        for name, saver in savers.items():
                            rate = await run_once(
                                saver, threads=threads, steps=steps, text_bytes=size * KIB, durability=mode
                            )
                            rates[name].append(rate)
                        if isinstance(savers["memory"], InMemorySaver):
                            savers["memory"] = InMemorySaver()  # Keeps its memory from growing.
                    row: dict[str, Any] = {
                        "size_kib": size,
                        "threads": threads,
                        "durability": durability,
                        "steps": steps,
                    }
                    for name, runs in rates.items():
                        row[name] = statistics.median(runs)
                        row[f"{name}_runs"] = [round(r, 1) for r in runs]
                    row["ratio"] = row["checkpointd"] / row["sqlite"]
                    row["load_average"] = os.getloadavg()[0]
                    rows.append(row)
                    print(
                        f"{size:>4} KiB  {threads} thread(s)  durability={durability:<8}"
                        f"  sqlite {row['sqlite']:8.1f}  checkpointd {row['checkpointd']:8.1f}  x{row['ratio']:.2f}"
                        f"  (InMemorySaver {row['memory']:8.1f}; load {row['load_average']:.1f})",
                        file=sys.stderr,
                        flush=True,
                    )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| state | LangGraph threads | LangGraph durability"
        " | SqliteSaver steps/s | checkpointd steps/s | checkpointd / SQLite | InMemorySaver steps/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['size_kib']} KiB | {row['threads']} | {row['durability']} | {row['sqlite']:.0f}"
            f" | {row['checkpointd']:.0f} | {row['ratio']:.2f}x | {row['memory']:.0f} |"
        )
    return "\n".join(lines)


async def profile(args: argparse.Namespace, work: Path) -> None:
    """One configuration under cProfile: where the Python side spends its time with checkpointd."""
    size, threads = args.sizes[0], args.threads[0]
    durability = None if args.durability[0] == "default" else args.durability[0]
    async with (
        checkpointd_server(Path(args.binary), work / "checkpointd") as url,
        AsyncCheckpointdSaver.from_conn_string(url) as saver,
    ):
        await run_once(saver, threads=threads, steps=2, text_bytes=size * KIB, durability=durability)
        profiler = cProfile.Profile()
        profiler.enable()
        rate = await run_once(saver, threads=threads, steps=args.steps, text_bytes=size * KIB, durability=durability)
        profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats("checkpointd|websockets", 25)
    print(f"{size} KiB, {threads} thread(s), durability={args.durability[0]}: {rate:.1f} steps/s\n{out.getvalue()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--binary", default=os.environ.get("CHECKPOINTD_BIN", REPO / "target" / "release" / "checkpointd")
    )
    parser.add_argument("--dir", help="where the temporary data directories go (default: the system's temp dir)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 256], help="text channel sizes, KiB")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8], help="LangGraph threads at once")
    parser.add_argument(
        "--durability", nargs="+", default=["default", "sync"], choices=["default", "sync", "async", "exit"]
    )
    parser.add_argument(
        "--steps", type=int, default=30, help="steps per LangGraph thread and run (a third of it above 16 KiB)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="runs per cell; the cell is their median")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--profile", action="store_true", help="profile the first configuration on checkpointd instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="langgraph-bench-", dir=args.dir) as tmp:
        if args.profile:
            asyncio.run(profile(args, Path(tmp)))
            return
        rows = asyncio.run(measure(args, Path(tmp)))
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
