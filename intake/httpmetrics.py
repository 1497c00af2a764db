"""The edge's request counter and duration histogram, recorded by both accept paths and, in bulk,
by the early 503 (:class:`Deferred`)."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence

from aiohttp import web
from prometheus_client import Counter, Histogram

from core import metrics

# The duration histogram's buckets as prometheus-client keeps them: bucket ``i`` holds the
# answers that took at most ``BOUNDS[i]`` (and more than ``BOUNDS[i - 1]``).
BOUNDS = (*metrics.HTTP_BUCKETS, math.inf)


class HttpMetrics:
    """The request counter and duration histogram, their children cached by label values (a
    dict look-up per request instead of prometheus-client's validated, locked ``labels()``)."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, str, int], Counter] = {}
        self._durations: dict[tuple[str, str], Histogram] = {}

    def record(self, request: web.Request, status: int, elapsed_s: float) -> None:
        """One answer of aiohttp's, by its route *template* (``/v1/registrations/{id}``),
        never the path: paths hold ids."""
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        method = request.method if request.method in metrics.HTTP_METHODS else "other"
        self.count(route, method, status, elapsed_s)

    def count(self, route: str, method: str, status: int, elapsed_s: float) -> None:
        """One answer on ``route`` (a template) for ``method`` (one of ``HTTP_METHODS`` or
        ``other``)."""
        key = (route, method, status // 100)
        counter = self._counters.get(key)
        if counter is None:
            counter = metrics.HTTP_REQUESTS.labels(route, method, metrics.status_class(status))
            self._counters[key] = counter
        counter.inc()
        duration = self._durations.get(key[:2])
        if duration is None:
            duration = self._durations[key[:2]] = metrics.HTTP_DURATION.labels(route, method)
        duration.observe(elapsed_s)


class Deferred:
    """Answers of one route, method and status, noted as they are given (a bucket's index and
    two additions) and added to the counter and the duration histogram by :meth:`flush`, in
    bulk: for a path where a counter's ``inc()`` and a histogram's ``observe()`` (a lock each,
    a walk along the buckets, and writes to a shared file in multiprocess mode) would be a fair
    share of the answer's cost (the early 503, :meth:`intake.gate.Gate.answer`). The series are
    created at the first answer, as the middleware's are."""

    __slots__ = ("_counter", "_counts", "_duration", "_labels", "_sums", "bulk")

    def __init__(self, route: str, method: str, status: int) -> None:
        self._labels = (route, method, metrics.status_class(status))
        self._counter: Counter | None = None
        self._duration: Histogram | None = None
        self._counts = [0] * len(BOUNDS)
        self._sums = [0.0] * len(BOUNDS)
        self.bulk: bool | None = None  # whether observable_in_bulk, known at the first flush

    def add(self, elapsed_s: float) -> None:
        """One answer, given ``elapsed_s`` after its request was read."""
        i = bisect_left(BOUNDS, elapsed_s)  # prometheus-client's: the first bound >= it
        self._counts[i] += 1
        self._sums[i] += elapsed_s

    def flush(self) -> int:
        """Add the answers noted since the last flush to the metrics; how many they were."""
        counts, sums = self._counts, self._sums
        answered = sum(counts)
        if answered == 0:
            return 0
        self._counts, self._sums = [0] * len(BOUNDS), [0.0] * len(BOUNDS)
        if self._counter is None or self._duration is None:
            route, method, status_class = self._labels
            self._counter = metrics.HTTP_REQUESTS.labels(route, method, status_class)
            self._duration = metrics.HTTP_DURATION.labels(route, method)
        self._counter.inc(answered)
        if self.bulk is None:
            self.bulk = observable_in_bulk(self._duration)
        if self.bulk:
            observe_in_bulk(self._duration, counts, sums)
        else:  # one by one, each bucket's at its mean: the same buckets, the same sum
            for count, total_s in zip(counts, sums, strict=True):
                for _ in range(count):
                    self._duration.observe(total_s / count)
        return answered


def observable_in_bulk(histogram: Histogram) -> bool:
    """Whether :func:`observe_in_bulk` can add to ``histogram`` (a child of a labelled
    histogram with :data:`BOUNDS`): it leans on prometheus-client's ``_upper_bounds``,
    ``_buckets`` and ``_sum``, which have no public counterpart (its maintainers prefer a
    collector of one's own for data counted elsewhere, which multiprocess mode would not serve,
    nor merge with the answers the histogram observes one by one)."""
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    return (
        tuple(getattr(histogram, "_upper_bounds", ())) == BOUNDS
        and isinstance(buckets, list)
        and len(buckets) == len(BOUNDS)
        and all(callable(getattr(value, "inc", None)) for value in (*buckets, total))
    )


def observe_in_bulk(histogram: Histogram, counts: Sequence[int], sums: Sequence[float]) -> None:
    """Add ``counts[i]`` observations to bucket ``i`` of ``histogram``, and all of ``sums`` to
    its sum: what as many ``observe()`` calls would add, with one write per bucket used."""
    for value, count in zip(histogram._buckets, counts, strict=True):
        if count:
            value.inc(count)
    histogram._sum.inc(math.fsum(sums))
