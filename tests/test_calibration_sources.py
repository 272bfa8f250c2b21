"""Calibration by confidence source (issue 17, item 3): every judge says where its confidence came
from, calibration fits each tier per (tier, source), the config names the source of each threshold,
and routing (the report's and the pipeline's) applies a threshold only to judgements from its source.

Real data: XSTest's recorded verdicts (../shared/data), and the real tier-0 rules judge on them.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from evalstream.evaluation.calibration import (
    CalibrationError,
    CalibrationItem,
    calibrate,
    cascade_items,
    to_config,
)
from evalstream.evaluation.datasets import read_xstest
from evalstream.evaluation.judgements import Split, read_judgements, write_judgements
from evalstream.evaluation.recorded import build
from evalstream.evaluation.report import CascadeSpec, build_report
from evalstream.evaluation.routing import config_plan, route, summarise_routes
from evalstream.judges.base import JudgeInput, input_from_event
from evalstream.judges.rules import RULE_PRECISION, RulesJudge
from evalstream.judges.servicer import to_response
from evalstream.pipeline.cascade import judge_batch
from evalstream.pipeline.records import SampledEvent
from evalstream.v1 import events_pb2, judge_pb2
from evalstream.wire.cascade_config import CascadeConfig, DimensionCascade, TierRule, threshold_for
from evalstream.wire.dimensions import Dimension

REFUSAL = Dimension.REFUSAL
JUDGES = ["strmatch", "gpt-4"]


def half(item_id: str) -> bool:
    """A fixed half of the items, by a salted hash of the id (as traffic split over two endpoints)."""
    return hashlib.sha256(f"source-half:{item_id}".encode()).digest()[0] < 128


def mixed(items: list[CalibrationItem]) -> list[CalibrationItem]:
    """GPT-4's verdicts on half the items as if from an endpoint whose confidence is on another scale
    (``squared``: systematically lower, as llama.cpp's logprobs under a grammar are): same labels,
    confidence squared, source ``squared``. The other half keep their recorded source."""
    out = []
    for it in items:
        strong = it.verdicts[1]
        if half(it.item_id):
            strong = replace(strong, confidence=strong.confidence**2, confidence_source="squared")
        out.append(replace(it, verdicts=(it.verdicts[0], strong)))
    return out


@pytest.fixture(scope="module")
def xstest(shared_data: Path):
    data = build("xstest", shared_data, seed=0)
    cal, _ = cascade_items(data.split(Split.CALIBRATION), REFUSAL, JUDGES)
    test, specs = cascade_items(data.split(Split.TEST), REFUSAL, JUDGES)
    return data, cal, test, specs


def test_recorded_verdicts_carry_their_source_and_the_config_names_it(xstest, tmp_path: Path) -> None:
    data, cal, _, specs = xstest
    assert {j.confidence_source for j in data.judgements} == {"label_precision"}
    path = tmp_path / "j.jsonl"
    write_judgements(path, data.judgements[:50])
    assert [j.confidence_source for j in read_judgements(path)] == ["label_precision"] * 50  # round trip
    result = calibrate(cal, specs, dimension=REFUSAL, alpha=0.15, delta=0.1)
    # one source per tier: the same thresholds as fitting without sources, and the same delta split
    unsaid = [
        replace(it, verdicts=tuple(replace(v, confidence_source="") for v in it.verdicts)) for it in cal
    ]
    plain = calibrate(unsaid, specs, dimension=REFUSAL, alpha=0.15, delta=0.1)
    assert [t.threshold for t in result.tiers] == [t.threshold for t in plain.tiers]
    assert [t.delta for t in result.tiers] == [t.delta for t in plain.tiers] == [0.05, 0.05]
    config = to_config([result], version="t", calibration_data="xstest")
    path = tmp_path / "c.yaml"
    config.dump(path)
    rules = CascadeConfig.load(path).dimensions["refusal"].tiers
    assert {r.confidence_source for r in rules} == {"label_precision"}
    assert all(not r.source_thresholds for r in rules)
    assert all(isinstance(p, float) for _, p in plain.plan())  # source-less data: one number per tier
    assert config_plan(CascadeConfig.load(path), REFUSAL, specs) == result.plan()


def test_a_tier_with_two_sources_is_fitted_per_source_each_at_its_share_of_delta(xstest) -> None:
    _, cal, test, specs = xstest
    items = mixed(cal)
    result = calibrate(items, specs, dimension=REFUSAL, alpha=0.1, delta=0.1)
    assert [(t.spec.judge, t.spec.confidence_source) for t in result.tiers] == [
        ("strmatch", "label_precision"),
        ("gpt-4", "label_precision"),
        ("gpt-4", "squared"),
    ]
    assert [t.delta for t in result.tiers] == pytest.approx([0.1 / 3] * 3)  # three groups, union bound
    # each source's threshold is Algorithm 1 on that source's items alone, at its share of delta
    strmatch = result.tiers[0]
    reached = [
        it
        for it in items
        if strmatch.threshold is None
        or not (it.verdicts[0].label is not None and it.verdicts[0].confidence >= strmatch.threshold)
    ]
    for t in result.tiers[1:]:
        alone = [
            CalibrationItem(item_id=it.item_id, human=it.human, verdicts=(it.verdicts[1],))
            for it in reached
            if it.verdicts[1].confidence_source == t.spec.confidence_source
        ]
        solo = calibrate(alone, [specs[1]], dimension=REFUSAL, alpha=0.1, delta=t.delta)
        assert (t.threshold, t.reached, t.accepted) == (
            solo.tiers[0].threshold,
            len(alone),
            solo.tiers[0].accepted,
        )
    # the two scales differ: the squared source needs a lower threshold for the same guarantee
    by_source = {t.spec.confidence_source: t.threshold for t in result.tiers[1:]}
    assert by_source["squared"] is not None and by_source["label_precision"] is not None
    assert by_source["squared"] < by_source["label_precision"]
    # the config keeps both; the pipeline's rule reads them back per source
    assert strmatch.threshold is None  # at 0.1 the string matcher certifies nothing: dropped
    (strong_rule,) = to_config([result], version="t", calibration_data="x").dimensions["refusal"].tiers
    assert strong_rule.thresholds() == by_source
    # held out: each source's accepted verdicts agree with humans at least 1 - alpha
    held = mixed(test)
    routed = route(held, result.plan())
    for source in by_source:
        ids = {it.item_id for it in held if it.verdicts[1].confidence_source == source}
        pairs = [
            (it.human, r.label)
            for it, r in zip(held, routed, strict=True)
            if r.accepted_by == 1 and it.item_id in ids
        ]
        assert pairs and sum(h == lab for h, lab in pairs) / len(pairs) >= 1 - 0.1, (source, len(pairs))


def test_a_threshold_is_applied_only_to_its_source_and_others_escalate_counted(xstest) -> None:
    _, cal, test, specs = xstest
    result = calibrate(cal, specs, dimension=REFUSAL, alpha=0.1, delta=0.1)  # fitted on label_precision
    held = mixed(test)  # half of GPT-4's verdicts now come from a source it was not fitted for
    routed = route(held, result.plan())
    summary = summarise_routes(held, routed)
    squared = [r for it, r in zip(held, routed, strict=True) if it.verdicts[1].confidence_source == "squared"]
    reached = [r for r in squared if 1 in r.called]
    assert reached and all(1 in r.source_mismatches and r.accepted_by != 1 for r in reached)
    assert sum(1 in r.source_mismatches for r in routed) == len(reached)
    assert summary.accepted == sum(r.accepted_by is not None for r in routed)
    assert threshold_for({"a": 0.5}, "b") is None and threshold_for(0.5, "b") == 0.5


def test_mixing_named_and_unsaid_sources_in_one_tier_is_refused_with_a_message(xstest) -> None:
    _, cal, _, specs = xstest
    items = [
        replace(it, verdicts=(it.verdicts[0], replace(it.verdicts[1], confidence_source="")))
        if half(it.item_id)
        else it
        for it in cal
    ]
    with pytest.raises(CalibrationError, match=r"judge 'gpt-4' \(tier 2\) has verdicts with confidence "
                       r"sources \['label_precision'\] and \d+ without one"):  # fmt: skip
        calibrate(items, specs, dimension=REFUSAL, alpha=0.15, delta=0.1)


def test_tier_rules_validate_and_describe_their_sources() -> None:
    rule = TierRule(
        tier=2, threshold=0.8, confidence_source="logprobs", source_thresholds={"agreement": math.inf}
    )
    assert rule.thresholds() == {"logprobs": 0.8, "agreement": math.inf}
    assert rule.rule() == "tier 2 (logprobs) >= 0.8; tier 2 (agreement) never accepts"
    with pytest.raises(ValueError, match="source_thresholds need confidence_source"):
        TierRule(tier=2, threshold=0.8, source_thresholds={"agreement": 0.9})
    with pytest.raises(ValueError, match="has two thresholds"):
        TierRule(tier=2, threshold=0.8, confidence_source="a", source_thresholds={"a": 0.9})
    with pytest.raises(ValueError, match="threshold must be in"):
        TierRule(tier=2, threshold=0.8, confidence_source="a", source_thresholds={"b": 1.5})


def test_the_pipeline_applies_a_rule_only_to_judgements_from_its_source(shared_data: Path) -> None:
    """The real rules judge (tier 0, refusal confidence from rule precision) behind the pipeline's
    cascade core: a threshold fitted for its source accepts; one fitted for another source does not,
    and every such judgement is counted and, at the last tier, audited."""
    judge = RulesJudge.load()
    records = read_xstest(shared_data)[:40]
    events = [
        SampledEvent(
            event=events_pb2.LLMEvent(
                event_id=f"x{i}",
                model=r.model,
                messages=[events_pb2.Message(role="user", content=r.prompt)],
                response=r.completion,
            ),
            sample_rate=1.0,
            forced=False,
        )
        for i, r in enumerate(records)
    ]

    def call(tier: int, request: judge_pb2.JudgeRequest) -> judge_pb2.JudgeResponse:
        inputs = [input_from_event(it.item_id, it.event) for it in request.items]
        outcomes = judge.judge_batch(inputs, frozenset(request.dimensions))
        return to_response(outcomes, judge=judge.name, tier=tier, latency_ms_per_item=0.0)

    def run(source: str):
        rule = TierRule(tier=0, threshold=0.0, confidence_source=source)
        cascade = CascadeConfig(version="t", dimensions={"refusal": DimensionCascade(tiers=[rule])})
        return judge_batch(events, cascade=cascade, call=call, now=datetime(2026, 12, 5, tzinfo=UTC))

    own = run(RULE_PRECISION)
    assert len(own.verdicts) == 40 and not own.audits and not own.source_mismatches
    assert {d.confidence_source for v in own.verdicts for d in v.dimensions} == {RULE_PRECISION}
    other = run("logprobs")
    assert len(other.verdicts) == 40 and len(other.audits) == 40
    assert all(d.needs_audit for v in other.verdicts for d in v.dimensions)
    assert other.source_mismatches == {("refusal", 0, RULE_PRECISION): 40}


def xstest_inputs(shared_data: Path, n: int) -> list[JudgeInput]:
    """The first ``n`` real XSTest prompt/response pairs as judge inputs."""
    return [
        input_from_event(
            str(i),
            events_pb2.LLMEvent(
                event_id=str(i),
                messages=[events_pb2.Message(role="user", content=r.prompt)],
                response=r.completion,
            ),
        )
        for i, r in enumerate(read_xstest(shared_data)[:n])
    ]


def test_every_live_judge_says_its_confidence_source(shared_data: Path) -> None:
    """Tier 0 (rules) on real XSTest responses: refusal from rule precision, format fixed per rule."""
    judge = RulesJudge.load()
    inputs = xstest_inputs(shared_data, 20)
    outcomes = judge.judge_batch(inputs, frozenset({"refusal", "format"}))
    sources = {(j.dimension, j.confidence_source) for o in outcomes for j in o.judgements}
    assert sources == {("refusal", "rule_precision"), ("format", "rule_fixed")}


def test_the_report_shows_a_judge_per_source_and_the_plan_per_source(xstest) -> None:
    data, _, _, _ = xstest
    test = data.split(Split.TEST)
    judgements = tuple(
        replace(j, confidence=j.confidence**2, confidence_source="squared")
        if j.judge == "gpt-4" and half(j.item_id)
        else j
        for j in test.judgements
    )
    mixed_set = replace(test, judgements=judgements)
    items, specs = cascade_items(mixed_set, REFUSAL, JUDGES)
    result = calibrate(items, specs, dimension=REFUSAL, alpha=0.1, delta=0.1)
    spec = CascadeSpec(tiers=tuple(specs), plan=tuple(result.plan()), source="fitted here")
    report = build_report(mixed_set, REFUSAL, spec, split="test", n_resamples=0)
    rows = {r.name: r for r in report.judges}
    assert rows["gpt-4 [label_precision]"].items + rows["gpt-4 [squared]"].items == rows["gpt-4"].items
    assert "strmatch [label_precision]" not in rows  # one source: no breakdown
    (step,) = [s for s in report.cascade_plan if s.judge == "gpt-4"]
    assert isinstance(step.threshold, dict) and set(step.threshold) == {"label_precision", "squared"}
    assert "for squared" in step.describe() and "other confidence sources escalate" in step.describe()


@pytest.mark.slow
def test_the_encoder_judge_says_its_confidence_source(encoder_artefact: Path, shared_data: Path) -> None:
    """Tier 1 (the encoder, trained once per session by conftest) on real XSTest responses."""
    from evalstream.judges.encoder import CLASSIFIER_PROBABILITY, EncoderJudge

    judge = EncoderJudge.load(encoder_artefact, num_threads=1)
    inputs = xstest_inputs(shared_data, 8)
    outcomes = judge.judge_batch(inputs, frozenset({"refusal", "quality"}))
    judged = [j for o in outcomes for j in o.judgements]
    assert len(judged) == 16 and {j.confidence_source for j in judged} == {CLASSIFIER_PROBABILITY}
