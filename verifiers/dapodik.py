"""Dapodik (Ministry of Education): registrants currently in school or university are not
eligible."""

from __future__ import annotations

from typing import ClassVar

import aiohttp

from core.verification import Check, Passed, Reject, Retry, Subject, Task
from verifiers.ministry import post_json


class DapodikVerifier:
    check: ClassVar[Check] = Check.DAPODIK

    def __init__(self, session: aiohttp.ClientSession, base_url: str, timeout_s: float) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + "/v1/students/lookup"
        self._timeout_s = timeout_s

    async def verify(self, task: Task, subject: Subject) -> Passed:
        _, body = await post_json(
            self._session, self._url, {"nik": subject.nik}, timeout_s=self._timeout_s
        )
        enrolled = body.get("enrolled") if isinstance(body, dict) else None
        if enrolled is True:
            raise Reject("in_education")
        if enrolled is False:
            return Passed()
        raise Retry("unexpected_answer")
