"""Hostile input at the decoder and the JSON/protobuf edges, fuzzed with hypothesis.

Properties:
- ``decode_record`` never raises, whatever the bytes and the content type: it returns an event or a
  dead letter with a reason from ``DeadReason``, a message, the raw bytes (cut at
  ``MAX_DEAD_LETTER_RAW``, size and truncation recorded) and the source position;
- an event it accepts is inside the event-time window and round-trips through ``to_proto`` and
  ``from_proto`` unchanged;
- valid events (built with ``LLMEventIn``) mutated one way are rejected with the reason that mutation
  calls for, or, where the contract coerces (lax numbers, null for optional fields), accepted intact;
- protobuf: random tags and wire types, truncated messages, unknown fields, and valid messages with
  missing or out-of-range values.

Every test is bounded (``max_examples``, ``deadline``) and uses no example database, so the file runs in
seconds and leaves nothing behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evalstream.pipeline.decode import DecodeLimits, decode_record
from evalstream.pipeline.records import MAX_DEAD_LETTER_RAW, DeadReason, KafkaRecord
from evalstream.v1 import events_pb2, verdict_pb2
from evalstream.wire import topics
from evalstream.wire.contract import FeedbackIn, LLMEventIn, MessageIn, TokenCountsIn, from_proto, to_proto

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
#: Above the dead letters' raw cap, so both truncation and ``oversized`` are reachable.
LIMITS = DecodeLimits(max_event_bytes=256 * 1024)
JSON = topics.CONTENT_TYPE_JSON
PROTOBUF = topics.CONTENT_TYPE_PROTOBUF

FUZZ = settings(
    max_examples=250,
    deadline=timedelta(seconds=2),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(FUZZ, max_examples=60)

REASONS = frozenset(r.value for r in DeadReason)
#: What decoding one record can say (duplicates and judge failures come later in the pipeline).
DECODE_REASONS = frozenset(
    {
        DeadReason.OVERSIZED,
        DeadReason.UNSUPPORTED_CONTENT_TYPE,
        DeadReason.INVALID_JSON,
        DeadReason.INVALID_PROTOBUF,
        DeadReason.MISSING_FIELD,
        DeadReason.UNKNOWN_FIELD,
        DeadReason.INVALID_VALUE,
        DeadReason.STALE_EVENT_TIME,
        DeadReason.FUTURE_EVENT_TIME,
    }
)
#: A protobuf record cannot miss a field (proto3 has defaults) nor carry an unknown one (skipped).
PROTO_REASONS = frozenset(
    {
        DeadReason.INVALID_PROTOBUF,
        DeadReason.INVALID_VALUE,
        DeadReason.STALE_EVENT_TIME,
        DeadReason.FUTURE_EVENT_TIME,
    }
)
STAGE_OF = {
    **dict.fromkeys(("oversized", "unsupported_content_type", "invalid_json", "invalid_protobuf"), "decode"),
    **dict.fromkeys(
        ("missing_field", "unknown_field", "invalid_value", "stale_event_time", "future_event_time"),
        "validate",
    ),
}


def record(value: bytes, content_type: str = JSON, *, offset: int = 41, partition: int = 3) -> KafkaRecord:
    return KafkaRecord(
        topic="llm.events.hostile",
        partition=partition,
        offset=offset,
        key=None,
        value=value,
        content_type=content_type,
    )


def decode(rec: KafkaRecord) -> LLMEventIn | str:
    """Decode and check the invariants every outcome must keep; the event, or the dead letter's reason."""
    out = decode_record(rec, now=NOW, limits=LIMITS)
    if isinstance(out, verdict_pb2.DeadLetter):
        assert out.error_type in REASONS, out.error_type
        assert out.stage == STAGE_OF[out.error_type], (out.stage, out.error_type)
        assert out.message.strip(), f"{out.error_type} dead letter without a message"
        assert out.raw == rec.value[:MAX_DEAD_LETTER_RAW]
        assert out.raw_size == len(rec.value)
        assert out.raw_truncated == (len(rec.value) > MAX_DEAD_LETTER_RAW)
        assert (out.source_topic, out.source_partition, out.source_offset) == (
            rec.topic,
            rec.partition,
            rec.offset,
        )
        assert out.failed_at.ToDatetime(tzinfo=UTC) == NOW
        verdict_pb2.DeadLetter.FromString(out.SerializeToString())  # it can be written to Kafka
        return out.error_type
    assert isinstance(out, events_pb2.LLMEvent), type(out)
    event = from_proto(out)
    assert to_proto(event) == out, "the accepted event does not round-trip through the contract"
    assert NOW - LIMITS.max_age <= event.event_time <= NOW + LIMITS.max_skew
    assert event.event_time.tzinfo is not None
    return event


# --------------------------------------------------------------------------------------- any input

CONTENT_TYPES = st.one_of(
    st.sampled_from([JSON, PROTOBUF, "", "text/plain", "application/avro", "application/json+x"]),
    st.text(max_size=24),
)


@FUZZ
@given(
    value=st.binary(max_size=4096),
    content_type=CONTENT_TYPES,
    offset=st.integers(0, 2**63 - 1),
    partition=st.integers(0, 2**31 - 1),
)
def test_any_bytes_with_any_content_type_is_an_event_or_a_dead_letter(
    value: bytes, content_type: str, offset: int, partition: int
) -> None:
    outcome = decode(record(value, content_type, offset=offset, partition=partition))
    if content_type not in (JSON, PROTOBUF):
        assert outcome == DeadReason.UNSUPPORTED_CONTENT_TYPE
    elif isinstance(outcome, str):
        assert outcome in (DECODE_REASONS if content_type == JSON else PROTO_REASONS)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)


@FUZZ
@given(document=JSON_VALUES)
def test_any_json_document_is_an_event_or_a_dead_letter(document: Any) -> None:
    outcome = decode(record(json.dumps(document).encode()))
    assert isinstance(outcome, str), "a random document passed as an event"
    assert outcome in DECODE_REASONS - {DeadReason.INVALID_PROTOBUF, DeadReason.UNSUPPORTED_CONTENT_TYPE}


@settings(FUZZ, max_examples=30)
@given(
    size=st.integers(MAX_DEAD_LETTER_RAW - 8, LIMITS.max_event_bytes + 4096),
    unit=st.binary(min_size=1, max_size=16),
    content_type=st.sampled_from([JSON, PROTOBUF, "text/csv"]),
)
def test_raw_bytes_are_kept_up_to_the_cap_with_size_and_truncation(
    size: int, unit: bytes, content_type: str
) -> None:
    value = (unit * (size // len(unit) + 1))[:size]
    outcome = decode(record(value, content_type))  # decode() checks raw, raw_size and raw_truncated
    assert isinstance(outcome, str)
    if size > LIMITS.max_event_bytes:
        assert outcome == DeadReason.OVERSIZED


# --------------------------------------------------------------------------------------- valid events

#: Unicode that must survive untouched: NUL, direction marks and overrides, BOM, joiners, combining
#: marks, astral planes, noncharacters, line and paragraph separators, JSON's own escapes.
UNICODE_EDGES = (
    "\x00", "\x7f", "\u200e", "\u200f", "\u202e", "\u2066", "\u2069", "\ufeff", "\u200d", "e\u0301",
    "\U0001f600", "\U0001f469\u200d\U0001f4bb", "\uffff", "\U0010ffff", "\u2028", "\u2029", "\u0085",
    "\\", '"', "\n\t\r", "\u0645\u0631\u062d\u0628\u0627", "</script>", "\\u0000",
)  # fmt: skip
#: The same, one character each (for length-limited fields).
EDGE_CHARS = (
    "\x00", "\x7f", "\u200e", "\u200f", "\u202e", "\u2066", "\ufeff", "\u200d", "\u0301", "\U0001f600",
    "\uffff", "\U0010ffff", "\u2028", "\u0085", "\\", '"', "\n", "\r", "<",
)  # fmt: skip
CHARS = st.one_of(st.characters(exclude_categories=("Cs",)), st.sampled_from(EDGE_CHARS))


def text(min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[str]:
    return st.text(CHARS, min_size=min_size, max_size=max_size)


TEXT = text()
ZONES = st.sampled_from(
    [
        UTC,
        timezone(timedelta(hours=5, minutes=30)),
        timezone(timedelta(hours=-11)),
        timezone(timedelta(hours=23, minutes=59)),
        timezone(-timedelta(hours=23, minutes=59)),
    ]
)
IN_WINDOW = st.datetimes(
    min_value=(NOW - LIMITS.max_age).replace(tzinfo=None),
    max_value=(NOW + LIMITS.max_skew).replace(tzinfo=None),
).map(lambda naive: naive.replace(tzinfo=UTC))


@st.composite
def events(draw: st.DrawFn) -> LLMEventIn:
    def short(min_size: int = 0, max_size: int = 40) -> str:
        return draw(text(min_size, max_size))

    return LLMEventIn(
        event_id=short(1),
        event_time=draw(IN_WINDOW),
        model=short(1),
        model_version=short(),
        route=short(),
        tenant=short(),
        messages=[MessageIn(role=short(1, 32), content=draw(TEXT)) for _ in range(draw(st.integers(1, 3)))],
        response=draw(TEXT),
        finish_reason=draw(st.sampled_from(["stop", "length", "content_filter", ""])),
        tokens=TokenCountsIn(prompt=draw(st.integers(0, 2**31)), completion=draw(st.integers(0, 2**31))),
        latency_ms=draw(st.floats(min_value=0, max_value=1e12, allow_nan=False)),
        reference_answer=draw(st.none() | TEXT),
        feedback=draw(st.none() | st.sampled_from(list(FeedbackIn))),
        labels=draw(st.dictionaries(TEXT, TEXT, max_size=3)),
    )


def as_json(event: LLMEventIn) -> dict[str, Any]:
    document: dict[str, Any] = event.model_dump(mode="json")
    return document


def dumps(document: Any, *, ascii_only: bool) -> bytes:
    return json.dumps(document, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@FUZZ
@given(event=events(), ascii_only=st.booleans(), zone=ZONES)
def test_valid_events_round_trip_exactly_as_json_and_protobuf(
    event: LLMEventIn, ascii_only: bool, zone: timezone
) -> None:
    document = as_json(event)
    document["event_time"] = event.event_time.astimezone(zone).isoformat()  # the same instant, any zone
    assert decode(record(dumps(document, ascii_only=ascii_only))) == event
    assert decode(record(to_proto(event).SerializeToString(), PROTOBUF)) == event


# --------------------------------------------------------------------------------------- JSON mutations


@dataclass(frozen=True)
class Expect:
    """What a mutation calls for: one of ``reasons``, or (``valid``) an accepted event."""

    reasons: frozenset[str]
    valid: bool = False
    check: Callable[[LLMEventIn], None] | None = None  # what an accepted event must hold

    def verify(self, outcome: LLMEventIn | str, what: str) -> None:
        if isinstance(outcome, str):
            assert outcome in self.reasons, f"{what}: got {outcome}, expected one of {sorted(self.reasons)}"
        else:
            assert self.valid, f"{what}: accepted, expected one of {sorted(self.reasons)}"
            if self.check is not None:
                self.check(outcome)


def reject(*reasons: str) -> Expect:
    return Expect(frozenset(reasons))


REQUIRED = ("event_id", "event_time", "model", "messages", "response")
OPTIONAL = (
    "model_version", "route", "tenant", "finish_reason", "tokens", "latency_ms", "reference_answer",
    "feedback", "labels",
)  # fmt: skip
FIELDS = REQUIRED + OPTIONAL
#: String fields and their length limits (None: unbounded).
STRINGS: dict[str, int | None] = {
    "event_id": 256,
    "model": 256,
    "model_version": 256,
    "route": 256,
    "tenant": 256,
    "finish_reason": 64,
    "response": None,
    "reference_answer": None,
}
NULLABLE = ("reference_answer", "feedback")
NOT_STRINGS = st.one_of(
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)


def m_drop(draw: st.DrawFn, doc: dict[str, Any]) -> tuple[str, Expect]:
    name = draw(st.sampled_from(FIELDS))
    del doc[name]
    return f"drop {name}", reject("missing_field") if name in REQUIRED else Expect(frozenset(), valid=True)


def m_rename(draw: st.DrawFn, doc: dict[str, Any]) -> tuple[str, Expect]:
    name = draw(st.sampled_from(FIELDS))
    new = draw(st.text(min_size=1, max_size=20).filter(lambda n: n not in FIELDS))
    doc[new] = doc.pop(name)
    # A missing required field is reported before an unknown one.
    return f"rename {name} to {new!r}", reject("missing_field" if name in REQUIRED else "unknown_field")


def m_unknown(draw: st.DrawFn, doc: dict[str, Any]) -> tuple[str, Expect]:
    where = draw(st.sampled_from(["event", "message", "tokens"]))
    target = {"event": doc, "message": doc["messages"][0], "tokens": doc["tokens"]}[where]
    name = draw(st.text(min_size=1, max_size=20).filter(lambda n: n not in target))
    target[name] = draw(JSON_VALUES)
    return f"unknown field {name!r} in {where}", reject("unknown_field")


def m_not_a_string(draw: st.DrawFn, doc: dict[str, Any]) -> tuple[str, Expect]:
    name = draw(st.sampled_from(sorted(STRINGS)))
    doc[name] = draw(NOT_STRINGS if name in NULLABLE else NOT_STRINGS | st.none())
    return f"{name} = {doc[name]!r}", reject("invalid_value")


def m_wrong_shape(draw: st.DrawFn, doc: dict[str, Any]) -> tuple[str, Expect]:
    name, bad = draw(
        st.sampled_from(
            [
                ("messages", "a bare string"),
                ("messages", {"role": "user", "content": "x"}),
                ("messages", []),
                ("messages", [1, 2]),
                ("messages", [["user", "hi"]]),
                ("tokens", [12, 34]),
                ("tokens", "12"),
                ("labels", ["a", "b"]),
                ("labels", {"k": 1}),
                ("labels", {"k": None}),
                ("feedback", "POSITIVE"),
                ("feedback", 1),
                ("feedback", True),
                ("latency_ms", "fast"),
                ("latency_ms", None),
                ("latency_ms", [1.0]),
                ("event_time", True),
                ("event_time", "yesterday"),
                ("event_time", ""),
                ("event_time", None),
                ("event_time", "2026-13-01T00:00:00Z"),
                ("event_time", "2026-11-24T25:00:00Z"),
                ("event_time", {"seconds": 1}),
            ]
        )
    )
    doc[name] = bad
    return f"{name} = {bad!r}", reject("invalid_value")


def m_lax_number(draw: st.DrawFn, doc: dict[str, Any]) -> tuple[str, Expect]:
    """Numbers the contract may coerce (lax mode): accepted with the coerced value, or invalid."""
    name = draw(st.sampled_from(["latency_ms", "tokens.prompt", "tokens.completion"]))
    bad = draw(st.sampled_from(["12", "1e3", " 7 ", "0x10", "1_000", True, False, 3.0, 2.5, "", "NaN"]))
    if name == "latency_ms":
        doc[name] = bad
    else:
        doc["tokens"][name.split(".")[1]] = bad
    return f"{name} = {bad!r}", Expect(frozenset({"invalid_value"}), valid=True)


def m_huge_string(draw: st.DrawFn, doc: dict[str, Any]) -> tuple[str, Expect]:
    name = draw(st.sampled_from(sorted(STRINGS)))
    limit = STRINGS[name]
    unit = draw(st.sampled_from(["x", "\u00e9", "\U0001f600", "\x00", "\u202e"]))
    if limit is None:  # unbounded: only the record size limit applies
        n = draw(st.integers(1, (LIMITS.max_event_bytes + 8192) // len(unit.encode())))
        doc[name] = value = unit * n
        raw = json.dumps(doc, ensure_ascii=False)  # this encoding, so the size is known here
        size = len(raw.encode("utf-8", "surrogatepass"))  # an earlier mutation may add a lone surrogate
        doc.clear()
        doc["__raw__"] = raw
        return f"{name} of {n} x {unit!r} ({size} bytes)", (
            reject("oversized")
            if size > LIMITS.max_event_bytes
            else Expect(frozenset(), valid=True, check=lambda e: _same(getattr(e, name), value))
        )
    n = draw(st.integers(limit + 1, limit * 20))
    doc[name] = unit * n
    return f"{name} of {n} characters (limit {limit})", reject("invalid_value")


def m_deep(draw: st.DrawFn, doc: dict[str, Any]) -> tuple[str, Expect]:
    """Nesting in a string field: a type error when shallow, unparseable when deeper than the parser goes."""
    depth = draw(st.integers(1, 3000))
    name = draw(st.sampled_from(["response", "model", "labels"]))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    marker = "__DEEP__"
    doc[name] = marker
    text = json.dumps(doc).replace(json.dumps(marker), opener * depth + "1" + closer * depth)
    doc.clear()
    doc["__raw__"] = text
    if depth <= 100:
        return f"{name} nested {depth} deep", reject("invalid_value")
    if depth >= 1000:
        return f"{name} nested {depth} deep", reject("invalid_json")
    return f"{name} nested {depth} deep", reject("invalid_value", "invalid_json")


def _same(got: str | None, want: str) -> None:
    assert got == want, f"text changed on the way: {want[:40]!r} -> {(got or '')[:40]!r}"


def m_unicode(draw: st.DrawFn, doc: dict[str, Any]) -> tuple[str, Expect]:
    name = draw(st.sampled_from(["response", "model", "tenant", "message", "label"]))
    text = draw(st.lists(st.sampled_from(UNICODE_EDGES), min_size=1, max_size=8).map("".join))
    if name == "message":
        doc["messages"][0]["content"] = text
        return f"message content {text!r}", Expect(
            frozenset(), valid=True, check=lambda e: _same(e.messages[0].content, text)
        )
    if name == "label":
        doc["labels"][text] = text
        return f"label {text!r}", Expect(frozenset(), valid=True, check=lambda e: _same(e.labels[text], text))
    doc[name] = text
    return f"{name} = {text!r}", Expect(
        frozenset(), valid=True, check=lambda e: _same(getattr(e, name), text)
    )


def m_lone_surrogate(draw: st.DrawFn, doc: dict[str, Any]) -> tuple[str, Expect]:
    """A lone surrogate is not a character: escaped (``\\ud800``) or raw, the JSON is not valid."""
    name = draw(st.sampled_from(["response", "event_id", "route", "message", "label key"]))
    surrogate = chr(draw(st.integers(0xD800, 0xDFFF)))
    text = draw(st.text(max_size=5)) + surrogate + draw(st.text(max_size=5))
    if name == "message":
        doc["messages"][0]["content"] = text
    elif name == "label key":
        doc["labels"][text] = "v"
    else:
        doc[name] = text
    return f"{name} with U+{ord(surrogate):04X}", reject("invalid_json")


def m_surrogate_pair(draw: st.DrawFn, doc: dict[str, Any]) -> tuple[str, Expect]:
    """An escaped surrogate *pair* is one astral character and must arrive as that character."""
    char = chr(draw(st.integers(0x10000, 0x10FFFF)))
    doc["response"] = f"a{char}b"
    return f"response with {char!r} as a surrogate pair", Expect(
        frozenset(), valid=True, check=lambda e: _same(e.response, f"a{char}b")
    )


def m_number_range(draw: st.DrawFn, doc: dict[str, Any]) -> tuple[str, Expect]:
    name = draw(st.sampled_from(["tokens.prompt", "tokens.completion", "latency_ms"]))
    if name == "latency_ms":
        bad = draw(
            st.sampled_from([-1, -1e-9, -1e308, float("nan"), float("-inf")])
            | st.floats(max_value=-1e-300, allow_nan=False)
        )
        doc[name] = bad
        return f"latency_ms = {bad!r}", reject("invalid_value")
    bad = draw(
        st.sampled_from([-1, 2**31 + 1, 2**32, 2**63, 2**64, 10**30, 1e30, -0.5, 1.5])
        | st.integers(max_value=-1)
        | st.integers(min_value=2**31 + 1)
    )
    doc["tokens"][name.split(".")[1]] = bad
    return f"{name} = {bad!r}", reject("invalid_value")


def m_number_edge(draw: st.DrawFn, doc: dict[str, Any]) -> tuple[str, Expect]:
    """In range, however large: accepted with the value intact."""
    name = draw(st.sampled_from(["tokens.prompt", "latency_ms"]))
    if name == "latency_ms":
        value: float = draw(st.sampled_from([0.0, 5e-324, 1e308, 1.7976931348623157e308]))
        doc[name] = value
        return f"latency_ms = {value!r}", Expect(
            frozenset(), valid=True, check=lambda e: _equal(e.latency_ms, value)
        )
    count = draw(st.sampled_from([0, 2**31]))
    doc["tokens"]["prompt"] = count
    return f"tokens.prompt = {count}", Expect(
        frozenset(), valid=True, check=lambda e: _equal(e.tokens.prompt, count)
    )


def _equal(got: object, want: object) -> None:
    assert got == want, f"{want!r} arrived as {got!r}"


def m_timestamp(draw: st.DrawFn, doc: dict[str, Any]) -> tuple[str, Expect]:
    kind = draw(st.sampled_from(["naive", "stale", "future", "edge", "unix", "zoned"]))
    if kind == "naive":
        when = draw(IN_WINDOW).replace(tzinfo=None)
        doc["event_time"] = when.isoformat()
        return f"event_time {doc['event_time']} without a zone", reject("invalid_value")
    if kind in ("stale", "future"):  # bounds in UTC, then shown in any zone
        if kind == "stale":
            lo, hi = (
                datetime(1, 1, 3),
                (NOW - LIMITS.max_age - timedelta(microseconds=1)).replace(tzinfo=None),
            )
        else:
            lo, hi = (
                (NOW + LIMITS.max_skew + timedelta(microseconds=1)).replace(tzinfo=None),
                datetime(9999, 12, 29),
            )
        when = draw(st.datetimes(min_value=lo, max_value=hi)).replace(tzinfo=UTC)
        doc["event_time"] = when.astimezone(draw(ZONES)).isoformat()
        return f"event_time {doc['event_time']}", reject(f"{kind}_event_time")
    if kind == "edge":  # offsets that push the instant past year 1 or 9999 in UTC
        text = draw(
            st.sampled_from(
                [
                    "0001-01-01T00:00:00+00:01",
                    "0001-01-01T00:00:00+23:59",
                    "9999-12-31T23:59:59-00:01",
                    "9999-12-31T23:59:59.999999-23:59",
                ]
            )
        )
        doc["event_time"] = text
        return f"event_time {text}", reject("invalid_value")
    if kind == "unix":  # seconds or milliseconds since the epoch, as pydantic reads numbers
        when = draw(IN_WINDOW)
        ms = draw(st.booleans())
        doc["event_time"] = int(when.timestamp() * 1000) if ms else int(when.timestamp())
        return f"event_time {doc['event_time']} (unix {'ms' if ms else 's'})", Expect(frozenset(), valid=True)
    when = draw(IN_WINDOW)
    zone = draw(ZONES)
    doc["event_time"] = when.astimezone(zone).isoformat()
    return f"event_time {doc['event_time']}", Expect(
        frozenset(), valid=True, check=lambda e: _equal(e.event_time, when)
    )


MUTATIONS = {
    "drop": m_drop,
    "rename": m_rename,
    "unknown": m_unknown,
    "not_a_string": m_not_a_string,
    "wrong_shape": m_wrong_shape,
    "lax_number": m_lax_number,
    "huge_string": m_huge_string,
    "deep": m_deep,
    "unicode": m_unicode,
    "lone_surrogate": m_lone_surrogate,
    "surrogate_pair": m_surrogate_pair,
    "number_range": m_number_range,
    "number_edge": m_number_edge,
    "timestamp": m_timestamp,
}


def _document_bytes(doc: dict[str, Any], ascii_only: bool) -> bytes:
    if "__raw__" in doc:
        return str(doc["__raw__"]).encode("utf-8", "surrogatepass")
    return dumps(doc, ascii_only=ascii_only)


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@settings(FUZZ, max_examples=60)
@given(event=events(), ascii_only=st.booleans(), data=st.data())
def test_one_mutation_of_a_valid_event_gets_the_reason_it_calls_for(
    mutation: str, event: LLMEventIn, ascii_only: bool, data: st.DataObject
) -> None:
    doc = as_json(event)
    what, expect = MUTATIONS[mutation](data.draw, doc)
    outcome = decode(record(_document_bytes(doc, ascii_only)))
    expect.verify(outcome, what)
    if not isinstance(outcome, str):  # what was not mutated arrives unchanged
        assert outcome.event_id == doc.get("event_id", outcome.event_id)


@FUZZ
@given(event=events(), ascii_only=st.booleans(), data=st.data())
def test_several_mutations_still_end_as_an_event_or_a_dead_letter(
    event: LLMEventIn, ascii_only: bool, data: st.DataObject
) -> None:
    doc = as_json(event)
    names = data.draw(st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=2, max_size=4))
    for name in names:
        if "__raw__" in doc:
            break
        if name in ("unknown", "unicode") and not doc.get("messages"):
            continue  # an earlier mutation removed what this one edits
        try:
            MUTATIONS[name](data.draw, doc)
        except (KeyError, TypeError, IndexError, AttributeError):
            continue  # an earlier mutation changed the shape this one edits
    outcome = decode(record(_document_bytes(doc, ascii_only)))
    if isinstance(outcome, str):
        assert outcome in DECODE_REASONS - {DeadReason.INVALID_PROTOBUF, DeadReason.UNSUPPORTED_CONTENT_TYPE}


# --------------------------------------------------------------------------------------- protobuf


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


@st.composite
def wire_field(draw: st.DrawFn) -> bytes:
    """One field in protobuf wire format with any tag and wire type, its payload fitting or not."""
    number = draw(st.integers(0, 20) | st.integers(0, 2**29 - 1))
    wire_type = draw(st.integers(0, 7))
    tag = varint(number << 3 | wire_type)
    if wire_type == 0:
        return tag + varint(draw(st.integers(-(2**63), 2**64 - 1)))
    if wire_type == 1:
        return tag + draw(st.binary(min_size=8, max_size=8))
    if wire_type == 2:
        payload = draw(
            st.binary(max_size=40)
            | TEXT.map(lambda t: t.encode())
            | st.just(events_pb2.Message(role="user", content="x").SerializeToString())
        )
        length = draw(st.just(len(payload)) | st.integers(0, 2**32))
        return tag + varint(length) + payload
    if wire_type == 5:
        return tag + draw(st.binary(min_size=4, max_size=4))
    return tag + draw(st.binary(max_size=8))  # groups (3, 4) and the undefined 6, 7


@FUZZ
@given(fields=st.lists(wire_field(), max_size=12))
def test_random_tags_and_wire_types_are_an_event_or_a_dead_letter(fields: list[bytes]) -> None:
    outcome = decode(record(b"".join(fields), PROTOBUF))
    if isinstance(outcome, str):
        assert outcome in PROTO_REASONS


@FUZZ
@given(event=events(), data=st.data())
def test_truncated_protobuf_is_an_event_or_a_dead_letter(event: LLMEventIn, data: st.DataObject) -> None:
    whole = to_proto(event).SerializeToString()
    cut = data.draw(st.integers(0, len(whole) - 1))
    outcome = decode(record(whole[:cut], PROTOBUF))
    if isinstance(outcome, str):
        assert outcome in PROTO_REASONS


@FUZZ
@given(event=events(), count=st.integers(1, 6), data=st.data())
def test_unknown_protobuf_fields_are_skipped(event: LLMEventIn, count: int, data: st.DataObject) -> None:
    """Fields this contract does not define (numbers above 14, well-formed) do not change the event."""
    unknown = []
    for _ in range(count):
        number = data.draw(st.integers(15, 2**29 - 1))
        wire_type = data.draw(st.sampled_from([0, 1, 2, 5]))
        payload = {
            0: varint(data.draw(st.integers(0, 2**64 - 1))),
            1: bytes(8),
            2: varint(3) + b"abc",
            5: bytes(4),
        }[wire_type]
        unknown.append(varint(number << 3 | wire_type) + payload)
    value = to_proto(event).SerializeToString() + b"".join(unknown)
    assert decode(record(value, PROTOBUF)) == event


@FUZZ
@given(event=events(), name=st.sampled_from(list(events_pb2.LLMEvent.DESCRIPTOR.fields_by_name)))
def test_protobuf_without_a_value_gets_the_reason_it_calls_for(event: LLMEventIn, name: str) -> None:
    msg = to_proto(event)
    msg.ClearField(name)
    outcome = decode(record(msg.SerializeToString(), PROTOBUF))
    if name in ("event_id", "model", "messages"):  # proto3 sends no "missing": an empty value is invalid
        assert outcome == DeadReason.INVALID_VALUE, (name, outcome)
    elif name == "event_time":  # no timestamp is the epoch, far in the past
        assert outcome == DeadReason.STALE_EVENT_TIME, outcome
    else:  # optional, or empty allowed (an empty response is a response)
        assert isinstance(outcome, LLMEventIn), (name, outcome)
        assert getattr(outcome, name) == getattr(from_proto(msg), name)


@FUZZ
@given(event=events(), data=st.data())
def test_protobuf_values_out_of_range_are_invalid_values(event: LLMEventIn, data: st.DataObject) -> None:
    msg = to_proto(event)
    what = data.draw(
        st.sampled_from(["feedback", "seconds", "nanos", "tokens", "latency", "empty role", "long id"])
    )
    if what == "feedback":  # proto3 keeps enum numbers it does not know
        msg.feedback = data.draw(st.integers(3, 2**31 - 1) | st.integers(-(2**31), -1))
    elif what == "seconds":
        msg.event_time.seconds = data.draw(
            st.integers(253402300800, 2**63 - 1) | st.integers(-(2**63), -62135596801)
        )
    elif what == "nanos":
        msg.event_time.nanos = data.draw(st.integers(10**9, 2**31 - 1) | st.integers(-(2**31), -1))
    elif what == "tokens":
        msg.tokens.prompt = data.draw(st.integers(2**31 + 1, 2**32 - 1))
    elif what == "latency":
        msg.latency_ms = data.draw(st.sampled_from([float("nan"), float("-inf"), -1.0, -5e-324]))
    elif what == "empty role":
        msg.messages[0].role = ""
    else:
        msg.event_id = "x" * data.draw(st.integers(257, 5000))
    outcome = decode(record(msg.SerializeToString(), PROTOBUF))
    assert outcome == DeadReason.INVALID_VALUE, (what, outcome)


def test_mutations_cover_every_json_field() -> None:
    """The tables above name every field of the contract (a new field must be fuzzed too)."""
    assert set(FIELDS) == set(LLMEventIn.model_fields)
    assert set(STRINGS) <= set(FIELDS)
    assert {f.name for f in events_pb2.LLMEvent.DESCRIPTOR.fields} == set(FIELDS)
