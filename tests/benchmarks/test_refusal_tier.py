"""The refusal tier (benchmarks/refusal_tier.py): a real HAProxy in front of a real edge keeps
the edge at its slots, lets a bounded number wait, and refuses the rest itself, at once, with
the edge's problem document and a ``Retry-After`` within the configured spread. The edge's
answers are held back (a proxy between the tier and the edge stalls) so that its one slot
stays taken for as long as the test needs."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson

from benchmarks.refusal_tier import TierConfig, render
from core.settings import Settings
from tests.support import inprocess
from tests.support.people import person
from tests.support.processes import free_port, stop
from tests.support.proxy import TcpProxy
from tests.support.waiting import eventually


@contextlib.asynccontextmanager
async def haproxy(config: TierConfig, work: Path) -> AsyncIterator[str]:
    path = work / "haproxy.cfg"
    path.write_text(render(config))
    log = work / "haproxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: ASYNC220 - a server for the test's duration
            ["haproxy", "-db", "-f", str(path)], stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{config.port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def up() -> int:
                assert process.poll() is None, log.read_text()
                try:
                    async with http.get(f"{url}/healthz") as response:
                        return response.status
                except aiohttp.ClientConnectionError:
                    return 0

            await eventually(up, lambda status: status == 200)
        yield url
    finally:
        stop(process, 10)


async def test_the_tier_keeps_the_edge_at_its_slots_and_refuses_the_rest_itself(
    settings: Settings, tmp_path: Path
) -> None:
    async with inprocess.served_edge(settings) as edge:
        proxy = TcpProxy(edge.host, edge.port)
        await proxy.start()
        config = TierConfig(
            free_port(), (f"127.0.0.1:{proxy.port}",), edge_conns=1, queue_max=1, queue_s=0.5
        )
        try:
            async with haproxy(config, tmp_path) as url, aiohttp.ClientSession() as http:

                async def register(index: int) -> tuple[int, dict[str, str], bytes]:
                    async with http.post(f"{url}/v1/registrations", json=person(index)) as answer:
                        return answer.status, dict(answer.headers), await answer.read()

                proxy.stall()  # the edge's answers are held: its one slot stays taken
                first = asyncio.create_task(register(1))
                await asyncio.sleep(0.2)
                second = asyncio.create_task(register(2))  # waits for the slot
                await asyncio.sleep(0.1)
                third = await register(3)  # one waits already: refused at once
                assert not first.done()  # answered while the slot is still taken
                waited = await second  # refused once it waited queue_s
                for status, headers, body in (third, waited):
                    assert status == 503
                    assert headers["Content-Type"] == "application/problem+json"
                    assert 1 <= int(headers["Retry-After"]) <= config.retry_max_s
                    problem = orjson.loads(body)
                    assert problem["status"] == 503
                    assert problem["reason"] == "overloaded"
                proxy.release()
                status, _, body = await first
                assert status == 202, body
                assert (await register(4))[0] == 202  # the slot is free again
        finally:
            await proxy.close()
