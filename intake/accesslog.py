"""The edge's access log: one line per answer, with the route template, never the path."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger


class AccessLogger(AbstractAccessLogger):
    """Logs method, route template, status and duration. Never the concrete path (it holds
    registration ids) nor the query string or headers (they may hold tokens). aiohttp calls
    :meth:`log`; the express path (:mod:`intake.express`) calls :meth:`answered`."""

    @property
    def enabled(self) -> bool:
        """Skip the per-request work entirely when INFO is filtered out."""
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        match_info = getattr(request, "match_info", None)
        route = getattr(getattr(match_info, "route", None), "resource", None)
        template = route.canonical if route is not None else "unmatched"
        self.answered(request.method, template, response.status, time)

    def answered(self, method: str, template: str, status: int, time: float) -> None:
        """One answer, ``time`` seconds after its request was read."""
        self.logger.info(
            "%s %s %s",
            method,
            template,
            status,
            extra={"fields": {"status": status, "duration_s": round(time, 6)}},
        )
