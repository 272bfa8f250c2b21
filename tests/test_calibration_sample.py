"""The calibration sample in the cascade core: its hash, shadow judging by every tier (recorded on the
verdict, paid for in the cost), the audit output, and that no accepted verdict or dead letter changes.

Real judges in process through the judge server's own conversions (``InProcessJudges`` of the probe
tests): the rules judge at tier 0 and a small tier-1 judge of the ``Judge`` protocol.
"""

from __future__ import annotations

import pytest

from evalstream.judges.rules import RulesJudge
from evalstream.pipeline.calibration_sample import CalibrationSample
from evalstream.pipeline.cascade import CascadeOutcome, EmbeddingProbe, judge_batch
from evalstream.pipeline.judge_client import JudgeUnavailable
from evalstream.pipeline.records import SampledEvent
from evalstream.pipeline.summarise import summaries_from
from evalstream.v1 import verdict_pb2
from evalstream.wire.cascade_config import CascadeConfig, DimensionCascade, TierRule

from .pipeline_helpers import NOW
from .test_cascade_probe import CASCADE, InProcessJudges, LengthStatsJudge, events


def run(items: list[SampledEvent], call: InProcessJudges, sample: CalibrationSample | None) -> CascadeOutcome:
    return judge_batch(items, cascade=CASCADE, call=call, now=NOW, sample=sample)


def decision(v: verdict_pb2.Verdict) -> list[tuple[str, str, int, tuple[int, ...], bool]]:
    return [
        (d.dimension, d.label, d.deciding_tier, tuple(d.tiers_tried), d.needs_audit) for d in v.dimensions
    ]


def test_sample_is_deterministic_near_its_fraction_and_apart_from_the_probe() -> None:
    ids = [f"id-{i}" for i in range(40_000)]
    sample = CalibrationSample(fraction=0.1)
    chosen = [sample.in_sample(i) for i in ids]
    assert chosen == [CalibrationSample(fraction=0.1).in_sample(i) for i in ids]
    assert 0.09 < sum(chosen) / len(ids) < 0.11
    probe = EmbeddingProbe(fraction=0.1)
    both = sum(1 for i, c in zip(ids, chosen, strict=True) if c and probe.in_sample(i))
    assert 0.005 < both / len(ids) < 0.015  # independent hashes: ~1% in both, not ~10%
    assert not any(CalibrationSample().in_sample(i) for i in ids[:1000])  # off by default
    with pytest.raises(ValueError, match="calibration_sample_fraction"):
        CalibrationSample(fraction=-0.1)


def test_sampled_events_are_judged_by_every_tier_audited_and_paid_for_with_verdicts_unchanged() -> None:
    items = events(200)
    tier1 = LengthStatsJudge()
    call = InProcessJudges({0: RulesJudge.load(), 1: tier1})
    plain = run(items, call, None)
    escalated = set(tier1.items_seen)
    assert 0 < len(escalated) < len(items)
    sample = CalibrationSample(fraction=0.3)
    tier1.items_seen.clear()
    shadow = run(items, call, sample)

    assert [v.event_id for v in shadow.verdicts] == [v.event_id for v in plain.verdicts]
    assert len(shadow.verdicts) + len(shadow.dead) == len(items)
    chosen = {i.event.event_id for i in items if sample.in_sample(i.event.event_id)}
    assert 30 < len(chosen) < 90
    # tier 1 saw what tier 0 escalated, and every sampled event besides
    assert set(tier1.items_seen) == escalated | chosen
    by_id = {v.event_id: v for v in plain.verdicts}
    for verdict in shadow.verdicts:
        before = by_id[verdict.event_id]
        assert decision(verdict) == decision(before)  # the accepted verdict is the cascade's own
        assert verdict.calibration_sample == (verdict.event_id in chosen)
        refusal = next(d for d in verdict.dimensions if d.dimension == "refusal")
        recorded = [(j.tier, j.judge) for j in refusal.judgements]
        if verdict.calibration_sample:
            assert recorded == [(0, "rules-v1"), (1, "length-stats")]
        else:
            assert [t for t, _ in recorded] == list(refusal.tiers_tried)
    # sampled events go to the audit topic besides those no tier was sure of
    audited = {v.event_id for v in shadow.audits}
    unsure = {v.event_id for v in plain.audits}
    assert audited == unsure | (chosen & {v.event_id for v in shadow.verdicts})
    # shadow calls count as calls: one request per tier per batch still, more items in tier 1's
    assert shadow.calls == plain.calls


def test_shadow_calls_count_in_the_summaries_calls_by_tier() -> None:
    items = events(100)
    call = InProcessJudges({0: RulesJudge.load(), 1: LengthStatsJudge()})
    plain = run(items, call, None)
    shadow = run(items, call, CalibrationSample(fraction=1.0))

    def tier1_calls(outcome: CascadeOutcome) -> int:
        return sum(
            s.calls_by_tier[1] for s in summaries_from(outcome.verdicts, "b") if s.dimension == "refusal"
        )

    assert 0 < tier1_calls(plain) < tier1_calls(shadow) == len(shadow.verdicts)
    for verdict in shadow.verdicts:
        refusal = next(d for d in verdict.dimensions if d.dimension == "refusal")
        assert [j.tier for j in refusal.judgements] == [0, 1]


def test_a_failing_shadow_tier_never_dead_letters_an_event_tier_zero_decided() -> None:
    items = events(100)
    working = run(items, InProcessJudges({0: RulesJudge.load(), 1: LengthStatsJudge()}), None)
    down = InProcessJudges(
        {0: RulesJudge.load(), 1: LengthStatsJudge()},
        down={1: JudgeUnavailable("down", tier=1, target="t1", code="UNAVAILABLE")},
    )
    failing_plain = run(items, down, None)
    failing_shadow = run(items, down, CalibrationSample(fraction=1.0))
    # the events tier 0 decided keep their verdicts; those that needed tier 1 are dead letters, as before
    assert [v.event_id for v in failing_shadow.verdicts] == [v.event_id for v in failing_plain.verdicts]
    assert [d.event_id for d in failing_shadow.dead] == [d.event_id for d in failing_plain.dead]
    assert 0 < len(failing_plain.verdicts) < len(working.verdicts)
    for verdict in failing_shadow.verdicts:
        assert verdict.calibration_sample
        refusal = next(d for d in verdict.dimensions if d.dimension == "refusal")
        assert [j.judge for j in refusal.judgements] == ["rules-v1"]  # the shadow judgement is missing


# a recalibration dropped tier 0 from refusal; it stays a shadow tier (``evalstream recalibrate``)
DROPPED = CascadeConfig(
    version="dropped-tier0",
    dimensions={
        "refusal": DimensionCascade(tiers=[TierRule(tier=1, threshold=0.0)], shadow_tiers=[0, 1]),
        "format": DimensionCascade(tiers=[TierRule(tier=0, threshold=0.0)]),
    },
)


def test_a_dropped_tier_is_still_judged_on_the_sample_and_only_there() -> None:
    items = events(200)
    call = InProcessJudges({0: RulesJudge.load(), 1: LengthStatsJudge()})
    plain = judge_batch(items, cascade=DROPPED, call=call, now=NOW)
    sample = CalibrationSample(fraction=0.3)
    shadow = judge_batch(items, cascade=DROPPED, call=call, now=NOW, sample=sample)
    chosen = {i.event.event_id for i in items if sample.in_sample(i.event.event_id)}
    assert 30 < len(chosen) < 90
    assert len(shadow.verdicts) == len(plain.verdicts) == len(items)
    by_id = {v.event_id: v for v in plain.verdicts}
    for verdict in shadow.verdicts:
        assert decision(verdict) == decision(by_id[verdict.event_id])  # tier 0 decides nothing
        refusal = next(d for d in verdict.dimensions if d.dimension == "refusal")
        assert (refusal.deciding_tier, list(refusal.tiers_tried)) == (1, [1])
        recorded = [(j.tier, j.judge) for j in refusal.judgements]
        if verdict.event_id in chosen:
            assert recorded == [(0, "rules-v1"), (1, "length-stats")]
            assert refusal.cost.latency_ms == sum(j.cost.latency_ms for j in refusal.judgements)
        else:
            assert recorded == [(1, "length-stats")]
    # a shadow tier without a judge endpoint is not asked; the verdicts stand
    unreachable = judge_batch(items, cascade=DROPPED, call=call, now=NOW, sample=sample, reachable={1})
    for verdict in unreachable.verdicts:
        refusal = next(d for d in verdict.dimensions if d.dimension == "refusal")
        assert [j.tier for j in refusal.judgements] == [1]


def test_a_failing_dropped_tier_never_dead_letters_nor_changes_a_verdict() -> None:
    items = events(100)
    only_refusal = DROPPED.model_copy(update={"dimensions": {"refusal": DROPPED.dimensions["refusal"]}})
    working = InProcessJudges({0: RulesJudge.load(), 1: LengthStatsJudge()})
    down = InProcessJudges(
        {0: RulesJudge.load(), 1: LengthStatsJudge()},
        down={0: JudgeUnavailable("down", tier=0, target="t0", code="UNAVAILABLE")},
    )
    plain = judge_batch(items, cascade=only_refusal, call=working, now=NOW)
    failing = judge_batch(
        items, cascade=only_refusal, call=down, now=NOW, sample=CalibrationSample(fraction=1.0)
    )
    assert not failing.dead
    assert [decision(v) for v in failing.verdicts] == [decision(v) for v in plain.verdicts]
    assert all(v.calibration_sample for v in failing.verdicts)
    assert (0, len(items)) in down.requests  # tier 0 was asked (and failed) ...
    for verdict in failing.verdicts:  # ... and its judgement is missing
        assert [j.tier for j in verdict.dimensions[0].judgements] == [1]
