"""The one list of verifiers: a new verification step is a new file plus one line here."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from core.settings import Settings
from core.verification import Check, Verifier
from verifiers.dapodik import DapodikVerifier
from verifiers.dtks import DtksVerifier
from verifiers.dukcapil import DukcapilVerifier

Factory = Callable[[Settings, aiohttp.ClientSession], Verifier]

VERIFIERS: dict[Check, Factory] = {
    Check.DUKCAPIL: lambda s, http: DukcapilVerifier(http, s.dukcapil_url, s.ministry_timeout_s),
    Check.DAPODIK: lambda s, http: DapodikVerifier(http, s.dapodik_url, s.ministry_timeout_s),
    Check.DTKS: lambda s, http: DtksVerifier(http, s.dtks_url, s.ministry_timeout_s),
}


def build(check: Check, settings: Settings, http: aiohttp.ClientSession) -> Verifier:
    """The verifier of ``check``; KeyError for a check that has none yet."""
    return VERIFIERS[check](settings, http)
