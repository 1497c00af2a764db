"""The system's own processes (``intake edge``, ``intake worker``) started as a user would,
with their logs kept in files for the tests that read them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from core.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
                [sys.executable, "-m", "core.cli", *self.command],
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
        """``kill -9``: no cleanup, no goodbye."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            assert self._popen is not None
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
