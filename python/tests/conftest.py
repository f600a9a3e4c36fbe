"""Fixtures: the real ``checkpointd`` binary as a child process.

The binary is ``$CHECKPOINTD_BIN``, else ``<repo>/target/release/checkpointd``
(``cargo build --release`` makes it); these tests never build it.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Protocol

import pytest

from checkpointd import AsyncClient

REPO = Path(__file__).resolve().parents[2]
STEP = 15.0
"""Upper bound in seconds for a start, a stop, one request or one awaited event."""
READY_PREFIX = "listening on ws://"

# Environment variables the binary reads: the caller's must not change a test.
SERVER_ENV = (
    "CHECKPOINTD_DATA_DIR",
    "CHECKPOINTD_LISTEN",
    "CHECKPOINTD_TOKEN",
    "CHECKPOINTD_MAX_CONNECTIONS",
    "CHECKPOINTD_MAX_MESSAGE_BYTES",
    "CHECKPOINTD_DURABILITY",
    "CHECKPOINTD_EVENT_RETENTION",
    "RUST_LOG",
    "RUST_BACKTRACE",
)


def server_binary() -> Path:
    """The binary under test; a clear failure when it was not built."""
    path = Path(os.environ.get("CHECKPOINTD_BIN") or REPO / "target" / "release" / "checkpointd")
    if not path.is_file():
        pytest.fail(f"no checkpointd binary at {path}: run `cargo build --release` or set CHECKPOINTD_BIN")
    return path


def _stopped(task: Path) -> bool:
    """Whether the thread /proc/PID/task/TID is stopped by a signal (state ``T``)."""
    try:
        stat = (task / "stat").read_text()
    except FileNotFoundError:  # The thread has exited.
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def _forward_lines(stream: IO[str], lines: queue.SimpleQueue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


class Server:
    """One checkpointd process serving ``data_dir`` on loopback.

    It first listens on a free port; :meth:`restart` comes back on the same
    port so that clients can reconnect to the same URL.
    """

    def __init__(self, data_dir: Path, *args: str, token: str | None = None) -> None:
        self.data_dir = data_dir
        self.args = args
        self.token = token
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self._stderr_path = data_dir.parent / f"{data_dir.name}.stderr"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> Server:
        """Starts the process and waits for its ready line."""
        assert self.process is None, "already running"
        env = {name: value for name, value in os.environ.items() if name not in SERVER_ENV}
        if self.token is not None:
            env["CHECKPOINTD_TOKEN"] = self.token
        command = [
            str(server_binary()),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--data-dir",
            str(self.data_dir),
            *self.args,
        ]
        with open(self._stderr_path, "a") as stderr:
            self.process = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
        lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        assert self.process.stdout is not None
        threading.Thread(target=_forward_lines, args=(self.process.stdout, lines), daemon=True).start()
        try:
            while True:
                line = lines.get(timeout=STEP)
                if line is None:
                    raise RuntimeError(f"checkpointd exited before it was ready: {self.stderr()}")
                if line.startswith(READY_PREFIX):
                    self.port = int(line.removeprefix(READY_PREFIX).rsplit(":", 1)[1])
                    return self
        except BaseException:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye to clients."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), SIGKILL if it does not exit in time."""
        self._end(signal.SIGTERM)

    def restart(self) -> None:
        """Kills the process and starts a new one on the same directory and port."""
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the server holds its connections but answers nothing.

        Returns once every thread of the process is stopped (signals are
        delivered asynchronously).
        """
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        tasks = Path(f"/proc/{self.process.pid}/task")
        deadline = time.monotonic() + STEP
        while not all(_stopped(task) for task in tasks.iterdir()):
            assert time.monotonic() < deadline, "checkpointd did not stop on SIGSTOP"

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stderr(self) -> str:
        return self._stderr_path.read_text() if self._stderr_path.exists() else ""

    def _end(self, sig: signal.Signals) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(sig)
        process.send_signal(signal.SIGCONT)  # A paused process must run to exit on SIGTERM.
        try:
            process.wait(STEP)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STEP)
        assert process.stdout is not None
        process.stdout.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server shared by the tests that need nothing special of it."""
    shared = Server(tmp_path_factory.mktemp("shared") / "data").start()
    yield shared
    shared.stop()


class StartServer(Protocol):
    def __call__(self, *args: str, token: str | None = None) -> Server: ...


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Starts a server of the test's own, with extra arguments; all are killed after the test."""
    started: list[Server] = []

    def start(*args: str, token: str | None = None) -> Server:
        started.append(Server(tmp_path / f"data{len(started)}", *args, token=token))
        return started[-1].start()

    yield start
    for each in started:
        each.kill()


@pytest.fixture
async def client(server: Server) -> AsyncIterator[AsyncClient]:
    """An asyncio client of the shared server."""
    async with AsyncClient.connect(server.url, timeout=STEP) as connected:
        yield connected
