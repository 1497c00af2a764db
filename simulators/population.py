"""A synthetic population of registrants, deterministic from a seed: the simulators' truth.

The ministry simulators serve its records; the demo, the load generators and the tests send its
forms, so that each synthetic person's expected outcome is known: a valid adult, a registrant
whose form the edge must refuse (and why), or a second registration of an earlier person's NIK;
and, for every person, the ground truth the verification lanes must find (:class:`Truth`): what
Dukcapil holds for the NIK, whether Dapodik and DTKS list it, whether the person clicks the email
link and enters the OTP, and what the selfie shows.

The forms are drawn from one random stream and the truths from another, both seeded by
``seed``: adding ground truth changed no form, and a person's form and truth depend only on the
seed and their index, not on ``count``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

PROVINCES = (11, 12, 13, 16, 31, 32, 33, 34, 35, 36, 51, 52, 61, 64, 71, 73, 81, 91, 94)
GIVEN = ("Siti", "Budi", "Agus", "Dewi", "Rina", "Eko", "Putri", "Wahyu", "Sri", "Andi", "Nur")
FAMILY = ("Santoso", "Wijaya", "Lestari", "Hidayat", "Saputra", "Rahmawati", "Kusuma", "Nasution")
PLACES = ("Jakarta", "Surabaya", "Bandung", "Medan", "Makassar", "Semarang", "Palembang", "Ambon")

# What the edge answers for each kind of invalid form: (field, error code).
INVALID_KINDS = {
    "underage": ("birth_date", "underage"),
    "bad_phone": ("phone", "phone_format"),
    "bad_email": ("email", "email_format"),
    "bad_nik_serial": ("nik", "nik_serial"),
    "nik_mismatch": ("nik", "nik_birth_date_mismatch"),
}

# How far the form's birth date of a "nik_mismatch" registrant is from the NIK's.
NIK_MISMATCH_SHIFT_DAYS = 400

DukcapilTruth = Literal[
    "match", "not_found", "mismatch_full_name", "mismatch_birth_place", "mismatch_birth_date"
]
PhotoTruth = Literal["one_face", "no_face", "two_faces"]
MISMATCHES: tuple[DukcapilTruth, ...] = (
    "mismatch_full_name",
    "mismatch_birth_place",
    "mismatch_birth_date",
)


@dataclass(frozen=True, slots=True)
class Truth:
    """What the verification of one person must find: the synthetic world's facts about them.

    ``dukcapil`` says whether Dukcapil holds the NIK and, for a ``mismatch_*``, which one field
    of the form differs from Dukcapil's record (see :func:`dukcapil_record`). ``student``: listed
    in Dapodik. ``welfare``: listed in DTKS. ``clicks_email_link`` and ``enters_otp``: what the
    person does with the verification email and SMS. ``photo``: what the selfie shows (a label;
    the images are made elsewhere).
    """

    dukcapil: DukcapilTruth = "match"
    student: bool = False
    welfare: bool = False
    clicks_email_link: bool = True
    enters_otp: bool = True
    photo: PhotoTruth = "one_face"


@dataclass(frozen=True, slots=True)
class Proportions:
    """The shares of the ground truth among the people of a population (each in [0, 1]).

    The Dukcapil outcomes are exclusive (what is left over is ``match``), as are the photo
    labels (the rest is ``one_face``); the other shares are independent of each other. The
    default email share is 2020's: 73.85% of registrations had their email verified 21 hours
    after opening.
    """

    not_found: float = 0.04
    mismatch_full_name: float = 0.03
    mismatch_birth_place: float = 0.03
    mismatch_birth_date: float = 0.03
    student: float = 0.06
    welfare: float = 0.25
    clicks_email_link: float = 0.7385
    enters_otp: float = 0.92
    photo_no_face: float = 0.04
    photo_two_faces: float = 0.02

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"proportion {name} must be within [0, 1], not {value}")
        dukcapil = self.not_found + sum(getattr(self, kind) for kind in MISMATCHES)
        if dukcapil > 1.0:
            raise ValueError("the Dukcapil shares add up to more than 1")
        if self.photo_no_face + self.photo_two_faces > 1.0:
            raise ValueError("the photo shares add up to more than 1")


DEFAULT_PROPORTIONS = Proportions()


@dataclass(frozen=True, slots=True)
class Registrant:
    """One synthetic person's form, what the edge should make of it, and the truth about them."""

    form: dict[str, Any]
    kind: str  # "valid", "duplicate" or a key of INVALID_KINDS
    truth: Truth = Truth()
    repeats: int | None = None  # a duplicate's: the index of the registration it repeats


def valid_person(rng: random.Random, today: dt.date, index: int) -> dict[str, Any]:
    """A valid adult. Within one seed NIKs are unique for the first 30 million indexes: the
    serial, regency and district together encode the index."""
    born = today - dt.timedelta(days=rng.randrange(19 * 365, 60 * 365))
    female = rng.random() < 0.5
    block = index // 9999
    region = f"{rng.choice(PROVINCES):02d}{1 + block % 79:02d}{1 + (block // 79) % 39:02d}"
    day = born.day + (40 if female else 0)
    nik = f"{region}{day:02d}{born.month:02d}{born.year % 100:02d}{1 + index % 9999:04d}"
    given, family = rng.choice(GIVEN), rng.choice(FAMILY)
    return {
        "nik": nik,
        "full_name": f"{given} {family}",
        "birth_place": rng.choice(PLACES),
        "birth_date": born.isoformat(),
        "email": f"{given.lower()}.{family.lower()}{index}.{rng.randrange(10**6)}@contoh.co.id",
        "phone": f"08{rng.choice((11, 12, 13, 21, 52, 57, 77, 81, 95))}{rng.randrange(10**8):08d}",
    }


def invalid_person(rng: random.Random, today: dt.date, index: int, kind: str) -> dict[str, Any]:
    form = valid_person(rng, today, index)
    if kind == "underage":
        born = today - dt.timedelta(days=rng.randrange(10 * 365, 17 * 365))
        nik = form["nik"]
        form["birth_date"] = born.isoformat()
        form["nik"] = f"{nik[:6]}{born.day:02d}{born.month:02d}{born.year % 100:02d}{nik[12:]}"
    elif kind == "bad_phone":
        form["phone"] = "0211234567"  # a Jakarta landline, not a mobile number
    elif kind == "bad_email":
        form["email"] = form["email"].replace("@", " at ")
    elif kind == "bad_nik_serial":
        form["nik"] = form["nik"][:12] + "0000"
    elif kind == "nik_mismatch":
        born = dt.date.fromisoformat(form["birth_date"])
        form["birth_date"] = (born - dt.timedelta(days=NIK_MISMATCH_SHIFT_DAYS)).isoformat()
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return form


def draw_truth(rng: random.Random, proportions: Proportions = DEFAULT_PROPORTIONS) -> Truth:
    """One person's truth: always six draws from ``rng``, so that streams stay aligned."""
    draw = rng.random
    dukcapil_roll = draw()
    student = draw() < proportions.student
    welfare = draw() < proportions.welfare
    clicks = draw() < proportions.clicks_email_link
    otp = draw() < proportions.enters_otp
    photo_roll = draw()
    dukcapil: DukcapilTruth = "match"
    threshold = proportions.not_found
    if dukcapil_roll < threshold:
        dukcapil = "not_found"
    else:
        for kind in MISMATCHES:
            threshold += getattr(proportions, kind)
            if dukcapil_roll < threshold:
                dukcapil = kind
                break
    photo: PhotoTruth = "one_face"
    if photo_roll < proportions.photo_no_face:
        photo = "no_face"
    elif photo_roll < proportions.photo_no_face + proportions.photo_two_faces:
        photo = "two_faces"
    return _truth(dukcapil, student, welfare, clicks, otp, photo)


@functools.cache
def _truth(
    dukcapil: DukcapilTruth,
    student: bool,
    welfare: bool,
    clicks: bool,
    otp: bool,
    photo: PhotoTruth,
) -> Truth:
    # Interned: there are only 240 distinct truths, and a population may hold millions.
    return Truth(dukcapil, student, welfare, clicks, otp, photo)


def _invalid_truth(kind: str, drawn: Truth) -> Truth:
    """Invalid forms keep the drawn flags, but their Dukcapil outcome follows from the form."""
    if kind == "bad_nik_serial":  # no NIK has the serial 0000
        return dataclasses.replace(drawn, dukcapil="not_found")
    if kind == "nik_mismatch":  # Dukcapil holds the birth date the NIK encodes
        return dataclasses.replace(drawn, dukcapil="mismatch_birth_date")
    return drawn


def population(
    count: int,
    *,
    seed: int,
    today: dt.date,
    invalid_share: float = 0.10,
    duplicate_share: float = 0.05,
    proportions: Proportions = DEFAULT_PROPORTIONS,
) -> list[Registrant]:
    """``count`` registrants in submission order, with the given shares of invalid forms and of
    repeated NIKs (a duplicate always comes after the valid registration it repeats, and shares
    its truth), and ground truth drawn with ``proportions``."""
    # Synthetic people, reproducible from the seed: not a secret.
    rng = random.Random(seed)  # noqa: S311
    truths = random.Random(f"prakerja-population-truth:{seed}")  # noqa: S311
    people: list[Registrant] = []
    valid: list[tuple[int, Registrant]] = []
    kinds = sorted(INVALID_KINDS)
    for index in range(count):
        roll = rng.random()
        truth = draw_truth(truths, proportions)
        if roll < duplicate_share and valid:
            at, original = rng.choice(valid)
            form = {**original.form, "email": f"lagi{index}@contoh.co.id"}
            people.append(Registrant(form, "duplicate", original.truth, repeats=at))
        elif roll < duplicate_share + invalid_share:
            kind = kinds[index % len(kinds)]
            form = invalid_person(rng, today, index, kind)
            people.append(Registrant(form, kind, _invalid_truth(kind, truth)))
        else:
            registrant = Registrant(valid_person(rng, today, index), "valid", truth)
            valid.append((index, registrant))
            people.append(registrant)
    return people


def dukcapil_record(registrant: Registrant) -> dict[str, str]:
    """What Dukcapil holds for the registrant's NIK: ``nik``, ``full_name``, ``birth_place`` and
    ``birth_date`` (ISO). It equals the form except in the one field the truth names: a name
    spelt with one letter doubled, another city, or a birth date a year off (the form's date
    still agrees with the NIK, so the edge accepts it; Dukcapil's does not).

    Raises ``LookupError`` for a person Dukcapil does not know (truth ``not_found``).
    """
    form, truth = registrant.form, registrant.truth
    if truth.dukcapil == "not_found":
        raise LookupError("Dukcapil holds no record for this person")
    record = {key: str(form[key]) for key in ("nik", "full_name", "birth_place", "birth_date")}
    # Variants are chosen from the NIK's serial so that the record is a function of the form.
    serial = int(form["nik"][12:16])
    if truth.dukcapil == "mismatch_full_name":
        record["full_name"] = _misspelt(record["full_name"], serial)
    elif truth.dukcapil == "mismatch_birth_place":
        record["birth_place"] = _other_place(record["birth_place"], serial)
    elif truth.dukcapil == "mismatch_birth_date":
        born = dt.date.fromisoformat(record["birth_date"])
        if registrant.kind == "nik_mismatch":
            record["birth_date"] = (born + dt.timedelta(days=NIK_MISMATCH_SHIFT_DAYS)).isoformat()
        else:
            record["birth_date"] = _year_off(born, -1 if serial % 2 else 1).isoformat()
    return record


def _misspelt(name: str, serial: int) -> str:
    # A letter inside a word, doubled: "Santoso" as "Santtoso".
    inner = [i for i in range(1, len(name)) if name[i].isalpha() and name[i - 1].isalpha()]
    at = inner[serial % len(inner)]
    return name[: at + 1] + name[at:]


def _other_place(place: str, serial: int) -> str:
    others = [p for p in PLACES if p.casefold() != place.casefold()]
    return others[serial % len(others)]


def _year_off(born: dt.date, years: int) -> dt.date:
    try:
        return born.replace(year=born.year + years)
    except ValueError:  # 29 February
        return born.replace(year=born.year + years, day=28)


@dataclass(frozen=True, slots=True)
class Registry:
    """The three ministries' databases as the synthetic world holds them, indexed by NIK.

    Dukcapil holds a record for every person whose truth is not ``not_found``; Dapodik lists the
    students and DTKS the welfare recipients. Every look-up is one dictionary or set probe.
    """

    dukcapil: Mapping[str, Mapping[str, str]]
    students: frozenset[str]
    welfare: frozenset[str]

    @classmethod
    def from_population(cls, people: Iterable[Registrant]) -> Registry:
        """Index ``people``; a repeated NIK (a duplicate) has the same truth and record."""
        dukcapil: dict[str, Mapping[str, str]] = {}
        students: set[str] = set()
        welfare: set[str] = set()
        for person in people:
            nik = str(person.form["nik"])
            if person.truth.dukcapil != "not_found" and nik not in dukcapil:
                dukcapil[nik] = dukcapil_record(person)
            if person.truth.student:
                students.add(nik)
            if person.truth.welfare:
                welfare.add(nik)
        return cls(dukcapil, frozenset(students), frozenset(welfare))

    def record(self, nik: str) -> Mapping[str, str] | None:
        """Dukcapil's record of ``nik``, or ``None`` if Dukcapil does not know it."""
        return self.dukcapil.get(nik)

    def is_student(self, nik: str) -> bool:
        """Whether Dapodik lists ``nik`` as enrolled in school or university."""
        return nik in self.students

    def is_welfare(self, nik: str) -> bool:
        """Whether DTKS lists ``nik`` as a recipient of social assistance."""
        return nik in self.welfare
