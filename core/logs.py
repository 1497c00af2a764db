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
import threading
import time
from typing import Any

import orjson


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra}`` on one line."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self._role = role

    _second = -1
    _prefix = ""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        return self.line(
            record.created,
            record.levelname.lower(),
            record.name,
            record.getMessage(),
            fields if isinstance(fields, dict) else None,
        )

    def line(
        self, created: float, level: str, logger: str, msg: str, fields: dict[str, Any] | None
    ) -> str:
        """The line of one entry (what :meth:`format` writes for a record)."""
        entry = {
            "ts": self._timestamp(created),
            "level": level,
            "role": self._role,
            "logger": logger,
            "msg": msg,
        }
        if fields:
            entry.update(fields)
        return orjson.dumps(entry, default=str).decode()

    def _timestamp(self, created: float) -> str:
        """ISO 8601 in UTC to the microsecond, as ``datetime.isoformat`` writes it; the date
        and time of day are formatted once per second."""
        second = int(created)
        if second != self._second:
            self._second = second
            self._prefix = dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{int((created - second) * 1e6):06d}+00:00"


class BufferedLines(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler for a busy logger (the edge's access log): its lines are written
    together, once ``BUFFER_BYTES`` are waiting or ``FLUSH_INTERVAL_S`` after the first of
    them (by a daemon thread), instead of one write and flush per line, which cost the edge
    more than the rest of the line. A crash loses at most the lines of the last interval; an
    orderly exit (``logging.shutdown``) writes them."""

    BUFFER_BYTES = 64 * 1024
    FLUSH_INTERVAL_S = 0.2

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._size = 0
        self._closed = threading.Event()
        self._flusher = threading.Thread(target=self._flush_periodically, daemon=True)
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # logging's own contract: a bad record never raises
            self.handleError(record)
            return
        self._add(line)

    def entry(self, logger: str, msg: str, fields: dict[str, Any]) -> None:
        """One INFO line, written as :meth:`emit` writes a record's, without making the record
        (a caller that already checked the logger is enabled for INFO): the edge's access
        log, a line per request."""
        formatter = self.formatter
        assert isinstance(formatter, JsonFormatter)
        line = formatter.line(time.time(), "info", logger, msg, fields)
        with self.lock:  # type: ignore[union-attr]
            self._add(line)

    def _add(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line) + 1
        if self._size >= self.BUFFER_BYTES:
            self._write()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()

    def _write(self) -> None:
        if not self._lines:
            return
        lines, self._lines, self._size = self._lines, [], 0
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # the stream is gone (closed at exit)
            pass

    def close(self) -> None:
        self._closed.set()
        self.flush()
        super().close()

    def _flush_periodically(self) -> None:
        while not self._closed.wait(self.FLUSH_INTERVAL_S):
            self.flush()


def buffer_logger(name: str, role: str) -> None:
    """Have the logger ``name`` write its JSON lines to stderr through a
    :class:`BufferedLines` handler of its own (not propagated to the root's)."""
    handler = BufferedLines(sys.stderr)
    handler.setFormatter(JsonFormatter(role))
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False


def configure(role: str, level: str) -> None:
    """Send every log record of the process to stderr as JSON lines."""
    # The lines carry none of the caller's file, line and function, nor thread or process
    # names: a record skips finding them (the logging HOWTO's "Optimization"), which is most
    # of what an access log line cost the edge.
    logging._srcfile = None  # the documented switch
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(role))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
