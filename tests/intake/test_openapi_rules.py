"""The registration's patterns in the OpenAPI document are the validation's rules: what a
pattern admits the validation accepts, and what the validation accepts the pattern admits (for
the values a client sends), so that a generator working from the document (Schemathesis,
tests/intake/test_fuzz.py) makes valid registrations and a checker can hold the edge to it."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import intake.validation as validation
from tests.support.people import person

DOCUMENT = json.loads(
    (Path(validation.__file__).with_name("openapi.json")).read_text(encoding="utf-8")
)
FIELDS: dict[str, Any] = DOCUMENT["components"]["schemas"]["Registration"]["properties"]
TODAY = dt.date(2026, 12, 6)


def _pattern(field: str) -> str:
    pattern: str = FIELDS[field]["pattern"]
    return pattern


def _matches(field: str, value: str) -> bool:
    return re.search(_pattern(field), value) is not None  # as JSON Schema reads a pattern


def _admitted(field: str) -> st.SearchStrategy[str]:
    return st.from_regex(_pattern(field))


@settings(max_examples=300)
@given(_admitted("nik"))
def test_a_nik_the_pattern_admits_is_valid(nik: str) -> None:
    assert validation._nik(nik) == nik.strip()


@settings(max_examples=300)
@given(_admitted("phone"))
def test_a_phone_the_pattern_admits_is_valid(phone: str) -> None:
    assert validation._phone(phone).startswith("+628")


@settings(max_examples=300)
@given(_admitted("email").filter(lambda e: len(e) <= FIELDS["email"]["maxLength"]))
def test_an_email_the_pattern_admits_is_valid(email: str) -> None:
    assert "@" in validation._email(email)


@settings(max_examples=300)
@given(_admitted("birth_date"))
def test_a_date_the_pattern_admits_has_the_validations_form(text: str) -> None:
    # (the pattern leaves impossible days to "format": "date", and the range to the description)
    try:
        born = dt.date.fromisoformat(text.strip())
    except ValueError:
        return
    assert born.year >= 1900
    if born.year <= TODAY.year - 19:
        assert validation._birth_date(text, TODAY) == born


@pytest.mark.parametrize("index", range(200))
def test_what_the_validation_accepts_the_patterns_admit(index: int) -> None:
    form = person(index, seed=41)
    for field in ("nik", "phone", "email", "birth_date", "full_name", "birth_place"):
        assert _matches(field, form[field]), field
    # The separators a phone may be written with, and whitespace around any value.
    assert _matches("phone", " 0812-3456 (7890) ")
    assert _matches("nik", f" {form['nik']}\t")


def test_what_the_nik_pattern_refuses_the_validation_refuses() -> None:
    for nik in (
        "2071014508900001",  # province 20 does not exist
        "3100014508900001",  # regency 00
        "3171004508900001",  # district 00
        "3171013002900001",  # 30 February
        "3171017202900001",  # a woman's 32 February
        "3171014508900000",  # serial 0000
        "317101450890001",  # 15 digits
    ):
        assert not _matches("nik", nik), nik
        with pytest.raises(validation._Invalid):
            validation._nik(nik)


@settings(max_examples=500)
@given(_admitted("full_name").filter(lambda n: len(n) <= FIELDS["full_name"]["maxLength"]))
def test_a_name_the_pattern_admits_is_valid(name: str) -> None:
    assert len(validation._name(name, validation.NAME_MAX_CHARS)) >= 2
