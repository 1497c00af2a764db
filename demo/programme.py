"""The programme after verification, as the demo's last act: an operator opens a wave through
the admin API, every verified registrant takes the test and joins at once (the join spike),
the operator closes the wave, the selection runs at the close and everyone is told the outcome
by one email and one SMS.

The registrants answer as people would: each knows the right answer to a question with their
own probability (drawn from the run's seed; the demo reads the bank the server scores with, to
know which option is right), and declares a situation drawn from the shares of 2020's
applicants. What is checked at the end, from the database and from the simulators' inboxes:
exactly the quota selected (or every eligible joiner, if fewer), the ranking's rules held
(situations first, then score, DTKS recipients after the others at equal score), and each
joiner received exactly one outcome email and one outcome SMS.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import hashlib
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg

from core.questions import Bank, load
from core.settings import Settings
from demo.registrants import Person

# The demo's own operator credential (a local stack only: never a deployment's).
ADMIN_TOKEN = "demo-operator-token"  # noqa: S105 (a local demo's credential, public on purpose)
ADMIN_NAME = "demo-operator"
# Shares of the declared situations (laid-off workers and small business owners were the
# programme's first concern in 2020).
SITUATIONS = ("laid_off", "small_business", "job_seeker", "employed", "other")
SITUATION_WEIGHTS = (0.40, 0.20, 0.25, 0.10, 0.05)
QUOTA_SHARE = 1 / 3  # of the verified: most are not selected, as in 2020
GIVE_UP_S = 180.0
RETRY_S = 0.2


ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def admin_tokens() -> str:
    """``INTAKE_ADMIN_TOKENS`` for the demo's admin API."""
    return f"{ADMIN_NAME}:{hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()}"


@dataclass
class Taker:
    """One verified registrant's part in the wave."""

    person: Person
    skill: float  # the chance they know an answer
    situation: str
    score: int | None = None
    joined_at_s: float | None = None
    refusals: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass
class Report:
    wave: str = ""
    quota: int = 0
    verified: int = 0
    scored: int = 0
    joined: int = 0
    joins_per_second: list[int] = field(default_factory=list)
    eligible: int = 0
    selected: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)
    selected_by_situation: dict[str, int] = field(default_factory=dict)
    selection_s: float = 0.0
    notified_s: float = 0.0
    emails: dict[str, int] = field(default_factory=dict)  # recipients by messages received
    sms: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


async def run(
    settings: Settings,
    admin_url: str,
    base_url: str,
    people: list[Person],
    feeds: tuple[str, str],
    seed: int,
    say: Callable[[str], None],
) -> Report:
    """The wave from its opening to its last notification; the report's ``problems`` name
    what differs from the rules (empty when everything holds)."""
    report = Report()
    db = await asyncpg.connect(settings.database_url)
    try:
        verified_ids = {r["id"] for r in await db.fetch(_VERIFIED_SQL)}
        takers = [_taker(p, seed) for p in people if p.id in verified_ids]
        report.verified = len(takers)
        if not takers:
            say("\nthe programme: nobody was verified, so no wave is opened")
            return report
        report.quota = max(1, round(len(takers) * QUOTA_SHARE))
        bank = load(settings.test_bank)
        headers = ADMIN_HEADERS
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            report.wave = await _open(http, admin_url, headers, report.quota, say)
            mail_mark, sms_mark = await _mark(http, feeds[0]), await _mark(http, feeds[1])
            opened = time.monotonic()
            async with asyncio.timeout(GIVE_UP_S):
                await asyncio.gather(*(_take_part(http, base_url, bank, t, opened) for t in takers))
            report.scored = sum(1 for t in takers if t.score is not None)
            report.joined = sum(1 for t in takers if t.joined_at_s is not None)
            report.joins_per_second = _per_second([t.joined_at_s for t in takers])
            refusals = sum((t.refusals for t in takers), collections.Counter[str]())
            say(
                f"  {report.scored:,} took the test (mean score"
                f" {_mean([t.score for t in takers]):.0f}), {report.joined:,} joined; joins per"
                f" second: {', '.join(f'{n:,}' for n in report.joins_per_second)}"
                + (f"; answered and tried again: {dict(refusals)}" if refusals else "")
            )
            await _wait_joins_stored(db, report)
            closed = time.monotonic()
            async with http.post(
                f"{admin_url}/v1/waves/{report.wave}/close", headers=headers
            ) as response:
                if response.status != 200:
                    raise RuntimeError(f"closing the wave: {response.status}")
            say(f"  the operator closes {report.wave}: the selection runs")
            async with asyncio.timeout(GIVE_UP_S):
                selection = await _wait_for(db, _SELECTION_SQL, report.wave)
                report.selection_s = float(selection["took_s"])
                report.eligible, report.selected = selection["eligible"], selection["selected"]
                say(
                    f"  selected {report.selected:,} of {report.eligible:,} eligible in"
                    f" {report.selection_s:.2f} s; telling everyone by email and SMS"
                )
                await _wait_for(db, _ALL_SENT_SQL, report.wave)
            report.notified_s = time.monotonic() - closed
            report.emails = await _received(http, feeds[0], mail_mark, "to")
            report.sms = await _received(http, feeds[1], sms_mark, "to")
        await _audit(db, report, takers)
    finally:
        await db.close()
    return report


def as_json(report: Report) -> dict[str, Any]:
    """The report for the demo's ``--report`` file."""
    return dataclasses.asdict(report)


def lines(report: Report) -> list[str]:
    """The report's summary lines."""
    if not report.wave:
        return ["no wave: nobody was verified"]
    emails = collections.Counter(report.emails.values())
    texts = collections.Counter(report.sms.values())
    return [
        f"wave {report.wave}: {report.verified:,} verified, {report.scored:,} scored,"
        f" {report.joined:,} joined, quota {report.quota:,}: {report.selected:,} selected of"
        f" {report.eligible:,} eligible ({report.by_outcome})",
        f"  selected by situation: {report.selected_by_situation} (laid off and small business"
        " first, then by score; DTKS recipients after the others at equal score)",
        f"  selection {report.selection_s:.2f} s; every notification sent"
        f" {report.notified_s:.1f} s after the close; emails per joiner {dict(emails)},"
        f" SMS per joiner {dict(texts)}",
    ]


# --- the registrants --------------------------------------------------------------------------


def _taker(person: Person, seed: int) -> Taker:
    rng = random.Random(f"demo-test:{seed}:{person.index}")  # noqa: S311 (not a secret)
    situation = rng.choices(SITUATIONS, SITUATION_WEIGHTS)[0]
    return Taker(person, rng.uniform(0.35, 0.95), situation)


async def _take_part(
    http: aiohttp.ClientSession, base_url: str, bank: Bank, taker: Taker, opened: float
) -> None:
    """Fetch the test, answer it, wait for the score, join."""
    person = taker.person
    url = f"{base_url}/v1/registrations/{person.id}"
    status, test = await _call(http, "GET", f"{url}/test", person.auth, None, taker)
    if status != 200:
        return
    rng = random.Random(f"demo-answers:{person.id}")  # noqa: S311 (not a secret)
    answers = {}
    for question in test["questions"]:
        right = bank.question(question["id"]).answer
        wrong = [i for i in range(len(question["options"])) if i != right]
        answers[question["id"]] = right if rng.random() < taker.skill else rng.choice(wrong)
    body = {"attempt": test["attempt"], "answers": answers}
    status, _ = await _call(http, "POST", f"{url}/test", person.auth, body, taker)
    if status != 202:
        return
    while taker.score is None:
        status, document = await _call(http, "GET", url, person.auth, None, taker)
        if status == 200 and (document.get("test") or {}).get("state") == "scored":
            taker.score = int(document["test"]["score"])
        else:
            await asyncio.sleep(0.5)
    status, _ = await _call(
        http, "POST", f"{url}/wave", person.auth, {"situation": taker.situation}, taker
    )
    if status == 202:
        taker.joined_at_s = time.monotonic() - opened


async def _call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str],
    body: Any,
    taker: Taker,
) -> tuple[int, Any]:
    """The final answer to a request: a ``503`` is sent again after its ``Retry-After``."""
    while True:
        try:
            async with http.request(method, url, headers=headers, json=body) as response:
                document = await response.json(content_type=None)
                if response.status != 503:
                    return response.status, document
                taker.refusals[f"{method} {url.rsplit('/', 1)[-1]} 503"] += 1
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
        except (aiohttp.ClientError, TimeoutError, ValueError):
            await asyncio.sleep(RETRY_S)


# --- the operator -----------------------------------------------------------------------------


async def _open(
    http: aiohttp.ClientSession,
    admin_url: str,
    headers: dict[str, str],
    quota: int,
    say: Callable[[str], None],
) -> str:
    """Schedule a wave an hour from now, then open it now (as an operator may)."""
    now = dt.datetime.now(dt.UTC)
    name = f"demo-{now:%Y%m%d-%H%M%S}"
    wave = {
        "name": name,
        "opens_at": (now + dt.timedelta(hours=1)).isoformat(),
        "closes_at": (now + dt.timedelta(hours=2)).isoformat(),
        "quota": quota,
        "policy": {"dtks": "lower", "first": ["laid_off", "small_business"]},
    }
    async with http.post(f"{admin_url}/v1/waves", headers=headers, json=wave) as response:
        if response.status != 201:
            raise RuntimeError(f"creating the wave: {response.status} {await response.text()}")
    async with http.post(f"{admin_url}/v1/waves/{name}/open", headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"opening the wave: {response.status} {await response.text()}")
    say(f"\nthe programme: the operator opens wave {name} (quota {quota:,}) through the admin API")
    return name


# --- reading back -----------------------------------------------------------------------------

_VERIFIED_SQL = "SELECT id FROM registrations WHERE status = 'verified'"
_SELECTION_SQL = """
SELECT s.eligible, s.selected, extract(epoch FROM s.finished_at - s.started_at) AS took_s
FROM wave_selections s JOIN waves w ON w.id = s.wave_id WHERE w.name = $1
"""
_ALL_SENT_SQL = """
SELECT 1 FROM waves w WHERE w.name = $1
AND NOT EXISTS (SELECT 1 FROM notifications n WHERE n.wave_id = w.id AND n.state <> 'sent')
AND EXISTS (SELECT 1 FROM notifications n WHERE n.wave_id = w.id)
"""
_JOINS_SQL = """
SELECT count(*) FROM wave_joins j JOIN waves w ON w.id = j.wave_id WHERE w.name = $1
"""
_OUTCOMES_SQL = """
SELECT j.registration_id, j.situation, j.outcome, j.rank, r.priority,
       (SELECT a.score FROM test_attempts a WHERE a.registration_id = j.registration_id
        AND a.score IS NOT NULL ORDER BY a.scored_at DESC LIMIT 1) AS score
FROM wave_joins j JOIN waves w ON w.id = j.wave_id
JOIN registrations r ON r.id = j.registration_id
WHERE w.name = $1
"""


async def _wait_for(db: asyncpg.Connection, sql: str, wave: str) -> asyncpg.Record:
    while True:
        row = await db.fetchrow(sql, wave)
        if row is not None:
            return row
        await asyncio.sleep(0.25)


async def _wait_joins_stored(db: asyncpg.Connection, report: Report) -> None:
    """Every join answered 202 is stored before the operator closes (the selection would wait
    for the joins queue to drain all the same; the demo closes once they are in)."""
    async with asyncio.timeout(GIVE_UP_S):
        while await db.fetchval(_JOINS_SQL, report.wave) < report.joined:  # noqa: ASYNC110 (polling a database)
            await asyncio.sleep(0.2)


async def _mark(http: aiohttp.ClientSession, feed: str) -> int:
    """The feed's last message number now: what comes after is the wave's."""
    last = 0
    while True:
        async with http.get(feed, params={"after": str(last)}) as response:
            body = await response.json()
        if not body.get("messages"):
            return last
        last = int(body["last"])


async def _received(http: aiohttp.ClientSession, feed: str, after: int, key: str) -> dict[str, int]:
    """Messages received after ``after``, counted by recipient."""
    counts: collections.Counter[str] = collections.Counter()
    while True:
        async with http.get(feed, params={"after": str(after)}) as response:
            body = await response.json()
        messages = body.get("messages", [])
        for message in messages:
            counts[str(message[key]).lower()] += 1
        if not messages:
            return dict(counts)
        after = int(body["last"])


async def _audit(db: asyncpg.Connection, report: Report, takers: list[Taker]) -> None:
    rows = await db.fetch(_OUTCOMES_SQL, report.wave)
    report.by_outcome = dict(collections.Counter(str(r["outcome"]) for r in rows))
    report.selected_by_situation = dict(
        collections.Counter(str(r["situation"]) for r in rows if r["outcome"] == "selected")
    )
    joined = {t.person.id for t in takers if t.joined_at_s is not None}
    stored = {r["registration_id"] for r in rows}
    if joined - stored:
        report.problems.append(f"{len(joined - stored)} joins answered 202 were not stored")
    want = min(report.quota, report.eligible)
    if report.selected != want:
        report.problems.append(f"selected {report.selected}, the rules say {want}")
    ranked = sorted((r for r in rows if r["rank"] is not None), key=lambda r: r["rank"])
    first = {"laid_off", "small_business"}

    def key(r: asyncpg.Record) -> tuple[int, int, int]:
        return (0 if r["situation"] in first else 1, -int(r["score"] or 0), int(r["priority"]))

    out_of_order = sum(1 for a, b in itertools.pairwise(ranked) if key(a) > key(b))
    if out_of_order:
        report.problems.append(f"{out_of_order} ranks out of the policy's order")
    people = {t.person.id: t.person for t in takers}
    for registration_id in stored:
        person = people.get(registration_id)
        if person is None:
            continue
        email = str(person.registrant.form["email"]).lower()
        if report.emails.get(email, 0) != 1:
            report.problems.append(f"a joiner received {report.emails.get(email, 0)} emails")
            break
    texts = sorted(report.sms.values())
    if len(texts) != len(stored) or any(n != 1 for n in texts):
        report.problems.append(f"SMS per joiner {dict(collections.Counter(texts))}")


def _per_second(moments: list[float | None]) -> list[int]:
    seconds = [int(m) for m in moments if m is not None]
    if not seconds:
        return []
    counts = [0] * (max(seconds) + 1)
    for s in seconds:
        counts[s] += 1
    return counts


def _mean(values: list[int | None]) -> float:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else 0.0
