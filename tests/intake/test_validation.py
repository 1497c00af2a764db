"""The edge's validation of a registration: normalisation, every rejection code, the NIK rules."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.envelope import FIELDS, Registration
from intake import validation
from intake.validation import (
    PROVINCE_CODES,
    FieldError,
    ValidationFailed,
    age_on,
    nik_birth_day_month,
    nik_matches_birth_date,
    today_wib,
    validate,
)

# Registration opened on 11 April 2020; the next day is a convenient "today".
TODAY = dt.date(2020, 4, 12)
ADULT_BORN_LATEST = dt.date(2002, 4, 12)  # 18 on TODAY
MISSING = object()

# A woman (day 5 + 40 = 45) born 5 July 1995 in Jakarta Timur (31 75), district 01.
VALID_NIK = "3175014507950001"
VALID = {
    "nik": VALID_NIK,
    "full_name": "Siti Nurhaliza",
    "birth_place": "Jakarta",
    "birth_date": "1995-07-05",
    "email": "siti.n@example.co.id",
    "phone": "081234567890",
}

# Deterministic and fast enough for CI; no example database written into the work tree.
PROPERTY = settings(max_examples=200, derandomize=True, database=None, deadline=None)


def body(**changes: Any) -> dict[str, Any]:
    result = dict(VALID)
    for key, value in changes.items():
        if value is MISSING:
            del result[key]
        else:
            result[key] = value
    return result


def errors_of(data: Any, today: dt.date = TODAY) -> list[FieldError]:
    with pytest.raises(ValidationFailed) as info:
        validate(data, today)
    assert info.value.errors, "ValidationFailed without errors"
    return info.value.errors


def codes_of(data: Any, today: dt.date = TODAY) -> list[tuple[str, str]]:
    return [(e.field, e.code) for e in errors_of(data, today)]


def make_nik(
    province: int, regency: int, district: int, born: dt.date, female: bool, serial: int
) -> str:
    day = born.day + 40 if female else born.day
    return (
        f"{province:02d}{regency:02d}{district:02d}"
        f"{day:02d}{born.month:02d}{born.year % 100:02d}{serial:04d}"
    )


# --- the happy path ------------------------------------------------------------------------------


def test_valid_registration_passes_unchanged() -> None:
    registration = validate(body(), TODAY)
    assert registration == Registration(
        nik=VALID_NIK,
        full_name="Siti Nurhaliza",
        birth_place="Jakarta",
        birth_date=dt.date(1995, 7, 5),
        email="siti.n@example.co.id",
        phone="+6281234567890",
    )


def test_valid_registration_is_normalised() -> None:
    decomposed = "Rene\u0301  \t Sie\u0301\n"  # "e" + combining acute, runs of whitespace
    registration = validate(
        body(
            nik=f"  {VALID_NIK} ",
            full_name=f"  {decomposed}",
            birth_place=" Tanjung   Pinang ",
            birth_date=" 1995-07-05 ",
            email=" Siti.N@Example.CO.ID ",
            phone=" 0812-3456.7890 ",
        ),
        TODAY,
    )
    assert registration.nik == VALID_NIK
    assert registration.full_name == "Ren\u00e9 Si\u00e9"
    assert unicodedata.is_normalized("NFC", registration.full_name)
    assert registration.birth_place == "Tanjung Pinang"
    assert registration.birth_date == dt.date(1995, 7, 5)
    # The domain is case-insensitive and lower-cased; the local part is kept as written.
    assert registration.email == "Siti.N@example.co.id"
    assert registration.phone == "+6281234567890"


@pytest.mark.parametrize(
    "name",
    [
        "Budi",
        "Siti Nur'aini",
        "Dr. Andi Malarangeng, S.H.",
        "Ahmad Al-Farisi",
        "Nguyễn Thị",
        "李小龍",
    ],
)
def test_names_of_letters_and_separators_pass(name: str) -> None:
    assert validate(body(full_name=name), TODAY).full_name == name


# --- every rejection code ------------------------------------------------------------------------


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("absent", [MISSING, None], ids=["missing", "null"])
def test_required(field: str, absent: object) -> None:
    assert codes_of(body(**{field: absent})) == [(field, "required")]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", [3175014507950001, 1.5, True, [], {}], ids=repr)
def test_type(field: str, value: object) -> None:
    assert codes_of(body(**{field: value})) == [(field, "type")]


def test_unknown_field() -> None:
    errors = errors_of(body(password="hunter2"))
    assert [(e.field, e.code) for e in errors] == [("password", "unknown")]
    assert "hunter2" not in errors[0].message


REJECTIONS = [
    # nik
    ("nik", "", "nik_format"),
    ("nik", "317501450795000", "nik_format"),  # 15 digits
    ("nik", "31750145079500011", "nik_format"),  # 17 digits
    ("nik", "3175-0145-0795-0001", "nik_format"),
    ("nik", "31750145O7950001", "nik_format"),  # letter O
    ("nik", "\uff13175014507950001", "nik_format"),  # a full-width digit
    ("nik", "\u0663175014507950001", "nik_format"),  # an Arabic-Indic digit
    ("nik", "1075014507950001", "nik_province"),
    ("nik", "2075014507950001", "nik_province"),
    ("nik", "9975014507950001", "nik_province"),
    ("nik", "0075014507950001", "nik_province"),
    ("nik", "3100014507950001", "nik_region"),
    ("nik", "3175004507950001", "nik_region"),
    ("nik", "3175010007950001", "nik_birth_date"),  # day 00
    ("nik", "3175013207950001", "nik_birth_date"),  # day 32
    ("nik", "3175014007950001", "nik_birth_date"),  # day 40 (a woman's 0th)
    ("nik", "3175017207950001", "nik_birth_date"),  # day 72 (a woman's 32nd)
    ("nik", "3175014500950001", "nik_birth_date"),  # month 00
    ("nik", "3175014513950001", "nik_birth_date"),  # month 13
    ("nik", "3175013002950001", "nik_birth_date"),  # 30 February
    ("nik", "3175017002950001", "nik_birth_date"),  # a woman's 30 February
    ("nik", "3175013104950001", "nik_birth_date"),  # 31 April
    ("nik", "3175014507950000", "nik_serial"),
    ("nik", "3175014607950001", "nik_birth_date_mismatch"),  # 6 July
    ("nik", "3175014508950001", "nik_birth_date_mismatch"),  # 5 August
    ("nik", "3175014507960001", "nik_birth_date_mismatch"),  # 1996
    # birth_date
    ("birth_date", "", "date_format"),
    ("birth_date", "05-07-1995", "date_format"),
    ("birth_date", "1995/07/05", "date_format"),
    ("birth_date", "1995-7-5", "date_format"),
    ("birth_date", "19950705", "date_format"),
    ("birth_date", "1995-W27-3", "date_format"),  # an ISO week date, 5 July 1995
    ("birth_date", "1995W273", "date_format"),
    ("birth_date", "1995-07-05T00:00", "date_format"),
    ("birth_date", "1995-02-29", "date_format"),  # not a leap year
    ("birth_date", "1995-13-05", "date_format"),
    ("birth_date", "\uff11995-07-05", "date_format"),
    ("birth_date", "2020-04-13", "date_range"),  # tomorrow
    ("birth_date", "2999-01-01", "date_range"),
    ("birth_date", "1899-12-31", "date_range"),
    ("birth_date", "0001-01-01", "date_range"),
    ("birth_date", "2002-04-13", "underage"),  # 18 tomorrow
    ("birth_date", "2020-04-12", "underage"),  # born today
    # full_name and birth_place
    ("full_name", "", "too_short"),
    ("full_name", "A", "too_short"),
    ("full_name", " A \t", "too_short"),
    ("full_name", "   ", "too_short"),
    ("full_name", "A" * 101, "too_long"),
    ("full_name", "Budi 2", "characters"),
    ("full_name", "Budi_Santoso", "characters"),
    ("full_name", "budi@example.com", "characters"),
    ("full_name", "-Budi", "characters"),
    ("full_name", "'Budi", "characters"),
    ("full_name", "Budi <script>", "characters"),
    ("full_name", "Budi\u200bSantoso", "characters"),  # zero-width space
    ("full_name", "Budi \u00b2", "characters"),  # superscript two
    ("full_name", "Budi \u00bd", "characters"),  # one half
    ("full_name", "Budi \u216b", "characters"),  # Roman numeral twelve
    ("full_name", "Budi \u0663", "characters"),  # Arabic-Indic digit three
    ("birth_place", "X", "too_short"),
    ("birth_place", "Jakarta" * 15, "too_long"),
    ("birth_place", "Jakarta 1", "characters"),
    # email
    ("email", "a" * 243 + "@example.com", "too_long"),  # 255 characters
    ("email", "", "email_format"),
    ("email", "siti", "email_format"),
    ("email", "siti@", "email_format"),
    ("email", "@example.com", "email_format"),
    ("email", "siti@localhost", "email_format"),  # no dot in the domain
    ("email", "siti@-example.com", "email_format"),
    ("email", "siti@example-.com", "email_format"),
    ("email", "siti@example..com", "email_format"),
    ("email", "siti@exa_mple.com", "email_format"),
    ("email", "siti n@example.com", "email_format"),
    ("email", "siti@@example.com", "email_format"),
    ("email", "sitī@example.com", "email_format"),  # non-ASCII
    ("email", "a" * 65 + "@example.com", "email_format"),  # local part over 64
    ("email", "siti@" + "a" * 64 + ".com", "email_format"),  # label over 63
    # phone
    ("phone", "", "phone_format"),
    ("phone", "081", "phone_format"),
    ("phone", "081234567", "phone_format"),  # 08 + 7 digits
    ("phone", "08123456789012", "phone_format"),  # 08 + 12 digits
    ("phone", "0712345678", "phone_format"),
    ("phone", "0212345678", "phone_format"),  # a Jakarta landline
    ("phone", "812345678", "phone_format"),
    ("phone", "+63812345678", "phone_format"),
    ("phone", "+62 0812345678", "phone_format"),
    ("phone", "0062812345678", "phone_format"),
    ("phone", "08a2345678", "phone_format"),
    ("phone", "0812\t3456789", "phone_format"),
    ("phone", "+6281234567890123", "phone_format"),
    ("phone", "\uff10812345678", "phone_format"),
]


@pytest.mark.parametrize(("field", "value", "code"), REJECTIONS, ids=repr)
def test_rejection(field: str, value: str, code: str) -> None:
    errors = errors_of(body(**{field: value}))
    assert [(e.field, e.code) for e in errors] == [(field, code)]
    if len(value.strip()) >= 3:
        assert all(value not in e.message for e in errors)


def test_every_field_is_reported_at_once() -> None:
    data = body(
        nik="3175014507950000",
        full_name=MISSING,
        birth_place=42,
        birth_date="2010-01-01",
        email="siti@localhost",
        phone="0712345678",
        password="x",
    )
    codes = codes_of(data)
    assert sorted(codes) == sorted(
        [
            ("password", "unknown"),
            ("full_name", "required"),
            ("birth_place", "type"),
            ("nik", "nik_serial"),
            ("birth_date", "underage"),
            ("email", "email_format"),
            ("phone", "phone_format"),
        ]
    )


def test_an_empty_object_reports_every_field_as_required() -> None:
    assert sorted(codes_of({})) == sorted((field, "required") for field in FIELDS)


def test_a_mismatch_is_reported_alongside_other_fields_errors() -> None:
    codes = codes_of(body(nik="3175014607950001", phone="07"))
    assert sorted(codes) == [("nik", "nik_birth_date_mismatch"), ("phone", "phone_format")]


@pytest.mark.parametrize(
    ("phone", "normalised"),
    [
        ("0812345678", "+62812345678"),  # 08 + 8 digits, the shortest
        ("0812345678901", "+62812345678901"),  # 08 + 11 digits, the longest
        ("+62 812-3456-7890", "+6281234567890"),
        ("62.812.3456.7890", "+6281234567890"),
        ("(+62) 812 3456 7890", "+6281234567890"),
    ],
)
def test_phone_lengths_and_forms(phone: str, normalised: str) -> None:
    assert validate(body(phone=phone), TODAY).phone == normalised


@pytest.mark.parametrize("data", [[], [VALID], "{}", 1, None, True], ids=repr)
def test_a_body_that_is_not_an_object(data: object) -> None:
    assert codes_of(data) == [("", "type")]


# --- age and the WIB calendar day ----------------------------------------------------------------


def test_today_is_the_calendar_day_in_jakarta() -> None:
    utc = dt.UTC
    assert today_wib(dt.datetime(2020, 4, 11, 16, 59, 59, 999999, tzinfo=utc)) == dt.date(
        2020, 4, 11
    )
    assert today_wib(dt.datetime(2020, 4, 11, 17, 0, tzinfo=utc)) == dt.date(2020, 4, 12)
    # Opening time, 19:00 WIB, given in WIB itself.
    wib = dt.timezone(dt.timedelta(hours=7))
    assert today_wib(dt.datetime(2020, 4, 11, 19, 0, tzinfo=wib)) == dt.date(2020, 4, 11)
    assert isinstance(today_wib(), dt.date)


def test_the_18th_birthday_boundary_is_midnight_in_jakarta() -> None:
    # Born 12 April 2002: 18 at 00:00 WIB on 12 April 2020, i.e. 17:00 UTC on 11 April.
    data = body(nik="3175015204020001", birth_date="2002-04-12")
    just_before = dt.datetime(2020, 4, 11, 16, 59, 59, tzinfo=dt.UTC)
    just_after = dt.datetime(2020, 4, 11, 17, 0, 0, tzinfo=dt.UTC)
    assert codes_of(data, today_wib(just_before)) == [("birth_date", "underage")]
    assert validate(data, today_wib(just_after)).birth_date == dt.date(2002, 4, 12)


def test_age_on() -> None:
    born = dt.date(2002, 4, 12)
    assert age_on(born, dt.date(2020, 4, 11)) == 17
    assert age_on(born, dt.date(2020, 4, 12)) == 18
    assert age_on(born, dt.date(2021, 4, 11)) == 18


# --- the +40 rule and 29 February ----------------------------------------------------------------


@pytest.mark.parametrize("day", range(1, 32))
def test_women_add_40_to_the_day(day: int) -> None:
    born = dt.date(1990, 1, day)
    man = make_nik(31, 75, 1, born, female=False, serial=1)
    woman = make_nik(31, 75, 1, born, female=True, serial=1)
    assert man[6:8] == f"{day:02d}"
    assert woman[6:8] == f"{day + 40:02d}"
    assert nik_birth_day_month(man) == nik_birth_day_month(woman) == (day, 1)
    for nik in (man, woman):
        assert validate(body(nik=nik, birth_date=born.isoformat()), TODAY).nik == nik
        # The birth date must agree with the decoded day, not with the raw +40 digits.
        other = born + dt.timedelta(days=1)
        assert codes_of(body(nik=nik, birth_date=other.isoformat())) == [
            ("nik", "nik_birth_date_mismatch")
        ]


@pytest.mark.parametrize("female", [False, True])
def test_29_february(female: bool) -> None:
    born = dt.date(2000, 2, 29)
    nik = make_nik(32, 73, 5, born, female=female, serial=123)
    assert nik[6:12] == ("690200" if female else "290200")
    assert validate(body(nik=nik, birth_date="2000-02-29"), TODAY).birth_date == born
    assert codes_of(body(nik=nik, birth_date="2000-02-28")) == [("nik", "nik_birth_date_mismatch")]
    assert codes_of(body(nik=nik, birth_date="2000-03-01")) == [("nik", "nik_birth_date_mismatch")]
    # Someone born on 29 February turns 18 on 1 March in a common year.
    assert codes_of(body(nik=nik, birth_date="2000-02-29"), dt.date(2018, 2, 28)) == [
        ("birth_date", "underage")
    ]
    assert validate(body(nik=nik, birth_date="2000-02-29"), dt.date(2018, 3, 1)).nik == nik


def test_29_february_of_a_common_year_cannot_agree_with_any_birth_date() -> None:
    nik = "3273052902010123"  # 29 February 2001 does not exist
    assert nik_birth_day_month(nik) == (29, 2)
    assert codes_of(body(nik=nik, birth_date="2001-02-28")) == [("nik", "nik_birth_date_mismatch")]
    assert codes_of(body(nik=nik, birth_date="2001-02-29")) == [("birth_date", "date_format")]


# --- messages never quote the submitted value -----------------------------------------------------


def test_messages_never_quote_personal_values() -> None:
    nik = "3175014507950000"  # serial 0000
    email = "siti.nurhaliza@localhost"
    phone = "+63 812 3456 7890"
    birth_date = "2010-06-15"
    errors = errors_of(
        body(nik=nik, email=email, phone=phone, birth_date=birth_date, full_name="Siti 99")
    )
    assert {e.field for e in errors} == {"nik", "email", "phone", "birth_date", "full_name"}
    for e in errors:
        for value in (nik, email, phone, birth_date, "Siti 99", nik[6:12], "99"):
            assert value not in e.message


def test_mismatch_message_does_not_quote_the_nik_or_the_date() -> None:
    nik = "3175014607950001"
    (error,) = errors_of(body(nik=nik))
    assert error.code == "nik_birth_date_mismatch"
    for value in (nik, "1995-07-05", "460795", "1995"):
        assert value not in error.message


# --- properties: the NIK -------------------------------------------------------------------------

provinces = st.sampled_from(sorted(PROVINCE_CODES))
region_codes = st.integers(min_value=1, max_value=99)
adult_birth_dates = st.dates(min_value=dt.date(1900, 1, 1), max_value=ADULT_BORN_LATEST)
serials = st.integers(min_value=1, max_value=9999)


@st.composite
def niks(draw: st.DrawFn) -> tuple[str, dt.date]:
    born = draw(adult_birth_dates)
    nik = make_nik(
        draw(provinces),
        draw(region_codes),
        draw(region_codes),
        born,
        draw(st.booleans()),
        draw(serials),
    )
    return nik, born


def _decode(nik: str) -> tuple[int, int, int] | None:
    """An independent reading of a NIK's date part: (day, month, two-digit year) or None."""
    day, month, year = int(nik[6:8]), int(nik[8:10]), int(nik[10:12])
    if day > 40:
        day -= 40
    try:
        dt.date(2000, month, day)
    except ValueError:
        return None
    return day, month, year


@PROPERTY
@given(niks())
def test_well_formed_niks_of_adults_validate_and_round_trip(sample: tuple[str, dt.date]) -> None:
    nik, born = sample
    registration = validate(body(nik=nik, birth_date=born.isoformat()), TODAY)
    assert registration.nik == nik
    assert registration.birth_date == born
    assert nik_matches_birth_date(nik, born)
    assert nik_birth_day_month(nik) == (born.day, born.month)
    # And through the day the NIK encodes, rebuilt from scratch.
    female = int(nik[6:8]) > 40
    assert (
        make_nik(int(nik[0:2]), int(nik[2:4]), int(nik[4:6]), born, female, int(nik[12:16])) == nik
    )


@PROPERTY
@given(niks(), st.integers(min_value=6, max_value=11), st.integers(min_value=1, max_value=9))
def test_changing_a_digit_of_the_date_is_rejected(
    sample: tuple[str, dt.date], position: int, shift: int
) -> None:
    nik, born = sample
    digit = (int(nik[position]) + shift) % 10
    changed = nik[:position] + str(digit) + nik[position + 1 :]
    data = body(nik=changed, birth_date=born.isoformat())
    decoded = _decode(changed)
    if decoded == (born.day, born.month, born.year % 100):
        # 0<->4, 1<->5, 2<->6, 3<->7 in the day's first digit flips the sex, not the date.
        assert position == 6
        assert abs(int(changed[6]) - int(nik[6])) == 4
        assert validate(data, TODAY).nik == changed
        return
    errors = errors_of(data)
    expected = "nik_birth_date" if decoded is None else "nik_birth_date_mismatch"
    assert [(e.field, e.code) for e in errors] == [("nik", expected)]
    assert all(changed not in e.message for e in errors)


@PROPERTY
@given(niks())
def test_serial_0000_is_rejected(sample: tuple[str, dt.date]) -> None:
    nik, born = sample
    changed = nik[:12] + "0000"
    assert codes_of(body(nik=changed, birth_date=born.isoformat())) == [("nik", "nik_serial")]


@PROPERTY
@given(niks(), st.integers(min_value=0, max_value=99).filter(lambda p: p not in PROVINCE_CODES))
def test_an_unknown_province_is_rejected(sample: tuple[str, dt.date], province: int) -> None:
    nik, born = sample
    changed = f"{province:02d}" + nik[2:]
    assert codes_of(body(nik=changed, birth_date=born.isoformat())) == [("nik", "nik_province")]


@PROPERTY
@given(niks(), st.sampled_from([2, 4]))
def test_a_00_regency_or_district_is_rejected(sample: tuple[str, dt.date], at: int) -> None:
    nik, born = sample
    changed = nik[:at] + "00" + nik[at + 2 :]
    assert codes_of(body(nik=changed, birth_date=born.isoformat())) == [("nik", "nik_region")]


_SIXTEEN_DIGITS = re.compile(r"[0-9]{16}")

not_a_nik = st.one_of(
    st.text(),
    st.text(alphabet="0123456789", max_size=40).filter(lambda s: len(s) != 16),
    # Sixteen characters, one of which is not an ASCII digit.
    st.tuples(
        st.text(alphabet="0123456789", min_size=16, max_size=16),
        st.integers(min_value=0, max_value=15),
        st.characters().filter(lambda c: c not in "0123456789"),
    ).map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + 1 :]),
).filter(lambda s: not _SIXTEEN_DIGITS.fullmatch(s.strip()))


@PROPERTY
@given(not_a_nik)
def test_anything_but_16_digits_is_not_a_nik(value: str) -> None:
    assert codes_of(body(nik=value)) == [("nik", "nik_format")]


# --- properties: the phone -----------------------------------------------------------------------

subscriber_digits = st.text(alphabet="0123456789", min_size=8, max_size=11)
separators = st.sampled_from(["", " ", "-", "."])


@st.composite
def spelled(draw: st.DrawFn, prefix: str, digits: str) -> str:
    """``prefix`` + ``digits``, with separators between some of the characters."""
    text = prefix + digits
    out = [text[0]]
    for char in text[1:]:
        out.append(draw(separators))
        out.append(char)
    return draw(st.sampled_from(["", " "])) + "".join(out) + draw(st.sampled_from(["", " "]))


@PROPERTY
@given(st.data(), subscriber_digits, st.sampled_from(["08", "+628", "628"]))
def test_every_spelling_of_a_mobile_number_normalises_alike(
    data: st.DataObject, digits: str, prefix: str
) -> None:
    phone = data.draw(spelled(prefix, digits))
    registration = validate(body(phone=phone), TODAY)
    assert registration.phone == "+628" + digits
    assert validate(body(phone="08" + digits), TODAY).phone == registration.phone


# Prefixes that are not 08 / +628 / 628 even once the separators are gone.
WRONG_PREFIXES = ["", "8", "07", "09", "00", "02", "+63 8", "+61 8", "+62 08", "6208", "0062 8"]


@PROPERTY
@given(
    st.data(),
    st.one_of(
        st.tuples(st.sampled_from(WRONG_PREFIXES), subscriber_digits),
        st.tuples(
            st.sampled_from(["08", "+628", "628"]),
            st.text(alphabet="0123456789", max_size=16).filter(lambda s: not 8 <= len(s) <= 11),
        ),
    ),
)
def test_another_prefix_or_digit_count_is_rejected(
    data: st.DataObject, parts: tuple[str, str]
) -> None:
    prefix, digits = parts
    phone = data.draw(spelled(prefix, digits)) if prefix + digits else ""
    errors = errors_of(body(phone=phone))
    assert [(e.field, e.code) for e in errors] == [("phone", "phone_format")]
    if len(phone.strip()) >= 8:  # a short value ("628") can be part of the fixed text
        assert all(phone not in e.message for e in errors)


# --- properties: names and emails ----------------------------------------------------------------

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ALNUM = _LETTERS + "0123456789"
words = st.text(alphabet=_LETTERS, min_size=2, max_size=8)
whitespace = st.text(alphabet=" \t\n\u00a0\u3000", min_size=1, max_size=3)


@PROPERTY
@given(st.lists(words, min_size=1, max_size=4), st.data())
def test_whitespace_in_names_collapses_to_one_space(parts: list[str], data: st.DataObject) -> None:
    spaced = parts[0]
    for part in parts[1:]:
        spaced += data.draw(whitespace) + part
    raw = (
        data.draw(st.sampled_from(["", " ", "\t"]))
        + spaced
        + data.draw(st.sampled_from(["", " ", "\n"]))
    )
    assert validate(body(full_name=raw), TODAY).full_name == " ".join(parts)


@PROPERTY
@given(
    st.text(alphabet=_ALNUM + "._+-", min_size=1, max_size=20),
    st.lists(st.text(alphabet=_ALNUM, min_size=1, max_size=10), min_size=2, max_size=4),
)
def test_email_domains_are_lower_cased(local: str, labels: list[str]) -> None:
    domain = ".".join(labels)
    email = validate(body(email=f"{local}@{domain}"), TODAY).email
    assert email == f"{local}@{domain.lower()}"


# --- the fast forms of the name rules are the rules -----------------------------------------

_WHITESPACE_RUNS = re.compile(r"\s+")
_ANY_SCRIPT_NAME = re.compile(r"[^\W\d_](?:[^\W\d_]|[\u0300-\u036f]|[ '.,\-])*")


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_whitespace_is_collapsed_as_a_regex_would(text: str) -> None:
    assert " ".join(text.split()) == _WHITESPACE_RUNS.sub(" ", text).strip()


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=40))
def test_an_ascii_name_is_judged_as_the_unicode_rule_judges_it(text: str) -> None:
    expected = _ANY_SCRIPT_NAME.fullmatch(text) is not None and not any(
        c.isnumeric() and not c.isalpha() for c in text
    )
    assert (validation._ASCII_NAME_RE.fullmatch(text) is not None) == expected
