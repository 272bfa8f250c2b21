"""The one module that talks gRPC to judge servers: calls, deadlines, retries, error translation.

Exceptions (``grpc.RpcError`` never leaves this module)::

    JudgeError                 base; carries the tier and the target
    ├── JudgeUnavailable       retryable failures that outlasted the deadline (UNAVAILABLE,
    │                          DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED), shutdown, or the
    │                          tier's circuit is open (``code == "CIRCUIT_OPEN"``)
    └── JudgeRejected          the server refused the request (INVALID_ARGUMENT, ...): not retried

Retry policy (the project's one type, ``evalstream.runtime.retry.RetryPolicy``): one overall
deadline shared by all attempts; each attempt's gRPC timeout is the smaller of ``attempt_timeout_s``
and what is left; jittered exponential backoff; stop early when the next sleep would pass the
deadline; sleeps end at once when ``stop`` is set. What is retryable is gRPC's: ``RETRYABLE``. A tier
may have its own deadline (``tier_policy``; the pipeline gives the LLM tier 120 s by default), its
attempts then taking up to half of it. Judge servers bound their work by the call's gRPC deadline
(``services/evalstream/judges/server.py``), so deadlines nest.

Circuit breaker (optional, ``breaker=``; ``evalstream.runtime.circuit``): without it, every call to a tier
that is down waits out the whole deadline, so while a tier is down each batch takes at least the
deadline and throughput collapses. With it, each attempt asks the tier's breaker first; an attempt
that ends with a retryable status counts as a failure, any answer (even a rejection) as a success.
After ``failure_threshold`` consecutive failed attempts the circuit opens: calls fail at once with
``JudgeUnavailable(code="CIRCUIT_OPEN")`` (the cascade escalates or dead-letters the items as for
any unavailable tier) for ``open_s`` seconds; then one probe attempt is let through, and its answer
closes the circuit or opens it again. The breaker outlives the client: the micro-batch runner
makes one per tier and lends it to each batch's clients (``pipelines/evalstream/pipeline/judge_cascade.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import grpc
from tenacity import Retrying, retry_if_exception

from evalstream.runtime.circuit import CircuitBreaker
from evalstream.runtime.retry import RetryPolicy
from evalstream.v1 import judge_pb2, judge_pb2_grpc

__all__ = [
    "RETRYABLE",
    "JudgeClient",
    "JudgeError",
    "JudgeRejected",
    "JudgeUnavailable",
    "RetryPolicy",
    "tier_policy",
]

RETRYABLE: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)


class JudgeError(Exception):
    def __init__(self, message: str, *, tier: int, target: str, code: str = "") -> None:
        super().__init__(message)
        self.tier = tier
        self.target = target
        self.code = code


class JudgeUnavailable(JudgeError):
    """The judge did not answer within the deadline (after retries)."""


class JudgeRejected(JudgeError):
    """The judge refused the request; retrying the same request will not help."""


def tier_policy(policy: RetryPolicy, tier_deadlines_s: Iterable[tuple[int, float]], tier: int) -> RetryPolicy:
    """The policy one tier's client uses: ``policy``, or with the tier's own deadline when
    ``tier_deadlines_s`` (tier, seconds) names one (an LLM judging a batch of hundreds)."""
    for t, seconds in tier_deadlines_s:
        if t == tier:
            return policy.with_deadline(seconds)
    return policy


class _Stopped(Exception):
    pass


class JudgeClient:
    """A channel to one judge tier. Create in ``DoFn.setup``; ``close`` in ``teardown``."""

    def __init__(
        self,
        target: str,
        *,
        tier: int,
        policy: RetryPolicy,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.target = target
        self.tier = tier
        self._policy = policy
        self._breaker = breaker
        self._stop = stop or threading.Event()
        self._clock = clock
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                # Reconnect to a restarted judge within a second (gRPC's default backoff grows to 120 s,
                # and calls fail at once while the channel waits out its backoff).
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self._stub = judge_pb2_grpc.JudgeServiceStub(self._channel)
        self.attempts = 0  # attempts made by the last call, for metrics and tests

    def close(self) -> None:
        self._channel.close()

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise _Stopped

    def judge(self, request: judge_pb2.JudgeRequest) -> judge_pb2.JudgeResponse:
        policy = self._policy
        deadline = self._clock() + policy.deadline_s
        self.attempts = 0

        breaker = self._breaker

        def attempt() -> judge_pb2.JudgeResponse:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise _DeadlinePassed
            if breaker is not None and not breaker.allow():
                raise _CircuitOpen
            self.attempts += 1
            try:
                response: judge_pb2.JudgeResponse = self._stub.Judge(
                    request, timeout=min(policy.attempt_timeout_s, remaining), wait_for_ready=False
                )
            except grpc.RpcError as exc:
                if breaker is not None:
                    if exc.code() in RETRYABLE:
                        breaker.record_failure()
                    else:
                        breaker.record_success()  # it answered: the tier is up
                raise
            if breaker is not None:
                breaker.record_success()
            return response

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, grpc.RpcError) and exc.code() in RETRYABLE

        retrying = Retrying(
            stop=policy.stop(deadline, self._clock),
            wait=policy.wait(),
            retry=retry_if_exception(retryable),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            result: judge_pb2.JudgeResponse = retrying(attempt)
            return result
        except grpc.RpcError as exc:
            code = exc.code()
            details = exc.details() or ""
            message = (
                f"judge tier {self.tier} at {self.target}: {code.name} after {self.attempts} attempt(s) "
                f"in {policy.deadline_s:.1f}s deadline: {details}"
            )
            if code in RETRYABLE:
                raise JudgeUnavailable(message, tier=self.tier, target=self.target, code=code.name) from exc
            raise JudgeRejected(message, tier=self.tier, target=self.target, code=code.name) from exc
        except _CircuitOpen as exc:
            assert breaker is not None
            snap = breaker.snapshot()
            raise JudgeUnavailable(
                f"judge tier {self.tier} at {self.target}: circuit open after "
                f"{snap.consecutive_failures} consecutive failed attempt(s) (last call: "
                f"{self.attempts} attempt(s)); failing fast, next probe in {snap.retry_in_s:.1f}s",
                tier=self.tier,
                target=self.target,
                code="CIRCUIT_OPEN",
            ) from exc
        except (_Stopped, _DeadlinePassed) as exc:
            raise JudgeUnavailable(
                f"judge tier {self.tier} at {self.target}: no answer before the deadline or shutdown",
                tier=self.tier,
                target=self.target,
                code="DEADLINE_EXCEEDED",
            ) from exc


class _DeadlinePassed(Exception):
    pass


class _CircuitOpen(Exception):
    pass
