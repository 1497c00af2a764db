"""The edge's access log: one line per answer, with the route template, never the path."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from core.logs import BufferedLines

ACCESS_LOGGER = "intake.access"


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
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        fields = {"status": status, "duration_s": round(time, 6)}
        handlers = logger.handlers
        if not logger.propagate and len(handlers) == 1 and isinstance(handlers[0], BufferedLines):
            # The same line, without a log record: a tenth of the cost (core/logs.py).
            handlers[0].entry(logger.name, f"{method} {template} {status}", fields)
        else:
            logger.info("%s %s %s", method, template, status, extra={"fields": fields})
