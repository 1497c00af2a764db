"""The simulator-only control endpoints every simulated server carries, and a client for them.

These routes are not part of any ministry's API; they exist so that tests and benchmarks can
watch a simulator and change its behaviour while it runs (switch an outage on and off, shrink
its capacity, slow it down). They are exempt from the gate: they answer during an outage.

    GET  /_sim/stats          the gate's counters and the behaviour in force
    POST /_sim/behaviour      replace any behaviour fields: {"outage": true, "capacity": 2, ...}
                              -> 200 {"behaviour": {...}} or 400 {"error", "detail"}
    POST /_sim/stats/reset    zero the cumulative counters -> 200 (the stats)

The simulators listen on the loopback interface by default; these routes have no
authentication, like the rest of a simulator.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from aiohttp import web

from simulators.behaviour import BehaviourError, Gate
from simulators.jsonhttp import BadRequest, json_response, read_object


def admin_routes(gate: Gate) -> list[web.RouteDef]:
    """The control routes of the simulator behind ``gate``."""

    async def stats(request: web.Request) -> web.Response:
        return json_response(gate.stats())

    async def reset(request: web.Request) -> web.Response:
        gate.counters.reset()
        return json_response(gate.stats())

    async def behaviour(request: web.Request) -> web.Response:
        try:
            changes = await read_object(request)
            gate.set_behaviour(gate.behaviour.apply_json(changes))
        except BadRequest as exc:
            return exc.response()
        except BehaviourError as exc:
            return json_response({"error": "invalid_behaviour", "detail": str(exc)}, status=400)
        return json_response({"behaviour": gate.behaviour.to_json()})

    return [
        web.get("/_sim/stats", stats),
        web.post("/_sim/stats/reset", reset),
        web.post("/_sim/behaviour", behaviour),
    ]


class AdminClient:
    """Drives one running simulator over HTTP, from a test or a benchmark in another process.

    ``base_url`` is the simulator's HTTP address (for SMTP, its admin address)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")

    async def stats(self) -> dict[str, Any]:
        """The counters and the behaviour in force."""
        async with self._session.get(f"{self._base_url}/_sim/stats") as response:
            response.raise_for_status()
            return _object(await response.read())

    async def set_behaviour(self, **changes: object) -> dict[str, Any]:
        """Replace behaviour fields; returns the behaviour now in force. A refused change
        raises ``aiohttp.ClientResponseError`` (400)."""
        url = f"{self._base_url}/_sim/behaviour"
        async with self._session.post(url, json=changes) as response:
            response.raise_for_status()
            behaviour: dict[str, Any] = _object(await response.read())["behaviour"]
            return behaviour

    async def reset(self) -> dict[str, Any]:
        """Zero the cumulative counters; returns the stats after the reset."""
        async with self._session.post(f"{self._base_url}/_sim/stats/reset") as response:
            response.raise_for_status()
            return _object(await response.read())


def _object(raw: bytes) -> dict[str, Any]:
    body = orjson.loads(raw)
    if not isinstance(body, dict):
        raise ValueError("the simulator answered something other than a JSON object")
    return body
