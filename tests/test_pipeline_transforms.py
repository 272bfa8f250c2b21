"""The pipeline's transforms on Beam's test runner, and their pure cores."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, timedelta

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from datasketches import kll_floats_sketch

from evalstream.pipeline.cascade import judge_batch
from evalstream.pipeline.decode import Decode, DecodeLimits, decode_record
from evalstream.pipeline.dedupe import Dedupe, SeenIds, SharedSeenIds
from evalstream.pipeline.evaluate import EvaluateConfig
from evalstream.pipeline.judge_client import JudgeRejected, JudgeUnavailable
from evalstream.pipeline.records import Decoded, SampledEvent
from evalstream.pipeline.sampling import Sample, SamplingConfig, decide, unit_hash
from evalstream.pipeline.summarise import Summarise, _Acc, summaries_from
from evalstream.v1 import events_pb2, judge_pb2, summary_pb2, verdict_pb2
from evalstream.wire import topics
from evalstream.wire.cascade_config import CascadeConfig, DimensionCascade, TierRule, default_cascade
from evalstream.wire.contract import LLMEventIn, to_proto

from .pipeline_helpers import NOW, event_json, record

LIMITS = DecodeLimits(max_event_bytes=4096)


def reason_of(value: bytes, content_type: str = topics.CONTENT_TYPE_JSON) -> str:
    out = decode_record(record(value, content_type=content_type), now=NOW, limits=LIMITS)
    return out.error_type if isinstance(out, verdict_pb2.DeadLetter) else "ok"


def test_decode_accepts_json_and_protobuf() -> None:
    raw = event_json("e1")
    from_json = decode_record(record(raw), now=NOW, limits=LIMITS)
    assert isinstance(from_json, events_pb2.LLMEvent)
    wire = to_proto(LLMEventIn.model_validate_json(raw)).SerializeToString()
    from_pb = decode_record(record(wire, content_type=topics.CONTENT_TYPE_PROTOBUF), now=NOW, limits=LIMITS)
    assert from_pb == from_json


@pytest.mark.parametrize(
    ("value", "content_type", "reason"),
    [
        (b"{not json", topics.CONTENT_TYPE_JSON, "invalid_json"),
        (b"\xff\xfe\x00garbage", topics.CONTENT_TYPE_JSON, "invalid_json"),
        (b"[1, 2]", topics.CONTENT_TYPE_JSON, "invalid_value"),
        (b"\x0a\xff\xff\xff", topics.CONTENT_TYPE_PROTOBUF, "invalid_protobuf"),
        (b"{}", "text/csv", "unsupported_content_type"),
        (b"x" * 5000, topics.CONTENT_TYPE_JSON, "oversized"),
    ],
)
def test_decode_rejects_bad_bytes(value: bytes, content_type: str, reason: str) -> None:
    assert reason_of(value, content_type) == reason


def test_decode_schema_errors_name_the_field() -> None:
    good = json.loads(event_json("e1"))
    missing = {k: v for k, v in good.items() if k != "model"}
    out = decode_record(record(json.dumps(missing).encode()), now=NOW, limits=LIMITS)
    assert isinstance(out, verdict_pb2.DeadLetter)
    assert (out.error_type, out.stage) == ("missing_field", "validate")
    assert "model" in out.message
    assert reason_of(json.dumps({**good, "colour": "red"}).encode()) == "unknown_field"
    assert reason_of(json.dumps({**good, "latency_ms": "fast"}).encode()) == "invalid_value"
    assert reason_of(json.dumps({**good, "event_id": ""}).encode()) == "invalid_value"
    assert reason_of(json.dumps({**good, "messages": []}).encode()) == "invalid_value"


def test_decode_time_window() -> None:
    good = json.loads(event_json("e1"))
    old = (NOW - timedelta(days=30)).isoformat()
    ahead = (NOW + timedelta(hours=2)).isoformat()
    assert reason_of(json.dumps({**good, "event_time": old}).encode()) == "stale_event_time"
    assert reason_of(json.dumps({**good, "event_time": ahead}).encode()) == "future_event_time"
    naive = json.dumps({**good, "event_time": "2026-11-24T11:59:00"}).encode()
    assert reason_of(naive) == "invalid_value"


def test_dead_letter_keeps_source_and_truncates_raw() -> None:
    big = b"{" + b"x" * 200_000
    out = decode_record(
        record(big, offset=42, partition=3), now=NOW, limits=DecodeLimits(max_event_bytes=10**6)
    )
    assert isinstance(out, verdict_pb2.DeadLetter)
    assert (out.source_topic, out.source_partition, out.source_offset) == ("llm.events", 3, 42)
    assert out.raw_truncated and out.raw_size == len(big) and len(out.raw) < len(big)
    assert out.raw == big[: len(out.raw)]


def test_decode_transform_splits_outputs() -> None:
    """Each element is a batch; each batch's events and dead letters come out as batches."""
    records = [record(event_json(f"e{i}"), i) for i in range(5)] + [record(b"nope", 5)]
    with BeamTestPipeline() as p:
        out = p | beam.Create([records[:3], records[3:]]) | Decode(now=NOW, limits=LIMITS)
        assert_that(
            out.events | "ids" >> beam.Map(lambda batch: sorted(d.event.event_id for d in batch)),
            equal_to([["e0", "e1", "e2"], ["e3", "e4"]]),
        )
        assert_that(
            out.dead | "why" >> beam.Map(lambda batch: [d.error_type for d in batch]),
            equal_to([["invalid_json"]]),
            label="dead",
        )


def _decoded(event_id: str, offset: int, partition: int = 0) -> Decoded:
    rec = record(event_json(event_id), offset, partition=partition)
    event = decode_record(rec, now=NOW, limits=LIMITS)
    assert isinstance(event, events_pb2.LLMEvent)
    return Decoded(record=rec, event=event)


def test_dedupe_keeps_first_copy_and_dead_letters_the_rest() -> None:
    items = [
        _decoded("a", 5),
        _decoded("a", 2),
        _decoded("b", 3),
        _decoded("a", 9, partition=1),
        _decoded("old", 4),
    ]
    with BeamTestPipeline() as p:
        out = p | beam.Create([items]) | Dedupe(seen=frozenset({"old"}), now=NOW)
        assert_that(
            out.events | beam.FlatMap(lambda batch: [(d.event.event_id, d.record.offset) for d in batch]),
            equal_to([("a", 2), ("b", 3)]),
        )
        assert_that(
            out.dead
            | "dead"
            >> beam.FlatMap(lambda batch: [(d.event_id, d.source_offset, d.error_type) for d in batch]),
            equal_to(
                [
                    ("a", 5, "duplicate_event_id"),
                    ("a", 9, "duplicate_event_id"),
                    ("old", 4, "duplicate_event_id"),
                ]
            ),
            label="dead",
        )


def test_dedupe_reads_a_shared_window_without_copying_it() -> None:
    seen = SeenIds(capacity=10)
    seen.add_all(["old"])
    ref = SharedSeenIds(seen)
    assert pickle.loads(pickle.dumps(ref)).resolve() is seen
    with BeamTestPipeline() as p:
        out = p | beam.Create([[_decoded("old", 1), _decoded("new", 2)]]) | Dedupe(seen=ref, now=NOW)
        assert_that(out.events | beam.Map(lambda b: [d.event.event_id for d in b]), equal_to([["new"]]))
        assert_that(
            out.dead | "dead" >> beam.Map(lambda b: [d.event_id for d in b]),
            equal_to([["old"]]),
            label="dead",
        )


def test_seen_ids_is_bounded() -> None:
    seen = SeenIds(capacity=3)
    seen.add_all(["a", "b", "c", "d"])
    assert seen.snapshot() == {"b", "c", "d"}
    seen.add_all(["b", "e"])  # b refreshed, c evicted
    assert seen.snapshot() == {"d", "b", "e"}


def _event(event_id: str, **fields: object) -> events_pb2.LLMEvent:
    return events_pb2.LLMEvent(event_id=event_id, model="m1", route="chat", response="r", **fields)  # type: ignore[arg-type]


def test_sampling_is_deterministic_and_close_to_the_rate() -> None:
    config = SamplingConfig(default_rate=0.2, models={"m2": 0.0}, routes={"m1/vip": 1.0})
    ids = [f"id-{i}" for i in range(20_000)]
    chosen = [decide(_event(i), config) is not None for i in ids]
    assert chosen == [decide(_event(i), config) is not None for i in ids]
    assert 0.18 < sum(chosen) / len(ids) < 0.22
    assert all(0 <= unit_hash(i) < 1 for i in ids[:100])
    assert decide(events_pb2.LLMEvent(event_id="x", model="m2"), config) is None
    vip = decide(events_pb2.LLMEvent(event_id="x", model="m1", route="vip"), config)
    assert vip is not None and vip.sample_rate == 1.0 and not vip.forced
    forced = decide(
        events_pb2.LLMEvent(event_id="x", model="m2", feedback=events_pb2.FEEDBACK_NEGATIVE), config
    )
    assert forced is not None and forced.forced
    assert decide(events_pb2.LLMEvent(event_id="x", model="m2", finish_reason="length"), config) is not None


def test_sample_transform_partitions_everything() -> None:
    events = [_event(f"id-{i}") for i in range(300)]
    config = SamplingConfig(default_rate=0.5)
    expected = sum(decide(e, config) is not None for e in events)
    with BeamTestPipeline() as p:
        out = p | beam.Create([events[:100], events[100:]]) | Sample(config)
        assert_that(out.sampled | beam.Map(len) | beam.CombineGlobally(sum), equal_to([expected]))
        assert_that(
            out.unsampled | "n" >> beam.Map(len) | "sum" >> beam.CombineGlobally(sum),
            equal_to([300 - expected]),
            label="u",
        )


# --- the cascade core, with fakes of the judge call (a Protocol), never of our code ---

CASCADE = CascadeConfig(
    version="t1",
    dimensions={
        "refusal": DimensionCascade(tiers=[TierRule(tier=0, threshold=0.9), TierRule(tier=2, threshold=0.7)]),
        "format": DimensionCascade(tiers=[TierRule(tier=0, threshold=0.0)]),
    },
)


def _sampled(event_id: str) -> SampledEvent:
    return SampledEvent(event=_event(event_id), sample_rate=0.5, forced=False)


class FakeJudges:
    """Per tier, a confidence per item id; records every request."""

    def __init__(
        self, confidence: dict[int, dict[str, float]], fail: dict[int, Exception] | None = None
    ) -> None:
        self.confidence = confidence
        self.fail = fail or {}
        self.requests: list[tuple[int, list[str], list[str]]] = []

    def __call__(self, tier: int, request: judge_pb2.JudgeRequest) -> judge_pb2.JudgeResponse:
        ids = [i.item_id for i in request.items]
        self.requests.append((tier, ids, list(request.dimensions)))
        if tier in self.fail:
            raise self.fail[tier]
        results = []
        for item_id in ids:
            conf = self.confidence[tier][item_id]
            if conf < 0:
                results.append(judge_pb2.ItemResult(item_id=item_id, error="boom", error_type="model_error"))
                continue
            results.append(
                judge_pb2.ItemResult(
                    item_id=item_id,
                    judgements=[
                        verdict_pb2.Judgement(
                            dimension=d,
                            label=f"{d}-t{tier}",
                            confidence=conf,
                            judge=f"j{tier}",
                            cost=verdict_pb2.Cost(input_tokens=10 * tier, latency_ms=1.0),
                        )
                        for d in request.dimensions
                    ],
                )
            )
        return judge_pb2.JudgeResponse(results=results, tier=tier)


def test_cascade_escalates_by_threshold_and_audits_the_unsure() -> None:
    judges = FakeJudges(
        {0: {"sure": 0.95, "unsure": 0.5, "hopeless": 0.1}, 2: {"unsure": 0.8, "hopeless": 0.3}}
    )
    out = judge_batch(
        [_sampled("sure"), _sampled("unsure"), _sampled("hopeless")], cascade=CASCADE, call=judges, now=NOW
    )
    assert [r[:2] for r in judges.requests] == [
        (0, ["sure", "unsure", "hopeless"]),
        (2, ["unsure", "hopeless"]),
    ]
    assert judges.requests[1][2] == ["refusal"]  # format was decided at tier 0
    by_id = {v.event_id: {d.dimension: d for d in v.dimensions} for v in out.verdicts}
    assert by_id["sure"]["refusal"].deciding_tier == 0 and list(by_id["sure"]["refusal"].tiers_tried) == [0]
    unsure = by_id["unsure"]["refusal"]
    assert (unsure.deciding_tier, list(unsure.tiers_tried), unsure.label, unsure.needs_audit) == (
        2,
        [0, 2],
        "refusal-t2",
        False,
    )
    assert unsure.cost.input_tokens == 20 and unsure.cost.latency_ms == 2.0
    hopeless = by_id["hopeless"]["refusal"]
    assert hopeless.needs_audit and hopeless.deciding_tier == 2
    assert [v.event_id for v in out.audits] == ["hopeless"]
    assert out.dead == [] and out.calls == {0: 1, 2: 1}
    assert all(v.sample_rate == 0.5 and v.cascade_version == "t1" for v in out.verdicts)


def test_cascade_failures_escalate_then_dead_letter() -> None:
    down = JudgeUnavailable("tier 0 down", tier=0, target="x")
    judges = FakeJudges({2: {"a": 0.9, "b": -1.0}}, fail={0: down})
    out = judge_batch([_sampled("a"), _sampled("b")], cascade=CASCADE, call=judges, now=NOW)
    # format has no later tier: tier 0 down kills it for both; refusal escalated to tier 2.
    assert out.verdicts == []
    assert sorted((d.event_id, d.error_type, d.stage) for d in out.dead) == [
        ("a", "judge_unavailable", "judge"),
        ("b", "judge_unavailable", "judge"),
    ]
    assert "format" in out.dead[0].message
    assert events_pb2.LLMEvent.FromString(out.dead[0].raw).event_id == "a"
    rejected = FakeJudges({0: {"a": 0.9}}, fail={2: JudgeRejected("bad", tier=2, target="y")})
    lone = CascadeConfig(
        version="t", dimensions={"refusal": DimensionCascade(tiers=[TierRule(tier=2, threshold=0.5)])}
    )
    out2 = judge_batch([_sampled("a")], cascade=lone, call=rejected, now=NOW)
    assert [d.error_type for d in out2.dead] == ["judge_rejected"]


def test_summaries_balance_and_match_between_beam_and_pure() -> None:
    unsampled = [_event(f"u{i}") for i in range(3)]
    verdicts = [
        verdict_pb2.Verdict(
            event_id=f"v{i}",
            model="m1",
            route="chat",
            response_chars=10 * i,
            dimensions=[
                verdict_pb2.DimensionVerdict(
                    dimension="refusal",
                    label="full_refusal",
                    score=0.9,
                    confidence=0.8,
                    deciding_tier=0,
                    tiers_tried=[0],
                )
            ],
        )
        for i in range(4)
    ]
    dead = [
        verdict_pb2.DeadLetter(error_type="invalid_json"),
        verdict_pb2.DeadLetter(error_type="duplicate_event_id", model="m1"),
    ]
    elements: list[object] = [*unsampled, *verdicts, *dead]
    pure = summaries_from(elements, "batch-1")
    event_level = [s for s in pure if s.dimension == ""]
    assert sum(s.events_in for s in event_level) == 9
    assert sum(s.unsampled + s.judged + s.dead_lettered for s in event_level) == 9
    assert sum(s.duplicates for s in event_level) == 1
    refusal = [s for s in pure if s.dimension == "refusal"]
    assert (
        len(refusal) == 1
        and refusal[0].label_counts["full_refusal"] == 4
        and refusal[0].calls_by_tier[0] == 4
    )
    assert all(s.batch_id == "batch-1" for s in pure)

    def without_sketches(summary: summary_pb2.Summary) -> bytes:
        # KLL sketches merged in another order serialize differently; compare what they hold instead.
        sizes = [
            kll_floats_sketch.deserialize(b).n if b else 0
            for b in (summary.response_chars_sketch, summary.score_sketch)
        ]
        copy = summary_pb2.Summary()
        copy.CopyFrom(summary)
        copy.ClearField("response_chars_sketch")
        copy.ClearField("score_sketch")
        copy.ClearField("response_stat_sketches")
        stat_sizes = {
            k: kll_floats_sketch.deserialize(b).n for k, b in summary.response_stat_sketches.items()
        }
        return copy.SerializeToString(deterministic=True) + repr((sizes, sorted(stat_sizes.items()))).encode()

    assert (
        sum(
            kll_floats_sketch.deserialize(s.response_chars_sketch).n
            for s in event_level
            if s.response_chars_sketch
        )
        == 7
    )
    with BeamTestPipeline() as p:
        # three batches: their partials are merged per key
        out = p | beam.Create([unsampled, verdicts, dead]) | Summarise("batch-1")
        assert_that(out | beam.Map(without_sketches), equal_to([without_sketches(s) for s in pure]))


def test_embedding_statistics_of_the_probe_sample_go_into_sketches_and_beam_agrees() -> None:
    """Verdicts in the probe's sample add their statistics, one sketch per statistic; verdicts outside
    it (statistics from an escalation) add none; probe calls and failures are counted."""
    rng = np.random.default_rng(5)
    cosine, pc1 = rng.uniform(-0.2, 0.9, 150), rng.normal(0, 0.3, 150)

    def verdict(i: int, *, probe: verdict_pb2.EmbeddingProbe | None, stats: bool) -> verdict_pb2.Verdict:
        v = verdict_pb2.Verdict(event_id=f"v{i}", model="m1", route="chat", response_chars=5)
        if stats:
            v.response_stats.update({"embedding_centroid_cosine": cosine[i], "embedding_pc1": pc1[i]})
        if probe is not None:
            v.embedding_probe.CopyFrom(probe)
        return v

    called = verdict_pb2.EmbeddingProbe(tier=1, called=True)
    seen = verdict_pb2.EmbeddingProbe(tier=1, called=False)  # tier 1 had judged it already
    failed = verdict_pb2.EmbeddingProbe(tier=1, called=True, error="embedding probe: circuit open")
    elements: list[object] = [
        *(verdict(i, probe=called, stats=True) for i in range(0, 100)),
        *(verdict(i, probe=seen, stats=True) for i in range(100, 120)),
        *(verdict(i, probe=None, stats=True) for i in range(120, 150)),  # escalated, not in the sample
        *(verdict(i, probe=failed, stats=False) for i in range(150, 160)),
    ]
    (event_level,) = summaries_from(elements, "b")
    assert event_level.embedding_probe_events == 130 and event_level.embedding_probe_failures == 10
    assert dict(event_level.calls_by_tier) == {1: 110}
    assert sorted(event_level.response_stat_sketches) == ["embedding_centroid_cosine", "embedding_pc1"]
    for name, values in (("embedding_centroid_cosine", cosine[:120]), ("embedding_pc1", pc1[:120])):
        sk = kll_floats_sketch.deserialize(event_level.response_stat_sketches[name])
        assert not sk.is_estimation_mode() and sk.n == 120  # exact: it holds every value
        stored = np.sort(values.astype(np.float32))
        assert sk.get_quantiles([0.0, 0.5, 1.0], True) == [stored[0], stored[59], stored[-1]]
    with BeamTestPipeline() as p:
        out = p | beam.Create([elements[:70], elements[70:]]) | Summarise("b")
        assert_that(
            out
            | beam.Map(
                lambda s: (
                    s.embedding_probe_events,
                    s.embedding_probe_failures,
                    dict(s.calls_by_tier),
                    {k: kll_floats_sketch.deserialize(b).n for k, b in s.response_stat_sketches.items()},
                )
            ),
            equal_to([(130, 10, {1: 110}, {"embedding_centroid_cosine": 120, "embedding_pc1": 120})]),
        )


def test_records_survive_pickling() -> None:
    """Everything that crosses a Beam boundary round-trips through the pickle coder."""
    coder = beam.coders.registry.get_coder(object)
    acc = _Acc(events_in=2)
    acc.observe(3.0)
    acc.observe_stat("embedding_pc1", -0.25)
    for value in (record(b"x", 7), _decoded("a", 1), _sampled("s"), acc):
        again = coder.decode(coder.encode(value))
        assert type(again) is type(value)
        if isinstance(value, _Acc):
            assert again.events_in == 2 and again.sketch is not None and again.sketch.get_quantile(0.5) == 3.0
            assert again.stat_sketches["embedding_pc1"].get_quantile(0.5) == -0.25
        else:
            assert again == value
    assert pickle.loads(pickle.dumps(CASCADE)) == CASCADE


def test_seen_ids_claims_last_until_commit_or_release() -> None:
    seen = SeenIds(capacity=10)
    seen.claims("b1").update({"x": 1, "y": 2})
    assert "x" in seen and len(seen) == 0  # claimed, not yet in the window
    seen.commit("b1", ["x"])  # y was dead-lettered by the judge stage: it may be redriven
    assert "x" in seen and "y" not in seen and len(seen) == 1
    seen.claims("b2")["z"] = 3
    seen.release("b2")
    assert "z" not in seen


def unsampled_config() -> EvaluateConfig:
    """Judge requests of 2, nothing sampled (rate 0): no judge is called."""
    return EvaluateConfig(
        endpoints={0: "127.0.0.1:9"},  # never called: nothing is sampled
        cascade=default_cascade(),
        sampling=SamplingConfig(default_rate=0.0, always_finish_reasons=frozenset()),
        limits=LIMITS,
        batch_size=2,
    )


def test_a_batch_in_parts_is_deduplicated_as_one_and_accounted_for() -> None:
    """``process_batch`` on Beam's in-process runner: a batch enters in parts of two judge requests
    (here 4 records); a copy in a later part, or of an id claimed by an uncommitted batch, is a
    duplicate. Nothing is sampled (rate 0), so no judge is called."""
    from evalstream.pipeline.bounded import process_batch

    config = unsampled_config()
    ids = ["a", "b", "c", "d", "e", "a", "f", "earlier", "b", "g"]
    records = [record(event_json(event_id), offset) for offset, event_id in enumerate(ids)]
    records.append(record(b"nope", len(ids)))
    seen = SeenIds(capacity=100)
    seen.claims("previous")["earlier"] = 0  # judged in a batch whose transaction is still open
    shared = SharedSeenIds(seen)
    result = process_batch(list(reversed(records)), config, now=NOW, batch_id="b1", seen=shared)
    assert result.accounted == len(records) and result.verdicts == []
    assert sorted(result.unsampled_ids) == ["a", "b", "c", "d", "e", "f", "g"]
    dead = sorted(
        (d.error_type, d.source_offset, d.message)
        for d in (verdict_pb2.DeadLetter.FromString(v) for _, v in result.dead)
    )
    assert [(reason, offset) for reason, offset, _ in dead] == [
        ("duplicate_event_id", 5),
        ("duplicate_event_id", 7),
        ("duplicate_event_id", 8),
        ("invalid_json", 10),
    ]
    assert "(offset 0)" in dead[0][2] and "an earlier batch" in dead[1][2] and "(offset 1)" in dead[2][2]
    assert sorted(k for k, _ in result.dead) == [b"a", b"b", b"earlier", b"llm.events:0:10"]
    summaries = [summary_pb2.Summary.FromString(v) for _, v in result.summaries]
    totals = [
        sum(getattr(s, field) for s in summaries if s.dimension == "")
        for field in ("events_in", "unsampled", "dead_lettered", "duplicates")
    ]
    assert totals == [11, 7, 4, 3]
    assert set(seen.claims("b1")) == {"a", "b", "c", "d", "e", "f", "g"}


def test_one_pipeline_runs_batch_after_batch_with_each_batch_clock_and_id() -> None:
    """The runner's ``BatchPipeline`` is built once and run per batch: each run reads its own records,
    clock and batch id (through the ``BatchClock``), ids committed after one batch are duplicates in
    the next, and nothing of a batch's outputs is left over in the next."""
    from evalstream.pipeline.bounded import BatchPipeline, process_batch

    config = unsampled_config()
    seen = SeenIds(capacity=100)
    later = NOW + timedelta(minutes=5)
    with BatchPipeline(config, seen=SharedSeenIds(seen)) as pipeline:
        batch = [record(event_json(i, when=NOW), n) for n, i in enumerate(["a", "b", "c"])]
        first = pipeline.run(batch, now=NOW, batch_id="b1")
        seen.commit("b1", first.unsampled_ids)
        second = pipeline.run(
            [record(event_json(i, when=later), 10 + n) for n, i in enumerate(["b", "d"])]
            + [record(b"nope", 12)],
            now=later,
            batch_id="b2",
        )
    assert sorted(first.unsampled_ids) == ["a", "b", "c"] and first.dead == []
    assert second.unsampled_ids == ["d"] and second.accounted == 3
    dead = sorted(
        (letter.error_type, letter.failed_at.ToDatetime(tzinfo=UTC))
        for letter in (verdict_pb2.DeadLetter.FromString(v) for _, v in second.dead)
    )
    assert dead == [("duplicate_event_id", later), ("invalid_json", later)]
    for result, batch_id, events in ((first, "b1", 3), (second, "b2", 3)):
        summaries = [summary_pb2.Summary.FromString(v) for _, v in result.summaries]
        assert {s.batch_id for s in summaries} == {batch_id}
        assert sum(s.events_in for s in summaries if s.dimension == "") == events
    # The same batch through a pipeline of its own gives the same outputs.
    alone = process_batch(batch, config, now=NOW, batch_id="b1")
    assert sorted(alone.unsampled_ids) == sorted(first.unsampled_ids)
    assert sorted(alone.summaries) == sorted(first.summaries)
