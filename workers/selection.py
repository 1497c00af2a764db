"""``intake worker waves``: the selection of each wave once it has closed.

About once a second the worker looks for waves whose closing time (or an operator's
``closed_at``) has passed and which have no ``wave_selections`` row. Joins still travel through
``intake.joins`` when a wave closes (the edge accepted them while it was open), so the worker
waits until that queue holds no ready message (a passive declare; a queue not declared yet is
empty) and then ``INTAKE_WAVE_CLOSE_GRACE_S`` more, for edges' clocks and for a join the
participation worker holds in hand. Then it selects, in **one transaction**:

1. ``SELECT ... FOR UPDATE`` on the wave. A join's insert takes a key-share lock on its wave
   (the foreign key), which this lock conflicts with: the selection waits for a join being
   written, and a join written later waits for the selection's commit (and then finds it);
2. the ``wave_selections`` row first, ``ON CONFLICT DO NOTHING``: a concurrent selector waiting
   on the same lock finds it and stops;
3. the joiners read and ranked (:mod:`core.selection`, pure), every join's ``outcome`` and the
   eligible ones' ``rank``, each selected NIK in ``benefit_niks``, and two ``notifications`` per
   joiner (email, SMS): the outbox of ``intake worker notify``.

A crash leaves all of it or none of it. Only one selector runs (``intake supervise`` starts one,
Kubernetes one replica); a second would be safe, for the reasons above.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import signal
import time

import aio_pika
import asyncpg

from core import broker, database, metrics, metrics_http, topology
from core.health import Health
from core.keys import Keyring
from core.selection import SEED_BYTES, Outcome, Selection, load_joiners, rank
from core.settings import Settings
from core.waves import Wave, wave_from_row
from workers.rounds import run_rounds
from workers.sessions import BROKER_GONE

log = logging.getLogger(__name__)

POLL_S = 1.0
# The queue of joins (declared by the edge and the participation worker).
JOINS_QUEUE = topology.JOINS_QUEUE

_DUE_SQL = """
SELECT id, name, opens_at, closes_at, quota, policy, closed_at FROM waves w
WHERE least(coalesce(w.closed_at, w.closes_at), w.closes_at) <= now()
  AND NOT EXISTS (SELECT 1 FROM wave_selections s WHERE s.wave_id = w.id)
ORDER BY w.closes_at
"""
_LOCK_SQL = (
    "SELECT id, name, opens_at, closes_at, quota, policy, closed_at FROM waves"
    " WHERE id = $1 FOR UPDATE"
)
_CLAIM_SQL = """
INSERT INTO wave_selections (wave_id, seed, started_at, joined, eligible, selected, digest)
VALUES ($1, $2, now(), 0, 0, 0, ''::bytea)
ON CONFLICT (wave_id) DO NOTHING
RETURNING started_at
"""
_OUTCOMES_SQL = """
UPDATE wave_joins j SET outcome = o.outcome, rank = o.rank
FROM unnest($2::uuid[], $3::text[], $4::int[]) AS o (registration_id, outcome, rank)
WHERE j.wave_id = $1 AND j.registration_id = o.registration_id
"""
_BENEFIT_SQL = """
INSERT INTO benefit_niks (nik_hmac, wave_id, registration_id)
SELECT r.nik_hmac, $1, r.id FROM registrations r WHERE r.id = ANY($2::uuid[])
ON CONFLICT (nik_hmac) DO NOTHING
"""
_NOTIFY_SQL = """
INSERT INTO notifications (wave_id, registration_id, channel, outcome)
SELECT $1, o.registration_id, c.channel, o.outcome
FROM unnest($2::uuid[], $3::text[]) AS o (registration_id, outcome)
CROSS JOIN (VALUES ('email'), ('sms')) AS c (channel)
ON CONFLICT DO NOTHING
"""
_FINISH_SQL = """
UPDATE wave_selections SET joined = $2, eligible = $3, selected = $4, digest = $5,
    finished_at = clock_timestamp()
WHERE wave_id = $1
"""


async def select_wave(
    pool: asyncpg.Pool, keyring: Keyring, wave_id: int, seed: bytes | None = None
) -> Selection | None:
    """Select ``wave_id``'s participants in one transaction; None if it was selected already."""
    seed = secrets.token_bytes(SEED_BYTES) if seed is None else seed
    started = time.perf_counter()
    async with pool.acquire() as connection, connection.transaction():
        wave = wave_from_row(await connection.fetchrow(_LOCK_SQL, wave_id))
        started_at = await connection.fetchval(_CLAIM_SQL, wave.id, seed)
        if started_at is None:
            return None  # another selector did it
        joiners = await load_joiners(connection, keyring, wave, started_at)
        selection = rank(wave.policy, wave.quota, seed, joiners)
        ids = list(selection.outcomes)
        outcomes = [selection.outcomes[i].value for i in ids]
        await connection.execute(
            _OUTCOMES_SQL, wave.id, ids, outcomes, [selection.ranks.get(i) for i in ids]
        )
        await connection.execute(_BENEFIT_SQL, wave.id, selection.selected)
        await connection.execute(_NOTIFY_SQL, wave.id, ids, outcomes)
        await connection.execute(
            _FINISH_SQL,
            wave.id,
            len(ids),
            selection.eligible,
            len(selection.selected),
            selection.digest,
        )
    metrics.WAVE_SELECTION_SECONDS.observe(time.perf_counter() - started)
    for outcome in Outcome:
        count = sum(1 for o in selection.outcomes.values() if o is outcome)
        metrics.WAVE_JOIN_OUTCOMES.labels(outcome.value).inc(count)
    for joiner in joiners:
        if joiner.ineligible is not None:
            metrics.WAVE_INELIGIBLE.labels(joiner.ineligible.value).inc()
    log.info(
        "wave selected",
        extra={
            "wave": wave.name,
            "joined": len(ids),
            "eligible": selection.eligible,
            "selected": len(selection.selected),
        },
    )
    return selection


class Selector:
    """Selects every closed wave without a selection, once ``intake.joins`` is drained."""

    def __init__(
        self, settings: Settings, pool: asyncpg.Pool, health: Health | None = None
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._keyring = Keyring.from_secret(settings.secret_key)
        self._stopping = asyncio.Event()
        self._amqp: aio_pika.abc.AbstractConnection | None = None
        self._empty_since: float | None = None  # monotonic: the joins queue seen empty since
        self.health = health if health is not None else Health()
        self.selected: list[str] = []  # names of the waves this process selected
        metrics.init_selection()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        try:
            await run_rounds(
                "selection", self._pool, self.health, self._stopping, POLL_S, self._step
            )
        finally:
            await self._close_amqp()

    async def _step(self) -> bool:
        await self.tick()
        return False

    async def tick(self) -> None:
        """One round: select the waves that are due, if the joins are drained."""
        rows = await self._pool.fetch(_DUE_SQL)
        if not rows:
            self._empty_since = None
            return
        depth = await self._joins_depth()
        now = time.monotonic()
        if depth is None or depth > 0:
            self._empty_since = None  # joins still waiting (or unknown): not yet
            return
        if self._empty_since is None:
            self._empty_since = now
        if now - self._empty_since < self._settings.wave_close_grace_s:
            return
        for row in rows:
            wave: Wave = wave_from_row(row)
            if dt.datetime.now(dt.UTC) < _closed(wave) + dt.timedelta(
                seconds=self._settings.wave_close_grace_s
            ):
                continue
            if await select_wave(self._pool, self._keyring, wave.id) is not None:
                self.selected.append(wave.name)

    async def _joins_depth(self) -> int | None:
        """Ready messages in ``intake.joins`` (0 if it is not declared yet; None: unknown)."""
        try:
            if self._amqp is None or self._amqp.is_closed:
                self._amqp = await broker.connect(self._settings.amqp_url)
            channel = await self._amqp.channel()
            try:
                declared = await channel.declare_queue(JOINS_QUEUE, passive=True)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                return 0
            count = int(declared.declaration_result.message_count or 0)
            if not channel.is_closed:
                await channel.close()
            return count
        except BROKER_GONE as exc:
            log.warning("joins queue unreadable: %s; not selecting", type(exc).__name__)
            await self._close_amqp()
            return None

    async def _close_amqp(self) -> None:
        if self._amqp is not None:
            with contextlib.suppress(*BROKER_GONE):
                await self._amqp.close()
            self._amqp = None


def _closed(wave: Wave) -> dt.datetime:
    return wave.closes_at if wave.closed_at is None else min(wave.closed_at, wave.closes_at)


async def serve(settings: Settings) -> None:
    """Entry point of ``intake worker waves``: select closed waves until SIGTERM."""
    health = Health()
    async with metrics_http.serving(settings, health=health):
        pool = await database.create_pool(
            settings.database_url,
            name="intake-waves",
            min_size=1,
            max_size=2,  # workers.scaling counts it
            attempted=health.beat,
        )
        async with database.closing(pool):
            selector = Selector(settings, pool, health)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, selector.stop)
            await selector.run()
