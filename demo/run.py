"""``intake demo``: a wave opening on a local stack, from the first registration to the last
verification, in about two minutes.

It empties the configured database and queues (the demo's funnel is this run's), starts the
ministry simulators (serving the demo's synthetic population), the worker fleet under
``intake supervise`` (the persist worker, the dispatcher and the verification lanes, each kind
scaled on its queue), the edge and a Prometheus, all as the ``intake`` commands an operator
runs. The registrants' selfies are made beforehand (kept on disk between runs). Then the wave
opens as 2020's did: most people within its first seconds, at ``--rate`` per second, the rest
in a tail. Each person then behaves as their truth says (:mod:`demo.registrants`): uploads
their selfie, follows their email link, types their SMS code. The live funnel and the queues
are printed every second until the funnel is what the population's truth says it must be (or
nothing has moved for a while); the end compares the two, stage by stage, and says why every
registration that is not verified is not. Exit status 0 when nothing accepted was lost and the
funnel is exactly the truth's; ``--keep`` leaves the stack running to explore.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import orjson
import uvloop

from core import topology
from core.migrate import migrate
from core.queues import queue_names
from core.settings import Settings
from core.verification import Check
from demo import funnel, programme, truth
from demo.client import Pool
from demo.registrants import (
    Pace,
    Person,
    Wave,
    accepted_per_second,
    mail_inbox,
    schedule,
    sms_inbox,
)
from demo.selfies import prepare
from demo.stack import Stack
from intake.validation import today_wib
from monitoring import local, top
from simulators.population import population
from simulators.server import Ports

SIM_NAMES = ("dukcapil", "dapodik", "dtks", "sms", "smtp_admin", "smtp")
DEFAULT_SIM_PORT_BASE = 8101  # dukcapil 8101, dapodik 8102, dtks 8103, sms 8104, smtp admin 8105
DEFAULT_METRICS_PORT_BASE = 9464  # the edge's /metrics; intake supervise's is the next one
DEFAULT_COUNT = 1_600
DEFAULT_RATE = 1_500.0  # registrations per second in the opening seconds
DEFAULT_SEED = 20200411  # the day registration opened: the same people every run
OPENING_SHARE = 0.85  # of the wave, at the opening rate; the rest in the tail
TAIL_S = 12.0
IDLE_LIMIT_S = 30.0  # once everyone is done: stop watching when nothing has moved this long
CONNECTIONS = 256
QUIET_CORES, QUIET_S = 0.3, 0.5  # the stack has settled: under 0.3 of a core for half a second
CORES = max(1, len(os.sched_getaffinity(0)))
_TABLES = (
    "registrations, nik_claims, checks, contact_codes, photos, rate_buckets, waves, test_attempts,"
    " wave_joins, wave_selections, benefit_niks, notifications, photo_keys, lane_controls,"
    " maintenance_windows"
)


def sim_ports(base: int) -> dict[str, int]:
    """The simulators' ports, consecutive from ``base`` (SMTP last)."""
    return {name: base + i for i, name in enumerate(SIM_NAMES)}


def metrics_ports(base: int) -> dict[str, int]:
    """The ``/metrics`` ports: the edge's at ``base``, the supervisor's (its workers) next."""
    return {"edge": base, "supervise": base + 1}


def busy_ports(ports: dict[str, int], host: str = "127.0.0.1") -> dict[str, int]:
    """The ports of the plan that something already listens on. Bound without
    ``SO_REUSEPORT``: a port another process shares that way counts as busy too (the metrics
    endpoints bind with it, and would otherwise share a port with a stranger silently); with
    ``SO_REUSEADDR``, as servers bind, so that a run just ended does not block the next."""
    busy = {}
    for name, port in ports.items():
        with socket.socket() as sock:
            # As the servers bind: a port whose last connections linger in TIME_WAIT is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                busy[name] = port
    return busy


def selfie_seed(run_seed: int, index: int) -> int:
    """The seed of a person's selfie: distinct per person."""
    return run_seed * 1_000_000_007 + index


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prakerja-intake"


def intake_command() -> str:
    """How to run ``intake`` from this shell: by name when it is on the PATH."""
    if shutil.which("intake"):
        return "intake"
    beside = Path(sys.executable).with_name("intake")
    return str(beside) if beside.exists() else f"{sys.executable} -m cli"


@dataclass(frozen=True)
class Plan:
    count: int = DEFAULT_COUNT
    rate: float = DEFAULT_RATE
    seed: int = DEFAULT_SEED
    sim_ports: dict[str, int] | None = None
    metrics_ports: dict[str, int] | None = None
    prometheus_port: int = 9090
    report: Path | None = None
    keep: bool = False
    cache_dir: Path | None = None


def say(text: str) -> None:
    print(text, flush=True)


async def empty(settings: Settings) -> None:
    """The demo's database and queues, emptied: its funnel is this run's."""
    connection = await asyncpg.connect(settings.database_url)
    try:
        await migrate(connection)
        await connection.execute(f"TRUNCATE {_TABLES}")
    finally:
        await connection.close()
    amqp = await aio_pika.connect(settings.amqp_url)
    async with amqp:
        for name in queue_names():
            channel = await amqp.channel()
            with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
                queue = await channel.declare_queue(name, passive=True)
                await queue.purge()
            if not channel.is_closed:
                await channel.close()


async def _wait_ready(
    url: str, stack: Stack, timeout_s: float, headers: dict[str, str] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(headers=headers) as session:
        while time.monotonic() < deadline:
            if stack.dead():
                raise RuntimeError(f"exited during start-up: {stack.dead()}; see the logs")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not answer")


async def _wait_workers(settings: Settings, stack: Stack, timeout_s: float) -> None:
    """Until every work queue (the persist queue, each lane's) has a consumer: the wave opens
    on a stack that has started, not beside workers still importing their libraries."""
    work = {topology.PERSIST_QUEUE, *(topology.lane_queue(c) for c in Check)}
    deadline = time.monotonic() + timeout_s
    async with await aio_pika.connect(settings.amqp_url) as amqp:
        while time.monotonic() < deadline:
            if stack.dead():
                raise RuntimeError(f"exited during start-up: {stack.dead()}; see the logs")
            found = await funnel.queues(amqp)
            if all(found[name].consumers for name in work):
                return
            await asyncio.sleep(0.2)
    raise TimeoutError("the workers did not start consuming")


async def _wait_quiet(stack: Stack, timeout_s: float) -> None:
    """Until the stack's processes have settled: under :data:`QUIET_CORES` of CPU for
    :data:`QUIET_S` (a worker that has started consuming may still be warming up, and eight of
    them take both cores of a small machine for a few seconds). After ``timeout_s`` the wave
    opens anyway: a busy machine delays the demo, it does not fail it."""
    deadline = time.monotonic() + timeout_s
    last_cpu, last_at = stack.cpu_seconds(), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(QUIET_S)
        cpu, at = stack.cpu_seconds(), time.monotonic()
        if (cpu - last_cpu) / (at - last_at) < QUIET_CORES:
            return
        last_cpu, last_at = cpu, at


def _line(elapsed_s: float, wave: Wave, f: funnel.Funnel, depths: dict[str, int]) -> str:
    busy = {k.removeprefix("intake."): v for k, v in depths.items() if v}
    queues = "  ".join(f"{k} {v:,}" for k, v in busy.items()) or "empty"
    accepted = sum(1 for p in wave.people if p.status == 202)
    return (
        f"[{elapsed_s:5.1f} s] sent {wave.sent:,} accepted {accepted:,} | stored {f.registered:,}"
        f" email {f.email_verified:,} phone {f.phone_verified:,}"
        f" ministries {f.ministries_passed:,}"
        f" photo {f.photo_verified:,} verified {f.verified:,} rejected {f.rejected:,}"
        f" open {f.open:,} | queues {queues}"
    )


async def _watch(
    settings: Settings, wave: Wave, acting: asyncio.Task[None], people: list[Person]
) -> funnel.Funnel:
    """Print the funnel every second; return once the wave is over and the funnel is what the
    truth says, or nothing has moved for ``IDLE_LIMIT_S``."""
    since = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)  # the database was emptied: all of it
    db = await asyncpg.connect(settings.database_url)
    amqp = await aio_pika.connect(settings.amqp_url)
    last: tuple[Any, ...] = ()
    last_change = time.monotonic()
    try:
        while True:
            current = await funnel.read_funnel(db, since)
            depths = await funnel.queue_depths(amqp)
            say(_line(wave.elapsed_s(), wave, current, depths))
            state = (current, tuple(depths.values()))
            if state != last:
                last, last_change = state, time.monotonic()
            if acting.done():
                decisions = await funnel.read_decisions(db, since)
                observed = truth.observed_funnel(current, people, decisions)
                expected = truth.expected_funnel(people)
                if not truth.differences(expected, observed) and not any(depths.values()):
                    return current
                if time.monotonic() - last_change > IDLE_LIMIT_S:
                    return current
            await asyncio.sleep(1.0)
    finally:
        await db.close()
        await amqp.close()


async def _prometheus_view(url: str) -> tuple[str, dict[str, int]]:
    """``intake top``'s view of the demo, and Prometheus' scrape targets up and down."""
    async with aiohttp.ClientSession() as session:
        snapshot = await top.read(session, url)
        try:
            async with session.get(f"{url}/api/v1/targets", timeout=aiohttp.ClientTimeout(5)) as r:
                active = (await r.json())["data"]["activeTargets"]
        except (aiohttp.ClientError, TimeoutError, KeyError, ValueError):
            active = []
    health = [t.get("health") for t in active]
    return top.render(snapshot), {"up": health.count("up"), "total": len(health)}


def _selfies(people: list[Person], plan: Plan) -> None:
    wanted = [p for p in people if p.registrant.kind == "valid"]
    started = time.monotonic()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.monotonic() - last[0] > 2 or done == total:
            last[0] = time.monotonic()
            say(f"  selfies: {done:,} of {total:,} made")

    made = prepare(
        [(p.registrant.truth.photo, selfie_seed(plan.seed, p.index)) for p in wanted],
        plan.cache_dir or default_cache_dir() / "selfies",
        progress=progress,
    )
    for person, photo in zip(wanted, made, strict=True):
        person.selfie = photo
    say(f"  {len(made):,} selfies ready in {time.monotonic() - started:.1f} s")


async def _run(settings: Settings, plan: Plan, log_dir: Path) -> int:
    ports = plan.sim_ports or sim_ports(DEFAULT_SIM_PORT_BASE)
    metrics = plan.metrics_ports or metrics_ports(DEFAULT_METRICS_PORT_BASE)
    today = today_wib()
    moments = schedule(plan.count, plan.rate, OPENING_SHARE, TAIL_S)
    people = [
        Person(i, r, at, Pace.drawn(plan.seed, i))
        for i, (r, at) in enumerate(
            zip(population(plan.count, seed=plan.seed, today=today), moments, strict=True)
        )
    ]
    base_url = f"http://{settings.edge_host}:{settings.edge_port}"
    prometheus_url = f"http://127.0.0.1:{plan.prometheus_port}"
    say(
        f"intake demo: {plan.count:,} people; the wave opens at {plan.rate:,.0f}/s for"
        f" {moments[round(plan.count * OPENING_SHARE) - 1]:.1f} s, then a {TAIL_S:.0f} s tail"
    )
    # The demo's operator credential for the admin API, and a short grace at the wave's close
    # (every process runs on this machine's one clock).
    settings = settings.replace(admin_tokens=programme.admin_tokens(), wave_close_grace_s=1.0)
    admin_url = f"http://{settings.admin_host}:{settings.admin_port}"
    await empty(settings)
    say("  emptied the demo's database and queues")
    with Stack(settings, log_dir) as stack:
        flags = [f"--{name.replace('_', '-')}-port={port}" for name, port in ports.items()]
        stack.start(
            "simulate",
            "simulate",
            f"--seed={plan.seed}",
            f"--count={plan.count}",
            f"--today={today.isoformat()}",
            *flags,
        )
        stack.start(
            "supervise",
            "supervise",
            f"--log-dir={log_dir}",
            settings=settings.replace(metrics_port=metrics["supervise"]),
        )
        # One edge process per core sharing the port, as on a machine of their own; their
        # /metrics port too, each answering with the sum of both (multiprocess mode).
        edge_metrics = log_dir / "edge-metrics"
        edge_metrics.mkdir()
        for n in range(CORES):
            stack.start(
                "edge" if n == 0 else f"edge-{n + 1}",
                "edge",
                settings=settings.replace(metrics_port=metrics["edge"]),
                env={"PROMETHEUS_MULTIPROC_DIR": str(edge_metrics)},
            )
        stack.start("admin", "admin")
        config = local.write_config(
            log_dir / "prometheus.yml",
            local.local_config(metrics["edge"], metrics["supervise"], settings.amqp_url),
        )
        stack.start_program(
            "prometheus", local.prometheus_command(config, log_dir / "tsdb", plan.prometheus_port)
        )
        say(f"  starting the stack (logs in {log_dir}); making the selfies meanwhile")
        await asyncio.to_thread(_selfies, people, plan)
        await _wait_ready(f"http://127.0.0.1:{ports['dukcapil']}/_sim/stats", stack, 120)
        await _wait_ready(f"{base_url}/readyz", stack, 120)
        await _wait_ready(f"{admin_url}/openapi.json", stack, 120, programme.ADMIN_HEADERS)
        await _wait_workers(settings, stack, 120)
        await _wait_quiet(stack, 30)
        say(f"  stack ready: the edge at {base_url}, the workers under intake supervise\n")

        mail = mail_inbox(f"http://127.0.0.1:{ports['smtp_admin']}")
        sms = sms_inbox(f"http://127.0.0.1:{ports['sms']}")
        wave = Wave(base_url, people, mail, sms, run_key=f"{plan.seed}-{time.time_ns()}")
        timeout = aiohttp.ClientTimeout(total=60)
        forms = Pool(settings.edge_host, settings.edge_port, CONNECTIONS)
        await forms.open()
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONNECTIONS), timeout=timeout
        ) as session:
            pollers = [asyncio.create_task(inbox.run(session)) for inbox in (mail, sms)]
            acting = asyncio.create_task(wave.run(session, forms))
            try:
                final = await _watch(settings, wave, acting, people)
            finally:
                for task in (*pollers, acting):
                    task.cancel()
                await asyncio.gather(*pollers, acting, return_exceptions=True)
                forms.close()
        db = await asyncpg.connect(settings.database_url)
        try:
            decisions = await funnel.read_decisions(db, dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        finally:
            await db.close()
        feeds = (
            f"http://127.0.0.1:{ports['smtp_admin']}/_sim/mail",
            f"http://127.0.0.1:{ports['sms']}/_sim/messages",
        )
        after = await programme.run(settings, admin_url, base_url, people, feeds, plan.seed, say)
        await asyncio.sleep(6)  # one more scrape after the last notification
        view, targets = await _prometheus_view(prometheus_url)
        say("\n" + view)
        code = _report(
            wave.shed,
            plan,
            people,
            final,
            decisions,
            after,
            targets,
            base_url,
            prometheus_url,
            log_dir,
        )
        if plan.keep:
            await _keep(base_url, prometheus_url)
        # The supervisor waits for its workers (a lane finishes the tasks in hand).
        codes = stack.stop(timeout_s=90)
    say(f"stopped: exit codes {codes}")
    if plan.report is not None:
        outcome = orjson.loads(plan.report.read_bytes())
        outcome["exit_codes"] = codes
        plan.report.write_bytes(orjson.dumps(outcome, option=orjson.OPT_INDENT_2))
    return code if set(codes.values()) <= {0} else 1


def _report(
    shed: int,
    plan: Plan,
    people: list[Person],
    final: funnel.Funnel,
    decisions: truth.Decisions,
    after: programme.Report,
    targets: dict[str, int],
    base_url: str,
    prometheus_url: str,
    log_dir: Path,
) -> int:
    metrics = plan.metrics_ports or metrics_ports(DEFAULT_METRICS_PORT_BASE)
    metrics_urls = [f"http://127.0.0.1:{metrics[k]}/metrics" for k in ("edge", "supervise")]
    accepted = [p for p in people if p.status == 202]
    answered = [p.answered_at_s for p in people if p.answered_at_s is not None]
    opening = accepted_per_second(people, 5)
    attempts = [p.attempts for p in people]
    say(
        f"\nthe wave: {len(people):,} people, {len(accepted):,} accepted,"
        f" {sum(1 for p in people if p.status == 422):,} refused as invalid;"
        f" accepted per second in the first seconds: {', '.join(f'{n:,}' for n in opening)};"
        f" the last answer {max(answered, default=0.0):.1f} s after the opening;"
        f" attempts per person: mean {sum(attempts) / max(1, len(attempts)):.2f},"
        f" max {max(attempts, default=0)}; answered 503 (and sent again) {shed:,} times"
    )
    actions: dict[str, int] = {}
    for p in people:
        for label in (p.photo, p.email, p.otp):
            if label:
                actions[label] = actions.get(label, 0) + 1
    say(f"what the registrants did: {dict(sorted(actions.items()))}")
    say(
        f"funnel: {final.registered:,} registered, {final.email_verified:,} email verified,"
        f" {final.phone_verified:,} phone verified,"
        f" {final.ministries_passed:,} passed by all three ministries,"
        f" {final.photo_verified:,} photo verified, {final.verified:,} verified,"
        f" {final.rejected:,} rejected, {final.review:,} in review, {final.open:,} open"
    )
    if final.last_decided_at is not None and decisions:
        say(
            f"last decision {(final.last_decided_at - _first(decisions)).total_seconds():.1f} s"
            " after the first"
        )
    expected = truth.expected_funnel(people)
    observed = truth.observed_funnel(final, people, decisions)
    say("\nstage                                        truth   stored")
    mismatches = truth.differences(expected, observed)
    for stage in sorted({*expected, *observed}, key=lambda s: (s.startswith("rejected:"), s)):
        want, seen = expected.get(stage, 0), observed.get(stage, 0)
        say(f"  {stage:<42} {want:>6,}  {seen:>6,}{'  <-- differs' if stage in mismatches else ''}")
    say("\nwhy:")
    for line in truth.explanations(people):
        say(f"  {line}")
    say("")
    for line in programme.lines(after):
        say(line)
    intake = intake_command()
    say(
        f"\nwhere to look:\n  Prometheus {prometheus_url} (alerts {prometheus_url}/alerts)\n"
        f"  the live view: {intake} top --prometheus {prometheus_url}\n"
        f"  metrics: the edge {metrics_urls[0]}, the workers, funnel and queues (intake"
        f" supervise) {metrics_urls[1]}\n"
        f"  the edge's OpenAPI document {base_url}/openapi.json; the logs in {log_dir}"
    )
    if not plan.keep:
        say("(the stack stops now: `intake demo --keep` leaves it running to explore these)")
    lost = len(accepted) - final.registered
    if plan.report is not None:
        report = {
            "count": plan.count,
            "seed": plan.seed,
            "accepted": len(accepted),
            "stored": final.registered,
            "accepted_per_second": opening,
            "expected": expected,
            "observed": observed,
            "prometheus_targets": targets,
            "wave": programme.as_json(after),
        }
        plan.report.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    if lost:
        say(f"FAILED: {lost} accepted registration(s) not stored")
        return 1
    if mismatches:
        say(f"FAILED: the funnel differs from the population's truth at {mismatches}")
        return 1
    if after.problems:
        say(f"FAILED: the wave broke its rules: {'; '.join(after.problems)}")
        return 1
    say(
        "OK: nothing accepted was lost, the funnel is exactly the population's truth, and the"
        " wave selected its quota by its rules and told every joiner once"
    )
    return 0


def _first(decisions: truth.Decisions) -> dt.datetime:
    return min(at for _, _, at in decisions.values() if at is not None)


async def _keep(base_url: str, prometheus_url: str) -> None:
    say(f"\n--keep: the stack runs on ({base_url}, {prometheus_url}); Ctrl-C stops it")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def main(
    settings: Settings,
    count: int = DEFAULT_COUNT,
    sim_port_base: int = DEFAULT_SIM_PORT_BASE,
    report: Path | None = None,
    metrics_port_base: int = DEFAULT_METRICS_PORT_BASE,
    prometheus_port: int = 9090,
    rate: float = DEFAULT_RATE,
    seed: int = DEFAULT_SEED,
    keep: bool = False,
    cache_dir: Path | None = None,
    prepare_only: bool = False,
) -> int:
    """Run the demo against the configured RabbitMQ and PostgreSQL (emptied first); 0 when
    nothing was lost and the funnel is exactly what the population's truth says (2: a port of
    the plan is taken, or the settings are a production's). With ``prepare_only``, make the
    wave's selfies (kept for the next runs) and stop there."""
    if prepare_only:
        people = [
            Person(i, r, 0.0) for i, r in enumerate(population(count, seed=seed, today=today_wib()))
        ]
        _selfies(people, Plan(count=count, seed=seed, cache_dir=cache_dir))
        return 0
    # The demo tells its own story on stdout; its processes log to files in its log directory.
    root = logging.getLogger()
    root.setLevel(max(root.level, logging.WARNING))
    if settings.env == "production":
        say("intake demo: refused with INTAKE_ENV=production (the demo empties the database)")
        return 2
    ports = sim_ports(sim_port_base)
    metrics = metrics_ports(metrics_port_base)
    plan_ports = {
        **{f"simulator {name}": port for name, port in ports.items()},
        "edge": settings.edge_port,
        **{f"{name} metrics": port for name, port in metrics.items()},
        "prometheus": prometheus_port,
    }
    if len(set(plan_ports.values())) < len(plan_ports):
        say(f"intake demo: ports used twice in the plan {plan_ports}")
        return 2
    busy = busy_ports(plan_ports)
    if busy:
        say(f"intake demo: ports already in use: {busy}; free them or choose other ports")
        return 2
    log_dir = Path(tempfile.mkdtemp(prefix="intake-demo-"))
    (log_dir / "edge-status").mkdir()
    wired = Ports(**ports).wire(
        settings.replace(
            edge_access_log=False,
            public_base_url=f"http://{settings.edge_host}:{settings.edge_port}",
            blob_dir=str(log_dir / "blobs"),
            # The whole synthetic population comes from this one address: no per-client limit.
            limit_client_requests=0,
            # The accept path first: while the edge sheds, intake supervise holds verification
            # back (the edge reports it in this directory).
            edge_status_dir=str(log_dir / "edge-status"),
            # On one machine more processes per kind than cores only add start-ups; the photo
            # lane's analyses, the most CPU, get a process per core.
            supervise_max_workers=min(settings.supervise_max_workers, CORES),
            # Verification at the edge's priority: the hold above keeps the accept path first
            # while the edge sheds, and niced workers would crawl beside anyone else's work.
            supervise_verification_nice=0,
            photo_workers=max(settings.photo_workers, CORES),
        )
    )
    plan = Plan(
        count=count,
        rate=rate,
        seed=seed,
        sim_ports=ports,
        metrics_ports=metrics,
        prometheus_port=prometheus_port,
        report=report,
        keep=keep,
        cache_dir=cache_dir,
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_run(wired, plan, log_dir))
