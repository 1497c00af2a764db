"""``kustomize build k8s/``, the way the manifests reach a cluster, for the tests that read them.

The pinned kustomize that ``make setup`` installs into the virtualenv (scripts/install_kustomize.py)
is used first; failing that, one on the PATH, or kubectl's built-in one. Without any, the tests
that need it fail, naming the fix.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"


def command() -> list[str]:
    pinned = Path(sys.executable).parent / "kustomize"
    if pinned.is_file():
        return [str(pinned)]
    if found := shutil.which("kustomize"):
        return [found]
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    raise AssertionError(
        "kustomize not found: `make setup` installs it (python scripts/install_kustomize.py"
        " .venv/bin)"
    )


@cache
def _build(directory: str) -> str:
    done = subprocess.run(
        [*command(), "build", directory], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"kustomize build {directory} failed:\n{done.stderr}"
    return done.stdout


def build_text(directory: Path = K8S) -> str:
    """``kustomize build directory``'s output, as it is."""
    return _build(str(directory))


def build(directory: Path = K8S) -> list[dict[str, Any]]:
    """Every resource ``kustomize build`` renders from ``directory`` (a fresh copy each call)."""
    return [doc for doc in yaml.safe_load_all(_build(str(directory))) if doc]


def sources(directory: Path = K8S) -> set[Path]:
    """Every file a kustomization under ``directory`` uses: its resources, components' files
    and configurations, followed through the directories it names."""
    used: set[Path] = set()
    pending = [directory]
    while pending:
        here = pending.pop()
        path = here / "kustomization.yaml"
        used.add(path)
        kustomization = yaml.safe_load(path.read_text())
        for key in ("resources", "components", "configurations"):
            for entry in kustomization.get(key) or []:
                target = (here / entry).resolve()
                if target.is_dir():
                    if target not in pending and target / "kustomization.yaml" not in used:
                        pending.append(target)
                else:
                    used.add(target)
    return used
