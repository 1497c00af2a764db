"""A lane is declared once, by the ``Check`` enum (``core/verification.py``); everything that
names lanes follows from it or is checked against it here: the verifier registry, the worker
kinds, the queues, the database's constraint, the Kubernetes workers, the supervisor."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg

from core import topology
from core.queues import queue_names
from core.settings import Settings
from core.verification import INITIAL_CHECKS, REQUIRED_CHECKS, WORKER_KINDS, Check
from tests.support import kustomize
from verifiers.registry import VERIFIERS
from workers.scaling import worker_limits

ROOT = Path(__file__).resolve().parent.parent
LANES = {check.value for check in Check}


def test_every_lane_has_one_verifier_and_is_a_worker_kind() -> None:
    assert set(VERIFIERS) == set(Check)
    assert set(WORKER_KINDS) == LANES | {"persist", "dispatch", "participation", "waves", "notify"}
    assert set(INITIAL_CHECKS) <= REQUIRED_CHECKS == set(Check)


def test_every_lane_has_its_queue_and_dead_letter_queue() -> None:
    queues = set(queue_names())
    for lane in LANES:
        assert {topology.lane_queue(lane), topology.lane_dlq(lane)} <= queues


def test_the_supervisor_plans_every_worker_kind() -> None:
    assert set(worker_limits(Settings(), WORKER_KINDS)) == set(WORKER_KINDS)


async def test_the_database_accepts_exactly_the_declared_lanes(db: asyncpg.Pool) -> None:
    definition: str = await db.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = 'checks'::regclass AND contype = 'c'"
        " AND pg_get_constraintdef(oid) LIKE '%check_name%'"
    )
    assert set(re.findall(r"'(\w+)'::text", definition)) == LANES


def test_kubernetes_runs_one_worker_per_lane_on_its_queue() -> None:
    built = kustomize.build()
    deployments = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["args"]
        for d in built
        if d["kind"] == "Deployment"
    }
    deployed: dict[str, str] = {}
    for scaled in (d for d in built if d["kind"] == "ScaledObject"):
        args = deployments[scaled["spec"]["scaleTargetRef"]["name"]]
        if args[:1] == ["worker"] and args[1] in LANES:
            (trigger,) = scaled["spec"]["triggers"]
            deployed[args[1]] = trigger["metadata"]["queueName"]
    assert deployed == {lane: topology.lane_queue(lane) for lane in LANES}
    assert {args[1] for args in deployments.values() if args[:1] == ["worker"]} == set(WORKER_KINDS)
