"""A lane worker's view of its operator controls (``core.controls``): read about once a second,
applied to the lane's gate, exported as gauges.

A maintenance window forces the gate open whatever the breaker mode says: no call is made, the
lane stops consuming (``LaneWorker._wanted_prefetch`` reads the gate's applied state) and the
tasks in hand wait for a permit (for at most ``lane_control_hand_back_s``: then the lane
publishes them again to its queue and acknowledges them, ``LaneWorker._hand_back``). Since no
call is made, no retry is published, no attempt is counted and nothing reaches a dead-letter
queue because of the window.

A read that fails (the database is away, a failover, a pool being closed) keeps the last state
known: a lane must not stop, or start calling a registry in maintenance, because PostgreSQL
blinked. A worker that could never read its controls runs as ``auto``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from core import metrics
from core.controls import BreakerMode, LaneControl, LaneControls
from core.verification import Check
from workers.flow import LaneGate

log = logging.getLogger(__name__)


class ControlWatcher:
    """Reads ``check``'s controls every ``poll_s`` and applies them to ``gate``."""

    def __init__(
        self,
        controls: LaneControls,
        check: Check,
        gate: LaneGate,
        poll_s: float,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._controls = controls
        self._check = check
        self._gate = gate
        self._poll_s = poll_s
        self._on_change = on_change
        self.control = LaneControl()  # the last state known
        self.reads = 0
        self.read_failures = 0
        self._failing = False
        metrics.init_lane(check.value)
        self._modes = {
            mode: metrics.LANE_FORCED_BREAKER.labels(check.value, mode.value)
            for mode in BreakerMode
        }
        self._maintenance = metrics.LANE_MAINTENANCE.labels(check.value)
        self._export()

    async def run(self) -> None:
        """Read and apply until cancelled."""
        while True:
            await asyncio.sleep(self._poll_s)
            await self.refresh()

    async def refresh(self) -> bool:
        """Read once and apply what was read; False (the last state kept) if the read failed."""
        try:
            async with asyncio.timeout(max(2.0, self._poll_s)):
                control = await self._controls.read(self._check)
        except Exception as exc:  # whatever it is, the lane keeps going on what it knew
            self.read_failures += 1
            if not self._failing:
                self._failing = True
                log.warning(
                    "lane controls unreadable; keeping the last state known",
                    extra={
                        "fields": {
                            "lane": self._check.value,
                            "error": type(exc).__name__,
                            "breaker": self.control.effective.value,
                        }
                    },
                )
            return False
        self.reads += 1
        if self._failing:
            self._failing = False
            log.info("lane controls readable again", extra={"fields": {"lane": self._check.value}})
        self.apply(control)
        return True

    def apply(self, control: LaneControl) -> None:
        before = self.control
        self.control = control
        changed = (before.breaker, _window_id(before)) != (control.breaker, _window_id(control))
        self._gate.force(control.effective)
        if changed:
            log.info(
                "lane controls changed",
                extra={
                    "fields": {
                        "lane": self._check.value,
                        "breaker": control.breaker.value,
                        "maintenance_window": _window_id(control),
                        "applied": control.effective.value,
                    }
                },
            )
            self._export()
            if self._on_change is not None:
                self._on_change()

    def _export(self) -> None:
        for mode, gauge in self._modes.items():
            gauge.set(1 if mode is self.control.breaker else 0)
        self._maintenance.set(0 if self.control.window is None else 1)


def _window_id(control: LaneControl) -> int | None:
    return None if control.window is None else control.window.id
