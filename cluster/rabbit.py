"""RabbitMQ nodes of one local cluster, each a ``rabbitmq-server`` of Debian's package.

Several nodes on one machine need each of them to be apart from the others and from the
machine's own broker: a node name, an AMQP port, an Erlang distribution port, a data and a log
directory, a config file of its own (the system's ``/etc/rabbitmq/rabbitmq.conf`` pins port
5672, and ``/etc/rabbitmq/rabbitmq-env.conf`` the node name: an empty env file of the cluster's
own replaces it), and an epmd (the Erlang port mapper) on a port of the cluster's own with a
cookie of its own (``$HOME/.erlang.cookie`` of the cluster's directory), so that the cluster's
nodes and tools never speak to the machine's broker. The server scripts are run directly, as
root (``/usr/sbin/rabbitmq-server`` would switch to the ``rabbitmq`` user and its home).

Each node also has a loopback address of its own (all of 127/8 is local on Linux), and a host
name for it: its AMQP listener and its Erlang distribution listen there only, and its outgoing
distribution connections leave from there, so that every packet to or from the node carries its
address, and the node can be cut off from the others and from its clients by address
(:mod:`cluster.network`). The host names resolve through an Erlang ``inetrc`` file of the
cluster's own (``ERL_INETRC``, for the servers and for the CLI tools), not ``/etc/hosts``, and
the cluster's epmd listens on every node's address (a node looks another up at its host).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path

from cluster import processes

SCRIPTS = Path("/usr/lib/rabbitmq/bin")
# Erlang's distribution declares a silent peer down after 0.75 to 1.25 times this (Erlang's
# default is 60 s): a node cut off is seen as down within seconds.
NET_TICKTIME_S = 10


def host_name(index: int, epmd_port: int) -> str:
    """Node ``index``'s host name in the cluster whose epmd is on ``epmd_port``."""
    return f"rabbit{index}-{epmd_port}"


class RabbitError(RuntimeError):
    """A node did not start, join or answer."""


@dataclasses.dataclass(frozen=True)
class RabbitNode:
    """One node: ``index`` counts from 1; ``root`` is the cluster's directory."""

    index: int
    prefix: str
    amqp_port: int
    dist_port: int
    epmd_port: int
    root: Path
    address: str
    peers: tuple[str, ...] = ()  # every node's address, this one's included (for epmd)

    @property
    def host(self) -> str:
        """The node's host name, resolved to :attr:`address` by the cluster's inetrc."""
        return host_name(self.index, self.epmd_port)

    @property
    def name(self) -> str:
        return f"{self.prefix}{self.index}@{self.host}"

    @property
    def inetrc(self) -> Path:
        """The cluster's Erlang resolver file (every node's host name and address)."""
        return self.root / "rabbit" / "inetrc"

    @property
    def dir(self) -> Path:
        return self.root / "rabbit" / f"node{self.index}"

    @property
    def pid_file(self) -> Path:
        return self.dir / "beam.pid"

    def url(self, vhost: str = "/") -> str:
        """The node's AMQP URL for ``vhost``, as the default user (a local cluster's)."""
        quoted = vhost.replace("/", "%2F")
        return f"amqp://guest:guest@{self.address}:{self.amqp_port}/{quoted}"

    def env(self) -> dict[str, str]:
        """The environment of this node's server and of the tools that speak to it."""
        home = self.root / "rabbit"
        erl_ip = "{" + self.address.replace(".", ",") + "}"
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(home),  # .erlang.cookie: the cluster's own
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": ",".join(("127.0.0.1", *self.peers)),
            "ERL_INETRC": str(self.inetrc),
            "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            # Three nodes share the machine's cores: unbound schedulers, no busy waiting.
            "RABBITMQ_SCHEDULER_BIND_TYPE": "u",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                f"-kernel inet_dist_use_interface {erl_ip}"
                f" -kernel inet_dist_connect_options [{{ip,{erl_ip}}}]"
                f" -kernel net_ticktime {NET_TICKTIME_S}"
                " +sbwt none +sbwtdcpu none +sbwtdio none"
            ),
        }

    def write_config(self) -> None:
        home = self.root / "rabbit"
        (self.dir / "log").mkdir(parents=True, exist_ok=True)
        (home / "rabbitmq-env.conf").write_text("# the cluster's own: nothing from /etc\n")
        (home / "enabled_plugins").write_text("[].\n")
        hosts = [
            f'{{host, {{{address.replace(".", ",")}}}, ["{host_name(i, self.epmd_port)}"]}}.'
            for i, address in enumerate(self.peers, start=1)
        ]
        self.inetrc.write_text("\n".join([*hosts, "{lookup, [file, native]}.", ""]))
        (self.dir / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    f"listeners.tcp.default = {self.address}:{self.amqp_port}",
                    "loopback_users = none",
                    # A local cluster shares a disk with everything else: alarm at 1 GB free.
                    "disk_free_limit.absolute = 1GB",
                    "vm_memory_high_watermark.relative = 0.2",
                    # Not pause_minority: a node suspended (SIGSTOP, a paused VM) and resumed
                    # does not see itself in a minority and the split stays until an operator
                    # restarts it; autoheal restarts the losing side once the nodes see each
                    # other again. Every queue is a quorum queue: Raft, not this, keeps them.
                    "cluster_partition_handling = autoheal",
                    "log.file.level = info",
                    "",
                ]
            )
        )

    def start(self) -> subprocess.Popen[bytes]:
        """Start the node (it joins nothing yet); returns the server script's process."""
        self.write_config()
        return processes.start(
            [str(SCRIPTS / "rabbitmq-server")],
            self.dir / "log" / "server.out",
            env=self.env(),
            cwd=self.dir,
        )

    def ctl(self, *args: str, timeout_s: float = 60.0, tool: str = "rabbitmqctl") -> str:
        """Run ``rabbitmqctl -n <node> args`` (or another tool) and return its output."""
        try:
            done = subprocess.run(
                [str(SCRIPTS / tool), "-n", self.name, *args],
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RabbitError(f"{tool} {' '.join(args)} on {self.name}: no answer") from exc
        if done.returncode != 0:
            raise RabbitError(
                f"{tool} {' '.join(args)} on {self.name}: {done.stderr.strip() or done.stdout}"
            )
        return done.stdout

    def wait(self, timeout_s: float = 120.0) -> None:
        """Until the node runs its application (``rabbitmqctl wait`` on its pid file)."""
        deadline = time.monotonic() + timeout_s
        while not self.pid_file.exists():
            if time.monotonic() > deadline:
                raise RabbitError(f"{self.name} wrote no pid file")
            time.sleep(0.2)
        self.ctl("wait", "--timeout", str(int(timeout_s)), str(self.pid_file), timeout_s=timeout_s)

    def join(self, other: RabbitNode) -> None:
        self.ctl("stop_app")
        self.ctl("join_cluster", other.name)
        self.ctl("start_app")

    def pid(self) -> int | None:
        """The OS process of the node's Erlang VM (``beam.smp``), if it runs."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def signal(self, signum: signal.Signals) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signum)
        return True

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop the node: ``rabbitmqctl stop``, and SIGKILL if it did not."""
        pid = self.pid()
        if pid is None:
            return
        try:
            self.ctl("stop", str(self.pid_file), timeout_s=timeout_s)
        except RabbitError:
            self.signal(signal.SIGKILL)
