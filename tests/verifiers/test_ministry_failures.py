"""A ministry call's failures, against a real HTTP server: each becomes a ``Retry`` whose kind
says what it means for the service (what the lane's limit and breaker act on), and whether the
call certainly did nothing there (what decides whether an SMS may be sent again)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from core.verification import Failure, Retry
from tests.support.processes import free_port
from verifiers.ministry import post_json


async def _answer(request: web.Request) -> web.StreamResponse:
    behaviour = request.match_info["how"]
    if behaviour == "slow":
        await asyncio.sleep(5)
    if behaviour == "drop":
        assert request.transport is not None
        request.transport.close()  # the request arrived; the answer never comes
        await asyncio.sleep(1)
    if behaviour == "garbled":
        return web.Response(status=200, body=b"{not json", content_type="application/json")
    status = {"busy": 503, "limited": 429, "broken": 500, "unknown": 404}.get(behaviour, 200)
    return web.Response(status=status, text="{}", content_type="application/json")


@pytest.fixture
async def ministry() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/{how}", _answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _failure(url: str) -> Retry:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(Retry) as caught:
            await post_json(session, url, {"nik": "x"}, timeout_s=0.5)
    return caught.value


@pytest.mark.parametrize(
    ("how", "failure", "not_done"),
    [
        ("busy", Failure.OVERLOAD, True),
        ("limited", Failure.OVERLOAD, True),
        ("slow", Failure.OVERLOAD, False),  # a timeout: it may still be working on it
        ("broken", Failure.BROKEN, True),
        ("garbled", Failure.BROKEN, False),
        ("drop", Failure.UNREACHABLE, False),  # lost after it was sent
        ("unknown", Failure.LOCAL, True),  # a 404: a bug on one side, not the service's health
    ],
)
async def test_each_failure_has_its_kind(
    ministry: str, how: str, failure: Failure, not_done: bool
) -> None:
    retry = await _failure(f"{ministry}/{how}")
    assert (retry.failure, retry.not_done) == (failure, not_done)


async def test_no_connection_is_unreachable_and_certainly_did_nothing() -> None:
    retry = await _failure(f"http://127.0.0.1:{free_port()}/nobody")
    assert (retry.failure, retry.not_done) == (Failure.UNREACHABLE, True)
