"""Judge agreement online: the label-verdict join (both orders, expiry, bounded memory), the scores
against scikit-learn and hand computations, the label record, and state across a restart."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, cohen_kappa_score

from evalstream.evaluation.statistics import kappa_with_ci
from evalstream.exporter.agreement import AgreementConfig, AgreementTracker, VerdictDimension
from evalstream.exporter.agreement_scores import scores
from evalstream.exporter.core import SPECS, ExporterCore, Outcome, Stream
from evalstream.exporter.guarantee import GuaranteeTarget, agreement_lower_bound
from evalstream.exporter.totals import Totals
from evalstream.tools.labels import XSTEST_ANNOTATORS, read_label_file, xstest_labels
from evalstream.tools.replay import event_id_for
from evalstream.v1 import verdict_pb2
from evalstream.wire.cascade_config import CascadeConfig, DimensionCascade, TierRule
from evalstream.wire.labels import HumanLabelIn, LabelRecordError, decode_label, encode_label

WHEN = datetime(2025, 3, 1, 12, tzinfo=UTC)


def label(event_id: str, value: str, *, annotator="adjudicated", dimension="refusal") -> HumanLabelIn:
    return HumanLabelIn(
        event_id=event_id, dimension=dimension, label=value, annotator=annotator, labelled_at=WHEN
    )


def dims(label_: str = "full_refusal", *, tier="0", audited=False, extra=()):
    out = [VerdictDimension(dimension="refusal", tier=tier, label=label_, audited=audited)]
    out += [VerdictDimension(dimension=d, tier=tier, label="ok", audited=False) for d in extra]
    return out


def tracker(**kw) -> tuple[AgreementTracker, Totals]:
    totals = Totals(SPECS)
    return AgreementTracker(AgreementConfig(resamples=200, **kw), totals, lambda _name, raw: raw), totals


def join(totals: Totals, side: str, outcome: str) -> float:
    return totals.get("evalstream_judge_agreement_join_total", (side, outcome))


# --- the label record ------------------------------------------------------------------------------


def test_label_record_round_trips_and_bad_records_say_what_is_wrong(tmp_path: Path):
    one = label("e1", "partial_refusal")
    assert decode_label(encode_label(one)) == one
    with pytest.raises(LabelRecordError, match="not a refusal label"):
        decode_label(json.dumps({**json.loads(encode_label(one)), "label": "yes"}).encode())
    with pytest.raises(LabelRecordError, match="labelled_at"):
        decode_label(b'{"event_id": "e", "dimension": "refusal", "label": "full_refusal", "annotator": "a"}')
    with pytest.raises(LabelRecordError, match="Extra inputs"):
        decode_label(encode_label(one)[:-1] + b', "tenant": "acme"}')
    with pytest.raises(LabelRecordError, match="timezone"):
        decode_label(encode_label(one).replace(b"Z", b"").replace(b"+00:00", b""))
    path = tmp_path / "labels.jsonl"
    path.write_text(
        '{"event_id": "e1", "dimension": "refusal", "label": "full_refusal", "annotator": "ann"}\n\n'
        '{"event_id": "e2", "dimension": "quality", "label": "good", "annotator": "ann",'
        ' "labelled_at": "2024-01-02T03:04:05+00:00"}\n'
    )
    first, second = read_label_file(path, labelled_at=WHEN)
    assert first.labelled_at == WHEN and second.labelled_at.year == 2024
    path.write_text('{"event_id": "e1", "dimension": "refusal", "label": "maybe", "annotator": "ann"}\n')
    with pytest.raises(LabelRecordError, match=r"labels.jsonl:1: .*not a refusal label"):
        read_label_file(path, labelled_at=WHEN)


def test_xstest_labels_use_the_replayed_event_ids_and_all_three_annotators(shared_data):
    from evalstream.evaluation.datasets import read_xstest

    records = read_xstest(shared_data, models=["gpt4"])[:5]
    out = list(xstest_labels(records, run_id="r1", passes=2, labelled_at=WHEN))
    assert len(out) == 5 * 2 * len(XSTEST_ANNOTATORS)
    assert out[0].event_id == event_id_for("r1", records[0], 0) == "r1-xstest_v2-gpt4-v2-1-0"
    assert out[-1].event_id == event_id_for("r1", records[-1], 1)
    truth = [x for x in out if x.annotator == "adjudicated"]
    assert [x.label for x in truth[:5]] == [r.final_label.value for r in records]
    assert [x.label for x in out if x.annotator == "annotator_2"][:5] == [
        r.annotation_2.value for r in records
    ]
    with pytest.raises(LabelRecordError, match="unknown XSTest annotator"):
        list(xstest_labels(records, run_id="r1", annotators=["gold"], labelled_at=WHEN))


# --- the join --------------------------------------------------------------------------------------


def test_join_pairs_in_either_order_and_counts_what_it_cannot_pair():
    t, totals = tracker()
    t.add_verdict("v-first", dims("full_refusal"), 10.0)  # verdict waits for its label
    assert t.add_label(label("v-first", "full_refusal"), 11.0)
    assert t.add_label(label("l-first", "full_compliance"), 12.0)  # label waits for its verdict
    t.add_verdict("l-first", dims("full_refusal", tier="2"), 13.0)
    assert not t.add_label(label("v-first", "full_refusal", annotator="annotator_1"), 14.0)  # not the truth
    assert join(totals, "label", "paired") == 2
    assert totals.get("evalstream_judge_agreement_pairs_total", ("refusal", "0")) == 1
    assert totals.get("evalstream_judge_agreement_matches_total", ("refusal", "0")) == 1
    assert totals.get("evalstream_judge_agreement_pairs_total", ("refusal", "2")) == 1
    assert totals.get("evalstream_judge_agreement_matches_total", ("refusal", "2")) == 0
    assert totals.get("evalstream_judge_agreement_pairs_total", ("refusal", "all")) == 2
    # a verdict that waits for another dimension still knows what it paired
    t.add_verdict("two", dims("full_refusal", extra=("format",)), 15.0)
    t.add_label(label("two", "full_refusal"), 16.0)
    t.add_label(label("two", "full_refusal"), 17.0)  # the same label sent again
    t.add_label(label("two", "good", dimension="quality"), 18.0)  # a dimension the verdict lacks
    assert join(totals, "label", "duplicate") == 1
    assert join(totals, "label", "not_judged") == 1
    # a label replaced while waiting; an audited dimension is not scored
    t.add_label(label("late", "full_refusal"), 19.0)
    t.add_label(label("late", "full_compliance"), 20.0)
    t.add_verdict("late", dims("full_compliance", audited=True), 21.0)
    assert join(totals, "label", "superseded") == 1
    assert join(totals, "label", "audited") == 1
    assert totals.get("evalstream_judge_agreement_pairs_total", ("refusal", "all")) == 3


def test_each_side_expires_by_the_other_streams_clock():
    t, totals = tracker(ttl_s=100.0)
    t.add_verdict("v", dims(), 1000.0)
    t.add_label(label("unrelated-1", "full_refusal"), 1050.0)  # labels stream at +50s: v still waits
    t.add_label(label("v", "full_refusal"), 1090.0)
    assert join(totals, "label", "paired") == 1
    t.add_verdict("w", dims(), 1100.0)
    # Catch-up: the labels stream is far ahead (read first after a stop), but the verdicts stream is
    # not: a label waits until the verdicts stream has moved ttl past it, not the labels stream.
    t.add_label(label("x", "full_refusal"), 5000.0)  # moves the labels clock past w + ttl
    assert join(totals, "verdict", "expired") == 1  # w: no label came within 100s of it
    t.add_verdict("x", dims(), 1200.0)  # x's verdict was older than its label: still pairs
    assert join(totals, "label", "paired") == 2
    t.add_label(label("y", "full_refusal"), 5001.0)  # y's verdict never comes ...
    t.add_verdict("z", dims(), 5200.0)  # ... and the verdicts stream moves past y + ttl
    assert join(totals, "label", "expired") == 2  # unrelated-1 and y
    t.publish()
    assert totals.get("evalstream_judge_agreement_pending", ("verdict",)) == 1  # z
    assert totals.get("evalstream_judge_agreement_pending", ("label",)) == 0


def test_memory_is_bounded_oldest_evicted_and_counted():
    t, totals = tracker(max_pending=3)
    for i in range(10):
        t.add_verdict(f"v{i}", dims(), float(i))
        t.add_label(label(f"l{i}", "full_refusal"), float(i))
    assert join(totals, "verdict", "evicted") == 7 and join(totals, "label", "evicted") == 7
    t.publish()
    assert totals.get("evalstream_judge_agreement_pending", ("verdict",)) == 3
    t.add_label(label("v9", "full_refusal"), 11.0)  # the newest are the ones kept
    t.add_label(label("v0", "full_refusal"), 12.0)  # evicted: waits as a label instead
    assert join(totals, "label", "paired") == 1


# --- the scores ------------------------------------------------------------------------------------


def _pairs(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    classes = ["full_compliance", "full_refusal", "partial_refusal"]
    out = []
    for _ in range(n):
        human = rng.choices(classes, weights=[5, 4, 1])[0]
        judge = human if rng.random() < 0.8 else rng.choice(classes)
        out.append((human, judge))
    return out


def test_scores_match_scikit_learn_and_a_hand_wilson_interval():
    pairs = _pairs(300, 1)
    truth, pred = [h for h, _ in pairs], [j for _, j in pairs]
    s = scores(pairs, resamples=300)
    assert s.pairs == 300
    assert s.accuracy == pytest.approx(accuracy_score(truth, pred), abs=1e-12)
    assert s.kappa == pytest.approx(cohen_kappa_score(truth, pred), abs=1e-12)
    assert s.kappa_low < s.kappa < s.kappa_high
    # Wilson score interval by hand: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    z, n, p = 1.959963984540054, 300, s.accuracy
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert s.accuracy_low == pytest.approx((centre - half) / (1 + z * z / n), abs=1e-9)
    assert s.accuracy_high == pytest.approx((centre + half) / (1 + z * z / n), abs=1e-9)
    # the kappa interval is report.py's, on the pairs in sorted order: arrival order does not matter
    expected = kappa_with_ci([h for h, _ in sorted(pairs)], [j for _, j in sorted(pairs)], n_resamples=300)
    assert (s.kappa, s.kappa_low, s.kappa_high) == expected
    shuffled = pairs[:]
    random.Random(2).shuffle(shuffled)
    assert scores(shuffled, resamples=300) == s


def test_kappa_is_absent_where_undefined_accuracy_is_not():
    s = scores([("full_refusal", "full_refusal")] * 20, resamples=50)
    assert s.accuracy == 1.0 and s.kappa is None and s.kappa_low is None
    assert s.accuracy_low == pytest.approx(0.8389, abs=1e-4)  # Wilson for 20/20


def test_gauges_cover_the_last_window_of_pairs_per_tier_and_over_all_tiers():
    t, totals = tracker(window=100)
    pairs = _pairs(250, 3)
    for i, (human, judge) in enumerate(pairs):
        t.add_verdict(f"e{i}", dims(judge, tier=str(i % 2)), float(i))
        t.add_label(label(f"e{i}", human), float(i))
    t.publish()
    last = pairs[-100:]
    got = totals.values
    assert got["evalstream_judge_agreement_window_pairs"][("refusal", "all")] == 100
    assert got["evalstream_judge_agreement_accuracy"][("refusal", "all")] == pytest.approx(
        accuracy_score([h for h, _ in last], [j for _, j in last])
    )
    tier1 = [p for i, p in enumerate(pairs) if i % 2 == 1][-100:]
    assert got["evalstream_judge_agreement_kappa"][("refusal", "1")] == pytest.approx(
        cohen_kappa_score([h for h, _ in tier1], [j for _, j in tier1])
    )
    assert totals.get("evalstream_judge_agreement_pairs_total", ("refusal", "all")) == 250  # cumulative


# --- through the exporter core, and across a restart -----------------------------------------------


def _verdict(event_id: str, refusal: str, *, tier=0) -> verdict_pb2.Verdict:
    return verdict_pb2.Verdict(
        event_id=event_id,
        model="m1",
        model_version="v1",
        route="chat",
        dimensions=[
            verdict_pb2.DimensionVerdict(
                dimension="refusal", label=refusal, deciding_tier=tier, tiers_tried=[tier]
            ),
            verdict_pb2.DimensionVerdict(dimension="format", label="ok", deciding_tier=0, tiers_tried=[0]),
        ],
    )


def _core(state=None):
    registry = CollectorRegistry()
    return ExporterCore(registry, state=state, agreement=AgreementConfig(resamples=100)), registry


def test_core_reads_label_records_and_a_restart_neither_loses_nor_repeats_a_pair():
    core, registry = _core()
    pairs = _pairs(60, 5)
    for i, (_, judge) in enumerate(pairs[:40]):
        core.apply_bytes(Stream.VERDICTS, _verdict(f"e{i}", judge).SerializeToString(), 1_000 + i)
    for i, (human, _) in enumerate(pairs[:30]):
        assert (
            core.apply_bytes(Stream.LABELS, encode_label(label(f"e{i}", human)), 2_000 + i) is Outcome.APPLIED
        )
    other = encode_label(label("e1", "full_refusal", annotator="annotator_1"))
    assert core.apply_bytes(Stream.LABELS, other, 3_000) is Outcome.IGNORED
    assert core.apply_bytes(Stream.LABELS, b"{not json", 3_001) is Outcome.UNDECODABLE
    core.publish()
    assert (
        registry.get_sample_value(
            "evalstream_exporter_records_total", {"stream": "labels", "outcome": "undecodable"}
        )
        == 1
    )
    assert (
        registry.get_sample_value("evalstream_judge_agreement_pending", {"side": "verdict"}) == 40
    )  # format waits
    # restart: 10 verdicts still wait for refusal labels, 30 for format labels only
    saved = json.loads(json.dumps(core.state()))
    again, registry2 = _core(state=saved)
    again.publish()
    assert generate_latest(registry2) == generate_latest(registry)
    for c in (core, again):
        for i, (human, _) in enumerate(pairs[:40]):  # the first 30 again (duplicates), then 10 new
            c.apply_bytes(Stream.LABELS, encode_label(label(f"e{i}", human)), 4_000 + i)
        c.publish()
    assert generate_latest(registry2) == generate_latest(registry)
    truth, pred = [h for h, _ in pairs[:40]], [j for _, j in pairs[:40]]
    key = {"dimension": "refusal", "tier": "0"}
    assert registry2.get_sample_value("evalstream_judge_agreement_pairs_total", key) == 40
    assert registry2.get_sample_value("evalstream_judge_agreement_kappa", key) == pytest.approx(
        cohen_kappa_score(truth, pred)
    )
    assert (
        registry2.get_sample_value(
            "evalstream_judge_agreement_join_total", {"side": "label", "outcome": "duplicate"}
        )
        == 30
    )


# --- the guarantee monitor -------------------------------------------------------------------------


def _config(*, alpha=0.1, delta=0.1, format_calibrated=False) -> CascadeConfig:
    refusal = DimensionCascade(
        tiers=[
            TierRule(tier=0, threshold=0.9, calibrated_agreement=0.97),
            TierRule(tier=2, threshold=0.8, calibrated_agreement=0.93),
        ]
    )
    fmt = DimensionCascade(
        tiers=[TierRule(tier=0, threshold=0.0, calibrated_agreement=0.99 if format_calibrated else None)]
    )
    return CascadeConfig(
        version="test-1", alpha=alpha, delta=delta, dimensions={"refusal": refusal, "format": fmt}
    )


def test_guarantee_lower_bound_is_the_exact_one_sided_clopper_pearson_bound():
    for matches, pairs, delta in ((470, 500, 0.1), (45, 50, 0.05), (50, 50, 0.1), (0, 10, 0.1)):
        exact = binomtest(matches, pairs, alternative="greater").proportion_ci(
            confidence_level=1 - delta, method="exact"
        )
        assert agreement_lower_bound(matches, pairs, delta) == pytest.approx(exact.low, abs=1e-9)
    with pytest.raises(ValueError, match="matches <= pairs"):
        agreement_lower_bound(5, 4, 0.1)


def test_guarantee_series_follow_the_config_and_the_accepted_labelled_verdicts():
    totals = Totals(SPECS)
    guarantee = GuaranteeTarget.from_config(_config())
    t = AgreementTracker(
        AgreementConfig(resamples=50, window=200), totals, lambda _name, raw: raw, guarantee=guarantee
    )
    got = totals.values
    assert got["evalstream_guarantee_calibrated"] == {("refusal",): 1.0, ("format",): 0.0}
    assert got["evalstream_guarantee_target"] == {("refusal",): pytest.approx(0.9)}
    assert got["evalstream_guarantee_tier_calibrated_agreement"] == {
        ("refusal", "0"): 0.97,
        ("refusal", "2"): 0.93,
    }
    # 300 accepted verdicts, 240 of them agreeing; 100 audited ones (all wrong) are not scored
    for i in range(300):
        t.add_verdict(f"e{i}", dims("full_refusal", tier="0"), float(i))
        t.add_label(label(f"e{i}", "full_refusal" if i % 5 else "full_compliance"), float(i))
    for i in range(300, 400):
        t.add_verdict(f"e{i}", dims("full_refusal", tier="2", audited=True), float(i))
        t.add_label(label(f"e{i}", "full_compliance"), float(i))
    t.publish()
    humans = ["full_refusal" if i % 5 else "full_compliance" for i in range(100, 300)]  # the window
    matches = sum(h == "full_refusal" for h in humans)
    bound = got["evalstream_guarantee_agreement_lower_bound"][("refusal",)]
    assert bound == pytest.approx(agreement_lower_bound(matches, 200, 0.1))
    assert bound < 0.9  # 80% agreement: the promise of 90% is not held
    assert ("format",) not in got["evalstream_guarantee_agreement_lower_bound"]  # uncalibrated


def test_guarantee_series_are_replaced_when_the_config_changes_across_a_restart():
    registry = CollectorRegistry()
    core = ExporterCore(
        registry,
        agreement=AgreementConfig(resamples=50),
        guarantee=GuaranteeTarget.from_config(_config(alpha=0.1)),
    )
    for i in range(60):
        core.apply_bytes(Stream.VERDICTS, _verdict(f"e{i}", "full_refusal").SerializeToString(), 1_000 + i)
        core.apply_bytes(Stream.LABELS, encode_label(label(f"e{i}", "full_refusal")), 2_000 + i)
    core.publish()
    before = registry.get_sample_value("evalstream_guarantee_agreement_lower_bound", {"dimension": "refusal"})
    assert before == pytest.approx(agreement_lower_bound(60, 60, 0.1))
    saved = json.loads(json.dumps(core.state()))
    # restarted with a recalibrated config: looser alpha, format now calibrated, tighter delta
    registry2 = CollectorRegistry()
    again = ExporterCore(
        registry2,
        state=saved,
        agreement=AgreementConfig(resamples=50),
        guarantee=GuaranteeTarget.from_config(_config(alpha=0.2, delta=0.01, format_calibrated=True)),
    )
    again.publish()
    value = registry2.get_sample_value
    assert value("evalstream_guarantee_target", {"dimension": "refusal"}) == pytest.approx(0.8)
    assert value("evalstream_guarantee_calibrated", {"dimension": "format"}) == 1.0
    assert value("evalstream_guarantee_agreement_lower_bound", {"dimension": "refusal"}) == pytest.approx(
        agreement_lower_bound(60, 60, 0.01)
    )
    # and without a config, no guarantee series at all
    registry3 = CollectorRegistry()
    ExporterCore(registry3, state=saved, agreement=AgreementConfig(resamples=50)).publish()
    samples = [line for line in generate_latest(registry3).decode().splitlines() if not line.startswith("#")]
    assert [line for line in samples if line.startswith("evalstream_guarantee")] == []


def test_guarantee_window_starts_afresh_on_a_new_cascade_version_and_survives_a_restart():
    registry = CollectorRegistry()
    core = ExporterCore(
        registry, agreement=AgreementConfig(resamples=50), guarantee=GuaranteeTarget.from_config(_config())
    )

    def send(i: int, refusal: str, human: str, version: str) -> None:
        verdict = _verdict(f"e{i}", refusal)
        verdict.cascade_version = version
        core.apply_bytes(Stream.VERDICTS, verdict.SerializeToString(), 1_000 + i)
        core.apply_bytes(Stream.LABELS, encode_label(label(f"e{i}", human)), 1_000 + i)

    for i in range(200):  # the old thresholds: 70% agreement
        send(i, "full_refusal", "full_refusal" if i % 10 < 7 else "full_compliance", "old")
    core.publish()
    value = registry.get_sample_value
    assert value("evalstream_guarantee_window_pairs", {"dimension": "refusal"}) == 200
    assert value("evalstream_guarantee_agreement_lower_bound", {"dimension": "refusal"}) < 0.8
    assert value("evalstream_guarantee_cascade_version", {"cascade_version": "old"}) == 1.0
    for i in range(200, 230):  # the reloaded config: all agree; old verdicts still arriving are not scored
        send(i, "full_refusal", "full_refusal", "new")
        send(1000 + i, "full_refusal", "full_compliance", "old")
    core.publish()
    assert value("evalstream_guarantee_window_pairs", {"dimension": "refusal"}) == 30
    assert value("evalstream_guarantee_agreement_lower_bound", {"dimension": "refusal"}) == pytest.approx(
        agreement_lower_bound(30, 30, 0.1)
    )
    assert value("evalstream_guarantee_cascade_version", {"cascade_version": "old"}) is None
    assert value("evalstream_cascade_verdicts_total", {"cascade_version": "old"}) == 230
    assert value("evalstream_cascade_verdicts_total", {"cascade_version": "new"}) == 30
    # the judge-agreement window still holds every version's pairs
    assert value("evalstream_judge_agreement_window_pairs", {"dimension": "refusal", "tier": "all"}) == 260
    saved = json.loads(json.dumps(core.state()))
    registry2 = CollectorRegistry()
    again = ExporterCore(
        registry2,
        state=saved,
        agreement=AgreementConfig(resamples=50),
        guarantee=GuaranteeTarget.from_config(_config()),
    )
    again.publish()
    assert registry2.get_sample_value("evalstream_guarantee_window_pairs", {"dimension": "refusal"}) == 30
    assert (
        registry2.get_sample_value("evalstream_guarantee_cascade_version", {"cascade_version": "new"}) == 1.0
    )


def test_a_reloaded_config_replaces_the_promises_without_a_restart():
    registry = CollectorRegistry()
    core = ExporterCore(
        registry, agreement=AgreementConfig(resamples=50), guarantee=GuaranteeTarget.from_config(_config())
    )
    for i in range(40):
        core.apply_bytes(Stream.VERDICTS, _verdict(f"e{i}", "full_refusal").SerializeToString(), 1_000 + i)
        core.apply_bytes(Stream.LABELS, encode_label(label(f"e{i}", "full_refusal")), 2_000 + i)
    core.publish()
    value = registry.get_sample_value
    assert value("evalstream_guarantee_target", {"dimension": "refusal"}) == pytest.approx(0.9)
    core.agreement.set_guarantee(
        GuaranteeTarget.from_config(_config(alpha=0.2, delta=0.01, format_calibrated=True))
    )
    core.publish()
    assert value("evalstream_guarantee_target", {"dimension": "refusal"}) == pytest.approx(0.8)
    assert value("evalstream_guarantee_calibrated", {"dimension": "format"}) == 1.0
    assert value("evalstream_guarantee_agreement_lower_bound", {"dimension": "refusal"}) == pytest.approx(
        agreement_lower_bound(40, 40, 0.01)
    )
