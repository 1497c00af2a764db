"""The selection at a wave's close (workers/selection.py, core/selection.py) on the real
PostgreSQL and RabbitMQ, the once-in-a-lifetime benefit through the real edge and persist
worker, and the outcome notifications sent exactly once as the registrant sees them, with the
notifier killed (``kill -9``) in the middle and the SMTP and SMS simulators counting.

The joiners are written straight into PostgreSQL (registrations verified, test attempts scored,
joins), as the participation worker would leave them. The expected ranking is computed here
from the rules, independently of ``core.selection``."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import itertools
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import aiohttp
import asyncpg
import orjson
import pytest

from core import selection
from core.keys import Keyring
from core.settings import Settings, SettingsError
from core.waves import WIB, DtksRank, Policy, Situation, Wave, Waves
from simulators.server import Ports, Running, SimulatorConfig, run_simulators
from tests.support import inprocess
from tests.support.people import person
from tests.support.processes import Process, intake
from tests.support.waiting import eventually
from workers.scaling import worker_limits
from workers.selection import JOINS_QUEUE, Selector, select_wave

FIRST = {Situation.LAID_OFF.value, Situation.SMALL_BUSINESS.value}
SITUATIONS = [s.value for s in Situation]


@dataclass(frozen=True, slots=True)
class Person:
    """One joiner as the test made it, with what it expects of the selection."""

    id: uuid.UUID
    nik: str
    situation: str
    score: int | None
    dtks: bool
    eligible: bool
    email: str
    phone: str


def _closing(hours_ago: float = 1.0) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours_ago)


def _birth_date(day: dt.date, years: int, *, days_later: int = 0) -> dt.date:
    """Someone who turns ``years`` old ``days_later`` days after ``day``."""
    born = day.replace(year=day.year - years) if (day.month, day.day) != (2, 29) else day
    return born + dt.timedelta(days=days_later)


async def add_registration(
    db: asyncpg.Pool,
    keyring: Keyring,
    n: int,
    birth_date: dt.date,
    *,
    status: str = "verified",
    priority: int = 0,
    nik: str | None = None,
) -> tuple[uuid.UUID, str, str, str]:
    """A stored registration, encrypted as the persist worker stores it; (id, nik, email,
    phone)."""
    registration_id = uuid.uuid4()
    nik = nik or f"3171{n:012d}"
    email, phone = f"peserta{n}@example.com", f"0812{n:08d}"
    personal = orjson.dumps(
        {
            "full_name": f"Peserta {n}",
            "birth_place": "Jakarta",
            "birth_date": birth_date.isoformat(),
            "email": email,
            "phone": phone,
        }
    )
    context = registration_id.bytes
    await db.execute(
        "INSERT INTO registrations (id, nik_hmac, nik_enc, personal_enc, status, reject_reason,"
        " submitted_at, priority) VALUES ($1, $2, $3, $4, $5, $6, now(), $7)",
        registration_id,
        keyring.nik_hmac(nik),
        keyring.encrypt(nik.encode(), context),
        keyring.encrypt(personal, context),
        status,
        "nik_not_found" if status == "rejected" else None,
        priority,
    )
    return registration_id, nik, email, phone


async def add_attempt(
    db: asyncpg.Pool, wave: Wave, registration_id: uuid.UUID, attempt: int, score: int | None
) -> None:
    served = wave.opens_at + dt.timedelta(minutes=attempt)
    await db.execute(
        "INSERT INTO test_attempts (registration_id, wave_id, attempt, questions, served_at,"
        " deadline_at, submitted_at, answers, correct, score, scored_at)"
        " VALUES ($1, $2, $3, '[]', $4, $5, $6, $7, $8, $9, $10)",
        registration_id,
        wave.id,
        attempt,
        served,
        served + dt.timedelta(minutes=30),
        None if score is None else served + dt.timedelta(minutes=5),
        None if score is None else "[]",
        None if score is None else score // 10,
        score,
        None if score is None else served + dt.timedelta(minutes=6),
    )


async def join(db: asyncpg.Pool, wave: Wave, registration_id: uuid.UUID, situation: str) -> None:
    await db.execute(
        "INSERT INTO wave_joins (wave_id, registration_id, situation, joined_at)"
        " VALUES ($1, $2, $3, $4)",
        wave.id,
        registration_id,
        situation,
        wave.opens_at + dt.timedelta(minutes=1),
    )


async def closed_wave(
    db: asyncpg.Pool, name: str = "gelombang-1", quota: int = 100, policy: Policy | None = None
) -> Wave:
    """A wave that closed an hour ago."""
    closes = _closing()
    return await Waves(db).create(
        "test", name, closes - dt.timedelta(hours=3), closes, quota, policy or Policy(max_age=60)
    )


async def populate(
    db: asyncpg.Pool, keyring: Keyring, wave: Wave, count: int = 300, seed: int = 7
) -> list[Person]:
    """``count`` joiners of mixed situation, score (with many ties) and DTKS status, some of
    them ineligible for each of the reasons."""
    rng = random.Random(seed)
    day = selection.closing_day(wave)
    people = []
    for n in range(count):
        eligible = True
        years = rng.randint(19, 59)
        birth = _birth_date(day, years, days_later=-rng.randint(0, 300))
        status, dtks = "verified", rng.random() < 0.3
        if n % 50 == 1:
            birth, eligible = _birth_date(day, 18, days_later=1), False  # 18 the day after
        elif n % 50 == 2:
            birth = _birth_date(day, 18)  # 18 on the closing day: eligible
        elif n % 50 == 3:
            birth, eligible = _birth_date(day, 61, days_later=-1), False  # over max_age 60
        elif n % 50 == 4:
            status, eligible = "received", False  # not verified (yet)
        elif n % 50 == 5:
            status, eligible = "rejected", False
        registration_id, nik, email, phone = await add_registration(
            db, keyring, n, birth, status=status, priority=1 if dtks else 0
        )
        # About a quarter in a first situation: fewer than the quota, so others are selected.
        weights = [12, 12, 30, 30, 16]
        situation = rng.choices(SITUATIONS, weights)[0]
        score: int | None = rng.choice([40, 50, 60, 70, 80, 90])
        kind = n % 10
        if kind == 0:  # two attempts: the latest scored one counts
            await add_attempt(db, wave, registration_id, 1, 100 - (score or 0))
            await add_attempt(db, wave, registration_id, 2, score)
        elif kind == 1:  # a later attempt not scored: the earlier score counts
            await add_attempt(db, wave, registration_id, 1, score)
            await add_attempt(db, wave, registration_id, 2, None)
        elif n % 97 == 2:  # no test at all: ranked after every score
            score = None
        else:
            await add_attempt(db, wave, registration_id, 1, score)
        await join(db, wave, registration_id, situation)
        people.append(Person(registration_id, nik, situation, score, dtks, eligible, email, phone))
    # The benefit received in an earlier wave: never again.
    earlier = await Waves(db).create(
        "test",
        f"{wave.name}-earlier",
        wave.opens_at - dt.timedelta(days=30),
        wave.opens_at - dt.timedelta(days=20),
        10,
        Policy(),
    )
    await db.execute(
        "INSERT INTO wave_selections (wave_id, seed, started_at, joined, eligible, selected,"
        " digest) VALUES ($1, $2, $3, 0, 0, 0, '')",
        earlier.id,
        bytes(32),
        earlier.closes_at,
    )
    benefited = [p for i, p in enumerate(people) if i % 50 == 7]
    await db.executemany(
        "INSERT INTO benefit_niks (nik_hmac, wave_id, registration_id, granted_at)"
        " VALUES ($1, $2, $3, $4)",
        [(keyring.nik_hmac(p.nik), earlier.id, uuid.uuid4(), earlier.closes_at) for p in benefited],
    )
    taken = {p.id for p in benefited}
    return [
        Person(p.id, p.nik, p.situation, p.score, p.dtks, p.eligible and p.id not in taken,
               p.email, p.phone)
        for p in people
    ]  # fmt: skip


def expected_order(people: list[Person], seed: bytes, policy: Policy) -> list[uuid.UUID]:
    """The ranking, from the rules as written: first situations, score descending, DTKS after
    others at equal score (``dtks: lower``), then HMAC-SHA256(seed, id) ascending."""

    def key(p: Person) -> tuple[int, int, int, bytes]:
        lower = policy.dtks is DtksRank.LOWER and p.dtks
        return (
            0 if p.situation in {s.value for s in policy.first} else 1,
            -(p.score if p.score is not None else -1),
            1 if lower else 0,
            hmac.new(seed, p.id.bytes, hashlib.sha256).digest(),
        )

    return [p.id for p in sorted((p for p in people if p.eligible), key=key)]


async def snapshot(db: asyncpg.Pool, wave: Wave) -> tuple[object, ...]:
    joins = await db.fetch(
        "SELECT registration_id, outcome, rank FROM wave_joins WHERE wave_id = $1"
        " ORDER BY registration_id",
        wave.id,
    )
    benefit = await db.fetch("SELECT nik_hmac, wave_id FROM benefit_niks ORDER BY nik_hmac")
    notes = await db.fetch(
        "SELECT registration_id, channel, outcome, state FROM notifications"
        " ORDER BY registration_id, channel"
    )
    selected = await db.fetchrow("SELECT * FROM wave_selections WHERE wave_id = $1", wave.id)
    return (
        [tuple(r) for r in joins],
        [tuple(r) for r in benefit],
        [tuple(r) for r in notes],
        tuple(selected),
    )


@pytest.fixture
async def keyring_for(settings: Settings) -> Keyring:
    return Keyring.from_secret(settings.secret_key)


@pytest.fixture
async def joiners(
    settings: Settings, db: asyncpg.Pool, keyring_for: Keyring
) -> tuple[Wave, list[Person]]:
    """A closed wave with quota 100 and its 300 joiners."""
    wave = await closed_wave(db)
    return wave, await populate(db, keyring_for, wave)


@contextlib.asynccontextmanager
async def selector(settings: Settings, db: asyncpg.Pool) -> AsyncIterator[Selector]:
    running = Selector(settings.replace(wave_close_grace_s=0.2), db)
    task = asyncio.create_task(running.run())
    try:
        yield running
    finally:
        running.stop()
        await asyncio.wait_for(task, 30)


async def test_the_selection_follows_the_rules_once(
    settings: Settings, db: asyncpg.Pool, joiners: tuple[Wave, list[Person]]
) -> None:
    wave, people = joiners
    eligible = [p for p in people if p.eligible]
    assert 100 < len(eligible) < 300
    assert 0 < sum(1 for p in eligible if p.situation in FIRST) < 100
    async with selector(settings, db) as running:
        await eventually(lambda: running.selected, lambda names: names == [wave.name])
    record = await db.fetchrow("SELECT * FROM wave_selections WHERE wave_id = $1", wave.id)
    assert (record["joined"], record["eligible"], record["selected"]) == (300, len(eligible), 100)
    seed = bytes(record["seed"])
    assert len(seed) == 32

    # The ranking is the rules' ranking.
    order = expected_order(people, seed, wave.policy)
    rows = await db.fetch(
        "SELECT registration_id, outcome, rank FROM wave_joins WHERE wave_id = $1", wave.id
    )
    got = {r["registration_id"]: (r["outcome"], r["rank"]) for r in rows}
    want: dict[uuid.UUID, tuple[str, int | None]] = {p.id: ("ineligible", None) for p in people}
    for position, registration_id in enumerate(order, start=1):
        want[registration_id] = ("selected" if position <= 100 else "not_selected", position)
    assert got == want
    assert Counter(o for o, _ in got.values())["selected"] == 100

    # Among equal situation and score, DTKS recipients after the others (dtks: lower).
    by_id = {p.id: p for p in people}
    ties = 0
    for a, b in itertools.pairwise(order):
        pa, pb = by_id[a], by_id[b]
        same = (pa.situation in FIRST) == (pb.situation in FIRST) and pa.score == pb.score
        if same and pa.dtks != pb.dtks:
            ties += 1
            assert not pa.dtks
            assert pb.dtks
    assert ties > 0

    # Each selected NIK holds the benefit now; nobody else of this wave does.
    chosen = {r for r, (o, _) in got.items() if o == "selected"}
    benefit = await db.fetch("SELECT registration_id FROM benefit_niks WHERE wave_id = $1", wave.id)
    assert {r["registration_id"] for r in benefit} == chosen
    # Two notifications per joiner, with its outcome.
    notes = await db.fetch("SELECT registration_id, channel, outcome FROM notifications")
    assert len(notes) == 600
    assert {(n["registration_id"], n["channel"]) for n in notes} == {
        (p.id, c) for p in people for c in ("email", "sms")
    }
    assert all(n["outcome"] == got[n["registration_id"]][0] for n in notes)

    # Recomputed from the recorded seed: the same input, the same selection.
    async with db.acquire() as connection:
        again = await selection.check(connection, Keyring.from_secret(settings.secret_key), wave)
    assert again == selection.Recomputed(True, True, 0)

    # Running the selector again changes nothing.
    before = await snapshot(db, wave)
    assert await select_wave(db, Keyring.from_secret(settings.secret_key), wave.id) is None
    async with selector(settings, db) as running:
        await asyncio.sleep(1.5)
        assert running.selected == []
    assert await snapshot(db, wave) == before


async def test_the_operator_checks_a_selection_and_a_tampered_one_fails(
    settings: Settings, db: asyncpg.Pool, joiners: tuple[Wave, list[Person]]
) -> None:
    wave, _ = joiners
    await select_wave(db, Keyring.from_secret(settings.secret_key), wave.id)
    checked = intake(settings, "waves", "selection", wave.name, "--check")
    assert checked.returncode == 0, checked.stderr
    shown = orjson.loads(checked.stdout)
    assert (shown["joined"], shown["selected"]) == (300, 100)
    assert shown["check"] == {"same_input": True, "same_selection": True, "differing_joins": 0}
    # Another seed gives another draw: the check sees it.
    await db.execute("UPDATE wave_selections SET seed = $2 WHERE wave_id = $1", wave.id, bytes(32))
    tampered = intake(settings, "waves", "selection", wave.name, "--check")
    assert tampered.returncode == 1
    report = orjson.loads(tampered.stdout)["check"]
    assert report["same_input"] is True
    assert report["same_selection"] is False
    assert report["differing_joins"] > 0


async def test_dtks_excluded_and_equal(
    settings: Settings, db: asyncpg.Pool, keyring_for: Keyring
) -> None:
    """``excluded``: DTKS recipients are ineligible; ``equal``: ranked like anyone else."""
    for name, dtks in (("gelombang-x", DtksRank.EXCLUDED), ("gelombang-e", DtksRank.EQUAL)):
        await db.execute("TRUNCATE waves, wave_joins, wave_selections, notifications CASCADE")
        wave = await closed_wave(db, name, quota=30, policy=Policy(max_age=60, dtks=dtks))
        people = await populate(db, keyring_for, wave, count=60, seed=3)
        seed = bytes(range(32))
        chosen = await select_wave(db, keyring_for, wave.id, seed)
        assert chosen is not None
        if dtks is DtksRank.EXCLUDED:
            people = [
                Person(p.id, p.nik, p.situation, p.score, p.dtks, p.eligible and not p.dtks,
                       p.email, p.phone)
                for p in people
            ]  # fmt: skip
        order = expected_order(people, seed, wave.policy)
        assert chosen.ranks == {r: i for i, r in enumerate(order, start=1)}
        assert chosen.selected == [r for r in chosen.outcomes if r in set(order[:30])]
        dtks_eligible = [p for p in people if p.dtks and p.eligible]
        assert (len(dtks_eligible) == 0) is (dtks is DtksRank.EXCLUDED)


async def test_the_selector_waits_for_the_joins_queue(
    settings: Settings, db: asyncpg.Pool, keyring_for: Keyring
) -> None:
    wave = await closed_wave(db, quota=5)
    await populate(db, keyring_for, wave, count=10)
    amqp = await aio_pika.connect(settings.amqp_url)
    async with amqp:
        channel = await amqp.channel()
        queue = await channel.declare_queue(JOINS_QUEUE, passive=True)  # the topology's
        try:
            await channel.default_exchange.publish(aio_pika.Message(b"{}"), JOINS_QUEUE)
            async with selector(settings, db) as running:
                await asyncio.sleep(2.0)  # closed an hour ago, but a join is still queued
                assert running.selected == []
                assert (
                    await db.fetchval(
                        "SELECT count(*) FROM wave_selections WHERE wave_id = $1", wave.id
                    )
                    == 0
                )
                await queue.purge()
                await eventually(lambda: running.selected, lambda names: names == [wave.name])
        finally:
            await queue.purge()


async def test_intake_worker_waves_selects_and_stops_on_sigterm(
    settings: Settings, db: asyncpg.Pool, keyring_for: Keyring, spawn: Callable[..., Process]
) -> None:
    wave = await closed_wave(db, quota=5)
    await populate(db, keyring_for, wave, count=12)
    worker = spawn(["worker", "waves"], settings.replace(wave_close_grace_s=0.2), name="waves")
    selected = await eventually(
        lambda: db.fetchval("SELECT selected FROM wave_selections WHERE wave_id = $1", wave.id),
        lambda n: n is not None,
    )
    assert selected == 5
    assert worker.terminate() == 0
    assert "wave selected" in worker.log()


async def test_intake_supervise_runs_one_selector_and_one_notifier(
    settings: Settings,
    db: asyncpg.Pool,
    keyring_for: Keyring,
    simulators: Running,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    wave = await closed_wave(db, quota=2)
    await populate(db, keyring_for, wave, count=6)
    fleet = simulators.wire(settings).replace(wave_close_grace_s=0.2, supervise_max_workers=4)
    supervisor = spawn(
        ["supervise", "waves", "notify", f"--run-dir={tmp_path / 'run'}", f"--log-dir={tmp_path}"],
        fleet,
        name="supervise",
    )
    await eventually(lambda: _states(db), lambda s: s == {"sent": 12}, timeout_s=60)
    assert simulators.mailbox.received == 6
    assert supervisor.terminate(60) == 0
    logs = await asyncio.to_thread(lambda: sorted(p.name for p in tmp_path.glob("*.log")))
    assert [n for n in logs if n.startswith("worker-")] == [
        "worker-notify-1.log",
        "worker-waves-1.log",
    ]  # one of each, never scaled


async def test_a_benefit_is_once_in_a_lifetime_and_the_others_join_again(
    settings: Settings, db: asyncpg.Pool, keyring_for: Keyring
) -> None:
    """Through the real edge and persist worker: a NIK selected in an earlier wave registers
    again and is refused ``benefit_received``; a joiner not selected joins the next wave."""
    forms = [person(i, seed=11) for i in range(3)]
    ids = await inprocess.registered(settings, db, forms)
    await db.execute("UPDATE registrations SET status = 'verified' WHERE id = ANY($1)", ids)
    wave = await closed_wave(db, quota=1, policy=Policy())
    for rank_score, registration_id in zip((90, 50, 40), ids, strict=True):
        await add_attempt(db, wave, registration_id, 1, rank_score)
        await join(db, wave, registration_id, Situation.LAID_OFF.value)
    chosen = await select_wave(db, keyring_for, wave.id)
    assert chosen is not None
    assert chosen.selected == [ids[0]]
    holders = await db.fetch("SELECT registration_id FROM benefit_niks")
    assert [h["registration_id"] for h in holders] == [ids[0]]  # not the others

    # The selected person registers again (a new registration, same NIK): refused.
    again = await inprocess.registered(settings, db, [forms[0]])
    refused = await db.fetchrow(
        "SELECT status, reject_reason FROM registrations WHERE id = $1", again[0]
    )
    assert tuple(refused) == ("rejected", "benefit_received")
    counts = await db.fetch(
        "SELECT key, sum(n) AS n FROM funnel_deltas WHERE kind = 'reason' GROUP BY key"
    )
    assert {r["key"]: r["n"] for r in counts}.get("rejected:benefit_received") == 1

    # The next wave: the two not selected join it and are eligible (no benefit row for them);
    # the selected one is not.
    closes = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    following = await Waves(db).create(
        "test", "gelombang-2", closes - dt.timedelta(minutes=30), closes, 2, Policy()
    )
    for registration_id in ids:
        await join(db, following, registration_id, Situation.JOB_SEEKER.value)
    second = await select_wave(db, keyring_for, following.id)
    assert second is not None
    assert second.outcomes == {
        ids[0]: selection.Outcome.INELIGIBLE,
        ids[1]: selection.Outcome.SELECTED,
        ids[2]: selection.Outcome.SELECTED,
    }


async def test_selection_and_notifier_run_once_under_supervise(settings: Settings) -> None:
    limits = worker_limits(settings, ["waves", "notify", "dispatch"])
    assert {k: (v.low, v.high) for k, v in limits.items()} == {
        "waves": (1, 1),
        "notify": (1, 1),
        "dispatch": (1, 1),
    }
    for single in ("waves", "notify"):
        with pytest.raises(SettingsError, match=f"always run once, not {single}"):
            worker_limits(settings.replace(supervise_worker_limits=f"{single}=1-3"), [single])


# --- the notifications ------------------------------------------------------------------------


@pytest.fixture
async def simulators() -> AsyncIterator[Running]:
    async with run_simulators(SimulatorConfig(ports=Ports.ephemeral(), people=())) as running:
        yield running


async def _states(db: asyncpg.Pool) -> dict[str, int]:
    rows = await db.fetch("SELECT state, count(*) FROM notifications GROUP BY state")
    return {r[0]: r[1] for r in rows}


async def test_each_joiner_gets_one_email_and_one_sms_despite_kill_9(
    settings: Settings,
    db: asyncpg.Pool,
    joiners: tuple[Wave, list[Person]],
    simulators: Running,
    spawn: Callable[..., Process],
) -> None:
    wave, people = joiners
    following = await Waves(db).create(
        "test",
        "gelombang-2",
        dt.datetime(2031, 1, 5, 12, tzinfo=WIB),
        dt.datetime(2031, 1, 9, 12, tzinfo=WIB),
        100,
        Policy(),
    )
    assert await select_wave(db, Keyring.from_secret(settings.secret_key), wave.id) is not None
    # Slow enough that the notifier is killed with sends in flight.
    for name in ("sms", "smtp"):
        simulators.set_behaviour(name, latency_median_ms=40.0, latency_p99_ms=80.0)
    wired = simulators.wire(settings).replace(
        notify_batch_max=40, notify_lease_s=2.0, metrics_port=0
    )
    first = spawn(["worker", "notify"], wired, name="notify")
    await eventually(
        lambda: _states(db),
        lambda s: s.get("sent", 0) >= 60 and s.get("sending", 0) > 0,
        timeout_s=60,
    )
    first.kill()
    at_kill = await _states(db)
    assert 0 < at_kill.get("sent", 0) < 600
    assert at_kill.get("sending", 0) > 0  # intents committed, their sends cut off

    second = spawn(["worker", "notify"], wired, name="notify")
    await eventually(lambda: _states(db), lambda s: s == {"sent": 600}, timeout_s=120)
    assert second.alive()
    resent = await db.fetchval("SELECT count(*) FROM notifications WHERE attempts > 1")
    assert resent >= at_kill["sending"]  # the cut-off ones were sent again

    # Counted at the simulators: one email and one SMS per joiner, whatever was sent twice.
    outcome = {
        r["registration_id"]: r["outcome"]
        for r in await db.fetch("SELECT registration_id, outcome FROM wave_joins")
    }
    for p in people:
        mails = simulators.mailbox.for_address(p.email)
        texts = simulators.outbox.for_number(p.phone)
        assert len(mails) == 1, p
        assert len(texts) == 1, p
        body, sms = mails[0].body, texts[0].text
        if outcome[p.id] == "selected":
            assert "terpilih sebagai peserta" in body
            assert "selected for Kartu Prakerja" in sms
        elif outcome[p.id] == "not_selected":
            assert "05-01-2031 12:00 WIB" in body  # the next wave's opening
            assert "join the next wave" in sms
        else:
            assert "tidak memenuhi syarat" in body
    assert simulators.mailbox.received == 300
    assert simulators.outbox.accepted == 300
    duplicates = simulators.mailbox.duplicates + simulators.outbox.deduplicated
    assert duplicates <= resent
    async with aiohttp.ClientSession() as http:
        async with http.get(simulators.urls["sms"] + "/_sim/messages/counts") as answer:
            assert (await answer.json())["accepted"] == 300
        async with http.get(simulators.urls["smtp"] + "/_sim/mail/counts") as answer:
            assert (await answer.json())["received"] == 300
    assert following.name == "gelombang-2"

    # A sender that died after its sends and before marking them, deterministically: 40 rows
    # back to "sending" with their lease run out. They are sent again under the same keys, and
    # the mailbox and the gateway drop every repeat.
    await db.execute(
        "UPDATE notifications SET state = 'sending', sent_at = NULL,"
        " next_at = now() - interval '1 second'"
        " WHERE registration_id IN (SELECT registration_id FROM wave_joins"
        " ORDER BY registration_id LIMIT 20)"
    )
    await eventually(lambda: _states(db), lambda s: s == {"sent": 600}, timeout_s=60)
    assert simulators.mailbox.duplicates + simulators.outbox.deduplicated == duplicates + 40
    assert simulators.mailbox.received == 300
    assert simulators.outbox.accepted == 300
    assert all(len(simulators.mailbox.for_address(p.email)) == 1 for p in people)
    assert all(len(simulators.outbox.for_number(p.phone)) == 1 for p in people)
    assert second.terminate() == 0


async def test_simulators_deduplicate_as_providers_do(simulators: Running) -> None:
    """The gateway answers a repeated Idempotency-Key like the first and sends nothing; the
    mailbox keeps one message per Message-ID per recipient; without them, every one counts."""
    url = simulators.urls["sms"] + "/v1/messages"
    body = {"to": "081234567890", "text": "halo"}
    async with aiohttp.ClientSession() as http:
        ids = []
        for headers in ({"Idempotency-Key": "k1"}, {"Idempotency-Key": "k1"}, {}, {}):
            async with http.post(url, json=body, headers=headers) as answer:
                assert answer.status == 202
                ids.append((await answer.json())["id"])
    assert ids[0] == ids[1]
    assert len(set(ids)) == 3
    assert len(simulators.outbox.for_number("081234567890")) == 3
    assert simulators.outbox.deduplicated == 1

    import smtplib
    from email.message import EmailMessage

    def send(message_id: str | None, to: str) -> None:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "a@example.com", to, "s"
        if message_id is not None:
            message["Message-ID"] = message_id
        message.set_content("isi")
        with smtplib.SMTP(simulators.smtp_host, simulators.smtp_port, timeout=5) as client:
            client.send_message(message)

    for message_id, to in (
        ("<m1@x>", "b@example.com"),
        ("<m1@x>", "b@example.com"),
        ("<m1@x>", "c@example.com"),  # another recipient gets its own copy
        (None, "b@example.com"),
        (None, "b@example.com"),
    ):
        await asyncio.to_thread(send, message_id, to)
    assert len(simulators.mailbox.for_address("b@example.com")) == 3
    assert len(simulators.mailbox.for_address("c@example.com")) == 1
    assert simulators.mailbox.duplicates == 1


async def test_failed_sends_back_off_and_are_sent_once_the_gateway_is_back(
    settings: Settings, db: asyncpg.Pool, keyring_for: Keyring, simulators: Running
) -> None:
    from workers.notify import Notifier

    wave = await closed_wave(db, quota=3)
    people = await populate(db, keyring_for, wave, count=10)
    assert await select_wave(db, keyring_for, wave.id) is not None
    simulators.set_behaviour("sms", outage=True)
    wired = simulators.wire(settings).replace(
        notify_retry_base_s=0.3, notify_retry_max_s=1.0, breaker_open_s=0.5, breaker_open_max_s=1.0
    )
    async with aiohttp.ClientSession() as http:
        notifier = Notifier(wired, db, http)
        task = asyncio.create_task(notifier.run())
        try:
            await eventually(
                lambda: _states(db), lambda s: s.get("sent") == 10 and notifier.failed >= 10
            )
            # Every SMS failed, backed off and was tried again; none was delivered.
            await eventually(
                lambda: db.fetchval(
                    "SELECT min(attempts) FROM notifications WHERE channel = 'sms'"
                    " AND state <> 'sent'"
                ),
                lambda n: n is not None and n >= 2,
            )
            assert simulators.outbox.accepted == 0
            simulators.set_behaviour("sms", outage=False)
            await eventually(lambda: _states(db), lambda s: s == {"sent": 20})
        finally:
            notifier.stop()
            await asyncio.wait_for(task, 30)
    assert all(len(simulators.outbox.for_number(p.phone)) == 1 for p in people)
    assert all(len(simulators.mailbox.for_address(p.email)) == 1 for p in people)
    assert notifier.sent == 20
