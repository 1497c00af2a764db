"""Every Prometheus metric of the system, in one place, and how processes serve them.

Naming follows Prometheus' conventions: ``intake_`` prefix, base units (seconds), ``_total``
for counters. Labels take values from small closed sets only (a route *template*, a status
class, a lane, an outcome, a reason *code*): never an id, a NIK, a name, an email, a phone
number or anything else a registrant sent.

**Several processes per role.** A machine running several edge processes, or the worker fleet
under ``intake supervise``, sets ``PROMETHEUS_MULTIPROC_DIR`` (before any process starts): each
process then writes its samples to memory-mapped files there, and whichever process serves
``/metrics`` reports the sum over all of them (prometheus-client's multiprocess mode; gauges
declare how they combine: ``livesum`` sums the processes alive). Without the variable a process
serves its own metrics. A process serves ``/metrics`` on ``INTAKE_METRICS_PORT`` (0: it does
not; the supervisor serves its workers'), with ``SO_REUSEPORT`` so that several edge processes
of one machine can share the port (each answers with the aggregate).

**What the database knows** (the funnel) and **what RabbitMQ knows** (queue depths) are not
counted by processes, which restart and scale: collectors read them when scraped
(:mod:`core.funnel` and :mod:`core.queues` hold those collectors). :mod:`core.metrics_http`
serves them.

**Series known in advance exist before the first event**: a process pre-initialises its label
sets at 0 (:func:`init_edge`, :func:`init_persist`, :func:`init_dispatch`, :func:`init_lane`), so
that dashboards and alerts see every lane, outcome and breaker state from the start.
"""

from __future__ import annotations

import os
import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from core.verification import Check

# Latency buckets, seconds: HTTP answers are milliseconds; ministry calls up to the timeout.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000)

# The closed sets of label values known in advance (pre-initialised at 0).
LANES = tuple(check.value for check in Check)
SHED_REASONS = (
    "shutting_down",
    "broker_unreachable",
    "overloaded",
    "queue_full",
    "confirm_timeout",
    "unroutable",
    "queue_delay",
    "deadline",
)
PERSIST_OUTCOMES = ("stored", "duplicate", "benefit_received", "already_stored", "dead_lettered")
SELECTION_OUTCOMES = ("selected", "not_selected", "ineligible")  # core.selection.Outcome
INELIGIBLE_REASONS = ("not_verified", "age", "dtks", "benefit_received")  # core.selection
NOTIFY_CHANNELS = ("email", "sms")
NOTIFY_OUTCOMES = ("sent", "failed")
LANE_OUTCOMES = ("passed", "waiting", "rejected", "review", "retry", "dead_lettered", "skipped")
SIGNALS = ("ok", "overload", "failure", "neutral")  # workers.flow.Signal
BREAKER_STATES = ("closed", "open", "half_open")  # workers.flow.BreakerState
BREAKER_MODES = ("auto", "open", "closed")  # core.controls.BreakerMode
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# --- the edge --------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "intake_http_requests_total",
    "HTTP requests answered by the edge, by route template, method and status class.",
    ["route", "method", "status_class"],
)
HTTP_DURATION = Histogram(
    "intake_http_request_duration_seconds",
    "Time from when a request was read (with its wait for the event loop) to its answer, by route"
    " template and method.",
    ["route", "method"],
    buckets=HTTP_BUCKETS,
)
REGISTRATIONS_ACCEPTED = Counter(
    "intake_registrations_accepted_total",
    "Registrations answered 202: confirmed durable by the broker.",
)
REGISTRATIONS_SHED = Counter(
    "intake_registrations_shed_total",
    "Registrations answered 503, by reason (queue_full, overloaded, broker_unreachable, ...).",
    ["reason"],
)
REGISTRATIONS_INVALID = Counter(
    "intake_registrations_invalid_total",
    "Registrations refused with a 4xx before publishing (malformed, invalid fields, too large).",
)
LIMITED = Counter(
    "intake_limited_total",
    "Requests answered 429 by a limit (core/limits.py), by limit (nik, client) and route template.",
    ["limit", "route"],
)
LIMIT_REFRESH_FAILURES = Counter(
    "intake_limit_refresh_failures_total",
    "Reads of the NIKs over their limit that failed (the edge keeps the last set it read).",
)
PUBLISH_CONFIRM = Histogram(
    "intake_publish_confirm_duration_seconds",
    "Time from publishing a batch of registrations to the broker's confirm (or failure).",
    buckets=HTTP_BUCKETS,
)
PUBLISH_BATCH = Histogram(
    "intake_publish_batch_registrations",
    "Registrations per published batch message.",
    buckets=BATCH_BUCKETS,
)
EDGE_LOOP_LAG = Gauge(
    "intake_edge_loop_lag_seconds",
    "The largest lag of the edge's event loop over the last second: how long a request read"
    " then had waited for the CPU (the slowest edge process).",
    multiprocess_mode="livemax",
)
EDGE_STANDING_QUEUE = Gauge(
    "intake_edge_standing_queue",
    "1 while an edge process has a standing queue (its loop late beyond the target for a"
    " whole interval: it sheds what waited longer than the target), else 0; summed.",
    multiprocess_mode="livesum",
)
EDGE_PENDING = Gauge(
    "intake_edge_pending_registrations",
    "Registrations waiting in the edge for a broker confirm (all edge processes).",
    multiprocess_mode="livesum",
)

# --- the persist worker and the dispatcher -----------------------------------------------------

PERSISTED = Counter(
    "intake_persist_registrations_total",
    "Registrations handled by the persist worker, by outcome (stored, duplicate: stored as"
    " rejected duplicate_nik, benefit_received: stored as rejected, the NIK had the benefit,"
    " already_stored: redelivered, stored before, dead_lettered).",
    ["outcome"],
)
PERSIST_BATCH = Histogram(
    "intake_persist_batch_duration_seconds",
    "Time to write one batch of registrations to PostgreSQL, commit included.",
    buckets=CALL_BUCKETS,
)
DISPATCHED = Counter(
    "intake_dispatch_tasks_total",
    "Verification tasks published from the outbox to their lane.",
    ["lane"],
)

# --- the participation worker (the test and joining a wave) ---------------------------------

TEST_OUTCOMES = ("scored", "late", "already_scored", "unknown_attempt", "unreadable")
JOIN_OUTCOMES = ("joined", "already_joined", "wave_not_open", "after_selection", "unreadable")
TEST_SUBMISSIONS = Counter(
    "intake_test_submissions_total",
    "Test submissions handled by the participation worker, by outcome (scored; late: received"
    " after the attempt's deadline; already_scored: redelivered or submitted twice;"
    " unknown_attempt; unreadable: returned to the queue, dead-lettered past its limit).",
    ["outcome"],
)
WAVE_JOINS = Counter(
    "intake_wave_joins_total",
    "Wave joins handled by the participation worker, by outcome (joined; already_joined;"
    " wave_not_open: received when the wave was not open; after_selection: the wave's"
    " selection ran already; unreadable).",
    ["outcome"],
)

# --- the lanes ---------------------------------------------------------------------------------

LANE_TASKS = Counter(
    "intake_lane_tasks_total",
    "Tasks finished by a lane, by outcome (passed, waiting, rejected, review, retry,"
    " dead_lettered, skipped).",
    ["lane", "outcome"],
)
LANE_TASK_DURATION = Histogram(
    "intake_lane_task_duration_seconds",
    "Time a lane worker spent on one task, from delivery to acknowledgement.",
    ["lane"],
    buckets=CALL_BUCKETS,
)
LANE_RETRIES = Counter(
    "intake_lane_retries_total",
    "Tasks sent to a delay queue for another attempt, by reason code.",
    ["lane", "reason"],
)
CONSUMER_RESUBSCRIPTIONS = Counter(
    "intake_consumer_resubscriptions_total",
    "Consumer sessions a worker ended to subscribe afresh on a new connection: stalled (no"
    " delivery while its queue held ready messages), idle (none for 30 s at all) or broken (a"
    " publish not confirmed in time, or an acknowledgement on a channel gone).",
    ["worker", "reason"],
)
LANE_REJECTIONS = Counter(
    "intake_lane_rejections_total",
    "Registrations a lane rejected or sent to review, by reason code.",
    ["lane", "reason"],
)
LANE_DEAD_LETTERED = Counter(
    "intake_lane_dead_lettered_total",
    "Tasks a lane moved to its dead-letter queue.",
    ["lane"],
)
LANE_REPUBLISHED = Counter(
    "intake_lane_republished_total",
    "Tasks a lane published again after losing its connection while it held them under a"
    " cancelled consumer (RabbitMQ 3.10 keeps such deliveries checked out for good when the"
    " consumer's node goes away).",
    ["lane"],
)
LANE_HANDED_BACK = Counter(
    "intake_lane_handed_back_total",
    "Tasks a lane held while forced open (by an operator, or a maintenance window) for"
    " INTAKE_LANE_CONTROL_HAND_BACK_S and gave back to its queue (published again, then"
    " acknowledged), without a call.",
    ["lane"],
)
SERVICE_CALLS = Histogram(
    "intake_service_call_duration_seconds",
    "Calls from a lane to its external service (a ministry API, SMTP, the SMS gateway, the"
    " photo analysis), by what the outcome says of the service: ok, overload, failure, neutral.",
    ["lane", "signal"],
    buckets=CALL_BUCKETS,
)
LANE_LIMIT = Gauge(
    "intake_lane_concurrency_limit",
    "The lane's adaptive concurrency limit, summed over its worker processes.",
    ["lane"],
    multiprocess_mode="livesum",
)
LANE_INFLIGHT = Gauge(
    "intake_lane_inflight_calls",
    "Calls in flight from the lane to its service, summed over its worker processes.",
    ["lane"],
    multiprocess_mode="livesum",
)
LANE_IN_HAND = Gauge(
    "intake_lane_deliveries_in_hand",
    "Deliveries the lane holds, from their delivery to their acknowledgement (or their giving"
    " back), summed over its worker processes: what RabbitMQ should count as unacknowledged on"
    " the lane's queue (alert LaneDeliveriesOrphaned compares the two).",
    ["lane"],
    multiprocess_mode="livesum",
)
LANE_BREAKER = Gauge(
    "intake_lane_breaker_workers",
    "Worker processes of the lane whose circuit breaker is in each state.",
    ["lane", "state"],
    multiprocess_mode="livesum",
)
LANE_BREAKER_TRANSITIONS = Counter(
    "intake_lane_breaker_transitions_total",
    "Circuit breaker state changes, by the state entered.",
    ["lane", "state"],
)
LANE_FORCED_BREAKER = Gauge(
    "intake_lane_forced_breaker",
    "1 for the breaker mode an operator set for the lane (auto: its own breaker decides; open:"
    " no call; closed: the breaker never opens), as its worker processes apply it, else 0.",
    ["check", "state"],
    multiprocess_mode="livemax",
)
LANE_MAINTENANCE = Gauge(
    "intake_lane_maintenance",
    "1 while a maintenance window of the lane's registry is on (the lane makes no call, its"
    " tasks wait), as its worker processes see it, else 0.",
    ["check"],
    multiprocess_mode="livemax",
)

# --- the supervisor ------------------------------------------------------------------------------
# Read from the supervisor's plan when scraped (workers.supervisor.FleetCollector), not counted
# in prometheus-client values: the supervisor's own process stays out of multiprocess mode.

VERIFICATION_HELD = (
    "intake_supervisor_verification_held",
    "1 while intake supervise holds the dispatcher and the verification lanes back because an"
    " edge on the machine sheds (workers/pressure.py), else 0.",
)
WORKER_PROCESSES = (
    "intake_worker_processes",
    "Worker processes the supervisor runs (started and not exited yet), by kind.",
)
WORKER_RESTARTS = (
    "intake_worker_restarts",  # exposed as intake_worker_restarts_total
    "Worker processes that exited unexpectedly and were replaced, by kind.",
)


def multiprocess_dir() -> str | None:
    """The directory of multiprocess mode, if this process is in it."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def serving_registry() -> CollectorRegistry | None:
    """The registry a ``/metrics`` endpoint serves: in multiprocess mode a fresh one
    aggregating every process's files; otherwise None (the default registry)."""
    path = multiprocess_dir()
    if path is None:
        return None
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return registry


def process_exiting() -> None:
    """In multiprocess mode, withdraw this process's live gauges (``livesum``) from the sum:
    called by a process that ends normally; ``intake supervise`` does it for a worker that dies.
    Its counters stay, as they must."""
    path = multiprocess_dir()
    if path is not None:
        mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]


# --- label values ------------------------------------------------------------------------------

_CODE = re.compile(r"[a-z][a-z0-9_]{0,47}")


def reason_label(reason: str) -> str:
    """A reason code as a label value: the code before any ``:`` detail (``unreachable:
    ClientConnectorError`` is ``unreachable``); anything that is not a short lower-case code
    is ``other``, so a label can never carry free text."""
    code = reason.partition(":")[0]
    return code if _CODE.fullmatch(code) else "other"


def status_class(status: int) -> str:
    """``2xx``, ``4xx``, ..."""
    return f"{status // 100}xx"


# --- waves: the selection and the notifications ------------------------------------------------

WAVE_SELECTION_SECONDS = Histogram(
    "intake_wave_selection_seconds",
    "Time to select one wave's participants (one transaction, commit included).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
WAVE_JOIN_OUTCOMES = Counter(
    "intake_wave_join_outcomes_total",
    "Joins decided by the selection at a wave's close, by outcome.",
    ["outcome"],
)
WAVE_INELIGIBLE = Counter(
    "intake_wave_ineligible_total",
    "Joins found ineligible by the selection, by reason (a code, never a person).",
    ["reason"],
)
NOTIFICATIONS = Counter(
    "intake_notifications_total",
    "Outcome notifications handed to the mail server or the SMS gateway (sent), or not (failed:"
    " retried after a backoff), by channel.",
    ["channel", "outcome"],
)
NOTIFICATIONS_PENDING = Gauge(
    "intake_notifications_pending",
    "Notifications not sent yet, by channel, as the notifier last counted them.",
    ["channel"],
    multiprocess_mode="livemax",
)


# --- series that exist from the start ----------------------------------------------------------


def init_edge() -> None:
    for reason in SHED_REASONS:
        REGISTRATIONS_SHED.labels(reason)


def init_persist() -> None:
    for outcome in PERSIST_OUTCOMES:
        PERSISTED.labels(outcome)


def init_participation() -> None:
    for outcome in TEST_OUTCOMES:
        TEST_SUBMISSIONS.labels(outcome)
    for outcome in JOIN_OUTCOMES:
        WAVE_JOINS.labels(outcome)


def init_selection() -> None:
    for outcome in SELECTION_OUTCOMES:
        WAVE_JOIN_OUTCOMES.labels(outcome)
    for reason in INELIGIBLE_REASONS:
        WAVE_INELIGIBLE.labels(reason)


def init_notify() -> None:
    for channel in NOTIFY_CHANNELS:
        NOTIFICATIONS_PENDING.labels(channel)
        for outcome in NOTIFY_OUTCOMES:
            NOTIFICATIONS.labels(channel, outcome)


def init_dispatch() -> None:
    for lane in LANES:
        DISPATCHED.labels(lane)


def init_lane(lane: str) -> None:
    """Every series of ``lane`` whose labels are known in advance, at 0."""
    for outcome in LANE_OUTCOMES:
        LANE_TASKS.labels(lane, outcome)
    for signal in SIGNALS:
        SERVICE_CALLS.labels(lane, signal)
    for state in BREAKER_STATES:
        LANE_BREAKER.labels(lane, state)
        LANE_BREAKER_TRANSITIONS.labels(lane, state)
    LANE_TASK_DURATION.labels(lane)
    LANE_DEAD_LETTERED.labels(lane)
    LANE_REPUBLISHED.labels(lane)
    LANE_HANDED_BACK.labels(lane)
    LANE_LIMIT.labels(lane)
    LANE_INFLIGHT.labels(lane)
    LANE_IN_HAND.labels(lane)
    for mode in BREAKER_MODES:
        LANE_FORCED_BREAKER.labels(lane, mode)
    LANE_MAINTENANCE.labels(lane)
