"""The project's image (Containerfile, ``make image``): built as a user builds it, then
``intake edge`` and ``intake worker persist`` run from it as an orchestrator runs them (uid
10001, a read-only root filesystem, writable ``/tmp`` and blob volume), against this run's own
RabbitMQ vhost and PostgreSQL database; a registration goes through and is stored once."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from core.settings import Settings
from tests.support.people import person
from tests.support.processes import free_port
from tests.support.stored import stored_once
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/prakerja-intake:test"
BLOBS = "/var/lib/intake/blobs"  # the image's INTAKE_BLOB_DIR


def _engine() -> str:
    """The engine scripts/image.sh built with: podman where there is one (it installs podman
    unless a docker daemon answers)."""
    engine = shutil.which("podman") or shutil.which("docker")
    assert engine, "no container engine: scripts/image.sh installs podman (run make image)"
    return engine


def _run(argv: list[str], timeout_s: float) -> str:
    env = {**os.environ, "CONTAINERS_CONF": str(ROOT / "scripts" / "containers.conf")}
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout_s, check=False, env=env
    )
    assert done.returncode == 0, f"{argv}: {done.stdout[-4000:]}{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def image() -> str:
    """The image, built by the script behind ``make image`` (the base image and the engine
    are set up by it where missing; the first build takes minutes, later ones seconds)."""
    env = {**os.environ, "INTAKE_IMAGE": IMAGE}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "image.sh")],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return IMAGE


@pytest.fixture
def containers() -> Iterator[list[str]]:
    """Names of the containers a test starts; every one is removed at the end."""
    names: list[str] = []
    yield names
    for name in names:
        subprocess.run([_engine(), "rm", "--force", name], capture_output=True, check=False)


def test_the_image_is_small_and_runs_as_an_unprivileged_user(image: str) -> None:
    engine = _engine()
    user = _run([engine, "image", "inspect", "--format", "{{.Config.User}}", image], 60)
    assert user.strip() == "10001:10001"
    # intake is the entry point; no pip, no compiler, no sources in the image.
    assert "edge" in _run([engine, "run", "--rm", "--read-only", image, "--help"], 120)
    probe = (
        "import importlib.util as u, shutil;"
        "print(u.find_spec('pip'), shutil.which('gcc'), u.find_spec('pytest'))"
    )
    found = _run([engine, "run", "--rm", "--entrypoint", "python3", image, "-c", probe], 120)
    assert found.split() == ["None", "None", "None"]


async def test_a_registration_goes_through_the_edge_and_worker_run_from_the_image(
    image: str, settings: Settings, db: asyncpg.Pool, containers: list[str]
) -> None:
    engine = _engine()
    port = free_port()
    env = settings.replace(edge_host="127.0.0.1", edge_port=port, blob_dir=BLOBS).to_env()
    run_id = uuid.uuid4().hex[:8]
    for role in (["edge"], ["worker", "persist"]):
        name = f"intake-test-{role[-1]}-{run_id}"
        containers.append(name)
        _run(
            [
                engine,
                "run",
                "--detach",
                "--name",
                name,
                "--network=host",
                "--read-only",
                "--tmpfs=/tmp",
                f"--tmpfs={BLOBS}:mode=1777",
                *(f"--env={key}={value}" for key, value in env.items()),
                image,
                *role,
            ],
            120,
        )
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:

        async def ready() -> int:
            try:
                async with session.get(f"{base}/readyz") as response:
                    return response.status
            except aiohttp.ClientError:
                return 0

        await eventually(ready, lambda status: status == 200, 60)
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        async with session.post(
            f"{base}/v1/registrations", json=person(1), headers=headers
        ) as response:
            assert response.status == 202, await response.text()
            accepted = uuid.UUID((await response.json())["id"])
    await stored_once(db, {accepted}, only=True)
    # The processes in the containers run as the image's user.
    for name in containers:
        assert _run([engine, "exec", name, "id", "-u"], 60).strip() == "10001"
