"""The DTKS simulator: the social affairs ministry's register of welfare recipients.

    POST /v1/recipients/lookup  {"nik"}
      200 {"recipient": true | false}
      400 {"error": "...", "fields": ["nik"]}   a malformed request

``recipient`` is true exactly for the synthetic people whose truth says they receive social
assistance (they are not excluded from the programme, only given lower priority). A POST, so
that the NIK never appears in a URL or an access log.
"""

from __future__ import annotations

from aiohttp import web

from simulators.admin import admin_routes
from simulators.behaviour import Gate
from simulators.jsonhttp import nik_lookup_app
from simulators.population import Registry


def create_app(registry: Registry, gate: Gate) -> web.Application:
    """The DTKS API over ``registry``, behind ``gate``, with the ``/_sim/`` control routes."""
    return nik_lookup_app(
        gate,
        "/v1/recipients/lookup",
        lambda nik: {"recipient": registry.is_welfare(nik)},
        admin_routes(gate),
    )
