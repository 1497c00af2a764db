"""The package as a user installs it: ``pip install .`` into a fresh virtualenv, without the
``dev`` extra, then ``intake demo`` from outside the source tree. What the demo needs (its
selfies' samples, the monitoring files, PyYAML) must come with the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson

from core.settings import Settings
from tests.support.processes import free_port, free_port_block

ROOT = Path(__file__).resolve().parent.parent
COUNT = 120  # selfies made from the package's samples (a fresh cache), one per person
_NOT_SOURCE = (".git", ".venv", ".*cache", ".hypothesis", "results", "build", "*.egg-info")


def _run(argv: list[str], cwd: Path, timeout_s: float, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-4000:]
    return done.stdout


def test_intake_demo_runs_from_a_plain_install(settings: Settings, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, 120)
    python = venv / "bin" / "python"
    # A copy of the tree, so that the build's own files (build/, *.egg-info) never land in it.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    _run([str(python), "-m", "pip", "install", "--quiet", str(source)], tmp_path, 900, env=env)
    # Without the dev extra: none of the test or benchmark tools came along.
    missing = subprocess.run(
        [str(python), "-c", "import skimage"], cwd=tmp_path, capture_output=True, check=False
    )
    assert missing.returncode != 0
    where = _run([str(python), "-c", "import demo; print(demo.__file__)"], tmp_path, 60, env=env)
    assert str(venv) in where  # the installed package, not the source tree

    report = tmp_path / "demo.json"
    ports = free_port_block(9)
    env.update(settings.replace(edge_port=free_port(), admin_port=free_port()).to_env())
    output = _run(
        [
            str(venv / "bin" / "intake"),
            "demo",
            f"--count={COUNT}",
            f"--sim-port-base={ports}",
            f"--metrics-port-base={ports + 6}",
            f"--prometheus-port={ports + 8}",
            f"--report={report}",
            f"--cache-dir={tmp_path / 'cache'}",
        ],
        tmp_path,
        900,
        env=env,
    )
    assert "OK: nothing accepted was lost" in output
    outcome = orjson.loads(report.read_bytes())
    assert outcome["stored"] == outcome["accepted"] > COUNT * 3 // 4
    # Stage by stage as the population's truth says (a stage of no one may be left out).
    observed, expected = outcome["observed"], outcome["expected"]
    assert {k: n for k, n in observed.items() if n} == {k: n for k, n in expected.items() if n}
    assert outcome["prometheus_targets"]["up"] == 4
