"""The keyring's HMAC is HMAC-SHA256, and what it derives does not change with how it is
computed: tokens and NIK look-up keys issued before stay valid."""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.keys import (
    WRAPPED_KEY_BYTES,
    DecryptionError,
    Hmac,
    Keyring,
    key_version,
    open_photo,
    seal_photo,
)


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


OLD = "the first master secret, thirty-two characters or more"
NEW = "the second master secret, after a rotation, 32+ characters"


def test_a_rotation_encrypts_under_the_new_version_and_reads_both() -> None:
    before = Keyring.from_secret(OLD)
    during = Keyring.from_secrets({1: OLD, 2: NEW})
    context = uuid.uuid4().bytes
    old = before.encrypt(b"3171011705900001", context)
    new = during.encrypt(b"3171011705900002", context)
    assert (key_version(old), key_version(new), during.current) == (1, 2, 2)
    assert during.decrypt(old, context) == b"3171011705900001"
    assert during.decrypt(new, context) == b"3171011705900002"
    with pytest.raises(DecryptionError, match="key version"):
        before.decrypt(new, context)  # a process without the new key cannot read it
    sealed = during.open_message(before.seal_message(b"batch", b"ctx"), b"ctx")
    assert sealed == b"batch"
    assert key_version(during.seal_message(b"batch", b"ctx")) == 2


def test_reencrypt_moves_a_ciphertext_to_the_current_version_once() -> None:
    during = Keyring.from_secrets({1: OLD, 2: NEW})
    context = uuid.uuid4().bytes
    old = Keyring.from_secret(OLD).encrypt(b"personal", context)
    again = during.reencrypt(old, context)
    assert again is not None
    assert key_version(again) == 2
    assert during.decrypt(again, context) == b"personal"
    assert during.reencrypt(again, context) is None  # already current: nothing to do
    with pytest.raises(DecryptionError):
        during.reencrypt(old, uuid.uuid4().bytes)  # still bound to its row


def test_the_look_up_and_signing_keys_do_not_change_with_a_rotation() -> None:
    before = Keyring.from_secret(OLD)
    after = Keyring.from_secrets({1: OLD, 2: NEW, 3: NEW + "3"})
    registration_id = uuid.uuid4()
    assert after.nik_hmac("3171011705900001") == before.nik_hmac("3171011705900001")
    assert after.photo_name(b"a selfie") == before.photo_name(b"a selfie")
    assert after.access_token(registration_id) == before.access_token(registration_id)
    assert after.idempotent_id("k-1") == before.idempotent_id("k-1")
    code = before.contact_code_hmac("phone", registration_id, 1, b"123456")
    assert after.contact_code_hmac("phone", registration_id, 1, b"123456") == code
    link = before.email_link_token(registration_id, b"s" * 16, 2_000_000_000)
    assert after.open_email_link_token(link) is not None


def test_the_current_version_can_be_held_back_while_a_new_key_is_rolled_out() -> None:
    """Step one of a rotation: every process lists the new key but still writes the old one,
    so no process meets a ciphertext it cannot read; step two makes it current."""
    listed = Keyring.from_secrets({1: OLD, 2: NEW}, current=1)
    assert key_version(listed.encrypt(b"x", b"c")) == 1
    assert listed.versions == (1, 2)
    with pytest.raises(ValueError, match="current version 3"):
        Keyring.from_secrets({1: OLD, 2: NEW}, current=3)
    with pytest.raises(ValueError, match="version 1 is required"):
        Keyring.from_secrets({2: NEW})


def test_a_photo_key_is_wrapped_under_the_current_version_and_bound_to_its_name() -> None:
    during = Keyring.from_secrets({1: OLD, 2: NEW})
    name = during.photo_name(b"a selfie")
    assert name != hashlib.sha256(b"a selfie").hexdigest()
    key, wrapped = Keyring.from_secret(OLD).new_photo_key(name)
    assert len(wrapped) == WRAPPED_KEY_BYTES
    assert key_version(wrapped) == 1
    assert during.unwrap_photo_key(wrapped, name) == key
    rewrapped = during.rewrap_photo_key(wrapped, name)
    assert rewrapped is not None
    assert key_version(rewrapped) == 2
    assert during.unwrap_photo_key(rewrapped, name) == key
    assert during.rewrap_photo_key(rewrapped, name) is None
    with pytest.raises(DecryptionError):
        during.unwrap_photo_key(wrapped, during.photo_name(b"another selfie"))
    sealed = seal_photo(key, b"the photo's bytes", name)
    assert b"the photo's bytes" not in sealed
    assert open_photo(key, sealed, name) == b"the photo's bytes"
    with pytest.raises(DecryptionError):
        open_photo(key, sealed, during.photo_name(b"another selfie"))
    with pytest.raises(DecryptionError):
        open_photo(os.urandom(32), sealed, name)
