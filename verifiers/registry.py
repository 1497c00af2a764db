"""The one list of verifiers: a new verification step is a new file plus one line here."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import asyncpg

from core.keys import Keyring
from core.settings import Settings
from core.verification import Check, Verifier
from verifiers.dapodik import DapodikVerifier
from verifiers.dtks import DtksVerifier
from verifiers.dukcapil import DukcapilVerifier
from verifiers.email import EmailVerifier
from verifiers.phone import PhoneVerifier
from verifiers.photo import PhotoVerifier

# A verifier gets the settings, the lane's HTTP session and its database pool (the email and
# phone steps record what they send, see verifiers.contact).
Factory = Callable[[Settings, aiohttp.ClientSession, asyncpg.Pool], Verifier]

VERIFIERS: dict[Check, Factory] = {
    Check.EMAIL: lambda s, http, pool: EmailVerifier(s, Keyring.from_settings(s), pool),
    Check.PHONE: lambda s, http, pool: PhoneVerifier(s, Keyring.from_settings(s), pool, http),
    Check.DUKCAPIL: lambda s, http, pool: DukcapilVerifier(
        http, s.dukcapil_url, s.ministry_timeout_s
    ),
    Check.DAPODIK: lambda s, http, pool: DapodikVerifier(http, s.dapodik_url, s.ministry_timeout_s),
    Check.DTKS: lambda s, http, pool: DtksVerifier(http, s.dtks_url, s.ministry_timeout_s),
    Check.PHOTO: lambda s, http, pool: PhotoVerifier(s, Keyring.from_settings(s), pool),
}


def build(
    check: Check, settings: Settings, http: aiohttp.ClientSession, pool: asyncpg.Pool
) -> Verifier:
    """The verifier of ``check``; KeyError for a check that has none yet."""
    return VERIFIERS[check](settings, http, pool)
