"""The ``intake`` command: one entry point for every process of the system.

    intake edge                 the HTTP intake edge
    intake worker [KIND]        a worker: persist (default), dispatch, a verification lane,
                                or participation (test answers and wave joins), waves (the
                                selection at a close), notify (the outcomes)
    intake supervise [KIND...]  the worker fleet on this machine, autoscaled (default: all kinds)
    intake migrate              apply database migrations and exit
    intake dlq list|replay      inspect or replay dead-letter queues
    intake keys status|reencrypt
                                ciphertexts by key version; rewrite them under the current one
    intake retention run        erase the personal data whose purpose ended (--dry-run: count)
    intake person export|erase  one person's data, found by NIK: all of it as JSON; erased
    intake waves ...            create, list, show, open, close waves; a selection; the audit log
    intake lanes ...            force a lane's breaker; registries' maintenance windows
    intake admin [token NAME]   the operators' admin API (or a new bearer token)
    intake simulate [...]       the ministry simulators (``intake simulate --help``)
    intake demo                 start a local stack and replay a small wave opening

Settings come from ``INTAKE_*`` environment variables (see the README). Sub-commands import
their package lazily, so the edge never loads worker code and the reverse. This module sits
above every other package (nothing imports it), so ``core`` stays at the bottom.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from core import logs
from core.settings import Settings, SettingsError
from core.verification import WORKER_KINDS


def _edge(settings: Settings, args: argparse.Namespace) -> int:
    from intake.server import run

    try:
        run(settings)
    except SettingsError as exc:
        print(f"intake edge: {exc}", file=sys.stderr)
        return 2
    return 0


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    import uvloop

    from core import metrics
    from core.verification import Check

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            if args.lane == "persist":
                from workers.persist import serve as persist

                runner.run(persist(settings))
            elif args.lane == "dispatch":
                from workers.dispatch import serve as dispatch

                runner.run(dispatch(settings))
            elif args.lane == "participation":
                from workers.participation import serve as participation

                runner.run(participation(settings))
            elif args.lane == "waves":
                from workers.selection import serve as selection

                runner.run(selection(settings))
            elif args.lane == "notify":
                from workers.notify import serve as notify

                runner.run(notify(settings))
            else:
                from workers.lane import serve as lane

                runner.run(lane(settings, Check(args.lane)))
    finally:
        metrics.process_exiting()
    return 0


def _supervise(settings: Settings, args: argparse.Namespace) -> int:
    # The supervisor gives its workers a multiprocess directory of its own and reads its own
    # figures from its plan: its process must not be in prometheus-client's multiprocess mode,
    # which is chosen from the environment when prometheus_client is first imported (below).
    for name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
        os.environ.pop(name, None)
    import uvloop

    from workers.supervisor import serve

    unknown = sorted(set(args.kinds) - set(WORKER_KINDS))
    if unknown:
        print(
            f"intake supervise: unknown kinds {unknown}; choose from {WORKER_KINDS}",
            file=sys.stderr,
        )
        return 2
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(settings, args.kinds or WORKER_KINDS, args.run_dir, args.log_dir))
    except SettingsError as exc:
        print(f"intake supervise: {exc}", file=sys.stderr)
        return 2
    return 0


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    import asyncpg

    from core.migrate import migrate

    async def go() -> None:
        connection = await asyncpg.connect(settings.database_url)
        try:
            applied = await migrate(connection)
        finally:
            await connection.close()
        print(f"applied {len(applied)} migration(s)")

    asyncio.run(go())
    return 0


def _dlq(settings: Settings, args: argparse.Namespace) -> int:
    import orjson

    from workers import dlq

    if args.action == "list":
        report = asyncio.run(dlq.list_dead_letters(settings, sample=args.sample))
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return 0
    moved = asyncio.run(dlq.replay(settings, args.queue, args.limit))
    print(f"replayed {moved} message(s) from {args.queue}")
    return 0


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    import asyncpg

    from core import rotation
    from core.blobs import BlobStore
    from core.keys import DecryptionError, Keyring
    from core.photo_vault import PhotoVault

    keyring = Keyring.from_settings(settings)
    photos = PhotoVault(BlobStore(Path(settings.blob_dir)), keyring)

    async def go() -> int:
        async with asyncpg.create_pool(settings.database_url, min_size=1, max_size=1) as pool:
            if args.action == "status":
                print(f"current key version: {keyring.current}; readable: {keyring.versions}")
                for column, version, count in await rotation.versions(pool):
                    print(f"{column}\tversion {version}\t{count}")
                return 0
            progress = await rotation.reencrypt(
                pool,
                keyring,
                batch_size=args.batch,
                max_batches=args.max_batches,
                pause_s=args.pause_s,
                photos=photos,
            )
        print(
            f"re-encrypted under version {keyring.current}: {progress.registrations}"
            f" registration(s), {progress.photo_keys} photo key(s) in {progress.batches}"
            f" batch(es); {progress.clear_photos_sealed} photo(s) stored in clear sealed;"
            f" {progress.skipped} left (changed meanwhile, or no clear file);"
            f" {'done' if progress.done else 'not done: run it again to go on'}"
        )
        return 0

    try:
        return asyncio.run(go())
    except DecryptionError:
        print(
            "intake keys: a stored ciphertext is under a key version not listed in"
            " INTAKE_SECRET_KEY/INTAKE_SECRET_KEYS (or was altered); nothing more was rewritten",
            file=sys.stderr,
        )
        return 1


def _retention(settings: Settings, args: argparse.Namespace) -> int:
    import datetime as dt

    import asyncpg
    import orjson

    from core import retention
    from core.blobs import BlobStore

    async def go() -> int:
        async with asyncpg.create_pool(settings.database_url, min_size=1, max_size=2) as pool:
            report = await retention.run(
                pool,
                BlobStore(Path(settings.blob_dir)),
                retention.Periods.from_settings(settings),
                batch=args.batch or settings.retention_batch,
                dry_run=args.dry_run,
                max_batches=args.max_batches,
                files=args.sweep_files,
                files_every=(
                    dt.timedelta(days=args.sweep_files_every) if args.sweep_files_every else None
                ),
            )
        print(orjson.dumps(report.to_obj()).decode())
        return 0

    return asyncio.run(go())


def _person(settings: Settings, args: argparse.Namespace) -> int:
    import getpass

    import asyncpg

    from core import person
    from core.blobs import BlobStore
    from core.keys import Keyring
    from core.photo_vault import PhotoVault

    keyring = Keyring.from_settings(settings)
    blobs = BlobStore(Path(settings.blob_dir))
    actor = f"cli:{getpass.getuser()}"
    nik = args.nik if args.nik != "-" else sys.stdin.readline().strip()
    try:
        person.nik_hmac(keyring, nik)
    except person.InvalidNik as exc:
        print(f"intake person: {exc}", file=sys.stderr)
        return 2

    async def go() -> int:
        async with asyncpg.create_pool(settings.database_url, min_size=1, max_size=2) as pool:
            if args.action == "export":
                async with pool.acquire() as connection, connection.transaction():
                    document = await person.export(
                        connection,
                        keyring,
                        PhotoVault(blobs, keyring),
                        nik,
                        actor=actor,
                        max_photo_bytes=settings.photo_max_bytes,
                    )
                output = person.dumps(document)
                if args.output is None:
                    sys.stdout.buffer.write(output + b"\n")
                else:
                    args.output.write_bytes(output + b"\n")
                return 0 if document["registrations"] else 1
            result = await person.erase_now(
                pool, keyring, blobs, nik, actor=actor, reason=args.reason
            )
            print(person.dumps(result).decode())
            return 0 if result["registrations"] else 1

    return asyncio.run(go())


def _waves(settings: Settings, args: argparse.Namespace) -> int:
    from admin.commands import waves_command

    return waves_command(settings, args)


def _lanes(settings: Settings, args: argparse.Namespace) -> int:
    from admin.commands import lanes_command

    return lanes_command(settings, args)


def _admin(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "token":
        from admin.commands import new_token

        token, entry = new_token(args.name)
        print(f"token (give it to the operator, once): {token}")
        print(f"INTAKE_ADMIN_TOKENS entry (the server keeps only this): {entry}")
        return 0
    from admin.app import run

    run(settings)
    return 0


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from demo.run import main as demo_main

    # Options not given keep demo.run.main's defaults (one place for them).
    names = ["count", "sim_port_base", "report", "metrics_port_base", "prometheus_port"]
    names += ["rate", "seed", "cache_dir"]
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return int(demo_main(settings, keep=args.keep, prepare_only=args.prepare, **given))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intake", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("edge", help="run the HTTP intake edge").set_defaults(func=_edge)
    worker = commands.add_parser("worker", help="run a worker")
    worker.add_argument("lane", nargs="?", default="persist", choices=WORKER_KINDS)
    worker.set_defaults(func=_worker)
    supervise = commands.add_parser(
        "supervise", help="run the worker fleet on this machine, scaled on its queues"
    )
    # No ``choices``: argparse refuses an empty list for nargs="*" with choices (checked above).
    supervise.add_argument("kinds", nargs="*", metavar="KIND", help="worker kinds (default: all)")
    supervise.add_argument(
        "--run-dir", type=Path, default=None, help="the workers' status files (default: a temp dir)"
    )
    supervise.add_argument(
        "--log-dir", type=Path, default=None, help="one log file per worker here (default: stderr)"
    )
    supervise.set_defaults(func=_supervise)
    commands.add_parser("migrate", help="apply database migrations").set_defaults(func=_migrate)
    commands.add_parser("simulate", help="run the ministry simulators (see intake simulate --help)")
    commands.add_parser("top", help="a live terminal view from Prometheus (intake top --help)")
    commands.add_parser(
        "cluster", help="a local RabbitMQ and Patroni cluster with the app on it (up|status|down)"
    )
    dlq = commands.add_parser("dlq", help="inspect or replay dead-letter queues")
    actions = dlq.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="depth and reasons of every dead-letter queue")
    listing.add_argument("--sample", type=int, default=20, help="messages to show per queue")
    again = actions.add_parser("replay", help="move dead letters back to their queue")
    again.add_argument("queue", help="a dead-letter queue, e.g. intake.verify.dukcapil.dlq")
    again.add_argument("--limit", type=int, default=None, help="at most this many")
    dlq.set_defaults(func=_dlq)
    from admin.commands import add_lane_commands, add_wave_commands

    keys = commands.add_parser("keys", help="key versions of stored ciphertexts; re-encryption")
    key_actions = keys.add_subparsers(dest="action", required=True)
    key_actions.add_parser("status", help="stored ciphertexts by key version")
    rewrite = key_actions.add_parser(
        "reencrypt", help="rewrite stored ciphertexts under the current key (resumable)"
    )
    rewrite.add_argument("--batch", type=int, default=500, help="rows per transaction")
    rewrite.add_argument("--max-batches", type=int, default=None, help="stop after this many")
    rewrite.add_argument("--pause-s", type=float, default=0.0, help="sleep between batches")
    keys.set_defaults(func=_keys)
    retain = commands.add_parser(
        "retention", help="erase personal data whose purpose ended (docs/privacy.md)"
    )
    retain_actions = retain.add_subparsers(dest="action", required=True)
    retain_run = retain_actions.add_parser("run", help="one pass: batched, resumable, audited")
    retain_run.add_argument("--dry-run", action="store_true", help="count only, change nothing")
    retain_run.add_argument("--batch", type=int, default=None, help="INTAKE_RETENTION_BATCH")
    retain_run.add_argument("--max-batches", type=int, default=None, help="stop after this many")
    retain_run.add_argument(
        "--sweep-files",
        action="store_true",
        help="also delete blob files nothing names (walks the whole blob directory)",
    )
    retain_run.add_argument(
        "--sweep-files-every",
        type=int,
        default=None,
        metavar="DAYS",
        help="--sweep-files when no whole pass of the last DAYS days did (the daily CronJob: 7)",
    )
    retain.set_defaults(func=_retention)
    person = commands.add_parser(
        "person", help="a person's data found by NIK: export it, or erase it (audited)"
    )
    person_actions = person.add_subparsers(dest="action", required=True)
    export = person_actions.add_parser("export", help="everything stored, decrypted, as JSON")
    export.add_argument("--nik", required=True, help="the NIK (16 digits; - reads it from stdin)")
    export.add_argument(
        "--output", type=Path, default=None, help="write the JSON here instead of stdout"
    )
    erase = person_actions.add_parser(
        "erase", help="erase it now, but the NIK's keyed hash and the outcome"
    )
    erase.add_argument("--nik", required=True, help="the NIK (16 digits; - reads it from stdin)")
    erase.add_argument("--reason", required=True, help="the ground, recorded in the audit log")
    person.set_defaults(func=_person)
    waves = commands.add_parser("waves", help="create, list, open, close waves; the audit log")
    add_wave_commands(waves)
    waves.set_defaults(func=_waves)
    lanes = commands.add_parser(
        "lanes", help="force a lane's breaker; schedule and cancel maintenance windows"
    )
    add_lane_commands(lanes)
    lanes.set_defaults(func=_lanes)
    admin = commands.add_parser("admin", help="run the operators' admin API (or make a token)")
    admin_actions = admin.add_subparsers(dest="action")
    admin_actions.add_parser("serve", help="serve the admin API (the default)")
    token = admin_actions.add_parser("token", help="make a bearer token and its setting entry")
    token.add_argument("name", help="the name its actions are audited under")
    admin.set_defaults(func=_admin, action="serve")
    demo = commands.add_parser(
        "demo", help="empty the database, start a local stack and replay a wave opening"
    )
    demo.add_argument("--count", type=int, default=None, help="people in the wave (1,600)")
    demo.add_argument(
        "--rate", type=float, default=None, help="registrations per second at the opening (1,500)"
    )
    demo.add_argument("--seed", type=int, default=None, help="the synthetic population's seed")
    demo.add_argument(
        "--keep", action="store_true", help="leave the stack running at the end (Ctrl-C stops)"
    )
    demo.add_argument(
        "--prepare",
        action="store_true",
        help="only make the wave's selfies, kept for the next runs (make setup does this)",
    )
    demo.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where the selfies are kept between runs (default ~/.cache/prakerja-intake)",
    )
    demo.add_argument(
        "--sim-port-base", type=int, default=None, help="first of the simulators' six ports (8101)"
    )
    demo.add_argument(
        "--metrics-port-base",
        type=int,
        default=None,
        help="the edge's /metrics port (9464); intake supervise's is the next one",
    )
    demo.add_argument(
        "--prometheus-port",
        type=int,
        default=None,
        help="where the demo's Prometheus listens (9090)",
    )
    demo.add_argument("--report", type=Path, default=None, help="write the outcome as JSON here")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate"]:
        # The simulators have their own parser (argparse cannot pass "--flags" through).
        from simulators.cli import main as simulate

        return simulate(argv[1:])
    if argv[:1] == ["cluster"]:
        from cluster.cli import main as cluster

        return cluster(argv[1:])
    if argv[:1] == ["top"]:
        from monitoring.top import main as top

        return top(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"intake: {exc}", file=sys.stderr)
        return 2
    logs.configure(args.command, settings.log_level)
    result: int = args.func(settings, args)
    return result
