"""The exporter's pure core: records in, values read back from each test's own registry."""

from __future__ import annotations

import json

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import CollectorRegistry, generate_latest

from evalstream.exporter.core import ExporterCore, Outcome, Stream
from evalstream.exporter.labels import LabelBudget, LabelName
from evalstream.exporter.settings import ExporterSettings
from evalstream.exporter.state import SavedState, StateError, StateFile, resume_plan
from evalstream.exporter.totals import Totals
from evalstream.v1 import summary_pb2, verdict_pb2

M = {"model": "m1", "model_version": "v1", "route": "chat"}


def _core(budget: LabelBudget | None = None) -> tuple[ExporterCore, CollectorRegistry]:
    registry = CollectorRegistry()
    return ExporterCore(registry, budget), registry


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _ts(seconds: float) -> Timestamp:
    return Timestamp(seconds=int(seconds), nanos=round((seconds % 1) * 1e9))


def _summary(**kw) -> summary_pb2.Summary:
    base = {"batch_id": "b1", "model": "m1", "model_version": "v1", "route": "chat", "window_start_unix": 60}
    return summary_pb2.Summary(**{**base, **kw})


def _dim(dimension: str, label: str, *, score: float = 0.0, deciding: int = 0, tried=(0,), **kw):
    return verdict_pb2.DimensionVerdict(
        dimension=dimension, label=label, score=score, deciding_tier=deciding, tiers_tried=list(tried), **kw
    )


def _verdict(*dims, model="m1", version="v1", route="chat", event_s=100.0, judged_s=101.5, forced=False):
    return verdict_pb2.Verdict(
        event_id="e",
        model=model,
        model_version=version,
        route=route,
        dimensions=list(dims),
        event_time=_ts(event_s),
        judged_at=_ts(judged_s),
        sample_rate=0.1,
        forced=forced,
    )


def test_event_level_summary_counts_every_outcome_and_dead_letter_reason():
    core, reg = _core()
    reasons = {"invalid_json": 2, "judge_unavailable": 3, "duplicate_event_id": 1}
    s = _summary(
        events_in=20, unsampled=8, judged=6, dead_lettered=6, duplicates=1, response_chars_sum=1234.0
    )
    s.dead_letter_reasons.update(reasons)
    assert core.apply_summary(s) is Outcome.APPLIED
    core.publish()
    assert _value(reg, "evalstream_events_total", **M) == 20
    assert _value(reg, "evalstream_events_unsampled_total", **M) == 8
    assert _value(reg, "evalstream_events_judged_total", **M) == 6
    assert _value(reg, "evalstream_events_sampled_total", **M) == 6 + 3  # judged + judge-stage failures
    assert _value(reg, "evalstream_events_duplicates_total", **M) == 1
    assert _value(reg, "evalstream_response_chars_total", **M) == 1234
    for reason, n in reasons.items():
        assert _value(reg, "evalstream_events_dead_lettered_total", **M, reason=reason) == n


def test_dead_letters_without_reasons_count_as_unknown_and_decode_failures_have_model_unknown():
    core, reg = _core()
    s = _summary(model="", model_version="", route="", events_in=5, dead_lettered=5)
    s.dead_letter_reasons["invalid_protobuf"] = 4
    core.apply_summary(s)
    core.publish()
    none = {"model": "unknown", "model_version": "unknown", "route": "unknown"}
    assert _value(reg, "evalstream_events_dead_lettered_total", **none, reason="invalid_protobuf") == 4
    assert _value(reg, "evalstream_events_dead_lettered_total", **none, reason="unknown") == 1
    # the accounting series exist (as zero) so that PromQL can check in = unsampled + judged + dead
    assert reg.get_sample_value("evalstream_events_unsampled_total", none) == 0
    assert reg.get_sample_value("evalstream_events_judged_total", none) == 0


def test_dimension_summaries_are_ignored_their_counts_come_from_verdicts():
    core, reg = _core()
    s = _summary(dimension="refusal", judged=3, audits=2)
    s.label_counts["full_refusal"] = 3
    assert core.apply_summary(s) is Outcome.IGNORED
    core.publish()
    assert (
        reg.get_sample_value(
            "evalstream_verdict_labels_total", {**M, "dimension": "refusal", "label": "full_refusal"}
        )
        is None
    )


def test_verdict_labels_tiers_escalations_audits_cost_and_latency():
    core, reg = _core()
    cost = verdict_pb2.Cost(input_tokens=120, output_tokens=7, latency_ms=30.0, usd=0.002)
    core.apply_verdict(
        _verdict(
            _dim(
                "refusal",
                "full_refusal",
                score=0.9,
                deciding=0,
                tried=(0,),
                cost=verdict_pb2.Cost(latency_ms=0.2),
            ),
            _dim("quality", "good", score=8.0, deciding=2, tried=(0, 1, 2), cost=cost, needs_audit=True),
            forced=True,
        )
    )
    core.publish()
    q = {**M, "dimension": "quality"}
    r = {**M, "dimension": "refusal"}
    assert _value(reg, "evalstream_verdicts_total", **M) == 1
    assert _value(reg, "evalstream_verdicts_forced_total", **M) == 1
    assert _value(reg, "evalstream_verdict_labels_total", **r, label="full_refusal") == 1
    assert _value(reg, "evalstream_verdict_labels_total", **q, label="good") == 1
    assert _value(reg, "evalstream_judge_decisions_total", **q, tier="2") == 1
    assert _value(reg, "evalstream_judge_decisions_total", **r, tier="0") == 1
    for tier in ("0", "1", "2"):
        assert _value(reg, "evalstream_judge_calls_total", **q, tier=tier) == 1
    assert _value(reg, "evalstream_judge_escalations_total", **q) == 2
    assert _value(reg, "evalstream_judge_escalations_total", **r) == 0
    assert _value(reg, "evalstream_judge_audits_total", **q) == 1
    assert _value(reg, "evalstream_judge_audits_total", **r) == 0
    assert _value(reg, "evalstream_judge_input_tokens_total", **q, tier="2") == 120
    assert _value(reg, "evalstream_judge_output_tokens_total", **q, tier="2") == 7
    assert _value(reg, "evalstream_judge_cost_usd_total", **q, tier="2") == pytest.approx(0.002)
    lat = {"dimension": "quality", "tier": "2"}
    assert _value(reg, "evalstream_judge_latency_seconds_bucket", **lat, le="0.025") == 0
    assert _value(reg, "evalstream_judge_latency_seconds_bucket", **lat, le="0.05") == 1
    assert _value(reg, "evalstream_judge_latency_seconds_sum", **lat) == pytest.approx(0.03)
    assert _value(reg, "evalstream_verdict_lag_seconds_bucket", le="1.0") == 0
    assert _value(reg, "evalstream_verdict_lag_seconds_bucket", le="2.0") == 1
    assert _value(reg, "evalstream_verdict_lag_seconds_sum") == pytest.approx(1.5)


def test_embedding_probe_calls_count_as_tier_calls_with_no_dimension_and_failures_are_counted():
    core, reg = _core()
    refusal = _dim("refusal", "full_refusal", deciding=0, tried=(0,))
    plain = _verdict(refusal)
    called = _verdict(refusal)
    called.embedding_probe.CopyFrom(verdict_pb2.EmbeddingProbe(tier=1, called=True))
    seen = _verdict(_dim("refusal", "full_compliance", deciding=1, tried=(0, 1)))
    seen.embedding_probe.CopyFrom(verdict_pb2.EmbeddingProbe(tier=1, called=False))
    failed = _verdict(refusal)
    failed.embedding_probe.CopyFrom(verdict_pb2.EmbeddingProbe(tier=1, called=True, error="circuit open"))
    for v in (plain, called, seen, failed):
        core.apply_verdict(v)
    core.publish()
    r = {**M, "dimension": "refusal"}
    assert _value(reg, "evalstream_judge_calls_total", **M, dimension="", tier="1") == 2  # the probe's
    assert _value(reg, "evalstream_judge_calls_total", **r, tier="1") == 1  # the escalation
    assert _value(reg, "evalstream_judge_calls_total", **r, tier="0") == 4
    assert _value(reg, "evalstream_embedding_probe_events_total", **M) == 3
    assert _value(reg, "evalstream_embedding_probe_failures_total", **M) == 1


def test_quality_histogram_buckets_are_inclusive_upper_bounds():
    core, reg = _core()
    for score in (1.0, 3.0, 3.5, 7.0, 10.0):
        core.apply_verdict(_verdict(_dim("quality", "fair", score=score)))
    core.publish()
    bucket = {
        le: _value(reg, "evalstream_quality_score_bucket", **M, le=le)
        for le in ("1.0", "3.0", "4.0", "6.0", "7.0", "9.0", "10.0", "+Inf")
    }
    assert bucket == {"1.0": 1, "3.0": 2, "4.0": 3, "6.0": 3, "7.0": 4, "9.0": 4, "10.0": 5, "+Inf": 5}
    assert _value(reg, "evalstream_quality_score_count", **M) == 5
    assert _value(reg, "evalstream_quality_score_sum", **M) == pytest.approx(24.5)


def test_label_cap_folds_new_values_into_other_and_counts_the_folding():
    core, reg = _core(LabelBudget(caps={LabelName.MODEL: 2}))
    for model in ("a", "b", "c", "d", "a", "c"):
        core.apply_verdict(_verdict(model=model))
    core.publish()
    got = {
        m: _value(reg, "evalstream_verdicts_total", model=m, model_version="v1", route="chat")
        for m in ("a", "b", "c", "d", "other")
    }
    assert got == {"a": 2, "b": 1, "c": 0, "d": 0, "other": 3}
    assert _value(reg, "evalstream_exporter_label_values_folded_total", label_name="model") == 3
    assert _value(reg, "evalstream_exporter_label_values", label_name="model") == 2
    assert _value(reg, "evalstream_exporter_label_values_folded_total", label_name="route") == 0


def test_allow_list_keeps_only_listed_values_and_long_values_fold():
    budget = LabelBudget(allow={LabelName.ROUTE: frozenset({"chat"})}, max_value_length=10)
    core, reg = _core(budget)
    core.apply_verdict(_verdict(route="chat"))
    core.apply_verdict(_verdict(route="search"))
    core.apply_verdict(_verdict(model="x" * 11))
    core.publish()
    assert _value(reg, "evalstream_verdicts_total", model="m1", model_version="v1", route="chat") == 1
    assert _value(reg, "evalstream_verdicts_total", model="m1", model_version="v1", route="other") == 1
    assert _value(reg, "evalstream_verdicts_total", model="other", model_version="v1", route="chat") == 1
    assert _value(reg, "evalstream_exporter_label_values_folded_total", label_name="route") == 1
    assert _value(reg, "evalstream_exporter_label_values_folded_total", label_name="model") == 1


def test_a_new_allow_list_drops_values_admitted_before_it():
    core, _ = _core()
    core.apply_verdict(_verdict(route="search"))
    state = core.state()
    again = ExporterCore(
        CollectorRegistry(), LabelBudget(allow={LabelName.ROUTE: frozenset({"chat"})}), state=state
    )
    again.apply_verdict(_verdict(route="search"))
    again.publish()
    reg = again.collector.published
    assert reg.get("evalstream_verdicts_total", ("m1", "v1", "search")) == 1  # restored, not added to
    assert reg.get("evalstream_verdicts_total", ("m1", "v1", "other")) == 1


def test_last_record_timestamps_start_at_zero_so_a_silent_start_is_visible():
    core, reg = _core()
    core.publish()
    assert (
        reg.get_sample_value("evalstream_exporter_last_record_timestamp_seconds", {"stream": "summaries"})
        == 0
    )


def test_scrapes_see_only_published_totals():
    core, reg = _core()
    core.apply_verdict(_verdict())
    assert reg.get_sample_value("evalstream_verdicts_total", M) is None
    core.publish()
    core.apply_verdict(_verdict())
    assert _value(reg, "evalstream_verdicts_total", **M) == 1
    core.publish()
    assert _value(reg, "evalstream_verdicts_total", **M) == 2


def test_undecodable_records_are_counted_and_skipped_and_timestamps_kept():
    core, reg = _core()
    assert core.apply_bytes(Stream.VERDICTS, b"\x0a\xff", 5_000) is Outcome.UNDECODABLE
    assert core.apply_bytes(Stream.VERDICTS, _verdict().SerializeToString(), 7_000) is Outcome.APPLIED
    assert core.apply_bytes(Stream.SUMMARIES, _summary(dimension="quality").SerializeToString(), 6_000) is (
        Outcome.IGNORED
    )
    core.publish()
    assert _value(reg, "evalstream_exporter_records_total", stream="verdicts", outcome="undecodable") == 1
    assert _value(reg, "evalstream_exporter_records_total", stream="verdicts", outcome="applied") == 1
    assert _value(reg, "evalstream_exporter_records_total", stream="summaries", outcome="ignored") == 1
    assert _value(reg, "evalstream_exporter_last_record_timestamp_seconds", stream="verdicts") == 7.0
    assert _value(reg, "evalstream_exporter_last_record_timestamp_seconds", stream="summaries") == 6.0


def test_state_round_trip_restores_exactly_the_same_exposition(tmp_path):
    core, reg = _core(LabelBudget(caps={LabelName.MODEL: 1}))
    s = _summary(events_in=3, judged=2, dead_lettered=1)
    s.dead_letter_reasons["judge_rejected"] = 1
    core.apply_summary(s)
    core.apply_verdict(_verdict(_dim("quality", "poor", score=2.0, cost=verdict_pb2.Cost(usd=0.1))))
    core.apply_verdict(_verdict(model="m2"))
    core.publish()
    file = StateFile(path=tmp_path / "state.json")
    file.save(SavedState(core=core.state(), offsets={("v", 0): 12, ("s", 1): 3}, group_id="g"))
    saved = file.load()
    assert saved is not None and saved.offsets == {("v", 0): 12, ("s", 1): 3}
    reg2 = CollectorRegistry()
    again = ExporterCore(reg2, LabelBudget(caps={LabelName.MODEL: 1}), state=saved.core)
    again.publish()
    assert generate_latest(reg2) == generate_latest(reg)
    # the admitted label values survive too: m2 still folds, m1 still has its own series
    again.apply_verdict(_verdict(model="m2"))
    again.apply_verdict(_verdict(model="m1"))
    again.publish()
    assert _value(reg2, "evalstream_verdicts_total", model="other", model_version="v1", route="chat") == 2
    assert _value(reg2, "evalstream_verdicts_total", **M) == 2


def test_state_file_that_is_not_json_says_what_to_do(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("{not json")
    with pytest.raises(StateError, match="move it away"):
        StateFile(path=path).load()
    assert StateFile(path=tmp_path / "absent.json").load() is None


def test_totals_refuse_a_changed_bucket_layout():
    core, _ = _core()
    core.apply_verdict(_verdict(_dim("quality", "good", score=9.0)))
    data = json.loads(json.dumps(core.state()["totals"]))
    data["evalstream_quality_score"][0][-1] = [1.0, 2.0]
    with pytest.raises(ValueError, match="bucket layout changed"):
        Totals.from_json(core.totals.specs.values(), data)


def test_resume_plan_restores_unless_the_group_committed_beyond_the_file():
    saved = SavedState(core={"totals": {}, "labels": {}}, offsets={("v", 0): 10, ("s", 0): 4})
    fresh = resume_plan(None, {("v", 0): 7})
    assert fresh.core is None and fresh.offsets == {}
    ok = resume_plan(saved, {("v", 0): 8, ("s", 0): None})  # crash between save and commit: file leads
    assert ok.core is saved.core and ok.offsets == {("v", 0): 10, ("s", 0): 4}
    stale = resume_plan(saved, {("v", 0): 12, ("s", 0): 4})
    assert stale.core is None and stale.offsets == {}
    assert "v[0] up to 12" in stale.reason
    other = resume_plan(saved, {("v", 1): 3})  # a partition the file never read, yet committed
    assert other.core is None


def test_settings_explicit_then_env_and_label_names_checked(monkeypatch):
    monkeypatch.setenv("EVALSTREAM_EXPORTER_VERDICTS_TOPIC", "from-env")
    monkeypatch.setenv("EVALSTREAM_EXPORTER_LABEL_CAPS", '{"model": 3}')
    monkeypatch.setenv("EVALSTREAM_EXPORTER_LABEL_ALLOW", '{"route": ["chat"]}')
    s = ExporterSettings(summaries_topic="explicit")
    assert (s.verdicts_topic, s.summaries_topic) == ("from-env", "explicit")
    budget = s.budget()
    assert budget.cap(LabelName.MODEL) == 3 and budget.cap(LabelName.ROUTE) == 20
    assert budget.allow == {LabelName.ROUTE: frozenset({"chat"})}
    with pytest.raises(ValueError, match="unknown label name"):
        ExporterSettings(label_caps={"tenant": 5})
