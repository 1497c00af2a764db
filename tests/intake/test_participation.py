"""The test and joining a wave, end to end: a real edge and the real participation worker, on
RabbitMQ and PostgreSQL. The registrations are inserted as ``verified`` rows (the verification
itself is tested elsewhere); the waves are made with ``core.waves``."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from prometheus_client import REGISTRY

from core import questions, topology
from core.keys import Keyring
from core.participation import Join, Submission
from core.settings import Settings
from core.waves import WIB, Policy, Situation, Wave, Waves
from intake.appkeys import PUBLISHER
from tests.support import inprocess
from tests.support.inprocess import edge
from tests.support.openapi import validate
from tests.support.waiting import eventually
from workers import dlq
from workers.participation import ParticipationWorker


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """This file tests the routes' rules, not shedding under load."""
    return inprocess.unshed(settings)


BANK = questions.load()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def _verified(db: asyncpg.Pool, keyring: Keyring, status: str = "verified") -> uuid.UUID:
    """A registration row in ``status`` (no personal data needed here)."""
    registration_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO registrations (id, nik_hmac, nik_enc, personal_enc, status, submitted_at)"
        " VALUES ($1, $2, $3, $4, $5, now())",
        registration_id,
        os.urandom(32),
        b"nik",
        b"personal",
        status,
    )
    return registration_id


def _auth(keyring: Keyring, registration_id: uuid.UUID) -> dict[str, str]:
    return {"Authorization": f"Bearer {keyring.access_token(registration_id)}"}


async def _wave(
    db: asyncpg.Pool, name: str, opens_in_h: float, closes_in_h: float, attempts: int = 1
) -> Wave:
    now = _now()
    return await Waves(db).create(
        "test",
        name,
        now + dt.timedelta(hours=opens_in_h),
        now + dt.timedelta(hours=closes_in_h),
        100,
        Policy(test_attempts=attempts),
    )


@contextlib.asynccontextmanager
async def worker(settings: Settings, db: asyncpg.Pool) -> AsyncIterator[ParticipationWorker]:
    running = ParticipationWorker(settings, Keyring.from_secret(settings.secret_key), db, BANK)
    task = asyncio.create_task(running.run())
    try:
        yield running
    finally:
        running.stop()
        await asyncio.wait_for(task, 30)


def _counted(metric: str, outcome: str) -> float:
    return REGISTRY.get_sample_value(metric, {"outcome": outcome}) or 0.0


def _answers(asked: list[str], right: int) -> dict[str, int]:
    """The right option for the first ``right`` questions, a wrong one for the rest."""
    answers = {}
    for i, qid in enumerate(asked):
        answer = BANK.question(qid).answer
        answers[qid] = answer if i < right else (answer + 1) % questions.OPTIONS
    return answers


async def _status(client: Any, keyring: Keyring, registration_id: uuid.UUID) -> dict[str, Any]:
    response = await client.get(
        f"/v1/registrations/{registration_id}", headers=_auth(keyring, registration_id)
    )
    assert response.status == 200
    document: dict[str, Any] = await response.json()
    validate("RegistrationStatus", document)
    return document


async def _publish(settings: Settings, routing_key: str, body: bytes) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topology.EXCHANGE)
        await exchange.publish(aio_pika.Message(body), routing_key, mandatory=True)


async def test_a_registrant_fetches_the_same_test_again_submits_and_is_scored(
    settings: Settings, db: asyncpg.Pool, keyring: Keyring
) -> None:
    await _wave(db, "gelombang-1", -1, 24)
    registration_id = await _verified(db, keyring)
    auth = _auth(keyring, registration_id)
    path = f"/v1/registrations/{registration_id}/test"
    async with edge(settings) as client:
        first = await client.get(path, headers=auth)
        assert first.status == 200
        raw = await first.read()
        test = orjson.loads(raw)
        validate("Test", test)
        assert test["wave"] == "gelombang-1"
        assert test["attempt"] == 1
        assert test["time_limit_s"] == 1500
        asked = [q["id"] for q in test["questions"]]
        assert len(asked) == 19
        assert len(set(asked)) == 19
        assert all(len(q["options"]) == 4 for q in test["questions"])
        assert b"answer" not in raw  # the right answers never leave the server
        served = dt.datetime.fromisoformat(test["served_at"])
        assert dt.datetime.fromisoformat(test["deadline_at"]) - served == dt.timedelta(seconds=1500)

        again = await (await client.get(path, headers=auth)).json()
        assert again == test  # same attempt, same questions, same deadline: no new clock
        assert await db.fetchval("SELECT count(*) FROM test_attempts") == 1
        assert (await _status(client, keyring, registration_id))["test"]["state"] == ("in_progress")

        answers = _answers(asked, right=10)
        submitted = await client.post(path, json={"attempt": 1, "answers": answers}, headers=auth)
        assert submitted.status == 202
        document = await submitted.json()
        validate("TestSubmitted", document)
        assert submitted.headers["Location"] == f"/v1/registrations/{registration_id}"
        assert (await _status(client, keyring, registration_id))["test"]["state"] == "submitted"
        twice = await client.post(path, json={"attempt": 1, "answers": answers}, headers=auth)
        assert twice.status == 409
        assert (await twice.json())["type"].endswith("/test-already-submitted")

        async with worker(settings, db):
            status = await eventually(
                lambda: _status(client, keyring, registration_id),
                lambda s: s["test"]["state"] == "scored",
            )
        assert status["test"]["score"] == round(100 * 10 / 19) == 53
        assert status["test"]["wave"] == "gelombang-1"
        row = await db.fetchrow("SELECT correct, answers, submitted_at FROM test_attempts")
        assert row["correct"] == 10
        assert orjson.loads(row["answers"]) == answers

        scored = await client.post(path, json={"attempt": 1, "answers": answers}, headers=auth)
        assert scored.status == 409
        assert (await scored.json())["type"].endswith("/test-already-scored")
        # One attempt per wave by default: no second.
        refused = await client.get(path, headers=auth)
        assert refused.status == 409
        body = await refused.json()
        assert body["type"].endswith("/no-attempts-left")
        assert body["attempts"] == 1


async def test_a_late_submission_is_refused_by_the_edge_and_by_the_worker(
    settings: Settings, db: asyncpg.Pool, keyring: Keyring
) -> None:
    short = settings.replace(test_time_limit_s=1.0)
    wave = await _wave(db, "gelombang-2", -1, 24, attempts=2)
    registration_id = await _verified(db, keyring)
    auth = _auth(keyring, registration_id)
    path = f"/v1/registrations/{registration_id}/test"
    async with edge(short) as client:
        test = await (await client.get(path, headers=auth)).json()
        deadline = dt.datetime.fromisoformat(test["deadline_at"])
        asked = [q["id"] for q in test["questions"]]
        await eventually(_now, lambda now: now > deadline)
        late = await client.post(
            path, json={"attempt": 1, "answers": _answers(asked, 19)}, headers=auth
        )
        assert late.status == 409
        assert (await late.json())["type"].endswith("/test-time-over")
        assert (await _status(client, keyring, registration_id))["test"]["state"] == "expired"

        # The worker decides by the edge's receive time, not by when it gets the message.
        keyring_ = Keyring.from_secret(settings.secret_key)
        after = Submission(registration_id, wave.id, 1, _answers(asked, 19), deadline)
        before = Submission(
            registration_id, wave.id, 1, _answers(asked, 5), deadline - dt.timedelta(seconds=0.5)
        )
        late_before = _counted("intake_test_submissions_total", "late")
        await _publish(settings, topology.TESTS_ROUTING_KEY, after.seal(keyring_))
        async with worker(settings, db):
            await eventually(
                lambda: _counted("intake_test_submissions_total", "late"),
                lambda n: n == late_before + 1,
            )
            assert await db.fetchval("SELECT score FROM test_attempts") is None
            await _publish(settings, topology.TESTS_ROUTING_KEY, before.seal(keyring_))
            score = await eventually(
                lambda: db.fetchval("SELECT score FROM test_attempts"), lambda s: s is not None
            )
        assert score == round(100 * 5 / 19)

        # The wave allows two attempts: the second is a new draw with a new clock.
        second = await (await client.get(path, headers=auth)).json()
        assert second["attempt"] == 2
        assert second["served_at"] > test["served_at"]
        await eventually(_now, lambda now: now > dt.datetime.fromisoformat(second["deadline_at"]))
        status = await _status(client, keyring, registration_id)
        assert status["test"]["attempt"] == 2
        assert status["test"]["state"] == "expired"
        third = await client.get(path, headers=auth)
        assert third.status == 409
        assert (await third.json())["type"].endswith("/no-attempts-left")


async def test_concurrent_fetches_serve_one_attempt(
    settings: Settings, db: asyncpg.Pool, keyring: Keyring
) -> None:
    await _wave(db, "gelombang-3", -1, 24)
    registration_id = await _verified(db, keyring)
    path = f"/v1/registrations/{registration_id}/test"
    async with edge(settings) as client:
        responses = await asyncio.gather(
            *(client.get(path, headers=_auth(keyring, registration_id)) for _ in range(12))
        )
        documents = [await r.json() for r in responses]
    assert {r.status for r in responses} == {200}
    assert all(d == documents[0] for d in documents)
    assert await db.fetchval("SELECT count(*) FROM test_attempts") == 1


async def test_malformed_answers_get_a_422_per_field(
    settings: Settings, db: asyncpg.Pool, keyring: Keyring
) -> None:
    await _wave(db, "gelombang-4", -1, 24)
    registration_id = await _verified(db, keyring)
    auth = _auth(keyring, registration_id)
    path = f"/v1/registrations/{registration_id}/test"
    async with edge(settings) as client:
        test = await (await client.get(path, headers=auth)).json()
        asked = [q["id"] for q in test["questions"]]
        not_asked = next(qid for qid in BANK.ids() if qid not in asked)
        cases: list[tuple[Any, set[tuple[str, str]]]] = [
            (b"not json", {("body", "invalid")}),
            ({"answers": {}}, {("attempt", "invalid")}),
            ({"attempt": True, "answers": []}, {("attempt", "invalid"), ("answers", "invalid")}),
            (
                {"attempt": 1, "answers": {asked[0]: 4, asked[1]: "a", asked[2]: -1}},
                {(f"answers.{q}", "out_of_range") for q in asked[:3]},
            ),
        ]
        # Well formed, but not what was served: a conflict (409), with the same errors.
        conflicts: list[tuple[Any, set[tuple[str, str]]]] = [
            (
                {"attempt": 1, "answers": {not_asked: 0}},
                {(f"answers.{not_asked}", "unknown_question")},
            ),
            ({"attempt": 7, "answers": {}}, {("attempt", "unknown_attempt")}),
            (
                {"attempt": 1.0, "answers": {not_asked: 2.0}},
                {(f"answers.{not_asked}", "unknown_question")},
            ),
        ]
        for status, checked in ((422, cases), (409, conflicts)):
            for body, expected in checked:
                if isinstance(body, bytes):
                    response = await client.post(path, data=body, headers=auth)
                else:
                    response = await client.post(path, json=body, headers=auth)
                assert response.status == status, body
                problem = await response.json()
                if status == 422:
                    validate("ParticipationValidationProblem", problem)
                else:
                    assert problem["type"] == "https://intake.example/problems/answers-not-served"
                assert {(e["field"], e["code"]) for e in problem["errors"]} == expected, body
        bad_join = await client.post(
            f"/v1/registrations/{registration_id}/wave", json={"situation": "rich"}, headers=auth
        )
        assert bad_join.status == 422
        assert [e["field"] for e in (await bad_join.json())["errors"]] == ["situation"]
    assert (
        await db.fetchval("SELECT count(*) FROM test_attempts WHERE submitted_at IS NOT NULL") == 0
    )


async def test_only_a_verified_registrant_with_its_token_takes_part(
    settings: Settings, db: asyncpg.Pool, keyring: Keyring
) -> None:
    await _wave(db, "gelombang-5", -1, 24)
    received = await _verified(db, keyring, status="received")
    verified = await _verified(db, keyring)
    async with edge(settings) as client:
        for method, suffix, body in (
            ("GET", "test", None),
            ("POST", "wave", {"situation": "laid_off"}),
        ):
            url = f"/v1/registrations/{received}/{suffix}"
            response = await client.request(
                method, url, json=body, headers=_auth(keyring, received)
            )
            assert response.status == 409
            assert (await response.json())["type"].endswith("/not-verified")
            # Another registration's token: as if it did not exist.
            stranger = await client.request(
                method, url, json=body, headers=_auth(keyring, verified)
            )
            assert stranger.status == 404
    assert await db.fetchval("SELECT count(*) FROM test_attempts") == 0


async def test_no_wave_at_all_means_no_test(
    settings: Settings, db: asyncpg.Pool, keyring: Keyring
) -> None:
    registration_id = await _verified(db, keyring)
    async with edge(settings) as client:
        response = await client.get(
            f"/v1/registrations/{registration_id}/test", headers=_auth(keyring, registration_id)
        )
        body = await response.json()
    assert response.status == 409
    assert body["type"].endswith("/no-wave")
    assert body["next_opens_at"] is None


async def _take_test(client: Any, keyring: Keyring, registration_id: uuid.UUID, right: int) -> None:
    auth = _auth(keyring, registration_id)
    path = f"/v1/registrations/{registration_id}/test"
    test = await (await client.get(path, headers=auth)).json()
    answers = _answers([q["id"] for q in test["questions"]], right)
    submitted = await client.post(
        path, json={"attempt": test["attempt"], "answers": answers}, headers=auth
    )
    assert submitted.status == 202


async def test_joining_the_open_wave_once(
    settings: Settings, db: asyncpg.Pool, keyring: Keyring
) -> None:
    later = await _wave(db, "gelombang-6", 1, 24)
    registration_id = await _verified(db, keyring)
    auth = _auth(keyring, registration_id)
    url = f"/v1/registrations/{registration_id}/wave"
    join = {"situation": "laid_off"}
    async with edge(settings) as client:
        # Before it opens: the test may be taken (it counts for this wave), joining not yet.
        early = await client.post(url, json=join, headers=auth)
        assert early.status == 409
        body = await early.json()
        assert body["type"].endswith("/wave-not-open")
        assert body["next_opens_at"] == later.opens_at.astimezone(WIB).isoformat()
        assert body["next_opens_at"].endswith("+07:00")
        await Waves(db).open_now("test", "gelombang-6", _now())
        unscored = await client.post(url, json=join, headers=auth)
        assert unscored.status == 409
        assert (await unscored.json())["type"].endswith("/no-score")

        await _take_test(client, keyring, registration_id, right=19)
        async with worker(settings, db):
            await eventually(
                lambda: db.fetchval("SELECT score FROM test_attempts"), lambda s: s == 100
            )
        # Two joins before the worker stores either: both answered 202, one row.
        first = await client.post(url, json=join, headers=auth)
        second = await client.post(url, json={"situation": "employed"}, headers=auth)
        assert (first.status, second.status) == (202, 202)
        document = await first.json()
        validate("WaveJoined", document)
        assert (document["wave"], document["status"]) == ("gelombang-6", "joining")
        already = _counted("intake_wave_joins_total", "already_joined")
        async with worker(settings, db):
            await eventually(
                lambda: _counted("intake_wave_joins_total", "already_joined"),
                lambda n: n == already + 1,
            )
        rows = await db.fetch("SELECT wave_id, situation FROM wave_joins")
        assert [(r["wave_id"], r["situation"]) for r in rows] == [(later.id, "laid_off")]
        again = await client.post(url, json={"situation": "other"}, headers=auth)
        assert again.status == 202
        assert (await again.json())["status"] == "joined"
        assert (await again.json())["situation"] == "laid_off"
        assert await db.fetchval("SELECT count(*) FROM wave_joins") == 1
        wave = (await _status(client, keyring, registration_id))["wave"]
        assert (wave["name"], wave["state"], wave["situation"]) == (
            "gelombang-6",
            "joined",
            "laid_off",
        )

        # After it closes: 409 with the next opening, if there is one.
        await Waves(db).close_now("test", "gelombang-6", _now())
        closed = await client.post(url, json=join, headers=auth)
        assert closed.status == 409
        assert (await closed.json())["next_opens_at"] is None
        nxt = await _wave(db, "gelombang-7", 48, 72)
        closed = await client.post(url, json=join, headers=auth)
        assert (await closed.json())["next_opens_at"] == nxt.opens_at.astimezone(WIB).isoformat()

        # Selected once: never again.
        await db.execute("UPDATE wave_joins SET outcome = 'selected', rank = 1")
        assert (await _status(client, keyring, registration_id))["wave"]["state"] == "selected"
        await Waves(db).open_now("test", "gelombang-7", _now())
        refused = await client.post(url, json=join, headers=auth)
        assert refused.status == 409
        assert (await refused.json())["type"].endswith("/already-selected")


async def test_the_worker_stores_a_join_only_if_the_wave_was_open_when_received(
    settings: Settings, db: asyncpg.Pool, keyring: Keyring
) -> None:
    wave = await _wave(db, "gelombang-8", -1, 24)
    on_time, too_early = await _verified(db, keyring), await _verified(db, keyring)
    sealer = Keyring.from_secret(settings.secret_key)
    before = wave.opens_at - dt.timedelta(seconds=1)
    for registration_id, at in ((too_early, before), (on_time, wave.opens_at)):
        message = Join(registration_id, wave.id, Situation.JOB_SEEKER, at)
        await _publish(settings, topology.JOINS_ROUTING_KEY, message.seal(sealer))
    closed = _counted("intake_wave_joins_total", "wave_not_open")
    async with worker(settings, db):
        await eventually(lambda: db.fetchval("SELECT count(*) FROM wave_joins"), lambda n: n == 1)
        await eventually(
            lambda: _counted("intake_wave_joins_total", "wave_not_open"),
            lambda n: n == closed + 1,
        )
    assert await db.fetchval("SELECT registration_id FROM wave_joins") == on_time


async def test_of_two_joins_the_one_received_first_stays_whatever_the_storing_order(
    settings: Settings, db: asyncpg.Pool, keyring: Keyring
) -> None:
    wave = await _wave(db, "gelombang-11", -1, 24)
    registration_id = await _verified(db, keyring)
    sealer = Keyring.from_secret(settings.secret_key)
    first_at = _now() - dt.timedelta(seconds=5)
    # Queued in the opposite order to the edge's: the later join is stored first.
    for situation, at in (
        (Situation.EMPLOYED, first_at + dt.timedelta(seconds=1)),
        (Situation.LAID_OFF, first_at),
    ):
        message = Join(registration_id, wave.id, situation, at)
        await _publish(settings, topology.JOINS_ROUTING_KEY, message.seal(sealer))
    repeats = _counted("intake_wave_joins_total", "already_joined")
    async with worker(settings, db):
        await eventually(
            lambda: _counted("intake_wave_joins_total", "already_joined"),
            lambda n: n == repeats + 1,
        )
    rows = await db.fetch("SELECT situation, joined_at FROM wave_joins")
    assert [(r["situation"], r["joined_at"]) for r in rows] == [("laid_off", first_at)]


async def test_an_unreadable_message_is_dead_lettered(settings: Settings, db: asyncpg.Pool) -> None:
    await _publish(settings, topology.TESTS_ROUTING_KEY, b"not a sealed message")
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection, worker(settings, db):
        channel = await connection.channel()

        async def dead() -> int:
            queue = await channel.declare_queue(f"{topology.TESTS_QUEUE}.dlq", passive=True)
            return int(queue.declaration_result.message_count or 0)

        await eventually(dead, lambda n: n == 1)


async def test_the_edge_sheds_answers_as_it_sheds_registrations(
    settings: Settings, db: asyncpg.Pool, keyring: Keyring
) -> None:
    await _wave(db, "gelombang-9", -1, 24)
    registration_id = await _verified(db, keyring)
    auth = _auth(keyring, registration_id)
    async with edge(settings) as client:
        await client.app[PUBLISHER].close()  # the edge is shutting down: it sheds
        for suffix, body in (
            ("test", {"attempt": 1, "answers": {}}),
            ("wave", {"situation": "laid_off"}),
        ):
            response = await client.post(
                f"/v1/registrations/{registration_id}/{suffix}", json=body, headers=auth
            )
            assert response.status == 503
            assert int(response.headers["Retry-After"]) >= 1
            assert (await response.json())["reason"] == "shutting_down"


async def test_a_dead_lettered_join_is_listed_and_replayed(
    settings: Settings, db: asyncpg.Pool, keyring: Keyring
) -> None:
    wave = await _wave(db, "gelombang-10", -1, 24)
    registration_id = await _verified(db, keyring)
    message = Join(registration_id, wave.id, Situation.SMALL_BUSINESS, _now())
    dlq_name = f"{topology.JOINS_QUEUE}.dlq"
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            aio_pika.Message(message.seal(Keyring.from_secret(settings.secret_key))), dlq_name
        )
    report = await dlq.list_dead_letters(settings)
    assert report[dlq_name]["messages"] == 1
    assert await dlq.replay(settings, dlq_name) == 1
    async with worker(settings, db):
        situation = await eventually(
            lambda: db.fetchval("SELECT situation FROM wave_joins"), lambda s: s is not None
        )
    assert situation == "small_business"
    assert (await dlq.list_dead_letters(settings))[dlq_name]["messages"] == 0
