"""Run the ministry simulators (Dukcapil, Dapodik, DTKS, an SMS gateway, SMTP) in one process.

    intake simulate --seed 7 --count 100000 --dukcapil-capacity 50 \\
        --dukcapil-latency-median-ms 80 --dukcapil-latency-p99-ms 900 --dtks-outage

The population must be the one the load generator sends: the same --seed, --count, --today and
shares. Every behaviour field of every simulator has a flag ``--<simulator>-<field>``; the
behaviour can also be changed while running through each simulator's ``POST /_sim/behaviour``.
Logs are JSON lines on stderr; SIGTERM or SIGINT stops the simulators gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import os
import sys

from core import logs
from simulators.behaviour import OUTAGE_MODES, OVERLOAD_MODES, Behaviour, field_types
from simulators.population import Proportions
from simulators.server import SIMULATORS, Ports, SimulatorConfig, serve

_CHOICES = {"overload": OVERLOAD_MODES, "outage_mode": OUTAGE_MODES}
_DEFAULT = SimulatorConfig()


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """The command line: listening, population, and per-simulator behaviour flags."""
    parser = argparse.ArgumentParser(
        prog="intake simulate",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    listen = parser.add_argument_group("listening")
    listen.add_argument("--host", default=_DEFAULT.host)
    for f in dataclasses.fields(Ports):
        listen.add_argument(_flag(f.name) + "-port", type=int, default=f.default)

    people = parser.add_argument_group("population (must match the load generator's)")
    people.add_argument("--seed", type=int, default=_DEFAULT.seed)
    people.add_argument("--count", type=int, default=_DEFAULT.count)
    people.add_argument(
        "--today", type=dt.date.fromisoformat, default=None, help="YYYY-MM-DD; default: in WIB"
    )
    people.add_argument("--invalid-share", type=float, default=_DEFAULT.invalid_share)
    people.add_argument("--duplicate-share", type=float, default=_DEFAULT.duplicate_share)
    for f in dataclasses.fields(Proportions):
        people.add_argument(_flag(f.name) + "-share", type=float, default=f.default)

    types = field_types()
    for simulator in SIMULATORS:
        group = parser.add_argument_group(f"{simulator} behaviour")
        for name, kind in types.items():
            flag = f"--{simulator}-{name.replace('_', '-')}"
            default = getattr(Behaviour(), name)
            if kind is bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
            else:
                group.add_argument(flag, type=kind, default=default, choices=_CHOICES.get(name))

    parser.add_argument("--shutdown-timeout-s", type=float, default=_DEFAULT.shutdown_timeout_s)
    parser.add_argument("--log-level", default=os.environ.get("INTAKE_LOG_LEVEL", "INFO"))
    return parser


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The configuration the parsed flags describe (a bad behaviour raises ValueError)."""
    values = vars(args)
    ports = Ports(**{f.name: values[f.name + "_port"] for f in dataclasses.fields(Ports)})
    proportions = Proportions(
        **{f.name: values[f.name + "_share"] for f in dataclasses.fields(Proportions)}
    )
    behaviours = {
        simulator: Behaviour(**{name: values[f"{simulator}_{name}"] for name in field_types()})
        for simulator in SIMULATORS
    }
    return SimulatorConfig(
        host=args.host,
        ports=ports,
        seed=args.seed,
        count=args.count,
        today=args.today,
        invalid_share=args.invalid_share,
        duplicate_share=args.duplicate_share,
        proportions=proportions,
        behaviours=behaviours,
        shutdown_timeout_s=args.shutdown_timeout_s,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the simulators until SIGTERM or SIGINT; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    logs.configure("simulate", args.log_level)
    return _run(config)


def _run(config: SimulatorConfig) -> int:
    import uvloop

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(config))
    except OSError as exc:  # a port in use, an address not available
        print(f"intake simulate: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
