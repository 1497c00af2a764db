"""The arithmetic of load shedding: how long a backlog needs to drain, and the Retry-After
that tells a shed client when to come back.

Pure functions and one small meter, no I/O: the :class:`~intake.publisher.BatchPublisher`
feeds them what it measured and the tests feed them numbers.
"""

from __future__ import annotations

import math

# Weight of the newest measurement in the moving averages: half, so that a change of pace
# (a worker started or stopped) shows within two or three samples.
SMOOTHING = 0.5


def drain_time_s(backlog: float | None, rate_per_s: float | None) -> float | None:
    """Seconds for ``backlog`` to drain at ``rate_per_s``: infinite when nothing drains it,
    ``None`` when either figure is not known (yet)."""
    if backlog is None or rate_per_s is None:
        return None
    if backlog <= 0:
        return 0.0
    if rate_per_s <= 0:
        return math.inf
    return backlog / rate_per_s


def retry_after_s(seconds: float, *, maximum_s: int, jitter: float) -> int:
    """A ``Retry-After`` value (whole seconds, RFC 9110) for a wait of about ``seconds``.

    The wait is rounded up and clamped to ``[1, maximum_s]``, then spread over its upper half
    ("equal jitter"): ``jitter`` in ``[0, 1)`` picks a whole second in ``[ceil(v / 2), v]``, so
    that the clients shed in one second do not all come back in the same second, and none is
    told to wait longer than the estimate. For a fixed ``jitter`` the result never decreases as
    ``seconds`` grows.
    """
    maximum_s = max(1, maximum_s)
    value = maximum_s if math.isnan(seconds) or seconds >= maximum_s else math.ceil(seconds)
    value = max(1, value)
    low = (value + 1) // 2
    spread = value - low + 1
    return low + min(int(max(0.0, jitter) * spread), spread - 1)


class DrainMeter:
    """The persist queue's depth and drain rate, from periodic samples of its depth.

    Between two samples the queue lost ``depth_before + published - depth_now`` messages to its
    consumers, where ``published`` is what this edge had confirmed into it meanwhile. Other
    edges' publishes are not seen, so with several edges publishing the rate is underestimated
    and the wait overestimated: the safe side. While the queue is full every edge is shedding
    and publishes little, and that is when the estimate matters. Depths and rates count
    messages (batches), which cancels out in depth / rate.
    """

    def __init__(self) -> None:
        self.depth: int | None = None
        self.consumers: int | None = None
        self.rate_per_s: float | None = None
        self._last: tuple[float, int, int] | None = None

    def observe(self, now_s: float, depth: int, consumers: int, published: int) -> None:
        """Record one sample: the queue's depth and consumer count at ``now_s`` (a monotonic
        clock) and the count of messages this edge has had confirmed into the queue so far."""
        if self._last is not None:
            then_s, depth_before, published_before = self._last
            elapsed_s = now_s - then_s
            if elapsed_s > 0:
                consumed = max(0, depth_before + (published - published_before) - depth)
                instant = consumed / elapsed_s
                self.rate_per_s = (
                    instant
                    if self.rate_per_s is None
                    else SMOOTHING * instant + (1 - SMOOTHING) * self.rate_per_s
                )
        if consumers == 0:
            self.rate_per_s = 0.0  # nobody is draining it, whatever it did a second ago
        self.depth, self.consumers = depth, consumers
        self._last = (now_s, depth, published)

    @property
    def sampled_at_s(self) -> float | None:
        """When the last sample was taken (the caller's monotonic clock)."""
        return None if self._last is None else self._last[0]

    def drain_time_s(self) -> float | None:
        """Seconds for the queue's last known depth to drain at its measured rate."""
        return drain_time_s(self.depth, self.rate_per_s)
