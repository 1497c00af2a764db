"""The wave's registrants, as people behave: each synthetic person registers at their moment of
the wave (a ``503`` is sent again after its ``Retry-After``, as the same registration), then, as
their truth says, takes their selfie and uploads it, follows their email link a little while
after the mail arrives and types their SMS code a little while after it arrives, asking for a
new code when it has expired. The little whiles (:class:`Pace`) are drawn per person from the
run's seed; an upload refused as not ready yet is tried again later and later.

One poller per simulator reads every message it received (its feed, ``?after=N``) and hands each
to the person it is for, so a thousand people waiting for their SMS cost one request a quarter
second, not a thousand.
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from demo.client import ConnectionLost, Pool
from simulators.population import Registrant
from simulators.sms import normalise_number

POLL_S = 0.25
RETRY_S = 0.2  # a resend asked too early, a lost connection: again after this
MAX_BACKOFF_S = 8.0  # an upload not ready yet: again after 1, 2, 4, then 8 s
FORM_TIMEOUT_S = 60.0  # a form's answer, the wait for a free connection included
GIVE_UP_S = 600.0  # a person waits at most this long for anything (a demo must end)
_CODE_RE = re.compile(r"\b(\d{6})\b")
_EMAIL_PATH = "/v1/verify/email"


def schedule(count: int, opening_rate: float, opening_share: float, tail_s: float) -> list[float]:
    """Each person's moment in the wave, in seconds from its opening: the first
    ``opening_share`` of them at ``opening_rate`` per second (the minute the site opened), the
    rest over ``tail_s`` seconds at a rate falling away exponentially (as news spreads and the
    first rush is served)."""
    opening = min(count, round(count * opening_share))
    moments = [i / opening_rate for i in range(opening)]
    rest = count - opening
    if rest:
        start, tau = opening / opening_rate, tail_s / 3
        spread = 1 - math.exp(-tail_s / tau)
        moments += [start - tau * math.log(1 - (k + 1) / rest * spread) for k in range(rest)]
    return moments


class Inbox:
    """The messages of one simulator's feed, by recipient; a person waits for their next one."""

    def __init__(self, url: str, recipient: Callable[[dict[str, Any]], str]) -> None:
        self.url = url
        self._recipient = recipient
        self._messages: collections.defaultdict[str, list[dict[str, Any]]] = (
            collections.defaultdict(list)
        )
        self._arrived = asyncio.Condition()
        self._last = 0

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Poll the feed until cancelled."""
        while True:
            try:
                async with session.get(self.url, params={"after": str(self._last)}) as response:
                    body = await response.json() if response.status == 200 else {}
            except (aiohttp.ClientError, TimeoutError, ValueError):
                body = {}
            messages = body.get("messages", [])
            if messages:
                for message in messages:
                    self._messages[self._recipient(message)].append(message)
                self._last = int(body["last"])
                async with self._arrived:
                    self._arrived.notify_all()
            if len(messages) < 1000:
                await asyncio.sleep(POLL_S)

    async def message(self, recipient: str, number: int) -> dict[str, Any]:
        """The ``number``-th message (from 0) for ``recipient``, once it has arrived."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self._messages[recipient]) > number)
        return self._messages[recipient][number]


def mail_inbox(base_url: str) -> Inbox:
    return Inbox(f"{base_url}/_sim/mail", lambda m: str(m["to"]).lower())


def sms_inbox(base_url: str) -> Inbox:
    return Inbox(f"{base_url}/_sim/messages", lambda m: str(m["to"]))


@dataclass(frozen=True)
class Pace:
    """How long a person takes, in seconds: to take and send their selfie after the
    registration is accepted, to open the mail and the SMS after they arrive."""

    selfie_s: float = 0.0
    email_s: float = 0.0
    sms_s: float = 0.0

    @classmethod
    def drawn(cls, seed: int, index: int) -> Pace:
        rng = random.Random(f"demo-pace:{seed}:{index}")  # noqa: S311 (not a secret)
        return cls(rng.uniform(3.0, 12.0), rng.uniform(1.0, 15.0), rng.uniform(1.0, 10.0))


@dataclass
class Person:
    """One registrant's wave: what they sent and what they were told."""

    index: int
    registrant: Registrant
    at_s: float  # their moment in the wave
    pace: Pace = Pace()
    selfie: bytes | None = None
    status: int | None = None  # the final answer to the registration
    id: uuid.UUID | None = None
    token: str = ""
    attempts: int = 0
    answered_at_s: float | None = None  # from the wave's opening, the final answer
    errors: list[dict[str, Any]] = field(default_factory=list)
    photo: str = ""  # the last answer to the upload, as a label ("" when there was none)
    email: str = ""
    otp: str = ""
    stored: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def photo_accepted(self) -> bool:
        return self.photo == "photo uploaded: 202"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Wave:
    """Everyone's registration and what follows it, against one edge."""

    def __init__(
        self,
        base_url: str,
        people: Sequence[Person],
        mail: Inbox,
        sms: Inbox,
        run_key: str,
        contact: bool = True,
    ) -> None:
        self.base_url = base_url
        self.people = people
        self.mail, self.sms = mail, sms
        self.run_key = run_key
        self.contact = contact
        self.opened_at = 0.0
        self.sent = 0
        self.shed = 0

    def elapsed_s(self) -> float:
        return time.monotonic() - self.opened_at

    async def run(self, session: aiohttp.ClientSession, forms: Pool) -> None:
        """Everyone's actions: the registration forms through ``forms`` (lean, and connections
        of their own: a form never waits for someone's photo upload to free one), the rest
        through ``session``."""
        self.opened_at = time.monotonic()
        deadline = self.opened_at + max(p.at_s for p in self.people) + GIVE_UP_S
        async with asyncio.timeout_at(deadline):
            await asyncio.gather(*(self._live(session, forms, p) for p in self.people))

    async def _live(self, session: aiohttp.ClientSession, forms: Pool, person: Person) -> None:
        try:
            await asyncio.sleep(max(0.0, person.at_s - self.elapsed_s()))
            if person.registrant.repeats is not None:
                # A repeat comes after its original is stored: otherwise the repeat could be
                # stored first and the original rejected as the duplicate.
                await self.people[person.registrant.repeats].stored.wait()
            await self._register(forms, person)
            if person.status == 202 and person.registrant.kind == "valid":
                if person.selfie is not None:
                    await self._upload(session, person)
                person.stored.set()
                if self.contact:
                    await asyncio.gather(
                        self._follow_link(session, person), self._type_code(session, person)
                    )
        finally:
            person.stored.set()

    async def _register(self, forms: Pool, person: Person) -> None:
        body = orjson.dumps(person.registrant.form)
        key = f"demo-{self.run_key}-{person.index}".encode()
        head = forms.request_head("POST", "/v1/registrations")
        request = b"%bContent-Type: application/json\r\nContent-Length: %d\r\n" % (head, len(body))
        request += b"Idempotency-Key: %b\r\n\r\n%b" % (key, body)
        while True:
            person.attempts += 1
            self.sent += 1
            try:
                answer = await forms.request(request, FORM_TIMEOUT_S)
                status, answered = answer.status, orjson.loads(answer.body)
            except (ConnectionLost, OSError, TimeoutError, orjson.JSONDecodeError):
                await asyncio.sleep(RETRY_S)  # as a browser's "try again"
                continue
            if status == 503:
                self.shed += 1
                await asyncio.sleep(float(answer.retry_after or 1))
                continue
            break
        person.status, person.answered_at_s = status, self.elapsed_s()
        person.errors = list(answered.get("errors", []))
        if status == 202:
            person.id, person.token = uuid.UUID(answered["id"]), answered["access_token"]

    async def _upload(self, session: aiohttp.ClientSession, person: Person) -> None:
        """PUT the selfie as soon as the registration takes one (until it is stored and its
        checks started, the answer is ``409 not-ready``)."""
        headers = {**person.auth, "Content-Type": "image/jpeg"}
        url = f"{self.base_url}/v1/registrations/{person.id}/photo"
        await asyncio.sleep(person.pace.selfie_s)
        backoff_s = 1.0
        while True:
            status, slug, retry_after = await _send(session, "PUT", url, headers, person.selfie)
            if status in (None, 503) or slug == "not-ready":
                await asyncio.sleep(float(retry_after or backoff_s))
                backoff_s = min(2 * backoff_s, MAX_BACKOFF_S)
                continue
            person.photo = f"photo uploaded: {status}" + (f" {slug}" if slug else "")
            return

    async def _follow_link(self, session: aiohttp.ClientSession, person: Person) -> None:
        if not person.registrant.truth.clicks_email_link:
            return
        mail = await self.mail.message(person.registrant.form["email"].lower(), 0)
        await asyncio.sleep(person.pace.email_s)
        link = next(link for link in mail["links"] if _EMAIL_PATH in link)
        while True:
            # The link opens a page; its button confirms with a POST to the same address.
            status, _, _ = await _send(session, "POST", link, {}, None)
            if status is not None and status != 503:
                person.email = f"email link followed: {status}"
                return
            await asyncio.sleep(RETRY_S)

    async def _type_code(self, session: aiohttp.ClientSession, person: Person) -> None:
        """Type the code when it arrives; an expired one is replaced by a new one (asked for
        with the resend route), which is typed when it arrives."""
        if not person.registrant.truth.enters_otp:
            return
        phone = normalise_number(person.registrant.form["phone"]) or ""
        url = f"{self.base_url}/v1/registrations/{person.id}/otp"
        received = 0
        expired = 0
        while True:
            sms = await self.sms.message(phone, received)
            received += 1
            await asyncio.sleep(person.pace.sms_s)
            match = _CODE_RE.search(sms["text"])
            if match is None:
                continue
            status, slug, _ = await _send(
                session, "POST", url, person.auth, None, {"code": match.group(1)}
            )
            if status in (None, 503):
                received -= 1  # the same message again
                await asyncio.sleep(RETRY_S)
                continue
            if slug == "code-expired":
                expired += 1
                await self._resend(session, person)
                continue
            suffix = f" (after {expired} expired)" if expired else ""
            person.otp = f"OTP entered: {status}" + (f" {slug}" if slug else "") + suffix
            return

    async def _resend(self, session: aiohttp.ClientSession, person: Person) -> None:
        url = f"{self.base_url}/v1/registrations/{person.id}/otp/resend"
        while True:
            status, slug, retry_after = await _send(session, "POST", url, person.auth, None)
            if status == 202 or slug in ("already-verified", "registration-closed"):
                return
            await asyncio.sleep(float(retry_after or RETRY_S))


async def _send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str],
    data: bytes | None,
    json: Any = None,
) -> tuple[int | None, str, str | None]:
    """(status, the problem's slug or "", Retry-After); status None when the request failed."""
    try:
        async with session.request(method, url, headers=headers, data=data, json=json) as r:
            body = await r.json(content_type=None) if r.status >= 400 else {}
            slug = str(body.get("type", "")).rsplit("/", 1)[-1] if isinstance(body, dict) else ""
            return r.status, slug, r.headers.get("Retry-After")
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None, "", None


def accepted_per_second(people: Sequence[Person], seconds: int) -> list[int]:
    """How many registrations were answered ``202`` in each of the wave's first seconds."""
    counts = [0] * seconds
    for p in people:
        if p.status == 202 and p.answered_at_s is not None and p.answered_at_s < seconds:
            counts[int(p.answered_at_s)] += 1
    return counts
