"""The funnel counts kept by the database's triggers equal the rows they count, after a burst
through the edge, the persist worker, the dispatcher and the NIK lanes."""

from __future__ import annotations

import asyncio

import asyncpg

from core import funnel
from core.settings import Settings
from simulators.server import Running
from tests.support import inprocess
from tests.support.waiting import eventually
from tests.workers.test_nik_lanes import NIK_CHECKS, _settled, _submit, _wired, simulators

__all__ = ["simulators"]  # the fixture, shared with the NIK lane tests


async def _truth(db: asyncpg.Pool) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for row in await db.fetch("SELECT status, count(*) FROM registrations GROUP BY 1"):
        counts["status", row[0]] = row[1]
    for row in await db.fetch(
        "SELECT status || ':' || reject_reason, count(*) FROM registrations"
        " WHERE reject_reason IS NOT NULL GROUP BY 1"
    ):
        counts["reason", row[0]] = row[1]
    for row in await db.fetch("SELECT check_name || ':' || state, count(*) FROM checks GROUP BY 1"):
        counts["check", row[0]] = row[1]
    return counts


async def test_the_funnel_counts_equal_the_rows_they_count(
    settings: Settings, db: asyncpg.Pool, simulators: Running
) -> None:
    wired = _wired(settings, simulators)
    submitted = await _submit(wired, list(simulators.people))
    ids = list(submitted)
    reads: list[dict[tuple[str, str], int]] = []

    async def read_while_writing() -> None:
        while True:  # folds race the writers: nothing may be counted twice or lost
            reads.append(await funnel.read_counts(db))
            await asyncio.sleep(0.01)

    async with (
        inprocess.persist_worker(wired, db),
        inprocess.dispatcher(wired, db),
        inprocess.lanes(wired, db, NIK_CHECKS),
    ):
        reader = asyncio.create_task(read_while_writing())
        await eventually(lambda: _settled(db, ids), lambda n: n == len(ids), 90)
        reader.cancel()
    assert len(reads) > 10
    counts = {key: n for key, n in (await funnel.read_counts(db)).items() if n != 0}
    truth = await _truth(db)
    assert counts == truth
    stages = funnel.stages(counts)
    assert stages["registered"] == len(ids)
    assert stages["nik_verified"] == truth["check", "dukcapil:passed"] > 0
    assert stages["rejected"] == sum(n for (kind, key), n in truth.items() if key == "rejected")
    # Folded: the log is empty after a read, and a second read gives the same counts.
    assert await db.fetchval("SELECT count(*) FROM funnel_deltas") == 0
    assert {k: n for k, n in (await funnel.read_counts(db)).items() if n} == truth
