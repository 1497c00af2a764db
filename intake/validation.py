"""Validation of a registration request: the edge's only judgement of the data.

Each rule that fails adds a :class:`FieldError` with a stable machine-readable ``code``; the
messages never quote the submitted value (it is personal data and may end up in a client's
logs). Checks that need a ministry (does this NIK exist?) are the workers' business.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from core.envelope import FIELDS, Registration

WIB = dt.timezone(dt.timedelta(hours=7), "WIB")
MIN_AGE_YEARS = 18

# BPS province codes: Sumatra 11-19, Jakarta 31 ... Papua 91-96 (the four provinces split off
# Papua in 2022 are 93-96). 20-29 holds only Riau Islands (21).
PROVINCE_CODES = frozenset(
    {11, 12, 13, 14, 15, 16, 17, 18, 19, 21, 31, 32, 33, 34, 35, 36, 51, 52, 53}
    | {61, 62, 63, 64, 65, 71, 72, 73, 74, 75, 76, 81, 82, 91, 92, 93, 94, 95, 96}
)

_NIK_RE = re.compile(r"[0-9]{16}")
# Checked before date.fromisoformat, which also takes ISO week dates ("2000-W01-1") and
# "20000101".
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_PHONE_SEPARATORS = str.maketrans("", "", " -.()")
_PHONE_RE = re.compile(r"(?:\+62|62|0)(8[0-9]{8,11})")
# Letters of any script, combining marks, and the separators names really contain.
_NAME_RE = re.compile(r"[^\W\d_](?:[^\W\d_]|[\u0300-\u036f]|[ '.,\-])*")
# The same for a name in ASCII (checked faster: no Unicode categories to look up).
_ASCII_NAME_RE = re.compile(r"[A-Za-z][A-Za-z '.,\-]*")
# The WHATWG HTML definition of a valid email address (what browsers' type=email accepts),
# ASCII only, each domain label at most 63 characters.
_EMAIL_RE = re.compile(
    r"[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*"
)

# The same rules as whole-string patterns, for the registrant's page (intake/pagebuild.py), which
# applies them to the values normalised as here (stripped; the phone without separators).
NIK_PATTERN = f"^{_NIK_RE.pattern}$"
DATE_PATTERN = f"^{_DATE_RE.pattern}$"
PHONE_PATTERN = f"^{_PHONE_RE.pattern}$"
# With the two rules checked beside the regex: a local part of at most 64, a dot in the domain.
EMAIL_PATTERN = f"^(?=[^@]{{1,64}}@)(?=[^@]*@[^@]*[.]){_EMAIL_RE.pattern}$"

_FIELD_SET = frozenset(FIELDS)

NAME_MAX_CHARS = 100
PLACE_MAX_CHARS = 100
EMAIL_MAX_CHARS = 254


@dataclass(frozen=True, slots=True)
class FieldError:
    """One reason a field was refused; serialised as is in the 422 response."""

    field: str
    code: str
    message: str


class ValidationFailed(Exception):
    """The request body is well-formed JSON but not a valid registration."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(f"{len(errors)} invalid field(s)")
        self.errors = errors


def validate(body: Any, today: dt.date) -> Registration:
    """Validate a decoded JSON body; return the normalised registration or raise
    :class:`ValidationFailed` listing every field's errors, not only the first."""
    if not isinstance(body, dict):
        raise ValidationFailed([FieldError("", "type", "the body must be a JSON object")])
    errors: list[FieldError] = (
        []
        if len(body) == len(FIELDS) and _FIELD_SET.issuperset(body)
        else [FieldError(key, "unknown", "unknown field") for key in body if key not in _FIELD_SET]
    )
    raw: dict[str, str] = {}
    for name in FIELDS:
        value = body.get(name)
        if value is None:
            errors.append(FieldError(name, "required", "this field is required"))
        elif not isinstance(value, str):
            errors.append(FieldError(name, "type", "must be a string"))
        else:
            raw[name] = value

    nik = _check(errors, "nik", raw, _nik)
    birth_date = _check(errors, "birth_date", raw, lambda v: _birth_date(v, today))
    full_name = _check(errors, "full_name", raw, lambda v: _name(v, NAME_MAX_CHARS))
    birth_place = _check(errors, "birth_place", raw, lambda v: _name(v, PLACE_MAX_CHARS))
    email = _check(errors, "email", raw, _email)
    phone = _check(errors, "phone", raw, _phone)
    if nik is not None and birth_date is not None and not nik_matches_birth_date(nik, birth_date):
        errors.append(
            FieldError("nik", "nik_birth_date_mismatch", "the NIK encodes another birth date")
        )
    if errors:
        raise ValidationFailed(errors)
    return Registration(nik, full_name, birth_place, birth_date, email, phone)


class _Invalid(Exception):
    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message


def _check(errors: list[FieldError], name: str, raw: dict[str, str], rule: Any) -> Any:
    if name not in raw:
        return None
    try:
        return rule(raw[name])
    except _Invalid as exc:
        errors.append(FieldError(name, exc.code, exc.message))
        return None


def _nik(value: str) -> str:
    nik = value.strip()
    if not _NIK_RE.fullmatch(nik):
        raise _Invalid("nik_format", "a NIK is exactly 16 digits")
    if int(nik[0:2]) not in PROVINCE_CODES:
        raise _Invalid("nik_province", "the NIK's province code does not exist")
    if nik[2:4] == "00" or nik[4:6] == "00":
        raise _Invalid("nik_region", "the NIK's regency or district code is 00")
    if nik_birth_day_month(nik) is None:
        raise _Invalid("nik_birth_date", "the NIK does not encode a valid birth date")
    if nik[12:16] == "0000":
        raise _Invalid("nik_serial", "the NIK's serial number is 0000")
    return nik


def nik_birth_day_month(nik: str) -> tuple[int, int] | None:
    """The (day, month) a NIK encodes (women's days carry +40), or None if impossible."""
    day, month = int(nik[6:8]), int(nik[8:10])
    if day > 40:
        day -= 40
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    try:
        dt.date(2000, month, day)  # a leap year: 29 February is possible
    except ValueError:
        return None
    return day, month


def nik_matches_birth_date(nik: str, birth_date: dt.date) -> bool:
    """Whether the NIK's encoded day, month and two-digit year agree with ``birth_date``."""
    return (
        nik_birth_day_month(nik) == (birth_date.day, birth_date.month)
        and int(nik[10:12]) == birth_date.year % 100
    )


def _birth_date(value: str, today: dt.date) -> dt.date:
    text = value.strip()
    if not _DATE_RE.fullmatch(text):
        raise _Invalid("date_format", "a date is written YYYY-MM-DD")
    try:
        born = dt.date.fromisoformat(text)
    except ValueError:
        raise _Invalid("date_format", "a date is written YYYY-MM-DD") from None
    if born > today or born.year < 1900:
        raise _Invalid("date_range", "the birth date is not plausible")
    if age_on(born, today) < MIN_AGE_YEARS:
        raise _Invalid("underage", f"registrants must be {MIN_AGE_YEARS} or older")
    return born


def age_on(born: dt.date, day: dt.date) -> int:
    """Completed years of age on ``day`` (someone born on 29 February ages on 1 March)."""
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def _name(value: str, max_chars: int) -> str:
    name = " ".join(unicodedata.normalize("NFC", value).split())  # whitespace runs: one space
    if len(name) < 2:
        raise _Invalid("too_short", "at least 2 characters")
    if len(name) > max_chars:
        raise _Invalid("too_long", f"at most {max_chars} characters")
    # \w also takes numeric characters that are not letters ("²", "½", "Ⅻ"): refuse those
    # (in ASCII the only numeric characters are the digits, which the pattern refuses).
    if name.isascii():
        if not _ASCII_NAME_RE.fullmatch(name):
            raise _Invalid("characters", "letters, spaces and ' . , - only")
    elif not _NAME_RE.fullmatch(name) or any(c.isnumeric() and not c.isalpha() for c in name):
        raise _Invalid("characters", "letters, spaces and ' . , - only")
    return name


def _email(value: str) -> str:
    if len(value) > EMAIL_MAX_CHARS:
        raise _Invalid("too_long", f"at most {EMAIL_MAX_CHARS} characters")
    email = value.strip()
    local, _, domain = email.rpartition("@")
    if not _EMAIL_RE.fullmatch(email) or len(local) > 64 or "." not in domain:
        raise _Invalid("email_format", "not a valid email address")
    return f"{local}@{domain.lower()}"


def _phone(value: str) -> str:
    match = _PHONE_RE.fullmatch(value.strip().translate(_PHONE_SEPARATORS))
    if match is None:
        raise _Invalid("phone_format", "an Indonesian mobile number: 08… or +628…, 10-13 digits")
    return "+62" + match.group(1)


def today_wib(now: dt.datetime | None = None) -> dt.date:
    """The calendar day in Jakarta (WIB, UTC+7), which decides a registrant's age."""
    return (now or dt.datetime.now(dt.UTC)).astimezone(WIB).date()
