"""The pipeline process's own health on ``/metrics`` (``--metrics-port``; off by default).

What the pipeline judges is counted by the exporter from the summaries ("Why summaries, not gauges");
this is about the process itself, so an SRE sees faults the outputs cannot show:

``evalstream_pipeline_batches_total``                 micro-batches committed
``evalstream_pipeline_batch_records_total``           records in them
``evalstream_pipeline_batch_duration_seconds``        time per batch, judging and commit included
``evalstream_pipeline_write_retries_total``           batches whose write or commit failed and were read
                                                      again with a new producer
``evalstream_pipeline_judge_circuit_state{tier,state}``     1 for each tier's breaker's current state
``evalstream_pipeline_judge_circuit_rejected_total{tier}``  calls the open circuit refused
``evalstream_pipeline_judge_circuit_transitions_total{tier,state}``, ``..._consecutive_failures{tier}``
``evalstream_pipeline_last_batch_timestamp_seconds``  when the last batch was committed (unix time)
``evalstream_pipeline_cascade_reloads_total{outcome}``  cascade configs swapped in between batches
                                                      (``loaded``) or refused (``rejected``: invalid,
                                                      unreadable, or a tier with no judge endpoint)
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from evalstream.runtime.circuit import BreakerCollector, CircuitBreaker

__all__ = ["PipelineMetrics"]

_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class PipelineMetrics:
    def __init__(
        self, registry: CollectorRegistry, breakers: Callable[[], dict[int, CircuitBreaker]] | None = None
    ) -> None:
        self.batches = Counter("evalstream_pipeline_batches", "Micro-batches committed.", registry=registry)
        self.records = Counter(
            "evalstream_pipeline_batch_records", "Records in committed micro-batches.", registry=registry
        )
        self.duration = Histogram(
            "evalstream_pipeline_batch_duration_seconds",
            "Time per micro-batch, judging and commit included.",
            buckets=_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "evalstream_pipeline_write_retries",
            "Batches whose write or commit failed; read again with a new producer.",
            registry=registry,
        )
        self.last_batch = Gauge(
            "evalstream_pipeline_last_batch_timestamp_seconds",
            "When the last micro-batch was committed (unix time).",
            registry=registry,
        )
        self.cascade_reloads = Counter(
            "evalstream_pipeline_cascade_reloads",
            "Cascade config files loaded between batches (outcome loaded) or refused (outcome rejected).",
            ["outcome"],
            registry=registry,
        )
        if breakers is not None:
            registry.register(
                BreakerCollector(
                    "evalstream_pipeline_judge_circuit",
                    "judge tier",
                    ("tier",),
                    lambda: [((str(tier),), b) for tier, b in sorted(breakers().items())],
                )
            )
