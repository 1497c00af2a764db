"""Fixtures: the simulators running in the test's event loop on free ports, a synthetic
population they answer from, and an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

import aiohttp
import pytest

from simulators.behaviour import Behaviour
from simulators.population import Registrant, population
from simulators.server import Ports, Running, SimulatorConfig, run_simulators
from tests.simulators.sim_support import COUNT, GUARD, SEED, TODAY, StartSimulators


@pytest.fixture(scope="session")
def people() -> list[Registrant]:
    """The population every simulator of these tests answers from."""
    return population(COUNT, seed=SEED, today=TODAY)


@pytest.fixture
def start_simulators(people: list[Registrant]) -> StartSimulators:
    """``async with start_simulators(dukcapil=Behaviour(...)) as running:``; every port free."""

    def start(**behaviours: Behaviour) -> AbstractAsyncContextManager[Running]:
        config = SimulatorConfig(
            ports=Ports.ephemeral(),
            people=people,
            seed=SEED,
            behaviours=behaviours,
            shutdown_timeout_s=5.0,
        )
        return run_simulators(config)

    return start


@pytest.fixture
async def sims(start_simulators: StartSimulators) -> AsyncIterator[Running]:
    """The simulators with their default behaviour."""
    async with start_simulators() as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=GUARD) as session:
        yield session
