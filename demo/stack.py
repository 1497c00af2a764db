"""A local stack of the system's own processes, started as an operator would (``intake ...``),
each with its log in a file, stopped in reverse order with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from core.settings import Settings


class Stack:
    """Processes started with :meth:`start`, all stopped by :meth:`stop` (or the ``with``)."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self._processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self,
        name: str,
        *args: str,
        settings: Settings | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``intake <args>`` (``env``: variables of its own besides the settings)."""
        argv = [sys.executable, "-m", "cli", *args]
        return self.start_program(name, argv, settings=settings, env=env)

    def start_program(
        self,
        name: str,
        argv: list[str],
        settings: Settings | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start another program (e.g. Prometheus) the same way."""
        env = {**os.environ, **(settings or self.settings).to_env(), **(env or {})}
        with (self.log_dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                # A session of its own, as a service has: where the kernel schedules sessions
                # as groups (sched_autogroup), the edges would otherwise share one group's
                # share of the CPU with each other and with everything else started here.
                start_new_session=True,
            )
        self._processes.append((name, process))
        return process

    def forget(self, process: subprocess.Popen[bytes]) -> None:
        """No longer track ``process`` (its caller stopped it on purpose)."""
        self._processes = [(n, p) for n, p in self._processes if p is not process]

    def dead(self) -> list[str]:
        """Names of processes that exited on their own."""
        return [name for name, p in self._processes if p.poll() is not None]

    def cpu_seconds(self) -> float:
        """CPU time used so far by the stack's processes and every descendant still running
        (the workers ``intake supervise`` starts), from ``/proc``; 0 where there is no ``/proc``."""
        children: dict[int, list[int]] = {}
        used: dict[int, float] = {}
        tick = os.sysconf("SC_CLK_TCK")
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
            pid, ppid = int(entry.name), int(fields[1])
            children.setdefault(ppid, []).append(pid)
            used[pid] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        total, todo = 0.0, [p.pid for _, p in self._processes if p.poll() is None]
        while todo:
            pid = todo.pop()
            total += used.get(pid, 0.0)
            todo.extend(children.get(pid, ()))
        return total

    def stop(self, timeout_s: float = 30.0) -> dict[str, int]:
        """SIGTERM every process, newest first; return each exit code (-9: had to be killed)."""
        codes = {}
        for _, process in reversed(self._processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in reversed(self._processes):
            try:
                codes[name] = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        self._processes.clear()
        return codes

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
