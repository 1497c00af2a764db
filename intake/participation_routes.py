"""The registrant's side of a wave: the intake test, then joining the wave that is open.

    GET  /v1/registrations/{id}/test    the live attempt, or a new one (its questions, deadline)
    POST /v1/registrations/{id}/test    {"attempt": n, "answers": {"question id": index}}
    POST /v1/registrations/{id}/wave    {"situation": "laid_off" | ...}

All three need the registration's bearer token (as its status does) and a ``verified``
registration. Serving a test is the edge's only write here: the attempt's row, with the drawn
question ids and the deadline, in a transaction that holds the registration's row, so that
concurrent fetches serve one attempt, and fetching again serves the same questions and the
same deadline (the clock never restarts). Answers and joins are checked here (the attempt, its
deadline, the wave) and published to ``intake.tests`` / ``intake.joins`` with the edge's
receive time, confirmed; the participation worker writes them once, and only if that time was
in time (``workers/participation.py``). The right answers never leave the server.

When the edge sheds registrations (broker away, persist queue full, the edge short of CPU)
it sheds these too, with the same ``503`` and ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from core import questions, topology
from core.participation import Join, Submission
from core.questions import OPTIONS, Bank, BankError
from core.waves import WIB, Policy, Situation
from intake.access import authorized_id
from intake.appkeys import DB, GATE, KEYRING, PUBLISHER, SETTINGS
from intake.limits import per_client
from intake.problems import problem, unavailable
from intake.publisher import Unavailable
from intake.registering import IDEMPOTENCY_KEY_MAX_CHARS, REGISTRATIONS_PATH
from intake.validation import FieldError

log = logging.getLogger(__name__)

BANK = web.AppKey("question_bank", Bank)
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
_QUESTION_ID_MAX_CHARS = 64
_NOT_SERVED = "The answers are not for an attempt or questions served"

# The wave an attempt counts for: the one open at $1, else the next to open (waves never
# overlap, so the first not yet closed is the open one if any).
_CURRENT_WAVE_SQL = """
SELECT id, name, opens_at, policy FROM waves
WHERE closes_at > $1 AND (closed_at IS NULL OR closed_at > $1)
ORDER BY opens_at LIMIT 1
"""
_OPEN_WAVE_SQL = """
SELECT id, name FROM waves
WHERE opens_at <= $1 AND closes_at > $1 AND (closed_at IS NULL OR closed_at > $1)
ORDER BY opens_at LIMIT 1
"""
_NEXT_OPENING_SQL = "SELECT min(opens_at) FROM waves WHERE opens_at > $1"
_LATEST_ATTEMPT_SQL = """
SELECT attempt, questions, served_at, deadline_at, submitted_at, score FROM test_attempts
WHERE registration_id = $1 AND wave_id = $2 ORDER BY attempt DESC LIMIT 1
"""
_INSERT_ATTEMPT_SQL = """
INSERT INTO test_attempts (registration_id, wave_id, attempt, questions, served_at, deadline_at)
VALUES ($1, $2, $3, $4, $5, $6)
"""
_ATTEMPT_SQL = """
SELECT wave_id, questions, deadline_at, submitted_at, score FROM test_attempts
WHERE registration_id = $1 AND attempt = $2 ORDER BY served_at DESC LIMIT 1
"""
_SUBMITTED_SQL = """
UPDATE test_attempts SET submitted_at = $4
WHERE registration_id = $1 AND wave_id = $2 AND attempt = $3
  AND submitted_at IS NULL AND score IS NULL
"""


def add_routes(app: web.Application) -> None:
    """Add the test and wave routes; load and check the question bank (a bad bank, or one
    with fewer questions than an attempt draws, stops the edge at start)."""
    settings = app[SETTINGS]
    bank = questions.load(settings.test_bank)
    if settings.test_questions > len(bank):
        raise BankError(
            f"INTAKE_TEST_QUESTIONS is {settings.test_questions}"
            f" but the bank holds {len(bank)} questions"
        )
    app[BANK] = bank
    app.router.add_get("/v1/registrations/{id}/test", per_client(get_test))
    app.router.add_post("/v1/registrations/{id}/test", per_client(submit_test))
    app.router.add_post("/v1/registrations/{id}/wave", per_client(join_wave))


def _answer(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _not_found() -> web.Response:
    return problem(404, "not-found", "No such registration")


def _not_verified() -> web.Response:
    return problem(409, "not-verified", "The registration is not verified (yet)")


def _database_down(request: web.Request, exc: BaseException) -> web.Response:
    log.warning("participation route failed: %s", type(exc).__name__)
    return unavailable("database_unreachable", request.app[SETTINGS].edge_retry_after_s)


def _wib(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(WIB).isoformat()


def _shed(request: web.Request, reason: str) -> web.Response:
    now_s = asyncio.get_running_loop().time()
    return unavailable(reason, request.app[GATE].retry_after_s(reason, now_s))


def _refusal(request: web.Request) -> str | None:
    """Why the edge would shed a registration now (then these are shed too), or None."""
    reason = request.app[PUBLISHER].refusal()
    if reason is None and request.app[GATE].monitor.shed(asyncio.get_running_loop().time()):
        reason = "queue_delay"
    return reason


async def _body(request: web.Request) -> Any:
    """The decoded JSON body, or None when it is not JSON (the caller answers per field)."""
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None


_STATUS_SQL = "SELECT status FROM registrations WHERE id = $1"


async def _status(connection: asyncpg.Connection, registration_id: uuid.UUID) -> Any:
    return await connection.fetchval(_STATUS_SQL, registration_id)


# --- the test ---------------------------------------------------------------------------------


async def get_test(request: web.Request) -> web.StreamResponse:
    """``GET /v1/registrations/{id}/test``: the live attempt, or a new one if allowed."""
    registration_id = authorized_id(request, request.app[KEYRING])
    if registration_id is None:
        return _not_found()
    try:
        async with request.app[DB].acquire() as connection, connection.transaction():
            return await _serve_test(request, connection, registration_id)
    except _DB_ERRORS as exc:
        return _database_down(request, exc)


async def _serve_test(
    request: web.Request,
    connection: asyncpg.Connection,
    registration_id: uuid.UUID,
) -> web.Response:
    settings, bank = request.app[SETTINGS], request.app[BANK]
    # The row lock makes concurrent fetches of one registrant take turns: the second finds
    # the attempt the first served. NO KEY: inserting the attempt (a foreign key to this row)
    # in the same transaction does not wait for it.
    status = await connection.fetchval(_STATUS_SQL + " FOR NO KEY UPDATE", registration_id)
    if status != "verified":
        return _not_verified()
    now = dt.datetime.now(dt.UTC)  # once the lock is held: the clock starts when served
    wave = await connection.fetchrow(_CURRENT_WAVE_SQL, now)
    if wave is None:
        return problem(409, "no-wave", "No wave is open or scheduled", next_opens_at=None)
    latest = await connection.fetchrow(_LATEST_ATTEMPT_SQL, registration_id, wave["id"])
    if (
        latest is not None
        and latest["score"] is None
        and latest["submitted_at"] is None
        and latest["deadline_at"] > now
    ):
        return _test_document(settings.test_time_limit_s, bank, wave["name"], latest)
    allowed = Policy.from_obj(orjson.loads(wave["policy"])).test_attempts
    used = 0 if latest is None else latest["attempt"]
    if used >= allowed:
        return problem(
            409, "no-attempts-left", "No test attempts are left for this wave", attempts=allowed
        )
    drawn = bank.draw(settings.test_questions)
    deadline = now + dt.timedelta(seconds=settings.test_time_limit_s)
    served = orjson.dumps(drawn).decode()
    await connection.execute(
        _INSERT_ATTEMPT_SQL, registration_id, wave["id"], used + 1, served, now, deadline
    )
    attempt = {"attempt": used + 1, "questions": served, "served_at": now, "deadline_at": deadline}
    return _test_document(settings.test_time_limit_s, bank, wave["name"], attempt)


def _test_document(
    time_limit_s: float, bank: Bank, wave: str, attempt: asyncpg.Record | dict[str, Any]
) -> web.Response:
    asked = orjson.loads(attempt["questions"])
    return _answer(
        200,
        {
            "wave": wave,
            "attempt": attempt["attempt"],
            # A question taken out of the bank since it was served is not shown (and counts as
            # wrong): ids are never reused, so nothing else can be shown in its place.
            "questions": [bank.question(qid).public() for qid in asked if qid in bank],
            "served_at": attempt["served_at"],
            "deadline_at": attempt["deadline_at"],
            "time_limit_s": time_limit_s,
        },
    )


def _submission_errors(body: Any) -> tuple[list[FieldError], int, dict[str, int]]:
    """The field errors of a submission's body, its attempt and its answers."""
    if not isinstance(body, dict):
        message = 'The body must be {"attempt": n, "answers": {...}}'
        return [FieldError("body", "invalid", message)], 0, {}
    errors = []
    attempt = _integer(body.get("attempt"))
    if attempt is None or not 1 <= attempt <= 32767:
        errors.append(FieldError("attempt", "invalid", "The attempt number is a positive integer"))
        attempt = 0
    answers = body.get("answers")
    if not isinstance(answers, dict):
        message = "Answers map question ids to option indexes"
        return [*errors, FieldError("answers", "invalid", message)], attempt, {}
    chosen: dict[str, int] = {}
    for qid, value in answers.items():
        index = _integer(value)
        if len(qid) > _QUESTION_ID_MAX_CHARS:
            errors.append(FieldError("answers", "unknown_question", "Unknown question id"))
        elif index is None or not 0 <= index < OPTIONS:
            message = f"An answer is an option index, 0-{OPTIONS - 1}"
            errors.append(FieldError(f"answers.{qid}", "out_of_range", message))
        else:
            chosen[qid] = index
    return errors, attempt, chosen


def _integer(value: Any) -> int | None:
    """A JSON integer, as JSON Schema counts them (``2`` and ``2.0`` alike), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


async def submit_test(request: web.Request) -> web.StreamResponse:
    """``POST /v1/registrations/{id}/test``: 202 once the answers are durable in the broker."""
    received_at = dt.datetime.now(dt.UTC)
    registration_id = authorized_id(request, request.app[KEYRING])
    if registration_id is None:
        return _not_found()
    reason = _refusal(request)
    if reason is not None:
        return _shed(request, reason)
    errors, number, answers = _submission_errors(await _body(request))
    if errors:
        return problem(422, "invalid-answers", "The answers are invalid", errors=errors)
    try:
        attempt = await request.app[DB].fetchrow(_ATTEMPT_SQL, registration_id, number)
    except _DB_ERRORS as exc:
        return _database_down(request, exc)
    # Well-formed answers that do not match what was served: a conflict with the server's
    # state (409), not a malformed body (422).
    if attempt is None:
        error = FieldError("attempt", "unknown_attempt", "No such attempt was served")
        return problem(409, "answers-not-served", _NOT_SERVED, errors=[error])
    asked = set(orjson.loads(attempt["questions"]))
    unknown = [
        FieldError(f"answers.{qid}", "unknown_question", "This question was not asked")
        for qid in answers
        if qid not in asked
    ]
    if unknown:
        return problem(409, "answers-not-served", _NOT_SERVED, errors=unknown)
    if attempt["score"] is not None:
        return problem(409, "test-already-scored", "This attempt is scored already")
    if attempt["submitted_at"] is not None:
        return problem(409, "test-already-submitted", "This attempt was submitted already")
    if received_at >= attempt["deadline_at"]:
        return problem(
            409,
            "test-time-over",
            "The time of this attempt is over",
            deadline_at=attempt["deadline_at"],
        )
    message = Submission(registration_id, attempt["wave_id"], number, answers, received_at)
    try:
        await request.app[PUBLISHER].publish_one(
            topology.TESTS_ROUTING_KEY, message.seal(request.app[KEYRING])
        )
    except Unavailable as exc:
        return _shed(request, exc.reason)
    try:
        # Shown as "submitted" until scored, and not submitted twice. The worker writes the
        # same time again: if this write fails, the answers are durable all the same.
        await request.app[DB].execute(
            _SUBMITTED_SQL, registration_id, attempt["wave_id"], number, received_at
        )
    except _DB_ERRORS as exc:
        log.warning("submission time not recorded: %s", type(exc).__name__)
    status_url = f"{REGISTRATIONS_PATH}/{registration_id}"
    return _answer(
        202,
        {
            "id": str(registration_id),
            "attempt": number,
            "status": "submitted",
            "status_url": status_url,
        },
        headers={"Location": status_url},
    )


# --- joining a wave ---------------------------------------------------------------------------


def _situation(body: Any) -> Situation | None:
    value = body.get("situation") if isinstance(body, dict) else None
    try:
        return Situation(value) if isinstance(value, str) else None
    except ValueError:
        return None


async def join_wave(request: web.Request) -> web.StreamResponse:
    """``POST /v1/registrations/{id}/wave``: 202 once the join is durable in the broker (or
    was stored already: joining twice is one join)."""
    received_at = dt.datetime.now(dt.UTC)
    registration_id = authorized_id(request, request.app[KEYRING])
    if registration_id is None:
        return _not_found()
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 0 < len(key) <= IDEMPOTENCY_KEY_MAX_CHARS:
        return problem(400, "bad-idempotency-key", "Idempotency-Key must be 1-255 characters")
    reason = _refusal(request)
    if reason is not None:
        return _shed(request, reason)
    situation = _situation(await _body(request))
    if situation is None:
        choices = ", ".join(s.value for s in Situation)
        error = FieldError("situation", "invalid", f"The situation is one of {choices}")
        return problem(422, "invalid-join", "The join is invalid", errors=[error])
    try:
        async with request.app[DB].acquire() as connection:
            refused, wave, joined = await _may_join(connection, registration_id, received_at)
    except _DB_ERRORS as exc:
        return _database_down(request, exc)
    if refused is not None:
        return refused
    document = {
        "id": str(registration_id),
        "wave": wave["name"],
        "situation": situation.value if joined is None else joined,
        "status": "joined" if joined is not None else "joining",
        "status_url": f"{REGISTRATIONS_PATH}/{registration_id}",
    }
    if joined is None:
        message = Join(registration_id, wave["id"], situation, received_at)
        try:
            await request.app[PUBLISHER].publish_one(
                topology.JOINS_ROUTING_KEY, message.seal(request.app[KEYRING])
            )
        except Unavailable as exc:
            return _shed(request, exc.reason)
    return _answer(202, document, headers={"Location": document["status_url"]})


async def _may_join(
    connection: asyncpg.Connection, registration_id: uuid.UUID, now: dt.datetime
) -> tuple[web.Response | None, Any, str | None]:
    """(a refusal or None, the open wave, the situation of a join stored already or None)."""
    if await _status(connection, registration_id) != "verified":
        return _not_verified(), None, None
    wave = await connection.fetchrow(_OPEN_WAVE_SQL, now)
    if wave is None:
        opens = await connection.fetchval(_NEXT_OPENING_SQL, now)
        refusal = problem(409, "wave-not-open", "No wave is open", next_opens_at=_wib(opens))
        return refusal, None, None
    if await connection.fetchval(
        "SELECT 1 FROM wave_joins WHERE registration_id = $1 AND outcome = 'selected'",
        registration_id,
    ):
        return problem(409, "already-selected", "This registrant was selected already"), None, None
    joined = await connection.fetchval(
        "SELECT situation FROM wave_joins WHERE wave_id = $1 AND registration_id = $2",
        wave["id"],
        registration_id,
    )
    if joined is not None:
        return None, wave, joined
    if not await connection.fetchval(
        "SELECT 1 FROM test_attempts WHERE registration_id = $1 AND wave_id = $2"
        " AND score IS NOT NULL",
        registration_id,
        wave["id"],
    ):
        return problem(409, "no-score", "Take the test for this wave first"), None, None
    return None, wave, None


# --- the status -------------------------------------------------------------------------------


async def participation_status(
    connection: asyncpg.Connection, registration_id: uuid.UUID
) -> dict[str, Any]:
    """``test`` (the latest attempt) and ``wave`` (the latest join) of a registration's
    status document; each None if there is none."""
    attempt = await connection.fetchrow(
        "SELECT w.name, a.attempt, a.deadline_at, a.submitted_at, a.score,"
        " a.deadline_at <= now() AS over"
        " FROM test_attempts a JOIN waves w ON w.id = a.wave_id"
        " WHERE a.registration_id = $1 ORDER BY a.served_at DESC LIMIT 1",
        registration_id,
    )
    join = await connection.fetchrow(
        "SELECT w.name, j.situation, j.joined_at, j.outcome"
        " FROM wave_joins j JOIN waves w ON w.id = j.wave_id"
        " WHERE j.registration_id = $1 ORDER BY j.joined_at DESC LIMIT 1",
        registration_id,
    )
    test = None
    if attempt is not None:
        if attempt["score"] is not None:
            state = "scored"
        elif attempt["submitted_at"] is not None:
            state = "submitted"
        else:
            state = "expired" if attempt["over"] else "in_progress"
        test = {
            "wave": attempt["name"],
            "attempt": attempt["attempt"],
            "state": state,
            "score": attempt["score"],
            "deadline_at": attempt["deadline_at"],
        }
    wave = None
    if join is not None:
        wave = {
            "name": join["name"],
            "state": join["outcome"] or "joined",
            "situation": join["situation"],
            "joined_at": join["joined_at"],
        }
    return {"test": test, "wave": wave}
