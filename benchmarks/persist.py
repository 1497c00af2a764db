"""Persist worker throughput: rows per second stored by ONE ``intake worker`` process.

For each batch size (registrations per AMQP message; by default 100, and 10, the size the edge
produces at moderate load):

1. a fresh database ``intake_bench`` is created (as the project's role) and the queue
   ``intake.registrations`` of a dedicated RabbitMQ vhost ``intake_bench`` is pre-filled with
   ``--count`` registrations with unique valid NIKs, packed and sealed exactly as the edge's
   publisher does (``core.envelope.join_batch`` + ``Keyring.seal_message``, persistent,
   mandatory, confirmed);
2. one ``intake worker`` process is started (it migrates the database itself) and the table is
   polled until every registration is stored;
3. the rate is taken from the rows' own ``stored_at`` (the start time of the transaction that
   wrote each row): ``(N - rows of the last transaction) / (max(stored_at) - min(stored_at))``,
   i.e. the rows of all complete transactions over the time from the first transaction's start
   to the last one's. Worker start-up and migration are not counted. Goal: >= 10,000 rows/s.
4. no loss: the table must hold exactly N rows, all ``received`` with their N NIK claims, and
   the queue and its dead-letter queue must be empty.

The database and the vhost are dropped at the end, also on failure.

    .venv/bin/python -m benchmarks.persist [--count 200000] [--per-message 100,10]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import signal
import time
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg

from benchmarks._support import (
    BENCH_DATABASE,
    BENCH_VHOST,
    RESULTS_DIR,
    BenchError,
    create_vhost,
    delete_vhost,
    machine_info,
    markdown_table,
    progress,
    purge_queue,
    run_benchmark,
    tail,
    venv_bin,
    with_path,
)
from core import envelope, topology
from core.envelope import Envelope, Registration
from core.ids import uuid7
from core.keys import Keyring
from core.settings import Settings

_BIRTH_DATE = dt.date(1990, 5, 17)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def unique_nik(index: int) -> str:
    """A valid NIK, distinct for every ``index`` below 98 million (born 17 May 1990)."""
    serial = index % 9999 + 1
    district = (index // 9999) % 99 + 1
    regency = (index // (9999 * 99)) % 99 + 1
    return f"31{regency:02d}{district:02d}170590{serial:04d}"


def build_bodies(count: int, per_message: int, keyring: Keyring) -> list[tuple[bytes, int]]:
    """Sealed batch bodies (and how many registrations each holds), as the edge builds them."""
    now = dt.datetime.now(dt.UTC)
    bodies: list[tuple[bytes, int]] = []
    for start in range(0, count, per_message):
        items = [
            Envelope(
                uuid7(),
                now,
                Registration(
                    nik=unique_nik(i),
                    full_name="Siti Rahayu",
                    birth_place="Jakarta",
                    birth_date=_BIRTH_DATE,
                    email=f"peserta{i}@example.com",
                    phone=f"+628{1_000_000_000 + i}",
                ),
            ).to_json()
            for i in range(start, min(start + per_message, count))
        ]
        sealed = keyring.seal_message(envelope.join_batch(items), envelope.BATCH_SEAL_CONTEXT)
        bodies.append((sealed, len(items)))
    return bodies


async def prefill(settings: Settings, bodies: list[tuple[bytes, int]]) -> int:
    """Publish every body, confirmed; return the queue's message count afterwards."""
    connection = await aio_pika.connect(settings.amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        declared = await topology.declare(channel, settings)
        window = asyncio.Semaphore(256)
        done = 0
        step = max(1, len(bodies) // 5)

        async def publish(body: bytes, items: int) -> None:
            nonlocal done
            message = aio_pika.Message(
                body,
                content_type=envelope.BATCH_CONTENT_TYPE,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers={"schema_version": envelope.SCHEMA_VERSION, "count": items},
            )
            async with window:
                await declared.exchange.publish(
                    message, topology.PERSIST_ROUTING_KEY, mandatory=True
                )
            done += 1
            if done % step == 0:
                progress(f"  published {done:,}/{len(bodies):,} messages")

        await asyncio.gather(*(publish(body, items) for body, items in bodies))
        return await _message_count(channel, topology.PERSIST_QUEUE)


async def _message_count(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    result = declared.declaration_result
    return int(result.message_count or 0)


async def queue_counts(settings: Settings) -> dict[str, int]:
    connection = await aio_pika.connect(settings.amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        return {
            name: await _message_count(channel, name)
            for name in (topology.PERSIST_QUEUE, topology.PERSIST_DLQ)
        }


async def recreate_database(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def drop_database(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def stored_rows(connection: asyncpg.Connection) -> int:
    try:
        value = await connection.fetchval("SELECT count(*) FROM registrations")
    except asyncpg.UndefinedTableError:
        return 0  # the worker has not migrated yet
    return int(value)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def cpu_snapshot(worker_pid: int) -> tuple[float, dict[str, float]]:
    """(monotonic time, CPU seconds so far of the worker, of PostgreSQL and of RabbitMQ).

    PostgreSQL and RabbitMQ are summed over all their processes, so on a shared machine they
    include other clients' work too: read them as an upper bound.
    """
    totals = {"worker": cpu_seconds(worker_pid), "postgres": 0.0, "rabbitmq": 0.0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # the process is gone
        name = text[text.find("(") + 1 : text.rfind(")")]
        group = {"postgres": "postgres", "beam.smp": "rabbitmq"}.get(name)
        if group is not None:
            fields = text.rpartition(")")[2].split()
            totals[group] += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return time.perf_counter(), totals


async def stop_worker(process: asyncio.subprocess.Process) -> int:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            progress("worker ignored SIGTERM for 30 s: SIGKILL")
            process.kill()
            await process.wait()
    return int(process.returncode or 0)


async def measure(
    settings: Settings, count: int, per_message: int, args: argparse.Namespace, run_no: int
) -> dict[str, Any]:
    """One pre-fill + one worker run; returns the figures of that run."""
    admin_url = settings.database_url
    bench = settings.replace(
        amqp_url=with_path(settings.amqp_url, BENCH_VHOST),
        database_url=with_path(settings.database_url, BENCH_DATABASE),
    )
    messages = -(-count // per_message)
    if messages > bench.persist_queue_max_length:
        raise BenchError(
            f"{messages:,} messages exceed the queue's x-max-length "
            f"({bench.persist_queue_max_length:,}, counted in messages): raise --per-message"
        )
    progress(f"run {run_no}: fresh database {BENCH_DATABASE}")
    await recreate_database(admin_url, BENCH_DATABASE)
    try:
        keyring = Keyring.from_secret(bench.secret_key)
        progress(f"building {count:,} registrations, {per_message} per message")
        bodies = build_bodies(count, per_message, keyring)
        total_bytes = sum(len(body) for body, _ in bodies)
        if total_bytes > bench.persist_queue_max_bytes:
            raise BenchError(
                f"{total_bytes:,} bytes exceed the queue's x-max-length-bytes "
                f"({bench.persist_queue_max_bytes:,}): lower --count"
            )
        progress(f"publishing {messages:,} sealed messages to {BENCH_VHOST}")
        started = time.perf_counter()
        queued = await prefill(bench, bodies)
        publish_s = time.perf_counter() - started
        del bodies
        if queued != messages:
            raise BenchError(f"queue holds {queued:,} messages after pre-fill, not {messages:,}")
        progress(f"queue holds {queued:,} messages ({count / publish_s:,.0f} registrations/s)")
        return await _run_worker(bench, count, per_message, messages, args)
    finally:
        await drop_database(admin_url, BENCH_DATABASE)


async def _run_worker(
    bench: Settings, count: int, per_message: int, messages: int, args: argparse.Namespace
) -> dict[str, Any]:
    log_path = RESULTS_DIR / "logs" / "persist-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        INTAKE_AMQP_URL=bench.amqp_url,
        INTAKE_DATABASE_URL=bench.database_url,
        INTAKE_SECRET_KEY=bench.secret_key,
    )
    command = [venv_bin("intake"), "worker", "persist"]
    if args.cpu is not None:
        command = ["taskset", "-c", args.cpu, *command]
    for assignment in args.worker_env:
        name, _, value = assignment.partition("=")
        env[name] = value
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *command,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
    progress(f"worker started (pid {process.pid}{', core ' + args.cpu if args.cpu else ''})")
    connection: asyncpg.Connection | None = None
    try:
        connection = await asyncpg.connect(bench.database_url)
        stored, last, last_t = 0, 0, time.perf_counter()
        first_snapshot: tuple[float, dict[str, float]] | None = None
        stalled_since = time.perf_counter()
        deadline = time.perf_counter() + args.timeout
        while stored < count:
            await asyncio.sleep(args.poll)
            if process.returncode is not None:
                raise BenchError(f"worker exited with {process.returncode}:\n{tail(log_path)}")
            stored = await stored_rows(connection)
            now = time.perf_counter()
            snapshot = cpu_snapshot(process.pid)
            if stored > 0 and first_snapshot is None:
                first_snapshot = snapshot
            if stored > last:
                progress(
                    f"  stored {stored:,}/{count:,} rows "
                    f"({(stored - last) / (now - last_t):,.0f} rows/s over the last poll)"
                )
                stalled_since = now
            elif now - stalled_since > args.stall_timeout:
                raise BenchError(
                    f"no progress for {args.stall_timeout:g} s at {stored:,}/{count:,} rows"
                    f"\n{tail(log_path)}"
                )
            if now > deadline:
                raise BenchError(f"not done within {args.timeout:g} s ({stored:,}/{count:,})")
            last, last_t = stored, now
        row = await connection.fetchrow(
            "SELECT count(*) AS rows, count(DISTINCT id) AS ids,"
            " count(*) FILTER (WHERE status = 'received') AS received,"
            " min(stored_at) AS first, max(stored_at) AS last,"
            " count(DISTINCT stored_at) AS transactions,"
            " count(*) FILTER (WHERE stored_at = (SELECT max(stored_at) FROM registrations))"
            " AS last_transaction_rows"
            " FROM registrations"
        )
        claims = int(await connection.fetchval("SELECT count(*) FROM nik_claims"))
    finally:
        if connection is not None:
            await connection.close()
        code = await stop_worker(process)
        progress(f"worker stopped (exit {code})")
    queues = await queue_counts(bench)
    span_s = (row["last"] - row["first"]).total_seconds()
    rows_timed = int(row["rows"]) - int(row["last_transaction_rows"])
    rate = rows_timed / span_s if span_s > 0 else float("nan")
    lost = count - int(row["received"])
    ok = (
        int(row["rows"]) == count
        and int(row["ids"]) == count
        and int(row["received"]) == count
        and claims == count
        and queues[topology.PERSIST_QUEUE] == 0
        and queues[topology.PERSIST_DLQ] == 0
    )
    # CPU used between the first poll that saw rows and the last one, as a share of one core.
    cpu_share: dict[str, float] = {}
    if first_snapshot is not None and snapshot[0] > first_snapshot[0]:
        wall_s = snapshot[0] - first_snapshot[0]
        cpu_share = {
            name: round((snapshot[1][name] - first_snapshot[1][name]) / wall_s, 3)
            for name in snapshot[1]
        }
    result = {
        "per_message": per_message,
        "registrations": count,
        "messages": messages,
        "rows": int(row["rows"]),
        "received": int(row["received"]),
        "nik_claims": claims,
        "queues_after": queues,
        "lost": lost,
        "verified": ok,
        "first_stored_at": row["first"].isoformat(),
        "last_stored_at": row["last"].isoformat(),
        "span_s": round(span_s, 3),
        "transactions": int(row["transactions"]),
        "rows_per_transaction": round(int(row["rows"]) / int(row["transactions"]), 1),
        "rows_per_s": round(rate, 1),
        "cpu_share": cpu_share,
        "worker_exit_code": code,
    }
    progress(
        f"  {rate:,.0f} rows/s over {span_s:.2f} s, {result['transactions']:,} transactions, "
        f"verified: {ok}"
    )
    if not ok:
        raise BenchError(f"verification failed: {result}")
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings.from_env()
    runs: list[dict[str, Any]] = []
    progress(f"creating RabbitMQ vhost {BENCH_VHOST}")
    create_vhost(BENCH_VHOST)
    try:
        for run_no, per_message in enumerate(args.per_message, start=1):
            if run_no > 1:
                purge_queue(BENCH_VHOST, topology.PERSIST_QUEUE)
            runs.append(await measure(settings, args.count, per_message, args, run_no))
    finally:
        progress(f"deleting vhost {BENCH_VHOST} (database {BENCH_DATABASE} already dropped)")
        delete_vhost(BENCH_VHOST)
    overrides = dict(item.partition("=")[::2] for item in args.worker_env)
    worker_settings = Settings.from_env({**os.environ, **overrides})
    return {
        "benchmark": "persist",
        "machine": machine_info(),
        "config": {
            "count": args.count,
            "per_message": args.per_message,
            "cpu": args.cpu,
            "worker_env": args.worker_env,
            "persist_prefetch": worker_settings.persist_prefetch,
            "persist_batch_max_rows": worker_settings.persist_batch_max_rows,
            "persist_batch_linger_s": worker_settings.persist_batch_linger_s,
            "vhost": BENCH_VHOST,
            "database": BENCH_DATABASE,
        },
        "runs": runs,
    }


def report(results: dict[str, Any]) -> str:
    runs = results["runs"]
    header = ["figure", *(f"{r['per_message']} per message" for r in runs)]
    rows = [
        [
            "registrations (N) / messages",
            *(f"{r['registrations']:,} / {r['messages']:,}" for r in runs),
        ],
        [
            "**rows/s, one worker** (goal >= 10,000)",
            *(f"**{r['rows_per_s']:,.0f}**" for r in runs),
        ],
        ["first to last transaction (s)", *(f"{r['span_s']:.2f}" for r in runs)],
        [
            "transactions / rows per transaction",
            *(f"{r['transactions']:,} / {r['rows_per_transaction']:,.1f}" for r in runs),
        ],
        [
            "CPU while storing, share of one core: worker / postgres / rabbitmq",
            *(" / ".join(f"{v:.0%}" for v in r["cpu_share"].values()) or "-" for r in runs),
        ],
        [
            "stored rows / received / NIK claims (no loss)",
            *(f"{r['rows']:,} / {r['received']:,} / {r['nik_claims']:,}" for r in runs),
        ],
        [
            "queue / DLQ messages left",
            *(" / ".join(str(v) for v in r["queues_after"].values()) for r in runs),
        ],
    ]
    config = results["config"]
    note = (
        f"worker settings: prefetch {config['persist_prefetch']} messages, "
        f"batch up to {config['persist_batch_max_rows']:,} rows or "
        f"{config['persist_batch_linger_s'] * 1000:g} ms linger; "
        f"cpu pinning: {config['cpu'] or 'none'}"
    )
    if config["worker_env"]:
        note += f"; worker environment: {' '.join(config['worker_env'])}"
    return markdown_table(header, rows) + "\n\n- " + note


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of integers") from None
    if not sizes or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError("sizes must be positive")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--count", type=int, default=200_000, help="registrations per run")
    parser.add_argument(
        "--per-message", type=_sizes, default=[100, 10], help="registrations per AMQP message"
    )
    parser.add_argument("--cpu", default=None, help="pin the worker with taskset -c CPU")
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the worker, e.g. INTAKE_PERSIST_PREFETCH=300 (repeatable)",
    )
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between count polls")
    parser.add_argument(
        "--stall-timeout", type=float, default=60.0, help="fail after this long without progress"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="fail after this long")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be positive")
    code, _ = run_benchmark("persist", lambda: run(args), report)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
