"""The application on the local cluster: ``edges`` edge processes sharing one port, ``intake
supervise`` with every worker kind, and the simulated ministries, SMS gateway and mail server
they verify against; each given every RabbitMQ node and every PostgreSQL member.

Ports follow the cluster's base port: the edges on base + 80, the simulators on base + 81 to
base + 86, the edges' ``/metrics`` on base + 87 and the workers' on base + 88. Every process is
detached, with its pid in ``app/<name>.pid`` and its log in ``app/<name>.log`` of the cluster's
directory; :func:`down` stops them with SIGTERM (SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from cluster import processes
from cluster.local import Cluster
from core.settings import Settings
from core.status import read_status
from simulators.server import Ports

STOP_GRACE_S = 30.0


@dataclasses.dataclass(frozen=True)
class App:
    cluster: Cluster
    edges: int = 2

    @property
    def dir(self) -> Path:
        return self.cluster.root / "app"

    @property
    def run_dir(self) -> Path:
        """Where ``intake supervise`` keeps its workers' status files."""
        return self.dir / "run"

    def worker_statuses(self) -> list[dict[str, object]]:
        """The status files of the workers that run now."""
        found = []
        for path in sorted(self.run_dir.glob("*.json")):
            status = read_status(path)
            if status is not None:
                found.append(status)
        return found

    @property
    def edge_port(self) -> int:
        return self.cluster.base_port + 80

    @property
    def sim_ports(self) -> Ports:
        base = self.cluster.base_port + 81
        return Ports(base, base + 1, base + 2, base + 3, base + 4, base + 5)

    @property
    def metrics_ports(self) -> tuple[int, int]:
        """The edges' ``/metrics`` port and the workers'."""
        return self.cluster.base_port + 87, self.cluster.base_port + 88

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}"

    def settings(self, base: Settings) -> Settings:
        """``base`` pointed at the cluster's nodes and members and at the simulators."""
        return self.sim_ports.wire(
            base.replace(
                amqp_url=self.cluster.amqp_url(),
                database_url=self.cluster.database_url(),
                edge_host="127.0.0.1",
                edge_port=self.edge_port,
                edge_reconnect_max_delay_s=min(base.edge_reconnect_max_delay_s, 0.5),
                # Its load comes from one address (benchmarks.chaos): no per-client limit.
                limit_client_requests=0,
            )
        )

    def _start(self, name: str, args: list[str], settings: Settings, **env: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        process = processes.start(
            [sys.executable, "-m", "cli", *args],
            self.dir / f"{name}.log",
            env={**os.environ, **settings.to_env(), **env},
        )
        (self.dir / f"{name}.pid").write_text(str(process.pid))

    def pids(self) -> dict[str, int | None]:
        """Each started process's pid, None for one that no longer runs."""
        processes.reap()
        found: dict[str, int | None] = {}
        for path in sorted(self.dir.glob("*.pid")):
            try:
                pid: int | None = int(path.read_text())
                os.kill(pid, 0)  # type: ignore[arg-type]
            except (OSError, ValueError):
                pid = None
            found[path.stem] = pid
        return found

    def up(self, base: Settings, timeout_s: float = 120.0) -> None:
        """Start what does not run yet, and wait until the edges answer ``/readyz``."""
        settings = self.settings(base)
        running = {name for name, pid in self.pids().items() if pid is not None}
        edge_metrics, worker_metrics = self.metrics_ports
        if "simulate" not in running:
            self._start("simulate", ["simulate", *self._simulator_flags()], settings)
        if "supervise" not in running:
            self._start(
                "supervise",
                ["supervise", f"--log-dir={self.dir}", f"--run-dir={self.run_dir}"],
                settings.replace(metrics_port=worker_metrics),
            )
        multiproc = self.dir / "edge-metrics"
        multiproc.mkdir(parents=True, exist_ok=True)
        for n in range(1, self.edges + 1):
            if f"edge-{n}" not in running:
                self._start(
                    f"edge-{n}",
                    ["edge"],
                    settings.replace(metrics_port=edge_metrics),
                    PROMETHEUS_MULTIPROC_DIR=str(multiproc),
                )
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            dead = [name for name, pid in self.pids().items() if pid is None]
            if dead:
                raise RuntimeError(f"stopped at start: {', '.join(dead)} (logs in {self.dir})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the edges were not ready in {timeout_s:.0f} s")
            time.sleep(0.5)

    def _simulator_flags(self) -> list[str]:
        return [
            f"--{name.replace('_', '-')}-port={port}"
            for name, port in dataclasses.asdict(self.sim_ports).items()
        ]

    def restart_simulators(self, base: Settings, args: list[str], timeout_s: float = 60.0) -> None:
        """Stop the simulators and start them again with ``args`` (e.g. another population:
        ``--seed``, ``--count``), their mailbox and phones empty; wait until they answer."""
        pid = self.pids().get("simulate")
        if pid is not None:
            _signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            while self.pids().get("simulate") is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.pids().get("simulate") is not None:
                _signal(pid, signal.SIGKILL)
        self._start("simulate", ["simulate", *self._simulator_flags(), *args], self.settings(base))
        url = f"http://127.0.0.1:{self.sim_ports.smtp_admin}/_sim/stats"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the simulators did not answer in {timeout_s:.0f} s"
                    ) from exc
                time.sleep(0.2)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as answer:  # noqa: S310 - a local URL
                return bool(answer.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def down(self) -> None:
        """SIGTERM every process (edges first, the simulators last), SIGKILL the laggards."""
        order = sorted(self.pids().items(), key=lambda item: (item[0] == "simulate", item[0]))
        for _, pid in order:
            if pid is not None:
                _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while any(self.pids().values()) and time.monotonic() < deadline:
            processes.reap()
            time.sleep(0.2)
        for pid in self.pids().values():
            if pid is not None:
                _signal(pid, signal.SIGKILL)
        processes.reap()
        for path in self.dir.glob("*.pid"):
            path.unlink()


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
