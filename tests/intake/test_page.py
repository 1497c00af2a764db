"""The registrant's page without a browser: its built files are fresh, its validator agrees
with the API's, and the edge serves it with its caching, compression and security headers
(the journey in a real browser: tests/intake/test_page_browser.py)."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from core.envelope import FIELDS
from core.settings import Settings
from intake import pagebuild
from intake.page import ASSET_CACHE, CONTENT_SECURITY_POLICY, HTML_CACHE
from intake.validation import FieldError, ValidationFailed, today_wib, validate
from simulators.population import population
from tests.support import inprocess

NODE = shutil.which("node")
RUNNER = Path(__file__).parent.parent / "support" / "page_validate.js"
FIRST_PAGE_MAX_BYTES = 50 * 1024


# --- freshness --------------------------------------------------------------------------------


def test_the_generated_rules_are_fresh() -> None:
    """rules.js is what the OpenAPI document and intake/validation.py make today (else run
    ``python -m intake.pagebuild``)."""
    assert (pagebuild.SOURCE / "rules.js").read_text(encoding="utf-8") == pagebuild.rules_source()


def test_the_built_page_is_fresh(tmp_path: Path) -> None:
    manifest = pagebuild.build(tmp_path)
    built = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    checked_in = {p.name: p.read_bytes() for p in pagebuild.DIST.iterdir()}
    assert built.keys() == checked_in.keys()
    for name, content in built.items():
        assert content == checked_in[name], f"{name} is stale: run python -m intake.pagebuild"
    assert manifest["app.js"] != "app.js"
    assert manifest["app.js"].startswith("app.")


# --- the validator: the page's verdict is the API's ----------------------------------------------


def _api_verdict(body: Any, today: dt.date) -> dict[str, Any]:
    try:
        registration = validate(body, today)
    except ValidationFailed as exc:
        return {"errors": sorted(_pair(e) for e in exc.errors), "value": None}
    value = {name: getattr(registration, name) for name in FIELDS}
    value["birth_date"] = value["birth_date"].isoformat()
    return {"errors": [], "value": value}


def _pair(error: FieldError) -> tuple[str, str]:
    return error.field, error.code


def _page_verdicts(bodies: list[Any], today: dt.date) -> list[dict[str, Any]]:
    assert NODE is not None, "node is needed (Debian's nodejs; scripts/setup.sh installs it)"
    payload = json.dumps({"today": today.isoformat(), "bodies": bodies})
    done = subprocess.run(
        [NODE, str(RUNNER), str(pagebuild.SOURCE)],
        input=payload.encode(),
        capture_output=True,
        check=True,
        timeout=60,
    )
    verdicts: list[dict[str, Any]] = json.loads(done.stdout)
    for verdict in verdicts:
        verdict["errors"] = sorted((e["field"], e["code"]) for e in verdict["errors"])
    return verdicts


def _assert_same(bodies: list[Any], today: dt.date) -> None:
    page = _page_verdicts(bodies, today)
    for body, verdict in zip(bodies, page, strict=True):
        assert verdict == _api_verdict(body, today), body


def _mutations(form: dict[str, str]) -> list[dict[str, Any]]:
    """Variants of a valid form, each a near miss of some rule."""
    nik, born = form["nik"], form["birth_date"]
    return [
        {**form, "nik": nik[:15]},
        {**form, "nik": "20" + nik[2:]},
        {**form, "nik": nik[:2] + "00" + nik[4:]},
        {**form, "nik": nik[:12] + "0000"},
        {**form, "nik": nik[:6] + "32" + nik[8:]},
        {**form, "nik": f" {nik}\u2003"},
        {**form, "birth_date": born.replace("-", "/")},
        {**form, "birth_date": "2999-01-01"},
        {**form, "birth_date": born[:5] + "02-30"},
        {**form, "full_name": " " + form["full_name"] + "  \u00a0x"},
        {**form, "full_name": form["full_name"] + "2"},
        {**form, "full_name": "A" * 101},
        {**form, "birth_place": "\u1e9e\u00df\u0301"},
        {**form, "email": form["email"].upper()},
        {**form, "email": form["email"].replace("@", "@@")},
        {**form, "email": "a" * 65 + "@contoh.co.id"},
        {**form, "phone": "+62 (812) 3456-7890"},
        {**form, "phone": "62712345678"},
        {**form, "phone": 812345678},
        {**form, "extra": "x"},
        {k: v for k, v in form.items() if k != "email"},
        {**form, "email": None},
    ]


def test_the_page_refuses_what_the_api_refuses_over_the_population() -> None:
    today = today_wib()
    people = population(400, seed=16, today=today, invalid_share=0.3)
    bodies: list[Any] = [p.form for p in people]
    for person in people[:60]:
        if person.kind == "valid":
            bodies += _mutations(person.form)
    bodies += [[], "x", None, 3, {}, {"": 1}]
    kinds = {p.kind for p in people}
    assert len(kinds) > 5  # valid, duplicates and several kinds of invalid forms
    _assert_same(bodies, today)


# Characters Python and the browser agree on: assigned in Python's Unicode (a letter added in
# a later version is a letter to the browser, unknown to Python), no surrogates.
_TEXT = st.text(st.characters(exclude_categories=("Cs", "Cn"), max_codepoint=0x2FFFF), max_size=24)
_DIGITS = st.text(st.sampled_from("0123456789 -+()./"), max_size=20)
_VALUES = st.one_of(_TEXT, _DIGITS, st.none(), st.integers(), st.booleans())


@st.composite
def _bodies(draw: st.DrawFn) -> Any:
    """A valid form from the population with some fields replaced by random values."""
    form = dict(draw(st.sampled_from(_FORMS)))
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        if draw(st.booleans()):
            form[name] = draw(_VALUES)
        else:  # a near miss: the valid value, a character inserted
            value = str(form[name])
            at = draw(st.integers(0, len(value)))
            form[name] = (
                value[:at] + draw(st.characters(exclude_categories=("Cs", "Cn"))) + value[at:]
            )
    if draw(st.integers(0, 9)) == 0:
        form[draw(_TEXT)] = draw(_VALUES)
    return form


_FORMS = [p.form for p in population(50, seed=160, today=today_wib(), invalid_share=0)]


@hypothesis_settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_bodies(), min_size=50, max_size=50))
def test_the_page_agrees_with_the_api_on_random_forms(bodies: list[Any]) -> None:
    _assert_same(bodies, today_wib())


def test_every_error_code_has_a_message_in_both_languages() -> None:
    assert NODE is not None
    script = (
        "const vm = require('vm'), fs = require('fs'); const c = vm.createContext({});"
        "for (const f of ['rules.js', 'i18n.js'])"
        f" vm.runInContext(fs.readFileSync({json.dumps(str(pagebuild.SOURCE))} + '/' + f,"
        " 'utf8'), c);"
        "process.stdout.write(JSON.stringify(vm.runInContext("
        "'[RULES.codes, Object.keys(STRINGS.id.codes), Object.keys(STRINGS.en.codes),"
        " Object.keys(STRINGS.id), Object.keys(STRINGS.en)]', c)));"
    )
    done = subprocess.run([NODE, "-e", script], capture_output=True, check=True, timeout=30)
    codes, indonesian, english, id_keys, en_keys = json.loads(done.stdout)
    assert len(codes) > 10
    assert set(codes) <= set(indonesian)
    assert set(codes) <= set(english)
    assert set(id_keys) == set(en_keys)


# --- serving: weight, caching, compression, security headers -------------------------------------


async def test_the_page_is_served_compressed_cached_and_locked_down(settings: Settings) -> None:
    manifest = json.loads((pagebuild.DIST / pagebuild.MANIFEST).read_text())
    async with inprocess.edge(settings) as client:
        page = await client.get("/app/", headers={"Accept-Encoding": "gzip"})
        assert page.status == 200
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"
        assert page.headers["Cache-Control"] == HTML_CACHE
        html = await page.text()
        first_page_bytes = int(page.headers["Content-Length"])  # compressed, on the wire
        assert page.headers["Content-Encoding"] == "gzip"
        for logical in ("app.js", "style.css"):
            hashed = manifest[logical]
            assert f'"/app/{hashed}"' in html
            response = await client.get(f"/app/{hashed}", headers={"Accept-Encoding": "gzip"})
            assert response.status == 200
            assert response.headers["Cache-Control"] == ASSET_CACHE
            assert response.headers["Content-Encoding"] == "gzip"
            assert response.headers["Vary"] == "Accept-Encoding"
            assert (await response.read()) == (pagebuild.DIST / hashed).read_bytes()
            first_page_bytes += int(response.headers["Content-Length"])
        assert first_page_bytes <= FIRST_PAGE_MAX_BYTES
        print(f"first page: {first_page_bytes} bytes gzipped (at most {FIRST_PAGE_MAX_BYTES})")

        # Without gzip: the bytes as built; the ETag revalidates the HTML.
        plain = await client.get("/app/", headers={"Accept-Encoding": "identity"})
        assert "Content-Encoding" not in plain.headers
        assert (await plain.read()) == (pagebuild.DIST / "index.html").read_bytes()
        again = await client.get("/app/", headers={"If-None-Match": plain.headers["ETag"]})
        assert again.status == 304
        assert (await again.read()) == b""

        for response in (page, plain):
            assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["Referrer-Policy"] == "no-referrer"
        assert "<script>" not in html
        assert " style=" not in html
        assert "http" not in html

        # Only built assets, and the HTML only under its own address.
        for missing in ("/app/index.html", "/app/app.js", "/app/manifest.json", "/app/..%2Fx"):
            assert (await client.get(missing)).status == 404, missing


def test_the_compressed_page_weighs_what_the_test_measures() -> None:
    """The weight asserted above, from the files themselves (a second witness)."""
    manifest = json.loads((pagebuild.DIST / pagebuild.MANIFEST).read_text())
    total = sum(
        len(gzip.compress((pagebuild.DIST / manifest[name]).read_bytes(), 9))
        for name in ("index.html", "app.js", "style.css")
    )
    assert 2_000 < total <= FIRST_PAGE_MAX_BYTES


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_the_email_link_opens_the_confirmation_page(settings: Settings, method: str) -> None:
    async with inprocess.edge(settings) as client:
        response = await client.request(method, "/v1/verify/email", params={"token": "x" * 98})
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["Referrer-Policy"] == "no-referrer"
        if method == "GET":
            assert (await response.read()) == (pagebuild.DIST / "confirm.html").read_bytes()
