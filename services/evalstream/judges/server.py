"""The generic judge server: any ``Judge`` behind ``evalstream.v1.JudgeService``, plus gRPC health.

    python -m evalstream.judges.server --judge rules [--host 127.0.0.1] [--port 0] [--metrics-port N]

When it listens it prints exactly one line, ``JUDGE_READY`` (``evalstream.runtime.ready``), to stdout
(a parent that passed ``--port 0`` reads the port from it); everything else goes to the log on
stderr. On SIGTERM or SIGINT it rejects new calls with UNAVAILABLE, reports NOT_SERVING on the
health service, lets in-flight calls finish within the grace period, stops, and exits 0.

The servicer only converts: protos to ``JudgeInput``, ``judge.judge_batch``, outcomes back to protos.
Rejections are mapped on purpose:

- INVALID_ARGUMENT: an empty item id, or a dimension the judge does not know;
- RESOURCE_EXHAUSTED: a batch over ``max_batch``, or ``max_concurrent`` requests already in flight;
- UNAVAILABLE: the server is stopping;
- INTERNAL: the judge broke its contract or raised (a bug: logged with its traceback).

Metrics (``evalstream_judge_*``) are registered on the registry passed to ``create_server``; a
judge with metrics of its own (``ExportsMetrics``, e.g. the LLM judge's circuit breaker) registers
them on the same registry.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from types import FrameType
from typing import Any, Final, Protocol, runtime_checkable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from pydantic import ValidationError

from evalstream.runtime.flags import Flag, SettingsFlags, add_settings_flags
from evalstream.runtime.ready import JUDGE_READY, METRICS_READY
from evalstream.v1 import judge_pb2, judge_pb2_grpc, verdict_pb2

from .base import BudgetedJudge, ItemOutcome, Judge, JudgeInput, input_from_event
from .registry import UnknownJudgeError, create_judge
from .settings import JudgeServerSettings

__all__ = [
    "ExportsMetrics",
    "JudgeServer",
    "JudgeServicer",
    "Rejection",
    "ServerMetrics",
    "ServerStartError",
    "create_server",
    "main",
]

log = logging.getLogger("evalstream.judges.server")  # also when run as __main__

SERVICE_NAME: Final = "evalstream.v1.JudgeService"
# Threads beyond max_concurrent, so that a request over the limit is rejected at once instead of
# queueing behind the busy ones.
_SPARE_WORKERS: Final = 2
_LATENCY_BUCKETS: Final = (1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@runtime_checkable
class ExportsMetrics(Protocol):
    """A judge that has metrics of its own registers them on the server's registry."""

    def register_metrics(self, registry: CollectorRegistry) -> None: ...


class ServerStartError(RuntimeError):
    """The server could not bind its address."""


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


# --- the server ---------------------------------------------------------------------------------


class JudgeServer(grpc.Server):
    """A ``grpc.Server`` that stops in order.

    ``stop(grace)``: new Judge calls get UNAVAILABLE from the servicer, health reports NOT_SERVING,
    calls already being judged get up to ``grace`` seconds to finish (gRPC keeps serving meanwhile, so
    the rejections and the health status are answered rather than cut off), then gRPC stops and
    cancels whatever is left, such as health watches. ``stop(None)`` cancels everything at once.
    """

    def __init__(
        self,
        server: grpc.Server,
        *,
        servicer: JudgeServicer,
        health_servicer: Any,
    ) -> None:
        self._server = server
        self._servicer = servicer
        self._health = health_servicer

    def stop(self, grace: float | None = None) -> threading.Event:
        # Reject first: a client that sees NOT_SERVING must not then get a call accepted.
        self._servicer.begin_shutdown()
        self._health.enter_graceful_shutdown()
        if grace is None:
            return self._server.stop(None)
        done = threading.Event()

        def drain() -> None:
            if not self._servicer.wait_idle(grace):
                log.warning(
                    "%d judge call(s) still running after %.1fs; cancelling", self._servicer.active, grace
                )
            self._server.stop(0).wait()
            done.set()

        threading.Thread(target=drain, name="judge-drain", daemon=True).start()
        return done

    def start(self) -> None:
        self._server.start()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(generic_rpc_handlers)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def create_server(
    config: JudgeServerSettings, judge: Judge, registry: CollectorRegistry
) -> tuple[JudgeServer, int]:
    """Build and bind (not start) a server for ``judge``; returns it and the port it bound."""
    metrics = ServerMetrics(registry, judge.name)
    if isinstance(judge, ExportsMetrics):
        judge.register_metrics(registry)
    servicer = JudgeServicer(
        judge, max_batch=config.max_batch, max_concurrent=config.max_concurrent, metrics=metrics
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=config.max_concurrent + _SPARE_WORKERS, thread_name_prefix="judge-rpc"
        ),
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    judge_pb2_grpc.add_JudgeServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    address = _address(config.host, config.port)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ServerStartError(
            f"cannot bind the judge server to {address}: {exc}; is the port in use? --port 0 picks a free one"
        ) from exc
    if port == 0:
        raise ServerStartError(f"cannot bind the judge server to {address}; is the port in use?")
    return JudgeServer(server, servicer=servicer, health_servicer=health_servicer), port


# --- main ---------------------------------------------------------------------------------------


def flags() -> tuple[argparse.ArgumentParser, SettingsFlags]:
    """The server's flags: ``JudgeServerSettings`` fields (``runtime/flags.py``)."""
    parser = argparse.ArgumentParser(
        prog="python -m evalstream.judges.server",
        description="Serve one judge tier over gRPC. Unset options come from EVALSTREAM_JUDGE_* or defaults.",
    )
    judge = add_settings_flags(
        parser, JudgeServerSettings, flags={"name": Flag(name="--judge"), "grace_s": Flag(name="--grace")}
    )
    return parser, judge


def _parse(argv: Sequence[str] | None) -> dict[str, Any]:
    """The ``JudgeServerSettings`` fields given as flags."""
    parser, judge = flags()
    return judge.explicit(parser.parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    metrics_http = None
    try:
        settings = JudgeServerSettings(**_parse(argv))
        judge = create_judge(settings.name, settings)
        registry = CollectorRegistry()
        server, port = create_server(settings, judge, registry)
        if settings.metrics_port is not None:
            metrics_http, _ = start_http_server(settings.metrics_port, addr=settings.host, registry=registry)
            log.info("%s", METRICS_READY.format(address=_address(settings.host, metrics_http.server_port)))
    except (ValidationError, UnknownJudgeError, ServerStartError, ValueError, OSError) as exc:
        log.error("judge server not started: %s", exc)
        return 2

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping, in-flight calls get %.1fs", signal.Signals(signum).name, settings.grace_s)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    log.info("serving %s (tier %d), max batch %d", judge.name, judge.tier, settings.max_batch)
    JUDGE_READY.announce(address=_address(settings.host, port))
    stop.wait()
    server.stop(settings.grace_s).wait()
    if metrics_http is not None:
        metrics_http.shutdown()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
