"""The real RabbitMQ and PostgreSQL the tests run against, each test run in its own vhost and
database. A missing service fails the run with a pointer to ``make setup``; nothing skips."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess

import asyncpg

AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672
PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_ADMIN_URL = os.environ.get(
    "INTAKE_TEST_PG_ADMIN_URL", "postgresql://intake:intake@127.0.0.1:5432/intake"
)


class ServiceMissing(RuntimeError):
    pass


def require_port(name: str, host: str, port: int) -> None:
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        message = f"{name} is not reachable on {host}:{port} ({exc}); run `make setup`"
        raise ServiceMissing(message) from None


def rabbitmqctl(*args: str) -> str:
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        raise ServiceMissing("rabbitmqctl not found; run `make setup`")
    done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def create_vhost(name: str) -> str:
    require_port("RabbitMQ", AMQP_HOST, AMQP_PORT)
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{name}"


def delete_vhost(name: str) -> None:
    rabbitmqctl("delete_vhost", name)


def create_database(name: str) -> str:
    require_port("PostgreSQL", PG_HOST, PG_PORT)

    async def go() -> None:
        connection = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    asyncio.run(go())
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


def drop_database(name: str) -> None:
    async def go() -> None:
        connection = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()

    asyncio.run(go())
