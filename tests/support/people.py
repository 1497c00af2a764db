"""Valid synthetic registrants for tests, from the project's own synthetic population."""

from __future__ import annotations

import random
from typing import Any

from intake.validation import today_wib
from simulators.population import valid_person


def person(index: int, *, seed: int = 0) -> dict[str, Any]:
    """A valid adult registrant; unique NIK per index within a seed."""
    return valid_person(random.Random(seed * 1_000_003 + index), today_wib(), index)
