"""What a worker's probes report: ``GET /readyz`` and ``GET /healthz`` on its metrics port.

A worker serves no public HTTP, so the only thing an orchestrator can ask it is whether to
count it (ready) and whether to restart it (alive). "The process answers" says neither: a
worker can answer HTTP while its consumer is stuck. So each worker tells its :class:`Health`
what it is doing, and the probes read it:

- **ready**: it has a broker session and consumes (the dispatcher: publishes). A worker
  reconnecting to an unreachable broker, or still waiting for a PostgreSQL primary, is unready.
- **alive**: its loop makes progress. It ``beat()``s every time its loop turns (a lane about
  once a second, the persist worker per batch and every second while it holds nothing, the
  dispatcher once a second, the reconnect loop at every attempt). Not alive when it has not
  beaten for ``stuck_after_s`` (a call that never returns: a wedged session, a database read
  that hangs), or when its consumer *stalled* (no delivery while its queue holds ready
  messages; ``workers.sessions.ConsumerStalled``) ``stalls_to_fail`` times in a row without a
  delivery in between: the worker resubscribes by itself after each stall, and a restart is
  the next remedy only once that did not help. Reconnecting is progress: a worker whose broker
  is down stays alive, since restarting it would not bring the broker back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# How long a loop may go without turning before the worker counts as stuck. Longer than any
# legitimate wait of a loop turn: a database failover (about 10 s here), a broker's connection
# timeout, a batch written again after a failover.
STUCK_AFTER_S = 60.0
# Stalls in a row (each already answered by a fresh subscription) before a restart is asked for.
STALLS_TO_FAIL = 3


@dataclass(frozen=True)
class Verdict:
    """One probe's answer: ``ok`` and, when not, why (a short, fixed phrase: no data)."""

    ok: bool
    reason: str


class Health:
    """The state a worker's probes read; see the module docstring."""

    def __init__(
        self,
        *,
        stuck_after_s: float = STUCK_AFTER_S,
        stalls_to_fail: int = STALLS_TO_FAIL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stuck_after_s = stuck_after_s
        self._stalls_to_fail = stalls_to_fail
        self._clock = clock
        self._beat_s = clock()
        self._serving = False
        self.stalls = 0  # stalls in a row, without a delivery in between

    def beat(self) -> None:
        """The worker's loop turned."""
        self._beat_s = self._clock()

    def serving(self, up: bool) -> None:
        """The worker has (``True``) or no longer has a session in which it does its work."""
        self._serving = up
        self.beat()

    def delivered(self) -> None:
        """A delivery arrived: whatever stalled before is over."""
        self.stalls = 0

    def stalled(self) -> None:
        """The consumer stalled and subscribes afresh."""
        self.stalls += 1

    def live(self) -> Verdict:
        quiet_s = self._clock() - self._beat_s
        if quiet_s >= self._stuck_after_s:
            return Verdict(False, f"loop has not turned for {quiet_s:.0f} s")
        if self.stalls >= self._stalls_to_fail:
            return Verdict(False, f"consumer stalled {self.stalls} times in a row")
        return Verdict(True, "")

    def ready(self) -> Verdict:
        if not self._serving:
            return Verdict(False, "no broker session")
        live = self.live()
        return live if not live.ok else Verdict(True, "")
