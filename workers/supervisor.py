"""``intake supervise``: the whole worker fleet on one machine, scaled on its queues.

The supervisor runs ``intake worker <kind>`` child processes (the command Kubernetes runs) for
every kind: the persist worker, the dispatcher, each verification lane, the participation worker
(scaled on the sum of ``intake.tests`` and ``intake.joins``), the selection of closed waves and
the notifier. The dispatcher is always exactly one: its backlog is the outbox in PostgreSQL, not
a queue, and one keeps up with the lanes (several could run safely, they share the outbox with
``FOR UPDATE SKIP LOCKED``); so are the selection and the notifier, for the same reasons.
Every other kind runs between a minimum and a maximum number of processes
(``INTAKE_SUPERVISE_MIN_WORKERS`` / ``MAX_WORKERS``, per kind ``INTAKE_SUPERVISE_WORKER_LIMITS``;
the photo lane's default maximum is the machine's cores divided by ``INTAKE_PHOTO_WORKERS``, as
its analysis is CPU-bound).

**The rule** (:mod:`workers.scaling`): enough workers to serve what arrives and to drain the
backlog within ``INTAKE_SUPERVISE_TARGET_DRAIN_S``, measured from the queue depths and the
workers' status files; a worker's start and its death with the supervisor:
:mod:`workers.children`.

**Scale-down is graceful.** The worker holding the least work gets SIGTERM: a persist worker
stops consuming, stores and acknowledges what it was given, and exits; a lane worker stops
consuming and finishes the tasks in hand. What it does not finish in time is acknowledged by
no one and redelivered by RabbitMQ to another worker, and every handler is idempotent. After
``supervise_stop_grace_s`` it is killed. A worker that exits without being asked (a crash, a
``kill -9``) is replaced at once; one that keeps dying within seconds of its start is restarted
with an exponential backoff (at most 30 s). SIGTERM or SIGINT to the supervisor stops every
worker the same way and waits for them.

Every scaling decision is one JSON log line (kind, depth, rates, from and to); never personal
data. :meth:`Supervisor.plan` shows the current plan.

**Metrics.** The workers run in prometheus-client's multiprocess mode: each gets
``PROMETHEUS_MULTIPROC_DIR`` (``metrics/`` under the run directory, emptied at start) and
``INTAKE_METRICS_PORT=0``, and writes its samples there; when one exits, its live gauges are
withdrawn (``mark_process_dead``), its counters stay. With ``INTAKE_METRICS_PORT`` set the
supervisor serves ``/metrics``: the aggregate of its workers, its own figures read from its
plan on scrape (:mod:`workers.fleet_metrics`: processes and restarts by kind; its own process
is not in multiprocess mode), the funnel from PostgreSQL (a pool of at most two connections)
and the queue depths (:mod:`workers.depths` reads those it scales on).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from core import database, metrics_http
from core.funnel import FunnelCollector
from core.queues import QueueCollector
from core.retention import Periods
from core.retention_metrics import RetentionCollector
from core.settings import Settings, SettingsError
from core.status import read_status, remove_status
from core.verification import WORKER_KINDS
from core.wave_metrics import WaveCollector
from workers import pressure
from workers.children import child_setup, open_log
from workers.depths import QueueDepths
from workers.fleet_metrics import FleetCollector
from workers.pressure import EdgePressure
from workers.scaling import (
    DISPATCH,
    PERSIST,
    SINGLE,
    Limits,
    Load,
    RateEstimator,
    db_connections,
    desired_workers,
    next_workers,
    queues_of,
    worker_limits,
)

log = logging.getLogger(__name__)

# A worker that dies this soon after its start counts as crash-looping.
QUICK_EXIT_S = 10.0
MAX_RESTART_DELAY_S = 30.0
# A worker that writes no status file counts as started after this long.
STARTUP_S = 5.0
# How often processes are checked between scaling ticks (exits also wake the loop at once).
_RECONCILE_S = 0.25
# The kinds held back while an edge sheds (they handle the hold signals).
_HELD = frozenset(WORKER_KINDS) - {PERSIST, "waves", "notify"}
# How often the edges' status files are read (workers/pressure.py).
PRESSURE_POLL_S = 0.1


@dataclass
class Worker:
    """One child process."""

    kind: str
    serial: int
    process: asyncio.subprocess.Process
    status_path: Path
    started_at: float  # monotonic
    stop_at: float | None = None  # monotonic, when it was sent SIGTERM
    killed: bool = False
    reported: bool = False  # a status file of this process was seen

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass(frozen=True, slots=True)
class Decision:
    """One scaling step, as logged."""

    kind: str
    before: int
    after: int
    depth: int
    per_worker_rate: float | None
    arrival_rate: float | None
    net_drain_rate: float | None
    breaker_open: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Exit:
    """A worker that exited; ``expected``: it had been asked to stop."""

    kind: str
    pid: int
    code: int
    expected: bool


@dataclass(frozen=True, slots=True)
class KindPlan:
    """The plan of one kind: how many workers it should have, the ones it has, and why."""

    kind: str
    limits: Limits
    target: int
    running: tuple[int, ...]  # pids of the workers that run and are not stopping
    stopping: tuple[int, ...]  # pids of the workers asked to stop, not exited yet
    load: Load | None  # the last estimate (None: not scaled, or the depth is unknown)


@dataclass
class _KindState:
    limits: Limits
    target: int
    estimator: RateEstimator
    load: Load | None = None
    calm_since: float | None = None
    held: bool = False  # a scale-up is being held (breaker, budget), logged once
    crash_streak: int = 0
    start_after: float = 0.0  # monotonic: no new worker before (restart backoff)
    serials: int = 0


class Supervisor:
    """Runs and scales the worker fleet until :meth:`stop`; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        run_dir: Path,
        kinds: Sequence[str],
        log_dir: Path | None = None,
    ) -> None:
        self._settings = settings
        self._run_dir = run_dir
        self._log_dir = log_dir
        self._kinds = list(dict.fromkeys(kinds))
        limits = worker_limits(settings, self._kinds)
        window_s = max(5 * settings.supervise_interval_s, 3.0)
        self._state = {
            kind: _KindState(limits[kind], limits[kind].low, RateEstimator(window_s))
            for kind in self._kinds
        }
        self._workers: list[Worker] = []
        self._watchers: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._depths = QueueDepths(settings.amqp_url, {k: q for k in kinds if (q := queues_of(k))})
        self.decisions: list[Decision] = []
        self.exits: list[Exit] = []
        # Workers that exited unexpectedly (and were replaced), by kind.
        self.restarts: dict[str, int] = dict.fromkeys(self._kinds, 0)
        # The workers' prometheus-client multiprocess directory.
        self.metrics_dir = run_dir / "metrics"
        # While an edge sheds or is late, verification is held back (workers/pressure.py).
        self.pressure = EdgePressure(settings.edge_status_dir)
        self._pressure_sent_s = 0.0
        needed = sum(db_connections(settings, k) * s.limits.low for k, s in self._state.items())
        if needed > settings.supervise_db_connections:
            raise SettingsError(
                f"the fewest workers need {needed} PostgreSQL connections, more than"
                f" INTAKE_SUPERVISE_DB_CONNECTIONS ({settings.supervise_db_connections})"
            )

    def stop(self) -> None:
        """Stop every worker gracefully and return from :meth:`run`."""
        self._stopping.set()
        self._wake.set()

    def plan(self) -> dict[str, KindPlan]:
        """The current plan of every kind."""
        return {
            kind: KindPlan(
                kind,
                state.limits,
                state.target,
                tuple(w.pid for w in self._live(kind)),
                tuple(w.pid for w in self._workers if w.kind == kind and w.stop_at is not None),
                state.load,
            )
            for kind, state in self._state.items()
        }

    def status_path(self, pid: int) -> Path | None:
        """Where the worker ``pid`` writes its status file (while it runs)."""
        return next((w.status_path for w in self._workers if w.pid == pid), None)

    def process_counts(self) -> dict[str, int]:
        """Worker processes started and not exited yet (stopping ones included), by kind."""
        counts = dict.fromkeys(self._kinds, 0)
        for worker in list(self._workers):
            counts[worker.kind] += 1
        return counts

    async def run(self) -> None:
        """Start the fewest workers of every kind, then scale until :meth:`stop`."""
        self._run_dir.mkdir(parents=True, exist_ok=True)
        # Fresh: files left by an earlier run's workers would be summed with this run's.
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.metrics_dir.mkdir()
        log.info(
            "supervising",
            extra={
                "fields": {
                    "limits": {k: [s.limits.low, s.limits.high] for k, s in self._state.items()},
                    "target_drain_s": self._settings.supervise_target_drain_s,
                }
            },
        )
        try:
            async with self._serving_metrics():
                await self._supervise()
        finally:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    async def _supervise(self) -> None:
        sampler = asyncio.create_task(self._sample_forever())
        watcher = asyncio.create_task(self._watch_pressure())
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                await self._reconcile()
                self._apply_pressure()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _RECONCILE_S)
        finally:
            for task in (sampler, watcher):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._shutdown()

    async def _watch_pressure(self) -> None:
        """Read the edges' status files every :data:`PRESSURE_POLL_S` (a few small files): a
        hold taken a reconcile round late lets the workers take the edges' CPU meanwhile."""
        if not self.pressure.configured:
            return
        while True:
            await asyncio.sleep(PRESSURE_POLL_S)
            try:
                self._apply_pressure()
            except Exception:  # never stop watching for one bad read
                log.exception("reading the edges' pressure failed")

    @contextlib.asynccontextmanager
    async def _serving_metrics(self) -> AsyncIterator[None]:
        """``/metrics`` on ``INTAKE_METRICS_PORT`` while inside (nothing if it is 0)."""
        if not self._settings.metrics_port:
            yield
            return
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.metrics_dir))  # type: ignore[no-untyped-call]
        registry.register(FleetCollector(self))
        # min_size=0: the supervisor starts, and serves its workers' figures, with PostgreSQL
        # down; the funnel is then left out of the scrapes.
        pool = await asyncpg.create_pool(
            self._settings.database_url,
            min_size=0,
            max_size=2,
            command_timeout=5,
            server_settings={"application_name": "intake-supervise"},
        )
        queues = QueueCollector(self._settings.amqp_url)
        try:
            async with metrics_http.serving(
                self._settings,
                registry=registry,
                collectors=[
                    FunnelCollector(pool),
                    WaveCollector(pool),
                    RetentionCollector(pool, Periods.from_settings(self._settings)),
                    queues,
                ],
            ):
                yield
        finally:
            await queues.close()
            await database.close_pool(pool)

    # --- processes --------------------------------------------------------------------------

    def _live(self, kind: str) -> list[Worker]:
        return [w for w in self._workers if w.kind == kind and w.stop_at is None]

    async def _reconcile(self) -> None:
        """Reap exited workers, kill the overdue, and start or stop workers to meet the plan."""
        now = time.monotonic()
        self._reap(now)
        for kind, state in self._state.items():
            live = self._live(kind)
            if len(live) < state.target and now >= state.start_after:
                try:
                    for _ in range(state.target - len(live)):
                        await self._spawn(kind, state)
                except OSError as exc:  # e.g. out of processes or file descriptors
                    log.error("worker not started: %s", type(exc).__name__)
                    state.start_after = now + MAX_RESTART_DELAY_S / 10
            for worker in self._pick_to_stop(live, len(live) - state.target):
                self._terminate(worker, now)

    def _apply_pressure(self) -> None:
        """Hold verification back while an edge sheds or is late, let it go after
        (workers/pressure.py).
        The current state (the signal and the nice value) is applied at once on a change, and
        again every second either way: to workers started since, to any that could not take
        the signal while starting, and to any that took a hold and a release sent close
        together in the wrong order (a worker's hold is idempotent: the last word wins)."""
        if not self.pressure.configured:
            return
        changed = self.pressure.update()
        now = time.monotonic()
        if not changed and now - self._pressure_sent_s < 1.0:
            return
        self._pressure_sent_s = now
        # The dispatcher and the lanes take the hold; the selection and the notifier, which
        # have no backlog at a wave's opening, are left alone.
        pids = [w.pid for w in self._workers if w.kind in _HELD and w.stop_at is None]
        pressure.signal_all(pids, self.pressure.held)
        nice = pressure.HELD_NICE if self.pressure.held else self._nice(DISPATCH)
        pressure.renice(pids, nice)

    def _reap(self, now: float) -> None:
        for worker in list(self._workers):
            code = worker.process.returncode
            if code is None:
                overdue = (
                    worker.stop_at is not None
                    and now - worker.stop_at >= self._settings.supervise_stop_grace_s
                )
                if overdue and not worker.killed:
                    log.warning(
                        "worker did not stop in time; killed",
                        extra={"fields": {"kind": worker.kind, "pid": worker.pid}},
                    )
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.kill()
                    worker.killed = True
                continue
            self._workers.remove(worker)
            remove_status(str(worker.status_path))  # left behind by a worker that was killed
            # Its live gauges leave the sums (its counters stay: what it did, it did).
            mark_process_dead(worker.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
            expected = worker.stop_at is not None
            self.exits.append(Exit(worker.kind, worker.pid, code, expected))
            fields: dict[str, object] = {"kind": worker.kind, "pid": worker.pid, "code": code}
            if expected:
                log.info("worker stopped", extra={"fields": fields})
                continue
            state = self._state[worker.kind]
            self.restarts[worker.kind] += 1
            uptime_s = now - worker.started_at
            state.crash_streak = state.crash_streak + 1 if uptime_s < QUICK_EXIT_S else 1
            delay_s = (
                0.0
                if state.crash_streak <= 1
                else min(2.0 ** (state.crash_streak - 2), MAX_RESTART_DELAY_S)
            )
            state.start_after = now + delay_s
            fields.update(uptime_s=round(uptime_s, 1), restart_in_s=delay_s)
            log.warning("worker exited unexpectedly; replacing it", extra={"fields": fields})

    def _pick_to_stop(self, live: list[Worker], count: int) -> list[Worker]:
        """The ``count`` workers holding the least work (by their status), newest first."""
        if count <= 0:
            return []

        def held(worker: Worker) -> tuple[float, int]:
            status = read_status(worker.status_path) or {}
            inflight = status.get("inflight")
            return (float(inflight) if isinstance(inflight, int | float) else 0.0, -worker.serial)

        return sorted(live, key=held)[:count]

    def _terminate(self, worker: Worker, now: float) -> None:
        worker.stop_at = now
        status = read_status(worker.status_path) or {}
        log.info(
            "worker asked to stop",
            extra={
                "fields": {
                    "kind": worker.kind,
                    "pid": worker.pid,
                    "inflight": status.get("inflight"),
                }
            },
        )
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signal.SIGTERM)

    async def _spawn(self, kind: str, state: _KindState) -> None:
        state.serials += 1
        status_path = self._run_dir / f"{kind}-{state.serials}.json"
        remove_status(str(status_path))
        env = {
            **os.environ,
            **self._settings.to_env(),
            "INTAKE_WORKER_STATUS_FILE": str(status_path),
            # Multiprocess mode: the worker's samples go to files the supervisor serves.
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
            "INTAKE_METRICS_PORT": "0",
        }
        env.pop("prometheus_multiproc_dir", None)
        output = open_log(self._log_dir, f"worker-{kind}-{state.serials}.log")
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "cli",
                "worker",
                kind,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT if output is not None else None,
                # Its own session (a Ctrl-C at the terminal reaches the supervisor only, which
                # stops the workers gracefully), its priority, and the workers stop if the
                # supervisor dies: all in _child_setup, in that order.
                preexec_fn=child_setup(self._nice(kind)),
            )
        finally:
            if output is not None:
                output.close()
        worker = Worker(kind, state.serials, process, status_path, time.monotonic())
        self._workers.append(worker)
        watcher = asyncio.create_task(self._watch(worker))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        log.info("worker started", extra={"fields": {"kind": kind, "pid": worker.pid}})

    def _nice(self, kind: str) -> int:
        """The persist worker at the supervisor's priority (the accept path needs its queue
        drained); the dispatcher and the lanes below it, deferrable as they are."""
        return 0 if kind == "persist" else self._settings.supervise_verification_nice

    async def _watch(self, worker: Worker) -> None:
        await worker.process.wait()
        self._wake.set()  # replace or account for it at once

    async def _shutdown(self) -> None:
        now = time.monotonic()
        for worker in self._workers:
            if worker.stop_at is None and worker.process.returncode is None:
                self._terminate(worker, now)
        while self._workers:
            self._reap(time.monotonic())
            if self._workers:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _RECONCILE_S)
        for watcher in list(self._watchers):
            watcher.cancel()
        await self._depths.close()
        log.info("supervisor stopped")

    # --- scaling ----------------------------------------------------------------------------

    async def _sample_forever(self) -> None:
        while True:
            depths = await self._depths.read()
            try:
                self._decide(time.time(), time.monotonic(), depths)
            except Exception:  # a bug here must not stop the supervision of the processes
                log.exception("scaling decision failed; the plan is unchanged")
            self._wake.set()
            await asyncio.sleep(self._settings.supervise_interval_s)

    def _decide(self, now: float, monotonic: float, depths: dict[str, int]) -> None:
        for kind, state in self._state.items():
            if kind in SINGLE:
                continue
            statuses = self._statuses(kind)
            live = self._live(kind)
            depth = depths.get(kind)
            if depth is None:
                state.load, state.calm_since = None, None  # nothing to decide on: hold
                continue
            load = state.estimator.observe(now, depth, statuses, len(live))
            state.load = load
            current = state.target
            target_s = self._settings.supervise_target_drain_s
            desired = desired_workers(load, current, state.limits, target_s)
            if desired < current:
                state.calm_since = state.calm_since if state.calm_since is not None else monotonic
            else:
                state.calm_since = None
            calm_s = monotonic - state.calm_since if state.calm_since is not None else 0.0
            after = next_workers(
                current,
                desired,
                state.limits,
                breaker_open=load.breaker_open,
                calm_s=calm_s,
                cooldown_s=self._settings.supervise_cooldown_s,
            )
            reason = "backlog" if after > current else "calm"
            if current < state.limits.low or current > state.limits.high:
                reason = "limits"
            elif after > current and kind != PERSIST and self.pressure.held:
                self._hold(kind, state, load, current, desired, "edge_shedding")
                after, reason = current, "edge_shedding"
            elif after > current:
                after, why = self._within_budget(kind, current, after, live, monotonic)
                if why:
                    self._hold(kind, state, load, current, desired, why)
                    reason = why
                else:
                    state.held = False
            elif desired > current and load.breaker_open:
                self._hold(kind, state, load, current, desired, "breaker_open")
            else:
                state.held = False
            if after == current:
                continue
            state.target, state.calm_since = after, None
            decision = Decision(
                kind,
                current,
                after,
                depth,
                _round(load.per_worker_rate),
                _round(load.arrival_rate),
                _round(load.net_drain_rate),
                load.breaker_open,
                reason,
            )
            self.decisions.append(decision)
            log.info("scaling", extra={"fields": _fields(decision)})

    def _within_budget(
        self, kind: str, current: int, after: int, live: list[Worker], monotonic: float
    ) -> tuple[int, str]:
        """``after`` cut to what may start now: not before the last workers added have started,
        and within the PostgreSQL connection budget. Also why it was cut ("" if it was not)."""
        starting = (
            any(not w.reported and monotonic - w.started_at < STARTUP_S for w in live)
            or len(live) < current
        )
        if starting:
            return current, "starting"
        used = sum(
            db_connections(self._settings, k) * s.target for k, s in self._state.items()
        ) + sum(
            db_connections(self._settings, w.kind) for w in self._workers if w.stop_at is not None
        )
        each = db_connections(self._settings, kind)
        room = max(0, self._settings.supervise_db_connections - used) // each
        if after - current > room:
            return current + room, "db_connections"
        return after, ""

    def _hold(
        self, kind: str, state: _KindState, load: Load, current: int, desired: int, why: str
    ) -> None:
        """Log a held scale-up once (not "starting": that one passes by itself)."""
        if state.held or why == "starting":
            return
        state.held = True
        log.info(
            "scale-up held",
            extra={
                "fields": {"kind": kind, "workers": current, "desired": desired, "reason": why}
                | {"depth": load.depth}
            },
        )

    def _statuses(self, kind: str) -> list[dict[str, object]]:
        """The status files of the kind's workers (those asked to stop included: their work
        counts), each checked to be its process's own."""
        found = []
        for worker in self._workers:
            if worker.kind != kind:
                continue
            status = read_status(worker.status_path)
            if status is not None and status.get("pid") == worker.pid:
                worker.reported = True
                found.append(status)
        return found


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _fields(decision: Decision) -> dict[str, object]:
    return {
        "kind": decision.kind,
        "from": decision.before,
        "to": decision.after,
        "depth": decision.depth,
        "per_worker_rate": decision.per_worker_rate,
        "arrival_rate": decision.arrival_rate,
        "net_drain_rate": decision.net_drain_rate,
        "breaker_open": decision.breaker_open,
        "reason": decision.reason,
    }


async def serve(
    settings: Settings,
    kinds: Sequence[str],
    run_dir: Path | None = None,
    log_dir: Path | None = None,
) -> None:
    """Entry point of ``intake supervise``: run the fleet until SIGTERM or SIGINT."""
    own_dir = run_dir is None
    directory = Path(tempfile.mkdtemp(prefix="intake-supervise-")) if run_dir is None else run_dir
    supervisor = Supervisor(settings, directory, kinds, log_dir)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, supervisor.stop)
    try:
        await supervisor.run()
    finally:
        if own_dir:
            with contextlib.suppress(OSError):
                directory.rmdir()
