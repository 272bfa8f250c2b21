"""Replay: pure event building, seeding, malformed kinds, pacing; then a real broker round trip."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from pydantic import ValidationError
from typer.testing import CliRunner

from evalstream.cli.app import app
from evalstream.evaluation.datasets import XSTestRecord, read_xstest
from evalstream.local.broker import EmbeddedBroker
from evalstream.runtime.settings import KafkaSettings
from evalstream.tools.replay import (
    FAR,
    MALFORMED_KINDS,
    MAX_RECORD_BYTES,
    OVERSIZED_RESPONSE_BYTES,
    REQUIRED_FIELDS,
    UNKNOWN_FIELDS,
    WRONG_TYPES,
    Done,
    Encoding,
    EventKind,
    OutgoingRecord,
    RateLimiter,
    ReplayError,
    ReplayOptions,
    Slot,
    encode_slot,
    estimate_tokens,
    plan_replay,
    publish,
    run_replay,
)
from evalstream.v1 import events_pb2
from evalstream.wire import topics
from evalstream.wire.contract import LLMEventIn, from_proto

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PIPELINE_MAX_EVENT_BYTES = 1024 * 1024  # the pipeline's default limit, which oversized events must pass


@pytest.fixture(scope="module")
def records(shared_data: Path) -> list[XSTestRecord]:
    return read_xstest(shared_data)


@dataclass
class FakeClock:
    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class ListSink:
    """A RecordSink that keeps what it is given; ``fail`` names kinds it refuses."""

    fail: frozenset[EventKind] = frozenset()
    records: list[OutgoingRecord] = field(default_factory=list)
    flushed: int = 0

    def send(self, record: OutgoingRecord, done: Done) -> None:
        self.records.append(record)
        done(RuntimeError("refused") if record.kind in self.fail else None)

    def flush(self) -> None:
        self.flushed += 1


def slot_of(record: XSTestRecord, kind: EventKind, variant: int = 0) -> Slot:
    return Slot(index=0, pass_index=0, record=record, kind=kind, event_id="run-1-evt", variant=variant)


# --- good events -----------------------------------------------------------------------------------


def test_good_events_carry_the_data(records: list[XSTestRecord]) -> None:
    plan = list(plan_replay(records, seed=1, run_id="r1"))
    assert len(plan) == 2250 and {s.kind for s in plan} == {EventKind.GOOD}
    for slot in plan:
        out = encode_slot(slot, now=NOW, encoding=Encoding.JSON)
        event = LLMEventIn.model_validate_json(out.value)
        rec = slot.record
        assert out.key == event.event_id.encode() == slot.event_id.encode()
        assert out.headers() == [(topics.CONTENT_TYPE_HEADER, topics.CONTENT_TYPE_JSON.encode())]
        assert event.event_id == f"r1-xstest_v2-{rec.model}-{rec.prompt_id}-0"
        assert (event.model, event.model_version) == (rec.model, rec.model_version)
        assert [(m.role, m.content) for m in event.messages] == [("user", rec.prompt)]
        assert event.response == rec.completion
        assert event.event_time == NOW
        assert event.labels == {
            "dataset": "xstest_v2",
            "prompt_id": rec.prompt_id,
            "prompt_type": rec.prompt_type,
        }
        assert event.tokens.prompt == estimate_tokens(rec.prompt) > 0
        assert event.tokens.completion == estimate_tokens(rec.completion) > 0


def test_llama2orig_version_from_source_md(records: list[XSTestRecord]) -> None:
    slot = next(s for s in plan_replay(records, seed=0, run_id="r") if s.record.model == "llama2orig")
    event = LLMEventIn.model_validate_json(encode_slot(slot, now=NOW, encoding=Encoding.JSON).value)
    assert (event.model, event.model_version) == ("llama2orig", "Llama-2-70b-chat/original-system-prompt")


def test_protobuf_events_round_trip(records: list[XSTestRecord]) -> None:
    for slot in list(plan_replay(records, seed=2, run_id="r"))[:300]:
        as_json = encode_slot(slot, now=NOW, encoding=Encoding.JSON)
        as_proto = encode_slot(slot, now=NOW, encoding=Encoding.PROTOBUF)
        assert as_proto.content_type == topics.CONTENT_TYPE_PROTOBUF
        decoded = from_proto(events_pb2.LLMEvent.FromString(as_proto.value))
        assert decoded == LLMEventIn.model_validate_json(as_json.value)


def test_token_estimate() -> None:
    assert [estimate_tokens(t) for t in ("", "abc", "abcd", "abcde")] == [0, 1, 1, 2]


# --- seeding and ids -------------------------------------------------------------------------------


def fingerprint(plan: list[Slot]) -> list[tuple[str, EventKind, int]]:
    return [(s.event_id, s.kind, s.variant) for s in plan]


def test_same_seed_same_plan_other_seed_other_order(records: list[XSTestRecord]) -> None:
    a = list(plan_replay(records, seed=7, run_id="r", malformed=0.05, repeat=2))
    b = list(plan_replay(records, seed=7, run_id="r", malformed=0.05, repeat=2))
    c = list(plan_replay(records, seed=8, run_id="r", malformed=0.05, repeat=2))
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(c)
    assert sorted(s.event_id for s in a) != [s.event_id for s in a]  # shuffled, not file order


def test_each_pass_is_a_permutation_with_its_own_ids(records: list[XSTestRecord]) -> None:
    plan = list(plan_replay(records, seed=3, run_id="r", repeat=3))
    assert len(plan) == 3 * 2250
    passes = [plan[i * 2250 : (i + 1) * 2250] for i in range(3)]
    keys = {(r.model, r.prompt_id) for r in records}
    for n, one in enumerate(passes):
        assert {(s.record.model, s.record.prompt_id) for s in one} == keys
        assert {s.pass_index for s in one} == {n}
    assert [s.record for s in passes[0]] != [s.record for s in passes[1]]
    assert len({s.event_id for s in plan}) == len(plan)
    assert [s.index for s in plan] == list(range(len(plan)))


def test_run_id_changes_ids(records: list[XSTestRecord]) -> None:
    one = {s.event_id for s in plan_replay(records, seed=0, run_id="aaa")}
    two = {s.event_id for s in plan_replay(records, seed=0, run_id="bbb")}
    assert not one & two


def test_limit_and_lazy_repeat(records: list[XSTestRecord]) -> None:
    plan = plan_replay(records, seed=0, run_id="r", repeat=10_000, limit=2500)
    assert isinstance(plan, Iterator)
    slots = list(plan)
    assert len(slots) == 2500 and slots[-1].pass_index == 1
    with pytest.raises(ValueError, match="malformed share"):
        plan_replay(records, seed=0, run_id="r", malformed=1.5)


# --- malformed kinds -------------------------------------------------------------------------------


def test_malformed_share_spread_over_all_kinds(records: list[XSTestRecord]) -> None:
    plan = list(plan_replay(records, seed=11, run_id="r", malformed=0.05))
    kinds = Counter(s.kind for s in plan)
    bad = round(0.05 * 2250)
    assert sum(n for k, n in kinds.items() if k is not EventKind.GOOD) == bad
    assert set(kinds) == {EventKind.GOOD, *MALFORMED_KINDS}
    per_kind = bad // len(MALFORMED_KINDS)
    assert all(per_kind <= kinds[k] <= per_kind + 1 for k in MALFORMED_KINDS)


def test_duplicates_copy_an_earlier_good_slot_of_the_same_pass(records: list[XSTestRecord]) -> None:
    plan = list(plan_replay(records, seed=5, run_id="r", malformed=0.2, repeat=2))
    dups = [s for s in plan if s.kind is EventKind.DUPLICATE_EVENT_ID]
    assert dups
    for dup in dups:
        source = plan[dup.duplicate_of or 0]
        assert source.index < dup.index and source.kind is EventKind.GOOD and source.keep
        assert source.pass_index == dup.pass_index and source.event_id == dup.event_id


def test_every_malformed_share_even_all_of_it(records: list[XSTestRecord]) -> None:
    """With nothing good sent yet, no duplicate can be made: another kind takes its place."""
    plan = list(plan_replay(records[:50], seed=1, run_id="r", malformed=1.0))
    assert EventKind.GOOD not in {s.kind for s in plan}
    assert EventKind.DUPLICATE_EVENT_ID not in {s.kind for s in plan}


def rejected_types(value: bytes) -> set[str]:
    with pytest.raises(ValidationError) as info:
        LLMEventIn.model_validate_json(value)
    return {e["type"] for e in info.value.errors()}


@pytest.mark.parametrize("variant", range(40))
def test_invalid_json_is_not_json(records: list[XSTestRecord], variant: int) -> None:
    out = encode_slot(
        slot_of(records[variant], EventKind.INVALID_JSON, variant * 7919), now=NOW, encoding=Encoding.JSON
    )
    assert out.content_type == topics.CONTENT_TYPE_JSON
    assert rejected_types(out.value) == {"json_invalid"}
    with pytest.raises(json.JSONDecodeError):
        json.loads(out.value)


@pytest.mark.parametrize("variant", range(len(REQUIRED_FIELDS)))
def test_missing_field(records: list[XSTestRecord], variant: int) -> None:
    out = encode_slot(
        slot_of(records[0], EventKind.MISSING_FIELD, variant), now=NOW, encoding=Encoding.PROTOBUF
    )
    assert out.content_type == topics.CONTENT_TYPE_JSON  # a JSON defect, sent as JSON in either format
    assert REQUIRED_FIELDS[variant] not in json.loads(out.value)
    assert rejected_types(out.value) == {"missing"}


@pytest.mark.parametrize("variant", range(len(WRONG_TYPES)))
def test_wrong_type(records: list[XSTestRecord], variant: int) -> None:
    out = encode_slot(slot_of(records[1], EventKind.WRONG_TYPE, variant), now=NOW, encoding=Encoding.JSON)
    name, bad = WRONG_TYPES[variant]
    assert json.loads(out.value)[name] == bad
    kinds = rejected_types(out.value)
    assert kinds and not kinds & {"missing", "extra_forbidden", "json_invalid"}


@pytest.mark.parametrize("variant", range(len(UNKNOWN_FIELDS)))
def test_unknown_field(records: list[XSTestRecord], variant: int) -> None:
    out = encode_slot(slot_of(records[2], EventKind.UNKNOWN_FIELD, variant), now=NOW, encoding=Encoding.JSON)
    assert rejected_types(out.value) == {"extra_forbidden"}


@pytest.mark.parametrize("variant", range(20))
def test_protobuf_garbage(records: list[XSTestRecord], variant: int) -> None:
    out = encode_slot(
        slot_of(records[3], EventKind.PROTOBUF_GARBAGE, variant * 104729), now=NOW, encoding=Encoding.JSON
    )
    assert out.content_type == topics.CONTENT_TYPE_PROTOBUF
    with pytest.raises(DecodeError):
        events_pb2.LLMEvent.FromString(out.value)
    assert rejected_types(out.value) == {"json_invalid"}


@pytest.mark.parametrize("encoding", list(Encoding))
def test_oversized_is_valid_but_too_big_for_the_pipeline(
    records: list[XSTestRecord], encoding: Encoding
) -> None:
    out = encode_slot(slot_of(records[4], EventKind.OVERSIZED), now=NOW, encoding=encoding)
    assert PIPELINE_MAX_EVENT_BYTES < OVERSIZED_RESPONSE_BYTES < len(out.value) < MAX_RECORD_BYTES - 64 * 1024
    if encoding is Encoding.JSON:
        event = LLMEventIn.model_validate_json(out.value)
    else:
        event = from_proto(events_pb2.LLMEvent.FromString(out.value))
    assert event.response.startswith(records[4].completion)


@pytest.mark.parametrize(
    ("kind", "sign"), [(EventKind.STALE_EVENT_TIME, -1), (EventKind.FUTURE_EVENT_TIME, 1)]
)
def test_stale_and_future_are_valid_but_far_off(
    records: list[XSTestRecord], kind: EventKind, sign: int
) -> None:
    out = encode_slot(slot_of(records[5], kind), now=NOW, encoding=Encoding.JSON)
    assert LLMEventIn.model_validate_json(out.value).event_time == NOW + sign * FAR


def test_duplicate_is_not_encoded_alone(records: list[XSTestRecord]) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        encode_slot(slot_of(records[0], EventKind.DUPLICATE_EVENT_ID), now=NOW, encoding=Encoding.JSON)


# --- publishing to a fake sink, pacing --------------------------------------------------------------


def test_publish_counts_by_kind_and_copies_duplicates(records: list[XSTestRecord]) -> None:
    plan = list(plan_replay(records, seed=9, run_id="r", malformed=0.1, repeat=2))
    sink = ListSink()
    clock = FakeClock()
    report = publish(
        plan,
        sink=sink,
        topic="t",
        encoding=Encoding.JSON,
        run_id="r",
        seed=9,
        limiter=RateLimiter(rate=0, clock=clock, sleep=clock.sleep),
        now=lambda: NOW,
        clock=clock,
    )
    assert dict(report.sent) == Counter(s.kind for s in plan)
    assert report.total_sent == len(plan) == len(sink.records) and not report.failed
    assert report.expected_dead_letters == sum(1 for s in plan if s.kind is not EventKind.GOOD)
    assert sink.flushed == 1 and not clock.sleeps
    for slot, out in zip(plan, sink.records, strict=True):
        assert out.kind is slot.kind
        if slot.kind is EventKind.GOOD:
            LLMEventIn.model_validate_json(out.value)
        if slot.duplicate_of is not None:
            original = sink.records[slot.duplicate_of]
            assert (out.key, out.value, out.headers()) == (original.key, original.value, original.headers())


def test_publish_reports_refused_records(records: list[XSTestRecord]) -> None:
    plan = list(plan_replay(records[:200], seed=1, run_id="r", malformed=0.2))
    report = publish(
        plan,
        sink=ListSink(fail=frozenset({EventKind.OVERSIZED})),
        topic="t",
        encoding=Encoding.JSON,
        run_id="r",
        seed=1,
        limiter=RateLimiter(rate=0),
    )
    assert report.failed == {EventKind.OVERSIZED: sum(s.kind is EventKind.OVERSIZED for s in plan)}
    assert EventKind.OVERSIZED not in report.sent
    assert report.first_error and "oversized" in report.first_error


def test_rate_limiter_paces_with_a_fake_clock() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=100, clock=clock, sleep=clock.sleep)
    start = clock.now
    for _ in range(101):
        limiter.wait()
    assert clock.now - start == pytest.approx(1.0)
    assert len(clock.sleeps) == 100


def test_rate_limiter_catches_up_a_little_but_does_not_burst_after_a_stall() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=10, clock=clock, sleep=clock.sleep)
    limiter.wait()
    clock.now += 0.25  # work took longer than one interval: the next call goes at once
    limiter.wait()
    assert not clock.sleeps
    clock.now += 5.0  # a long stall: the schedule restarts instead of sending 50 at once
    limiter.wait()
    limiter.wait()
    assert clock.sleeps == [pytest.approx(0.1)]


def test_rate_zero_never_sleeps() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=0, clock=clock, sleep=clock.sleep)
    for _ in range(1000):
        limiter.wait()
    assert not clock.sleeps


def test_publish_at_a_rate_takes_the_planned_time(records: list[XSTestRecord]) -> None:
    clock = FakeClock()
    report = publish(
        list(plan_replay(records[:51], seed=0, run_id="r")),
        sink=ListSink(),
        topic="t",
        encoding=Encoding.JSON,
        run_id="r",
        seed=0,
        limiter=RateLimiter(rate=25, clock=clock, sleep=clock.sleep),
        now=lambda: NOW,
        clock=clock,
    )
    assert report.elapsed_s == pytest.approx(2.0)
    assert report.events_per_s == pytest.approx(25.5)


# --- real broker -----------------------------------------------------------------------------------


def read_back(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=MAX_RECORD_BYTES,
        fetch_max_bytes=4 * MAX_RECORD_BYTES,
    )
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        got: list = []
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                got.extend(batch)
        assert sum(end.values()) == expected, f"log end offsets {end} do not add up to {expected}"
        return got
    finally:
        consumer.close()


def test_replay_into_the_broker(broker: EmbeddedBroker, records: list[XSTestRecord], unique: str) -> None:
    topic = f"replay-{unique}"
    options = ReplayOptions(topic=topic, limit=200, seed=4, run_id=unique, malformed=0.05)
    try:
        report = run_replay(options, KafkaSettings(bootstrap=broker.bootstrap), show_progress=False)
        assert not report.failed, report.first_error
        assert report.total_sent == 200 and report.expected_dead_letters == 10
        # 10 bad inputs over 9 kinds: each kind at least once (a duplicate only once something good went out)
        assert set(report.sent) >= {EventKind.GOOD, *MALFORMED_KINDS} - {EventKind.DUPLICATE_EVENT_ID}

        got = read_back(broker.bootstrap, topic, report.total_sent)
        assert len(got) == report.total_sent
        assert {m.partition for m in got} == {0, 1, 2, 3}
        valid = 0
        for message in got:
            (content_type,) = [v.decode() for k, v in message.headers if k == topics.CONTENT_TYPE_HEADER]
            assert message.key
            if content_type == topics.CONTENT_TYPE_JSON and len(message.value) < PIPELINE_MAX_EVENT_BYTES:
                try:
                    event = LLMEventIn.model_validate_json(message.value)
                except ValidationError:
                    continue
                valid += abs(event.event_time - datetime.now(UTC)) < FAR / 2
        ids = Counter(m.key for m in got)
        duplicates = sum(n - 1 for n in ids.values())
        assert duplicates == report.sent.get(EventKind.DUPLICATE_EVENT_ID, 0)
        assert valid - duplicates == report.good
        assert max(len(m.value) for m in got) > OVERSIZED_RESPONSE_BYTES
    finally:  # several MB of oversized events: keep the session broker's state file small
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.delete_topics([topic])
        admin.close()


def test_replay_refuses_a_topic_too_small_for_oversized_events(broker: EmbeddedBroker, unique: str) -> None:
    topic = f"small-{unique}"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    options = ReplayOptions(topic=topic, limit=20, malformed=0.5)
    with pytest.raises(ReplayError, match=r"max\.message\.bytes=8388608"):
        run_replay(options, KafkaSettings(bootstrap=broker.bootstrap), show_progress=False)


def test_cli_replays_protobuf(broker: EmbeddedBroker, unique: str) -> None:
    topic = f"cli-{unique}"
    args = ["replay", "--topic", topic, "--limit", "30", "--format", "protobuf", "--models", "gpt4"]
    result = CliRunner().invoke(
        app, [*args, "--models", "llama2orig", "--bootstrap", broker.bootstrap, "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "expected dead letters" in result.output
    got = read_back(broker.bootstrap, topic, 30)
    events = [from_proto(events_pb2.LLMEvent.FromString(m.value)) for m in got]
    assert {e.model for e in events} <= {"gpt4", "llama2orig"} and len({e.event_id for e in events}) == 30
