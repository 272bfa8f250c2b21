"""``run(argv)``: the only place that names Kafka or a runner.

Locally, the pipeline runs **continuously as micro-batches**: poll up to ``max_batch_records`` or
``max_batch_wait_s`` of records, run the ``Evaluate`` transform over them as a bounded Beam
pipeline on the in-process FnApiRunner (named explicitly, which skips the Prism download), then
write verdicts, summaries, dead letters and audits **and** commit the consumed offsets in one Kafka
transaction. A crash before the commit aborts the transaction: nothing half-written is visible to
``read_committed`` consumers, and the batch is read again from the last committed offsets. Why not
Beam's streaming mode here: see docs/pipeline.md (measured failures of the DirectRunner in
streaming mode, and ``ReadFromKafka`` needing a Java expansion service that cannot be downloaded).

On Flink or Dataflow (``--runner FlinkRunner|DataflowRunner``), ``build_streaming`` wires the same
``Evaluate`` transform to Beam's unbounded ``ReadFromKafka``/``WriteToKafka`` instead.

The transaction step is ``evalstream.kafka.transactions.BatchWriter``, shared with ``evalstream
redrive``: every output acknowledged before the commit, the offsets sent with the consumer's group
metadata, a stable transactional id per runner instance (``--transactional-id``, default
``evalstream-pipeline-0``). A restarted runner fences its predecessor and Kafka aborts the
transaction it left open; a predecessor that wakes up (a zombie) is refused (``FencedError``) and
exits. A failed batch is aborted, read again from its first offsets and written with a new producer
under the same id.

Outputs leave the bounded pipeline through a spill directory: a sink DoFn writes each output as a
length-prefixed record file per bundle, and the loop reads them back to produce them in the
transaction. This keeps I/O here, works with any local runner mode, and costs ~1 ms per 1,000 records.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pickle
import signal
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry, start_http_server

from evalstream.kafka.clients import FencedError, KafkaEdgeError, consumer, explain, fenced
from evalstream.kafka.transactions import BatchWriter, Output, offsets_after, rewind, spans
from evalstream.pipeline.cascade import EmbeddingProbe, SharedBreakers
from evalstream.pipeline.decode import DecodeLimits
from evalstream.pipeline.dedupe import SeenIds, SharedSeenIds
from evalstream.pipeline.evaluate import Evaluate, EvaluateConfig
from evalstream.pipeline.judge_client import RetryPolicy
from evalstream.pipeline.metrics import PipelineMetrics
from evalstream.pipeline.records import KafkaRecord
from evalstream.pipeline.sampling import SamplingConfig
from evalstream.pipeline.settings import PipelineSettings, parse_endpoints
from evalstream.runtime.circuit import BreakerPolicy
from evalstream.runtime.ready import METRICS_READY, PIPELINE_READY
from evalstream.runtime.settings import KafkaSettings
from evalstream.runtime.tracing import endpoint_from_env, setup_tracing
from evalstream.v1 import summary_pb2, verdict_pb2
from evalstream.wire import topics
from evalstream.wire.cascade_config import CascadeConfig, default_cascade

__all__ = ["BatchResult", "MicroBatchRunner", "process_batch", "run"]

log = logging.getLogger(__name__)

_OUTPUTS = ("verdicts", "summaries", "dead", "audit")
_LEN = struct.Struct(">I")
#: Producer request limit: dead letters keep at most 64 KiB of raw input, so this is generous.
MAX_REQUEST_BYTES = 16 * 1024 * 1024
#: How long a batch's records may take to be acknowledged before the batch is retried.
WRITE_TIMEOUT_S = 30.0
#: Exit code when a newer instance with the same transactional id took over (this one is a zombie).
FENCED_EXIT_CODE = 3


@dataclass(frozen=True, slots=True)
class BatchResult:
    verdicts: list[verdict_pb2.Verdict]
    summaries: list[summary_pb2.Summary]
    dead: list[verdict_pb2.DeadLetter]
    audit: list[verdict_pb2.Verdict]
    unsampled_ids: list[str]

    @property
    def unsampled(self) -> int:
        return len(self.unsampled_ids)

    @property
    def accounted(self) -> int:
        return self.unsampled + len(self.verdicts) + len(self.dead)


class _Spill(beam.DoFn):
    """Write serialized outputs to one file per bundle under ``directory/tag``."""

    def __init__(self, directory: str, tag: str) -> None:
        self._dir = Path(directory) / tag

    def start_bundle(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._file = (self._dir / f"{uuid.uuid4().hex}.bin").open("wb")

    def process(self, message: Any) -> None:
        data = message if isinstance(message, bytes) else message.SerializeToString()
        self._file.write(_LEN.pack(len(data)))
        self._file.write(data)

    def finish_bundle(self) -> None:
        self._file.close()


def _read_spill(directory: Path) -> Iterator[bytes]:
    if not directory.is_dir():
        return
    for path in sorted(directory.iterdir()):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (size,) = _LEN.unpack_from(data, pos)
            pos += _LEN.size
            yield data[pos : pos + size]
            pos += size


def _write_records(path: Path, records: Sequence[KafkaRecord]) -> None:
    with path.open("wb") as out:
        pickle.dump(list(records), out, protocol=pickle.HIGHEST_PROTOCOL)


def _read_records(path: str) -> list[KafkaRecord]:
    with open(path, "rb") as f:
        records: list[KafkaRecord] = pickle.load(f)
    return records


def process_batch(
    records: Sequence[KafkaRecord],
    config: EvaluateConfig,
    *,
    now: datetime,
    batch_id: str,
    seen: frozenset[str] | SharedSeenIds = frozenset(),
) -> BatchResult:
    """Run ``Evaluate`` over one bounded batch on the in-process runner and collect its outputs.

    The records reach the pipeline through a file, not ``beam.Create``: Create would pickle and
    bz2-compress every record into the pipeline definition (measured: ~0.3 ms per record).
    """
    with tempfile.TemporaryDirectory(prefix="evalstream-batch-") as spill:
        root = Path(spill)
        _write_records(root / "input.pickle", records)
        options = PipelineOptions(["--direct_num_workers=1"])
        with beam.Pipeline(runner=FnApiRunner(), options=options) as pipeline:
            outputs = (
                pipeline
                | "Input" >> beam.Create([str(root / "input.pickle")])
                | "Records" >> beam.FlatMap(_read_records)
                | "Evaluate" >> Evaluate(config, now=now, batch_id=batch_id, seen=seen)
            )
            for tag in _OUTPUTS:
                _ = getattr(outputs, tag) | f"Spill_{tag}" >> beam.ParDo(_Spill(spill, tag))
            _ = (
                outputs.unsampled
                | "UnsampledIds" >> beam.Map(lambda event: event.event_id.encode())
                | "Spill_unsampled" >> beam.ParDo(_Spill(spill, "unsampled"))
            )
        return BatchResult(
            verdicts=[verdict_pb2.Verdict.FromString(b) for b in _read_spill(root / "verdicts")],
            summaries=[summary_pb2.Summary.FromString(b) for b in _read_spill(root / "summaries")],
            dead=[verdict_pb2.DeadLetter.FromString(b) for b in _read_spill(root / "dead")],
            audit=[verdict_pb2.Verdict.FromString(b) for b in _read_spill(root / "audit")],
            unsampled_ids=[b.decode() for b in _read_spill(root / "unsampled")],
        )


def batch_identity(group: str, spans: dict[TopicPartition, tuple[int, int]]) -> str:
    """A stable id for the offset ranges of a batch: the same ranges always give the same id."""
    text = (
        group + "|" + ",".join(f"{tp.topic}:{tp.partition}:{a}-{b}" for tp, (a, b) in sorted(spans.items()))
    )
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _content_type(headers: Sequence[tuple[str, bytes]] | None) -> str:
    for name, value in headers or ():
        if name.lower() == topics.CONTENT_TYPE_HEADER:
            return value.decode("utf-8", "replace").split(";")[0].strip().lower()
    return topics.CONTENT_TYPE_JSON


@dataclass(slots=True)
class RunStats:
    batches: int = 0
    events_in: int = 0
    verdicts: int = 0
    dead: int = 0
    unsampled: int = 0
    audits: int = 0
    started: float = field(default_factory=time.monotonic)
    first_batch_at: float | None = None  # monotonic time the first batch began processing
    last_batch_done_at: float | None = None  # ... and the last batch's transaction committed
    retries: int = 0  # batches whose write failed and were read again
    beam_s: float = 0.0  # time spent inside the Beam pipeline
    write_s: float = 0.0  # time spent producing outputs and committing

    @property
    def busy_rate(self) -> float:
        """Events per second between the first batch's start and the last batch's commit."""
        if self.first_batch_at is None or self.last_batch_done_at is None:
            return 0.0
        return self.events_in / max(self.last_batch_done_at - self.first_batch_at, 1e-9)


class MicroBatchRunner:
    """Consume -> Evaluate -> produce + commit in one transaction, batch after batch."""

    def __init__(
        self,
        settings: PipelineSettings,
        kafka: KafkaSettings,
        *,
        stop: threading.Event | None = None,
        clock: Any = None,
    ) -> None:
        self._settings = settings
        self._kafka = kafka
        self._stop = stop or threading.Event()
        self._now = clock or (lambda: datetime.now(UTC))
        cascade = (
            CascadeConfig.load(settings.cascade_config) if settings.cascade_config else default_cascade()
        )
        sampling = (
            SamplingConfig.load(settings.sampling_config) if settings.sampling_config else SamplingConfig()
        )
        self.config = EvaluateConfig(
            endpoints=parse_endpoints(settings.judges),
            cascade=cascade,
            sampling=sampling,
            policy=RetryPolicy(
                deadline_s=settings.judge_deadline_s,
                tier_deadlines_s=tuple(sorted(settings.judge_tier_deadlines_s.items())),
            ),
            limits=DecodeLimits(
                max_event_bytes=settings.max_event_bytes, max_age=timedelta(hours=settings.max_event_age_h)
            ),
            batch_size=settings.judge_batch_size,
            breakers=SharedBreakers(
                BreakerPolicy(
                    failure_threshold=settings.judge_breaker_failures, open_s=settings.judge_breaker_open_s
                )
            )
            if settings.judge_breaker_failures
            else None,
            probe=EmbeddingProbe(fraction=settings.embedding_probe_fraction),
        )
        self.stats = RunStats()
        self._seen = SeenIds(settings.dedupe_window)
        self._shared_seen = SharedSeenIds(self._seen)
        self.metrics: PipelineMetrics | None = None  # set by run() with --metrics-port

    def _consumer(self) -> KafkaConsumer:
        s = self._settings
        made = consumer(
            self._kafka,
            group_id=s.group_id,
            group_instance_id=s.group_instance_id or s.transactional_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=min(s.max_batch_records, 5000),
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
        )
        made.subscribe([s.input_topic])
        return made

    def _writer(self) -> BatchWriter:
        s = self._settings
        return BatchWriter(
            self._kafka,
            transactional_id=s.transactional_id if s.transactional else None,
            write_timeout_s=WRITE_TIMEOUT_S,
            max_request_size=MAX_REQUEST_BYTES,
            linger_ms=5,
        )

    def _poll_batch(self, consumer: KafkaConsumer) -> list[Any]:
        s = self._settings
        batch: list[Any] = []
        first_at: float | None = None
        while not self._stop.is_set() and len(batch) < s.max_batch_records:
            wait = (
                s.max_batch_wait_s if first_at is None else s.max_batch_wait_s - (time.monotonic() - first_at)
            )
            if wait <= 0:
                break
            polled = consumer.poll(timeout_ms=int(wait * 1000), max_records=s.max_batch_records - len(batch))
            for messages in polled.values():
                batch.extend(messages)
            if batch and first_at is None:
                first_at = time.monotonic()
            if not polled and first_at is None:
                break  # idle: let the caller check for shutdown and idleness
        return batch

    def _outputs(self, result: BatchResult) -> list[Output]:
        s = self._settings
        out = [Output(s.verdicts_topic, v.SerializeToString(), v.event_id.encode()) for v in result.verdicts]
        for summary in result.summaries:
            key = f"{summary.model}|{summary.model_version}|{summary.route}|{summary.dimension}"
            out.append(Output(s.summaries_topic, summary.SerializeToString(), key.encode()))
        for letter in result.dead:
            key = letter.event_id or f"{letter.source_topic}:{letter.source_partition}:{letter.source_offset}"
            out.append(Output(s.deadletter_topic, letter.SerializeToString(), key.encode()))
        out += [Output(s.audit_topic, v.SerializeToString(), v.event_id.encode()) for v in result.audit]
        return out

    def run_batch(self, consumer: KafkaConsumer, writer: BatchWriter, messages: list[Any]) -> BatchResult:
        """Judge one polled batch and write its outputs with its offsets. On ``KafkaEdgeError`` the
        consumer is rewound to the batch's first records (nothing of it was committed)."""
        s = self._settings
        batch = spans(messages)
        records = [
            KafkaRecord(
                topic=m.topic,
                partition=m.partition,
                offset=m.offset,
                key=m.key,
                value=m.value or b"",
                content_type=_content_type(m.headers),
                timestamp_ms=m.timestamp or 0,
            )
            for m in messages
        ]
        batch_id = batch_identity(s.group_id, batch)
        st = self.stats
        began = time.monotonic()
        if st.first_batch_at is None:
            st.first_batch_at = began
        result = process_batch(
            records, self.config, now=self._now(), batch_id=batch_id, seen=self._shared_seen
        )
        if result.accounted != len(records):
            raise RuntimeError(
                f"batch {batch_id} lost records: {len(records)} in, {result.unsampled} unsampled + "
                f"{len(result.verdicts)} verdicts + {len(result.dead)} dead letters"
            )
        beam_done = time.monotonic()
        try:
            writer.write(consumer, self._outputs(result), offsets_after(batch, batch_id))
        except KafkaEdgeError:
            rewind(consumer, batch)
            raise
        self._seen.add_all(v.event_id for v in result.verdicts)
        self._seen.add_all(result.unsampled_ids)
        st.last_batch_done_at = time.monotonic()
        if self.metrics is not None:
            self.metrics.batches.inc()
            self.metrics.records.inc(len(records))
            self.metrics.duration.observe(st.last_batch_done_at - began)
            self.metrics.last_batch.set_to_current_time()
        st.beam_s += beam_done - began
        st.write_s += st.last_batch_done_at - beam_done
        log.debug(
            "batch %s: %d records, beam %.3fs, write+commit %.3fs",
            batch_id,
            len(records),
            beam_done - began,
            st.last_batch_done_at - beam_done,
        )
        st.batches += 1
        st.events_in += len(records)
        st.verdicts += len(result.verdicts)
        st.dead += len(result.dead)
        st.unsampled += result.unsampled
        st.audits += len(result.audit)
        return result

    def run(self) -> RunStats:
        """Batch after batch until stopped (or idle, with ``exit_when_idle_s``). Raises ``FencedError``
        when a newer instance with the same transactional id took over."""
        s = self._settings
        consumer = self._consumer()
        writer = self._writer()
        backoff = 0.5
        idle_since = time.monotonic()
        last_log = time.monotonic()
        try:
            writer.ready()  # initialises the transactional id: fences a predecessor, aborts its transaction
            log.info(
                "%s with judges %s, cascade %s, transactional id %s",
                PIPELINE_READY.format(topic=s.input_topic, group=s.group_id),
                self.config.endpoints,
                self.config.cascade.version,
                writer.transactional_id,
            )
            while not self._stop.is_set():
                try:
                    messages = self._poll_batch(consumer)
                except KafkaError as exc:
                    if fenced(exc):  # a newer instance joined with this group instance id
                        raise explain(self._kafka, "polling", exc) from exc
                    raise
                now = time.monotonic()
                if messages:
                    try:
                        self.run_batch(consumer, writer, messages)
                        backoff = 0.5
                    except FencedError:
                        raise
                    except KafkaEdgeError as exc:
                        self.stats.retries += 1
                        if self.metrics is not None:
                            self.metrics.retries.inc()
                        log.warning(
                            "%s; nothing of it is visible: reading it again in %.1fs, written with a new "
                            "producer under the same transactional id",
                            exc,
                            backoff,
                        )
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2, 30.0)
                        continue
                    idle_since = now
                elif s.exit_when_idle_s and now - idle_since >= s.exit_when_idle_s:
                    log.info("no new events for %.1fs: exiting", s.exit_when_idle_s)
                    break
                if now - last_log >= 10:
                    last_log = now
                    st = self.stats
                    log.info(
                        "batches=%d in=%d verdicts=%d unsampled=%d dead=%d audits=%d (%.0f events/s)",
                        st.batches,
                        st.events_in,
                        st.verdicts,
                        st.unsampled,
                        st.dead,
                        st.audits,
                        st.events_in / max(now - st.started, 1e-9),
                    )
        finally:
            consumer.close()
            writer.close()
        return self.stats


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
        | "ToRecord"
        >> beam.Map(
            lambda m: KafkaRecord(
                topic=m.topic,
                partition=m.partition,
                offset=m.offset,
                key=m.key,
                value=m.value or b"",
                content_type=_content_type(m.headers),
                timestamp_ms=m.timestamp,
            )
        )
        | "Minute" >> beam.WindowInto(window.FixedWindows(60))
    )
    out = records | "Evaluate" >> Evaluate(runner.config, now=None, batch_id="streaming")
    for tag, topic in (
        ("verdicts", settings.verdicts_topic),
        ("summaries", settings.summaries_topic),
        ("dead", settings.deadletter_topic),
        ("audit", settings.audit_topic),
    ):
        _ = (
            getattr(out, tag)
            | f"Key_{tag}" >> beam.Map(lambda m: (b"", m.SerializeToString()))
            | f"Write_{tag}" >> WriteToKafka(producer_config=producer_config, topic=topic)
        )


def _arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evalstream pipeline", description="Run the evalstream pipeline.")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (env EVALSTREAM_KAFKA_BOOTSTRAP)")
    p.add_argument("--judges", help="judge targets per tier, e.g. 0=127.0.0.1:50051,1=127.0.0.1:50052")
    p.add_argument("--input-topic")
    p.add_argument("--verdicts-topic")
    p.add_argument("--summaries-topic")
    p.add_argument("--deadletter-topic")
    p.add_argument("--audit-topic")
    p.add_argument("--group-id")
    p.add_argument("--transactional-id")
    p.add_argument("--group-instance-id", help="static group member id (default: the transactional id)")
    p.add_argument("--cascade-config", type=Path)
    p.add_argument("--sampling-config", type=Path)
    p.add_argument("--max-batch-records", type=int)
    p.add_argument("--max-batch-wait-s", type=float)
    p.add_argument("--judge-deadline-s", type=float, help="one overall deadline per judge call (default 10)")
    p.add_argument(
        "--judge-tier-deadline",
        dest="judge_tier_deadlines_s",
        type=_tier_seconds,
        action="append",
        metavar="TIER=SECONDS",
        help="a tier's own deadline, repeatable (default 2=120: the LLM tier); replaces the default",
    )
    p.add_argument("--judge-breaker-failures", type=int, help="failed attempts that open a tier's circuit")
    p.add_argument("--judge-breaker-open-s", type=float, help="seconds a tier's circuit stays open")
    p.add_argument("--max-event-bytes", type=int)
    p.add_argument(
        "--embedding-probe-fraction",
        type=float,
        help="share of sampled events also sent to tier 1 for embedding statistics (0: off; default 0.1)",
    )
    p.add_argument("--exit-when-idle-s", type=float, help="exit after this long with no new events")
    p.add_argument(
        "--metrics-port", type=int, help="serve the process's health on /metrics (0: any free port)"
    )
    p.add_argument("--metrics-host", help="address /metrics binds (default 127.0.0.1)")
    p.add_argument("--no-transactions", action="store_true", help="at-least-once instead of transactions")
    p.add_argument("--runner", default="local", help="local (micro-batches) or a Beam streaming runner")
    return p


def _tier_seconds(text: str) -> tuple[int, float]:
    tier, sep, seconds = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return int(tier), float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TIER=SECONDS, e.g. 2=120; got {text!r}") from None


def run(argv: Sequence[str] | None = None) -> RunStats | None:
    """Parse flags (over env, over defaults) and run until SIGTERM/SIGINT or idle exit."""
    args, beam_args = _arg_parser().parse_known_args(argv)
    explicit = {
        k: v
        for k, v in vars(args).items()
        if v is not None and k not in ("bootstrap", "no_transactions", "runner")
    }
    if args.no_transactions:
        explicit["transactional"] = False
    if args.judge_tier_deadlines_s:
        explicit["judge_tier_deadlines_s"] = dict(args.judge_tier_deadlines_s)
    settings = PipelineSettings(**explicit)
    kafka = KafkaSettings(**({"bootstrap": args.bootstrap} if args.bootstrap else {}))
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
