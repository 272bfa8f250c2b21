"""``run(argv)``: the pipeline's entry point, the only place that picks a runner.

Locally (the default, ``--runner local``) the pipeline runs as continuous micro-batches on the
in-process FnApiRunner: ``evalstream.pipeline.microbatch``. Why not Beam's streaming mode here: see
docs/pipeline.md (measured failures of the DirectRunner in streaming mode, and ``ReadFromKafka``
needing a Java expansion service that cannot be downloaded).

On Flink or Dataflow (``--runner FlinkRunner|DataflowRunner``), ``build_streaming`` wires the same
``Evaluate`` transform to Beam's unbounded ``ReadFromKafka``/``WriteToKafka`` instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from prometheus_client import CollectorRegistry, start_http_server

from evalstream.kafka.clients import FencedError
from evalstream.pipeline.evaluate import Evaluate
from evalstream.pipeline.metrics import PipelineMetrics
from evalstream.pipeline.microbatch import MicroBatchRunner, RunStats
from evalstream.pipeline.records import KafkaRecord
from evalstream.pipeline.settings import PipelineSettings
from evalstream.runtime.flags import Flag, SettingsFlags, add_settings_flags
from evalstream.runtime.ready import METRICS_READY
from evalstream.runtime.settings import KafkaSettings
from evalstream.runtime.tracing import endpoint_from_env, setup_tracing

__all__ = ["FENCED_EXIT_CODE", "build_streaming", "run"]

log = logging.getLogger(__name__)
#: Exit code when a newer instance with the same transactional id took over (this one is a zombie).
FENCED_EXIT_CODE = 3


def build_streaming(pipeline: beam.Pipeline, settings: PipelineSettings, kafka: KafkaSettings) -> None:
    """The same ``Evaluate`` on an unbounded Kafka read, for Flink or Dataflow (needs Beam's Java
    expansion service, which cannot be downloaded on this machine; see docs/pipeline.md)."""
    from apache_beam.io.kafka import ReadFromKafka, WriteToKafka
    from apache_beam.transforms import window

    runner = MicroBatchRunner(settings, kafka)
    consumer_config = {
        "bootstrap.servers": kafka.bootstrap,
        "group.id": settings.group_id,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
    }
    producer_config = {"bootstrap.servers": kafka.bootstrap}
    records = (
        pipeline
        | "ReadEvents"
        >> ReadFromKafka(consumer_config=consumer_config, topics=[settings.input_topic], with_metadata=True)
        | "ToRecord" >> beam.Map(KafkaRecord.from_message)
        | "Minute" >> beam.WindowInto(window.FixedWindows(60))
    )
    # Evaluate takes batches: one per input partition and minute (copies of an event keyed by its
    # id share a partition, so Dedupe sees them together).
    batches = (
        records
        | "ByPartition" >> beam.GroupBy(lambda record: record.partition)
        | "Batch" >> beam.MapTuple(lambda _, batch: list(batch))
    )
    out = batches | "Evaluate" >> Evaluate(runner.config, now=None, batch_id="streaming")
    for tag, topic in (
        ("verdicts", settings.verdicts_topic),
        ("summaries", settings.summaries_topic),
        ("dead", settings.deadletter_topic),
        ("audit", settings.audit_topic),
    ):
        _ = (
            getattr(out, tag)
            | f"Key_{tag}"
            >> beam.FlatMap(  # batches of messages; summaries come one by one
                lambda ms: ((b"", m.SerializeToString()) for m in (ms if isinstance(ms, list) else [ms]))
            )
            | f"Write_{tag}" >> WriteToKafka(producer_config=producer_config, topic=topic)
        )


def _tier_seconds(text: str) -> tuple[int, float]:
    tier, sep, seconds = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return int(tier), float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TIER=SECONDS, e.g. 2=120; got {text!r}") from None


#: Pipeline flags whose name or form differs from ``--field-name``.
_FLAGS = {
    "judge_tier_deadlines_s": Flag(
        name="--judge-tier-deadline",
        parse=_tier_seconds,
        collect=dict,
        metavar="TIER=SECONDS",
        help="a tier's own deadline, repeatable; replaces the default",
    ),
    "transactional": Flag(
        name="--no-transactions", switch_off=True, help="at-least-once instead of transactions"
    ),
}


def flags() -> tuple[argparse.ArgumentParser, SettingsFlags, SettingsFlags]:
    """``PipelineSettings`` fields as flags (``runtime/flags.py``), ``--bootstrap`` and ``--runner``."""
    p = argparse.ArgumentParser(prog="evalstream pipeline", description="Run the evalstream pipeline.")
    p.add_argument("--runner", default="local", help="local (micro-batches) or a Beam streaming runner")
    kafka = add_settings_flags(p, KafkaSettings, only=("bootstrap",))
    pipeline = add_settings_flags(p, PipelineSettings, flags=_FLAGS)
    return p, pipeline, kafka


def _arg_parser() -> argparse.ArgumentParser:
    return flags()[0]


def run(argv: Sequence[str] | None = None) -> RunStats | None:
    """Parse flags (over env, over defaults) and run until SIGTERM/SIGINT or idle exit."""
    parser, pipeline_flags, kafka_flags = flags()
    args, beam_args = parser.parse_known_args(argv)
    settings = PipelineSettings(**pipeline_flags.explicit(args))
    kafka = KafkaSettings(**kafka_flags.explicit(args))
    setup_tracing("evalstream-pipeline", endpoint_from_env())
    if args.runner != "local":
        options = PipelineOptions([f"--runner={args.runner}", "--streaming", *beam_args])
        with beam.Pipeline(options=options) as pipeline:
            build_streaming(pipeline, settings, kafka)
        return None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runner = MicroBatchRunner(settings, kafka, stop=stop)
    if settings.metrics_port is not None:
        registry = CollectorRegistry()
        breakers = runner.config.breakers
        runner.metrics = PipelineMetrics(
            registry, breakers=(lambda: breakers.resolve().all()) if breakers is not None else None
        )
        server, _ = start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=registry)
        log.info("%s", METRICS_READY.format(address=f"{settings.metrics_host}:{server.server_port}"))
    try:
        stats = runner.run()
    except FencedError as exc:
        log.error("pipeline stopped: %s", exc)
        raise SystemExit(FENCED_EXIT_CODE) from exc
    log.info(
        "pipeline stopped after %d batches, %d events (pid %d)", stats.batches, stats.events_in, os.getpid()
    )
    return stats
