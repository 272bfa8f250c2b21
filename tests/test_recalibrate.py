"""``evalstream recalibrate``: the join of human labels with recorded per-tier judgements (every bad
input counted under its reason), the refit with the calibration's guarantee, and the command on a real
broker (offset ranges in the provenance, a version derived from content, a rerun giving the same)."""

from __future__ import annotations

import hashlib
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kafka import KafkaProducer
from typer.testing import CliRunner

from evalstream.cli.app import app
from evalstream.evaluation.recalibrate import LabelOutcome, join_labels, refit
from evalstream.kafka.admin import ensure_topics
from evalstream.local.broker import EmbeddedBroker
from evalstream.runtime.settings import KafkaSettings
from evalstream.tools.recalibrate import recalibrate
from evalstream.v1 import verdict_pb2
from evalstream.wire.cascade_config import (
    CascadeConfig,
    DimensionCascade,
    TierRule,
    content_version,
    threshold_for,
)
from evalstream.wire.dimensions import Dimension

JUDGED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BASE = CascadeConfig(
    version="base-v1",
    alpha=0.1,
    delta=0.1,
    dimensions={
        "refusal": DimensionCascade(tiers=[TierRule(tier=0, threshold=0.5), TierRule(tier=1, threshold=0.0)]),
        "format": DimensionCascade(tiers=[TierRule(tier=0, threshold=0.0)]),
    },
)
LABELS = ("full_compliance", "full_refusal")


def judgement(tier: int, label: str, confidence: float, judge: str = "") -> verdict_pb2.Judgement:
    return verdict_pb2.Judgement(
        dimension="refusal", label=label, confidence=confidence, tier=tier, judge=judge or f"judge-{tier}"
    )


def make_verdict(
    event_id: str, judgements: list[verdict_pb2.Judgement], sample: bool = True
) -> verdict_pb2.Verdict:
    verdict = verdict_pb2.Verdict(event_id=event_id, calibration_sample=sample, cascade_version="base-v1")
    verdict.judged_at.FromDatetime(JUDGED)
    first = judgements[0] if judgements else judgement(0, "full_compliance", 1.0)
    verdict.dimensions.append(
        verdict_pb2.DimensionVerdict(dimension="refusal", label=first.label, judgements=judgements)
    )
    verdict.dimensions.append(verdict_pb2.DimensionVerdict(dimension="format", label="ok"))
    return verdict


def label(event_id: str, value: str, *, annotator: str = "adjudicated", after: timedelta = timedelta(hours=1),
          dimension: str = "refusal") -> bytes:  # fmt: skip
    return json.dumps(
        {"event_id": event_id, "dimension": dimension, "label": value, "annotator": annotator,
         "labelled_at": (JUDGED + after).isoformat()}
    ).encode()  # fmt: skip


def traffic(
    n: int, seed: int = 7, *, tier0_good: bool = True
) -> tuple[list[verdict_pb2.Verdict], list[bytes], dict[str, str]]:
    """``n`` calibration-sample events: tier 0 right when confident (confidence > 0.7: 98%), a coin
    toss below (``tier0_good`` False: a coin toss everywhere); tier 1 right 97% of the time. Human
    labels for each."""
    rng = random.Random(seed)
    verdicts, labels, truth = [], [], {}
    for i in range(n):
        event_id = f"ev-{i}"
        human = rng.choice(LABELS)
        other = LABELS[1 - LABELS.index(human)]
        conf0 = rng.random()
        right0 = rng.random() < (0.98 if conf0 > 0.7 and tier0_good else 0.5)
        right1 = rng.random() < 0.97
        verdicts.append(
            make_verdict(
                event_id,
                [
                    judgement(0, human if right0 else other, conf0),
                    judgement(1, human if right1 else other, 0.9),
                ],
            )
        )
        labels.append(label(event_id, human))
        truth[event_id] = human
    return verdicts, labels, truth


def test_every_bad_label_is_counted_under_its_reason_and_none_is_lost() -> None:
    verdicts, labels, _ = traffic(200)
    verdicts += [
        make_verdict("not-sampled", [judgement(0, "full_refusal", 0.9)], sample=False),
        make_verdict("tier1-failed", [judgement(0, "full_refusal", 0.2)]),
        make_verdict("other-judge",[judgement(0, "full_refusal", 0.9), judgement(1, "full_refusal", 1, "x")]),
        make_verdict("ev-0", [judgement(0, "full_refusal", 0.9)]),  # the same event again
    ]  # fmt: skip
    bad = [
        b"{not json",
        label("ev-1", "maybe"),  # outside the refusal labels
        label("ev-2", "full_refusal", annotator="annotator_1"),
        label("ev-3", "ok", dimension="quality"),  # a quality label: outside its set ...
        label("ev-3", "good", dimension="quality"),  # ... and a dimension the cascade does not judge
        labels[4],  # the same label again
        label("ev-5", "full_refusal" if b"full_compliance" in labels[5] else "full_compliance"),  # conflicts
        label("nobody", "full_refusal"),
        label("ev-6", "full_refusal", after=timedelta(hours=-1)),
        label("ev-7", "full_refusal", after=timedelta(days=30)),
        label("not-sampled", "full_refusal"),
        label("tier1-failed", "full_refusal"),
        label("other-judge", "full_refusal"),
    ]
    # ev-6 and ev-7 have their good labels too: drop those so that the late and early ones stand alone
    records = [r for r in labels if json.loads(r)["event_id"] not in ("ev-6", "ev-7")] + bad
    joined = join_labels(verdicts, records, cascade=BASE, truth_annotator="adjudicated")
    assert dict(joined.outcomes) == {
        LabelOutcome.JOINED: 200 - 3,  # ev-5 conflicts; ev-6 and ev-7 have only their bad labels
        LabelOutcome.INVALID_RECORD: 1,
        LabelOutcome.LABEL_OUTSIDE_SET: 2,
        LabelOutcome.OTHER_ANNOTATOR: 1,
        LabelOutcome.DIMENSION_NOT_IN_CASCADE: 1,
        LabelOutcome.DUPLICATE: 1,
        LabelOutcome.CONFLICTING: 2,
        LabelOutcome.UNKNOWN_EVENT: 1,
        LabelOutcome.BEFORE_VERDICT: 1,
        LabelOutcome.AFTER_JOIN_WINDOW: 1,
        LabelOutcome.NOT_IN_CALIBRATION_SAMPLE: 1,
        LabelOutcome.INCOMPLETE_JUDGEMENTS: 1,
        LabelOutcome.JUDGE_CHANGED: 1,
    }
    assert joined.labels == len(records)  # every record has exactly one outcome
    assert joined.duplicate_verdicts == 1 and joined.verdicts == len(verdicts)
    ids = {i.event_id for i in joined.items[next(iter(joined.items))]}
    assert "ev-4" in ids and "ev-5" not in ids and "other-judge" not in ids


def test_refit_certifies_thresholds_that_hold_and_keeps_dimensions_without_enough_items() -> None:
    verdicts, labels, _ = traffic(1200)
    joined = join_labels(verdicts, labels, cascade=BASE, truth_annotator="adjudicated")
    result = refit(joined, BASE, alpha=0.1, delta=0.1, min_items=100)
    assert "format" in result.kept and "fewer than the 100" in result.kept["format"]
    assert result.dimensions["format"] == BASE.dimensions["format"]
    (fit,) = result.calibrations
    rules = result.dimensions["refusal"].tiers
    assert [r.tier for r in rules] == [0, 1]
    # tier 0 is right 98% above 0.7 and a coin toss below: the certified threshold is near 0.7
    assert 0.6 < rules[0].threshold < 0.8
    assert fit.agreement is not None and fit.agreement >= 0.9
    # on fresh traffic from the same process, the accepted verdicts agree with humans >= 1 - alpha
    fresh, _, fresh_truth = traffic(3000, seed=99)
    accepted = wrong = 0
    for verdict in fresh:
        j0, j1 = verdict.dimensions[0].judgements
        pick = (
            j0
            if j0.confidence >= rules[0].threshold
            else (j1 if j1.confidence >= rules[1].threshold else None)
        )
        if pick is not None:
            accepted += 1
            wrong += pick.label != fresh_truth[verdict.event_id]
    assert accepted > 2000 and wrong / accepted <= 0.1
    # too few items: every dimension kept
    assert set(refit(joined, BASE, alpha=0.1, delta=0.1, min_items=5000).kept) == {"refusal", "format"}


def test_refit_records_the_confidence_source_each_threshold_was_fitted_for() -> None:
    verdicts, labels, _ = traffic(1200)
    for verdict in verdicts:
        for j in verdict.dimensions[0].judgements:
            j.confidence_source = "rule_precision" if j.tier == 0 else "classifier_probability"
    joined = join_labels(verdicts, labels, cascade=BASE, truth_annotator="adjudicated")
    rules = refit(joined, BASE, alpha=0.1, delta=0.1, min_items=100).dimensions["refusal"].tiers
    assert [(r.tier, r.confidence_source) for r in rules] == [
        (0, "rule_precision"),
        (1, "classifier_probability"),
    ]
    # a judgement from another source than the fitted one gets no threshold: it escalates
    assert threshold_for(rules[0].thresholds(), "logprobs") is None
    assert threshold_for(rules[0].thresholds(), "rule_precision") == rules[0].threshold


def test_a_dropped_tier_stays_a_shadow_tier_and_comes_back_when_the_labels_support_it() -> None:
    # tier 0 guesses: the refit drops it from the decision tiers, and keeps it a shadow tier
    verdicts, labels, _ = traffic(1200, tier0_good=False)
    joined = join_labels(verdicts, labels, cascade=BASE, truth_annotator="adjudicated")
    dropped = refit(joined, BASE, alpha=0.1, delta=0.1).dimensions["refusal"]
    assert [r.tier for r in dropped.tiers] == [1]
    assert dropped.shadow_tiers == [0, 1] and dropped.sample_tiers == [0, 1]
    config = BASE.model_copy(update={"dimensions": {**BASE.dimensions, "refusal": dropped}})
    # the sample still records tier 0 (test_calibration_sample.py); once it is right again, it returns
    verdicts, labels, _ = traffic(1200, seed=8)
    joined = join_labels(verdicts, labels, cascade=config, truth_annotator="adjudicated")
    assert joined.tiers[Dimension.REFUSAL] == [0, 1]
    back = refit(joined, config, alpha=0.1, delta=0.1).dimensions["refusal"]
    assert [r.tier for r in back.tiers] == [0, 1] and 0.6 < back.tiers[0].threshold < 0.8
    assert back.shadow_tiers == [0, 1]
    # verdicts of a pipeline that could not reach tier 0 (no endpoint): it is left out, nothing lost
    blind = [make_verdict(v.event_id, list(v.dimensions[0].judgements)[1:]) for v in verdicts]
    joined = join_labels(blind, labels, cascade=config, truth_annotator="adjudicated")
    assert joined.tiers[Dimension.REFUSAL] == [1] and joined.outcomes[LabelOutcome.JOINED] == 1200
    assert [r.tier for r in refit(joined, config, alpha=0.1, delta=0.1).dimensions["refusal"].tiers] == [1]


def test_shadow_tiers_are_validated_and_change_the_version_only_when_set() -> None:
    with pytest.raises(ValueError, match="shadow_tiers must be strictly increasing"):
        DimensionCascade(tiers=[TierRule(tier=1, threshold=0.0)], shadow_tiers=[1, 0])
    with pytest.raises(ValueError, match="less than or equal to 9"):
        DimensionCascade(tiers=[TierRule(tier=1, threshold=0.0)], shadow_tiers=[10])
    plain = BASE.model_dump(mode="json")
    for dimension in plain["dimensions"].values():
        del dimension["shadow_tiers"]  # a config written before the field: it loads as before
    assert CascadeConfig.model_validate(plain) == BASE
    # the version a config got before shadow tiers existed (the digest of its rules, alpha and delta)
    old = {"dimensions": plain["dimensions"], "alpha": 0.1, "delta": 0.1}
    digest = hashlib.blake2b(json.dumps(old, sort_keys=True).encode(), digest_size=6).hexdigest()
    assert content_version(BASE) == f"cascade-{digest}"
    shadowed = BASE.model_copy(
        update={
            "dimensions": {
                **BASE.dimensions,
                "format": DimensionCascade(tiers=[TierRule(tier=0, threshold=0.0)], shadow_tiers=[2]),
            }
        }
    )
    assert content_version(shadowed) != content_version(BASE)
    assert shadowed.tiers == [0, 1] and shadowed.shadow_tiers == [2]


def test_recalibrate_reads_kafka_and_writes_a_versioned_config_with_provenance(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    kafka = KafkaSettings(bootstrap=broker.bootstrap)
    verdicts_topic, labels_topic = f"verdicts-{unique}", f"labels-{unique}"
    ensure_topics(kafka, {verdicts_topic: 2, labels_topic: 1})
    verdicts, labels, _ = traffic(400)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for v in verdicts:
        producer.send(verdicts_topic, key=v.event_id.encode(), value=v.SerializeToString())
    producer.send(verdicts_topic, key=b"junk", value=b"\xff\xff not a verdict")
    for r in [*labels, b"{broken"]:
        producer.send(labels_topic, value=r)
    producer.flush()
    producer.close()
    base_path = tmp_path / "base.yaml"
    BASE.dump(base_path)

    result = recalibrate(kafka, base=BASE, truth_annotator="adjudicated", verdicts_topic=verdicts_topic,
                         labels_topic=labels_topic, join_window=timedelta(days=3650))  # fmt: skip
    config = result.config
    prov = config.provenance
    assert prov is not None and prov.base_version == "base-v1"
    assert prov.items == {"refusal": 400}
    assert prov.labels == {"joined": 400, "invalid_record": 1}
    assert prov.verdicts == {"read": 401, "duplicate": 0, "unreadable": 1}
    by_topic: dict[str, int] = {}
    for r in prov.read:
        by_topic[r.topic] = by_topic.get(r.topic, 0) + r.records
        assert r.last - r.first + 1 == r.records  # plain (non-transactional) records: no gaps
    assert by_topic == {verdicts_topic: 401, labels_topic: 401}
    assert "format" in prov.kept
    assert config.version.startswith("recal-") and config.alpha == 0.1
    assert config.dimensions["refusal"] != BASE.dimensions["refusal"]

    out = tmp_path / "new.yaml"
    cli = CliRunner().invoke(app, [
        "recalibrate", "--cascade-config", str(base_path), "--out", str(out), "--bootstrap", broker.bootstrap,
        "--verdicts-topic", verdicts_topic, "--labels-topic", labels_topic, "--join-window-h", "100000",
    ])  # fmt: skip
    assert cli.exit_code == 0, cli.output
    again = CascadeConfig.load(out)
    assert again.version == config.version  # derived from content: the same data, the same version
    assert "invalid_record" in cli.output and f"wrote {out}" in cli.output


def test_recalibrate_names_a_missing_topic(broker: EmbeddedBroker, unique: str, tmp_path: Path) -> None:
    base_path = tmp_path / "base.yaml"
    BASE.dump(base_path)
    cli = CliRunner().invoke(app, [
        "recalibrate", "--cascade-config", str(base_path), "--bootstrap", broker.bootstrap,
        "--verdicts-topic", f"nothing-{unique}", "--out", str(tmp_path / "x.yaml"),
    ])  # fmt: skip
    assert cli.exit_code == 1
    assert f"nothing-{unique}" in cli.output and "does not exist" in cli.output
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.parametrize("alpha", ["0", "1.5"])
def test_recalibrate_refuses_alpha_outside_0_1(tmp_path: Path, alpha: str) -> None:
    base_path = tmp_path / "base.yaml"
    BASE.dump(base_path)
    cli = CliRunner().invoke(app, ["recalibrate", "--cascade-config", str(base_path), "--alpha", alpha])
    assert cli.exit_code != 0 and "--alpha" in cli.output
