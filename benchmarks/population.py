"""A synthetic population of registrants, deterministic from a seed.

Shared by the demo, the load generators and the tests, so that each synthetic person's expected
outcome is known: a valid adult, a registrant whose form the edge must refuse (and why), or a
second registration of an earlier person's NIK.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True, slots=True)
class Registrant:
    """One synthetic person's form and what should become of it."""

    form: dict[str, Any]
    kind: str  # "valid", "duplicate" or a key of INVALID_KINDS


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
        born = dt.date.fromisoformat(form["birth_date"]) - dt.timedelta(days=400)
        form["birth_date"] = born.isoformat()
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return form


def population(
    count: int,
    *,
    seed: int,
    today: dt.date,
    invalid_share: float = 0.10,
    duplicate_share: float = 0.05,
) -> list[Registrant]:
    """``count`` registrants in submission order, with the given shares of invalid forms and of
    repeated NIKs (a duplicate always comes after the valid registration it repeats)."""
    rng = random.Random(seed)
    people: list[Registrant] = []
    valid: list[dict[str, Any]] = []
    kinds = sorted(INVALID_KINDS)
    for index in range(count):
        roll = rng.random()
        if roll < duplicate_share and valid:
            original = rng.choice(valid)
            people.append(
                Registrant({**original, "email": f"lagi{index}@contoh.co.id"}, "duplicate")
            )
        elif roll < duplicate_share + invalid_share:
            kind = kinds[index % len(kinds)]
            people.append(Registrant(invalid_person(rng, today, index, kind), kind))
        else:
            form = valid_person(rng, today, index)
            valid.append(form)
            people.append(Registrant(form, "valid"))
    return people
