"""The accept path first: verification is held back while an edge on this machine is short of
CPU: while it sheds, and from the moment its loop is late, before it has to shed.

On a machine that runs the edges and the workers together (``intake supervise`` beside
``intake edge``), a registration waiting for the CPU is worth more than a verification: the
verification can wait in its queue, the person at the edge cannot. Nice values order the CPU
between processes, but not the work they cause elsewhere: a lane's PostgreSQL queries and
RabbitMQ deliveries run in those servers' processes, at full priority. So while an edge sheds
or its loop is late (its status file says so; late is CoDel's first stage, a queue that has not
emptied for half an interval, :meth:`intake.admission.QueueDelayRule.late`), the supervisor

- sends the dispatcher and the verification lanes :data:`~core.status.HOLD_SIGNAL`: they take
  no new work and finish what they hold, so their PostgreSQL and RabbitMQ work stops with them
  (the tasks wait in the outbox and the lane queues, where nothing is lost);
- renices them to 19, the lowest priority, their sessions' scheduling groups too;
- starts no new verification workers (the persist worker still scales: it drains what the
  edges accepted);

and undoes it once no edge has shed or been late for :data:`RELEASE_AFTER_S`. Edges write their
status files into ``INTAKE_EDGE_STATUS_DIR`` (``edge-<pid>.json``, :mod:`intake.gate`); the same
setting tells the supervisor where to look.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

from core.status import HOLD_SIGNAL, RELEASE_SIGNAL, read_status

log = logging.getLogger(__name__)

# An edge status file older than this is an edge that stopped: it no longer counts.
FRESH_S = 3.0
# Verification is let go once no edge has shed or been late for this long.
RELEASE_AFTER_S = 5.0
HELD_NICE = 19


def edges_pressed(directory: Path, now_s: float) -> bool:
    """Whether a fresh edge status file in ``directory`` says that edge sheds or is late."""
    for path in directory.glob("edge-*.json"):
        status = read_status(path)
        if status is None:
            continue
        at = status.get("at")
        if not isinstance(at, int | float) or now_s - at > FRESH_S:
            continue
        if status.get("shedding") or status.get("late"):
            return True
    return False


class EdgePressure:
    """Whether verification is held back now, from the edges' status files, with hysteresis:
    held at the first shed seen, let go after :data:`RELEASE_AFTER_S` without one."""

    def __init__(self, directory: str) -> None:
        self._directory = Path(directory) if directory else None
        self._last_shed_s = -float("inf")
        self.held = False

    @property
    def configured(self) -> bool:
        """Whether there are edges' status files to read at all."""
        return self._directory is not None

    def update(self, now_s: float | None = None) -> bool:
        """Read the edges' files; return whether :attr:`held` changed."""
        if self._directory is None:
            return False
        now = time.time() if now_s is None else now_s
        if edges_pressed(self._directory, now):
            self._last_shed_s = now
        held = now - self._last_shed_s < RELEASE_AFTER_S
        changed, self.held = held != self.held, held
        if changed:
            log.warning(
                "an edge sheds or is late: verification held back"
                if held
                else "edges keep up: verification goes on"
            )
        return changed


def signal_all(pids: Iterable[int], held: bool) -> list[int]:
    """Ask the processes to hold back (``held``) or go on; return those asked. A process that
    exited is skipped, and so is one that does not handle the signal yet (still starting): its
    default action would kill it. The supervisor asks again every second while held, so a
    worker that was starting is held as soon as it can be."""
    signum = HOLD_SIGNAL if held else RELEASE_SIGNAL
    asked = []
    for pid in pids:
        if not handles(pid, signum):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
            asked.append(pid)
    return asked


def handles(pid: int, signum: int) -> bool:
    """Whether the process catches or ignores ``signum`` (Linux: ``SigCgt`` and ``SigIgn`` in
    ``/proc/<pid>/status``). A worker started by the supervisor gets these signals ignored
    before its exec, but uvloop's process spawning (libuv) resets every disposition in the
    child after that, so until the worker installs its handlers the signal would end it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    masks = dict(
        line.split(":", 1) for line in status.splitlines() if line.startswith(("SigCgt", "SigIgn"))
    )
    try:
        bits = int(masks["SigCgt"], 16) | int(masks["SigIgn"], 16)
    except (KeyError, ValueError):
        return False
    return bool(bits >> (signum - 1) & 1)


def renice(pids: Iterable[int], nice: int) -> None:
    """Set the processes' nice value and their sessions' scheduling groups' (lowering it back
    needs the privilege to; without it they stay where they are, and a warning says so)."""
    for pid in pids:
        try:
            os.setpriority(os.PRIO_PROCESS, pid, nice)
        except ProcessLookupError:
            continue
        except PermissionError:
            log.warning("cannot renice worker %s to %s: not permitted", pid, nice)
            continue
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/autogroup").write_text(str(nice))
