"""benchmarks/edge.py's arithmetic: each target against bare in the same round."""

from __future__ import annotations

import pytest

from benchmarks.edge import round_ratios


def test_each_round_is_compared_with_its_own_bare_run() -> None:
    runs = [
        {"round": 1, "target": "bare", "accepted_per_s": 10_000.0},
        {"round": 1, "target": "edge", "accepted_per_s": 8_000.0},
        {"round": 2, "target": "edge", "accepted_per_s": 4_000.0},
        {"round": 2, "target": "bare", "accepted_per_s": 5_000.0},  # a slow spell: both slow
        {"round": 3, "target": "bare", "accepted_per_s": 10_000.0},
        {"round": 3, "target": "edge", "accepted_per_s": 9_000.0},
        {"round": 3, "target": "edge+access-log", "accepted_per_s": 7_000.0},
    ]
    figures = round_ratios(runs)
    assert figures["edge"]["per_round"] == pytest.approx([0.8, 0.8, 0.9])
    assert figures["edge"]["median"] == pytest.approx(0.8)
    assert figures["edge+access-log"]["median"] == pytest.approx(0.7)
    assert "bare" not in figures
