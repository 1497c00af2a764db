"""The system's own processes (``intake edge``, ``intake worker``) started as a user would,
with their logs kept in files for the tests that read them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from core.settings import Settings

# Set in the environment of this test run (and so inherited by every process it starts,
# directly or not) to this run's id: its processes are told from those of any other run.
RUN_VARIABLE = "TESTS_RUN_ID"

# Ports handed out in this test run, never handed out again (none is bound yet when it is).
_HANDED_OUT: set[int] = set()
_LOWEST = 10_000


def _ephemeral_low() -> int:
    """The first port of the kernel's range for outgoing connections."""
    try:
        low, _ = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low)
    except (OSError, ValueError):
        return 32_768


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(size: int = 1) -> int:
    """The first of ``size`` consecutive ports free right now, below the kernel's ephemeral
    range: a port from that range (what binding port 0 gives) can be taken by any outgoing
    connection between this check and the bind of the process it is for, which then fails.
    Never the same port twice in a test run."""
    ceiling = _ephemeral_low() - size
    for _ in range(500):
        if ceiling <= _LOWEST:  # no room below the range: let the kernel choose
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                base: int = sock.getsockname()[1]
        else:
            base = random.randint(_LOWEST, ceiling)
        ports = set(range(base, base + size))
        if _HANDED_OUT.isdisjoint(ports) and all(_bindable(port) for port in ports):
            _HANDED_OUT.update(ports)
            return base
    raise RuntimeError(f"no block of {size} free ports")


def free_port() -> int:
    """A port free right now (see :func:`free_port_block`)."""
    return free_port_block(1)


class Process:
    """One ``intake <command>`` subprocess; its stdout and stderr go to ``log_path``."""

    def __init__(self, command: list[str], settings: Settings, log_path: Path) -> None:
        self.command = command
        self.settings = settings
        self.log_path = log_path
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        env = {**os.environ, **self.settings.to_env()}
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                [sys.executable, "-m", "cli", *self.command],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self._popen is not None
        return self._popen.pid

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def kill(self) -> None:
        """``kill -9`` of its whole process group (a container gone: a photo lane's pool
        processes with it), then reaped. The workers ``intake supervise`` starts have sessions
        of their own and are not in it: they are told by the kernel when it dies."""
        if self._popen is None or self._popen.returncode is not None:
            return
        # The group outlives a leader already dead but not reaped yet (a zombie): kill it
        # whether or not the leader still runs.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self._popen.wait(timeout=30)

    def sigterm(self) -> None:
        """Ask for a graceful stop, as Kubernetes does, without waiting."""
        assert self._popen is not None
        self._popen.send_signal(signal.SIGTERM)

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        assert self._popen is not None
        if self.alive():
            self._popen.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def wait(self, timeout_s: float = 30.0) -> int:
        """Wait for the process to exit (killing it if it does not); returns the exit code."""
        assert self._popen is not None
        try:
            return self._popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def intake(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``intake ARGS`` run to its end in a process of its own, configured by ``settings``."""
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env={**os.environ, **settings.to_env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def intake_output(settings: Settings, *args: str, code: int = 0) -> str:
    """:func:`intake`, which must exit with ``code``: its standard output (its standard error
    for another code than 0)."""
    done = intake(settings, *args)
    assert done.returncode == code, done.stderr
    return done.stdout if code == 0 else done.stderr


def stop(process: subprocess.Popen[Any], timeout_s: float = 30.0) -> int:
    """SIGTERM, SIGKILL if it has not exited within ``timeout_s``; reaped either way, on every
    path of the test that started it. Returns the exit code."""
    if process.poll() is None:
        process.terminate()
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(30)


async def stop_async(process: asyncio.subprocess.Process, timeout_s: float = 30.0) -> int:
    """:func:`stop` for a process started with asyncio, while its loop runs: a process that
    outlives its loop is reaped but its exit never recorded, and it counts as still running."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
    try:
        return await asyncio.wait_for(process.wait(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        return await process.wait()


def wait_until_ready(port: int, process: Process, timeout_s: float = 30.0) -> None:
    """Poll the edge's /readyz until it answers 200 (or the process dies, or time runs out)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"process exited early:\n{process.log()}")
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"edge not ready after {timeout_s} s:\n{process.log()}")


@dataclasses.dataclass(frozen=True)
class Stray:
    """A process a test run left behind."""

    pid: int
    state: str  # as in /proc/<pid>/stat: R, S, D, Z (a zombie: exited, never reaped)...
    command: str
    started_in: str  # the test that was running when it was started, if it says

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.state}) {self.command!r} started in {self.started_in}"


def strays(run_id: str) -> list[Stray]:
    """The processes this test run left: this process's children, running or not reaped
    (zombies), and, wherever they are now, the Python processes of this interpreter that
    carry ``run_id`` in their environment (a supervisor's workers, once it is killed, belong
    to init). Read from ``/proc`` without waiting for any: a ``Popen`` keeps its exit code.
    multiprocessing's resource tracker and fork server, which live as long as this process,
    are not strays; nor is anything of another user's, whose environment cannot be read."""
    own = os.getpid()
    helpers = {
        getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None),
        getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None),
    }
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == own or pid in helpers:
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
            state, ppid = fields[0], int(fields[1])
            if ppid != own:
                if os.path.realpath(entry / "exe") != os.path.realpath(sys.executable):
                    continue
                if _environ(entry).get(RUN_VARIABLE) != run_id:
                    continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        try:
            started_in = _environ(entry).get("PYTEST_CURRENT_TEST", "?")
        except OSError:
            started_in = "?"
        command = " ".join(a.decode(errors="replace") for a in argv if a) or stat.split()[1]
        found.append(Stray(pid, state, command, started_in))
    return found


def _environ(entry: Path) -> dict[str, str]:
    """A process's environment as it was started (empty for a zombie)."""
    items = (entry / "environ").read_bytes().decode(errors="replace").split("\0")
    pairs = (item.partition("=") for item in items)
    return {name: value for name, _, value in pairs if name}
