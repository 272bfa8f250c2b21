"""JudgeCascade: the cascade (``cascade.judge_batch``) as a Beam step, with real gRPC clients.

Each element is a batch of sampled events; it is judged in requests of ``batch_size`` items with up
to ``in_flight`` of them waiting on judge servers at once. The per-tier circuit breakers outlive each
micro-batch's pipeline: the runner lends them to the DoFn through ``SharedBreakers`` (Beam's
``Shared``, as ``Dedupe`` borrows its window of seen ids).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import BoundedWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue
from opentelemetry import trace

from evalstream.pipeline.batch_clock import Now, now_of
from evalstream.pipeline.calibration_sample import CalibrationSample
from evalstream.pipeline.cascade import AUDIT, DEAD, CascadeOutcome, EmbeddingProbe, judge_batch
from evalstream.pipeline.in_process import InProcess
from evalstream.pipeline.judge_client import JudgeClient, RetryPolicy, tier_policy
from evalstream.pipeline.records import SampledEvent, as_batches
from evalstream.runtime.circuit import BreakerPolicy, CircuitBreaker
from evalstream.runtime.tracing import tracing_enabled
from evalstream.wire.cascade_config import CascadeConfig

__all__ = ["JudgeCascade", "SharedBreakers", "TierBreakers"]

log = logging.getLogger("evalstream.pipeline.cascade")

_tracer = trace.get_tracer("evalstream.pipeline.cascade")


class TierBreakers:
    """One circuit breaker per judge tier, made on first use."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self._lock = threading.Lock()
        self._breakers: dict[int, CircuitBreaker] = {}

    def get(self, tier: int, target: str) -> CircuitBreaker:
        with self._lock:
            if tier not in self._breakers:
                self._breakers[tier] = CircuitBreaker(f"judge tier {tier} at {target}", self.policy)
            return self._breakers[tier]

    def all(self) -> dict[int, CircuitBreaker]:
        with self._lock:
            return dict(self._breakers)


class SharedBreakers(InProcess[TierBreakers]):
    """A picklable reference to a process-local ``TierBreakers``, so breaker state survives from one
    micro-batch pipeline to the next. The creator holds the strong reference. Where the creator is not
    (a remote worker of a streaming runner), the first DoFn there makes a fresh set with the policy."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self._policy = policy
        super().__init__(TierBreakers(policy))

    def _missing(self) -> TierBreakers:
        return TierBreakers(self._policy)


class _CascadeFn(beam.DoFn):
    """Judges each batch in requests of ``batch_size`` items, with up to ``in_flight`` of them waiting
    on judge servers at once.

    Each request's cascade runs on a small thread pool; gRPC waits release the GIL, so the pipeline
    turns one request's answers into verdicts while the judges work on the next in their own
    processes. Outputs are lists, one per request, emitted in order from ``process`` as they
    complete and the rest in ``finish_bundle``, each in the window and at the timestamp its batch came
    with.
    """

    def __init__(
        self,
        endpoints: dict[int, str],
        cascade: CascadeConfig,
        policy: RetryPolicy,
        now: Now,
        in_flight: int,
        batch_size: int,
        breakers: SharedBreakers | None = None,
        probe: EmbeddingProbe | None = None,
        sample: CalibrationSample | None = None,
        tier_deadlines_s: tuple[tuple[int, float], ...] = (),
    ) -> None:
        missing = [t for t in cascade.tiers if t not in endpoints]
        if missing:
            raise ValueError(
                f"cascade {cascade.version!r} uses tiers {missing} with no judge endpoint; "
                f"configured endpoints: {sorted(endpoints)}"
            )
        if in_flight < 1:
            raise ValueError(f"in_flight must be at least 1, got {in_flight}")
        unreachable = [t for t in cascade.shadow_tiers if t not in endpoints]
        if sample is not None and sample.fraction > 0 and unreachable:
            log.info("calibration sample: shadow tiers %s have no judge endpoint, not asked", unreachable)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._endpoints = endpoints
        self._cascade = cascade
        self._policy = policy
        self._tier_deadlines_s = tier_deadlines_s
        self._fixed_now = now
        self._in_flight = in_flight
        self._batch_size = batch_size
        self._breakers = breakers
        if probe is not None and probe.fraction > 0 and probe.tier not in endpoints:
            log.info("embedding probe off: no judge endpoint for tier %d", probe.tier)
            probe = None
        self._probe = probe if probe is not None and probe.fraction > 0 else None
        self._clients: dict[int, JudgeClient] = {}
        self._sample = sample

    def setup(self) -> None:
        self._stop = threading.Event()
        breakers = self._breakers.resolve() if self._breakers is not None else None
        self._clients = {
            tier: JudgeClient(
                target,
                tier=tier,
                policy=tier_policy(self._policy, self._tier_deadlines_s, tier),
                stop=self._stop,
                breaker=breakers.get(tier, target) if breakers is not None else None,
            )
            for tier, target in self._endpoints.items()
            if tier in self._cascade.tiers
            or (self._sample is not None and tier in self._cascade.shadow_tiers)
            or (self._probe is not None and tier == self._probe.tier)
        }
        self._pool = ThreadPoolExecutor(max_workers=self._in_flight, thread_name_prefix="judge-cascade")

    def teardown(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for client in self._clients.values():
            client.close()

    def start_bundle(self) -> None:
        self._pending: deque[tuple[Future[CascadeOutcome], Timestamp, BoundedWindow]] = deque()

    def _judge(self, batch: list[SampledEvent]) -> CascadeOutcome:
        return judge_batch(
            batch,
            cascade=self._cascade,
            call=lambda tier, request: self._clients[tier].judge(request),
            now=now_of(self._fixed_now),
            probe=self._probe,
            sample=self._sample,
            reachable=self._clients.keys(),
        )

    def process(
        self,
        batch: list[SampledEvent],
        timestamp: Any = beam.DoFn.TimestampParam,  # a Timestamp at run time
        window: Any = beam.DoFn.WindowParam,  # a BoundedWindow at run time
    ) -> Iterator[object]:
        for start in range(0, len(batch), self._batch_size):
            chunk = batch[start : start + self._batch_size]
            self._pending.append((self._pool.submit(self._judge, chunk), timestamp, window))
            while self._pending and (len(self._pending) > self._in_flight or self._pending[0][0].done()):
                yield from self._emit_oldest()

    def finish_bundle(self) -> Iterator[object]:
        while self._pending:
            yield from self._emit_oldest()

    def _emit_oldest(self) -> Iterator[object]:
        future, ts, win = self._pending.popleft()
        for tag, values in _outputs(future.result()):
            windowed = WindowedValue(values, ts, (win,))
            yield windowed if tag is None else beam.pvalue.TaggedOutput(tag, windowed)


def _outputs(outcome: CascadeOutcome) -> Iterator[tuple[str | None, list[Any]]]:
    """(tag, values) of one judged request (tag None: the verdicts), non-empty lists only; a trace
    event per verdict dimension."""
    for verdict in outcome.verdicts if tracing_enabled() else ():
        with _tracer.start_as_current_span("evalstream.verdict") as span:
            span.set_attribute("evalstream.event_id", verdict.event_id)
            for dim in verdict.dimensions:
                span.add_event(
                    "gen_ai.evaluation.result",
                    {
                        "gen_ai.evaluation.name": dim.dimension,
                        "gen_ai.evaluation.score.label": dim.label,
                        "gen_ai.evaluation.score.value": dim.score,
                        "evalstream.judge.tier": dim.deciding_tier,
                    },
                )
    for tag, values in ((None, outcome.verdicts), (DEAD, outcome.dead), (AUDIT, outcome.audits)):
        if values:
            yield tag, list(values)


class JudgeCascade(beam.PTransform):
    """Batches of SampledEvent -> batches of verdicts, dead letters and audits: ``.verdicts``,
    ``.dead``, ``.audit``. Each batch is judged in requests of at most ``batch_size`` items."""

    def __init__(
        self,
        *,
        endpoints: dict[int, str],
        cascade: CascadeConfig,
        policy: RetryPolicy,
        now: Now = None,
        batch_size: int = 256,
        in_flight: int = 2,
        breakers: SharedBreakers | None = None,
        probe: EmbeddingProbe | None = None,
        sample: CalibrationSample | None = None,
        tier_deadlines_s: tuple[tuple[int, float], ...] = (),
    ) -> None:
        """``probe``: the embedding probe (None or fraction 0: off); ``sample``: the calibration sample;
        ``tier_deadlines_s``: (tier, seconds) for tiers with their own deadline (``tier_policy``)."""
        super().__init__()
        fn = _CascadeFn(
            endpoints, cascade, policy, now, in_flight, batch_size, breakers, probe, sample, tier_deadlines_s
        )
        self._fn = fn

    def expand(self, sampled: beam.pvalue.PCollection) -> beam.pvalue.DoOutputsTuple:
        judged = sampled | "Judge" >> beam.ParDo(self._fn).with_outputs(DEAD, AUDIT, main="verdicts")
        return as_batches(judged, "verdicts", DEAD, AUDIT)
