"""benchmarks.plots: which PNGs a run gives, their size, and the goodput computation."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from benchmarks.plots import compare, rates, render

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PANELS = ("rate", "latency", "queues", "funnel", "ministries")


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG, read from its IHDR chunk."""
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _sample(t: float, *, full: bool) -> dict[str, Any]:
    i = int(t)
    sample: dict[str, Any] = {
        "t": t,
        "offered": 1333,
        "sent": 1400,
        "accepted": 1300 - i,
        "shed": 20 + i,
        "invalid": 5,
        "errors": 0,
        "latency_ms": {"p50": 4.1, "p90": 8.0 + i, "p99": 15.2 + i, "max": 30.0 + i},
    }
    if full:
        sample["queues"] = {
            "intake.persist": 1200 - 100 * i,
            "intake.lane.dukcapil": 300,
            "intake.lane.dtks": 0,  # never non-zero: no line
        }
        sample["funnel"] = {
            "registered": 5000 + 1300 * i,
            "email_verified": 10 * i,
            "phone_verified": 8 * i,
            "nik_verified": 100 * i,
            "photo_verified": 0,
            "verified": 0,
            "rejected": 3,
            "review": 1,
        }
        sample["ministries"] = {
            "dukcapil": {"served": 1200 + 50 * i, "rejected": 3 + i},
            "dapodik": {"served": 40 * i, "rejected": 0},
            "dtks": {"served": 30 * i, "rejected": 0},
        }
        sample["generator_cpu"] = 0.35
    return sample


def _result(*, full: bool, name: str = "peak", seconds: int = 10) -> dict[str, Any]:
    series = [_sample(float(t), full=full) for t in range(seconds)]
    series[3]["latency_ms"] = None  # a second without answers
    del series[5]  # a missing sample
    return {"name": name, "series": series}


def test_render_writes_every_panel_at_1000x400(tmp_path: Path) -> None:
    paths = render(_result(full=True), tmp_path, "peak")

    assert paths == [tmp_path / f"peak-{panel}.png" for panel in PANELS]
    for path in paths:
        assert path.is_file()
        assert _png_size(path) == (1000, 400)


def test_render_skips_panels_without_data(tmp_path: Path) -> None:
    paths = render(_result(full=False, name="bare"), tmp_path, "bare")

    assert paths == [tmp_path / "bare-rate.png", tmp_path / "bare-latency.png"]
    for path in paths:
        assert _png_size(path) == (1000, 400)
    for panel in ("queues", "funnel", "ministries"):
        assert not (tmp_path / f"bare-{panel}.png").exists()


def test_render_of_an_empty_run_writes_nothing(tmp_path: Path) -> None:
    assert render({"name": "empty", "series": []}, tmp_path, "empty") == []
    assert render({"series": [{"t": 0.0}, {"t": 1.0, "queues": None}]}, tmp_path, "x") == []
    assert list(tmp_path.iterdir()) == []


def test_goodput_is_served_difference_over_time_difference_across_gaps() -> None:
    # 50 served calls per second; samples at t = 3, 4 and 7 are missing, t = 5 has no ministry.
    times = [0.0, 1.0, 2.0, 5.0, 6.0, 8.0, 9.5]
    series: list[dict[str, Any]] = [
        {"t": t, "ministries": {"dukcapil": {"served": 1000 + 50 * t, "rejected": 7}}}
        for t in times
    ]
    series[3]["ministries"] = None
    series.insert(0, series.pop(4))  # out of order: sorted by t

    t, per_second = rates(series, ("ministries", "dukcapil", "served"))

    assert t == [1.0, 2.0, 6.0, 8.0, 9.5]
    assert per_second == pytest.approx([50.0] * 5)
    assert rates(series, ("ministries", "dukcapil", "rejected")) == (t, [0.0] * 5)


def test_rates_skip_what_cannot_be_a_rate() -> None:
    series: list[dict[str, Any]] = [
        {"t": 0.0, "c": 10},
        {"t": 1.0, "c": 30},
        {"t": 1.0, "c": 40},  # same t: no rate
        {"t": 2.0, "c": 5},  # counter went down (restart): no rate
        {"t": 4.0, "c": 25},
        {"t": 5.0, "c": None},
        {"t": 6.0},
    ]

    assert rates(series, ("c",)) == ([1.0, 4.0], [20.0, 10.0])
    assert rates(series, ("absent", "path")) == ([], [])
    assert rates([], ("c",)) == ([], [])


def test_compare_writes_accepted_and_latency(tmp_path: Path) -> None:
    runs = {"edge": _result(full=True, name="edge"), "naive": _result(full=False, name="naive")}

    paths = compare(runs, tmp_path / "out", "cmp")

    assert paths == [tmp_path / "out" / "cmp-accepted.png", tmp_path / "out" / "cmp-latency.png"]
    for path in paths:
        assert _png_size(path) == (1000, 400)
