"""The selection at a wave's close: who is eligible, in what order, and who is selected.

The ranking is a pure function of the joiners and the seed (:func:`rank`), so that a selection
can be recomputed at any later time and compared with what was recorded (``intake waves
selection NAME --check``). :func:`load_joiners` reads the input as it was when the selection
ran: the benefits granted before it (not its own, nor a later wave's), the age on the wave's
closing day. The worker that runs the selection is ``workers/selection.py``; the statements that
write it are here, with the reading, so that both sides use one definition.

The order, for the eligible joiners:

1. a situation in ``policy.first`` (laid off, small business) before every other;
2. the score of the registrant's latest scored test attempt, descending (none: after all);
3. with ``dtks: lower``, registrants not on DTKS before DTKS recipients at an equal score;
4. a seeded draw: HMAC-SHA256(seed, registration id bytes), ascending. The 32-byte seed comes
   from :mod:`secrets` and is recorded, so nobody can choose the draw and anybody can check it.

No personal data leaves this module: the birth date is decrypted to compute an age and dropped.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import orjson

from core.keys import Keyring
from core.waves import WIB, DtksRank, Policy, Wave

SEED_BYTES = 32
DTKS_PRIORITY = 1  # registrations.priority of a DTKS recipient


class Outcome(enum.StrEnum):
    SELECTED = "selected"
    NOT_SELECTED = "not_selected"
    INELIGIBLE = "ineligible"


class Ineligible(enum.StrEnum):
    """Why a joiner was not ranked (kept in memory and counted, never stored per person)."""

    NOT_VERIFIED = "not_verified"
    AGE = "age"
    DTKS = "dtks"
    BENEFIT = "benefit_received"


@dataclass(frozen=True, slots=True)
class Joiner:
    """One join of the wave as the selection sees it: no personal data."""

    registration_id: uuid.UUID
    situation: str
    score: int | None  # the latest scored test attempt; None: no scored attempt
    dtks: bool  # a DTKS recipient (registrations.priority = 1)
    ineligible: Ineligible | None


@dataclass(frozen=True, slots=True)
class Selection:
    """The outcome of every join, the rank of every eligible one, and the input's digest."""

    outcomes: dict[uuid.UUID, Outcome]
    ranks: dict[uuid.UUID, int]
    digest: bytes

    @property
    def selected(self) -> list[uuid.UUID]:
        return [i for i, o in self.outcomes.items() if o is Outcome.SELECTED]

    @property
    def eligible(self) -> int:
        return len(self.ranks)


def draw(seed: bytes, registration_id: uuid.UUID) -> bytes:
    """The tie-break of the last resort: HMAC-SHA256 of the id's 16 bytes under the seed."""
    return hmac.new(seed, registration_id.bytes, hashlib.sha256).digest()


def sort_key(policy: Policy, seed: bytes, joiner: Joiner) -> tuple[int, int, int, bytes]:
    """The ranking key of an eligible joiner: smaller ranks first."""
    first = 0 if joiner.situation in policy.first else 1
    score = -1 if joiner.score is None else joiner.score
    dtks_last = 1 if joiner.dtks and policy.dtks is DtksRank.LOWER else 0
    return (first, -score, dtks_last, draw(seed, joiner.registration_id))


def digest(joiners: Sequence[Joiner]) -> bytes:
    """SHA-256 of the ranked input (every join, by id: situation, score, DTKS, eligibility), so
    that a recomputation shows whether it saw the same input."""
    lines = [
        [str(j.registration_id), j.situation, j.score, j.dtks, j.ineligible]
        for j in sorted(joiners, key=lambda j: j.registration_id.bytes)
    ]
    return hashlib.sha256(orjson.dumps(lines)).digest()


def rank(policy: Policy, quota: int, seed: bytes, joiners: Sequence[Joiner]) -> Selection:
    """The selection: the eligible ranked by :func:`sort_key`, the first ``quota`` selected."""
    eligible = sorted(
        (j for j in joiners if j.ineligible is None), key=lambda j: sort_key(policy, seed, j)
    )
    outcomes = {j.registration_id: Outcome.INELIGIBLE for j in joiners}
    ranks = {}
    for position, joiner in enumerate(eligible, start=1):
        ranks[joiner.registration_id] = position
        chosen = position <= quota
        outcomes[joiner.registration_id] = Outcome.SELECTED if chosen else Outcome.NOT_SELECTED
    return Selection(outcomes, ranks, digest(joiners))


def age_on(birth_date: dt.date, day: dt.date) -> int:
    """Whole years of age on ``day`` (one born on 29 February turns a year older on 1 March)."""
    years = day.year - birth_date.year
    return years - 1 if (day.month, day.day) < (birth_date.month, birth_date.day) else years


def closing_day(wave: Wave) -> dt.date:
    """The day (in WIB) the wave closed: at its closing time, or earlier by an operator."""
    closed = wave.closes_at if wave.closed_at is None else min(wave.closed_at, wave.closes_at)
    return closed.astimezone(WIB).date()


# Every join with what decides its eligibility and rank. The score: the latest scored attempt
# that counts for this wave or an earlier one. The benefit: granted before ``$2`` (the
# selection's start), so that a recomputation does not count this wave's own, or a later one's.
_JOINERS_SQL = """
SELECT j.registration_id, j.situation, r.status, r.priority, r.personal_enc,
       (b.nik_hmac IS NOT NULL) AS benefit,
       (SELECT t.score FROM test_attempts t JOIN waves tw ON tw.id = t.wave_id
        WHERE t.registration_id = j.registration_id AND t.score IS NOT NULL
          AND tw.opens_at <= w.opens_at
        ORDER BY t.scored_at DESC, t.attempt DESC LIMIT 1) AS score
FROM wave_joins j
JOIN waves w ON w.id = j.wave_id
JOIN registrations r ON r.id = j.registration_id
LEFT JOIN benefit_niks b ON b.nik_hmac = r.nik_hmac AND b.granted_at < $2
WHERE j.wave_id = $1
"""


async def load_joiners(
    connection: asyncpg.Connection, keyring: Keyring, wave: Wave, before: dt.datetime
) -> list[Joiner]:
    """Every join of ``wave`` with its eligibility under the wave's policy; benefits count if
    granted before ``before``."""
    policy, day = wave.policy, closing_day(wave)
    joiners = []
    for row in await connection.fetch(_JOINERS_SQL, wave.id, before):
        registration_id: uuid.UUID = row["registration_id"]
        dtks = row["priority"] == DTKS_PRIORITY
        reason: Ineligible | None = None
        if row["status"] != "verified":
            reason = Ineligible.NOT_VERIFIED
        elif row["benefit"]:
            reason = Ineligible.BENEFIT
        elif dtks and policy.dtks is DtksRank.EXCLUDED:
            reason = Ineligible.DTKS
        elif row["personal_enc"] is None:  # erased (core.person withdraws the join: a race)
            reason = Ineligible.NOT_VERIFIED
        else:
            personal = orjson.loads(keyring.decrypt(row["personal_enc"], registration_id.bytes))
            age = age_on(dt.date.fromisoformat(personal["birth_date"]), day)
            if age < policy.min_age or (policy.max_age is not None and age > policy.max_age):
                reason = Ineligible.AGE
        joiners.append(Joiner(registration_id, row["situation"], row["score"], dtks, reason))
    return joiners


@dataclass(frozen=True, slots=True)
class Recorded:
    """A wave's selection as recorded."""

    seed: bytes
    started_at: dt.datetime
    finished_at: dt.datetime
    joined: int
    eligible: int
    selected: int
    digest: bytes
    outcomes: dict[uuid.UUID, tuple[Outcome | None, int | None]]


async def recorded(connection: asyncpg.Connection, wave: Wave) -> Recorded | None:
    """The recorded selection of ``wave`` with every join's outcome and rank (None: none)."""
    row = await connection.fetchrow("SELECT * FROM wave_selections WHERE wave_id = $1", wave.id)
    if row is None:
        return None
    joins = await connection.fetch(
        "SELECT registration_id, outcome, rank FROM wave_joins WHERE wave_id = $1", wave.id
    )
    return Recorded(
        bytes(row["seed"]),
        row["started_at"],
        row["finished_at"],
        row["joined"],
        row["eligible"],
        row["selected"],
        bytes(row["digest"]),
        {
            j["registration_id"]: (Outcome(j["outcome"]) if j["outcome"] else None, j["rank"])
            for j in joins
        },
    )


@dataclass(frozen=True, slots=True)
class Recomputed:
    """A recomputation compared with the record."""

    same_input: bool
    same_selection: bool
    differing: int  # joins whose outcome or rank differ

    def to_obj(self) -> dict[str, object]:
        return {
            "same_input": self.same_input,
            "same_selection": self.same_selection,
            "differing_joins": self.differing,
        }


async def check(connection: asyncpg.Connection, keyring: Keyring, wave: Wave) -> Recomputed | None:
    """Recompute ``wave``'s selection from its recorded seed and compare (None: no record)."""
    record = await recorded(connection, wave)
    if record is None:
        return None
    joiners = await load_joiners(connection, keyring, wave, record.started_at)
    again = rank(wave.policy, wave.quota, record.seed, joiners)
    recomputed: dict[uuid.UUID, tuple[Outcome | None, int | None]] = {
        i: (o, again.ranks.get(i)) for i, o in again.outcomes.items()
    }
    keys = set(recomputed) | set(record.outcomes)
    differing = sum(1 for k in keys if recomputed.get(k) != record.outcomes.get(k))
    return Recomputed(again.digest == record.digest, differing == 0, differing)
