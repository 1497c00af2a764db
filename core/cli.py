"""The ``intake`` command: one entry point for every process of the system.

    intake edge                 the HTTP intake edge
    intake worker [persist]     a worker (the persist worker for now)
    intake migrate              apply database migrations and exit
    intake demo                 start a local stack and replay a small wave opening

Settings come from ``INTAKE_*`` environment variables (see the README). Sub-commands import
their package lazily, so the edge never loads worker code and the reverse.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from core import logs
from core.settings import Settings, SettingsError


def _edge(settings: Settings, args: argparse.Namespace) -> int:
    from intake.server import run

    run(settings)
    return 0


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    import uvloop

    from workers.persist import serve

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings))
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


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from benchmarks.demo import main as demo_main

    return int(demo_main(settings, count=args.count))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intake", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("edge", help="run the HTTP intake edge").set_defaults(func=_edge)
    worker = commands.add_parser("worker", help="run a worker")
    worker.add_argument("lane", nargs="?", default="persist", choices=["persist"])
    worker.set_defaults(func=_worker)
    commands.add_parser("migrate", help="apply database migrations").set_defaults(func=_migrate)
    demo = commands.add_parser("demo", help="start a local stack and replay a burst")
    demo.add_argument("--count", type=int, default=2_000, help="registrations to send")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"intake: {exc}", file=sys.stderr)
        return 2
    logs.configure(args.command, settings.log_level)
    result: int = args.func(settings, args)
    return result


if __name__ == "__main__":
    sys.exit(main())
