"""``intake demo`` end to end, on this run's own vhost and database and free ports, with every
core of the machine kept busy by another process: nothing accepted is lost, and the funnel is
exactly what the synthetic population's truth says (so its shares are the configured
proportions). A busy machine makes the demo slower, never wrong."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from core.settings import Settings
from demo.stack import Stack
from tests.support.processes import free_port, free_port_block

COUNT = 400


@pytest.fixture
def busy_cores() -> Iterator[int]:
    """One CPU-bound process per core, for as long as the test runs."""
    cores = len(os.sched_getaffinity(0))
    burners: list[subprocess.Popen[bytes]] = []
    try:  # those started are stopped even if starting the next one fails
        for _ in range(cores):
            burners.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        yield cores
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


def test_the_demo_loses_nothing_and_matches_the_population(
    settings: Settings, tmp_path: Path, busy_cores: int
) -> None:
    """The whole demo, with ``--keep``: after the report the printed URLs answer, until Ctrl-C
    stops it all (then every process exits 0)."""
    report, errors = tmp_path / "demo.json", tmp_path / "demo.stderr"
    edge_port = free_port()
    env = {
        **os.environ,
        **settings.replace(edge_port=edge_port, admin_port=free_port()).to_env(),
    }
    # The simulators' six, the edge's and the workers' /metrics, Prometheus.
    ports = free_port_block(9)
    with errors.open("w") as stderr:
        demo = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "demo",
                f"--count={COUNT}",
                "--keep",
                f"--sim-port-base={ports}",
                f"--metrics-port-base={ports + 6}",
                f"--prometheus-port={ports + 8}",
                f"--report={report}",
                # The default cache of selfies, which `make setup` fills (`intake demo
                # --prepare`): making them is tested in tests/test_photos_synthetic.py, and
                # from a plain install in tests/test_install.py.
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        assert demo.stdout is not None
        lines = []
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("--keep: the stack runs on"):
                break
        kept = "".join(lines)
        last = lines[-1] if lines else ""
        assert last.startswith("--keep"), kept[-6000:] + errors.read_text()[-4000:]
        for url in (
            f"http://127.0.0.1:{edge_port}/readyz",
            f"http://127.0.0.1:{ports + 6}/metrics",
            f"http://127.0.0.1:{ports + 8}/-/ready",
        ):
            with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (local)
                assert response.status == 200, url
        demo.send_signal(signal.SIGINT)
        stdout = kept + demo.communicate(timeout=300)[0]
    finally:
        if demo.poll() is None:
            # Ctrl-C first: the demo stops its stack (the edge, intake supervise, the
            # simulators, Prometheus: sessions of their own, which a kill -9 of the demo would
            # leave running); killed only if it could not.
            demo.send_signal(signal.SIGINT)
            try:
                demo.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                demo.kill()
        demo.communicate()  # its pipe closed, the process reaped
    assert demo.returncode == 0, stdout[-6000:] + errors.read_text()[-4000:]
    assert "stopped: exit codes" in stdout
    for port in (ports + 6, ports + 7):  # where to point a Prometheus or a curl
        assert f"http://127.0.0.1:{port}/metrics" in stdout
    outcome = orjson.loads(report.read_bytes())
    assert outcome["stored"] == outcome["accepted"] > COUNT * 3 // 4
    assert outcome["observed"]["registered"] == outcome["expected"]["registered"]
    for stage, expected in outcome["expected"].items():
        assert outcome["observed"].get(stage, 0) == expected, stage
    assert outcome["expected"]["verified"] > 0
    assert outcome["expected"]["open"] > 0
    assert set(outcome["exit_codes"].values()) == {0}
    # The opening, second by second, as the output shows it.
    opening = outcome["accepted_per_second"]
    assert len(opening) == 5
    assert 0 < sum(opening) <= outcome["accepted"]
    assert (
        "accepted per second in the first seconds: " + ", ".join(f"{n:,}" for n in opening)
        in stdout
    )
    # The demo's Prometheus scraped the edge, the supervisor and RabbitMQ, and intake top's
    # view of it shows this run's funnel (the database was emptied first).
    assert outcome["prometheus_targets"]["up"] == outcome["prometheus_targets"]["total"] == 4
    assert f"registered {outcome['stored']:,}" in stdout
    # Every answer that is not a plain success is explained, and the next step is printed.
    assert "refused at the edge: " in stdout
    assert "registrations wait for their person" in stdout
    assert " top --prometheus http://127.0.0.1:" in stdout
    assert "OK: nothing accepted was lost" in stdout
    # The programme's wave: opened through the admin API, every verified registrant took the
    # test and joined, exactly the quota was selected, and every joiner was told once by email
    # and once by SMS (counted at the simulators).
    wave = outcome["wave"]
    assert wave["problems"] == []
    assert wave["verified"] == outcome["expected"]["verified"]
    assert wave["joined"] == wave["scored"] == wave["verified"]
    assert wave["selected"] == min(wave["quota"], wave["eligible"]) > 0
    assert sorted(wave["emails"].values()) == [1] * wave["joined"]
    assert sorted(wave["sms"].values()) == [1] * wave["joined"]
    assert f"the operator opens wave {wave['wave']}" in stdout
    assert "told every joiner once" in stdout


def test_the_stack_counts_the_cpu_of_its_processes_and_their_children(tmp_path: Path) -> None:
    # The demo opens its wave once the stack has settled (demo.run._wait_quiet): the workers
    # that intake supervise starts count too, so a child counts with its parent.
    spin = "import time\nend = time.process_time() + 1.0\nwhile time.process_time() < end: pass\n"
    parent = (
        "import subprocess, sys, time\n"
        f"subprocess.run([sys.executable, '-c', {spin!r}])\n"
        "time.sleep(60)\n"
    )
    with Stack(Settings(), tmp_path) as stack:
        assert stack.cpu_seconds() == 0.0
        stack.start_program("parent", [sys.executable, "-c", parent])
        seen, deadline = 0.0, time.monotonic() + 30
        while seen < 0.8 and time.monotonic() < deadline:
            seen = max(seen, stack.cpu_seconds())
            time.sleep(0.05)
        assert seen >= 0.8  # the parent alone uses a few hundredths
    assert stack.cpu_seconds() == 0.0  # stopped: nothing left to count
