"""Chaos: a wave through the application on a real local cluster while faults are injected, one
at a time and then combined, and a checker that audits every answer (``make chaos``).

    sudo .venv/bin/python -m benchmarks.chaos [--rate 200] [--duration 40] [--hold 20]
        [--nemeses rabbit-leader-kill,...] [--short]

The cluster is :mod:`cluster.local` (three RabbitMQ nodes, three PostgreSQL members under
Patroni) with the application of :mod:`cluster.app` on it (two edges, ``intake supervise``
with every lane, the simulators), in a directory and on ports of its own, removed at the end.
For each nemesis, the simulators are started afresh for that run's people; the load generator
(:mod:`benchmarks.loadgen`: people who retry a ``503`` after its ``Retry-After`` and a request
unanswered after 10 s, always with the same ``Idempotency-Key``) offers ``--rate``
registrations per second for ``--duration`` seconds; the fault starts a quarter into the offer
and lasts ``--hold`` seconds; then it is healed and the cluster made whole before the next.

The checker reads the generator's answers, the database and the simulators, per nemesis:
offered; answered ``202``; ``503`` answers; **lost** (a ``202`` id not stored) and
**duplicated** (stored more than once); stored without a ``202`` (after a ``503`` that made no
promise, or a request its person gave up on: counted apart); **not settled** (a stored
registration with a check still pending or retrying once nothing has moved for
``SETTLE_STILL_S``: the checker waits as long as the lanes make progress); emails and
SMS **sent twice** to the same person; the time from the fault to the first ``202`` and until
the accepted rate is back at 90 % of the offered one. Exit 1 when anything was lost,
duplicated, left unsettled or sent twice.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import datetime as dt
import os
import random
import shutil
import signal
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from benchmarks._support import (
    RESULTS_DIR,
    BenchError,
    markdown_table,
    progress,
    require_cores,
    run_benchmark,
)
from benchmarks.loadgen import Offered, spawn
from cluster import patroni
from cluster.app import App
from cluster.local import Cluster
from cluster.rabbit import RabbitError, RabbitNode
from core.settings import Settings
from core.topology import PERSIST_QUEUE
from intake.validation import today_wib

NEMESES = (
    "rabbit-leader-kill",
    "rabbit-pause",
    "rabbit-partition",
    "postgres-primary-kill",
    "process-kill",
    "memory-alarm",
    "disk-alarm",
    "combined",
)
SHORT = ("rabbit-leader-kill", "rabbit-partition", "postgres-primary-kill", "process-kill")
# The checker waits while the registrations settle: as long as the open count keeps falling
# (the lanes work through what the wave left, at the ministries' pace), up to SETTLE_MAX_S;
# what has not moved for SETTLE_STILL_S is stuck, and counted as not settled.
SETTLE_STILL_S = 150.0  # longer than the 120 s retry tier a next attempt may wait in
SETTLE_MAX_S = 1800.0
# How long a partition may stay recorded, every node running, before the rig restarts the
# losing side (Rig.whole).
SPLIT_GRACE_S = 60.0
# Where each run's cluster lives (the postgres user must reach its members' directories).
CHAOS_DIR = Path("/var/lib/intake-chaos")
# The memory watermark and disk limit the cluster's nodes are configured with (cluster.rabbit).
MEMORY_WATERMARK, DISK_FREE_LIMIT = "0.2", "1GB"


@dataclasses.dataclass
class Rig:
    cluster: Cluster
    app: App
    settings: Settings
    work_dir: Path
    struck_at: float = 0.0  # when the current fault struck (time.time())
    # What the rig did as an operator would, beyond healing the fault (reported per nemesis).
    operator: list[str] = dataclasses.field(default_factory=list)

    def strike(self) -> None:
        """Called by a fault at the moment it strikes (after finding its victim)."""
        if not self.struck_at:
            self.struck_at = time.time()

    def leader(self) -> RabbitNode:
        return self.cluster.leading(PERSIST_QUEUE) or self.cluster.rabbits[0]

    def primary(self) -> patroni.PgMember:
        member = patroni.primary(self.cluster.members)
        if member is None:
            raise BenchError("no PostgreSQL primary to fault")
        return member

    def workers(self) -> list[int]:
        """The pids of the workers ``intake supervise`` runs."""
        supervisor = self.app.pids().get("supervise")
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if supervisor is not None and int(fields[1]) == supervisor:
                children.append(int(stat.parent.name))
        return children

    async def whole(self, timeout_s: float = 300.0) -> None:
        """Until every node and member runs again, no partition is recorded any more, and the
        edges answer.

        RabbitMQ 3.10's autoheal asks once per event (a node up, an inconsistent database):
        when that one request is denied (a node had not reconnected to every other yet), the
        partition stays recorded, every node running, until the losing side restarts. After
        ``SPLIT_GRACE_S`` of that, the rig restarts the losing side's application as an
        operator would, and says so in the report."""
        deadline = time.monotonic() + timeout_s
        nodes = sorted(n.name for n in self.cluster.rabbits)
        split_since: float | None = None
        while True:
            running = sorted(await asyncio.to_thread(self.cluster.rabbit_running))
            split = await asyncio.to_thread(self.cluster.rabbit_split)
            pg = await asyncio.to_thread(self.cluster.postgres_whole)
            if running == nodes and not split and pg and await asyncio.to_thread(self.app.ready):
                return
            if running == nodes and split:
                split_since = split_since or time.monotonic()
                if time.monotonic() - split_since > SPLIT_GRACE_S:
                    await self._restart_split_losers(time.monotonic() - split_since)
                    split_since = None
            else:
                split_since = None
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the cluster was not whole again: rabbit {running}, split {split}, pg {pg}"
                )
            await asyncio.sleep(1.0)

    async def _restart_split_losers(self, waited_s: float) -> None:
        losers = await asyncio.to_thread(self.cluster.split_losers)
        for node in losers:
            progress(
                f"  split still recorded {waited_s:.0f} s, every node running:"
                f" restarting {node.name}"
            )
            await asyncio.to_thread(self.cluster.restart_app, node)
        names = ", ".join(n.name for n in losers) or "none found"
        self.operator.append(
            f"the partition stayed recorded {waited_s:.0f} s with every node running;"
            f" the losing side restarted ({names})"
        )


# --- the nemeses ---------------------------------------------------------------------------
# Each is (inject, heal): inject returns what it did, heal undoes it.

Fault = tuple[Callable[[Rig], Awaitable[str]], Callable[[Rig, str], Awaitable[None]]]


async def _kill_leader(rig: Rig) -> str:
    node = await asyncio.to_thread(rig.leader)
    rig.strike()
    node.signal(signal.SIGKILL)
    return node.name


async def _restart_node(rig: Rig, name: str) -> None:
    for node in rig.cluster.rabbits:
        if node.name in name.split("+") and node.pid() is None:
            node.start()
            await asyncio.to_thread(node.wait)


async def _pause_leader(rig: Rig) -> str:
    node = await asyncio.to_thread(rig.leader)
    rig.strike()
    node.signal(signal.SIGSTOP)
    return node.name


async def _resume_node(rig: Rig, name: str) -> None:
    for node in rig.cluster.rabbits:
        if node.name == name:
            node.signal(signal.SIGCONT)


async def _partition_leader(rig: Rig) -> str:
    node = await asyncio.to_thread(rig.leader)
    rig.strike()
    await asyncio.to_thread(rig.cluster.partition, node)
    return node.name


async def _heal_partition(rig: Rig, _: str) -> None:
    await asyncio.to_thread(rig.cluster.heal)


async def _kill_primary(rig: Rig) -> str:
    member = await asyncio.to_thread(rig.primary)
    rig.strike()
    member.kill()
    return member.name


async def _restart_member(rig: Rig, name: str) -> None:
    for member in rig.cluster.members:
        if member.name in name.split("+") and member.patroni_pid() is None:
            member.start()


async def _kill_processes(rig: Rig) -> str:
    victims = ["edge-1"]
    workers = rig.workers()
    rig.strike()
    edge = rig.app.pids().get("edge-1")
    if edge is not None:
        os.kill(edge, signal.SIGKILL)
    for pid in random.sample(workers, min(2, len(workers))):
        os.kill(pid, signal.SIGKILL)
        victims.append(f"worker {pid}")
    return ", ".join(victims)


async def _restart_processes(rig: Rig, _: str) -> None:
    # The supervisor replaces its workers itself; the edge is started again as an operator
    # (or Kubernetes) would.
    await asyncio.to_thread(rig.app.up, rig.settings)


def _alarm(node: int, setting: str, raised: str, cleared: str) -> Fault:
    """A resource alarm on node ``node`` (0-based): ``rabbitmqctl <setting> <raised>``, healed
    with ``<cleared>``, the value the cluster's nodes are configured with."""

    async def inject(rig: Rig) -> str:
        target = rig.cluster.rabbits[node]
        rig.strike()
        await asyncio.to_thread(target.ctl, setting, raised)
        return target.name

    async def heal(rig: Rig, _: str) -> None:
        await asyncio.to_thread(rig.cluster.rabbits[node].ctl, setting, cleared)

    return inject, heal


async def _combined(rig: Rig) -> str:
    node = await _kill_leader(rig)
    member = await _kill_primary(rig)
    processes = await _kill_processes(rig)
    return f"{node}+{member}+{processes}"


async def _heal_combined(rig: Rig, what: str) -> None:
    await _restart_node(rig, what)
    await _restart_member(rig, what)
    await _restart_processes(rig, what)


FAULTS: dict[str, Fault] = {
    "rabbit-leader-kill": (_kill_leader, _restart_node),
    "rabbit-pause": (_pause_leader, _resume_node),
    "rabbit-partition": (_partition_leader, _heal_partition),
    "postgres-primary-kill": (_kill_primary, _restart_member),
    "process-kill": (_kill_processes, _restart_processes),
    "memory-alarm": _alarm(0, "set_vm_memory_high_watermark", "0.00001", MEMORY_WATERMARK),
    "disk-alarm": _alarm(1, "set_disk_free_limit", "100000GB", DISK_FREE_LIMIT),
    "combined": (_combined, _heal_combined),
}
DESCRIPTIONS = {
    "rabbit-leader-kill": "kill -9 of the RabbitMQ node that leads intake.registrations",
    "rabbit-pause": "SIGSTOP of the RabbitMQ node that leads intake.registrations",
    "rabbit-partition": (
        "the RabbitMQ node that leads intake.registrations cut off from the other nodes and"
        " from its clients (iptables drops every packet from or to its address)"
    ),
    "postgres-primary-kill": "kill -9 of the PostgreSQL primary (Patroni and postmaster)",
    "process-kill": "kill -9 of one edge and two random workers",
    "memory-alarm": "a memory alarm on one RabbitMQ node (publishers blocked cluster-wide)",
    "disk-alarm": "a disk alarm on one RabbitMQ node (publishers blocked cluster-wide)",
    "combined": "the queue leader's node, the primary, one edge and two workers killed at once",
}
# Not in "combined": with the leader's node killed, a second node cut off would leave no
# majority, and nothing could be accepted until the heal (a fault the cluster is not built for).


# --- one run -------------------------------------------------------------------------------


async def run_nemesis(rig: Rig, name: str, index: int, args: argparse.Namespace) -> dict[str, Any]:
    inject, heal = FAULTS[name]
    count = round(args.rate * args.duration)
    seed = 7000 + index
    await restart_simulators(rig, seed, count)
    progress(f"{name}: {count:,} registrations at {args.rate:g}/s; {DESCRIPTIONS[name]}")
    started = dt.datetime.now(dt.UTC)
    offer = asyncio.create_task(
        spawn(rig.app.url, "peak", rig.work_dir, count=count, rate=args.rate, seed=seed)
    )
    await asyncio.sleep(args.duration / 4)
    rig.struck_at = 0.0
    rig.operator = []
    what = await inject(rig)
    fault_at = rig.struck_at
    progress(f"  fault: {what}")
    await asyncio.sleep(max(0.0, fault_at + args.hold - time.time()))
    await heal(rig, what)
    healed_at = time.time()
    progress("  healed")
    offered: Offered = await offer
    await rig.whole()
    check = await checker(rig, offered, started)
    result = offered.result
    timing = recovery(result, fault_at, healed_at, args.rate)
    progress(
        f"  202 {len(offered.ids):,}, lost {check['lost']}, duplicated {check['duplicated']},"
        f" not settled {check['not_settled']}, sent twice {check['sent_twice']}"
    )
    if check["not_settled"]:
        progress(f"  checks by state: {check['check_states']}; open: {check['open_checks']}")
        queues = await asyncio.to_thread(
            rig.cluster.rabbits[0].ctl,
            "list_queues",
            "--vhost",
            "intake",
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
        )
        progress(f"  queues: {' | '.join(queues.split(chr(10))[2:])}")
        await asyncio.to_thread(_held_unacknowledged, rig, queues)
        for status in rig.app.worker_statuses():
            if status.get("in_hand") or status.get("inflight"):
                progress(f"  worker in hand: {status}")
    return {
        "nemesis": name,
        "description": DESCRIPTIONS[name],
        "fault": what,
        "operator": list(rig.operator),
        "offered": result["scheduled"],
        "answers": result["answers"],
        "accepted": len(offered.ids),
        "attempts": result["attempts"],
        "timeouts": result["timeouts"],
        "first_answer_ms": result["first_answer_latency_ms"],
        **timing,
        **check,
    }


async def restart_simulators(rig: Rig, seed: int, count: int) -> None:
    """The simulators afresh for this run's people (their mailbox and phones empty)."""
    # The people the generator sends (the "peak" profile: no invalid forms, no repeated NIK).
    args = [f"--seed={seed}", f"--count={count}", f"--today={today_wib().isoformat()}"]
    args += ["--invalid-share=0", "--duplicate-share=0"]
    await asyncio.to_thread(rig.app.restart_simulators, rig.settings, args)


def recovery(
    result: dict[str, Any], fault_at: float, healed_at: float, rate: float
) -> dict[str, Any]:
    """From the generator's per-second samples: the seconds from the fault to the first second
    with a ``202`` and to the first second back at 90 % of the offered rate (1 s resolution)."""
    fault_t = fault_at - result["start_wall"]
    after = [s for s in result["series"] if s["t"] > fault_t]
    first = next((s["t"] - fault_t for s in after if s["accepted"] > 0), None)
    full = next((s["t"] - fault_t for s in after if s["accepted"] >= 0.9 * rate), None)
    slow = sum(1 for s in after if s["accepted"] < 0.5 * rate and s["offered"] > 0)
    return {
        "fault_s": round(fault_t, 1),
        "hold_s": round(healed_at - fault_at, 1),
        "first_202_after_fault_s": None if first is None else round(first, 1),
        "full_rate_after_fault_s": None if full is None else round(full, 1),
        "seconds_below_half_rate": slow,
    }


async def checker(rig: Rig, offered: Offered, started: dt.datetime) -> dict[str, Any]:
    """Every 202 stored exactly once; what was stored without one; what is not settled once
    the lanes drained; what the simulators received twice."""
    ids = list(set(offered.ids))
    pool = await asyncpg.create_pool(rig.cluster.database_url(), min_size=1, max_size=2)
    async with pool:
        deadline = time.monotonic() + SETTLE_MAX_S
        still_since, last_open = time.monotonic(), -1
        while True:
            stored = await pool.fetch(
                "SELECT id, count(*) AS n FROM registrations WHERE id = ANY($1::uuid[])"
                " GROUP BY id",
                ids,
            )
            unsettled = await pool.fetchval(
                "SELECT count(DISTINCT c.registration_id) FROM checks c JOIN registrations r"
                " ON r.id = c.registration_id WHERE r.submitted_at >= $1"
                " AND c.state IN ('pending', 'retrying')",
                started,
            )
            not_started = await pool.fetchval(
                "SELECT count(*) FROM registrations r WHERE r.submitted_at >= $1 AND"
                " r.status = 'received' AND NOT EXISTS"
                " (SELECT 1 FROM checks c WHERE c.registration_id = r.id)",
                started,
            )
            if len(stored) == len(ids) and unsettled == 0 and not_started == 0:
                break
            now = time.monotonic()
            open_now = len(ids) - len(stored) + unsettled + not_started
            if open_now != last_open:
                still_since, last_open = now, open_now
            if now - still_since > SETTLE_STILL_S or now > deadline:
                break
            await asyncio.sleep(2.0)
        total = await pool.fetchval(
            "SELECT count(*) FROM registrations WHERE submitted_at >= $1", started
        )
        states = await pool.fetch(
            "SELECT c.state, count(*) AS n FROM checks c JOIN registrations r"
            " ON r.id = c.registration_id WHERE r.submitted_at >= $1 GROUP BY c.state",
            started,
        )
        open_checks = await pool.fetch(
            "SELECT c.check_name, c.state, c.dispatched_at IS NOT NULL AS dispatched, c.attempts,"
            " count(*) AS n FROM checks c JOIN registrations r ON r.id = c.registration_id"
            " WHERE r.submitted_at >= $1 AND c.state IN ('pending', 'retrying')"
            " GROUP BY 1, 2, 3, 4",
            started,
        )
    counts = {str(r["id"]): int(r["n"]) for r in stored}
    sent = await asyncio.to_thread(sent_twice, rig)
    return {
        "stored": sum(counts.values()),
        "lost": len(ids) - len(counts),
        "duplicated": sum(1 for n in counts.values() if n > 1),
        "stored_without_202": total - sum(counts.values()),
        "not_settled": int(unsettled) + int(not_started),
        "check_states": {r["state"]: int(r["n"]) for r in states},
        "open_checks": [dict(r) for r in open_checks],
        **sent,
    }


def _held_unacknowledged(rig: Rig, listing: str) -> None:
    """For each queue holding unacknowledged messages: who the broker holds them for (its
    consumers and their channels) and its quorum members, as the broker tells."""
    node = rig.cluster.rabbits[0]
    for line in listing.splitlines()[2:]:
        fields = line.split("\t")
        if len(fields) < 3 or not fields[2].isdigit() or fields[2] == "0":
            continue
        for args in (
            ("list_consumers", "-p", "intake", "queue_name", "channel_pid", "prefetch_count"),
            ("list_channels", "pid", "connection", "messages_unacknowledged", "consumer_count"),
        ):
            try:
                text = node.ctl(*args)
            except RabbitError as exc:
                text = str(exc)
            rows = [
                r for r in text.splitlines()[2:] if args[0] == "list_channels" or fields[0] in r
            ]
            progress(f"  {args[0]} ({fields[0]}): {' | '.join(rows)}")
        try:
            status = node.ctl(
                "quorum_status", fields[0], "--vhost", "intake", tool="rabbitmq-queues"
            )
        except RabbitError as exc:
            status = str(exc)
        progress(f"  quorum_status {fields[0]}: {' | '.join(status.splitlines()[2:])}")


def _feed(url: str) -> list[dict[str, Any]]:
    """Every message of a simulator's feed (``?after=N`` pages)."""
    messages: list[dict[str, Any]] = []
    after = 0
    while True:
        with urllib.request.urlopen(f"{url}?after={after}", timeout=30) as answer:  # noqa: S310 - local
            page = orjson.loads(answer.read())
        messages += page["messages"]
        if not page["messages"]:
            return messages
        after = page["last"]


def sent_twice(rig: Rig) -> dict[str, int]:
    """Emails and SMS received more than once by the same recipient with the same text."""
    ports = rig.app.sim_ports
    mail = _feed(f"http://127.0.0.1:{ports.smtp_admin}/_sim/mail")
    sms = _feed(f"http://127.0.0.1:{ports.sms}/_sim/messages")
    twice = 0
    for messages, key in ((mail, "subject"), (sms, "text")):
        seen = collections.Counter((str(m.get("to")), str(m.get(key))) for m in messages)
        twice += sum(n - 1 for n in seen.values() if n > 1)
    return {"emails": len(mail), "sms": len(sms), "sent_twice": twice}


# --- the whole run -------------------------------------------------------------------------


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    require_cores(2)
    if os.geteuid() != 0:
        raise BenchError("the chaos suite needs root (Patroni runs PostgreSQL as postgres)")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    root = Path(args.dir or CHAOS_DIR / f"chaos-{stamp}")
    work_dir = RESULTS_DIR / "logs" / f"chaos-{stamp}"
    cluster = Cluster(root=root, base_port=args.base_port)
    app = App(cluster, edges=2)
    settings = app.settings(Settings.from_env())
    rig = Rig(cluster, app, settings, work_dir)
    results: dict[str, Any] = {
        "rate": args.rate,
        "duration_s": args.duration,
        "hold_s": args.hold,
        "runs": [],
    }
    try:
        progress(f"cluster: three RabbitMQ nodes, three Patroni members, the app ({root})")
        await asyncio.to_thread(cluster.up)
        await asyncio.to_thread(app.up, Settings.from_env())
        for index, name in enumerate(args.nemeses):
            results["runs"].append(await run_nemesis(rig, name, index, args))
    finally:
        # First of all, whatever happened (an error, ^C): no node stays cut off.
        cluster.heal()
        progress("cluster: down")
        await asyncio.to_thread(app.down)
        await asyncio.to_thread(cluster.down, not args.keep)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    bad = [
        r["nemesis"]
        for r in results["runs"]
        if r["lost"] or r["duplicated"] or r["not_settled"] or r["sent_twice"]
    ]
    results["verified"] = not bad
    results["failed"] = bad
    return results


def report(results: dict[str, Any]) -> str:
    header = [
        "nemesis",
        "offered",
        "202",
        "503",
        "timeouts",
        "lost",
        "duplicated",
        "stored without 202",
        "not settled",
        "sent twice",
        "fault → first 202 (s)",
        "fault → full rate (s)",
    ]
    rows = [
        [
            r["nemesis"],
            f"{r['offered']:,}",
            f"{r['accepted']:,}",
            f"{r['answers'].get('503', 0):,}",
            f"{r['timeouts']:,}",
            str(r["lost"]),
            str(r["duplicated"]),
            str(r["stored_without_202"]),
            str(r["not_settled"]),
            str(r["sent_twice"]),
            "-" if r["first_202_after_fault_s"] is None else f"{r['first_202_after_fault_s']}",
            "-" if r["full_rate_after_fault_s"] is None else f"{r['full_rate_after_fault_s']}",
        ]
        for r in results["runs"]
    ]
    lines = [
        f"# Chaos: {results['rate']:g} registrations/s for {results['duration_s']:g} s per "
        f"nemesis, each fault held {results['hold_s']:g} s",
        "",
        markdown_table(header, rows),
        "",
    ]
    lines += [f"- {r['nemesis']}: {r['description']} ({r['fault']})" for r in results["runs"]]
    lines += [
        f"- {r['nemesis']}, after the heal: {action}"
        for r in results["runs"]
        for action in r.get("operator", [])
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="registrations per second")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of each offer")
    parser.add_argument("--hold", type=float, default=20.0, help="seconds each fault lasts")
    parser.add_argument("--nemeses", default=",".join(NEMESES))
    parser.add_argument(
        "--short", action="store_true", help=f"{', '.join(SHORT)} at 50/s for 16 s, held 4 s"
    )
    parser.add_argument("--base-port", type=int, default=5800, help="the cluster's ports")
    parser.add_argument("--dir", default=None, help="the cluster's directory (a new one)")
    parser.add_argument("--keep", action="store_true", help="keep the cluster's data")
    args = parser.parse_args(argv)
    if args.short:
        args.rate, args.duration, args.hold, args.nemeses = 50.0, 16.0, 4.0, ",".join(SHORT)
    args.nemeses = [n for n in args.nemeses.split(",") if n]
    unknown = set(args.nemeses) - set(NEMESES)
    if unknown:
        parser.error(f"--nemeses: unknown {sorted(unknown)}; of {', '.join(NEMESES)}")
    code, results = run_benchmark("chaos", lambda: measure(args), report)
    if results is not None and not results["verified"]:
        print(f"chaos: lost, duplicated, unsettled or sent twice under {results['failed']}")
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
