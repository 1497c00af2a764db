"""One valid person, all the way: registered at the edge, stored, checked by every lane against
the simulators, the email link followed, the SMS code entered, the selfie uploaded: verified."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TypeVar

import asyncpg
from yarl import URL

from core.settings import Settings
from core.verification import Check
from intake.validation import today_wib
from simulators.population import Proportions, population
from simulators.server import Ports, SimulatorConfig, run_simulators
from tests.support import inprocess, openapi
from tests.support.photos import selfie
from tests.support.waiting import eventually

T = TypeVar("T")
NOBODY_SPECIAL = Proportions(
    not_found=0,
    mismatch_full_name=0,
    mismatch_birth_place=0,
    mismatch_birth_date=0,
    student=0,
    welfare=0,
)


async def test_a_valid_person_goes_all_the_way_to_verified(
    settings: Settings, db: asyncpg.Pool, tmp_path: Path
) -> None:
    (person,) = population(
        1,
        seed=5,
        today=today_wib(),
        invalid_share=0,
        duplicate_share=0,
        proportions=NOBODY_SPECIAL,
    )
    await db.execute("TRUNCATE contact_codes")
    config = SimulatorConfig(ports=Ports.ephemeral(), people=[person])
    async with run_simulators(config) as sims:
        wired = sims.wire(settings).replace(
            blob_dir=str(tmp_path / "blobs"),
        )
        async with (
            inprocess.edge(wired) as client,
            inprocess.persist_worker(wired, db),
            inprocess.dispatcher(wired, db),
            inprocess.lanes(wired, db, tuple(Check)),
        ):
            accepted = await (await client.post("/v1/registrations", json=person.form)).json()
            auth = {"Authorization": f"Bearer {accepted['access_token']}"}
            status_url = accepted["status_url"]

            async def status() -> dict[str, object]:
                response = await client.get(status_url, headers=auth)
                body: dict[str, object] = await response.json()
                return body

            mails = await eventually(lambda: sims.mailbox.for_address(person.form["email"]), bool)
            (link,) = [link for link in mails[0].links if "/v1/verify/email" in link]
            response = await client.post(
                "/v1/verify/email", params={"token": URL(link).query["token"]}
            )
            assert response.status == 200

            texts = await eventually(lambda: sims.outbox.for_number(person.form["phone"]), bool)
            (code,) = re.findall(r"\b[0-9]{6}\b", texts[0].text)
            response = await client.post(f"{status_url}/otp", json={"code": code}, headers=auth)
            assert response.status == 200

            await eventually(status, lambda s: "photo" in s.get("checks", {}))  # type: ignore[operator]
            response = await client.put(
                f"{status_url}/photo",
                data=selfie(),
                headers={**auth, "Content-Type": "image/jpeg"},
            )
            assert response.status == 202

            final = await eventually(status, lambda s: s["status"] != "received", 60)
    assert final["status"] == "verified", final
    openapi.validate("RegistrationStatus", final)
    checks = final["checks"]
    assert isinstance(checks, dict)
    assert {name: c["state"] for name, c in checks.items()} == {c.value: "passed" for c in Check}
    assert final["decided_at"] is not None
