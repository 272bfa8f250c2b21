"""The local runner: continuous micro-batches, each judged by one bounded Beam pipeline and written
with its consumed offsets in one Kafka transaction.

Poll up to ``max_batch_records`` records, closing the batch ``max_batch_wait_s`` after its oldest
record was produced; run the ``Evaluate`` transform over them as a bounded Beam pipeline on the
in-process FnApiRunner (``bounded.BatchPipeline``: built once, run per batch, built again when a
cascade reload changes the config); then write verdicts, summaries, dead letters and
audits **and** commit the consumed offsets in one Kafka transaction. A crash before the commit aborts
the transaction: nothing half-written is visible to ``read_committed`` consumers, and the batch is
read again from the last committed offsets.
The transaction step is ``evalstream.kafka.transactions.BatchWriter``, shared with ``evalstream
redrive``: every output acknowledged before the commit, the offsets sent with the consumer's group
metadata, a stable transactional id per runner instance (``--transactional-id``, default
``evalstream-pipeline-0``). A restarted runner fences its predecessor and Kafka aborts the
transaction it left open; a predecessor that wakes up (a zombie) is refused (``FencedError``) and
exits. A failed batch is aborted, read again from its first offsets and written with a new producer
under the same id.

With transactions, a batch's transaction is written on a writer thread while the next batch is polled
and judged, and that batch is written only after it. The window of seen ids (``dedupe.SeenIds``)
holds a batch's ids as claims until its transaction is committed, so the batch judged meanwhile sees
them; when the write fails, the claims of both batches are dropped and both are read again.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from evalstream.kafka.clients import FencedError, KafkaEdgeError, consumer, explain, fenced
from evalstream.kafka.transactions import BatchWriter, Output, offsets_after, rewind, spans
from evalstream.pipeline.bounded import BatchPipeline, BatchResult
from evalstream.pipeline.calibration_sample import CalibrationSample
from evalstream.pipeline.cascade import EmbeddingProbe
from evalstream.pipeline.decode import DecodeLimits
from evalstream.pipeline.dedupe import SeenIds, SharedSeenIds
from evalstream.pipeline.evaluate import EvaluateConfig
from evalstream.pipeline.judge_cascade import SharedBreakers
from evalstream.pipeline.judge_client import RetryPolicy
from evalstream.pipeline.metrics import PipelineMetrics
from evalstream.pipeline.records import KafkaRecord
from evalstream.pipeline.sampling import SamplingConfig
from evalstream.pipeline.settings import PipelineSettings, parse_endpoints
from evalstream.runtime.circuit import BreakerPolicy
from evalstream.runtime.config_watch import CascadeWatch
from evalstream.runtime.ready import PIPELINE_READY
from evalstream.runtime.settings import KafkaSettings
from evalstream.wire.cascade_config import CascadeConfig, default_cascade

__all__ = ["MicroBatchRunner", "RunStats", "batch_identity"]

log = logging.getLogger(__name__)

#: Producer request limit: dead letters keep at most 64 KiB of raw input, so this is generous.
MAX_REQUEST_BYTES = 16 * 1024 * 1024
#: How long a batch's records may take to be acknowledged before the batch is retried.
WRITE_TIMEOUT_S = 30.0


def batch_identity(group: str, spans: dict[TopicPartition, tuple[int, int]]) -> str:
    """A stable id for the offset ranges of a batch: the same ranges always give the same id."""
    text = (
        group + "|" + ",".join(f"{tp.topic}:{tp.partition}:{a}-{b}" for tp, (a, b) in sorted(spans.items()))
    )
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


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
    reloads: int = 0  # cascade configs swapped in between batches
    beam_s: float = 0.0  # time spent inside the Beam pipeline
    write_s: float = 0.0  # time spent producing outputs and committing

    @property
    def busy_rate(self) -> float:
        """Events per second between the first batch's start and the last batch's commit."""
        if self.first_batch_at is None or self.last_batch_done_at is None:
            return 0.0
        return self.events_in / max(self.last_batch_done_at - self.first_batch_at, 1e-9)


@dataclass(frozen=True, slots=True)
class _Batch:
    """A judged batch, before its transaction is committed."""

    batch_id: str
    spans: dict[TopicPartition, tuple[int, int]]
    records: int
    result: BatchResult
    began: float  # monotonic time its processing began
    processed_at: float  # ... and ended


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
            policy=RetryPolicy(deadline_s=settings.judge_deadline_s),
            tier_deadlines_s=tuple(sorted(settings.judge_tier_deadlines_s.items())),
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
            calibration_sample=CalibrationSample(fraction=settings.calibration_sample_fraction),
        )
        #: Live reload of the cascade config between batches (``config_watch.py``); None: no file.
        self.watch = (
            CascadeWatch(
                settings.cascade_config,
                cascade,
                endpoints=self.config.endpoints,
                interval_s=settings.cascade_reload_s,
            )
            if settings.cascade_config
            else None
        )
        self.stats = RunStats()
        self._seen = SeenIds(settings.dedupe_window)
        self._shared_seen = SharedSeenIds(self._seen)
        self.metrics: PipelineMetrics | None = None  # set by run() with --metrics-port
        #: The bounded pipeline, built once for ``self.config`` (again after a cascade reload).
        self._pipeline: BatchPipeline | None = None

    def _batch_pipeline(self) -> BatchPipeline:
        if self._pipeline is None or self._pipeline.config is not self.config:
            if self._pipeline is not None:
                self._pipeline.close()
            self._pipeline = BatchPipeline(self.config, seen=self._shared_seen)
        return self._pipeline

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
        """Up to ``max_batch_records`` records. The batch closes ``max_batch_wait_s`` after its oldest
        record was produced (its Kafka timestamp): records that waited while the previous batch was
        judged close it with the first poll."""
        s = self._settings
        batch: list[Any] = []
        close_at: float | None = None
        while not self._stop.is_set() and len(batch) < s.max_batch_records:
            wait = s.max_batch_wait_s if close_at is None else close_at - time.monotonic()
            if wait <= 0:
                break  # the batch is due
            polled = consumer.poll(timeout_ms=int(wait * 1000), max_records=s.max_batch_records - len(batch))
            for messages in polled.values():
                batch.extend(messages)
            if not polled and close_at is None:
                break  # idle: let the caller check for shutdown and idleness
            if close_at is None and batch:
                stamps = [m.timestamp for m in batch if m.timestamp and m.timestamp > 0]  # -1: none
                waited = time.time() - min(stamps) / 1000 if stamps else 0.0
                waited = min(max(waited, 0.0), s.max_batch_wait_s)  # a producer clock ahead: no shortcut
                close_at = time.monotonic() + s.max_batch_wait_s - waited
        return batch

    def _outputs(self, result: BatchResult) -> list[Output]:
        s = self._settings
        return [
            Output(topic, value, key)
            for topic, keyed in (
                (s.verdicts_topic, result.verdicts),
                (s.summaries_topic, result.summaries),
                (s.deadletter_topic, result.dead),
                (s.audit_topic, result.audit),
            )
            for key, value in keyed
        ]

    def _process(self, messages: list[Any]) -> _Batch:
        """Judge one polled batch (its ids stay claimed in the window until ``_done`` or
        ``_release``)."""
        batch = spans(messages)
        records = [KafkaRecord.from_message(m) for m in messages]
        batch_id = batch_identity(self._settings.group_id, batch)
        began = time.monotonic()
        if self.stats.first_batch_at is None:
            self.stats.first_batch_at = began
        try:
            result = self._batch_pipeline().run(records, now=self._now(), batch_id=batch_id)
            if result.accounted != len(records):
                raise RuntimeError(
                    f"batch {batch_id} lost records: {len(records)} in, {result.unsampled} unsampled + "
                    f"{len(result.verdicts)} verdicts + {len(result.dead)} dead letters"
                )
        except BaseException:
            self._seen.release(batch_id)
            raise
        return _Batch(batch_id, batch, len(records), result, began, time.monotonic())

    def _write(self, consumer: KafkaConsumer, writer: BatchWriter, batch: _Batch) -> None:
        """Write the batch's outputs and offsets in one transaction, then count it (on the writer
        thread with transactions, so /metrics shows a batch as soon as it is committed)."""
        began = time.monotonic()
        writer.write(consumer, self._outputs(batch.result), offsets_after(batch.spans, batch.batch_id))
        st = self.stats
        st.last_batch_done_at = time.monotonic()
        st.write_s += st.last_batch_done_at - began
        if self.metrics is not None:
            self.metrics.batches.inc()
            self.metrics.records.inc(batch.records)
            self.metrics.duration.observe(st.last_batch_done_at - batch.began)
            self.metrics.last_batch.set_to_current_time()
        result = batch.result
        st.beam_s += batch.processed_at - batch.began
        log.debug(
            "batch %s: %d records, beam %.3fs, committed %.3fs later",
            batch.batch_id,
            batch.records,
            batch.processed_at - batch.began,
            st.last_batch_done_at - batch.processed_at,
        )
        st.batches += 1
        st.events_in += batch.records
        st.verdicts += len(result.verdicts)
        st.dead += len(result.dead)
        st.unsampled += result.unsampled
        st.audits += len(result.audit)

    def _done(self, batch: _Batch) -> None:
        """The batch is committed: the ids it judged or counted join the window (on the main thread,
        which reads the window while judging)."""
        result = batch.result
        self._seen.commit(batch.batch_id, [*result.verdict_ids, *result.unsampled_ids])

    def _release(self, consumer: KafkaConsumer, batches: list[_Batch]) -> None:
        """Nothing of these batches (oldest first) was committed: forget their claims and rewind the
        consumer to the first of their records."""
        for batch in reversed(batches):
            self._seen.release(batch.batch_id)
            rewind(consumer, batch.spans)

    def _reload(self) -> None:
        """Between batches: swap in a new cascade config if its file has one (``config_watch.py``)."""
        if self.watch is None:
            return
        rejected = self.watch.rejected
        new = self.watch.poll()
        if self.metrics is not None and self.watch.rejected > rejected:
            self.metrics.cascade_reloads.labels(outcome="rejected").inc(self.watch.rejected - rejected)
        if new is None:
            return
        old = self.config.cascade.version
        self.config = replace(self.config, cascade=new)
        self.stats.reloads += 1
        if self.metrics is not None:
            self.metrics.cascade_reloads.labels(outcome="loaded").inc()
        log.info("cascade config reloaded: version %s replaces %s from the next batch on", new.version, old)

    def run(self) -> RunStats:
        """Batch after batch until stopped (or idle, with ``exit_when_idle_s``). Raises ``FencedError``
        when a newer instance with the same transactional id took over.

        With transactions, a batch's transaction runs on a writer thread while the next batch is
        polled and judged (its outputs are written only after the batch before it is committed). When
        a write fails, both are read again."""
        s = self._settings
        consumer = self._consumer()
        writer = self._writer()
        writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-writer")
        writing: tuple[_Batch, Future[None]] | None = None
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
                self._reload()
                try:
                    messages = self._poll_batch(consumer)
                except KafkaError as exc:
                    if fenced(exc):  # a newer instance joined with this group instance id
                        raise explain(self._kafka, "polling", exc) from exc
                    raise
                now = time.monotonic()
                processed = self._process(messages) if messages else None
                unwritten = [b for b in (writing[0] if writing else None, processed) if b is not None]
                try:
                    if writing is not None:
                        done, future = writing
                        writing = None
                        future.result()
                        self._done(done)
                        unwritten.remove(done)
                    if processed is not None:
                        if s.transactional:  # the consumer is only read (group metadata) meanwhile
                            writing = (processed, writes.submit(self._write, consumer, writer, processed))
                        else:  # the offsets are committed through the consumer: not while polling
                            self._write(consumer, writer, processed)
                            self._done(processed)
                        idle_since = now
                        backoff = 0.5
                except FencedError:
                    raise
                except KafkaEdgeError as exc:
                    self._release(consumer, unwritten)
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
                idle = not messages and writing is None
                if idle and s.exit_when_idle_s and now - idle_since >= s.exit_when_idle_s:
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
            if writing is not None:  # stopped: let the last transaction finish
                done, future = writing
                writing = None
                future.result()
                self._done(done)
        finally:
            if writing is not None:  # an error: the transaction in flight ends (committed or not)
                wait([writing[1]])
            writes.shutdown(wait=True)
            consumer.close()
            writer.close()
            if self._pipeline is not None:
                self._pipeline.close()
                self._pipeline = None
        return self.stats
