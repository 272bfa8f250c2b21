"""Adaptive concurrency for the LLM judge's calls to one endpoint: additive increase while latency
holds, multiplicative decrease on overload (AIMD, as TCP and Netflix's concurrency-limits do).

A small self-hosted server (llama.cpp with one slot) answers one request at a time: eight at once only
make each wait eight times as long, until they time out and the breaker opens. A hosted API takes
many. The limit starts at ``low`` and finds its level:

- a call that ends within ``tolerance`` times the best latency seen lately adds ``1 / limit`` (one
  more slot per ``limit`` good calls), up to ``high``;
- a slower call holds the limit (the queue is growing; more would only add waiting);
- a timeout or a 429 halves it, down to ``low``;
- other failures (a refusal, a connection error) say nothing of load and leave it alone.

The best latency decays towards recent latencies (``_BASELINE_DECAY``), so a baseline from a short
prompt does not hold the limit down forever. A caller waits for a slot no longer than its deadline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["AdaptiveLimit", "LimitSnapshot", "Slot", "SlotTimeout"]

_BASELINE_DECAY: Final = 0.05  # each good call moves the best latency this far towards its own


class SlotTimeout(Exception):
    """No slot came free before the caller's deadline (or the judge began closing)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitSnapshot:
    limit: float
    in_flight: int
    best_latency_s: float | None
    overloads: int


class AdaptiveLimit:
    """How many calls may be in flight to one endpoint now; thread-safe."""

    def __init__(
        self,
        *,
        low: int,
        high: int,
        tolerance: float = 2.0,
        clock: Callable[[], float],
    ) -> None:
        if not 1 <= low <= high:
            raise ValueError(f"concurrency limits must satisfy 1 <= low <= high, got low={low}, high={high}")
        self._low = low
        self._high = high
        self._tolerance = tolerance
        self._clock = clock
        self._limit = float(low)
        self._in_flight = 0
        self._best: float | None = None
        self._overloads = 0
        self._state = threading.Condition()

    def snapshot(self) -> LimitSnapshot:
        with self._state:
            return LimitSnapshot(
                limit=self._limit,
                in_flight=self._in_flight,
                best_latency_s=self._best,
                overloads=self._overloads,
            )

    def acquire(self, deadline: float, closing: threading.Event) -> Slot:
        """A slot, once fewer than ``limit`` calls are in flight; ``SlotTimeout`` when ``deadline``
        (clock time) passes first or ``closing`` is set."""
        with self._state:
            while self._in_flight >= int(self._limit):
                left = deadline - self._clock()
                if left <= 0 or closing.is_set():
                    raise SlotTimeout(
                        f"no call slot came free in time ({self._in_flight} in flight, "
                        f"limit {int(self._limit)})"
                    )
                self._state.wait(min(left, 0.25))  # short waits: ``closing`` is seen promptly
            self._in_flight += 1
        return Slot(self)

    def _release(self, latency_s: float | None, overloaded: bool) -> None:
        with self._state:
            self._in_flight -= 1
            if overloaded:
                self._overloads += 1
                self._limit = max(float(self._low), self._limit / 2)
            elif latency_s is not None:
                if self._best is None or latency_s < self._best:
                    self._best = latency_s
                else:
                    self._best += (latency_s - self._best) * _BASELINE_DECAY
                if latency_s <= self._tolerance * self._best:
                    self._limit = min(float(self._high), self._limit + 1 / self._limit)
            self._state.notify_all()


class Slot:
    """One call's place under the limit; end it once with ``done`` or ``overloaded``."""

    __slots__ = ("_ended", "_owner")

    def __init__(self, owner: AdaptiveLimit) -> None:
        self._owner = owner
        self._ended = False

    def done(self, latency_s: float | None = None) -> None:
        """The call ended; ``latency_s`` when it succeeded (a measure of load), else None."""
        if not self._ended:
            self._ended = True
            self._owner._release(latency_s, overloaded=False)

    def overloaded(self) -> None:
        """The call timed out or was rate limited: halve the limit."""
        if not self._ended:
            self._ended = True
            self._owner._release(None, overloaded=True)
