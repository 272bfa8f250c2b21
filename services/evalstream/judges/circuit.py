"""The LLM judge's circuit breaker per endpoint, and its Prometheus metrics.

The state machine is ``evalstream.runtime.circuit.CircuitBreaker`` (the pipeline's judge client uses the
same one). The LLM judge asks it before every HTTP attempt and reports each *call's* outcome once
its retries are over: a call whose last attempt ended in a connection error, timeout, 5xx or a reply
that is not a chat completion counts as a failure (the endpoint is unwell); a call that got any other
answer, 4xx and 429 included, as a success (the endpoint answered). Counting calls rather than
attempts means per-request blips that a retry cures never open the circuit, even with many calls
failing their first attempt at once. After ``failure_threshold`` failed calls in a row the circuit
opens: calls, and retries of calls under way, end at once as ``circuit_open`` per-item errors, which
the pipeline's cascade escalates or dead-letters, instead of every item spending the whole retry
deadline on a dead endpoint. After ``open_s`` one probe attempt is let through; the call it belongs
to closes the circuit or opens it again.

(The pipeline's judge client counts attempts instead: its judges are our own servers, where a
refused connection is unambiguous and every batch waits while one is down.)

Settings (``LLMJudgeSettings``): ``EVALSTREAM_LLM_BREAKER_FAILURES`` (default 5; 0 turns the breaker
off) and ``EVALSTREAM_LLM_BREAKER_OPEN_S`` (default 10).

Metrics, registered on the judge server's registry (``register_metrics``), read at scrape time:

======================================================  =============================================
``evalstream_judge_circuit_state{judge,endpoint,state}``  1 for the current state, 0 for the others
``evalstream_judge_circuit_transitions_total{..,state}``  times the circuit entered each state
``evalstream_judge_circuit_rejected_total``                attempts refused because the circuit was open
``evalstream_judge_circuit_consecutive_failures``          failed calls in a row now
======================================================  =============================================
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry

from evalstream.runtime.circuit import BreakerCollector, BreakerPolicy, CircuitBreaker

__all__ = ["endpoint_breaker", "register_breaker_metrics"]


def endpoint_breaker(
    endpoint: str, *, failures: int, open_s: float, clock: Callable[[], float] = time.monotonic
) -> CircuitBreaker | None:
    """The breaker for one endpoint, or None when ``failures`` is 0 (breaker off)."""
    if failures == 0:
        return None
    return CircuitBreaker(
        f"LLM endpoint {endpoint}", BreakerPolicy(failure_threshold=failures, open_s=open_s), clock=clock
    )


def register_breaker_metrics(
    registry: CollectorRegistry, judge: str, breakers: Sequence[tuple[str, CircuitBreaker]]
) -> None:
    pairs = [((judge, endpoint), breaker) for endpoint, breaker in breakers]
    registry.register(
        BreakerCollector("evalstream_judge_circuit", "LLM endpoint", ("judge", "endpoint"), lambda: pairs)
    )
