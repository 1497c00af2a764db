"""``intake demo`` end to end, on this run's own vhost and database and free ports: nothing
accepted is lost, and the funnel is exactly what the synthetic population's truth says (so its
shares are the configured proportions)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from core.settings import Settings
from tests.support.processes import free_port, free_port_block


def test_the_demo_loses_nothing_and_matches_the_population(
    settings: Settings, tmp_path: Path
) -> None:
    report = tmp_path / "demo.json"
    env = {**os.environ, **settings.replace(edge_port=free_port()).to_env()}
    # The simulators' six, the edge's and the workers' /metrics, Prometheus.
    ports = free_port_block(9)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "demo",
            "--count=400",
            f"--sim-port-base={ports}",
            f"--metrics-port-base={ports + 6}",
            f"--prometheus-port={ports + 8}",
            f"--report={report}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    for port in (ports + 6, ports + 7):  # where to point a Prometheus or a curl
        assert f"http://127.0.0.1:{port}/metrics" in done.stdout
    outcome = orjson.loads(report.read_bytes())
    assert outcome["stored"] == outcome["accepted"] > 300
    assert outcome["observed"]["registered"] == outcome["expected"]["registered"]
    for stage, expected in outcome["expected"].items():
        assert outcome["observed"].get(stage, 0) == expected, stage
    assert set(outcome["exit_codes"].values()) == {0}
    # The demo's Prometheus scraped the edge, the supervisor and RabbitMQ, and intake top's
    # view of it shows the funnel it read there.
    assert outcome["prometheus_targets"]["up"] == outcome["prometheus_targets"]["total"] == 4
    assert f"registered {outcome['stored']:,}" in done.stdout
