"""The README's configuration table is the settings object, field for field."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from core.settings import DEV_SECRET_KEY, Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def _table() -> dict[str, str]:
    rows = re.findall(r"^\| `(INTAKE_[A-Z0-9_]+)` \| ([^|]+) \|", README.read_text(), re.M)
    return {name: default.strip() for name, default in rows}


def test_every_setting_is_documented_with_its_default() -> None:
    table = _table()
    fields = {"INTAKE_" + f.name.upper(): f.default for f in dataclasses.fields(Settings)}
    assert set(table) == set(fields)
    for name, default in fields.items():
        if default == DEV_SECRET_KEY:
            continue
        if default == "":
            assert table[name] == "(empty)", name
            continue
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        assert table[name] == f"`{shown}`", name
