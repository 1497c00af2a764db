"""The edge's request counter and duration histogram, recorded by both accept paths."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import Counter, Histogram

from core import metrics


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
