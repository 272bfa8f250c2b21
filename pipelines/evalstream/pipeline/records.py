"""Records that cross Beam boundaries inside the pipeline, and the dead-letter vocabulary.

Wire messages (``evalstream.v1``) travel as protobuf; internal records are frozen dataclasses. The
pipeline's steps pass **batches** (lists of them) from one to the next: their PCollections are
declared as ``Batch`` (``as_batches``), whose coder pickles a list whole and estimates its size
without encoding it.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from apache_beam.coders import typecoders
from apache_beam.coders.coders import Coder
from google.protobuf.timestamp_pb2 import Timestamp

from evalstream.v1 import events_pb2, verdict_pb2
from evalstream.wire import topics

__all__ = [
    "Batch",
    "BatchCoder",
    "DeadReason",
    "Decoded",
    "KafkaRecord",
    "SampledEvent",
    "Stage",
    "as_batches",
    "dead_letter",
    "timestamp",
]

#: Dead letters keep at most this much of the raw input; the rest is counted in raw_size.
MAX_DEAD_LETTER_RAW = 64 * 1024


class Stage(StrEnum):
    DECODE = "decode"
    VALIDATE = "validate"
    DEDUPE = "dedupe"
    JUDGE = "judge"


class DeadReason(StrEnum):
    """Machine-readable reasons, used as the ``reason`` metric label (a closed set)."""

    OVERSIZED = "oversized"
    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
    INVALID_JSON = "invalid_json"
    INVALID_PROTOBUF = "invalid_protobuf"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    INVALID_VALUE = "invalid_value"
    STALE_EVENT_TIME = "stale_event_time"
    FUTURE_EVENT_TIME = "future_event_time"
    DUPLICATE_EVENT_ID = "duplicate_event_id"
    JUDGE_UNAVAILABLE = "judge_unavailable"
    JUDGE_REJECTED = "judge_rejected"
    JUDGE_ITEM_ERROR = "judge_item_error"


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaRecord:
    """One consumed record, as the pipeline sees it: bytes plus where they came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    content_type: str  # from the content-type header; JSON when absent
    timestamp_ms: int = 0

    @classmethod
    def from_message(cls, message: Any) -> KafkaRecord:
        """From a consumed message: kafka-python's ``ConsumerRecord`` or Beam's ``ReadFromKafka``
        record with metadata (both have topic, partition, offset, key, value, headers, timestamp)."""
        content_type = topics.CONTENT_TYPE_JSON
        for name, value in message.headers or ():
            if name.lower() == topics.CONTENT_TYPE_HEADER:
                content_type = value.decode("utf-8", "replace").split(";")[0].strip().lower()
                break
        return cls(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            value=message.value or b"",
            content_type=content_type,
            timestamp_ms=message.timestamp or 0,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Decoded:
    """A valid event with the record it came from (for dead letters and ordering downstream)."""

    record: KafkaRecord
    event: events_pb2.LLMEvent


@dataclass(frozen=True, slots=True, kw_only=True)
class SampledEvent:
    """An event chosen for judging, with how it was chosen."""

    event: events_pb2.LLMEvent
    sample_rate: float
    forced: bool


def timestamp(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when.astimezone(UTC))
    return ts


def dead_letter(
    *,
    raw: bytes,
    stage: Stage,
    reason: DeadReason,
    message: str,
    source: KafkaRecord | None,
    failed_at: datetime,
    event_id: str = "",
    model: str = "",
) -> verdict_pb2.DeadLetter:
    """Build a dead letter; the raw bytes are kept up to ``MAX_DEAD_LETTER_RAW``."""
    return verdict_pb2.DeadLetter(
        raw=raw[:MAX_DEAD_LETTER_RAW],
        raw_truncated=len(raw) > MAX_DEAD_LETTER_RAW,
        raw_size=len(raw),
        stage=stage.value,
        error_type=reason.value,
        message=message,
        source_topic=source.topic if source else "",
        source_partition=source.partition if source else -1,
        source_offset=source.offset if source else -1,
        event_id=event_id,
        model=model,
        failed_at=timestamp(failed_at),
    )


class Batch(list[Any]):
    """The element type of the pipeline's PCollections of batches (the values are plain lists)."""


class BatchCoder(Coder):
    """Pickles a batch whole. Beam estimates the size of the first elements of every PCollection for
    its metrics by encoding them, and with batches as elements that was every element: ~15% of a
    batch's time. The estimate here is the number of records times 1 KiB, with no encoding."""

    def encode(self, value: list[Any]) -> bytes:
        return pickle.dumps(list(value), protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> list[Any]:
        decoded: list[Any] = pickle.loads(encoded)
        return decoded

    def is_deterministic(self) -> bool:
        return False

    def estimate_size(self, value: list[Any]) -> int:
        return 1024 * len(value)

    def to_type_hint(self) -> type:
        return Batch


typecoders.registry.register_coder(Batch, BatchCoder)


def as_batches(outputs: Any, *tags: str) -> Any:
    """Declare the named outputs of a multi-output step (``DoOutputsTuple``), or a PCollection (no
    tags), as batches, so Beam uses ``BatchCoder`` for them."""
    for pcoll in [outputs[tag] for tag in tags] if tags else [outputs]:
        pcoll.element_type = Batch
    return outputs
