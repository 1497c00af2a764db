"""A benchmark's rig: one fresh vhost and database, the system's own processes started as an
operator starts them (``intake simulate``, ``intake edge``, ``intake worker ...``), each with its
log; everything stopped and dropped on exit. The benchmarks build their phases on it."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import aiohttp
import asyncpg

from benchmarks._support import (
    BenchError,
    create_vhost,
    delete_vhost,
    free_port,
    progress,
    tail,
    with_path,
)
from benchmarks.persist import drop_database, recreate_database
from core.settings import Settings
from demo.stack import Stack
from simulators.server import Ports

# The simulators' ports, by the name of their ``intake simulate --<name>-port`` flag.
SIM_PORTS = ("dukcapil", "dapodik", "dtks", "sms", "smtp", "smtp_admin")


class Rig:
    """One fresh vhost and database with the system's own processes, as an operator starts
    them; everything is stopped and dropped on exit."""

    def __init__(self, base: Settings, name: str, vhost: str, database: str, log_dir: Path) -> None:
        self.base = base
        self.name = name
        self.vhost = vhost
        self.database = database
        self.ports = {p: free_port() for p in SIM_PORTS}
        edge_port = free_port()
        self.blob_dir = tempfile.mkdtemp(prefix="intake-bench-blobs-")
        self.settings = base.replace(
            amqp_url=with_path(base.amqp_url, vhost),
            database_url=with_path(base.database_url, database),
            edge_port=edge_port,
            edge_access_log=False,
            public_base_url=f"http://127.0.0.1:{edge_port}",
            blob_dir=self.blob_dir,
            # The whole synthetic population comes from this one address: no per-client limit.
            limit_client_requests=0,
        )
        self.settings = Ports(**self.ports).wire(self.settings)
        self.base_url = f"http://127.0.0.1:{edge_port}"
        self.log_dir = log_dir / name
        if self.log_dir.exists():
            shutil.rmtree(self.log_dir)
        self.log_dir.mkdir(parents=True)
        self.stack = Stack(self.settings, self.log_dir)
        self.stop_timeout_s = 30.0

    def sim_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    async def __aenter__(self) -> Self:
        progress(f"{self.name}: fresh vhost {self.vhost} and database {self.database}")
        create_vhost(self.vhost)
        await recreate_database(self.base.database_url, self.database)
        return self

    async def __aexit__(self, *_: object) -> None:
        try:
            codes = await asyncio.to_thread(self.stack.stop, self.stop_timeout_s)
            progress(f"  {self.name}: stopped {codes}")
        finally:
            await drop_database(self.base.database_url, self.database)
            delete_vhost(self.vhost)
            shutil.rmtree(self.blob_dir, ignore_errors=True)

    def check_alive(self) -> None:
        dead = self.stack.dead()
        if dead:
            logs = "\n".join(tail(self.log_dir / f"{name}.log", 10) for name in dead)
            raise BenchError(f"{self.name}: exited on their own: {dead}\n{logs}")

    async def wait_http(self, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                self.check_alive()
                try:
                    async with session.get(url) as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise BenchError(f"{url} did not answer within {timeout_s:.0f} s")

    async def migrate(self) -> None:
        migrate = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cli",
            "migrate",
            env={**os.environ, **self.settings.to_env()},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await migrate.communicate()
        except BaseException:  # interrupted: not left running, unreaped, behind the run
            if migrate.returncode is None:
                migrate.kill()
                await migrate.wait()
            raise
        if migrate.returncode != 0:
            raise BenchError(f"intake migrate failed: {output.decode()[-2000:]}")

    async def start_simulators(
        self,
        count: int,
        seed: int,
        today: dt.date,
        flags: Sequence[str],
        *,
        invalid_share: float = 0.0,
        duplicate_share: float = 0.0,
    ) -> None:
        ports = [f"--{name.replace('_', '-')}-port={port}" for name, port in self.ports.items()]
        self.stack.start(
            "simulate",
            "simulate",
            f"--seed={seed}",
            f"--count={count}",
            f"--today={today.isoformat()}",
            f"--invalid-share={invalid_share}",
            f"--duplicate-share={duplicate_share}",
            *ports,
            *flags,
        )
        await self.wait_http(f"{self.sim_url('dukcapil')}/_sim/stats", 180)

    def start_supervisor(self, kinds: Sequence[str], run_dir: Path) -> None:
        """``intake supervise KINDS``, its status files in ``run_dir``, its workers' logs in
        the rig's log directory."""
        self.stack.start(
            "supervise",
            "supervise",
            *kinds,
            f"--run-dir={run_dir}",
            f"--log-dir={self.log_dir / 'workers'}",
        )

    async def start_edge(self) -> None:
        self.stack.start("edge", "edge")
        await self.wait_http(f"{self.base_url}/readyz", 60)

    async def wait_count(
        self, connection: asyncpg.Connection, what: str, sql: str, target: int, timeout_s: float
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            value = int(await connection.fetchval(sql))
            if value >= target:
                progress(f"  {what}: {value:,}/{target:,}")
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: {what} {value:,}/{target:,} after {timeout_s:g} s")
            await asyncio.sleep(0.25)
