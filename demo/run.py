"""``intake demo``: a small wave opening on a local stack, from the first registration to the
last verification.

It starts the ministry simulators (serving the demo's synthetic population), the edge, and the
worker fleet (the persist worker, the dispatcher and the verification lanes) under
``intake supervise``, which scales each kind on its queue, all as the ``intake`` commands an
operator runs. Then the wave opens: every synthetic person registers (valid forms, invalid ones
and repeated NIKs), and the people whose ground truth says so follow their email link and enter
their SMS code, at the 2020 shares. The live funnel and the queues are printed
until every registration is decided or nothing moves any more; then everything stops with
SIGTERM. Exit status 0 when no accepted registration was lost.

The edge serves its Prometheus metrics on ``http://127.0.0.1:9464/metrics`` and
``intake supervise`` its workers' (with the funnel and the queue depths) on
``http://127.0.0.1:9465/metrics`` (``--metrics-port-base``), and a Prometheus (Debian's
package, ``monitoring/prometheus.yml`` pointed at these ports and with the project's rules)
scrapes them and RabbitMQ on ``http://127.0.0.1:9090`` (``--prometheus-port``); at the end the
demo prints ``intake top``'s view of it. Every port of the plan (the simulators', the edge's,
the metrics ports, Prometheus') must be free, or the demo does not start.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import re
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import orjson

from core.settings import Settings
from core.verification import WORKER_KINDS
from demo import funnel
from demo.selfies import DistinctSelfies
from demo.stack import Stack
from intake.validation import today_wib
from monitoring import local, top
from simulators.population import Registrant, population
from simulators.server import Ports

CONCURRENCY = 64
SIM_NAMES = ("dukcapil", "dapodik", "dtks", "sms", "smtp_admin", "smtp")
DEFAULT_SIM_PORT_BASE = 8101  # dukcapil 8101, dapodik 8102, dtks 8103, sms 8104, smtp admin 8105


def sim_ports(base: int) -> dict[str, int]:
    """The simulators' ports, consecutive from ``base`` (SMTP last)."""
    return {name: base + i for i, name in enumerate(SIM_NAMES)}


DEFAULT_METRICS_PORT_BASE = 9464  # the edge's /metrics; intake supervise's is the next one


def metrics_ports(base: int) -> dict[str, int]:
    """The ``/metrics`` ports: the edge's at ``base``, the supervisor's (its workers) next."""
    return {"edge": base, "supervise": base + 1}


def busy_ports(ports: dict[str, int], host: str = "127.0.0.1") -> dict[str, int]:
    """The ports of the plan that something already listens on. Bound without
    ``SO_REUSEPORT``: a port another process shares that way counts as busy too (the metrics
    endpoints bind with it, and would otherwise share a port with a stranger silently)."""
    busy = {}
    for name, port in ports.items():
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                busy[name] = port
    return busy


IDLE_LIMIT_S = 20.0  # stop watching when nothing has changed for this long
_CODE_RE = re.compile(r"\b(\d{6})\b")


@dataclass
class Accepted:
    registrant: Registrant
    id: uuid.UUID
    token: str
    index: int = 0  # in the population
    photo_accepted: bool = False  # the selfie's upload was answered 202


UPLOAD_TIMEOUT_S = 120.0
_NIK_REASONS = {
    "not_found": "nik_not_found",
    "mismatch_full_name": "nik_data_mismatch",
    "mismatch_birth_place": "nik_data_mismatch",
    "mismatch_birth_date": "nik_data_mismatch",
}
_PHOTO_REASONS = {"no_face": "photo_no_face", "two_faces": "photo_multiple_faces"}


def selfie_seed(run_seed: int, index: int) -> int:
    """The seed of a person's selfie: distinct per person and per run (the reuse check also
    compares with the photos of earlier runs in the same database)."""
    return run_seed * 1_000_000_007 + index


async def _wait_ready(url: str, stack: Stack, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if stack.dead():
                raise RuntimeError(f"exited during start-up: {stack.dead()}; see the logs")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not answer")


async def _upload_photo(
    session: aiohttp.ClientSession,
    base_url: str,
    a: Accepted,
    seed: int,
    selfies: DistinctSelfies,
) -> str:
    """PUT the person's selfie as soon as the registration takes one (the photo check exists a
    moment after storage: until then the answer is 409 not-ready); the last answer, as a label."""
    photo = await asyncio.to_thread(selfies.make, a.registrant.truth.photo, seed)
    headers = {"Authorization": f"Bearer {a.token}", "Content-Type": "image/jpeg"}
    end = time.monotonic() + UPLOAD_TIMEOUT_S
    while True:
        async with session.put(
            f"{base_url}/v1/registrations/{a.id}/photo", data=photo, headers=headers
        ) as response:
            body = await response.json(content_type=None)
        slug = str(body.get("type", "")).rsplit("/", 1)[-1] if response.status != 202 else ""
        retry = response.status == 503 or (response.status == 409 and slug == "not-ready")
        if not retry or time.monotonic() > end:
            a.photo_accepted = response.status == 202
            return f"photo uploaded: {response.status}" + (f" {slug}" if slug else "")
        await asyncio.sleep(0.05)


async def _register(
    base_url: str, people: list[Registrant], run_seed: int
) -> tuple[
    list[Accepted],
    collections.Counter[int],
    collections.Counter[str],
    list[float],
    collections.Counter[str],
]:
    accepted: list[Accepted] = []
    statuses: collections.Counter[int] = collections.Counter()
    refusals: collections.Counter[str] = collections.Counter()
    uploads: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    queue: asyncio.Queue[tuple[int, Registrant]] = asyncio.Queue()
    for i, p in enumerate(people):
        queue.put_nowait((i, p))
    photos = "photo" in WORKER_KINDS
    selfies = DistinctSelfies()
    # A person registers again only once done with their first registration (its selfie taken,
    # so it is stored): otherwise the repeat could be stored first, and the original rejected
    # as the duplicate.
    answered = [asyncio.Event() for _ in people]

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            index, person = queue.get_nowait()
            if person.repeats is not None:
                await answered[person.repeats].wait()
            started = time.perf_counter()
            # As a browser: a 503 is sent again after its Retry-After, as the same registration.
            headers = {"Idempotency-Key": f"demo-{run_seed}-{index}"}
            while True:
                async with session.post(
                    f"{base_url}/v1/registrations", json=person.form, headers=headers
                ) as response:
                    body = await response.json(content_type=None)
                if response.status != 503:
                    break
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
            latencies.append(time.perf_counter() - started)
            statuses[response.status] += 1
            for error in body.get("errors", []):
                refusals[f"{error['field']}:{error['code']}"] += 1
            if response.status == 202:
                a = Accepted(person, uuid.UUID(body["id"]), body["access_token"], index)
                accepted.append(a)
                # Right away, so that the photo check is pending before the ministries answer.
                if photos and person.kind == "valid":
                    uploads[
                        await _upload_photo(
                            session, base_url, a, selfie_seed(run_seed, index), selfies
                        )
                    ] += 1
            answered[index].set()

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(CONCURRENCY)))
    return accepted, statuses, refusals, latencies, uploads


async def _act(
    base_url: str, ports: dict[str, int], accepted: list[Accepted], deadline_s: float
) -> dict[str, int]:
    """The registrants' side: follow the email link, enter the SMS code, as their truth says."""
    done: collections.Counter[str] = collections.Counter()
    mail_url = f"http://127.0.0.1:{ports['smtp_admin']}/_sim/mail"
    sms_url = f"http://127.0.0.1:{ports['sms']}/_sim/messages"
    end = time.monotonic() + deadline_s
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def person(session: aiohttp.ClientSession, a: Accepted) -> None:
        truth, form = a.registrant.truth, a.registrant.form
        async with semaphore:
            if truth.clicks_email_link and "email" in WORKER_KINDS:
                link = await _poll(session, mail_url, form["email"], _first_link, end)
                if link:
                    async with session.get(link) as response:
                        done[f"email link followed: {response.status}"] += 1
            if truth.enters_otp and "phone" in WORKER_KINDS:
                code = await _poll(session, sms_url, form["phone"], _first_code, end)
                if code:
                    async with session.post(
                        f"{base_url}/v1/registrations/{a.id}/otp",
                        json={"code": code},
                        headers={"Authorization": f"Bearer {a.token}"},
                    ) as response:
                        done[f"OTP entered: {response.status}"] += 1

    async with aiohttp.ClientSession() as session:
        # A repeated NIK is rejected when stored: no mail, no SMS for it.
        await asyncio.gather(
            *(person(session, a) for a in accepted if a.registrant.kind == "valid")
        )
    return dict(done)


def _first_link(body: dict[str, Any]) -> str | None:
    for message in body.get("messages", []):
        for link in message.get("links", []):
            if "/v1/verify/email" in link:
                return str(link)
    return None


def _first_code(body: dict[str, Any]) -> str | None:
    for message in body.get("messages", []):
        match = _CODE_RE.search(message.get("text", ""))
        if match:
            return match.group(1)
    return None


async def _poll(
    session: aiohttp.ClientSession, url: str, to: str, pick: Any, end: float
) -> str | None:
    while time.monotonic() < end:
        try:
            async with session.get(url, params={"to": to}) as response:
                if response.status == 200:
                    found: str | None = pick(await response.json())
                    if found:
                        return found
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.5)
    return None


def _print_funnel(elapsed_s: float, f: funnel.Funnel, depths: dict[str, int]) -> None:
    busy = {k.removeprefix("intake."): v for k, v in depths.items() if v}
    print(
        f"[{elapsed_s:6.1f} s] registered {f.registered}  email {f.email_verified}  "
        f"phone {f.phone_verified}  NIK {f.nik_verified}  photo {f.photo_verified}  "
        f"verified {f.verified}  rejected {f.rejected}  open {f.open}  queues {busy or '-'}",
        flush=True,
    )


async def _watch(
    settings: Settings, since: dt.datetime, started: float, actions: asyncio.Task[Any]
) -> funnel.Funnel:
    """Print the funnel every second until nothing moves any more (or all is decided)."""
    db = await asyncpg.connect(settings.database_url)
    amqp = await aio_pika.connect(settings.amqp_url)
    last: tuple[Any, ...] = ()
    last_change = time.monotonic()
    try:
        while True:
            current = await funnel.read_funnel(db, since)
            depths = await funnel.queue_depths(amqp)
            _print_funnel(time.perf_counter() - started, current, depths)
            state = (
                current.open,
                current.verified,
                current.rejected,
                current.email_verified,
                current.phone_verified,
                current.nik_verified,
                current.photo_verified,
                tuple(depths.values()),
            )
            if state != last:
                last, last_change = state, time.monotonic()
            if current.open == 0 and actions.done():
                return current
            if time.monotonic() - last_change > IDLE_LIMIT_S and actions.done():
                return current
            await asyncio.sleep(1.0)
    finally:
        await db.close()
        await amqp.close()


def causes(a: Accepted) -> frozenset[str]:
    """The reasons a valid registration can be rejected for, from its truth: the NIK lanes' and,
    if its selfie was accepted, the photo lane's. With both, the registration is rejected with
    the first check to fail, which depends on timing: either reason is right."""
    truth, found = a.registrant.truth, set()
    if truth.dukcapil in _NIK_REASONS:
        found.add(_NIK_REASONS[truth.dukcapil])
    elif truth.student:
        found.add("in_education")
    if a.photo_accepted and truth.photo in _PHOTO_REASONS:
        found.add(_PHOTO_REASONS[truth.photo])
    return frozenset(found)


def _stage(reasons: frozenset[str]) -> str:
    return "rejected:" + " or ".join(sorted(reasons))


def expected_funnel(people: list[Registrant], accepted: list[Accepted]) -> dict[str, int]:
    """What the funnel must show once everything is decided, from the population's truth: the
    stages a person reaches, given what the ministries hold and what the person does.

    A "rejected:a or b" stage counts the people with two causes (see :func:`causes`); the
    "rejected:<reason>" stages count the people with that cause only. A selfie is uploaded
    right after the registration is accepted; the upload of someone whom the ministries
    rejected first is refused (409), so whether their photo is checked at all depends on timing:
    the demo's record of the upload decides for them. Everybody else's is accepted."""
    valid = [p for p in people if p.kind == "valid"]
    duplicates = sum(1 for p in people if p.kind == "duplicate")
    expected = {
        "registered": len(valid) + duplicates,
        "nik_verified": sum(
            1 for p in valid if p.truth.dukcapil == "match" and not p.truth.student
        ),
        "rejected:duplicate_nik": duplicates,
    }
    photos = "photo" in WORKER_KINDS
    rejected = collections.Counter(
        _stage(c) for a in accepted if a.registrant.kind == "valid" and (c := causes(a))
    )
    if not photos:
        rejected.update({"rejected:photo_no_face": 0, "rejected:photo_multiple_faces": 0})
    expected.update(rejected)
    expected["rejected"] = duplicates + sum(rejected.values())
    if "email" in WORKER_KINDS:
        expected["email_verified"] = sum(1 for p in valid if p.truth.clicks_email_link)
    if "phone" in WORKER_KINDS:
        expected["phone_verified"] = sum(1 for p in valid if p.truth.enters_otp)
    if photos:
        expected["photo_verified"] = sum(
            1
            for a in accepted
            if a.registrant.kind == "valid"
            and a.registrant.truth.photo == "one_face"
            and (a.photo_accepted or not causes(a))
        )
        expected["verified"] = sum(
            1
            for p in valid
            if p.truth.dukcapil == "match"
            and not p.truth.student
            and p.truth.clicks_email_link
            and p.truth.enters_otp
            and p.truth.photo == "one_face"
            and "email" in WORKER_KINDS
            and "phone" in WORKER_KINDS
        )
    return expected


def observed_funnel(
    f: funnel.Funnel,
    accepted: list[Accepted],
    decisions: dict[uuid.UUID, tuple[str, str | None, dt.datetime | None]],
) -> dict[str, int]:
    """The funnel as stored; the rejections counted per person, by the stage
    :func:`expected_funnel` puts them in (a rejection for a reason that is not among the
    person's causes is counted under the reason itself, where nothing is expected)."""
    observed = {
        "registered": f.registered,
        "nik_verified": f.nik_verified,
        "email_verified": f.email_verified,
        "phone_verified": f.phone_verified,
        "photo_verified": f.photo_verified,
        "verified": f.verified,
        "rejected": f.rejected,
    }
    per_person: collections.Counter[str] = collections.Counter()
    for a in accepted:
        status, reason, _ = decisions.get(a.id, ("received", None, None))
        if status != "rejected" or reason is None:
            continue
        expected_causes = (
            frozenset({"duplicate_nik"}) if a.registrant.kind == "duplicate" else causes(a)
        )
        per_person[
            _stage(expected_causes if reason in expected_causes else frozenset({reason}))
        ] += 1
    observed.update(per_person)
    return observed


def last_verified_s(
    decisions: dict[uuid.UUID, tuple[str, str | None, dt.datetime | None]], since: dt.datetime
) -> float:
    """From the first registration to the last one verified (0 when none was)."""
    verified = [at for status, _, at in decisions.values() if status == "verified" and at]
    return (max(verified) - since).total_seconds() if verified else 0.0


async def _run(
    settings: Settings,
    count: int,
    log_dir: Path,
    ports: dict[str, int],
    metrics: dict[str, int],
    report: Path | None,
    prometheus_port: int,
) -> int:
    seed, today = int(time.time()), today_wib()
    people = population(count, seed=seed, today=today)
    base_url = f"http://{settings.edge_host}:{settings.edge_port}"
    with Stack(settings, log_dir) as stack:
        flags = [f"--{name.replace('_', '-')}-port={port}" for name, port in ports.items()]
        stack.start(
            "simulate",
            "simulate",
            f"--seed={seed}",
            f"--count={count}",
            f"--today={today.isoformat()}",
            *flags,
        )
        await _wait_ready(f"http://127.0.0.1:{ports['dukcapil']}/_sim/stats", stack, 120)
        # Every worker kind, scaled on its queue; each worker logs to its own file here.
        stack.start(
            "supervise",
            "supervise",
            f"--log-dir={log_dir}",
            settings=settings.replace(metrics_port=metrics["supervise"]),
        )
        stack.start("edge", "edge", settings=settings.replace(metrics_port=metrics["edge"]))
        await _wait_ready(f"{base_url}/readyz", stack, 60)
        lanes = ", ".join(k for k in WORKER_KINDS if k not in ("persist", "dispatch"))
        print(
            f"stack ready: edge at {base_url}; workers under intake supervise (lanes: {lanes});"
            f" logs in {log_dir}"
        )
        print(
            f"metrics: edge http://127.0.0.1:{metrics['edge']}/metrics, workers, funnel and"
            f" queues (intake supervise) http://127.0.0.1:{metrics['supervise']}/metrics",
        )
        prometheus_url = f"http://127.0.0.1:{prometheus_port}"
        config = local.write_config(
            log_dir / "prometheus.yml",
            local.local_config(metrics["edge"], metrics["supervise"], settings.amqp_url),
        )
        stack.start_program(
            "prometheus", local.prometheus_command(config, log_dir / "tsdb", prometheus_port)
        )
        print(
            f"prometheus: {prometheus_url} (alerts: {prometheus_url}/alerts); live view in"
            f" another terminal: intake top --prometheus {prometheus_url}",
            flush=True,
        )

        since = dt.datetime.now(dt.UTC)
        started = time.perf_counter()
        accepted, statuses, refusals, latencies, uploads = await _register(base_url, people, seed)
        sent_s = time.perf_counter() - started
        print(
            f"\nwave opened: {count} registrations sent in {sent_s:.1f} s "
            f"({count / sent_s:,.0f}/s); answers {dict(sorted(statuses.items()))}"
        )
        for code, n in sorted(refusals.items()):
            print(f"  refused at the edge  {code:<32} {n:>6}")
        actions = asyncio.create_task(_act(base_url, ports, accepted, deadline_s=120))
        final = await _watch(settings, since, started, actions)
        done = {**uploads, **await actions}
        db = await asyncpg.connect(settings.database_url)
        try:
            decisions = await funnel.read_decisions(db, since)
        finally:
            await db.close()
        end_to_end_s = (
            (final.last_decided_at - since).total_seconds() if final.last_decided_at else 0.0
        )
        await asyncio.sleep(6)  # one more scrape after the last decision
        view, targets = await _prometheus_view(prometheus_url)
        print("\n" + view)
        # The supervisor waits for its workers (a lane finishes the tasks in hand).
        codes = stack.stop(timeout_s=90)

    latencies.sort()
    p99 = latencies[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else 0.0
    stored = final.registered
    print(f"\nregistrants' actions: {done or 'none'}")
    print(f"edge latency p99 {p99:.1f} ms; accepted {len(accepted)}, stored {stored}")
    print(
        f"funnel: {final.registered} registered, {final.email_verified} email verified, "
        f"{final.phone_verified} phone verified, {final.nik_verified} NIK verified, "
        f"{final.photo_verified} photo verified, {final.verified} verified, "
        f"{final.rejected} rejected, {final.review} in review, {final.open} still open"
    )
    for reason, n in final.reasons.items():
        print(f"  rejected  {reason:<24} {n:>6}")
    print(f"first registration to last decision: {end_to_end_s:.1f} s")
    print(f"first registration to last verified: {last_verified_s(decisions, since):.1f} s")
    print(f"exit codes: {codes}")
    expected = expected_funnel(people, accepted)
    observed = observed_funnel(final, accepted, decisions)
    print("\nstage                         expected  observed  (from the population's truth)")
    mismatches = []
    for stage, n in expected.items():
        seen = observed.get(stage, 0)
        print(f"  {stage:<28} {n:>8}  {seen:>8}{'' if seen == n else '  <-- differs'}")
        if seen != n:
            mismatches.append(stage)
    if report is not None:
        outcome = {
            "count": count,
            "seed": seed,
            "accepted": len(accepted),
            "stored": stored,
            "expected": expected,
            "observed": observed,
            "end_to_end_s": end_to_end_s,
            "last_verified_s": last_verified_s(decisions, since),
            "exit_codes": codes,
            "prometheus_targets": targets,
        }
        report.write_bytes(orjson.dumps(outcome, option=orjson.OPT_INDENT_2))  # noqa: ASYNC240
    lost = len(accepted) - stored
    if lost:
        print(f"FAILED: {lost} accepted registration(s) not stored")
        return 1
    if mismatches:
        print(f"FAILED: the funnel differs from the population's truth at {mismatches}")
        return 1
    return 0


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


def main(
    settings: Settings,
    count: int,
    sim_port_base: int = DEFAULT_SIM_PORT_BASE,
    report: Path | None = None,
    metrics_port_base: int = DEFAULT_METRICS_PORT_BASE,
    prometheus_port: int = 9090,
) -> int:
    """Run the demo against the configured RabbitMQ and PostgreSQL; 0 when nothing was lost
    and the funnel is exactly what the population's truth says (2: a port of the plan is
    taken)."""
    ports = sim_ports(sim_port_base)
    metrics = metrics_ports(metrics_port_base)
    plan = {
        **{f"simulator {name}": port for name, port in ports.items()},
        "edge": settings.edge_port,
        **{f"{name} metrics": port for name, port in metrics.items()},
        "prometheus": prometheus_port,
    }
    if len(set(plan.values())) < len(plan):
        print(f"intake demo: ports used twice in the plan {plan}")
        return 2
    busy = busy_ports(plan)
    if busy:
        print(f"intake demo: ports already in use: {busy}; free them or choose other ports")
        return 2
    log_dir = Path(tempfile.mkdtemp(prefix="intake-demo-"))
    wired = Ports(**ports).wire(
        settings.replace(
            edge_access_log=False,
            public_base_url=f"http://{settings.edge_host}:{settings.edge_port}",
        )
    )
    return asyncio.run(_run(wired, count, log_dir, ports, metrics, report, prometheus_port))
