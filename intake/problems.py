"""Error responses as RFC 9457 problem details, the same shape for every 4xx and 5xx."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web

from intake.validation import FieldError

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://intake.example/problems/"


def problem(
    status: int,
    slug: str,
    title: str,
    *,
    errors: Iterable[FieldError] = (),
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """A problem+json response; ``slug`` is the stable, machine-readable kind of problem."""
    body: dict[str, Any] = {"type": PROBLEM_TYPE_BASE + slug, "title": title, "status": status}
    field_errors = [{"field": e.field, "code": e.code, "message": e.message} for e in errors]
    if field_errors:
        body["errors"] = field_errors
    body.update(extra)
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


_UNAVAILABLE_TITLE = "Registration is temporarily unavailable, please retry"


def unavailable_body(reason: str) -> dict[str, Any]:
    """The problem document of a 503 (also prepared as bytes by the early 503, intake.gate)."""
    return {
        "type": PROBLEM_TYPE_BASE + "unavailable",
        "title": _UNAVAILABLE_TITLE,
        "status": 503,
        "reason": reason,
    }


def unavailable(reason: str, retry_after_s: int) -> web.Response:
    """503 with ``Retry-After``: the registration was not accepted; the client may retry."""
    return problem(
        503,
        "unavailable",
        _UNAVAILABLE_TITLE,
        headers={"Retry-After": str(retry_after_s)},
        reason=reason,
    )
