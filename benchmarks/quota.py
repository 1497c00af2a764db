"""A CPU quota for a process under test: a cgroup that lets it use a share of one core.

On a 2-core machine the load generator (one core) cannot offer five times the capacity of an
edge that owns the other core; capped to a quarter of a core, the edge's capacity falls to a
rate the generator can offer five times over. A short period (10 ms) keeps the pauses the
quota imposes (75 % of each period for a quarter) short next to what admission measures.

cgroup v1 (``cpu.cfs_period_us``/``cpu.cfs_quota_us``) and v2 (``cpu.max``); needs root.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Self

from benchmarks._support import BenchError

ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 10_000


class CpuQuota:
    """A cgroup limited to ``share`` of one core; :meth:`add` puts a process in it; leaving
    the ``with`` moves them out and removes it."""

    def __init__(self, share: float, name: str | None = None) -> None:
        if not 0 < share <= 1:
            raise BenchError("a CPU quota is a share of one core, in (0, 1]")
        self.share = share
        self.name = name or f"intake-bench-{os.getpid()}"
        self.v2 = (ROOT / "cgroup.controllers").exists()
        self.path = (ROOT if self.v2 else ROOT / "cpu") / self.name
        self._parent = self.path.parent

    def __enter__(self) -> Self:
        if os.geteuid() != 0:
            raise BenchError("a CPU quota needs root (a cgroup)")
        if not self._parent.is_dir():
            raise BenchError(f"no cpu cgroup controller at {self._parent}")
        self.path.mkdir(exist_ok=True)
        quota_us = round(self.share * PERIOD_US)
        if self.v2:
            (self.path / "cpu.max").write_text(f"{quota_us} {PERIOD_US}")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota_us))
        return self

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def throttled(self) -> dict[str, int]:
        """The kernel's throttling counters of the group (periods, throttled periods, time)."""
        stats = {}
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            stats[key] = int(value)
        return stats

    def __exit__(self, *_: object) -> None:
        procs = self.path / "cgroup.procs"
        if procs.exists():
            for pid in procs.read_text().split():
                with contextlib.suppress(OSError):  # it exited meanwhile
                    (self._parent / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            self.path.rmdir()
