"""When a consumer subscribes afresh (workers/sessions.py): the decision, on numbers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from workers.sessions import IDLE_RESUBSCRIBE_S, STALL_S, resubscribe_reason


async def test_a_consumer_resubscribes_when_stalled_or_idle_and_never_while_engaged() -> None:
    asked: list[int] = []

    def ready(count: int) -> Callable[[], Awaitable[int]]:
        async def probe() -> int:
            asked.append(count)
            return count

        return probe

    between = (STALL_S + IDLE_RESUBSCRIBE_S) / 2
    assert await resubscribe_reason(STALL_S / 2, False, ready(5)) is None  # too soon
    assert await resubscribe_reason(IDLE_RESUBSCRIBE_S * 2, True, ready(5)) is None  # busy
    assert asked == []  # the queue is not asked when the answer is known
    assert await resubscribe_reason(between, False, ready(5)) == "stalled"
    assert await resubscribe_reason(between, False, ready(0)) is None  # nothing to receive
    assert asked == [5, 0]
    assert await resubscribe_reason(IDLE_RESUBSCRIBE_S, False, ready(0)) == "idle"
    assert asked == [5, 0]
