"""The keyring's HMAC is HMAC-SHA256, and what it derives does not change with how it is
computed: tokens and NIK look-up keys issued before stay valid."""

from __future__ import annotations

import hashlib
import hmac
import uuid

from hypothesis import given
from hypothesis import strategies as st

from core.keys import Hmac, Keyring


@given(key=st.binary(max_size=150), message=st.binary(max_size=300))
def test_the_prepared_hmac_is_hmac_sha256(key: bytes, message: bytes) -> None:
    assert Hmac(key).digest(message) == hmac.digest(key, message, "sha256")


def test_the_prepared_hmac_is_reusable_and_keyed() -> None:
    prepared = Hmac(b"k" * 32)
    assert prepared.digest(b"a") == prepared.digest(b"a") != prepared.digest(b"b")
    assert Hmac(b"j" * 32).digest(b"a") != prepared.digest(b"a")
    # Keys longer than SHA-256's block are hashed first, as RFC 2104 says.
    assert Hmac(b"x" * 65).digest(b"a") == Hmac(hashlib.sha256(b"x" * 65).digest()).digest(b"a")


def test_what_the_keyring_derives_is_what_it_derived_before() -> None:
    # Figures computed with hmac.digest before the prepared HMAC: an access token handed out,
    # an id derived from an Idempotency-Key and a NIK's look-up key must not change.
    keyring = Keyring.from_secret("a test secret of at least thirty-two characters")
    registration_id = uuid.UUID("0192a6f4-1c2b-7d3e-8f40-123456789abc")
    assert keyring.access_token(registration_id) == "yM22BSum9rVS4XJ8yNrVjvRJeTZcbuEy"
    assert keyring.idempotent_id("k-1") == uuid.UUID("6a867b7e-e95a-83b3-ae54-5192af9192a9")
    assert keyring.nik_hmac("3171011705900001").hex()[:16] == "5784716c249580ee"
    assert keyring.check_access_token(registration_id, keyring.access_token(registration_id))


def test_a_token_of_any_characters_is_refused_not_an_error() -> None:
    keyring = Keyring.from_secret("a test secret of at least thirty-two characters")
    registration_id = uuid.UUID("0192a6f4-1c2b-7d3e-8f40-123456789abc")
    for token in ("caf\u00e9", "caf\udce9", "", "x" * 1000):  # (an escaped byte of a header)
        assert not keyring.check_access_token(registration_id, token)
