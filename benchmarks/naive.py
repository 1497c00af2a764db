"""The naive synchronous design, as a baseline: the obvious web handler that failed in 2020.

``POST /v1/registrations`` does all the work inside the request, and answers only when it is
done: it validates the form (the edge's own :func:`intake.validation.validate`), then, in ONE
transaction on a pooled PostgreSQL connection, inserts the registration, calls Dukcapil's
``POST /v1/nik/verify`` (the request the Dukcapil lane sends), records the answer, commits, and
only then answers ``202`` with Dukcapil's result. The NIK is stored as a keyed HMAC and the form
encrypted with the project's own :class:`~core.keys.Keyring`, so that a registration costs the
same cryptography as in the real system.

It is written competently, with the project's frameworks (aiohttp, uvloop, orjson, asyncpg), so
that a comparison with the edge measures the design, not the code. The flaw is the design's
own: every request holds a database connection for as long as the ministry takes to answer, so
throughput is at most ``pool size / ministry latency``, a slow ministry fills the pool and the
requests queue up behind it, and a ministry outage turns into failed registrations (``502`` and
``504``): there is no queue, no retry and no shedding, on purpose.

    python -m benchmarks.naive --port 8098 --database-url postgresql://... \\
        --dukcapil-url http://127.0.0.1:8101 [--pool-size 20] [--ministry-timeout 10]

Answers: ``202 {"id", "status": "accepted", "dukcapil": "match"|"mismatch"|"not_found"}``;
``400`` bad JSON, ``413`` body too large, ``415`` not JSON, ``422`` invalid form (the edge's
problem document, with the field errors); ``502`` the ministry failed (an error status, a
broken connection, an answer that makes no sense), ``504`` it did not answer within
``--ministry-timeout``, ``503`` the database failed; after a 5xx nothing is stored.
``GET /readyz`` answers 200 once the pool is up. SIGTERM or SIGINT stops it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from dataclasses import dataclass

import aiohttp
import asyncpg
import orjson
import uvloop
from aiohttp import web

from core import logs
from core.envelope import Registration
from core.ids import uuid7
from core.keys import Keyring
from intake.problems import problem
from intake.validation import ValidationFailed, today_wib, validate

log = logging.getLogger("benchmarks.naive")  # not "__main__" when run with -m

# The master secret of the benchmark's keys when --secret-key is not given. PUBLIC: for
# benchmarks only, never for real personal data.
BENCHMARK_ONLY_SECRET_KEY = "benchmark-only-insecure-key-never-for-real-data-0000"  # noqa: S105
MAX_BODY_BYTES = 8 * 1024  # the edge's default limit

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS naive_registrations (
    id uuid PRIMARY KEY,
    nik_hmac bytea NOT NULL,
    payload bytea NOT NULL,
    dukcapil text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""
INSERT = (
    "INSERT INTO naive_registrations (id, nik_hmac, payload, dukcapil)"
    " VALUES ($1, $2, $3, 'pending')"
)
UPDATE = "UPDATE naive_registrations SET dukcapil = $2 WHERE id = $1"


@dataclass(frozen=True, slots=True)
class Config:
    database_url: str
    dukcapil_url: str
    pool_size: int = 20
    ministry_timeout_s: float = 10.0
    secret_key: str = BENCHMARK_ONLY_SECRET_KEY


class MinistryFailed(Exception):
    """Dukcapil gave no usable answer: ``status`` is what the client is answered."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class NaiveServer:
    """The handlers, over one connection pool and one HTTP client session."""

    def __init__(self, config: Config, pool: asyncpg.Pool, session: aiohttp.ClientSession) -> None:
        self._pool = pool
        self._session = session
        self._keyring = Keyring.from_secret(config.secret_key)
        self._verify_url = config.dukcapil_url.rstrip("/") + "/v1/nik/verify"
        self._timeout = aiohttp.ClientTimeout(total=config.ministry_timeout_s)

    def create_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/registrations", self.register)
        app.router.add_get("/readyz", self.readyz)
        return app

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        # Served only once the pool is up (see serve()).
        return web.Response(body=b'{"status":"ready"}', content_type="application/json")

    async def register(self, request: web.Request) -> web.StreamResponse:
        if request.content_type != "application/json":
            return problem(415, "unsupported-media-type", "The body must be application/json")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return problem(413, "too-large", "The body is too large")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return problem(400, "malformed-json", "The body is not valid JSON")
        try:
            registration = validate(body, today_wib())
        except ValidationFailed as exc:
            return problem(
                422, "invalid-registration", "The registration is invalid", errors=exc.errors
            )

        registration_id = uuid7()
        nik_hmac = self._keyring.nik_hmac(registration.nik)
        payload = self._keyring.encrypt(_form_json(registration), registration_id.bytes)
        try:
            # The design under test: the connection and its transaction stay open while the
            # ministry is asked; a failure rolls the row back.
            async with self._pool.acquire() as connection, connection.transaction():
                await connection.execute(INSERT, registration_id, nik_hmac, payload)
                result = await self._dukcapil(registration)
                await connection.execute(UPDATE, registration_id, result)
        except MinistryFailed as exc:
            return problem(
                exc.status, "ministry-failed", "Dukcapil did not answer", reason=exc.reason
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("database failed: %s", type(exc).__name__)
            return problem(503, "database-failed", "The database failed")
        return web.Response(
            status=202,
            body=orjson.dumps(
                {"id": str(registration_id), "status": "accepted", "dukcapil": result}
            ),
            content_type="application/json",
        )

    async def _dukcapil(self, registration: Registration) -> str:
        """Dukcapil's word on the form: "match", "mismatch" or "not_found"; else
        :class:`MinistryFailed`. Nothing about the registrant is logged."""
        request = {
            "nik": registration.nik,
            "full_name": registration.full_name,
            "birth_place": registration.birth_place,
            "birth_date": registration.birth_date.isoformat(),
        }
        try:
            async with self._session.post(
                self._verify_url,
                data=orjson.dumps(request),
                headers={"Content-Type": "application/json"},
                timeout=self._timeout,
            ) as response:
                raw = await response.read()  # read whole, so the connection can be reused
                status = response.status
        except TimeoutError:
            raise MinistryFailed(504, "timeout") from None
        except aiohttp.ClientError as exc:
            raise MinistryFailed(502, f"unreachable:{type(exc).__name__}") from None
        if status == 404:
            return "not_found"
        if status != 200:
            raise MinistryFailed(502, f"http_{status}")
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise MinistryFailed(502, "unexpected_answer") from None
        result = answer.get("result") if isinstance(answer, dict) else None
        if result in ("match", "mismatch"):
            return str(result)
        raise MinistryFailed(502, "unexpected_answer")


def _form_json(registration: Registration) -> bytes:
    """The normalised form, NIK included, as the plaintext stored encrypted."""
    return orjson.dumps(
        {
            "nik": registration.nik,
            "full_name": registration.full_name,
            "birth_place": registration.birth_place,
            "birth_date": registration.birth_date,
            "email": registration.email,
            "phone": registration.phone,
        }
    )


async def serve(host: str, port: int, config: Config) -> None:
    pool = await asyncpg.create_pool(
        config.database_url,
        min_size=config.pool_size,
        max_size=config.pool_size,
        server_settings={"application_name": "naive-benchmark"},
    )
    try:
        async with pool.acquire() as connection:
            await connection.execute(CREATE_TABLE)
        # The database pool already bounds the calls in flight to the ministry.
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            server = NaiveServer(config, pool, session)
            runner = web.AppRunner(server.create_app(), access_log=None, handle_signals=False)
            await runner.setup()
            try:
                await web.TCPSite(runner, host, port).start()
                log.info("naive server ready", extra={"fields": {"port": port}})
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, stop.set)
                await stop.wait()
                log.info("naive server stopping")
            finally:
                await runner.cleanup()  # lets the requests in progress finish
    finally:
        await pool.close()
    log.info("naive server stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--dukcapil-url", required=True)
    parser.add_argument("--pool-size", type=int, default=20)
    parser.add_argument(
        "--ministry-timeout", type=float, default=10.0, help="seconds for one Dukcapil call"
    )
    parser.add_argument(
        "--secret-key",
        default=BENCHMARK_ONLY_SECRET_KEY,
        help="master secret of the keys (default: a public, benchmark-only key)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.pool_size < 1:
        parser.error("--pool-size must be at least 1")
    if not args.ministry_timeout > 0:
        parser.error("--ministry-timeout must be positive")
    logs.configure("naive", args.log_level)
    config = Config(
        database_url=args.database_url,
        dukcapil_url=args.dukcapil_url,
        pool_size=args.pool_size,
        ministry_timeout_s=args.ministry_timeout,
        secret_key=args.secret_key,
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.host, args.port, config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
