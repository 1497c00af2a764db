"""``intake demo``: placeholder until the demo lands in the next commit."""

from __future__ import annotations

from core.settings import Settings


def main(settings: Settings, count: int) -> int:
    raise SystemExit("the demo is not implemented yet")
