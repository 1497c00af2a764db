"""The express path (intake/express.py): a simple registration accepted straight from the
connection answers as aiohttp's handler answers it, and everything else still goes to aiohttp.

Real RabbitMQ and PostgreSQL; the edge served as in production (its site and connection
protocol), next to the same edge with the express path off. aiohttp's own HTTP parser is the
judge of what a well-formed head is.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import orjson
from aiohttp._http_parser import HttpRequestParser  # type: ignore[import-not-found]
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from core.ids import uuid7
from core.keys import Keyring
from core.settings import Settings
from intake.express import Express, head_fields
from intake.protocol import _one_request
from intake.registering import accepted_document
from tests.support import inprocess, openapi
from tests.support.people import person
from tests.support.proxy import broker_proxy
from tests.support.rawhttp import read_response
from tests.support.stored import stored_once
from tests.support.waiting import eventually

LINE = b"POST /v1/registrations HTTP/1.1\r\n"


def _request(form: dict[str, object], *fields: bytes, body: bytes | None = None) -> bytes:
    payload = orjson.dumps(form) if body is None else body
    head = b"".join(f + b"\r\n" for f in (b"Host: edge", *fields))
    return LINE + head + b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)


def _json_request(form: dict[str, object], *fields: bytes) -> bytes:
    return _request(form, b"Content-Type: application/json", *fields)


@contextlib.asynccontextmanager
async def _served(settings: Settings) -> AsyncIterator[tuple[inprocess.RunningEdge, Express]]:
    async with inprocess.served_edge(settings) as edge:
        express = edge.express
        assert (express is not None) == settings.edge_express
        yield edge, express  # type: ignore[misc]


async def _exchange(
    edge: inprocess.RunningEdge, *requests: bytes
) -> list[tuple[int, dict[str, str], bytes]]:
    """Each request written on one connection after the answer to the one before."""
    reader, writer = await asyncio.open_connection(edge.host, edge.port)
    try:
        answers = []
        for request in requests:
            writer.write(request)
            answers.append(await read_response(reader))
        return answers
    finally:
        writer.close()


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- the head, judged by aiohttp's parser -----------------------------------------------------


def _aiohttp_parses(data: bytes) -> dict[str, str] | None:
    """The headers aiohttp's parser reads from ``data`` (one whole request), None if it
    refuses it."""
    loop = asyncio.new_event_loop()
    try:
        parser = HttpRequestParser(BaseProtocol(loop), loop, 2**16)
        try:
            messages, _, _ = parser.feed_data(data)
        except HttpProcessingError:
            return None
        if len(messages) != 1:
            return None
        message, payload = messages[0]
        if not payload.is_eof():
            return None
        return {k.lower(): v for k, v in message.headers.items()}
    finally:
        loop.close()


def test_the_heads_taken_are_plainly_well_formed() -> None:
    form = person(1, seed=81)
    taken = _json_request(form, b"Idempotency-Key: k-1", b"Accept: */*")
    end = taken.index(b"\r\n\r\n")
    assert head_fields(taken, end) == (b"application/json", b"k-1")
    for refused in (
        _json_request(form, b"Host: e"),  # two hosts
        _request(form, b"Host : e", b"Content-Type: application/json"),  # a space before ':'
        _json_request(form, b" folded"),  # obs-fold
        _json_request(form, b"X-A: a\x01b"),  # a control character
        _json_request(form, b"Content-Length: 7"),  # two lengths
        _json_request(form, b"Content-Type: text/plain"),  # two content types
        _json_request(form, b"Idempotency-Key: a", b"idempotency-key: b"),  # two keys
        _json_request(form, *[b"X-%d: a" % i for i in range(100)]),  # more than aiohttp takes
        _json_request(form, b"X-Long: " + b"a" * 8200),  # a field longer than aiohttp takes
    ):
        assert head_fields(refused, refused.index(b"\r\n\r\n")) is None, refused[:200]


_GOOD_NAMES = [b"Host", b"Content-Type", b"content-type", b"Idempotency-Key", b"Content-Length"]
_BAD_NAMES = [b"Bad Name", b"Host ", b"", b"X\x00", b"\xc3\xa9", b"X(y)"]  # aiohttp refuses them
_NAMES = st.sampled_from([*_GOOD_NAMES, *_BAD_NAMES])
_VALUES = st.one_of(
    st.sampled_from(
        [b"application/json", b"Application/JSON; charset=utf-8", b"k", b"", b" a ", b"1"]
    ),
    st.binary(max_size=12),
)


@hypothesis_settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    fields=st.lists(
        st.tuples(_NAMES, st.sampled_from([b": ", b":", b":\t", b" : "]), _VALUES), max_size=8
    )
)
def test_nothing_aiohttp_refuses_is_taken_and_the_fields_agree(
    fields: list[tuple[bytes, bytes, bytes]],
) -> None:
    body = b"{}"
    head = LINE + b"".join(n + sep + v + b"\r\n" for n, sep, v in fields)
    if not any(n.lower() == b"content-length" for n, _, _ in fields):
        head += b"Content-Length: 2\r\n"
    data = head + b"\r\n" + body
    end = data.find(b"\r\n\r\n")
    if end != len(head) - 2 or not _one_request(data)[0]:
        return  # not one whole request: the connection never offers it
    read = head_fields(data, end)
    if read is None:
        return
    parsed = _aiohttp_parses(data)
    assert parsed is not None, data
    content_type, key = read
    assert (content_type is None) == ("content-type" not in parsed)
    if content_type is not None:
        assert content_type.decode("utf-8", "surrogateescape") == parsed["content-type"]
    assert (key is None) == ("idempotency-key" not in parsed)
    if key is not None:
        assert key.decode("utf-8", "surrogateescape") == parsed["idempotency-key"]


# --- the edge, served -------------------------------------------------------------------------


async def test_a_simple_registration_is_answered_as_aiohttp_answers_it(
    settings: Settings, db: asyncpg.Pool
) -> None:
    answers = {}
    accepted: set[uuid.UUID] = set()
    for on in (True, False):
        route = {"route": "/v1/registrations", "method": "POST", "status_class": "2xx"}
        before = _sample("intake_http_requests_total", route)
        accepted_before = _sample("intake_registrations_accepted_total", {})
        async with _served(settings.replace(edge_express=on)) as (edge, express):
            (status, headers, raw), again = await _exchange(
                edge,
                _json_request(person(10 + on, seed=81), b"Idempotency-Key: same-%d" % on),
                _json_request(person(10 + on, seed=81), b"Idempotency-Key: same-%d" % on),
            )
            if on:
                assert (express.taken, express.declined) == (2, 0)
        assert status == 202, raw
        document = orjson.loads(raw)
        openapi.validate("Accepted", document)
        assert again[0] == 202
        assert orjson.loads(again[2])["id"] == document["id"]  # the same key, the same id
        assert headers["location"] == document["status_url"]
        answers[on] = (headers["content-type"], sorted(set(headers) - {"server"}), sorted(document))
        accepted.add(uuid.UUID(document["id"]))
        assert _sample("intake_http_requests_total", route) - before == 2
        assert _sample("intake_registrations_accepted_total", {}) - accepted_before == 2
    assert answers[True] == answers[False]
    async with inprocess.persist_worker(settings, db):
        await stored_once(db, accepted, only=True)


async def test_what_the_express_path_leaves_aiohttp_answers(settings: Settings) -> None:
    form = person(20, seed=81)
    async with _served(settings) as (edge, express):
        cases = [
            (_json_request({**form, "phone": "12"}), 422),
            (_request(form, b"Content-Type: text/plain"), 415),
            (_request(form, b"Content-Type: application/json", body=b'{"nik": '), 400),
            (_json_request(form, b"Idempotency-Key: " + b"k" * 300), 400),
        ]
        for request, expected in cases:
            declined = express.declined
            ((status, headers, raw),) = await _exchange(edge, request)
            assert status == expected, raw
            assert headers["content-type"] == "application/problem+json"
            assert express.declined == declined + 1
        # An Idempotency-Key that is not UTF-8: declined, and 400 (not 500) from aiohttp.
        ((status, _, raw),) = await _exchange(
            edge, _json_request(form, b"Idempotency-Key: caf\xe9-\xff")
        )
        assert status == 400, raw
        assert orjson.loads(raw)["type"].endswith("/bad-idempotency-key")
        # What aiohttp's parser refuses is not even offered: two lengths.
        ((status, _, raw),) = await _exchange(edge, _json_request(form, b"Content-Length: 5"))
        assert status == 400, raw
        assert express.taken == 0
        # The 422 lists what is wrong, per field, from the same validation.
        ((status, _, raw),) = await _exchange(edge, _json_request({**form, "phone": "12"}))
        assert [e["field"] for e in orjson.loads(raw)["errors"]] == ["phone"]


async def test_what_follows_a_taken_registration_is_answered_after_it(settings: Settings) -> None:
    async with broker_proxy(settings) as (proxy, proxied), _served(proxied) as (edge, express):
        reader, writer = await asyncio.open_connection(edge.host, edge.port)
        try:
            proxy.stall()  # the confirm is held back: the registration waits for it
            writer.write(_json_request(person(30, seed=81)))
            await eventually(lambda: _taken(express), lambda n: n == 1, 10)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
            await asyncio.sleep(0.1)
            proxy.release()
            first, second = [await read_response(reader) for _ in range(2)]
            assert first[0] == 202, first
            assert (second[0], second[2]) == (200, b'{"status":"ok"}')
            # The connection goes on: the next registration is taken again.
            writer.write(_json_request(person(31, seed=81)))
            assert (await read_response(reader))[0] == 202
            assert express.taken == 2
        finally:
            writer.close()


async def _taken(express: Express) -> int:
    return express.taken


async def test_a_graceful_stop_answers_a_taken_registration_first(
    settings: Settings, db: asyncpg.Pool
) -> None:
    async with (
        broker_proxy(settings) as (proxy, proxied),
        _served(proxied.replace(edge_deadline_s=5.0)) as (edge, express),
    ):
        reader, writer = await asyncio.open_connection(edge.host, edge.port)
        try:
            proxy.stall()
            writer.write(_json_request(person(40, seed=81)))
            await eventually(lambda: _taken(express), lambda n: n == 1, 10)
            stopping = asyncio.create_task(edge.runner.cleanup())
            await asyncio.sleep(0.2)
            assert not stopping.done()  # waiting for the answer
            proxy.release()
            status, _, raw = await read_response(reader)
            await stopping
        finally:
            writer.close()
    assert status == 202, raw
    async with inprocess.persist_worker(settings, db):
        await stored_once(db, {uuid.UUID(orjson.loads(raw)["id"])}, only=True)


async def test_a_client_gone_before_its_answer_harms_nothing(
    settings: Settings, db: asyncpg.Pool
) -> None:
    key = uuid.uuid4().hex
    async with broker_proxy(settings) as (proxy, proxied), _served(proxied) as (edge, express):
        _, writer = await asyncio.open_connection(edge.host, edge.port)
        proxy.stall()
        writer.write(_json_request(person(50, seed=81), b"Idempotency-Key: " + key.encode()))
        await eventually(lambda: _taken(express), lambda n: n == 1, 10)
        writer.close()  # gone, unanswered
        await asyncio.sleep(0.1)
        proxy.release()
        # Its retry (same key) is answered with the same id; stored once.
        status, _, raw = (
            await _exchange(
                edge, _json_request(person(50, seed=81), b"Idempotency-Key: " + key.encode())
            )
        )[0]
        assert status == 202, raw
    async with inprocess.persist_worker(settings, db):
        await stored_once(db, {uuid.UUID(orjson.loads(raw)["id"])}, only=True)


def test_the_202_document_is_what_orjson_writes() -> None:
    keyring = Keyring.from_secret("a test secret of at least thirty-two characters")
    for _ in range(100):
        registration_id = uuid7()
        document, status_url = accepted_document(registration_id, keyring)
        assert document == orjson.dumps(
            {
                "id": str(registration_id),
                "status": "accepted",
                "status_url": status_url,
                "access_token": keyring.access_token(registration_id),
            }
        )
        assert status_url == f"/v1/registrations/{registration_id}"
