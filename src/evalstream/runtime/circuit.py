"""A circuit breaker: stop calling a dependency that keeps failing, and probe it after a cool-down.

Shared by the pipeline's judge client (one breaker per judge tier) and the LLM judge (one per
endpoint), so it lives in the core and imports neither Beam nor gRPC nor HTTP. The caller decides
what a failure is; the breaker only counts::

    CLOSED ──(failure_threshold consecutive failures)──> OPEN ──(open_s later)──> HALF_OPEN
       ^                                                   ^                          |
       └──────────────(a probe succeeds)───────────────────┼──────────────────────────┤
                                                           └──(a probe fails)─────────┘

- CLOSED: every call is allowed; a failure adds one to the count, a success resets it.
- OPEN: ``allow()`` is False, so callers fail fast instead of waiting on a dead dependency, for
  ``open_s`` seconds.
- HALF_OPEN: up to ``half_open_probes`` calls are let through as probes, the rest are refused. A
  success closes the circuit, a failure opens it for another cool-down. A probe that never reports
  (its caller died) stops holding its slot after ``open_s``.

A call allowed while the circuit was closed may report after it opened: its failure is ignored and
its success is ignored too (the next probe decides). Every method is thread-safe; time is the
``clock`` parameter (seconds, monotonic). Counters for metrics: ``snapshot()``; as Prometheus
series read at scrape time: ``BreakerCollector`` (the LLM judge's per endpoint, the pipeline's per
tier).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["BreakerCollector", "BreakerPolicy", "BreakerSnapshot", "CircuitBreaker", "CircuitState"]

log = logging.getLogger(__name__)


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerPolicy:
    """When to open and how long to stay open. Tests shrink it."""

    #: Consecutive failures that open the circuit.
    failure_threshold: int = 5
    #: Seconds the circuit stays open before probes are let through.
    open_s: float = 5.0
    #: Calls let through at once while half-open.
    half_open_probes: int = 1

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {self.failure_threshold}")
        if self.open_s < 0:
            raise ValueError(f"open_s must be >= 0 seconds, got {self.open_s}")
        if self.half_open_probes < 1:
            raise ValueError(f"half_open_probes must be at least 1, got {self.half_open_probes}")


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerSnapshot:
    """The breaker's state and counters since it was made, for metrics and logs."""

    name: str
    state: CircuitState
    consecutive_failures: int
    #: Times the circuit entered each state (CLOSED counts only re-closings after an opening).
    transitions: dict[CircuitState, int] = field(default_factory=dict)
    #: Calls refused because the circuit was open (or half-open with its probes taken).
    rejected: int = 0
    #: Seconds until probes are let through (0 unless open).
    retry_in_s: float = 0.0


class CircuitBreaker:
    """One dependency's breaker. ``allow()`` before a call; ``record_success``/``record_failure`` after."""

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0  # probes let through and not yet reported
        self._probe_at = 0.0  # when the last probe was let through
        self._transitions: Counter[CircuitState] = Counter()
        self._rejected = 0

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state.value})"

    @property
    def state(self) -> CircuitState:
        with self._lock:
            self._tick()
            return self._state

    def allow(self) -> bool:
        """True when a call may go ahead now (in HALF_OPEN it is a probe and must report back)."""
        with self._lock:
            self._tick()
            if self._state is CircuitState.CLOSED:
                return True
            if self._state is CircuitState.HALF_OPEN:
                now = self._clock()
                stale = now - self._probe_at >= self.policy.open_s
                if self._probes < self.policy.half_open_probes or stale:
                    self._probes = 1 if stale else self._probes + 1
                    self._probe_at = now
                    return True
            self._rejected += 1
            return False

    def record_success(self) -> None:
        with self._lock:
            self._tick()
            if self._state is CircuitState.HALF_OPEN:
                self._move(CircuitState.CLOSED)
                log.warning("circuit %s closed: a probe succeeded", self.name)
            if self._state is CircuitState.CLOSED:
                self._failures = 0

    def record_failure(self) -> None:
        with self._lock:
            self._tick()
            if self._state is CircuitState.OPEN:
                return  # a call that started before the circuit opened
            self._failures += 1
            if self._state is CircuitState.HALF_OPEN or self._failures >= self.policy.failure_threshold:
                was = self._state
                self._move(CircuitState.OPEN)
                log.warning(
                    "circuit %s opened (%s): %d consecutive failure(s); failing fast for %.1fs, then probing",
                    self.name,
                    "the probe failed" if was is CircuitState.HALF_OPEN else "threshold reached",
                    self._failures,
                    self.policy.open_s,
                )

    def snapshot(self) -> BreakerSnapshot:
        with self._lock:
            self._tick()
            retry_in = (
                max(0.0, self._opened_at + self.policy.open_s - self._clock())
                if self._state is CircuitState.OPEN
                else 0.0
            )
            return BreakerSnapshot(
                name=self.name,
                state=self._state,
                consecutive_failures=self._failures,
                transitions={s: self._transitions[s] for s in CircuitState},
                rejected=self._rejected,
                retry_in_s=retry_in,
            )

    # ---- under the lock

    def _tick(self) -> None:
        """OPEN becomes HALF_OPEN once the cool-down has passed."""
        if self._state is CircuitState.OPEN and self._clock() - self._opened_at >= self.policy.open_s:
            self._move(CircuitState.HALF_OPEN)

    def _move(self, state: CircuitState) -> None:
        self._state = state
        self._transitions[state] += 1
        self._probes = 0
        if state is CircuitState.OPEN:
            self._opened_at = self._clock()
        elif state is CircuitState.CLOSED:
            self._failures = 0


class BreakerCollector(Collector):
    """Breakers' snapshots as ``<prefix>_state{..., state}`` (1 for the current state),
    ``<prefix>_transitions_total{..., state}``, ``<prefix>_rejected_total`` and
    ``<prefix>_consecutive_failures``, read at scrape time; nothing is registered at import.

    ``breakers`` returns (label values, breaker) pairs, the values in the order of ``labels``; it is
    called at every scrape, so breakers made later (one per tier, on first use) show up."""

    def __init__(
        self,
        prefix: str,
        what: str,
        labels: Sequence[str],
        breakers: Callable[[], Iterable[tuple[Sequence[str], CircuitBreaker]]],
    ) -> None:
        self._prefix = prefix
        self._what = what
        self._labels = list(labels)
        self._breakers = breakers

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        p, labels = self._prefix, self._labels
        state = GaugeMetricFamily(
            f"{p}_state",
            f"Circuit breaker state per {self._what}: 1 for the current state.",
            labels=[*labels, "state"],
        )
        transitions = CounterMetricFamily(
            f"{p}_transitions", "Times the circuit entered each state.", labels=[*labels, "state"]
        )
        rejected = CounterMetricFamily(
            f"{p}_rejected", "Attempts refused (failed fast) because the circuit was open.", labels=labels
        )
        failures = GaugeMetricFamily(
            f"{p}_consecutive_failures", f"Failed calls in a row against the {self._what} now.", labels=labels
        )
        for values, breaker in self._breakers():
            snap = breaker.snapshot()
            for s in CircuitState:
                state.add_metric([*values, s.value], 1.0 if snap.state is s else 0.0)
                transitions.add_metric([*values, s.value], snap.transitions.get(s, 0))
            rejected.add_metric(list(values), snap.rejected)
            failures.add_metric(list(values), snap.consecutive_failures)
        yield from (state, transitions, rejected, failures)

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        return self.collect()
