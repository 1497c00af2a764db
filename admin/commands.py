"""``intake waves ...``, ``intake lanes ...`` and ``intake admin token``: the operators'
commands on this machine.

``intake waves`` and ``intake lanes`` act on the database directly (its access is the operator's
credential); each action is audited under ``cli:<user>``, as the admin API audits under a
token's name. ``intake waves selection NAME --check`` recomputes a wave's selection from its
recorded seed (it reads the joiners' birth dates, so it needs ``INTAKE_SECRET_KEY``) and exits 1
if it differs.
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

from core import selection
from core.controls import BreakerMode, ControlError, LaneControls, parse_check
from core.keys import Keyring
from core.settings import Settings
from core.verification import Check
from core.waves import WIB, Policy, Wave, WaveError, Waves, parse_time


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
    selection = actions.add_parser(
        "selection", help="a closed wave's recorded selection (made by `intake worker waves`)"
    )
    selection.add_argument("name")
    selection.add_argument(
        "--check",
        action="store_true",
        help="recompute it from the recorded seed and say whether it is the recorded one",
    )
    audit = actions.add_parser("audit", help="the latest operator actions, newest first")
    audit.add_argument("--limit", type=int, default=50)


def waves_command(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``intake waves <action>``; prints JSON; exit 1 on a refused action (and on a
    ``selection --check`` that does not give the recorded selection)."""
    try:
        result = asyncio.run(_waves(settings, args))
    except WaveError as exc:
        print(f"intake waves {args.action}: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    if isinstance(result, dict) and result.get("check", {}).get("same_selection") is False:
        return 1
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
        if args.action == "selection":
            return await _selection(settings, pool, await waves.get(args.name), args.check)
        return await waves.audit(args.limit)
    finally:
        await pool.close()


def add_lane_commands(lanes: argparse.ArgumentParser) -> None:
    """The sub-commands of ``intake lanes``."""
    actions = lanes.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every lane's breaker mode and maintenance window on now")
    breaker = actions.add_parser(
        "breaker", help="force a lane's breaker open (no call) or closed, or back to auto"
    )
    breaker.add_argument("check", choices=[c.value for c in Check])
    breaker.add_argument("state", choices=[m.value for m in BreakerMode])
    maintenance = actions.add_parser("maintenance", help="a registry's maintenance windows")
    windows = maintenance.add_subparsers(dest="window_action", required=True)
    add = windows.add_parser("add", help="schedule a window (times in WIB unless offset)")
    add.add_argument("check", choices=[c.value for c in Check])
    add.add_argument("--start", required=True, help="e.g. 2020-04-12T01:00 (WIB)")
    add.add_argument("--end", required=True, help="e.g. 2020-04-12T03:00 (WIB)")
    add.add_argument("--reason", required=True, help="a short note, e.g. the ministry's notice")
    listing = windows.add_parser("list", help="the windows not over yet")
    listing.add_argument("--all", action="store_true", help="past and cancelled ones too")
    cancel = windows.add_parser("cancel", help="cancel a window, or end an active one now")
    cancel.add_argument("id", type=int)


def lanes_command(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``intake lanes <action>``; prints JSON; exit 1 on a refused action."""
    try:
        result = asyncio.run(_lanes(settings, args))
    except (ControlError, WaveError) as exc:
        print(f"intake lanes {args.action}: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


async def _lanes(settings: Settings, args: argparse.Namespace) -> object:
    actor = f"cli:{getpass.getuser()}"
    now = dt.datetime.now(dt.UTC)
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        controls = LaneControls(pool)
        if args.action == "list":
            return await controls.lanes(now)
        if args.action == "breaker":
            was = await controls.set_breaker(
                actor, parse_check(args.check), BreakerMode(args.state)
            )
            return {"check": args.check, "breaker": args.state, "was": was.value}
        if args.window_action == "add":
            window = await controls.add_window(
                actor,
                parse_check(args.check),
                parse_time(args.start),
                parse_time(args.end),
                args.reason,
                now,
            )
            return window.to_obj(now)
        if args.window_action == "list":
            return [w.to_obj(now) for w in await controls.windows(now, everything=args.all)]
        return (await controls.cancel_window(actor, args.id, now)).to_obj(now)
    finally:
        await pool.close()


async def _selection(
    settings: Settings, pool: asyncpg.Pool, wave: Wave, check: bool
) -> dict[str, object]:
    """The recorded selection's figures (no person), and with ``check`` the recomputation."""
    async with pool.acquire() as connection:
        record = await selection.recorded(connection, wave)
        if record is None:
            raise WaveError("not_found", f"wave {wave.name} has no selection yet")
        result: dict[str, object] = {
            "wave": wave.name,
            "started_at": record.started_at.astimezone(WIB).isoformat(),
            "finished_at": record.finished_at.astimezone(WIB).isoformat(),
            "joined": record.joined,
            "eligible": record.eligible,
            "selected": record.selected,
            "seed": record.seed.hex(),
            "digest": record.digest.hex(),
        }
        if check:
            keyring = Keyring.from_secret(settings.secret_key)
            recomputed = await selection.check(connection, keyring, wave)
            assert recomputed is not None  # the record exists
            result["check"] = recomputed.to_obj()
    return result


def new_token(name: str) -> tuple[str, str]:
    """A new bearer token for ``name``, and its ``INTAKE_ADMIN_TOKENS`` entry (the digest)."""
    token = secrets.token_urlsafe(32)
    return token, f"{name}:{hashlib.sha256(token.encode()).hexdigest()}"
