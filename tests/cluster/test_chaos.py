"""The chaos suite's short version (``make chaos`` runs them all, longer): on a cluster of its
own, registrations flow while the queue leader's node is killed, then cut off by a network
partition, then while the PostgreSQL primary, then an edge and two workers are killed; the
checker (benchmarks/chaos.py) finds every 202 stored exactly once, every registration settled
and nothing sent twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.chaos import SHORT
from tests.support.processes import free_port_block


def test_nothing_is_lost_duplicated_or_sent_twice_under_the_short_chaos(tmp_path: Path) -> None:
    results = tmp_path / "results"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.chaos",
            "--short",
            f"--base-port={free_port_block(89)}",
        ],
        env={**os.environ, "INTAKE_BENCH_RESULTS": str(results)},
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    [path] = results.glob("chaos-*.json")
    outcome = json.loads(path.read_text())
    assert outcome["verified"] is True
    runs = {r["nemesis"]: r for r in outcome["runs"]}
    assert list(runs) == list(SHORT)
    for run in runs.values():
        assert run["fault"]  # something was struck
        assert run["accepted"] == run["offered"]  # every person ends with a 202
        assert (run["lost"], run["duplicated"], run["not_settled"], run["sent_twice"]) == (
            0,
            0,
            0,
            0,
        )
        assert run["emails"] > 0  # the lanes ran: the checker had something to count
        assert run["first_202_after_fault_s"] is not None
    assert "edge-1" in runs["process-kill"]["fault"]
    assert runs["rabbit-partition"]["fault"].startswith("intake")  # a node's name
    assert runs["postgres-primary-kill"]["fault"].startswith("pg")
