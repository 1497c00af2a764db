"""What a worker's probes say (core/health.py), on a clock the test turns."""

from __future__ import annotations

from core.health import Health


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_worker_is_ready_only_while_it_serves_and_alive_while_its_loop_turns() -> None:
    clock = Clock()
    health = Health(stuck_after_s=60, clock=clock)
    assert not health.ready().ok
    assert health.ready().reason == "no broker session"
    assert health.live().ok  # starting is not being stuck
    health.serving(True)
    assert health.ready().ok
    assert health.live().ok
    clock.now += 59
    assert health.live().ok
    clock.now += 1
    assert not health.live().ok
    assert health.live().reason == "loop has not turned for 60 s"
    assert not health.ready().ok  # a stuck worker is not counted either
    health.beat()
    assert health.live().ok
    assert health.ready().ok
    health.serving(False)  # the session ended: reconnecting
    assert health.live().ok
    assert not health.ready().ok


def test_only_stalls_in_a_row_without_a_delivery_between_fail_the_liveness_probe() -> None:
    health = Health(stalls_to_fail=3, clock=Clock())
    health.serving(True)
    health.stalled()
    health.stalled()
    assert health.live().ok  # each stall was answered by a fresh subscription
    health.delivered()  # that worked: deliveries arrive again
    health.stalled()
    health.stalled()
    assert health.live().ok
    health.stalled()
    assert not health.live().ok
    assert health.live().reason == "consumer stalled 3 times in a row"
    health.delivered()
    assert health.live().ok
