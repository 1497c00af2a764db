"""The cluster's processes (cluster.processes): a process that restarted a server stops and
reaps it, with everything in its session, before it ends. No cluster here: ``sh`` stands in
for a server with a child of its own."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import processes
from tests.support.waiting import eventually

# A server and its child (whose pid it prints), in one session.
SERVER = "sleep 600 & echo $!; wait"


@pytest.fixture(autouse=True)
def own_children(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """These tests' children only: a node another test of this run restarted is left alone."""
    monkeypatch.setattr(processes, "_children", [])
    yield
    processes.stop_all(timeout_s=5)  # what a failed test left


def _running(pid: int) -> bool:
    """``pid`` exists and is no zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _gone(pid: int) -> None:
    asyncio.run(eventually(lambda: _running(pid), lambda running: not running))


def _child_of(log: Path) -> int:
    return int(asyncio.run(eventually(log.read_text, lambda text: text.endswith("\n"))))


def test_stop_all_stops_a_server_and_its_child_with_sigterm(tmp_path: Path) -> None:
    server = processes.start(["sh", "-c", SERVER], tmp_path / "server.log")
    child = _child_of(tmp_path / "server.log")
    assert _running(server.pid)
    assert _running(child)

    processes.stop_all(timeout_s=120)

    assert server.returncode == -signal.SIGTERM
    _gone(child)  # with it (then reaped by whoever inherited it)


def test_stop_all_kills_a_server_deaf_to_sigterm(tmp_path: Path) -> None:
    # Deaf, and so is its child: an ignored signal stays ignored across exec.
    server = processes.start(["sh", "-c", f"trap '' TERM; {SERVER}"], tmp_path / "server.log")
    child = _child_of(tmp_path / "server.log")

    processes.stop_all(timeout_s=0.5)

    assert server.returncode == -signal.SIGKILL
    _gone(child)
    processes.stop_all(timeout_s=0.5)  # nothing left: a second call has nothing to do


def test_stop_all_reaps_a_server_stopped_by_someone_else(tmp_path: Path) -> None:
    """As ``intake cluster down`` does, from a process of its own that cannot reap it."""
    server = processes.start(["sleep", "600"], tmp_path / "server.log")
    os.kill(server.pid, signal.SIGTERM)
    _gone(server.pid)
    assert server.returncode is None  # a zombie, until reaped

    processes.stop_all()

    assert server.returncode == -signal.SIGTERM
    assert not Path(f"/proc/{server.pid}").exists()
