"""Replayed records: XSTest v2 rows as ``LLMEvent`` records, planned and encoded, good or malformed.

Each XSTest completion becomes one event: ``model`` is the XSTest tag (``llama2orig``),
``model_version`` the setup from SOURCE.md (``Llama-2-70b-chat/original-system-prompt``), the prompt
is one user message, the completion is the response, token counts are estimated (about 4 characters
a token), ``labels`` carry ``dataset``, ``prompt_id`` and ``prompt_type``, and ``event_time`` is the
moment of publishing. Event ids are ``<run id>-xstest_v2-<model>-<prompt id>-<pass>``, so the same
run id, seed and options give the same ids in the same order; a new run id gives new ids.

All of it takes values and returns values (``plan_replay``, ``encode_slot``). Records are keyed by
event id and carry the ``content-type`` header of ``evalstream.wire.topics``.

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
format.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from evalstream.evaluation.datasets import XSTEST_DATASET, XSTestRecord
from evalstream.wire import topics
from evalstream.wire.contract import LLMEventIn, MessageIn, TokenCountsIn, to_proto

__all__ = [
    "DEAD_LETTER_REASON",
    "FAR",
    "MALFORMED_KINDS",
    "OVERSIZED_RESPONSE_BYTES",
    "REQUIRED_FIELDS",
    "UNKNOWN_FIELDS",
    "WRONG_TYPES",
    "Encoding",
    "EventKind",
    "OutgoingRecord",
    "Slot",
    "build_event",
    "duplicate",
    "encode_slot",
    "estimate_tokens",
    "event_id_for",
    "plan_replay",
    "planned_total",
]

#: Response size of an ``oversized`` event: above the pipeline's 1 MiB default limit.
OVERSIZED_RESPONSE_BYTES: Final = 3 * 1024 * 1024
#: How far stale and future events are dated from now.
FAR: Final = timedelta(days=400)
_CHARS_PER_TOKEN: Final = 4


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
        # XSTest records no finish reason (its completions were generated with a token limit and
        # some were cut by it): say so rather than claim the model stopped on its own
        finish_reason="",
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
