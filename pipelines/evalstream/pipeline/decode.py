"""Decode: Kafka record bytes to a validated ``LLMEvent``, or a dead letter with the reason.

Both encodings are validated by the same pydantic model (``evalstream.wire.contract.LLMEventIn``), so a
protobuf event with an empty id is rejected exactly like a JSON one. Rules, in order:

1. size above ``max_event_bytes`` -> ``oversized`` (checked before parsing)
2. content type neither JSON nor protobuf -> ``unsupported_content_type``
3. not UTF-8 JSON / not a protobuf message -> ``invalid_json`` / ``invalid_protobuf``
4. schema: ``missing_field``, ``unknown_field`` (JSON rejects unknown fields), ``invalid_value``
5. event time older than ``max_age`` -> ``stale_event_time``; later than ``max_skew`` ahead of the
   batch clock -> ``future_event_time``

Unknown models are not rejected: they are judged at the default sample rate and counted under
their own name (the exporter folds names beyond its label budget into ``other``).

Like every transform of ``Evaluate``, ``Decode`` works on batches: each element is a list (a
micro-batch, or a streaming window's records), so Beam's per-element cost is paid once per batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import apache_beam as beam
from google.protobuf.message import DecodeError
from opentelemetry import trace
from pydantic import ValidationError

from evalstream.pipeline.batch_clock import Now, now_of
from evalstream.pipeline.records import DeadReason, Decoded, KafkaRecord, Stage, as_batches, dead_letter
from evalstream.runtime.tracing import tracing_enabled
from evalstream.v1 import events_pb2, verdict_pb2
from evalstream.wire import topics
from evalstream.wire.contract import LLMEventIn, WireValueError, from_proto, to_proto

__all__ = ["DEAD", "Decode", "DecodeLimits", "decode_batch", "decode_record"]

DEAD = "dead"

_tracer = trace.get_tracer("evalstream.pipeline.decode")


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodeLimits:
    max_event_bytes: int = 1024 * 1024
    max_age: timedelta = timedelta(days=7)
    max_skew: timedelta = timedelta(minutes=5)


def _schema_reason(exc: ValidationError) -> tuple[DeadReason, str]:
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "(event)"
    kinds = {e["type"] for e in errors}
    if "missing" in kinds:
        reason = DeadReason.MISSING_FIELD
    elif "extra_forbidden" in kinds:
        reason = DeadReason.UNKNOWN_FIELD
    else:
        reason = DeadReason.INVALID_VALUE
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(event)'}: {e['msg']}" for e in errors[:5])
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return reason, f"field {where!r} is wrong: {detail}{more}"


def decode_record(
    record: KafkaRecord, *, now: datetime, limits: DecodeLimits
) -> events_pb2.LLMEvent | verdict_pb2.DeadLetter:
    """Decode and validate one record. Returns the event or the dead letter explaining the rejection."""

    def dead(reason: DeadReason, message: str, event_id: str = "", model: str = "") -> verdict_pb2.DeadLetter:
        stage = Stage.VALIDATE if reason in _VALIDATE_REASONS else Stage.DECODE
        return dead_letter(
            raw=record.value,
            stage=stage,
            reason=reason,
            message=message,
            source=record,
            failed_at=now,
            event_id=event_id,
            model=model,
        )

    size = len(record.value)
    if size > limits.max_event_bytes:
        return dead(
            DeadReason.OVERSIZED,
            f"event is {size} bytes, above the limit of {limits.max_event_bytes} "
            "(raise --max-event-bytes or trim the response upstream)",
        )
    try:
        if record.content_type == topics.CONTENT_TYPE_JSON:
            parsed = LLMEventIn.model_validate_json(record.value)
        elif record.content_type == topics.CONTENT_TYPE_PROTOBUF:
            try:
                wire = events_pb2.LLMEvent.FromString(record.value)
            except DecodeError as exc:
                return dead(DeadReason.INVALID_PROTOBUF, f"not an evalstream.v1.LLMEvent: {exc}")
            parsed = from_proto(wire)
        else:
            return dead(
                DeadReason.UNSUPPORTED_CONTENT_TYPE,
                f"content-type {record.content_type!r} is not {topics.CONTENT_TYPE_JSON!r} "
                f"or {topics.CONTENT_TYPE_PROTOBUF!r}",
            )
    except ValidationError as exc:
        if any(e["type"] in ("json_invalid", "json_type") for e in exc.errors()):
            return dead(DeadReason.INVALID_JSON, f"not valid JSON: {exc.errors()[0]['msg']}")
        reason, message = _schema_reason(exc)
        return dead(reason, message)
    except WireValueError as exc:  # an unknown enum number or an out-of-range Timestamp
        return dead(DeadReason.INVALID_VALUE, str(exc))
    except UnicodeDecodeError as exc:
        return dead(DeadReason.INVALID_PROTOBUF, f"not an evalstream.v1.LLMEvent: {exc}")

    when = parsed.event_time
    if when < now - limits.max_age:
        return dead(
            DeadReason.STALE_EVENT_TIME,
            f"event_time {when.isoformat()} is older than {limits.max_age} before {now.isoformat()}",
            parsed.event_id,
            parsed.model,
        )
    if when > now + limits.max_skew:
        return dead(
            DeadReason.FUTURE_EVENT_TIME,
            f"event_time {when.isoformat()} is more than {limits.max_skew} after {now.isoformat()} "
            "(check the producer's clock)",
            parsed.event_id,
            parsed.model,
        )
    return to_proto(parsed)


_VALIDATE_REASONS = frozenset(
    {
        DeadReason.MISSING_FIELD,
        DeadReason.UNKNOWN_FIELD,
        DeadReason.INVALID_VALUE,
        DeadReason.STALE_EVENT_TIME,
        DeadReason.FUTURE_EVENT_TIME,
    }
)


def decode_batch(
    records: Iterable[KafkaRecord], *, now: datetime, limits: DecodeLimits
) -> tuple[list[Decoded], list[verdict_pb2.DeadLetter]]:
    """Decode a batch: the valid events with their records, and the dead letters (a span per record
    when tracing is on)."""
    events: list[Decoded] = []
    dead: list[verdict_pb2.DeadLetter] = []
    traced = tracing_enabled()  # a no-op span per record still costs ~10 us
    for record in records:
        if not traced:
            out = decode_record(record, now=now, limits=limits)
        else:
            with _tracer.start_as_current_span("evalstream.decode") as span:
                out = decode_record(record, now=now, limits=limits)
                span.set_attribute("evalstream.event_id", out.event_id)
                span.set_attribute("messaging.kafka.offset", record.offset)
                if isinstance(out, verdict_pb2.DeadLetter):
                    span.set_attribute("evalstream.dead_letter.reason", out.error_type)
        if isinstance(out, verdict_pb2.DeadLetter):
            dead.append(out)
        else:
            events.append(Decoded(record=record, event=out))
    return events, dead


class _DecodeFn(beam.DoFn):
    def __init__(self, now: Now, limits: DecodeLimits) -> None:
        self._fixed_now = now
        self._limits = limits

    def process(self, records: list[KafkaRecord]) -> Iterator[object]:
        events, dead = decode_batch(records, now=now_of(self._fixed_now), limits=self._limits)
        if events:
            yield events
        if dead:
            yield beam.pvalue.TaggedOutput(DEAD, dead)


class Decode(beam.PTransform):
    """Batches of ``KafkaRecord`` -> (batches of ``Decoded`` events, batches of dead letters):
    ``result.events`` and ``result.dead``."""

    def __init__(self, *, now: Now = None, limits: DecodeLimits | None = None) -> None:
        """``now``: the batch clock (micro-batches: fixed, or a ``BatchClock``); None reads the wall clock
        per batch (streaming)."""
        super().__init__()
        self._now = now
        self._limits = limits or DecodeLimits()

    def expand(self, batches: beam.pvalue.PCollection) -> beam.pvalue.DoOutputsTuple:
        fn = _DecodeFn(self._now, self._limits)
        return as_batches(
            batches | "DecodeRecords" >> beam.ParDo(fn).with_outputs(DEAD, main="events"), "events", DEAD
        )
