"""``intake cluster up|status|down``: the local cluster (:mod:`cluster.local`) and the
application on it (:mod:`cluster.app`).

    intake cluster up [--edges 2] [--no-app]   start what is not running, print the URLs
    intake cluster status                      what runs, who leads (JSON with --json)
    intake cluster down [--purge]              stop everything (--purge: and remove the data)

Needs root (Patroni runs PostgreSQL as the ``postgres`` user) and Debian's ``rabbitmq-server``,
``postgresql`` and ``patroni`` (``make setup`` installs them), and ``iptables`` to cut a node off
(:mod:`cluster.network`; ``down`` heals any partition first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from cluster.app import App
from cluster.local import DEFAULT_BASE_PORT, DEFAULT_DIR, Cluster, ClusterError
from cluster.patroni import PATRONI, PG_BIN
from cluster.rabbit import SCRIPTS
from core.settings import Settings


def _missing() -> list[str]:
    wanted = {
        "rabbitmq-server": SCRIPTS / "rabbitmq-server",
        "postgresql-15": PG_BIN / "postgres",
        "patroni": Path(PATRONI),
    }
    missing = [name for name, path in wanted.items() if not path.exists()]
    if shutil.which("psql") is None:
        missing.append("postgresql-client")
    return missing


def _print_up(cluster: Cluster, app: App | None) -> None:
    status = cluster.status()
    print(f"cluster in {cluster.root}")
    print(f"  RabbitMQ, {len(status['rabbitmq_running'])} nodes running:")
    for node in status["rabbitmq"]:
        print(f"    {node['node']}  amqp://{node['address']}:{node['amqp_port']}")
    print(f"  PostgreSQL under Patroni, primary {status['primary']}:")
    for member in status["patroni"]:
        print(f"    {member['name']}  127.0.0.1:{member['port']}  {member['role']}")
    print(f"  INTAKE_AMQP_URL={status['amqp_url']}")
    print(f"  INTAKE_DATABASE_URL={status['database_url']}")
    if app is not None:
        edge_metrics, worker_metrics = app.metrics_ports
        print(f"  edges ({app.edges}): {app.url}  (POST {app.url}/v1/registrations)")
        print(
            f"  metrics: http://127.0.0.1:{edge_metrics}/metrics (edges),"
            f" http://127.0.0.1:{worker_metrics}/metrics (workers)"
        )
        print(f"  logs: {app.dir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="intake cluster", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("up", "status", "down"))
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(os.environ.get("INTAKE_CLUSTER_DIR", DEFAULT_DIR)),
        help=f"the cluster's data and logs (INTAKE_CLUSTER_DIR; default {DEFAULT_DIR})",
    )
    parser.add_argument(
        "--base-port",
        type=int,
        default=DEFAULT_BASE_PORT,
        help=f"the first of the cluster's 89 ports (default {DEFAULT_BASE_PORT})",
    )
    parser.add_argument("--edges", type=int, default=2, help="edge processes (up; default 2)")
    parser.add_argument("--no-app", action="store_true", help="up: the engines only")
    parser.add_argument("--purge", action="store_true", help="down: remove the data too")
    parser.add_argument("--json", action="store_true", help="status: as JSON")
    args = parser.parse_args(argv)
    cluster = Cluster(root=args.dir, base_port=args.base_port)
    app = App(cluster, edges=args.edges)
    if args.action == "up":
        if os.geteuid() != 0:
            parser.error("needs root (PostgreSQL runs as the postgres user)")
        missing = _missing()
        if missing:
            parser.error(f"missing: {', '.join(missing)} (make setup, or apt-get install them)")
        try:
            cluster.up()
            if not args.no_app:
                app.up(Settings.from_env())
        except (ClusterError, RuntimeError) as exc:
            print(f"intake cluster up: {exc}", file=sys.stderr)
            return 1
        _print_up(cluster, None if args.no_app else app)
        return 0
    if args.action == "status":
        status = cluster.status() | {"app": app.pids(), "edges_ready": app.ready()}
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            _print_up(cluster, app if status["app"] else None)
            for name, pid in status["app"].items():
                print(f"    {name}: {'pid ' + str(pid) if pid else 'not running'}")
        return 0
    app.down()
    cluster.down(purge=args.purge)
    print(f"cluster stopped{' and removed' if args.purge else ''} ({cluster.root})")
    return 0
