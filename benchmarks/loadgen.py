"""The wave-opening load generator: shaped, open-loop registrants, HDR latencies, every 202 kept.

Each registrant of a synthetic population (:mod:`simulators.population`) is *scheduled* by a
profile and sent at that time whatever earlier ones got back (open loop), so a stalled server
cannot slow the offered load down and hide its stall (no coordinated omission). Latency is
measured from the scheduled time to the registrant's final answer, retries included, into an
HDR histogram (``hdrhistogram``: every value kept to 3 significant digits from 1 µs to an
hour; the encoded histogram is in the result, so any percentile can be read back later).

A registrant behaves as a person with a browser: a ``503`` is sent again after its
``Retry-After`` with the same ``Idempotency-Key``; a request not answered within the person's
patience (``--timeout``, 10 s, counted from the click) is abandoned and, like a broken
connection, sent again after an exponential backoff with jitter (pressing refresh); a ``422`` is
final (the form is wrong, as the population says it is); up to ``--connections`` requests are on
the wire at once, the others wait in the generator (their wait counts in their latency).

Profiles (``--count`` and ``--rate`` scale them):

- ``peak``: the 2020 peak, 80,000 registrations in one minute (1,333/s, constant).
- ``opening``: a wave opening: a 15 s ramp to 1,333/s, 45 s at the peak, then a tail decaying
  with a 120 s time constant, 200,000 registrations in about 4.3 minutes.
- ``day``: the whole 1,432,133 registrations of the first 21 hours of 2020, as fast as the
  system takes them: closed loop, each of ``--connections`` registrants sends the next form
  as soon as its own was accepted (throughput, not latency, is the figure).
- ``ci``: a short opening (3,000 registrations, ramp to 300/s) with the population's invalid
  forms and repeated NIKs, for the test suite.

The generator pins itself to one CPU (``--cpu``, default the last one) and reports its own
CPU time: a share near 1.0 means it, not the server, was the limit. ``--ceiling S`` measures
its ceiling instead: closed loop for S seconds against a server that answers at once
(:mod:`benchmarks.bare`).

It writes the result as JSON (``--out``) with one sample per second (``series``: offered,
sent, accepted, shed, invalid, errors, latency percentiles of the answers of that second, the
generator's CPU share) and the ids of every ``202`` (``--ids``, one per line), for the loss
audit against the database (:mod:`benchmarks.wave`).

    python -m benchmarks.loadgen --url http://127.0.0.1:8080 --profile ci --out r.json --ids ids
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import random
import sys
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import uvloop
from hdrh.histogram import HdrHistogram

from demo.client import Answer, ConnectionLost, Pool
from intake.validation import today_wib
from simulators.population import Registrant, population

PEAK_RATE = 80_000 / 60  # the 2020 peak: 80,000 registrations within one minute
DAY_COUNT = 1_432_133  # registered in the first 21 hours of the first wave, 2020

# Latency histograms: microseconds, 1 µs to one hour, 3 significant digits.
_HDR_RANGE = (1, 3_600_000_000, 3)


@dataclass(frozen=True, slots=True)
class Profile:
    """When each registrant is sent. Open loop: a rate that ramps linearly from 0 to ``rate``
    over ``ramp_s``, holds it for ``hold_s``, then decays exponentially with time constant
    ``tail_s`` (``None``: holds on) until ``count`` are scheduled. Closed loop (``closed``):
    ``connections`` registrants send back to back."""

    name: str
    count: int
    rate: float
    ramp_s: float = 0.0
    hold_s: float = math.inf
    tail_s: float | None = None
    closed: bool = False
    connections: int = 1024
    invalid_share: float = 0.0
    duplicate_share: float = 0.0
    description: str = ""

    def scaled(self, count: int | None, rate: float | None) -> Profile:
        """The same shape for ``count`` registrants at a peak of ``rate``: the ramp, hold
        and tail stretch so that the share of registrants in each part stays the same."""
        new_count = self.count if count is None else count
        new_rate = self.rate if rate is None else rate
        stretch = (new_count / self.count) * (self.rate / new_rate)
        return Profile(
            name=self.name,
            count=new_count,
            rate=new_rate,
            ramp_s=self.ramp_s * stretch,
            hold_s=self.hold_s * stretch,
            tail_s=None if self.tail_s is None else self.tail_s * stretch,
            closed=self.closed,
            connections=self.connections,
            invalid_share=self.invalid_share,
            duplicate_share=self.duplicate_share,
            description=self.description,
        )

    def rate_at(self, t: float) -> float:
        if t < self.ramp_s:
            return self.rate * t / self.ramp_s
        if t < self.ramp_s + self.hold_s or self.tail_s is None:
            return self.rate
        # A floor of 5 % of the peak so that a tail always ends.
        return self.rate * max(0.05, math.exp(-(t - self.ramp_s - self.hold_s) / self.tail_s))

    def schedule(self) -> Iterator[float]:
        """The scheduled send time of each registrant, in seconds from the start (open loop)."""
        if self.closed:
            raise ValueError(f"profile {self.name} is closed loop: it has no schedule")
        step = 0.001
        emitted, due, t = 0, 0.0, 0.0
        while emitted < self.count:
            rate = self.rate_at(t + step / 2)
            due += rate * step
            while emitted < self.count and emitted + 1 <= due:
                # Spread evenly within the step.
                yield t + step * (emitted + 1 - (due - rate * step)) / max(rate * step, 1e-12)
                emitted += 1
            t += step


PROFILES: dict[str, Profile] = {
    "peak": Profile(
        "peak",
        count=80_000,
        rate=PEAK_RATE,
        description="80,000 registrations in one minute (1,333/s), the 2020 peak",
    ),
    "opening": Profile(
        "opening",
        count=200_000,
        rate=PEAK_RATE,
        ramp_s=15.0,
        hold_s=45.0,
        tail_s=120.0,
        invalid_share=0.10,
        duplicate_share=0.05,
        description="a 15 s ramp to 1,333/s, 45 s at the peak, a tail decaying over 120 s",
    ),
    "day": Profile(
        "day",
        count=DAY_COUNT,
        rate=math.inf,
        closed=True,
        connections=256,
        description="the 1,432,133 of the first 21 hours of 2020, as fast as they are taken",
    ),
    "ci": Profile(
        "ci",
        count=3_000,
        rate=300.0,
        ramp_s=3.0,
        hold_s=4.0,
        tail_s=6.0,
        connections=256,
        invalid_share=0.10,
        duplicate_share=0.05,
        description="a short opening: a 3 s ramp to 300/s, 4 s at the peak, a 6 s tail",
    ),
}


@dataclass
class _Second:
    """What happened in the current one-second interval."""

    offered: int = 0
    sent: int = 0
    accepted: int = 0
    shed: int = 0
    invalid: int = 0
    errors: int = 0


@dataclass
class Tally:
    ids: list[str | None]
    answers: Counter[str] = field(default_factory=Counter)
    first_answers: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    latency: HdrHistogram = field(default_factory=lambda: HdrHistogram(*_HDR_RANGE))
    final: HdrHistogram = field(default_factory=lambda: HdrHistogram(*_HDR_RANGE))
    interval: HdrHistogram = field(default_factory=lambda: HdrHistogram(*_HDR_RANGE))
    lag: HdrHistogram = field(default_factory=lambda: HdrHistogram(*_HDR_RANGE))
    second: _Second = field(default_factory=_Second)
    retry_after_s: Counter[int] = field(default_factory=Counter)
    # Every registrant's first answer, whatever it was, from the scheduled send.
    first: HdrHistogram = field(default_factory=lambda: HdrHistogram(*_HDR_RANGE))
    # How many registrants needed how many attempts (first try and retries).
    attempts: Counter[int] = field(default_factory=Counter)
    inflight: int = 0
    max_inflight: int = 0
    scheduled: int = 0
    first_send: float | None = None
    last_accepted: float | None = None


def _micros(seconds: float) -> int:
    return max(1, min(_HDR_RANGE[1], round(seconds * 1_000_000)))


class Generator:
    """Registrants of one run: their prepared requests, their behaviour, the tally."""

    def __init__(
        self,
        pool: Pool,
        path: str,
        people: Sequence[Registrant],
        *,
        retry: bool = True,
        timeout_s: float = 10.0,
        give_up_s: float = 1800.0,
    ) -> None:
        self.pool = pool
        self.people = people
        self.retry = retry
        self.timeout_s = timeout_s
        self.give_up_s = give_up_s
        self.tally = Tally(ids=[None] * len(people))
        self._head = pool.request_head("POST", path) + b"Content-Type: application/json\r\n"
        self._rng = random.Random()

    def _request(self, index: int, key: bytes) -> bytes:
        body = orjson.dumps(self.people[index].form)
        return b"%bContent-Length: %d\r\nIdempotency-Key: %b\r\n\r\n%b" % (
            self._head,
            len(body),
            key,
            body,
        )

    async def registrant(self, index: int, scheduled: float) -> None:
        """One person: sends the form until it is accepted, refused, or they give up."""
        tally = self.tally
        now = time.perf_counter()
        if tally.first_send is None:
            tally.first_send = now
        tally.lag.record_value(_micros(now - scheduled))
        tally.second.offered += 1
        expected_valid = self.people[index].kind in ("valid", "duplicate")
        request = self._request(index, uuid.uuid4().hex.encode())
        failures, first, attempts = 0, True, 0
        while True:
            attempts += 1
            tally.second.sent += 1
            sent = time.perf_counter()
            tally.inflight += 1
            tally.max_inflight = max(tally.max_inflight, tally.inflight)
            answer: Answer | None = None
            try:
                # A registrant's patience runs from the click: the first attempt's from the
                # scheduled time, its wait for a free connection included.
                patience = self.timeout_s if not first else scheduled + self.timeout_s - sent
                answer = await self.pool.request(request, max(0.001, patience))
                status = str(answer.status)
            except TimeoutError:
                status = "timeout"
            except (ConnectionLost, OSError) as exc:
                status = f"error:{type(exc).__name__}"
            finally:
                tally.inflight -= 1
            done = time.perf_counter()
            tally.answers[status] += 1
            if first:
                tally.first_answers[status] += 1
                tally.first.record_value(_micros(done - scheduled))
                first = False
            tally.interval.record_value(_micros(done - scheduled))
            if answer is not None and answer.status == 202:
                tally.second.accepted += 1
                tally.ids[index] = orjson.loads(answer.body)["id"]
                tally.latency.record_value(_micros(done - scheduled))
                tally.last_accepted = done
                tally.outcomes["accepted" if expected_valid else "accepted_invalid"] += 1
                break
            if answer is not None and 400 <= answer.status < 500:
                tally.second.invalid += 1
                tally.outcomes["refused" if not expected_valid else "refused_valid"] += 1
                break
            if answer is not None and answer.status == 503:
                tally.second.shed += 1
            else:
                tally.second.errors += 1
            if not self.retry:
                tally.outcomes["not_accepted"] += 1
                break
            if done - scheduled > self.give_up_s:
                tally.outcomes["gave_up"] += 1
                break
            retry_after = answer.retry_after if answer is not None else None
            if answer is not None and answer.status == 503 and retry_after is not None:
                try:
                    delay_s = float(int(retry_after))
                except ValueError:
                    delay_s = 1.0
                tally.retry_after_s[int(delay_s)] += 1
            else:  # no answer, an error, or a 503 without Retry-After: back off
                failures += 1
                delay_s = min(30.0, 2.0**failures) * self._rng.uniform(0.5, 1.0)
            await asyncio.sleep(delay_s)
        # Every registrant's last answer, whatever it was (a timeout at its timeout).
        tally.final.record_value(_micros(done - scheduled))
        tally.attempts[attempts] += 1

    async def open_loop(self, profile: Profile, start: float) -> None:
        tasks: set[asyncio.Task[None]] = set()
        for index, offset in enumerate(profile.schedule()):
            scheduled = start + offset
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            self.tally.scheduled = index + 1
            task = asyncio.create_task(self.registrant(index, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.wait(set(tasks))

    async def closed_loop(self, connections: int, until: float | None = None) -> None:
        """``connections`` registrants back to back through the population (``until``: stop
        taking new ones at that time and start again at the first form when it runs out)."""
        cursor = 0

        async def worker() -> None:
            nonlocal cursor
            while True:
                if until is not None:
                    if time.perf_counter() >= until:
                        return
                    index = cursor % len(self.people)
                elif cursor >= len(self.people):
                    return
                else:
                    index = cursor
                cursor += 1
                self.tally.scheduled = cursor
                await self.registrant(index, time.perf_counter())

        await asyncio.gather(*(worker() for _ in range(connections)))


def _summary(histogram: HdrHistogram) -> dict[str, float | None]:
    if histogram.get_total_count() == 0:
        return {"p50": None, "p90": None, "p99": None, "p99.9": None, "max": None}
    return {
        "p50": histogram.get_value_at_percentile(50) / 1000,
        "p90": histogram.get_value_at_percentile(90) / 1000,
        "p99": histogram.get_value_at_percentile(99) / 1000,
        "p99.9": histogram.get_value_at_percentile(99.9) / 1000,
        "max": histogram.get_max_value() / 1000,
    }


def _attempts(counts: Counter[int]) -> dict[str, Any]:
    """Attempts per registrant (first try and retries): mean, max, and how many needed each."""
    registrants = sum(counts.values())
    return {
        "mean": round(sum(n * c for n, c in counts.items()) / registrants, 3)
        if registrants
        else None,
        "max": max(counts) if counts else None,
        "registrants_by_attempts": {str(n): counts[n] for n in sorted(counts)},
    }


async def _sampler(
    generator: Generator, start: float, series: list[dict[str, Any]], stop: asyncio.Event
) -> None:
    """Every second: the interval's counters and latency percentiles, the generator's CPU share;
    a progress line every 5 s."""
    tally = generator.tally
    total = len(generator.people)
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    tick = 0
    while not stop.is_set():
        tick += 1
        next_tick = start + tick
        delay = next_tick - time.perf_counter()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        cpu_now, wall_now = time.process_time(), time.perf_counter()
        second, tally.second = tally.second, _Second()
        sample: dict[str, Any] = {
            "t": round(wall_now - start, 3),
            "offered": second.offered,
            "sent": second.sent,
            "accepted": second.accepted,
            "shed": second.shed,
            "invalid": second.invalid,
            "errors": second.errors,
            "latency_ms": _summary(tally.interval) if tally.interval.get_total_count() else None,
            "inflight": tally.inflight,
            "generator_cpu": round((cpu_now - cpu_before) / max(wall_now - wall_before, 1e-6), 3),
        }
        tally.interval.reset()
        cpu_before, wall_before = cpu_now, wall_now
        series.append(sample)
        if tick % 5 == 0:
            accepted = tally.outcomes["accepted"] + tally.outcomes["accepted_invalid"]
            print(
                f"loadgen: t={sample['t']:.0f}s scheduled {tally.scheduled:,}/{total:,} "
                f"accepted {accepted:,} refused {tally.outcomes['refused']:,} "
                f"in flight {tally.inflight:,}; last second: {second.accepted:,} accepted, "
                f"{second.shed:,} shed, {second.errors:,} errors, p99 "
                f"{(sample['latency_ms'] or {}).get('p99')} ms; "
                f"generator CPU {sample['generator_cpu']:.2f}",
                file=sys.stderr,
                flush=True,
            )


async def run(
    url: str,
    profile: Profile,
    *,
    seed: int = 2020,
    retry: bool = True,
    timeout_s: float = 10.0,
    ceiling_s: float | None = None,
    ids_path: Path | None = None,
    give_up_s: float = 1800.0,
) -> dict[str, Any]:
    """Run ``profile`` against ``url`` (the edge's base URL) and return the result."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    people = population(
        profile.count,
        seed=seed,
        today=today_wib(),
        invalid_share=profile.invalid_share,
        duplicate_share=profile.duplicate_share,
    )
    pool = Pool(host, port, profile.connections)
    generator = Generator(
        pool, "/v1/registrations", people, retry=retry, timeout_s=timeout_s, give_up_s=give_up_s
    )
    series: list[dict[str, Any]] = []
    stop = asyncio.Event()
    cpu_start = time.process_time()
    start = time.perf_counter() + 0.05
    start_wall = time.time() + 0.05
    sampler = asyncio.create_task(_sampler(generator, start, series, stop))
    try:
        if ceiling_s is not None:
            await asyncio.sleep(max(0.0, start - time.perf_counter()))
            await generator.closed_loop(profile.connections, until=start + ceiling_s)
        elif profile.closed:
            await asyncio.sleep(max(0.0, start - time.perf_counter()))
            await generator.closed_loop(profile.connections)
        else:
            await generator.open_loop(profile, start)
    finally:
        end = time.perf_counter()
        stop.set()
        await sampler
        pool.close()
    cpu_s = time.process_time() - cpu_start
    tally = generator.tally
    elapsed = end - start
    if ids_path is not None:
        with ids_path.open("w") as out:
            for registration_id in tally.ids:
                if registration_id is not None:
                    out.write(registration_id + "\n")
    accepted = sum(1 for i in tally.ids if i is not None)
    expected = Counter(
        "valid" if p.kind in ("valid", "duplicate") else "invalid"
        for p in people[: tally.scheduled]
    )
    return {
        "profile": profile.name,
        "description": profile.description,
        "url": url,
        "mode": "ceiling" if ceiling_s is not None else ("closed" if profile.closed else "open"),
        "count": profile.count,
        "peak_rate": None if math.isinf(profile.rate) else round(profile.rate, 1),
        "shape_s": {"ramp": profile.ramp_s, "hold": profile.hold_s, "tail": profile.tail_s},
        "connections": profile.connections,
        "retry": retry,
        "seed": seed,
        "start_wall": start_wall,
        "first_send_s": round(tally.first_send - start, 6) if tally.first_send else None,
        "last_accepted_s": round(tally.last_accepted - start, 6) if tally.last_accepted else None,
        "elapsed_s": round(elapsed, 3),
        "scheduled": tally.scheduled,
        "expected": dict(expected),
        "answers": dict(sorted(tally.answers.items())),
        "first_answers": dict(sorted(tally.first_answers.items())),
        "outcomes": dict(sorted(tally.outcomes.items())),
        "accepted": accepted,
        "accepted_per_s": round(accepted / elapsed, 1),
        "answers_202_per_s": round(tally.answers["202"] / elapsed, 1),
        "answers_per_s": round(sum(tally.answers.values()) / elapsed, 1),
        "retry_after_s": {str(k): v for k, v in sorted(tally.retry_after_s.items())},
        # From the scheduled send to the 202 (retries included), and to the final answer of
        # every registrant whatever it was (accepted, refused, shed or failed without retry).
        "latency_ms": _summary(tally.latency),
        "final_answer_latency_ms": _summary(tally.final),
        "first_answer_latency_ms": _summary(tally.first),
        "attempts": _attempts(tally.attempts),
        "timeouts": tally.answers["timeout"],
        "latency_hdr": tally.latency.encode().decode(),
        "send_lag_ms": _summary(tally.lag),
        "max_inflight": tally.max_inflight,
        "connections_opened": pool.opened,
        "generator": {
            "cpu_s": round(cpu_s, 2),
            "cpu_share": round(cpu_s / max(elapsed, 1e-9), 3),
            "cpus": sorted(os.sched_getaffinity(0)),
        },
        "series": series,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the edge's base URL")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="ci")
    parser.add_argument("--count", type=int, default=None, help="registrants (scales the shape)")
    parser.add_argument("--rate", type=float, default=None, help="peak rate (scales the shape)")
    parser.add_argument("--connections", type=int, default=None, help="requests on the wire")
    parser.add_argument("--seed", type=int, default=2020, help="the population's seed")
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="patience: a request not answered by then is abandoned and sent again, s",
    )
    parser.add_argument("--no-retry", action="store_true", help="the first answer is final")
    parser.add_argument(
        "--give-up", type=float, default=1800.0, help="a registrant stops retrying after this, s"
    )
    parser.add_argument(
        "--ceiling", type=float, default=None, metavar="S", help="closed loop for S seconds"
    )
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU (default: last)")
    parser.add_argument("--out", type=Path, required=True, help="the result, as JSON")
    parser.add_argument("--ids", type=Path, default=None, help="the 202 ids, one per line")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile].scaled(args.count, args.rate)
    if args.connections is not None:
        profile = dataclasses.replace(profile, connections=args.connections)
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1] if args.cpu is None else args.cpu})
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(
            run(
                args.url,
                profile,
                seed=args.seed,
                retry=not args.no_retry,
                timeout_s=args.timeout,
                ceiling_s=args.ceiling,
                ids_path=args.ids,
                give_up_s=args.give_up,
            )
        )
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


@dataclass
class Offered:
    """A finished generator process: its result and the ids it was answered 202."""

    result: dict[str, Any]
    ids: list[str]


async def spawn(
    url: str,
    profile: str,
    work_dir: Path,
    *,
    count: int | None = None,
    rate: float | None = None,
    connections: int | None = None,
    seed: int = 2020,
    retry: bool = True,
    timeout_s: float = 10.0,
    ceiling_s: float | None = None,
    cpu: int | None = None,
    give_up_s: float | None = None,
) -> Offered:
    """Run the generator as a process of its own (pinned to one CPU, its progress on this
    process's stderr) and return what it saw."""
    os.makedirs(work_dir, exist_ok=True)
    tag = f"{profile}-{uuid.uuid4().hex[:8]}"
    out, ids = work_dir / f"{tag}.json", work_dir / f"{tag}.ids"
    argv = [sys.executable, "-m", "benchmarks.loadgen", f"--url={url}", f"--profile={profile}"]
    argv += [f"--out={out}", f"--ids={ids}", f"--seed={seed}", f"--timeout={timeout_s}"]
    for flag, value in (
        ("count", count),
        ("rate", rate),
        ("connections", connections),
        ("ceiling", ceiling_s),
        ("cpu", cpu),
        ("give-up", give_up_s),
    ):
        if value is not None:
            argv.append(f"--{flag}={value}")
    if not retry:
        argv.append("--no-retry")
    process = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL)
    try:
        code = await process.wait()
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    if code != 0:
        raise RuntimeError(f"the load generator exited with {code}")
    result = orjson.loads(out.read_bytes())
    accepted = ids.read_text().split()
    out.unlink()
    ids.unlink()
    return Offered(result, accepted)
