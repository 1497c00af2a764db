"""Schemathesis hooks for the edge's fuzzing (``tests/intake/test_fuzz.py``).

The OpenAPI document expresses every rule of a registration that one field and no clock can
express (``intake/openapi.json``); two cannot be: the NIK's encoded birth date agrees with
``birth_date``, and the registrant is 18 or older today. A registration generated as valid
(positive mode) is made to follow them here, as a client following the document's
descriptions would, so that a valid registration refused is a real finding. Invalid ones are
left as generated.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import schemathesis

from intake.validation import MIN_AGE_YEARS, today_wib

_DATE = re.compile(r"\s*([0-9]{4})-([0-9]{2})-([0-9]{2})\s*")
_NIK = re.compile(r"(\s*[0-9]{6})([0-9]{2})([0-9]{4})([0-9]{4}\s*)")


def _adult_birth_date(year: int, month: int, day: int) -> dt.date:
    """The date given, or the same day and month in a year that makes its holder an adult."""
    today = today_wib()
    latest = today.year - MIN_AGE_YEARS - 1  # anyone born that year is an adult today
    if 1900 <= year <= latest:
        return dt.date(year, month, day)
    if (month, day) == (2, 29):
        latest -= latest % 4  # a leap year (every one from 1901 to 2099 is a multiple of 4)
    return dt.date(latest, month, day)


def _agreeing(body: dict[str, Any]) -> None:
    """Make ``body``'s NIK and birth date agree, and its registrant an adult."""
    date, nik = body.get("birth_date"), body.get("nik")
    if not (isinstance(date, str) and isinstance(nik, str)):
        return
    date_match, nik_match = _DATE.fullmatch(date), _NIK.fullmatch(nik)
    if date_match is None or nik_match is None:
        return
    try:
        born = _adult_birth_date(*(int(part) for part in date_match.groups()))
    except ValueError:
        return
    body["birth_date"] = born.isoformat()
    woman = int(nik_match[2][:2]) > 40
    day = born.day + (40 if woman else 0)
    encoded = f"{day:02d}{born.month:02d}{born.year % 100:02d}"
    body["nik"] = nik_match[1] + encoded + nik_match[4]


@schemathesis.hook
def map_case(
    context: schemathesis.HookContext, case: schemathesis.Case[Any]
) -> schemathesis.Case[Any]:
    operation = context.operation
    if (
        operation is not None
        and operation.method.upper() == "POST"
        and operation.path == "/v1/registrations"
        and case.meta is not None
        and case.meta.generation.mode.is_positive
        and isinstance(case.body, dict)
    ):
        _agreeing(case.body)
    return case
