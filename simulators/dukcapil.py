"""The Dukcapil simulator: the population registry's NIK verification API.

    POST /v1/nik/verify  {"nik", "full_name", "birth_place", "birth_date"}
      200 {"result": "match"}
      200 {"result": "mismatch", "fields": ["full_name", "birth_place", "birth_date"]}  (a subset)
      404 {"result": "not_found"}
      400 {"error": "...", "fields": [...]}   a malformed request (fields named, never quoted)

It answers from a :class:`~simulators.population.Registry`: a NIK is found when the synthetic
person's truth says Dukcapil holds it, and the record compared is
:func:`~simulators.population.dukcapil_record`. Names and places are compared
case-insensitively, with runs of whitespace treated as one space (and Unicode in NFC); birth
dates as dates. The request is a POST so that the NIK never appears in a URL or an access log.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from collections.abc import Mapping

from aiohttp import web

from simulators.admin import admin_routes
from simulators.behaviour import Gate
from simulators.jsonhttp import (
    BadRequest,
    application,
    http_middleware,
    json_response,
    nik_of,
    read_object,
    strings,
)
from simulators.population import Registry

# Compared in this order, and reported in it.
COMPARED_FIELDS = ("full_name", "birth_place", "birth_date")


def normalise_text(value: str) -> str:
    """A name or place as compared: NFC, case-folded, whitespace runs as one space, trimmed."""
    return " ".join(unicodedata.normalize("NFC", value).casefold().split())


def mismatched_fields(record: Mapping[str, str], claim: Mapping[str, str]) -> list[str]:
    """The fields of ``claim`` that disagree with Dukcapil's ``record``, in a fixed order.
    ``claim["birth_date"]`` must be an ISO date (``BadRequest`` otherwise)."""
    try:
        claimed_birth = dt.date.fromisoformat(claim["birth_date"])
    except ValueError:
        raise BadRequest("invalid_fields", ["birth_date"]) from None
    fields = []
    if normalise_text(record["full_name"]) != normalise_text(claim["full_name"]):
        fields.append("full_name")
    if normalise_text(record["birth_place"]) != normalise_text(claim["birth_place"]):
        fields.append("birth_place")
    if dt.date.fromisoformat(record["birth_date"]) != claimed_birth:
        fields.append("birth_date")
    return fields


def create_app(registry: Registry, gate: Gate) -> web.Application:
    """The Dukcapil API over ``registry``, behind ``gate``, with the ``/_sim/`` control routes."""

    async def verify(request: web.Request) -> web.Response:
        try:
            body = await read_object(request)
            nik = nik_of(body)
            full_name, birth_place, birth_date = strings(body, *COMPARED_FIELDS)
            record = registry.record(nik)
            if record is None:
                return json_response({"result": "not_found"}, status=404)
            claim = {"full_name": full_name, "birth_place": birth_place, "birth_date": birth_date}
            fields = mismatched_fields(record, claim)
        except BadRequest as exc:
            return exc.response()
        if fields:
            return json_response({"result": "mismatch", "fields": fields})
        return json_response({"result": "match"})

    app = application([http_middleware(gate)])
    app.add_routes([web.post("/v1/nik/verify", verify), *admin_routes(gate)])
    return app
