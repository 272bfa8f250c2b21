"""The one transactional consume-transform-produce step, shared by the pipeline runner and
``evalstream redrive``: a batch's outputs and its consumed offsets in one Kafka transaction.

``BatchWriter.write(consumer, outputs, offsets)`` begins a transaction, sends every output, waits
until the broker acknowledged each (``evalstream.kafka.writes``: kafka-python could otherwise commit a
transaction some of whose records were refused), adds the offsets with the consumer's group metadata
(a consumer no longer in the group generation cannot commit them, KIP-447) and commits. On any failure
it aborts and raises ``KafkaEdgeError``: nothing of the batch is visible to read_committed readers and
the group's offsets stay where they were, so the caller rewinds the consumer (``rewind``) and does the
batch again. The writer then starts a new producer with the **same** transactional id: initialising it
aborts whatever the old one left open and fences it.

The transactional id is stable per instance (e.g. ``evalstream-pipeline-0``): a restarted instance
fences its predecessor and aborts the transaction it left open, and a predecessor that wakes up (a
zombie) gets ``FencedError`` on its next commit and must stop. Without a transactional id the writer
is at-least-once: outputs with ``acks=all``, then the offsets committed once all are acknowledged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from evalstream.kafka.clients import explain, producer, transactional_producer
from evalstream.kafka.writes import await_acknowledged
from evalstream.runtime.settings import KafkaSettings
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

__all__ = ["BatchWriter", "Output", "offsets_after", "rewind", "spans"]


@dataclass(frozen=True, slots=True)
class Output:
    """One record to write in a batch's transaction."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


def spans(messages: Iterable[Any]) -> dict[TopicPartition, tuple[int, int]]:
    """The lowest and highest offset of each partition among polled ``messages``."""
    found: dict[TopicPartition, tuple[int, int]] = {}
    for m in messages:
        tp = TopicPartition(m.topic, m.partition)
        lo, hi = found.get(tp, (m.offset, m.offset))
        found[tp] = (min(lo, m.offset), max(hi, m.offset))
    return found


def offsets_after(
    batch: dict[TopicPartition, tuple[int, int]], metadata: str = ""
) -> dict[TopicPartition, OffsetAndMetadata]:
    """The offsets to commit once ``batch`` is done: one past its last record, per partition."""
    return {tp: OffsetAndMetadata(hi + 1, metadata, -1) for tp, (_, hi) in batch.items()}


def rewind(consumer: KafkaConsumer, batch: dict[TopicPartition, tuple[int, int]]) -> None:
    """Seek back to the batch's first records, so a failed batch is read again."""
    for tp, (lo, _) in batch.items():
        with contextlib.suppress(KafkaError):  # a partition no longer assigned: its next owner reads it
            consumer.seek(tp, lo)


class BatchWriter:
    """Writes batches' outputs and offsets, in one transaction each when ``transactional_id`` is set."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        transactional_id: str | None,
        write_timeout_s: float = 30.0,
        **producer_options: Any,
    ) -> None:
        self._kafka = kafka
        self.transactional_id = transactional_id
        self._timeout_s = write_timeout_s
        self._options = producer_options
        self._producer: KafkaProducer | None = None

    def ready(self) -> KafkaProducer:
        """The producer, made (and its transactional id initialised) when there is none."""
        if self._producer is None:
            self._producer = (
                transactional_producer(self._kafka, self.transactional_id, **self._options)
                if self.transactional_id
                else producer(self._kafka, **self._options)
            )
        return self._producer

    def write(
        self,
        consumer: KafkaConsumer,
        outputs: Sequence[Output],
        offsets: dict[TopicPartition, OffsetAndMetadata],
    ) -> None:
        """Write ``outputs`` and commit ``offsets`` for the consumer's group, all or nothing
        (transactional) or outputs first (at-least-once). Raises ``KafkaEdgeError`` (``FencedError``
        when a newer instance took over); the producer is then replaced before the next write."""
        p = self.ready()
        try:
            if self.transactional_id:
                p.begin_transaction()
                try:
                    self._send(p, outputs)
                    p.send_offsets_to_transaction(offsets, consumer.group_metadata())
                    p.commit_transaction()
                except KafkaError:
                    with contextlib.suppress(KafkaError):
                        p.abort_transaction()
                    raise
            else:
                self._send(p, outputs)
                consumer.commit(offsets)
        except KafkaError as exc:
            self.discard()
            raise explain(self._kafka, f"writing a batch of {len(outputs)} records", exc) from exc

    def _send(self, p: KafkaProducer, outputs: Sequence[Output]) -> None:
        sent = [p.send(o.topic, key=o.key, value=o.value, headers=list(o.headers) or None) for o in outputs]
        await_acknowledged(p, sent, self._timeout_s)

    def discard(self) -> None:
        """Close the producer; the next write makes a new one with the same transactional id."""
        p, self._producer = self._producer, None
        if p is not None:
            with contextlib.suppress(KafkaError):
                p.close(timeout=5)

    close = discard
