"""The local cluster: three RabbitMQ nodes in one cluster and three PostgreSQL members under
Patroni, on one machine, in one directory (``intake cluster up|status|down``).

The layout is fixed by a base port (``--base-port``, default 5700): the cluster's epmd on the
base port, RabbitMQ node *i*'s AMQP on base + *i* and its Erlang distribution on base + 20 + *i*,
PostgreSQL member *i* on base + 40 + *i*, its Patroni REST API on base + 50 + *i* and its raft
on base + 60 + *i*. Each RabbitMQ node listens on a loopback address of its own,
127.H.L.(10 + *i*) with H and L the base port's two bytes, so that :meth:`Cluster.partition` can
cut one node off by its address (:mod:`cluster.network`). What runs is found again from the
directory (pid files), so ``status`` and ``down`` work from another process than ``up``, and
``up`` on a cluster that was formed before starts its nodes again with their data.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cluster import network, patroni
from cluster.patroni import PgMember
from cluster.rabbit import RabbitError, RabbitNode

DEFAULT_DIR = Path("/var/lib/intake-cluster")
DEFAULT_BASE_PORT = 5700
SIZE = 3
# The application's vhost, role and database (the settings' defaults: see the README).
VHOST = "intake"
DATABASE = ROLE = "intake"


class ClusterError(RuntimeError):
    """The cluster did not come up as asked."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    root: Path = DEFAULT_DIR
    base_port: int = DEFAULT_BASE_PORT
    prefix: str = "intake"

    @property
    def rabbit_addresses(self) -> tuple[str, ...]:
        """Each RabbitMQ node's loopback address, of this cluster alone: 127.H.L.(10 + i),
        H and L the base port's two bytes (5700: 127.22.68.11 to .13)."""
        base = self.base_port
        return tuple(f"127.{base >> 8 & 255}.{base & 255}.{10 + i}" for i in range(1, SIZE + 1))

    @property
    def rabbits(self) -> list[RabbitNode]:
        base, addresses = self.base_port, self.rabbit_addresses
        return [
            RabbitNode(
                i,
                self.prefix,
                base + i,
                base + 20 + i,
                base,
                self.root,
                addresses[i - 1],
                addresses,
            )
            for i in range(1, SIZE + 1)
        ]

    @property
    def members(self) -> list[PgMember]:
        base = self.base_port
        raft = tuple(base + 60 + i for i in range(1, SIZE + 1))
        return [
            PgMember(i, base + 40 + i, base + 50 + i, base + 60 + i, raft, self.root)
            for i in range(1, SIZE + 1)
        ]

    def amqp_url(self, vhost: str = VHOST) -> str:
        """Every node, for ``INTAKE_AMQP_URL`` (core.broker: one URL per node, commas)."""
        return ",".join(node.url(vhost) for node in self.rabbits)

    def database_url(self, database: str = DATABASE) -> str:
        """Every member, for ``INTAKE_DATABASE_URL``: libpq's multi-host form, the primary
        found among them (``target_session_attrs=read-write``)."""
        hosts = ",".join(f"127.0.0.1:{m.pg_port}" for m in self.members)
        return f"postgresql://{ROLE}:{ROLE}@{hosts}/{database}?target_session_attrs=read-write"

    @property
    def _formed(self) -> Path:
        return self.root / "rabbit" / "formed"

    # --- up --------------------------------------------------------------------------------

    def up(self, timeout_s: float = 300.0) -> dict[str, Any]:
        """Start what does not run, form the clusters the first time, and wait until both
        are whole: every RabbitMQ node running in one cluster, a Patroni primary with its
        replicas streaming. Returns :meth:`status`."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # the postgres user walks through it to its members
        with ThreadPoolExecutor(max_workers=2) as pool:
            rabbit = pool.submit(self._rabbit_up, timeout_s)
            postgres = pool.submit(self._postgres_up, timeout_s)
            rabbit.result()
            postgres.result()
        return self.status()

    def _rabbit_up(self, timeout_s: float) -> None:
        nodes = self.rabbits
        for node in nodes:
            if node.pid() is None:
                node.start()
        for node in nodes:
            node.wait(timeout_s)
        if not self._formed.exists():
            for node in nodes[1:]:
                node.join(nodes[0])
            first = nodes[0]
            if VHOST not in first.ctl("list_vhosts", "--silent").split():
                first.ctl("add_vhost", VHOST)
            first.ctl("set_permissions", "--vhost", VHOST, "guest", ".*", ".*", ".*")
            self._formed.write_text("")
        running = self.rabbit_running()
        if sorted(running) != sorted(n.name for n in nodes):
            raise ClusterError(f"RabbitMQ: running nodes {running}, expected all {SIZE}")

    def _postgres_up(self, timeout_s: float) -> None:
        members = self.members
        for member in members:
            if member.patroni_pid() is None:
                member.start()
        deadline = time.monotonic() + timeout_s
        while not self.postgres_whole():
            if time.monotonic() > deadline:
                raise ClusterError(f"Patroni: not whole after {timeout_s:.0f} s: {self.pg_state()}")
            time.sleep(1.0)
        leader = patroni.primary(members)
        assert leader is not None
        self._psql(
            leader,
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'intake') THEN "
            "CREATE ROLE intake LOGIN PASSWORD 'intake'; END IF; END $$",
        )
        exists = self._psql(leader, "SELECT 1 FROM pg_database WHERE datname = 'intake'")
        if not exists.strip():
            self._psql(leader, "CREATE DATABASE intake OWNER intake")

    @staticmethod
    def _psql(member: PgMember, sql: str) -> str:
        done = subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(member.pg_port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-tAc",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise ClusterError(f"psql on {member.name}: {done.stderr.strip()}")
        return done.stdout

    # --- looking -------------------------------------------------------------------------

    def _reachable(self) -> list[RabbitNode]:
        """The nodes that run and are not cut off (a cut-off node's tools get no answer)."""
        cut = {n.name for n in self.partitioned()}
        return [n for n in self.rabbits if n.pid() is not None and n.name not in cut]

    def rabbit_running(self, seen_by: RabbitNode | None = None) -> list[str]:
        """The running nodes of the RabbitMQ cluster, as ``seen_by`` sees them, or else the
        first node that answers."""
        status = self._cluster_status(seen_by)
        return list(status.get("running_nodes", [])) if status else []

    def rabbit_split(self, seen_by: RabbitNode | None = None) -> bool:
        """Whether the cluster, as ``seen_by`` (or the first node that answers) sees it, still
        records a partition: the nodes may all run and see each other again and yet be split
        until the losing side restarts (``autoheal``). Not knowing counts as split."""
        status = self._cluster_status(seen_by)
        return status is None or bool(status.get("partitions"))

    def split_losers(self, seen_by: RabbitNode | None = None) -> list[RabbitNode]:
        """The nodes on the smaller side of a recorded partition (:func:`split_losers`)."""
        status = self._cluster_status(seen_by)
        names = split_losers((status or {}).get("partitions") or {})
        return [n for n in self.rabbits if n.name in names]

    def restart_app(self, node: RabbitNode) -> None:
        """``rabbitmqctl stop_app`` then ``start_app`` on ``node``: what an operator does to the
        losing side of a partition that RabbitMQ did not heal by itself (its partition list
        clears only when the node restarts)."""
        node.ctl("stop_app")
        node.ctl("start_app")

    def _cluster_status(self, seen_by: RabbitNode | None) -> dict[str, Any] | None:
        for node in [seen_by] if seen_by is not None else self._reachable():
            try:
                status: dict[str, Any] = json.loads(
                    node.ctl("cluster_status", "--formatter", "json")
                )
            except (RabbitError, ValueError):
                continue
            return status
        return None

    def pg_state(self) -> list[dict[str, Any]]:
        return patroni.members_state(self.members)

    def postgres_whole(self) -> bool:
        """A running primary and every other member a streaming replica, one synchronous."""
        state = self.pg_state()
        roles = sorted(m.get("role", "") for m in state)
        running = all(m.get("state") in ("running", "streaming") for m in state)
        return running and len(state) == SIZE and roles == ["leader", "replica", "sync_standby"]

    def quorum_members(self, queue: str, vhost: str = VHOST) -> dict[str, Any]:
        """A quorum queue's leader and members (``rabbitmqctl list_queues``)."""
        for node in self._reachable():
            try:
                rows = json.loads(
                    node.ctl(
                        "list_queues",
                        "--vhost",
                        vhost,
                        "name",
                        "leader",
                        "members",
                        "--formatter",
                        "json",
                    )
                )
            except (RabbitError, ValueError):
                continue
            for row in rows:
                if row.get("name") == queue:
                    return {"leader": row.get("leader"), "members": row.get("members") or []}
            return {}
        return {}

    def leading(self, queue: str, vhost: str = VHOST) -> RabbitNode | None:
        """The node that leads quorum queue ``queue`` now (None if no node says)."""
        leader = self.quorum_members(queue, vhost).get("leader")
        return next((n for n in self.rabbits if n.name == leader), None)

    def status(self) -> dict[str, Any]:
        primary = patroni.primary(self.members)
        return {
            "dir": str(self.root),
            "amqp_url": self.amqp_url(),
            "database_url": self.database_url(),
            "rabbitmq": [
                {"node": n.name, "address": n.address, "amqp_port": n.amqp_port, "pid": n.pid()}
                for n in self.rabbits
            ],
            "rabbitmq_running": self.rabbit_running(),
            "rabbitmq_partitioned": [n.name for n in self.partitioned()],
            "postgres": [
                {
                    "member": m.name,
                    "port": m.pg_port,
                    "rest": m.rest_url,
                    "patroni_pid": m.patroni_pid(),
                    "postmaster_pid": m.postmaster_pid(),
                }
                for m in self.members
            ],
            "patroni": self.pg_state(),
            "primary": primary.name if primary else None,
        }

    # --- partitions --------------------------------------------------------------------------

    def partition(self, node: RabbitNode) -> None:
        """Cut ``node`` off from the other nodes and from every client (:mod:`cluster.network`):
        every packet from or to its address dropped, until :meth:`heal`."""
        network.cut(self.base_port, node.address)

    def heal(self) -> None:
        """End every partition of the cluster's nodes."""
        for address in network.cut_off(self.base_port):
            network.heal(self.base_port, address)

    def partitioned(self) -> list[RabbitNode]:
        """The nodes cut off now."""
        cut = set(network.cut_off(self.base_port))
        return [n for n in self.rabbits if n.address in cut]

    # --- down ------------------------------------------------------------------------------

    def down(self, purge: bool = False) -> None:
        """Heal any partition, stop every node and member; ``purge`` also removes the directory
        (its data)."""
        network.remove(self.base_port)
        with ThreadPoolExecutor(max_workers=SIZE * 2) as pool:
            stops = [pool.submit(n.stop) for n in self.rabbits]
            stops += [pool.submit(m.stop) for m in self.members]
            for stop in stops:
                stop.result()
        # The cluster's own epmd (started by its first node, on the base port) goes too.
        subprocess.run(
            ["epmd", "-port", str(self.base_port), "-kill"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if purge:
            shutil.rmtree(self.root, ignore_errors=True)


def split_losers(partitions: dict[str, list[str]]) -> list[str]:
    """The nodes to restart to end a recorded partition: those the others most often say they
    were cut off from (``cluster_status``'s ``partitions``: each node and the nodes it lost
    sight of). After one node of three was suspended or cut off, both others name it and it
    names both: it alone is named twice."""
    named: dict[str, int] = {}
    for lost in partitions.values():
        for name in lost:
            named[name] = named.get(name, 0) + 1
    if not named:
        return []
    most = max(named.values())
    return sorted(name for name, count in named.items() if count == most)
