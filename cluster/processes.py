"""The cluster's server processes, started detached (a session of their own, outliving the
command that started them) and remembered while this process runs, so that the ones that exit
are reaped (no zombies) and none is dropped while it still runs."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

_children: list[subprocess.Popen[bytes]] = []


def start(argv: list[str], log: Path, **options: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` with its output appended to ``log``."""
    reap()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **options,
        )
    _children.append(process)
    return process


def reap() -> None:
    """Collect the children that have exited."""
    _children[:] = [p for p in _children if p.poll() is None]
