"""``intake waves ...`` and ``intake admin token``: the operators' commands on this machine.

``intake waves`` acts on the database directly (its access is the operator's credential); each
action is audited under ``cli:<user>``, as the admin API audits under a token's name.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import hashlib
import secrets
import sys

import asyncpg
import orjson

from core.settings import Settings
from core.waves import Policy, WaveError, Waves, parse_time


def add_wave_commands(waves: argparse.ArgumentParser) -> None:
    """The sub-commands of ``intake waves``."""
    actions = waves.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every wave, in opening order")
    create = actions.add_parser("create", help="schedule a wave (times in WIB unless offset)")
    create.add_argument("name", help="a-z, 0-9 and -, e.g. gelombang-1")
    create.add_argument("--opens", required=True, help="e.g. 2020-04-11T12:00")
    create.add_argument("--closes", required=True, help="e.g. 2020-04-16T16:00")
    create.add_argument("--quota", required=True, type=int, help="participants selected")
    create.add_argument(
        "--policy", default=None, help='JSON, e.g. {"min_age": 18, "dtks": "lower"}'
    )
    for name, text in (("show", "one wave"), ("open", "open now"), ("close", "close now")):
        actions.add_parser(name, help=text).add_argument("name")
    audit = actions.add_parser("audit", help="the latest operator actions, newest first")
    audit.add_argument("--limit", type=int, default=50)


def waves_command(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``intake waves <action>``; prints JSON; exit 1 on a refused action."""
    try:
        result = asyncio.run(_waves(settings, args))
    except WaveError as exc:
        print(f"intake waves {args.action}: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


async def _waves(settings: Settings, args: argparse.Namespace) -> object:
    actor = f"cli:{getpass.getuser()}"
    now = dt.datetime.now(dt.UTC)
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        waves = Waves(pool)
        if args.action == "list":
            return [w.to_obj(now) for w in await waves.all()]
        if args.action == "create":
            try:
                policy = Policy.from_obj(None if args.policy is None else orjson.loads(args.policy))
            except orjson.JSONDecodeError:
                raise WaveError("invalid", "--policy is not valid JSON") from None
            wave = await waves.create(
                actor,
                args.name,
                parse_time(args.opens),
                parse_time(args.closes),
                args.quota,
                policy,
            )
            return wave.to_obj(now)
        if args.action == "show":
            return (await waves.get(args.name)).to_obj(now)
        if args.action == "open":
            return (await waves.open_now(actor, args.name, now)).to_obj(now)
        if args.action == "close":
            return (await waves.close_now(actor, args.name, now)).to_obj(now)
        return await waves.audit(args.limit)
    finally:
        await pool.close()


def new_token(name: str) -> tuple[str, str]:
    """A new bearer token for ``name``, and its ``INTAKE_ADMIN_TOKENS`` entry (the digest)."""
    token = secrets.token_urlsafe(32)
    return token, f"{name}:{hashlib.sha256(token.encode()).hexdigest()}"
