"""Every message a simulator received, in order, numbered: what a test or the demo reads to
play many phones and mailboxes at once (one request per poll, not one per person).

    GET /_sim/messages?after=N[&limit=M]     (the SMS gateway)
    GET /_sim/mail?after=N[&limit=M]         (the SMTP simulator)
      200 {"messages": [{..., "seq": N+1}, ...], "last": <the last seq given, or N>}

The feed keeps the last :data:`FEED_MAX` messages; ``seq`` counts from 1 and never repeats. A
reader passes the ``last`` it got as the next ``after``.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping
from typing import Any

FEED_MAX = 200_000
PAGE_MAX = 5_000


class Feed:
    """The last ``size`` messages as JSON objects, each with its ``seq``."""

    def __init__(self, size: int = FEED_MAX) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=size)
        self._counter = itertools.count(1)

    def append(self, message: Mapping[str, Any]) -> int:
        seq = next(self._counter)
        self._items.append({**message, "seq": seq})
        return seq

    def after(self, seq: int, limit: int = PAGE_MAX) -> tuple[list[dict[str, Any]], int]:
        """Up to ``limit`` messages numbered above ``seq``, oldest first, and the last seq."""
        if not self._items or self._items[-1]["seq"] <= seq:
            return [], seq
        first = self._items[0]["seq"]
        start = max(0, seq + 1 - first)
        page = list(itertools.islice(self._items, start, start + max(1, limit)))
        return page, page[-1]["seq"]


def parse_after(query: Mapping[str, str]) -> tuple[int, int] | None:
    """``(after, limit)`` from a query string, or None when it has no valid ``after``."""
    try:
        after = int(query["after"])
        limit = min(PAGE_MAX, int(query.get("limit", PAGE_MAX)))
    except (KeyError, ValueError):
        return None
    if after < 0 or limit < 1:
        return None
    return after, limit
