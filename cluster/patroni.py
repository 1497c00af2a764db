"""PostgreSQL members of one local cluster under Patroni (Debian's ``patroni``).

Patroni keeps one primary among the members and fails over to a replica when it dies. Its
distributed configuration store here is its built-in ``raft`` (``python3-pysyncobj``): no etcd
to run, the members themselves hold the leader lock. Replication is **synchronous**
(``synchronous_mode``): a commit is acknowledged once a replica has it too, so that a failover
never loses a registration the persist worker has stored and acknowledged to the broker
(Patroni promotes only the synchronous replica). Each member is a PostgreSQL 15 of Debian's,
run as the ``postgres`` user (the server refuses root), with its port, REST port, raft port and
data directory; local connections are trusted, as on the machine's own server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pwd
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cluster import processes

PATRONI = "/usr/bin/patroni"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SCOPE = "intake"
# ttl: how long the leader lock outlives a primary that stopped renewing it (the failover
# time, about); loop_wait: how often every member acts; retry_timeout: how long a member
# tolerates its DCS or PostgreSQL not answering before it demotes itself.
TTL_S, LOOP_WAIT_S, RETRY_TIMEOUT_S = 10, 2, 4


class PatroniError(RuntimeError):
    """A member did not start or answer."""


@dataclasses.dataclass(frozen=True)
class PgMember:
    """One member: ``index`` counts from 1; ``peers`` are every member's raft ports."""

    index: int
    pg_port: int
    rest_port: int
    raft_port: int
    peers: tuple[int, ...]
    root: Path

    @property
    def name(self) -> str:
        return f"pg{self.index}"

    @property
    def dir(self) -> Path:
        return self.root / "postgres" / self.name

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def pid_file(self) -> Path:
        return self.dir / "patroni.pid"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def config(self) -> dict[str, Any]:
        hba = [
            "local all all trust",
            "host all all 127.0.0.1/32 trust",
            "host replication all 127.0.0.1/32 trust",
        ]
        return {
            "scope": SCOPE,
            "name": self.name,
            "log": {"dir": str(self.dir / "log"), "level": "INFO"},
            "restapi": {
                "listen": f"127.0.0.1:{self.rest_port}",
                "connect_address": f"127.0.0.1:{self.rest_port}",
            },
            "raft": {
                "data_dir": str(self.dir / "raft"),
                "self_addr": f"127.0.0.1:{self.raft_port}",
                "partner_addrs": [f"127.0.0.1:{p}" for p in self.peers if p != self.raft_port],
            },
            "bootstrap": {
                "dcs": {
                    "ttl": TTL_S,
                    "loop_wait": LOOP_WAIT_S,
                    "retry_timeout": RETRY_TIMEOUT_S,
                    "maximum_lag_on_failover": 1048576,
                    "synchronous_mode": True,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "wal_log_hints": "on",
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "max_connections": 200,
                            "shared_buffers": "128MB",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{self.pg_port}",
                "connect_address": f"127.0.0.1:{self.pg_port}",
                "data_dir": str(self.data_dir),
                "bin_dir": str(PG_BIN),
                "pgpass": str(self.dir / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres"},
                    "replication": {"username": "postgres"},
                    "rewind": {"username": "postgres"},
                },
                "pg_hba": hba,
                "parameters": {"unix_socket_directories": str(self.dir)},
            },
            "tags": {"nofailover": False, "noloadbalance": False},
        }

    def prepare(self) -> Path:
        """Write the member's configuration (JSON is YAML) in a directory the ``postgres``
        user owns; returns the configuration's path."""
        owner = pwd.getpwnam("postgres")
        for path in (self.root / "postgres", self.dir, self.dir / "log", self.dir / "raft"):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, owner.pw_uid, owner.pw_gid)
        self.dir.chmod(0o700)
        config = self.dir / "patroni.yml"
        config.write_text(json.dumps(self.config(), indent=2))
        os.chown(config, owner.pw_uid, owner.pw_gid)
        return config

    def start(self) -> subprocess.Popen[bytes]:
        """Start the member's Patroni (which starts, or first initialises or clones, its
        PostgreSQL); its pid is written to :attr:`pid_file`."""
        config = self.prepare()
        owner = pwd.getpwnam("postgres")
        process = processes.start(
            [PATRONI, str(config)],
            self.dir / "log" / "patroni.out",
            cwd=self.dir,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.dir)},
            user=owner.pw_uid,
            group=owner.pw_gid,
            extra_groups=[],
        )
        self.pid_file.write_text(str(process.pid))
        return process

    def patroni_pid(self) -> int | None:
        return _alive(self.pid_file)

    def postmaster_pid(self) -> int | None:
        """PostgreSQL's postmaster, from its ``postmaster.pid`` (first line)."""
        return _alive(self.data_dir / "postmaster.pid")

    def rest(self, path: str = "/patroni", timeout_s: float = 2.0) -> dict[str, Any] | None:
        """Patroni's REST answer (its JSON whatever the status), or None when it does not
        answer."""
        try:
            with urllib.request.urlopen(f"{self.rest_url}{path}", timeout=timeout_s) as answer:  # noqa: S310 - a local URL
                return dict(json.load(answer))
        except urllib.error.HTTPError as exc:  # 503 on /primary from a replica, with JSON
            try:
                return dict(json.load(exc))
            except ValueError:
                return None
        except (OSError, ValueError):
            return None

    def kill(self, signum: signal.Signals = signal.SIGKILL) -> list[int]:
        """Send ``signum`` to the member's Patroni and its postmaster (a machine that dies);
        the pids signalled."""
        pids = [p for p in (self.patroni_pid(), self.postmaster_pid()) if p is not None]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        return pids

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop Patroni (SIGTERM stops its PostgreSQL first), SIGKILL after ``timeout_s``."""
        pid = self.patroni_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while _alive(self.pid_file) is not None and time.monotonic() < deadline:
                time.sleep(0.2)
        self.kill()

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _alive(pid_file: Path) -> int | None:
    """The pid in the first line of ``pid_file`` if that process exists (and is no zombie)."""
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    return None if state == "Z" else pid


def members_state(members: list[PgMember]) -> list[dict[str, Any]]:
    """Patroni's view of the cluster (``GET /cluster``) from the first member that answers:
    each member's name, role (leader, sync_standby, replica), state and lag."""
    for member in members:
        answer = member.rest("/cluster")
        if answer is not None and "members" in answer:
            return list(answer["members"])
    return []


def primary(members: list[PgMember]) -> PgMember | None:
    """The member that is the primary now, by the cluster's own view."""
    by_name = {m.name: m for m in members}
    for state in members_state(members):
        if state.get("role") == "leader" and state.get("state") == "running":
            return by_name.get(state.get("name", ""))
    return None
