"""``evalstream replay``: real labelled traffic (XSTest v2) into Kafka as ``LLMEvent`` records.

Each XSTest completion becomes one event: ``model`` is the XSTest tag (``llama2orig``),
``model_version`` the setup from SOURCE.md (``Llama-2-70b-chat/original-system-prompt``), the prompt
is one user message, the completion is the response, token counts are estimated (about 4 characters
a token), ``labels`` carry ``dataset``, ``prompt_id`` and ``prompt_type``, and ``event_time`` is the
moment of publishing. Event ids are ``<run id>-xstest_v2-<model>-<prompt id>-<pass>``, so the same
run id, seed and options give the same ids in the same order; a new run id gives new ids.

The pure part (``plan_replay``, ``encode_slot``, ``RateLimiter``) takes values and returns values;
``publish`` drives any ``RecordSink``; ``run_replay`` and ``replay_command`` are the Kafka and CLI
shells. Records are keyed by event id and carry the ``content-type`` header of ``evalstream.topics``.

Malformed injection (``--malformed 0.05``) replaces that share of events, spread evenly over the kinds
below; each injected record is exactly one dead letter downstream (reason in brackets), so
``ReplayReport.expected_dead_letters`` is what the pipeline must dead-letter:

- ``invalid_json``: the event's JSON cut short at a seeded point; not parseable [invalid_json].
- ``missing_field``: JSON without one required field (event_id, event_time, model, messages or
  response) [missing_field].
- ``wrong_type``: JSON with one field of the wrong type (``"latency_ms": "fast"``, ``"messages":
  "..."``, ``"response": 42``, ...) [invalid_value].
- ``unknown_field``: JSON with a field the contract does not have; unknown fields are rejected, not
  ignored [unknown_field].
- ``oversized``: a valid event whose response is repeated to ``OVERSIZED_RESPONSE_BYTES`` (3 MiB),
  above the pipeline's 1 MiB default ``max_event_bytes``; the topic must accept it (see
  ``prepare_topic``) [oversized].
- ``stale_event_time``: a valid event dated ``FAR`` (400 days) in the past [stale_event_time].
- ``future_event_time``: a valid event dated ``FAR`` in the future [future_event_time].
- ``duplicate_event_id``: a byte-for-byte copy (same key, value, headers) of an event already sent
  in this run [duplicate_event_id].
- ``protobuf_garbage``: random bytes that are not an ``evalstream.v1.LLMEvent`` (the first byte is a
  field-0 tag, which protobuf forbids), sent with the protobuf content type [invalid_protobuf].

The four JSON kinds are sent as JSON even with ``--format protobuf``; the others use the chosen
format. Exceptions: ``ReplayError`` (Kafka unreachable, topic too small for oversized events,
records not acknowledged).
"""

from __future__ import annotations

import json
import logging
import math
import random
import secrets
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final, Protocol

import typer
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from evalstream import topics
from evalstream.contract import LLMEventIn, MessageIn, TokenCountsIn, now_utc, to_proto
from evalstream.datasets import XSTEST_DATASET, XSTEST_MODELS, XSTestRecord, read_xstest
from evalstream.settings import KafkaSettings

__all__ = [
    "DEAD_LETTER_REASON",
    "FAR",
    "KAFKA_DEFAULT_MAX_MESSAGE_BYTES",
    "MALFORMED_KINDS",
    "MAX_RECORD_BYTES",
    "OVERSIZED_RESPONSE_BYTES",
    "REQUIRED_FIELDS",
    "UNKNOWN_FIELDS",
    "WRONG_TYPES",
    "Done",
    "Encoding",
    "EventKind",
    "KafkaSink",
    "OutgoingRecord",
    "RateLimiter",
    "RecordSink",
    "ReplayError",
    "ReplayOptions",
    "ReplayReport",
    "Slot",
    "build_event",
    "duplicate",
    "encode_slot",
    "estimate_tokens",
    "event_id_for",
    "plan_replay",
    "planned_total",
    "prepare_topic",
    "publish",
    "replay_command",
    "run_replay",
    "summary_table",
]

log = logging.getLogger(__name__)

#: Response size of an ``oversized`` event: above the pipeline's 1 MiB default limit.
OVERSIZED_RESPONSE_BYTES: Final = 3 * 1024 * 1024
#: Producer ``max_request_size`` and the ``max.message.bytes`` of topics replay creates.
MAX_RECORD_BYTES: Final = 8 * 1024 * 1024
#: How far stale and future events are dated from now.
FAR: Final = timedelta(days=400)
#: Kafka's default ``max.message.bytes``, assumed when a broker does not report the topic's value.
KAFKA_DEFAULT_MAX_MESSAGE_BYTES: Final = 1_048_588
_CHARS_PER_TOKEN: Final = 4


class ReplayError(RuntimeError):
    """Replay could not publish what it planned; the message says what to change."""


class Encoding(StrEnum):
    JSON = "json"
    PROTOBUF = "protobuf"


class EventKind(StrEnum):
    """What a replayed record is: a good event or one kind of bad input (see the module docstring)."""

    GOOD = "good"
    INVALID_JSON = "invalid_json"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    UNKNOWN_FIELD = "unknown_field"
    OVERSIZED = "oversized"
    STALE_EVENT_TIME = "stale_event_time"
    FUTURE_EVENT_TIME = "future_event_time"
    DUPLICATE_EVENT_ID = "duplicate_event_id"
    PROTOBUF_GARBAGE = "protobuf_garbage"


MALFORMED_KINDS: Final = tuple(k for k in EventKind if k is not EventKind.GOOD)

#: The dead-letter reason the pipeline gives each malformed kind (``pipelines.records.DeadReason``).
DEAD_LETTER_REASON: Final[Mapping[EventKind, str]] = MappingProxyType(
    {
        EventKind.INVALID_JSON: "invalid_json",
        EventKind.MISSING_FIELD: "missing_field",
        EventKind.WRONG_TYPE: "invalid_value",
        EventKind.UNKNOWN_FIELD: "unknown_field",
        EventKind.OVERSIZED: "oversized",
        EventKind.STALE_EVENT_TIME: "stale_event_time",
        EventKind.FUTURE_EVENT_TIME: "future_event_time",
        EventKind.DUPLICATE_EVENT_ID: "duplicate_event_id",
        EventKind.PROTOBUF_GARBAGE: "invalid_protobuf",
    }
)

#: Fields whose absence ``missing_field`` events show; each is required by ``LLMEventIn``.
REQUIRED_FIELDS: Final = ("event_id", "event_time", "model", "messages", "response")
#: (field, value of the wrong type) pairs for ``wrong_type`` events.
WRONG_TYPES: Final[tuple[tuple[str, object], ...]] = (
    ("latency_ms", "fast"),
    ("messages", "a bare string instead of a list of messages"),
    ("response", 42),
    ("event_time", True),
    ("tokens", [12, 34]),
    ("model", ["llama2orig"]),
)
#: (field, value) pairs the contract does not know, for ``unknown_field`` events.
UNKNOWN_FIELDS: Final[tuple[tuple[str, object], ...]] = (
    ("user_rating", 5),
    ("temperature", 0.7),
    ("prompt", "a prompt outside the messages list"),
)
#: First byte of ``protobuf_garbage``: tag of field number 0, which every protobuf parser rejects.
_GARBAGE_PREFIX: Final = b"\x07"


# --- pure core -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Slot:
    """One planned record: which XSTest row, in which pass, as what kind."""

    index: int
    pass_index: int
    record: XSTestRecord
    kind: EventKind
    event_id: str
    variant: int = 0  # seeded choice inside a kind: which field, where to cut, which bytes
    duplicate_of: int | None = None  # index of the earlier good slot a duplicate copies
    keep: bool = False  # a later duplicate copies this slot's record


@dataclass(frozen=True, slots=True, kw_only=True)
class OutgoingRecord:
    kind: EventKind
    key: bytes
    value: bytes
    content_type: str

    def headers(self) -> list[tuple[str, bytes]]:
        return [(topics.CONTENT_TYPE_HEADER, self.content_type.encode())]


def event_id_for(run_id: str, record: XSTestRecord, pass_index: int) -> str:
    return f"{run_id}-{XSTEST_DATASET}-{record.model}-{record.prompt_id}-{pass_index}"


def estimate_tokens(text: str) -> int:
    """About 4 characters a token: a rough count for events whose tokenizer is unknown."""
    return math.ceil(len(text) / _CHARS_PER_TOKEN)


def planned_total(n_records: int, *, repeat: int = 1, limit: int | None = None) -> int:
    """How many slots ``plan_replay`` yields."""
    total = n_records * repeat
    return total if limit is None else min(limit, total)


def plan_replay(
    records: Sequence[XSTestRecord],
    *,
    seed: int,
    run_id: str,
    repeat: int = 1,
    limit: int | None = None,
    malformed: float = 0.0,
) -> Iterator[Slot]:
    """The records in a seeded order, pass by pass (each pass shuffled anew), cut to ``limit``.

    In each pass a ``malformed`` share of the slots is replaced by bad inputs spread evenly over
    ``MALFORMED_KINDS``; a duplicate copies a good slot sent earlier in the same pass. Lazy: a long
    ``--repeat`` holds one pass in memory, not all of them.
    """
    if not 0.0 <= malformed <= 1.0:
        raise ValueError(f"malformed share must be between 0 and 1, got {malformed}")
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    total = planned_total(len(records), repeat=repeat, limit=limit)
    return _plan(records, rng=random.Random(seed), run_id=run_id, repeat=repeat, total=total, share=malformed)


def _plan(
    records: Sequence[XSTestRecord], *, rng: random.Random, run_id: str, repeat: int, total: int, share: float
) -> Iterator[Slot]:
    remaining = total
    index = 0
    for pass_index in range(repeat):
        if remaining <= 0:
            return
        order = list(records)
        rng.shuffle(order)
        order = order[:remaining]
        remaining -= len(order)
        yield from _plan_pass(
            order, rng=rng, first_index=index, pass_index=pass_index, run_id=run_id, share=share
        )
        index += len(order)


def _plan_pass(
    order: Sequence[XSTestRecord],
    *,
    rng: random.Random,
    first_index: int,
    pass_index: int,
    run_id: str,
    share: float,
) -> list[Slot]:
    bad = rng.sample(range(len(order)), round(share * len(order)))
    kinds = list(MALFORMED_KINDS)
    rng.shuffle(kinds)
    kind_at = {position: kinds[i % len(kinds)] for i, position in enumerate(sorted(bad))}
    not_duplicate = [k for k in kinds if k is not EventKind.DUPLICATE_EVENT_ID]
    kinds_in_pass: list[EventKind] = []
    copied_from: dict[int, int] = {}  # position -> earlier good position it duplicates
    good_so_far: list[int] = []
    for position in range(len(order)):
        kind = kind_at.get(position, EventKind.GOOD)
        if kind is EventKind.DUPLICATE_EVENT_ID:
            if good_so_far:
                copied_from[position] = good_so_far[rng.randrange(len(good_so_far))]
            else:  # nothing sent yet in this pass to duplicate
                kind = rng.choice(not_duplicate)
        elif kind is EventKind.GOOD:
            good_so_far.append(position)
        kinds_in_pass.append(kind)
    sources = set(copied_from.values())
    ids = [event_id_for(run_id, record, pass_index) for record in order]
    return [
        Slot(
            index=first_index + position,
            pass_index=pass_index,
            record=record,
            kind=kind,
            event_id=ids[copied_from.get(position, position)],
            variant=rng.randrange(1 << 30) if kind is not EventKind.GOOD else 0,
            duplicate_of=first_index + copied_from[position] if position in copied_from else None,
            keep=position in sources,
        )
        for position, (record, kind) in enumerate(zip(order, kinds_in_pass, strict=True))
    ]


def build_event(record: XSTestRecord, *, event_id: str, event_time: datetime) -> LLMEventIn:
    """The good event for one XSTest row."""
    return LLMEventIn(
        event_id=event_id,
        event_time=event_time,
        model=record.model,
        model_version=record.model_version,
        messages=[MessageIn(role="user", content=record.prompt)],
        response=record.completion,
        tokens=TokenCountsIn(
            prompt=estimate_tokens(record.prompt), completion=estimate_tokens(record.completion)
        ),
        labels={"dataset": XSTEST_DATASET, "prompt_id": record.prompt_id, "prompt_type": record.prompt_type},
    )


def _encode(event: LLMEventIn, encoding: Encoding) -> tuple[bytes, str]:
    if encoding is Encoding.PROTOBUF:
        return to_proto(event).SerializeToString(), topics.CONTENT_TYPE_PROTOBUF
    return event.model_dump_json(exclude_none=True).encode(), topics.CONTENT_TYPE_JSON


def _json(document: Mapping[str, object]) -> tuple[bytes, str]:
    return json.dumps(document, ensure_ascii=False).encode(), topics.CONTENT_TYPE_JSON


def encode_slot(slot: Slot, *, now: datetime, encoding: Encoding) -> OutgoingRecord:
    """The record for one slot; ``now`` is the publishing time. Duplicates come from ``duplicate``."""
    kind, variant = slot.kind, slot.variant
    event = build_event(slot.record, event_id=slot.event_id, event_time=now)
    if kind is EventKind.GOOD:
        value, content_type = _encode(event, encoding)
    elif kind is EventKind.INVALID_JSON:
        whole, content_type = _encode(event, Encoding.JSON)
        value = whole[: 1 + variant % (len(whole) - 1)]  # any strict prefix of an object is invalid
    elif kind in (EventKind.MISSING_FIELD, EventKind.WRONG_TYPE, EventKind.UNKNOWN_FIELD):
        document: dict[str, object] = event.model_dump(mode="json", exclude_none=True)
        if kind is EventKind.MISSING_FIELD:
            del document[REQUIRED_FIELDS[variant % len(REQUIRED_FIELDS)]]
        else:
            pairs = WRONG_TYPES if kind is EventKind.WRONG_TYPE else UNKNOWN_FIELDS
            name, bad = pairs[variant % len(pairs)]
            document[name] = bad
        value, content_type = _json(document)
    elif kind is EventKind.OVERSIZED:
        unit = slot.record.completion + "\n"
        copies = OVERSIZED_RESPONSE_BYTES // max(1, len(unit.encode())) + 1
        value, content_type = _encode(event.model_copy(update={"response": unit * copies}), encoding)
    elif kind in (EventKind.STALE_EVENT_TIME, EventKind.FUTURE_EVENT_TIME):
        when = now - FAR if kind is EventKind.STALE_EVENT_TIME else now + FAR
        value, content_type = _encode(event.model_copy(update={"event_time": when}), encoding)
    elif kind is EventKind.PROTOBUF_GARBAGE:
        noise = random.Random(variant).randbytes(32 + variant % 480)
        value, content_type = _GARBAGE_PREFIX + noise, topics.CONTENT_TYPE_PROTOBUF
    else:
        raise ValueError(f"slot {slot.index} is a {kind}: build it with duplicate(), not encode_slot()")
    return OutgoingRecord(kind=kind, key=slot.event_id.encode(), value=value, content_type=content_type)


def duplicate(original: OutgoingRecord) -> OutgoingRecord:
    """A byte-for-byte copy of an already-sent record, counted as a duplicate."""
    return replace(original, kind=EventKind.DUPLICATE_EVENT_ID)


@dataclass(kw_only=True)
class RateLimiter:
    """Paces calls to ``rate`` per second (0: no limit). Falls behind by at most one second before it
    stops trying to catch up, so a stall is not followed by a burst."""

    rate: float
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _next: float | None = field(default=None, init=False, repr=False)

    def wait(self) -> None:
        if self.rate <= 0:
            return
        now = self.clock()
        if self._next is None or self._next < now - 1.0:
            self._next = now
        delay = self._next - now
        if delay > 0:
            self.sleep(delay)
        self._next += 1.0 / self.rate


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayReport:
    """What was sent, by kind; ``expected_dead_letters`` is what the pipeline must dead-letter."""

    topic: str
    run_id: str
    seed: int
    encoding: Encoding
    sent: Mapping[EventKind, int]  # acknowledged by the broker
    failed: Mapping[EventKind, int]  # not acknowledged
    bytes_sent: int
    elapsed_s: float
    first_error: str | None = None

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    @property
    def good(self) -> int:
        return self.sent.get(EventKind.GOOD, 0)

    @property
    def expected_dead_letters(self) -> int:
        return self.total_sent - self.good

    @property
    def events_per_s(self) -> float:
        return self.total_sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


Done = Callable[[BaseException | None], None]


class RecordSink(Protocol):
    """Where records go. ``done`` is called once per record, possibly from another thread."""

    def send(self, record: OutgoingRecord, done: Done) -> None: ...

    def flush(self) -> None: ...


class _Tally:
    """Counts acknowledgements; the producer calls back from its I/O thread, hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent: Counter[EventKind] = Counter()
        self.failed: Counter[EventKind] = Counter()
        self.bytes = 0
        self.first_error: str | None = None

    def done_for(self, record: OutgoingRecord) -> Done:
        def done(error: BaseException | None) -> None:
            with self._lock:
                if error is None:
                    self.sent[record.kind] += 1
                    self.bytes += len(record.value)
                else:
                    self.failed[record.kind] += 1
                    if self.first_error is None:
                        self.first_error = f"{record.kind} record {record.key!r}: {error!r}"

        return done


def publish(
    plan: Iterable[Slot],
    *,
    sink: RecordSink,
    topic: str,
    encoding: Encoding,
    run_id: str,
    seed: int,
    limiter: RateLimiter,
    now: Callable[[], datetime] = now_utc,
    clock: Callable[[], float] = time.monotonic,
    on_sent: Callable[[], None] | None = None,
) -> ReplayReport:
    """Encode each slot at its publishing time, pace it, send it; flush and count what was acknowledged."""
    kept: dict[int, OutgoingRecord] = {}  # records later duplicates copy, for the current pass
    current_pass = 0
    tally = _Tally()
    started = clock()
    for slot in plan:
        if slot.pass_index != current_pass:
            kept.clear()
            current_pass = slot.pass_index
        limiter.wait()
        if slot.duplicate_of is not None:
            record = duplicate(kept[slot.duplicate_of])
        else:
            record = encode_slot(slot, now=now(), encoding=encoding)
        if slot.keep:
            kept[slot.index] = record
        sink.send(record, tally.done_for(record))
        if on_sent is not None:
            on_sent()
    sink.flush()
    return ReplayReport(
        topic=topic,
        run_id=run_id,
        seed=seed,
        encoding=encoding,
        sent=MappingProxyType(dict(tally.sent)),
        failed=MappingProxyType(dict(tally.failed)),
        bytes_sent=tally.bytes,
        elapsed_s=clock() - started,
        first_error=tally.first_error,
    )


# --- Kafka shell -----------------------------------------------------------------------------------


class KafkaSink:
    """A ``RecordSink`` over a kafka-python ``KafkaProducer``, for one topic."""

    def __init__(self, producer: Any, topic: str, flush_timeout_s: float = 120.0) -> None:
        self._producer = producer
        self._topic = topic
        self._flush_timeout_s = flush_timeout_s

    def send(self, record: OutgoingRecord, done: Done) -> None:
        try:
            future = self._producer.send(
                self._topic, key=record.key, value=record.value, headers=record.headers()
            )
        except KafkaError as exc:
            done(exc)
            return
        future.add_callback(lambda _metadata: done(None))
        future.add_errback(done)

    def flush(self) -> None:
        try:
            self._producer.flush(timeout=self._flush_timeout_s)
        except KafkaError as exc:
            raise ReplayError(
                f"records to {self._topic!r} not delivered within {self._flush_timeout_s}s"
            ) from exc


def prepare_topic(kafka: KafkaSettings, topic: str, *, partitions: int, needed_bytes: int) -> bool:
    """Create ``topic`` with ``partitions`` and ``max.message.bytes`` of ``MAX_RECORD_BYTES`` when it
    is missing (returns True). An existing topic must accept ``needed_bytes``-sized records."""
    try:
        admin = KafkaAdminClient(**kafka.client_kwargs())
    except KafkaError as exc:
        raise ReplayError(f"cannot reach Kafka at {kafka.bootstrap}: {exc}; is the broker up?") from exc
    try:
        if topic not in set(admin.list_topics()):
            configs = {"max.message.bytes": str(MAX_RECORD_BYTES)}
            try:
                admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=configs)])
                log.info("created topic %s (%s partitions, max.message.bytes=%s)", topic, partitions, configs)
                return True
            except TopicAlreadyExistsError:
                log.info("topic %s was created concurrently", topic)
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        entry = described.get("topic", {}).get(topic, {}).get("max.message.bytes")
        limit = int(entry["value"]) if entry else KAFKA_DEFAULT_MAX_MESSAGE_BYTES
        if limit < needed_bytes:
            raise ReplayError(
                f"topic {topic!r} accepts records up to {limit} bytes"
                f"{'' if entry else ' (Kafka default; the broker reports no value)'}, but oversized "
                f"events need {needed_bytes}: raise it (kafka-configs.sh --alter --entity-type topics "
                f"--entity-name {topic} --add-config max.message.bytes={MAX_RECORD_BYTES}), "
                "or replay into a new topic, or without --malformed"
            )
        return False
    except KafkaError as exc:
        raise ReplayError(f"cannot prepare topic {topic!r} on {kafka.bootstrap}: {exc}") from exc
    finally:
        admin.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayOptions:
    topic: str = topics.EVENTS
    models: tuple[str, ...] = tuple(XSTEST_MODELS)
    limit: int | None = None
    repeat: int = 1
    seed: int = 0
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    rate: float = 0.0
    malformed: float = 0.0
    encoding: Encoding = Encoding.JSON
    partitions: int = 4
    data_dir: Path | None = None


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:>8,.0f} events/s")


def run_replay(
    options: ReplayOptions,
    kafka: KafkaSettings,
    *,
    console: Console | None = None,
    show_progress: bool = True,
    now: Callable[[], datetime] = now_utc,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplayReport:
    """Read XSTest, plan, prepare the topic, publish with a progress bar; the report of what was sent."""
    records = read_xstest(options.data_dir, models=options.models)
    plan = plan_replay(
        records,
        seed=options.seed,
        run_id=options.run_id,
        repeat=options.repeat,
        limit=options.limit,
        malformed=options.malformed,
    )
    total = planned_total(len(records), repeat=options.repeat, limit=options.limit)
    oversized = options.malformed > 0 and total > 0  # any malformed share may include oversized events
    prepare_topic(
        kafka,
        options.topic,
        partitions=options.partitions,
        needed_bytes=OVERSIZED_RESPONSE_BYTES + 64 * 1024 if oversized else 0,
    )
    try:
        producer = KafkaProducer(
            **kafka.client_kwargs(), acks="all", linger_ms=5, max_request_size=MAX_RECORD_BYTES
        )
    except KafkaError as exc:
        raise ReplayError(f"cannot reach Kafka at {kafka.bootstrap}: {exc}; is the broker up?") from exc
    progress = Progress(
        TextColumn("[bold]replay[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not show_progress,
    )
    try:
        with progress:
            task = progress.add_task(options.topic, total=total)
            report = publish(
                plan,
                sink=KafkaSink(producer, options.topic),
                topic=options.topic,
                encoding=options.encoding,
                run_id=options.run_id,
                seed=options.seed,
                limiter=RateLimiter(rate=options.rate, clock=clock, sleep=sleep),
                now=now,
                clock=clock,
                on_sent=lambda: progress.advance(task),
            )
    finally:
        producer.close(timeout=30)
    log.info(
        "replayed %s events to %s in %.1fs (%s malformed, %s failed)",
        report.total_sent,
        report.topic,
        report.elapsed_s,
        report.expected_dead_letters,
        sum(report.failed.values()),
    )
    return report


def summary_table(report: ReplayReport) -> Table:
    table = Table(title=f"replay {report.run_id} -> {report.topic} ({report.encoding})")
    table.add_column("kind")
    table.add_column("sent", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("dead-letter reason")
    for kind in EventKind:
        if report.sent.get(kind) or report.failed.get(kind):
            reason = DEAD_LETTER_REASON.get(kind, "-")
            table.add_row(kind, str(report.sent.get(kind, 0)), str(report.failed.get(kind, 0)), reason)
    table.add_section()
    table.add_row("total", str(report.total_sent), str(sum(report.failed.values())), "")
    table.add_row("expected dead letters", str(report.expected_dead_letters), "", "")
    table.caption = (
        f"{report.bytes_sent / 1e6:.1f} MB in {report.elapsed_s:.2f}s, {report.events_per_s:,.0f} events/s; "
        f"seed {report.seed}"
    )
    return table


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def replay_command(
    topic: Annotated[str, typer.Option(help="Kafka topic to publish to.")] = topics.EVENTS,
    models: Annotated[
        list[str] | None,
        typer.Option(
            help=f"XSTest model tags, comma-separated or repeated (default: {', '.join(XSTEST_MODELS)})."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="Publish at most this many events (0: all).", min=0)] = 0,
    repeat: Annotated[int, typer.Option(help="Replay the data this many times, with new ids.", min=1)] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the order and of the malformed choices.")] = 0,
    run_id: Annotated[
        str | None,
        typer.Option(help="Part of every event id; the same run id repeats the ids (default: random)."),
    ] = None,
    rate: Annotated[float, typer.Option(help="Events per second (0: as fast as possible).", min=0)] = 0.0,
    malformed: Annotated[
        float, typer.Option(help="Share of events replaced by bad inputs, e.g. 0.05.", min=0.0, max=1.0)
    ] = 0.0,
    encoding: Annotated[
        Encoding, typer.Option("--format", help="Wire format of good events.")
    ] = Encoding.JSON,
    partitions: Annotated[int, typer.Option(help="Partitions when the topic is created.", min=1)] = 4,
    bootstrap: Annotated[
        str | None, typer.Option(help="Kafka host:port list (default: EVALSTREAM_KAFKA_BOOTSTRAP).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Shared data folder (default: EVALSTREAM_DATA_DIR or ../shared/data).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Replay XSTest v2 completions into Kafka as LLM events, optionally with malformed inputs."""
    console = Console()
    kafka = KafkaSettings(bootstrap=bootstrap) if bootstrap else KafkaSettings()
    options = ReplayOptions(
        topic=topic,
        models=tuple(m.strip() for arg in models or XSTEST_MODELS for m in arg.split(",") if m.strip()),
        limit=limit or None,
        repeat=repeat,
        seed=seed,
        rate=rate,
        malformed=malformed,
        encoding=encoding,
        partitions=partitions,
        data_dir=data_dir,
        run_id=run_id or secrets.token_hex(4),
    )
    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C: what was sent is flushed
    try:
        report = run_replay(options, kafka, console=Console(stderr=True), show_progress=progress)
    except (ReplayError, ValueError, OSError) as exc:
        console.print(f"[red]replay failed:[/] {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        console.print("replay stopped; records sent so far were flushed")
        raise typer.Exit(0) from None
    console.print(summary_table(report))
    if report.failed:
        console.print(
            f"[red]{sum(report.failed.values())} records not acknowledged;[/] first: {report.first_error}"
        )
        raise typer.Exit(1)
