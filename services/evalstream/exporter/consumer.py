"""The exporter's Kafka side: a consumer group feeding ``ExporterCore``, saved with its offsets.

Exactly once across restarts: totals and offsets are saved together (see ``state.py``). Each flush
is save -> commit offsets to the group -> publish to scrapes, in that order, so a scrape never shows
a value a restart could take back, and a restart that lost its state file resumes at offsets no
published value has gone past. It reads with ``isolation_level=read_committed``: the pipeline
writes in transactions, so each record appears once and aborted ones never.

Run one exporter per consumer group; shard by giving each exporter its own topics and group. The
state file is the offset store; the group's committed offsets are a copy. The exporter joins as a
static member (``instance_id``), so a restart gets its partitions back at once (on Kafka, a second
exporter with the same group and instance id is fenced rather than sharing them).

Exceptions: ``ExporterError`` when Kafka cannot be reached; ``StateError`` for an unusable state file.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Gauge, Histogram

from evalstream.kafka import clients
from evalstream.kafka.clients import KafkaEdgeError
from evalstream.runtime.config_watch import CascadeWatch
from evalstream.runtime.settings import KafkaSettings
from evalstream.wire.cascade_config import CascadeConfig

from .core import ExporterCore, Stream
from .guarantee import GuaranteeTarget
from .settings import ExporterSettings
from .state import Partition, ResumePlan, SavedState, StateFile, resume_plan

__all__ = ["Exporter", "ExporterError", "ShellMetrics"]

log = logging.getLogger(__name__)

_POLL_MS: Final = 200


class ExporterError(RuntimeError):
    """Kafka could not be reached or refused the consumer."""


class ShellMetrics:
    """Live metrics of the process itself (not persisted: they describe now, not history)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.consumer_lag = Gauge(
            "evalstream_exporter_consumer_lag_records",
            "Records in the exporter's topics not yet consumed (end offset - position), by stream.",
            ["stream"],
            registry=registry,
        )
        self.pipeline_lag = Gauge(
            "evalstream_pipeline_input_lag_records",
            "Events in the pipeline's input topic its consumer group has not committed yet.",
            registry=registry,
        )
        self.last_publish = Gauge(
            "evalstream_exporter_last_publish_timestamp_seconds",
            "Wall-clock time the exporter last saved, committed and published its totals.",
            registry=registry,
        )
        self.save_seconds = Histogram(
            "evalstream_exporter_save_duration_seconds",
            "Time to save the state file (totals and offsets).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        self.state_bytes = Gauge(
            "evalstream_exporter_state_bytes", "Size of the last saved state file.", registry=registry
        )
        self.series = Gauge(
            "evalstream_exporter_series",
            "Evaluation series published (the label budget's cost).",
            registry=registry,
        )


class _Seek(ConsumerRebalanceListener):  # type: ignore[misc]  # kafka-python is untyped
    """On assignment, continue each partition where our own totals say (local seeks, no I/O)."""

    def __init__(self, exporter: Exporter) -> None:
        self._exporter = exporter

    def on_partitions_revoked(self, revoked: Any) -> None:
        log.info("partitions revoked: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self._exporter.seek_assigned(assigned)


class Exporter:
    """Consume -> apply -> (every ``flush_interval_s``) save, commit, publish."""

    def __init__(
        self,
        settings: ExporterSettings,
        kafka: KafkaSettings,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._kafka = kafka
        self._registry = registry
        self._clock = clock
        self._monotonic = monotonic
        self._streams = {settings.verdicts_topic: Stream.VERDICTS, settings.summaries_topic: Stream.SUMMARIES}
        if settings.labels_topic:
            self._streams[settings.labels_topic] = Stream.LABELS
        self._state_file = StateFile(path=settings.state_file)
        self._positions: dict[Partition, int] = {}
        self._consumer: KafkaConsumer | None = None
        self._admin: KafkaAdminClient | None = None
        self.core: ExporterCore | None = None
        self.watch: CascadeWatch | None = None
        self.plan: ResumePlan | None = None
        self.metrics = ShellMetrics(registry)
        self.applied = 0

    # --- start ----------------------------------------------------------------------------------

    def open(self) -> ResumePlan:
        """Connect, decide what to restore (``resume_plan``), build the core and subscribe."""
        s = self._settings
        saved = self._state_file.load()  # StateError before touching Kafka
        try:
            consumer = clients.consumer(
                self._kafka,
                group_id=s.group_id,
                # Static membership: a restarted exporter takes its partitions back at once instead
                # of waiting for the group to expire the member it was before it died.
                group_instance_id=s.instance_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level="read_committed",
                max_poll_records=s.max_poll_records,
            )
            committed: dict[Partition, int | None] = {}
            for topic in self._streams:
                for partition in sorted(consumer.partitions_for_topic(topic) or ()):
                    committed[(topic, partition)] = consumer.committed(TopicPartition(topic, partition))
        except KafkaEdgeError as exc:
            raise ExporterError(f"{exc} (consumer group {s.group_id!r})") from exc
        except KafkaError as exc:
            raise ExporterError(
                str(clients.explain(self._kafka, f"group {s.group_id!r} offsets", exc))
            ) from exc
        plan = resume_plan(saved, committed)
        if saved is not None and plan.core is None:
            log.error("%s", plan.reason)
        else:
            log.info("%s", plan.reason)
        self.core = ExporterCore(
            self._registry,
            s.budget(),
            state=plan.core,
            drift=s.drift_config(),
            agreement=s.agreement_config(),
            guarantee=s.guarantee(),
        )
        self.core.publish()  # restored totals were saved and committed before: safe to serve
        if s.cascade_config is not None:  # live reload of the guarantee's promises
            loaded = CascadeConfig.load(s.cascade_config)
            self.watch = CascadeWatch(s.cascade_config, loaded, interval_s=s.cascade_reload_s)
        self.metrics.series.set(self.core.collector.published.series_count())
        self._positions = dict(plan.offsets)
        self._consumer = consumer
        consumer.subscribe(list(self._streams), listener=_Seek(self))
        self.plan = plan
        return plan

    def seek_assigned(self, assigned: Any) -> None:
        consumer = self._consumer
        assert consumer is not None
        for tp in assigned:
            offset = self._positions.get((tp.topic, tp.partition))
            if offset is not None:
                consumer.seek(tp, offset)
        log.info(
            "assigned %s",
            ", ".join(
                f"{tp.topic}[{tp.partition}]@{self._positions.get((tp.topic, tp.partition), 'committed')}"
                for tp in sorted(assigned)
            ),
        )

    # --- the loop -------------------------------------------------------------------------------

    def poll_once(self) -> int:
        """Poll and apply one batch; returns the number of records applied."""
        consumer, core = self._consumer, self.core
        assert consumer is not None and core is not None
        applied = 0
        for tp, records in consumer.poll(timeout_ms=_POLL_MS).items():
            stream = self._streams[tp.topic]
            for record in records:
                core.apply_bytes(stream, record.value, record.timestamp or 0)
            self._positions[(tp.topic, tp.partition)] = records[-1].offset + 1
            applied += len(records)
        self.applied += applied
        return applied

    def flush(self) -> bool:
        """Save totals and offsets, commit the offsets, then publish; False if the commit failed."""
        consumer, core = self._consumer, self.core
        assert consumer is not None and core is not None
        started = self._monotonic()
        size = self._state_file.save(
            SavedState(core=core.state(), offsets=dict(self._positions), group_id=self._settings.group_id)
        )
        self.metrics.save_seconds.observe(self._monotonic() - started)
        self.metrics.state_bytes.set(size)
        owned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        offsets = {
            TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
            for (topic, partition), offset in self._positions.items()
            if (topic, partition) in owned
        }
        try:
            if offsets:
                consumer.commit(offsets)
        except KafkaError as exc:
            # Not published: a restart without the state file resumes at the committed offsets, and
            # no scrape may have seen records past them. The next flush tries again.
            log.warning("commit failed (%s); totals saved, will publish after the next commit", exc)
            return False
        core.publish()
        self.metrics.last_publish.set(self._clock())
        self.metrics.series.set(core.collector.published.series_count())
        return True

    def probe_lag(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            assigned = list(consumer.assignment())
            if assigned:
                ends = consumer.end_offsets(assigned)
                lag: dict[Stream, int] = dict.fromkeys(Stream, 0)
                for tp in assigned:
                    lag[self._streams[tp.topic]] += max(ends[tp] - consumer.position(tp), 0)
                for stream, value in lag.items():
                    self.metrics.consumer_lag.labels(stream=stream.value).set(value)
            if self._settings.pipeline_group:
                self.metrics.pipeline_lag.set(self._pipeline_lag(consumer))
        except (KafkaError, KafkaEdgeError) as exc:
            log.warning("lag probe failed: %s", exc)

    def _pipeline_lag(self, consumer: KafkaConsumer) -> int:
        s = self._settings
        partitions = [
            TopicPartition(s.events_topic, p) for p in consumer.partitions_for_topic(s.events_topic) or ()
        ]
        if not partitions:
            return 0
        if self._admin is None:
            self._admin = clients.admin(self._kafka)
        committed = self._admin.list_group_offsets({s.pipeline_group: partitions}).get(s.pipeline_group, {})
        ends = consumer.end_offsets(partitions)
        starts = consumer.beginning_offsets(partitions)
        total = 0
        for tp in partitions:
            done = committed.get(tp)
            position = done.offset if done is not None and done.offset >= 0 else starts[tp]
            total += max(ends[tp] - position, 0)
        return total

    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set; then a last flush. Call ``open`` first and ``close`` after."""
        s = self._settings
        dirty = False
        last_flush = next_probe = self._monotonic()
        while not stop.is_set():
            dirty |= self._reload()
            dirty |= self.poll_once() > 0
            now = self._monotonic()
            if dirty and now - last_flush >= s.flush_interval_s:
                dirty = not self.flush()
                last_flush = now
            if now >= next_probe:
                self.probe_lag()
                next_probe = now + s.lag_interval_s
        if dirty and not self.flush():
            log.error("last commit failed; the state file holds the totals and offsets")

    def _reload(self) -> bool:
        """The cascade config file changed: the guarantee monitor takes the new promises (True)."""
        new = self.watch.poll() if self.watch is not None else None
        if new is None or self.core is None:
            return False
        self.core.agreement.set_guarantee(GuaranteeTarget.from_config(new))
        log.info("cascade config %s loaded for the guarantee monitor", new.version)
        return True

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None
