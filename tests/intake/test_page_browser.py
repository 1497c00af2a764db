"""The registrant's page in a real browser (Debian's chromium, driven by Playwright for
Python through the system executable: nothing is downloaded), against the real edge, RabbitMQ,
PostgreSQL, workers and simulators: the whole journey, an accessibility check, and keyboard
use. Each step's screenshot is written under the test's tmp path, and to
``INTAKE_SCREENSHOTS_DIR`` when it is set. Headless: no display needed."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg
from PIL import Image
from playwright.async_api import (
    FilePayload,
    Page,
    Request,
    ViewportSize,
    async_playwright,
    expect,
)
from yarl import URL

from core import questions, topology
from core.blobs import BlobRef, BlobStore
from core.keys import Keyring
from core.photo_vault import PhotoVault
from core.settings import Settings
from core.verification import Check
from core.waves import Policy, Waves
from intake.validation import today_wib
from simulators.population import Proportions, population
from simulators.server import Ports, SimulatorConfig, run_simulators
from tests.support import inprocess
from tests.support.photos import encode, sample
from tests.support.waiting import eventually
from workers.participation import ParticipationWorker

CHROMIUM = shutil.which("chromium")  # Debian's
# scripts/setup.sh installs the pinned axe-core there (scripts/install_axe.py).
AXE = Path(sys.prefix) / "share" / "axe-core" / "axe.min.js"
PHONE = ViewportSize(width=360, height=780)
NOBODY_SPECIAL = Proportions(
    not_found=0,
    mismatch_full_name=0,
    mismatch_birth_place=0,
    mismatch_birth_date=0,
    student=0,
    welfare=0,
)
# Every lane but the photo's: the uploaded selfie then waits in its line, with a place in it.
LANES = (Check.EMAIL, Check.PHONE, Check.DUKCAPIL, Check.DAPODIK, Check.DTKS)


class Screens:
    """Numbered full-page screenshots of a test's steps."""

    def __init__(self, page: Page, directory: Path) -> None:
        self.page = page
        self.directory = directory
        self.count = 0
        directory.mkdir(parents=True, exist_ok=True)
        extra = os.environ.get("INTAKE_SCREENSHOTS_DIR")
        self.extra = Path(extra) if extra else None

    async def __call__(self, name: str) -> Path:
        self.count += 1
        path = self.directory / f"{self.count:02d}-{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000
        if self.extra is not None:
            self.extra.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, self.extra / path.name)
        return path


@contextlib.asynccontextmanager
async def phone_browser(tmp_path: Path) -> AsyncIterator[tuple[Page, Screens]]:
    """A 360-pixel-wide page of the system's chromium, headless."""
    assert CHROMIUM is not None, "Debian's chromium is needed: run make setup"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            context = await browser.new_context(viewport=PHONE, locale="id-ID")
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on(
                "console",
                lambda message: errors.append(message.text) if message.type == "error" else None,
            )
            yield page, Screens(page, tmp_path / "screenshots")
            # No script error, and no Content-Security-Policy violation, on any page.
            assert [e for e in errors if "status of 503" not in e and "status of 4" not in e] == []
        finally:
            await browser.close()


async def assert_accessible(page: Page) -> None:
    """axe-core, run in the page, finds no serious or critical WCAG 2.1 A/AA violation."""
    assert AXE.is_file(), f"{AXE} is missing: run make setup (scripts/install_axe.py)"
    await page.evaluate(AXE.read_text(encoding="utf-8"))  # an evaluation: not subject to CSP
    result = await page.evaluate(
        """() => axe.run(document, {runOnly: {type: 'tag',
            values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})"""
    )
    assert result["passes"], "axe ran no rule"
    severe = [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]])
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert severe == [], severe


async def _fill(page: Page, form: dict[str, str]) -> None:
    for name, value in form.items():
        await page.fill(f"#{name}", value)


async def _state(db: asyncpg.Pool, registration_id: uuid.UUID, check: Check) -> str | None:
    state: str | None = await db.fetchval(
        "SELECT state FROM checks WHERE registration_id = $1 AND check_name = $2",
        registration_id,
        check.value,
    )
    return state


async def test_a_registrant_goes_through_the_page_from_the_form_to_the_line(
    settings: Settings, db: asyncpg.Pool, tmp_path: Path
) -> None:
    (person,) = population(
        1,
        seed=16,
        today=today_wib(),
        invalid_share=0,
        duplicate_share=0,
        proportions=NOBODY_SPECIAL,
    )
    fillers = [p.form for p in population(20, seed=161, today=today_wib(), invalid_share=0)]
    await db.execute("TRUNCATE contact_codes")
    # A persist queue of three: with no worker yet it fills, and the edge sheds (queue_full)
    # with a Retry-After of at most 3 s.
    tiny = settings.replace(
        persist_queue_max_length=3,
        edge_retry_after_max_s=3,
        edge_full_probe_interval_s=0.2,
        blob_dir=str(tmp_path / "blobs"),
    )
    broker = await aio_pika.connect(settings.amqp_url)
    channel = await broker.channel()
    await channel.queue_delete(topology.PERSIST_QUEUE)  # declared anew with the tiny limit
    config = SimulatorConfig(ports=Ports.ephemeral(), people=[person])
    try:
        async with (
            run_simulators(config) as sims,
            inprocess.served_edge(sims.wire(tiny)) as edge,
            aiohttp.ClientSession() as http,
            phone_browser(tmp_path) as (page, shot),
        ):
            wired = sims.wire(tiny)
            base = f"http://{edge.host}:{edge.port}"
            accepted_fillers = 0
            for form in fillers:  # fill the queue
                async with http.post(f"{base}/v1/registrations", json=form) as response:
                    if response.status == 503:
                        break
                    assert response.status == 202
                    accepted_fillers += 1
            assert edge.publisher.queue_full

            posts: list[Request] = []
            page.on(
                "request",
                lambda r: (
                    posts.append(r)
                    if r.method == "POST" and r.url.endswith("/v1/registrations")
                    else None
                ),
            )
            await page.goto(f"{base}/app/")
            await expect(page.locator("#register-heading")).to_have_text("Pendaftaran")
            await shot("form")
            await assert_accessible(page)

            # Every error at once, per field, in the page, before anything is sent.
            await _fill(
                page,
                {
                    **person.form,
                    "nik": "1234",
                    "email": "siti@",
                    "phone": "0712",
                    "full_name": "R2D2",
                },
            )
            await page.click("#register-submit")
            await expect(page.locator("#nik-error")).to_have_text(
                "NIK terdiri dari tepat 16 angka."
            )
            await expect(page.locator("#email-error")).to_have_text("Alamat email tidak valid.")
            await expect(page.locator("#phone-error")).to_contain_text("Nomor ponsel Indonesia")
            await expect(page.locator("#full_name-error")).to_have_text(
                "Hanya huruf, spasi, dan ' . , -"
            )
            await expect(page.locator("#birth_place-error")).to_have_text("")
            await expect(page.locator("#nik")).to_have_attribute("aria-invalid", "true")
            await expect(page.locator("#form-summary")).to_be_focused()
            await shot("errors-in-the-page")
            await assert_accessible(page)
            assert posts == []

            # The API's 422, shown per field: the request is altered on its way (the page
            # itself never sends what the API refuses).
            async def underage(route: Any) -> None:
                body = {**person.form, "birth_date": today_wib().isoformat(), "phone": "0712"}
                await route.continue_(post_data=json.dumps(body))

            await _fill(page, person.form)
            await page.route("**/v1/registrations", underage)
            await page.click("#register-submit")
            await expect(page.locator("#birth_date-error")).to_contain_text("18 tahun")
            await expect(page.locator("#phone-error")).to_contain_text("Nomor ponsel Indonesia")
            await expect(page.locator("#nik-error")).to_have_text("")
            await shot("errors-from-the-api")
            await page.unroute("**/v1/registrations", underage)

            # The queue is full: a 503 is a countdown, the form stays, and the page retries.
            posts.clear()
            await page.click("#register-submit")
            await expect(page.locator("#wait")).to_contain_text(re.compile(r"dalam [1-3] detik"))
            await expect(page.locator("#nik")).to_have_value(person.form["nik"])
            await shot("countdown")
            async with inprocess.persist_worker(wired, db), inprocess.dispatcher(wired, db):
                await expect(page.locator("#status-heading")).to_be_visible(timeout=60_000)
                keys = {r.headers.get("idempotency-key") for r in posts}
                assert len(posts) >= 2, "a 503 first, then its retry"
                assert len(keys) == 1, keys  # every try with the same Idempotency-Key
                assert None not in keys
                await shot("accepted")
                registration_id = uuid.UUID(
                    await page.evaluate(
                        "JSON.parse(localStorage.getItem('intake.registration')).id"
                    )
                )
                # Stored once: the page's registration, and the queue's three or four.
                await eventually(
                    lambda: db.fetchval("SELECT count(*) FROM registrations"),
                    lambda n: n == accepted_fillers + 1,
                )
                assert (
                    await db.fetchval(
                        "SELECT count(*) FROM registrations WHERE id = $1", registration_id
                    )
                    == 1
                )
                print(f"express path took {edge.express.taken if edge.express else 0}")

                async with inprocess.lanes(wired, db, LANES):
                    await _journey(
                        page,
                        shot,
                        sims,
                        db,
                        http,
                        base,
                        person,
                        registration_id,
                        PhotoVault(BlobStore(tmp_path / "blobs"), Keyring.from_settings(wired)),
                    )
    finally:
        await channel.queue_delete(topology.PERSIST_QUEUE)  # the next test declares it anew
        await broker.close()


async def _journey(
    page: Page,
    shot: Screens,
    sims: Any,
    db: asyncpg.Pool,
    http: aiohttp.ClientSession,
    base: str,
    person: Any,
    registration_id: uuid.UUID,
    vault: PhotoVault,
) -> None:
    # The email: a mail scanner fetches the link (GET, HEAD) and confirms nothing; the button
    # does.
    mails = await eventually(lambda: sims.mailbox.for_address(person.form["email"]), bool)
    (link,) = [link for link in mails[0].links if "/v1/verify/email" in link]
    token = URL(link).query["token"]
    page_link = f"{base}/v1/verify/email?token={token}"
    await eventually(lambda: _state(db, registration_id, Check.EMAIL), lambda s: s == "waiting")
    await expect(page.locator("#panel-email")).to_be_visible(timeout=15_000)
    await shot("status-email-waiting")
    for _ in range(3):
        async with http.get(page_link) as response:
            assert response.status == 200
            assert "text/html" in response.headers["Content-Type"]
        async with http.head(page_link) as response:
            assert response.status == 200
    assert await _state(db, registration_id, Check.EMAIL) == "waiting"
    status_page = page.url

    await page.goto(page_link)
    await expect(page.locator("#confirm")).to_be_visible()
    await shot("email-page")
    await assert_accessible(page)
    assert await _state(db, registration_id, Check.EMAIL) == "waiting"
    await page.click("#confirm")
    await expect(page.locator("#confirm-msg")).to_have_text(
        "Email Anda sudah dikonfirmasi. Terima kasih!"
    )
    await shot("email-confirmed")
    assert await _state(db, registration_id, Check.EMAIL) == "passed"

    # The SMS code: a wrong one, announced, then the right one.
    await page.goto(status_page)
    texts = await eventually(lambda: sims.outbox.for_number(person.form["phone"]), bool)
    (code,) = re.findall(r"\b[0-9]{6}\b", texts[0].text)
    await expect(page.locator("#otp-form")).to_be_visible(timeout=15_000)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    await page.fill("#otp", wrong)
    await page.click("#otp-form button[type=submit]")
    await expect(page.locator("#otp-error")).to_contain_text("Kode salah")
    await shot("code-wrong")
    await page.fill("#otp", code)
    await page.click("#otp-form button[type=submit]")
    await expect(page.locator("#otp-form")).to_be_hidden(timeout=15_000)
    assert await _state(db, registration_id, Check.PHONE) == "passed"

    # The selfie: a 2,048-pixel PNG, downscaled in the page to 1,280 pixels, uploaded.
    await expect(page.locator("#photo-form")).to_be_visible(timeout=30_000)
    big = encode(sample("astronaut").resize((2048, 2048)), "PNG")
    await page.set_input_files(
        "#photo", files=[FilePayload(name="selfie.png", mimeType="image/png", buffer=big)]
    )
    await expect(page.locator("#photo-preview")).to_be_visible()
    await shot("photo-chosen")
    await page.click("#photo-submit")
    await expect(page.locator("#photo-msg")).to_have_text(
        "Foto terkirim dan sedang diperiksa.", timeout=30_000
    )
    await shot("photo-uploaded")
    stored = await db.fetchrow(
        "SELECT blob_hmac, size_bytes FROM photos WHERE registration_id = $1", registration_id
    )
    assert stored is not None
    assert stored["size_bytes"] < len(big) / 4
    # The stored photo (sealed, named by a keyed hash), opened, is the page's downscaled JPEG.
    ref = BlobRef(stored["blob_hmac"], stored["size_bytes"])
    photo = await vault.open(db, ref, max_bytes=stored["size_bytes"])
    with Image.open(io.BytesIO(photo)) as image:
        assert image.format == "JPEG"
        assert max(image.size) == 1280

    # The status: each check's state, and the photo's place in its line (no photo lane runs).
    await expect(page.locator("#line")).to_contain_text(
        "Swafoto: Anda nomor 1 dalam antrean", timeout=30_000
    )
    await expect(page.locator("#checks")).to_contain_text("Email: lolos")
    await shot("status-in-line")
    await assert_accessible(page)
    await page.click("#lang")
    await expect(page.locator("#line")).to_contain_text("Selfie: you are number 1 in line")
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    await shot("status-in-english")


async def test_the_form_is_usable_with_the_keyboard_alone(
    settings: Settings, tmp_path: Path
) -> None:
    async with (
        inprocess.served_edge(settings) as edge,
        phone_browser(tmp_path) as (page, shot),
    ):
        await page.goto(f"http://{edge.host}:{edge.port}/app/")
        order: list[str] = []
        for _ in range(14):
            await page.keyboard.press("Tab")
            focused = await page.evaluate("document.activeElement.id")
            if not order or order[-1] != focused:
                order.append(focused)
            if focused == "register-submit":
                break
        assert order == [
            "lang",
            "nik",
            "full_name",
            "birth_place",
            "birth_date",
            "email",
            "phone",
            "register-submit",
        ]
        await page.keyboard.press("Enter")  # submits: every field is announced as required
        await expect(page.locator("#form-summary")).to_be_focused()
        await expect(page.locator("#form-summary li")).to_have_count(6)
        await shot("keyboard-required")
        # The page fits a 360-pixel screen: nothing scrolls sideways.
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"]


async def test_a_verified_registrant_takes_the_test_and_joins_the_wave(
    settings: Settings, db: asyncpg.Pool, tmp_path: Path
) -> None:
    keyring = Keyring.from_secret(settings.secret_key)
    registration_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO registrations (id, nik_hmac, nik_enc, personal_enc, status, submitted_at)"
        " VALUES ($1, $2, $3, $4, 'verified', now())",
        registration_id,
        os.urandom(32),
        b"nik",
        b"personal",
    )
    now = dt.datetime.now(dt.UTC)
    await Waves(db).create(
        "test",
        "gelombang-16",
        now - dt.timedelta(hours=1),
        now + dt.timedelta(hours=24),
        100,
        Policy(),
    )
    bank = questions.load()
    session = {
        "id": str(registration_id),
        "token": keyring.access_token(registration_id),
        "url": f"/v1/registrations/{registration_id}",
    }
    async with (
        inprocess.served_edge(settings) as edge,
        participation_worker(settings, keyring, db),
        phone_browser(tmp_path) as (page, shot),
    ):
        await page.goto(f"http://{edge.host}:{edge.port}/app/")
        await page.evaluate(
            "session => localStorage.setItem('intake.registration', JSON.stringify(session))",
            session,
        )
        await page.reload()
        await expect(page.locator("#status-summary")).to_have_text(
            "Selamat, data Anda lolos semua pemeriksaan."
        )
        await page.click("#test-start")
        await expect(page.locator("#questions fieldset")).to_have_count(19)
        await expect(page.locator("#test-timer")).to_contain_text("Sisa waktu")
        await shot("test")
        await assert_accessible(page)
        asked = await page.eval_on_selector_all(
            "#questions input[type=radio]", "inputs => inputs.map(i => i.name)"
        )
        for name in sorted(set(asked)):
            question_id = name.removeprefix("q-")
            answer = bank.question(question_id).answer
            await page.check(f"input[name='{name}'][value='{answer}']")
        await page.click("#test-form button[type=submit]")
        await expect(page.locator("#test-msg")).to_have_text("Nilai tes Anda: 100.", timeout=30_000)
        await expect(page.locator("#join-form")).to_be_visible()
        await shot("test-scored")
        await page.select_option("#situation", "small_business")
        await page.click("#join-form button[type=submit]")
        await expect(page.locator("#status-summary")).to_have_text(
            "Anda ikut gelombang gelombang-16. Hasil seleksi diumumkan setelah gelombang ditutup.",
            timeout=30_000,
        )
        await shot("joined")
        await assert_accessible(page)
    rows = await db.fetch("SELECT registration_id, situation FROM wave_joins")
    assert [(r["registration_id"], r["situation"]) for r in rows] == [
        (registration_id, "small_business")
    ]


@contextlib.asynccontextmanager
async def participation_worker(
    settings: Settings, keyring: Keyring, db: asyncpg.Pool
) -> AsyncIterator[ParticipationWorker]:
    running = ParticipationWorker(settings, keyring, db, questions.load())
    task = asyncio.create_task(running.run())
    try:
        yield running
    finally:
        running.stop()
        await asyncio.wait_for(task, 30)


async def test_a_rejection_is_said_in_words(
    settings: Settings, db: asyncpg.Pool, tmp_path: Path
) -> None:
    keyring = Keyring.from_secret(settings.secret_key)
    reasons = {"duplicate_nik": "NIK ini sudah terdaftar", "photo_no_face": "swafoto tidak"}
    async with inprocess.served_edge(settings) as edge, phone_browser(tmp_path) as (page, shot):
        await page.goto(f"http://{edge.host}:{edge.port}/app/")
        for reason, words in reasons.items():
            registration_id = uuid.uuid4()
            await db.execute(
                "INSERT INTO registrations (id, nik_hmac, nik_enc, personal_enc, status,"
                " reject_reason, submitted_at) VALUES ($1, $2, $3, $4, 'rejected', $5, now())",
                registration_id,
                os.urandom(32),
                b"nik",
                b"personal",
                reason,
            )
            session = {
                "id": str(registration_id),
                "token": keyring.access_token(registration_id),
                "url": f"/v1/registrations/{registration_id}",
            }
            await page.evaluate(
                "session => localStorage.setItem('intake.registration', JSON.stringify(session))",
                session,
            )
            await page.reload()
            await expect(page.locator("#status-summary")).to_contain_text(
                "Pendaftaran Anda ditolak: " + words
            )
            await shot(f"rejected-{reason}")
