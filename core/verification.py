"""The verification contract: checks, tasks, outcomes, and the verifier protocol.

A *check* is one verification step of a registration. Each check has its own queue (its *lane*)
and its own verifier in ``verifiers/``. A verifier only verifies: it receives the task and the
registrant's data and returns :class:`Passed`, or raises :class:`Retry` (a transient failure:
try again later), :class:`Reject` (the registration fails this check) or :class:`Review` (a
person must decide). The worker runtime maps
outcomes to database state, acknowledgements, delayed retries and dead letters in one place
(``workers/lane.py``); limits, breakers and metrics wrap the verifier from outside.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import orjson

TASK_SCHEMA_VERSION = 1


class Check(enum.StrEnum):
    """The verification steps, each with its own lane (queue) of the same name."""

    EMAIL = "email"
    PHONE = "phone"
    DUKCAPIL = "dukcapil"
    DAPODIK = "dapodik"
    DTKS = "dtks"
    PHOTO = "photo"


# Started when a registration is stored; Dapodik and DTKS follow a Dukcapil match (no point
# asking two slow ministries about a NIK that does not exist); the photo check starts when the
# photo is uploaded.
INITIAL_CHECKS = (Check.EMAIL, Check.PHONE, Check.DUKCAPIL)
REQUIRED_CHECKS = frozenset(Check)
# The worker processes: the persist worker, the outbox dispatcher, one lane per check, the
# participation worker (test answers and wave joins, workers/participation.py), the selection at
# a wave's close and the sender of its outcome notifications.
WORKER_KINDS = [
    "persist",
    "dispatch",
    *(check.value for check in Check),
    "participation",
    "waves",
    "notify",
]


class TaskError(ValueError):
    """A task message does not follow the contract."""


@dataclass(frozen=True, slots=True)
class Task:
    """One check of one registration; carries no personal data (the worker loads it)."""

    registration_id: uuid.UUID
    check: Check
    attempt: int = 1

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "v": TASK_SCHEMA_VERSION,
                "registration_id": str(self.registration_id),
                "check": self.check.value,
                "attempt": self.attempt,
            }
        )

    @classmethod
    def from_json(cls, body: bytes) -> Task:
        try:
            obj = orjson.loads(body)
            if obj["v"] != TASK_SCHEMA_VERSION:
                raise TaskError("unsupported task schema version")
            attempt = obj["attempt"]
            if not isinstance(attempt, int) or attempt < 1:
                raise TaskError("bad attempt number")
            return cls(uuid.UUID(obj["registration_id"]), Check(obj["check"]), attempt)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, TaskError):
                raise
            raise TaskError(f"malformed task ({type(exc).__name__})") from None


@dataclass(frozen=True, slots=True)
class Subject:
    """The registrant's data, decrypted by the runtime for the verifier. Personal data: never
    logged, never put in a message or a metric."""

    registration_id: uuid.UUID
    nik: str
    full_name: str
    birth_place: str
    birth_date: dt.date
    email: str
    phone: str


@dataclass(frozen=True, slots=True)
class Passed:
    """The check passed. ``then`` are checks to start next; ``priority`` lowers the
    registration's priority (DTKS recipients); ``waiting`` means the step now waits for the
    registrant (a link sent, a code sent) rather than being finished."""

    then: tuple[Check, ...] = ()
    priority: int | None = None
    waiting: bool = False
    facts: dict[str, Any] = field(default_factory=dict)


class Failure(enum.Enum):
    """What a transient failure says about the service that was called: the lane's flow
    control (limit and breaker) reads this, never the wording of a reason."""

    OVERLOAD = "overload"  # it said so (429, 503, SMTP 421) or did not answer in time
    UNREACHABLE = "unreachable"  # no connection, or the connection was lost before an answer
    BROKEN = "broken"  # it answered with a server error (5xx, an SMTP 4xx, an unreadable body)
    LOCAL = "local"  # nothing about the service: our side, or data it should not have sent


class Retry(Exception):
    """A transient failure (timeout, overload, outage): try again after a backoff.

    ``reason`` is a stable code for logs and metrics; ``failure`` is what it says about the
    service; ``not_done`` is True when the call certainly did nothing there (the service
    answered with a refusal, or no connection was made), so that repeating a call that must
    happen at most once (a message to a person) is safe."""

    def __init__(
        self,
        reason: str,
        after_s: float | None = None,
        *,
        failure: Failure = Failure.LOCAL,
        not_done: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.after_s = after_s
        self.failure = failure
        self.not_done = not_done


class Reject(Exception):
    """The registration fails this check, for ``reason`` (a stable, machine-readable code)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Review(Exception):
    """A person must look at the registration, for ``reason`` (a stable code): the machine
    cannot decide, e.g. a selfie that another registration uploaded too."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Verifier(Protocol):
    """One verification step. Implementations live one per file in ``verifiers/``."""

    check: ClassVar[Check]

    async def verify(self, task: Task, subject: Subject) -> Passed:
        """Return :class:`Passed` or raise :class:`Retry`, :class:`Reject` or :class:`Review`.
        Must be safe to call again for the same task (deliveries are at least once). A verifier
        holding resources (a process pool) may also have ``async def close()``: the lane calls
        it once it has stopped."""
        ...
