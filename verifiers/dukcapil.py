"""Dukcapil (Ministry of Home Affairs population registry): the NIK exists and matches the
registrant's name, place and date of birth. A match starts the Dapodik and DTKS checks."""

from __future__ import annotations

from typing import ClassVar

import aiohttp

from core.verification import Check, Passed, Reject, Retry, Subject, Task
from verifiers.ministry import post_json


class DukcapilVerifier:
    check: ClassVar[Check] = Check.DUKCAPIL

    def __init__(self, session: aiohttp.ClientSession, base_url: str, timeout_s: float) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + "/v1/nik/verify"
        self._timeout_s = timeout_s

    async def verify(self, task: Task, subject: Subject) -> Passed:
        status, body = await post_json(
            self._session,
            self._url,
            {
                "nik": subject.nik,
                "full_name": subject.full_name,
                "birth_place": subject.birth_place,
                "birth_date": subject.birth_date.isoformat(),
            },
            timeout_s=self._timeout_s,
            expected=frozenset({200, 404}),
        )
        result = body.get("result") if isinstance(body, dict) else None
        if status == 404 or result == "not_found":
            raise Reject("nik_not_found")
        if result == "mismatch":
            raise Reject("nik_data_mismatch")
        if result == "match":
            return Passed(then=(Check.DAPODIK, Check.DTKS))
        raise Retry("unexpected_answer")
