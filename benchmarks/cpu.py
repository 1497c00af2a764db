"""Where the machine's CPU went during a benchmark, by role (the edge, each worker kind, the
simulators, PostgreSQL, RabbitMQ, the generator, everybody else), from ``/proc``."""

from __future__ import annotations

import collections
import os
from pathlib import Path


class MachineCpu:
    """The whole machine's CPU busy share (all cores, every process, ours and others') between
    two calls of :meth:`share`, from /proc/stat."""

    def __init__(self) -> None:
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[float, float]:
        fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        total = sum(fields[:8])
        return total - idle, total

    def share(self) -> float | None:
        (busy0, total0), (busy, total) = self._last, self._read()
        self._last = (busy, total)
        return round((busy - busy0) / (total - total0), 3) if total > total0 else None


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
EXITED = "exited processes of ours"
OTHERS = "others (other users, kernel)"


def cpu_by_role(me: str = "benchmark (this process)") -> dict[str, float]:
    """CPU seconds so far of the processes on this machine, by role: this benchmark (the load
    generator), each of its descendants by its ``intake`` command (``edge``, ``simulate``,
    ``supervise``, ``worker <kind>``, summed over the processes of a kind), PostgreSQL and
    RabbitMQ (all their processes: shared with other clients), and the machine in total
    (``machine``, from /proc/stat). A process of ours that exited counts under ``EXITED`` once
    its parent reaped it (a worker the supervisor stopped)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    names: dict[int, str] = {}
    reaped: dict[int, float] = {}  # CPU of the children a process has reaped
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                text = file.read()
        except OSError:
            continue
        pid = int(entry)
        fields = text.rpartition(")")[2].split()
        names[pid] = text[text.find("(") + 1 : text.rfind(")")]
        parents[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        reaped[pid] = (int(fields[13]) + int(fields[14])) / _CLOCK_TICKS
    me_pid = os.getpid()
    totals: collections.defaultdict[str, float] = collections.defaultdict(float)
    for pid, seconds in cpu.items():
        role = {"postgres": "postgres", "beam.smp": "rabbitmq"}.get(names[pid])
        if role is None:
            ancestor, depth = parents.get(pid, 0), 0
            while ancestor not in (0, 1, me_pid) and depth < 8:
                ancestor, depth = parents.get(ancestor, 0), depth + 1
            if pid == me_pid:
                role = me
            elif ancestor == me_pid:
                role = _intake_role(pid)
        if role is not None:
            totals[role] += seconds
            if pid == me_pid or role not in ("postgres", "rabbitmq"):
                totals[EXITED] += reaped[pid]
    with open("/proc/stat") as file:
        values = [float(x) for x in file.readline().split()[1:]]
    totals["machine"] = (sum(values[:8]) - values[3] - values[4]) / _CLOCK_TICKS
    return dict(totals)


def _intake_role(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            argv = file.read().decode(errors="replace").split("\0")
    except OSError:
        return "other descendants"
    if any(arg.endswith("benchmarks.loadgen") for arg in argv):
        return "load generator"
    if "cli" in argv:
        words = argv[argv.index("cli") + 1 :]
        return " ".join(words[:2]) if words[:1] == ["worker"] else (words[0] if words else "?")
    return "other descendants"


def cores_used(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, float]:
    """Cores used per role between two :func:`cpu_by_role` snapshots; ``OTHERS`` is the
    machine's total less all of ours (other users' processes, the kernel's own work). A role
    whose process exited in between shows less (its CPU moved to ``EXITED``) and is left out
    when it went negative; the sum of ours counts it anyway."""
    if seconds <= 0:
        return {}
    roles = set(before) | set(after)
    delta = {role: (after.get(role, 0.0) - before.get(role, 0.0)) / seconds for role in roles}
    ours = sum(v for k, v in delta.items() if k != "machine")
    used = {role: round(v, 2) for role, v in delta.items() if v > 0.005}
    if "machine" in delta:
        used[OTHERS] = round(max(0.0, delta["machine"] - ours), 2)
    return dict(sorted(used.items(), key=lambda item: -item[1]))
