"""DTKS (Ministry of Social Affairs welfare registry): recipients of social assistance are not
excluded but get a lower priority, so that the benefit spreads wider."""

from __future__ import annotations

from typing import ClassVar

import aiohttp

from core.verification import Check, Passed, Retry, Subject, Task
from verifiers.ministry import post_json

WELFARE_PRIORITY = 1  # 0 comes first


class DtksVerifier:
    check: ClassVar[Check] = Check.DTKS

    def __init__(self, session: aiohttp.ClientSession, base_url: str, timeout_s: float) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + "/v1/recipients/lookup"
        self._timeout_s = timeout_s

    async def verify(self, task: Task, subject: Subject) -> Passed:
        _, body = await post_json(
            self._session, self._url, {"nik": subject.nik}, timeout_s=self._timeout_s
        )
        recipient = body.get("recipient") if isinstance(body, dict) else None
        if recipient is True:
            return Passed(priority=WELFARE_PRIORITY)
        if recipient is False:
            return Passed(priority=0)
        raise Retry("unexpected_answer")
