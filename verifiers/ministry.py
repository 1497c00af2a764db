"""Calling a ministry's HTTP API: every transport failure becomes a :class:`Retry`.

A verifier asks a question and interprets the answer; what to do when there is no answer is the
same for every ministry and lives here: a timeout, a refused or reset connection, a 5xx, a 429 or
a 503 is transient (``Retry``, honouring ``Retry-After`` when the server sends one); any other
unexpected status is a bug on one side and is retried too, so that no registration is rejected
because of it. Nothing about the registrant is logged.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from core.verification import Failure, Retry

TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    *,
    timeout_s: float,
    expected: frozenset[int] = frozenset({200}),
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """POST ``body`` (with ``headers`` besides the content type) and return ``(status, decoded
    JSON)`` for an expected status; otherwise raise :class:`Retry` with a reason naming the
    failure (never the data)."""
    try:
        async with session.post(
            url,
            data=orjson.dumps(body),
            headers={"Content-Type": "application/json", **(headers or {})},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            if response.status in expected:
                return response.status, orjson.loads(await response.read())
            retry_after = _retry_after_s(response.headers.get("Retry-After"))
            # An answer that is not the expected one: the service did not do what was asked.
            if response.status in (429, 503):
                raise Retry("overloaded", retry_after, failure=Failure.OVERLOAD, not_done=True)
            failure = Failure.BROKEN if response.status >= 500 else Failure.LOCAL
            raise Retry(f"http_{response.status}", retry_after, failure=failure, not_done=True)
    except TimeoutError:
        raise Retry("timeout", failure=Failure.OVERLOAD) from None
    except aiohttp.ClientConnectorError as exc:  # no connection was made
        raise Retry(
            f"unreachable:{type(exc).__name__}", failure=Failure.UNREACHABLE, not_done=True
        ) from None
    except aiohttp.ClientError as exc:  # lost on the way: the request may have been served
        raise Retry(f"unreachable:{type(exc).__name__}", failure=Failure.UNREACHABLE) from None
    except orjson.JSONDecodeError:
        raise Retry("unreadable_answer", failure=Failure.BROKEN) from None


def _retry_after_s(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
