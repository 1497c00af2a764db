"""One real local cluster (cluster.local: three RabbitMQ nodes, three PostgreSQL members under
Patroni) for the tests of this folder, in a directory and on ports of its own, removed at the
end."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import processes
from cluster.local import Cluster
from tests.support.processes import free_port_block


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[Cluster]:
    # Patroni runs as the postgres user, who must reach its members' directories.
    root = Path(tempfile.mkdtemp(prefix="intake-cluster-", dir="/var/tmp"))
    cluster = Cluster(root=root, base_port=free_port_block(89))
    where = [f"--dir={root}", f"--base-port={cluster.base_port}"]
    try:
        # As an operator starts it (the engines only: the tests start the processes they
        # kill themselves).
        subprocess.run(
            [sys.executable, "-m", "cli", "cluster", "up", "--no-app", *where],
            check=True,
            timeout=600,
        )
        yield cluster
    finally:
        try:
            subprocess.run(
                [sys.executable, "-m", "cli", "cluster", "down", "--purge", *where],
                check=True,
                timeout=300,
            )
        finally:
            # The nodes and members the tests started again are children of this process:
            # stopped by the command above, reaped here (or stopped here if it failed).
            processes.stop_all()
            shutil.rmtree(root, ignore_errors=True)
