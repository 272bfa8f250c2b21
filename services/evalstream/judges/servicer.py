"""The judge servicer: ``JudgeService`` over any ``Judge``, and what it converts and counts.

The servicer only converts: protos to ``JudgeInput``, ``judge.judge_batch``, outcomes back to protos
(the pure conversions ``check_request``, ``to_inputs``, ``to_response``); ``ServerMetrics`` are its
``evalstream_judge_*`` metrics. ``server.py`` binds, serves and stops it (the rejections it maps
are listed there).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol, runtime_checkable

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from evalstream.v1 import judge_pb2, judge_pb2_grpc, verdict_pb2

from .base import BudgetedJudge, ItemOutcome, Judge, JudgeInput, input_from_event

__all__ = [
    "ExportsMetrics",
    "JudgeServicer",
    "Rejection",
    "ServerMetrics",
    "answer_within",
    "check_request",
    "to_inputs",
    "to_response",
]

log = logging.getLogger(__name__)

_LATENCY_BUCKETS: Final = (1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@runtime_checkable
class ExportsMetrics(Protocol):
    """A judge that has metrics of its own registers them on the server's registry."""

    def register_metrics(self, registry: CollectorRegistry) -> None: ...


class Rejection(Exception):
    """A request the server refuses, with the status code that says why."""

    def __init__(self, *, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class ServerMetrics:
    """The server's Prometheus metrics, registered on the registry given (never at import)."""

    def __init__(self, registry: CollectorRegistry, judge: str) -> None:
        labels = {"judge": judge}
        self.requests = Counter(
            "evalstream_judge_requests", "Judge RPCs received.", ["judge"], registry=registry
        ).labels(**labels)
        self._items = Counter(
            "evalstream_judge_items",
            "Items in accepted Judge RPCs, by outcome (ok, or error when the judge could not judge one).",
            ["judge", "outcome"],
            registry=registry,
        )
        self._judgements = Counter(
            "evalstream_judge_judgements",
            "Judgements answered, by dimension and where their confidence came from (logprobs, "
            "agreement, single, or none when the judge does not say).",
            ["judge", "dimension", "confidence_source"],
            registry=registry,
        )
        self._dimension_errors = Counter(
            "evalstream_judge_dimension_errors",
            "Dimensions asked for and not answered, by error type (also when the item's other "
            "dimensions were answered).",
            ["judge", "dimension", "error_type"],
            registry=registry,
        )
        self._errors = Counter(
            "evalstream_judge_errors",
            "Judge RPCs that did not succeed, by gRPC status code.",
            ["judge", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "evalstream_judge_request_duration_seconds",
            "Time to answer a Judge RPC, rejections included.",
            ["judge"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        ).labels(**labels)
        self.in_flight = Gauge(
            "evalstream_judge_requests_in_flight",
            "Judge RPCs being judged now.",
            ["judge"],
            registry=registry,
        ).labels(**labels)
        self._judge = judge

    def items(self, outcome: str) -> Counter:
        return self._items.labels(judge=self._judge, outcome=outcome)

    def outcomes(self, outcomes: Sequence[ItemOutcome]) -> None:
        """Count each outcome's judgements by confidence source and its unanswered dimensions."""
        for outcome in outcomes:
            for j in outcome.judgements:
                self._judgements.labels(
                    judge=self._judge, dimension=j.dimension, confidence_source=j.confidence_source or "none"
                ).inc()
            for f in outcome.dimension_errors:
                self._dimension_errors.labels(
                    judge=self._judge, dimension=f.dimension, error_type=f.error_type
                ).inc()

    def error(self, code: grpc.StatusCode) -> None:
        self._errors.labels(judge=self._judge, code=code.name).inc()


# --- pure conversions ---------------------------------------------------------------------------


def answer_within(time_remaining: float) -> float:
    """The budget a judge gets from the caller's remaining deadline: what is left, less a margin for
    the reply to travel back (a tenth of it, at most half a second)."""
    return max(0.0, time_remaining - min(0.5, time_remaining / 10))


def check_request(
    request: judge_pb2.JudgeRequest, *, known: frozenset[str], max_batch: int, judge: str
) -> frozenset[str]:
    """The dimensions to judge, or a ``Rejection`` saying what is wrong with the request."""
    if len(request.items) > max_batch:
        raise Rejection(
            code=grpc.StatusCode.RESOURCE_EXHAUSTED,
            message=f"batch of {len(request.items)} items is over this server's limit of {max_batch}; "
            "split it into smaller requests",
        )
    unknown = sorted(set(request.dimensions) - known)
    if unknown:
        raise Rejection(
            code=grpc.StatusCode.INVALID_ARGUMENT,
            message=f"{judge} does not judge dimension(s) {unknown}; expected some of {sorted(known)}, "
            "or none for all of them",
        )
    for index, item in enumerate(request.items):
        if not item.item_id:
            raise Rejection(
                code=grpc.StatusCode.INVALID_ARGUMENT,
                message=f"item {index} has an empty item_id; expected the event id",
            )
    return frozenset(request.dimensions) or known


def to_inputs(request: judge_pb2.JudgeRequest) -> list[JudgeInput]:
    return [input_from_event(item.item_id, item.event) for item in request.items]


def to_response(
    outcomes: Sequence[ItemOutcome], *, judge: str, tier: int, latency_ms_per_item: float
) -> judge_pb2.JudgeResponse:
    results = [
        judge_pb2.ItemResult(
            item_id=outcome.item_id,
            error=outcome.error,
            error_type=outcome.error_type,
            stats=outcome.stats,
            dimension_errors=[
                judge_pb2.DimensionError(dimension=f.dimension, error=f.error, error_type=f.error_type)
                for f in outcome.dimension_errors
            ],
            extra=outcome.extra,
            judgements=[
                verdict_pb2.Judgement(
                    dimension=j.dimension,
                    label=j.label,
                    score=j.score,
                    confidence=j.confidence,
                    cost=verdict_pb2.Cost(
                        input_tokens=j.input_tokens,
                        output_tokens=j.output_tokens,
                        latency_ms=latency_ms_per_item,
                        usd=j.cost_usd,
                    ),
                    judge=judge,
                    rationale=j.rationale,
                    confidence_source=j.confidence_source,
                )
                for j in outcome.judgements
            ],
        )
        for outcome in outcomes
    ]
    return judge_pb2.JudgeResponse(results=results, judge=judge, tier=tier)


# --- the servicer -------------------------------------------------------------------------------


class JudgeServicer(judge_pb2_grpc.JudgeServiceServicer):
    """Unpacks, calls the judge, packs; every refusal is a deliberate status code."""

    def __init__(
        self,
        judge: Judge,
        *,
        max_batch: int,
        max_concurrent: int,
        metrics: ServerMetrics,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._judge = judge
        self._known = judge.dimensions
        self._max_batch = max_batch
        self._max_concurrent = max_concurrent
        # Guards _active and _stopping: admission, shutdown and draining see one consistent count.
        self._state = threading.Condition()
        self._active = 0
        self._stopping = False
        self._metrics = metrics
        self._clock = clock

    def begin_shutdown(self) -> None:
        """From now on new calls get UNAVAILABLE; calls already judging finish."""
        with self._state:
            self._stopping = True

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is being judged; False if some still are after ``timeout`` seconds."""
        with self._state:
            return self._state.wait_for(lambda: self._active == 0, timeout)

    @property
    def active(self) -> int:
        with self._state:
            return self._active

    def _admit(self) -> None:
        with self._state:
            if self._stopping:
                raise Rejection(
                    code=grpc.StatusCode.UNAVAILABLE, message="judge server is stopping; retry elsewhere"
                )
            if self._active >= self._max_concurrent:
                raise Rejection(
                    code=grpc.StatusCode.RESOURCE_EXHAUSTED,
                    message=f"{self._max_concurrent} requests already in flight (the limit); "
                    "retry with backoff",
                )
            self._active += 1

    def _release(self) -> None:
        with self._state:
            self._active -= 1
            self._state.notify_all()

    def _judge_request(
        self, request: judge_pb2.JudgeRequest, time_remaining: float | None = None
    ) -> judge_pb2.JudgeResponse:
        dimensions = check_request(
            request, known=self._known, max_batch=self._max_batch, judge=self._judge.name
        )
        self._admit()
        self._metrics.in_flight.inc()
        try:
            items = to_inputs(request)
            started = self._clock()
            if isinstance(self._judge, BudgetedJudge) and time_remaining is not None:
                outcomes = self._judge.judge_batch_within(
                    items, dimensions, budget_s=answer_within(time_remaining)
                )
            else:
                outcomes = self._judge.judge_batch(items, dimensions)
            elapsed_ms = (self._clock() - started) * 1000.0
        finally:
            self._metrics.in_flight.dec()
            self._release()
        got = [o.item_id for o in outcomes]
        want = [i.item_id for i in items]
        if got != want:
            raise Rejection(
                code=grpc.StatusCode.INTERNAL,
                message=f"{self._judge.name} returned {len(got)} outcomes for {len(want)} items, or out of "
                "order; expected one per item, same order (a bug in the judge)",
            )
        errors = sum(1 for o in outcomes if o.error)
        self._metrics.items("ok").inc(len(outcomes) - errors)
        self._metrics.items("error").inc(errors)
        self._metrics.outcomes(outcomes)
        return to_response(
            outcomes,
            judge=self._judge.name,
            tier=self._judge.tier,
            latency_ms_per_item=elapsed_ms / len(items) if items else 0.0,
        )

    def Judge(
        self, request: judge_pb2.JudgeRequest, context: grpc.ServicerContext
    ) -> judge_pb2.JudgeResponse:
        self._metrics.requests.inc()
        with self._metrics.latency.time():
            try:
                return self._judge_request(request, context.time_remaining())
            except Rejection as rejection:
                failure = rejection
                if failure.code is grpc.StatusCode.INTERNAL:
                    log.error("judge request failed: %s", failure)
            except Exception as exc:
                log.exception("judge %s raised on a batch of %d items", self._judge.name, len(request.items))
                failure = Rejection(
                    code=grpc.StatusCode.INTERNAL,
                    message=f"{self._judge.name} failed: {type(exc).__name__}: {exc}",
                )
        self._metrics.error(failure.code)
        context.abort(failure.code, failure.message)
        raise AssertionError("context.abort returned")  # abort always raises
