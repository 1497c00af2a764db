"""The cluster's server processes, started detached (a session of their own, outliving the
command that started them) and remembered while this process runs, so that the ones that exit
are reaped (no zombies) and none is dropped while it still runs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

_children: list[subprocess.Popen[bytes]] = []


def start(argv: list[str], log: Path, **options: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` with its output appended to ``log``."""
    reap()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **options,
        )
    _children.append(process)
    return process


def reap() -> None:
    """Collect the children that have exited."""
    _children[:] = [p for p in _children if p.poll() is None]


def stop_all(timeout_s: float = 30.0) -> None:
    """Stop every child started here that still runs, with its session (SIGTERM, SIGKILL
    after ``timeout_s``), and reap them all. For a process that must leave nothing behind when
    it ends, such as a test run that restarted a node (``intake cluster down``, run apart,
    stops the servers but cannot reap them); ``intake cluster up`` leaves its servers running
    on purpose and does not call it."""
    reap()
    for process in _children:
        _signal_session(process, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in _children:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_session(process, signal.SIGKILL)
            process.wait(30)
    _children.clear()


def _signal_session(process: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    """``signum`` to the process group ``process`` leads (its session's: :func:`start`). Its
    pid, and so the group's id, cannot be another's while it is not reaped."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
