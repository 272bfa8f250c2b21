"""Evaluate: the whole pipeline as one composite transform, with no I/O.

Batches of ``KafkaRecord`` in (each element a list: a micro-batch, or a streaming window's records);
batches of verdicts, dead letters, audits and unsampled events out, and ``Summary`` partials. Every
step works on a whole batch, so Beam's per-element cost (coders, bundle bookkeeping, one call per
DoFn) is paid per batch rather than per record. ``microbatch.py`` feeds it one micro-batch at a
time; ``run.build_streaming`` feeds it one batch per partition and window; tests feed it
``beam.Create``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import apache_beam as beam

from evalstream.pipeline.batch_clock import BatchClock, Now
from evalstream.pipeline.calibration_sample import CalibrationSample
from evalstream.pipeline.cascade import EmbeddingProbe
from evalstream.pipeline.decode import Decode, DecodeLimits
from evalstream.pipeline.dedupe import Dedupe, SharedSeenIds
from evalstream.pipeline.judge_cascade import JudgeCascade, SharedBreakers
from evalstream.pipeline.judge_client import RetryPolicy
from evalstream.pipeline.records import as_batches
from evalstream.pipeline.sampling import Sample, SamplingConfig
from evalstream.pipeline.summarise import Summarise
from evalstream.wire.cascade_config import CascadeConfig

__all__ = ["Evaluate", "EvaluateConfig", "EvaluateOutputs"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EvaluateConfig:
    endpoints: dict[int, str]  # judge tier -> gRPC target
    cascade: CascadeConfig
    sampling: SamplingConfig
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    #: (tier, seconds): tiers with their own overall deadline (``judge_client.tier_policy``).
    tier_deadlines_s: tuple[tuple[int, float], ...] = ()
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    batch_size: int = 256
    #: Per-tier circuit breakers that outlive a batch (None: no breaker, every call waits its deadline).
    breakers: SharedBreakers | None = None
    #: The embedding probe (``cascade.py``); off without an endpoint for its tier.
    probe: EmbeddingProbe = field(default_factory=EmbeddingProbe)
    #: Events judged by every tier and sent to the audit topic (``calibration_sample.py``).
    calibration_sample: CalibrationSample = field(default_factory=CalibrationSample)


@dataclass(frozen=True, slots=True)
class EvaluateOutputs:
    verdicts: beam.pvalue.PCollection
    summaries: beam.pvalue.PCollection
    dead: beam.pvalue.PCollection
    audit: beam.pvalue.PCollection
    unsampled: beam.pvalue.PCollection


class Evaluate(beam.PTransform):
    """Decode -> Dedupe -> Sample -> JudgeCascade -> Summarise."""

    def __init__(
        self,
        config: EvaluateConfig,
        *,
        now: Now,
        batch_id: str | BatchClock,
        seen: frozenset[str] | SharedSeenIds = frozenset(),
    ) -> None:
        """``now``: the batch clock for micro-batches (fixed, or a ``BatchClock`` for a pipeline run
        batch after batch), or None for the wall clock (streaming runners); ``batch_id`` likewise."""
        super().__init__()
        self._config = config
        self._now = now
        self._batch_id = batch_id
        self._seen = seen

    def expand(self, batches: beam.pvalue.PCollection) -> EvaluateOutputs:
        cfg = self._config
        decoded = batches | "Decode" >> Decode(now=self._now, limits=cfg.limits)
        unique = decoded.events | "Dedupe" >> Dedupe(seen=self._seen, now=self._now, batch_id=self._batch_id)
        events = as_batches(unique.events | "Events" >> beam.Map(lambda batch: [d.event for d in batch]))
        sampled = events | "Sample" >> Sample(cfg.sampling)
        judged = sampled.sampled | "JudgeCascade" >> JudgeCascade(
            endpoints=cfg.endpoints,
            cascade=cfg.cascade,
            policy=cfg.policy,
            now=self._now,
            batch_size=cfg.batch_size,
            breakers=cfg.breakers,
            probe=cfg.probe,
            sample=cfg.calibration_sample,
            tier_deadlines_s=cfg.tier_deadlines_s,
        )
        dead = as_batches((decoded.dead, unique.dead, judged.dead) | "AllDead" >> beam.Flatten())
        summaries = (
            (sampled.unsampled, judged.verdicts, dead)
            | "ForSummary" >> beam.Flatten()
            | ("Summarise" >> Summarise(self._batch_id, cfg.cascade.version))
        )
        return EvaluateOutputs(
            verdicts=judged.verdicts,
            summaries=summaries,
            dead=dead,
            audit=judged.audit,
            unsampled=sampled.unsampled,
        )
