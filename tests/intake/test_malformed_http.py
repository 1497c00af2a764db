"""What HTTP itself cannot parse gets a problem too: ``400 malformed-request``, naming the part
of the request at fault, never aiohttp's text/plain, and never a log line quoting it."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest
from prometheus_client import REGISTRY

from core.settings import Settings
from intake.protocol import malformed_body
from tests.support import inprocess
from tests.support.openapi import validate
from tests.support.people import person
from tests.support.rawhttp import read_response

NIK = "3201234508900001"  # in a header below: it must not reach a log line
HEAD = b"Host: edge\r\n"
CASES = [
    (b"G\x00T / HTTP/1.1\r\n" + HEAD + b"\r\n", "request_line", "bad_method"),
    (b"GET / HTTP/9.9\r\n" + HEAD + b"\r\n", "request_line", "invalid"),
    (b"GET http://[::1 HTTP/1.1\r\n" + HEAD + b"\r\n", "request_line", "bad_target"),
    (b"GET / HTTP/1.1\r\n" + HEAD + b"X-A: " + b"a" * 9000 + b"\r\n\r\n", "head", "too_long"),
    (
        b"GET / HTTP/1.1\r\n" + HEAD + b"X-Nik\x01: " + NIK.encode() + b"\r\n\r\n",
        "headers",
        "invalid",
    ),
    (
        b"POST /v1/registrations HTTP/1.1\r\n"
        + HEAD
        + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "headers",
        "invalid",
    ),
    (
        b"POST /v1/registrations HTTP/1.1\r\n"
        + HEAD
        + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
        "body",
        "bad_framing",
    ),
]


async def test_what_http_cannot_parse_is_a_400_problem_naming_the_part(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    unparsed = {"route": "unparsed", "method": "other", "status_class": "4xx"}
    before = REGISTRY.get_sample_value("intake_http_requests_total", unparsed) or 0.0
    async with inprocess.served_edge(settings) as edge:
        for request, field, code in CASES:
            reader, writer = await asyncio.open_connection(edge.host, edge.port)
            try:
                writer.write(request)
                status, headers, raw = await read_response(reader)
                assert status == 400, (request[:40], raw)
                assert headers["content-type"] == "application/problem+json"
                problem = orjson.loads(raw)
                validate("MalformedRequestProblem", problem)
                assert problem["type"] == "https://intake.example/problems/malformed-request"
                assert [(e["field"], e["code"]) for e in problem["errors"]] == [(field, code)]
                # The connection is closed after it: what followed cannot be trusted.
                assert await asyncio.wait_for(reader.read(), 10) == b""
            finally:
                writer.close()
        counted = REGISTRY.get_sample_value("intake_http_requests_total", unparsed)
        assert counted == before + len(CASES)
        # The edge goes on: a registration on a new connection is accepted.
        body = orjson.dumps(person(1, seed=5))
        reader, writer = await asyncio.open_connection(edge.host, edge.port)
        try:
            writer.write(
                b"POST /v1/registrations HTTP/1.1\r\n" + HEAD + b"Content-Type: application/json"
                b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            status, _, raw = await read_response(reader)
            assert status == 202, raw
        finally:
            writer.close()
    logged = "\n".join(
        record.getMessage() + str(record.exc_info or "") for record in caplog.records
    )
    assert "malformed request refused: BadHttpMethod" in logged
    assert NIK not in logged
    assert "aaaaaaaa" not in logged


def test_anything_else_http_refuses_is_a_malformed_request() -> None:
    problem = malformed_body(ValueError("not one of aiohttp's"))
    assert problem["status"] == 400
    assert problem["errors"] == [
        {"field": "request", "code": "malformed", "message": "The request is not valid HTTP/1.1"}
    ]
