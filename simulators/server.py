"""All the simulators in one process: configuration, start-up in the running loop, shutdown.

:func:`run_simulators` is the in-process entry point (tests bind port ``0`` and read the bound
ports from :class:`Running`); :func:`serve` runs them until SIGTERM or SIGINT, as
``intake simulate`` does. Both answer from the same synthetic population the load generators
send (:func:`simulators.population.population` with the same seed, count, day and shares), so
every simulated ministry knows exactly the people who register.

On shutdown the listeners close first, hangs and simulated delays end at once, and calls in
flight get their answers (bounded by ``shutdown_timeout_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from core.settings import Settings
from simulators import dapodik, dtks, dukcapil, sms, smtp
from simulators.behaviour import Behaviour, Gate
from simulators.population import (
    DEFAULT_PROPORTIONS,
    Proportions,
    Registrant,
    Registry,
    population,
)

log = logging.getLogger(__name__)

SIMULATORS = ("dukcapil", "dapodik", "dtks", "sms", "smtp")
WIB = dt.timezone(dt.timedelta(hours=7), "WIB")


@dataclass(frozen=True, slots=True)
class Ports:
    """Where each simulator listens; ``0`` binds any free port (tests)."""

    dukcapil: int = 8101
    dapodik: int = 8102
    dtks: int = 8103
    sms: int = 8104
    smtp: int = 8025
    smtp_admin: int = 8105

    @classmethod
    def ephemeral(cls) -> Ports:
        """Every port ``0``."""
        return cls(0, 0, 0, 0, 0, 0)

    def wire(self, settings: Settings, host: str = "127.0.0.1") -> Settings:
        """``settings`` pointed at simulators listening on these ports of ``host``."""
        return settings.replace(
            dukcapil_url=f"http://{host}:{self.dukcapil}",
            dapodik_url=f"http://{host}:{self.dapodik}",
            dtks_url=f"http://{host}:{self.dtks}",
            sms_url=f"http://{host}:{self.sms}",
            smtp_host=host,
            smtp_port=self.smtp,
        )


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """What to simulate: the population, where to listen, and each simulator's behaviour."""

    host: str = "127.0.0.1"
    ports: Ports = Ports()
    # The population, as simulators.population.population() draws it. ``today`` None: the
    # current day in WIB, as the edge and the load generators use.
    seed: int = 0
    count: int = 10_000
    today: dt.date | None = None
    invalid_share: float = 0.10
    duplicate_share: float = 0.05
    proportions: Proportions = DEFAULT_PROPORTIONS
    # A population made by the caller instead (seed, count, today and shares are then unused).
    people: Sequence[Registrant] | None = None
    # Per simulator name (see SIMULATORS); a simulator not named gets Behaviour().
    behaviours: Mapping[str, Behaviour] = field(default_factory=dict)
    shutdown_timeout_s: float = 10.0

    def behaviour(self, name: str) -> Behaviour:
        """The behaviour ``name`` starts with."""
        return self.behaviours.get(name) or Behaviour()

    def make_people(self) -> Sequence[Registrant]:
        """The configured population."""
        if self.people is not None:
            return self.people
        today = self.today or dt.datetime.now(dt.UTC).astimezone(WIB).date()
        return population(
            self.count,
            seed=self.seed,
            today=today,
            invalid_share=self.invalid_share,
            duplicate_share=self.duplicate_share,
            proportions=self.proportions,
        )


@dataclass(slots=True)
class Running:
    """Simulators that are up: their addresses, their data and the handles to change them.

    ``urls`` maps "dukcapil", "dapodik", "dtks", "sms" and "smtp" to each HTTP base URL (for
    SMTP, its admin application's: the mail read-back and the control routes); the SMTP server
    itself is at ``smtp_host:smtp_port``.
    """

    config: SimulatorConfig
    people: Sequence[Registrant]
    registry: Registry
    urls: dict[str, str]
    smtp_host: str
    smtp_port: int
    gates: dict[str, Gate]
    outbox: sms.Outbox
    mailbox: smtp.Mailbox

    def wire(self, settings: Settings) -> Settings:
        """``settings`` pointed at these simulators (the ministries, the SMS gateway, SMTP)."""
        return settings.replace(
            dukcapil_url=self.urls["dukcapil"],
            dapodik_url=self.urls["dapodik"],
            dtks_url=self.urls["dtks"],
            sms_url=self.urls["sms"],
            smtp_host=self.smtp_host,
            smtp_port=self.smtp_port,
        )

    def set_behaviour(self, name: str, **changes: Any) -> Behaviour:
        """Replace some behaviour fields of simulator ``name`` at once; returns the new one."""
        return self.gates[name].update(**changes)

    def stats(self, name: str) -> dict[str, object]:
        """Simulator ``name``'s counters and behaviour (what ``GET /_sim/stats`` answers)."""
        return self.gates[name].stats()


@contextlib.asynccontextmanager
async def run_simulators(config: SimulatorConfig) -> AsyncIterator[Running]:
    """Start every simulator in the running loop; stop them all on exit."""
    people = config.make_people()
    registry = Registry.from_population(people)
    gates = {name: Gate(name, config.behaviour(name), seed=config.seed) for name in SIMULATORS}
    outbox, mailbox = sms.Outbox(), smtp.Mailbox()
    apps: dict[str, tuple[web.Application, int]] = {
        "dukcapil": (dukcapil.create_app(registry, gates["dukcapil"]), config.ports.dukcapil),
        "dapodik": (dapodik.create_app(registry, gates["dapodik"]), config.ports.dapodik),
        "dtks": (dtks.create_app(registry, gates["dtks"]), config.ports.dtks),
        "sms": (sms.create_app(outbox, gates["sms"]), config.ports.sms),
        "smtp": (smtp.admin_app(mailbox, gates["smtp"]), config.ports.smtp_admin),
    }
    runners: list[web.AppRunner] = []
    smtp_server = smtp.SmtpServer(mailbox, gates["smtp"])
    try:
        urls = {}
        for name, (app, port) in apps.items():
            runner, bound = await _start_http(app, config.host, port, config.shutdown_timeout_s)
            runners.append(runner)
            urls[name] = f"http://{_url_host(config.host)}:{bound}"
        smtp_port = await smtp_server.start(config.host, config.ports.smtp)
        yield Running(
            config, people, registry, urls, config.host, smtp_port, gates, outbox, mailbox
        )
    finally:
        for gate in gates.values():
            gate.close()
        await smtp_server.close()
        await asyncio.gather(*(runner.cleanup() for runner in runners))


async def _start_http(
    app: web.Application, host: str, port: int, shutdown_timeout_s: float
) -> tuple[web.AppRunner, int]:
    # No access log: the read-back hooks carry phone numbers and addresses in their query.
    # Handler cancellation: a client that gives up on a hang frees its handler at once.
    runner = web.AppRunner(
        app, access_log=None, handler_cancellation=True, shutdown_timeout=shutdown_timeout_s
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def serve(config: SimulatorConfig) -> None:
    """Run the simulators until SIGTERM or SIGINT, then stop gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with run_simulators(config) as running:
            ports = {name: int(url.rsplit(":", 1)[1]) for name, url in running.urls.items()}
            log.info(
                "simulators ready",
                extra={
                    "fields": {
                        "http_ports": ports,
                        "smtp_port": running.smtp_port,
                        "people": len(running.people),
                        "seed": config.seed,
                    }
                },
            )
            await stop.wait()
            log.info("simulators stopping")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("simulators stopped")
