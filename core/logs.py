"""Logging as one JSON object per line on stderr.

Personal data is kept out of logs by construction: no code path passes a NIK, name, email,
phone or token to a logger, exception messages are not logged where they could quote input,
and the edge's access log records the route template, never the path or the query string.
A test runs the whole system and fails if any submitted personal value shows up in the logs.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys

import orjson


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra}`` on one line."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self._role = role

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "role": self._role,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        return orjson.dumps(entry, default=str).decode()


def configure(role: str, level: str) -> None:
    """Send every log record of the process to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(role))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
