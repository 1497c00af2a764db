"""Synthetic registrants with unique, valid NIKs, and their expected normalised values."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

PROVINCES = (11, 12, 31, 32, 33, 35, 51, 61, 73, 94)


def person(index: int, *, seed: int = 0) -> dict[str, Any]:
    """A valid adult registrant; the NIK is unique per (index, seed) for index < 9999 * 700."""
    rng = random.Random(seed * 1_000_003 + index)
    born = dt.date(1960, 1, 1) + dt.timedelta(days=rng.randrange(0, 365 * 40))
    female = rng.random() < 0.5
    day = born.day + (40 if female else 0)
    province = PROVINCES[index % len(PROVINCES)]
    region = f"{province:02d}{1 + (index // 9999) % 70:02d}{1 + seed % 90:02d}"
    serial = 1 + index % 9999
    nik = f"{region}{day:02d}{born.month:02d}{born.year % 100:02d}{serial:04d}"
    return {
        "nik": nik,
        "full_name": f"Nama Lengkap {_letters(index)}",
        "birth_place": "Surabaya",
        "birth_date": born.isoformat(),
        "email": f"orang{index}.s{seed}@contoh.co.id",
        "phone": f"0812{index % 10_000_000:08d}",
    }


def _letters(n: int) -> str:
    out = ""
    n += 1
    while n:
        n, r = divmod(n - 1, 26)
        out = chr(ord("a") + r) + out
    return out.capitalize()
