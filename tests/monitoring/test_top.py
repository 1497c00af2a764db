"""``intake top`` renders what Prometheus answered, and says when it could not ask."""

from __future__ import annotations

import pytest

from monitoring.top import Snapshot, main, render


def test_the_view_shows_the_edge_the_funnel_the_queues_and_the_lanes() -> None:
    snapshot = Snapshot(
        scalars={"accepted": 1333.4, "shed": 12.0, "invalid": 0.5, "p99": 0.0157},
        series={
            "funnel": {"registered": 80000, "nik_verified": 41234, "rejected": 321},
            "ready": {"intake.registrations": 1500, "intake.delay.5s": 0, "intake.verify.dtks": 7},
            "consumers": {"intake.registrations": 2, "intake.verify.dtks": 1},
            "limit": {"dukcapil": 14.5},
            "inflight": {"dukcapil": 12},
            "workers": {"dukcapil": 2, "persist": 3},
            "breakers": {"dtks (open)": 1},
        },
    )
    text = render(snapshot)
    assert "accepted 1,333.4/s" in text
    assert "p99 15.7 ms" in text
    assert "registered 80,000" in text
    assert "nik_verified 41,234" in text
    assert "intake.registrations" in text
    assert "intake.delay.5s" not in text  # empty delay queues are left out
    assert "dukcapil" in text
    assert "14.5" in text
    assert "dtks (open): 1" in text
    assert "error" not in text


def test_an_unreachable_prometheus_is_an_error_not_a_crash(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--once", "--prometheus", "http://127.0.0.1:1"]) == 1
    out = capsys.readouterr().out
    assert "error: ClientConnectorError" in out
