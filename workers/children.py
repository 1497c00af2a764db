"""A worker process's start under ``intake supervise``: its log file, its session, its CPU
priority, and its death with the supervisor's."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

from core.status import HOLD_SIGNAL, RELEASE_SIGNAL


def open_log(log_dir: Path | None, name: str) -> IO[bytes] | None:
    """A worker's log file (appended to), or None: the worker writes to the supervisor's."""
    if log_dir is None:
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    return (log_dir / name).open("ab")


def _load_prctl() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def child_setup(nice: int) -> Callable[[], None]:
    """What runs in a worker before exec: a session of its own, :func:`_terminate_with_parent`,
    then ``nice``.

    The session is made here rather than with ``start_new_session``, because uvloop runs this
    function before libuv's own ``setsid``, and the order matters: where the kernel groups the
    scheduling of a session's processes (``kernel.sched_autogroup_enabled``, the default of
    Debian's kernels) a process's own nice value only orders it within that group, and every
    session competes with the same weight: each worker would weigh as much as the edge's whole
    session. So the worker's new session's group is niced too (``/proc/self/autogroup``, which
    a process may do to its own group; a kernel without it has the plain nice value)."""
    value = str(nice).encode()

    def setup() -> None:
        os.setsid()
        _terminate_with_parent()
        # Until the worker installs its own handlers, the supervisor's hold and release
        # signals are ignored, not fatal (an ignored signal stays ignored across exec).
        signal.signal(HOLD_SIGNAL, signal.SIG_IGN)
        signal.signal(RELEASE_SIGNAL, signal.SIG_IGN)
        if nice:
            os.nice(nice)
            try:
                fd = os.open("/proc/self/autogroup", os.O_WRONLY)
            except OSError:
                return
            try:
                os.write(fd, value)
            except OSError:
                pass
            finally:
                os.close(fd)

    return setup


def _terminate_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the supervisor dies, even by
    ``kill -9``, so that no worker outlives it unsupervised. Only calls a function loaded
    beforehand: nothing here may take a lock."""
    if callable(_PRCTL):
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)
