"""The Dapodik simulator: the education ministry's register of pupils and students.

    POST /v1/students/lookup  {"nik"}
      200 {"enrolled": true | false}
      400 {"error": "...", "fields": ["nik"]}   a malformed request

``enrolled`` is true exactly for the synthetic people whose truth says they are students. A
POST, so that the NIK never appears in a URL or an access log.
"""

from __future__ import annotations

from aiohttp import web

from simulators.admin import admin_routes
from simulators.behaviour import Gate
from simulators.jsonhttp import nik_lookup_app
from simulators.population import Registry


def create_app(registry: Registry, gate: Gate) -> web.Application:
    """The Dapodik API over ``registry``, behind ``gate``, with the ``/_sim/`` control routes."""
    return nik_lookup_app(
        gate,
        "/v1/students/lookup",
        lambda nik: {"enrolled": registry.is_student(nik)},
        admin_routes(gate),
    )
