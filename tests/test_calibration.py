"""Calibration: the guarantee is checked, not assumed.

- ``test_hand_computed_*``: tiny cases whose Clopper-Pearson bounds and thresholds are worked out in
  the comments.
- ``test_guarantee_holds_on_fresh_data``: a hypothesis property test. Judges of known accuracy, many
  independent calibration draws, each measured on a large fresh split: the achieved agreement misses
  ``1 - alpha`` in at most about ``delta`` of the draws.
- ``test_empirical_rate_*``: the same procedure with the bound replaced by the empirical rate fails,
  both on a hand case and on the fresh-split frequency, so the tests above have teeth.
Readers, validation messages, the config round trip and real recorded data follow.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import binom, binomtest
from typer.testing import CliRunner

from evalstream.cli.app import app
from evalstream.evaluation.calibration import (
    CalibrationError,
    CalibrationItem,
    TierSpec,
    TierVerdict,
    calibrate,
    cascade_items,
    clopper_pearson_upper,
    select_threshold,
    to_config,
)
from evalstream.evaluation.judgements import (
    HumanLabel,
    Judgement,
    LabelledSet,
    Split,
    TableError,
    choose_truth_annotator,
    read_human_labels,
    read_judgements,
    write_human_labels,
    write_judgements,
)
from evalstream.evaluation.recorded import build, load_labelled_set
from evalstream.evaluation.routing import config_plan, route, summarise_routes
from evalstream.wire.cascade_config import CascadeConfig, TierRule
from evalstream.wire.dimensions import Dimension

REFUSAL = Dimension.REFUSAL
YES, NO = "full_compliance", "full_refusal"


def empirical_rate(k, n, delta):
    """What a naive calibration would test: the observed disagreement rate, no confidence bound."""
    return np.asarray(k, dtype=float) / np.asarray(n, dtype=float)


def item(i, human, *verdicts):
    return CalibrationItem(
        item_id=f"i{i}",
        human=human,
        verdicts=tuple(TierVerdict(label=label, confidence=conf) for label, conf in verdicts),
    )


# --- the bound -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "delta"), [(0, 1, 0.1), (0, 3, 0.125), (3, 40, 0.1), (14, 102, 0.05), (50, 50, 0.1)]
)
def test_clopper_pearson_is_scipys_exact_binomial_bound(k, n, delta):
    ours = float(clopper_pearson_upper(np.array([k]), np.array([n]), delta)[0])
    scipy_ci = binomtest(k, n, alternative="less").proportion_ci(confidence_level=1 - delta, method="exact")
    assert ours == pytest.approx(scipy_ci.high, rel=1e-9, abs=1e-12)
    if k == 0:  # closed form: (1 - u)^n = delta
        assert ours == pytest.approx(1 - delta ** (1 / n))


# --- hand-computed cases ---------------------------------------------------------------------------


def test_hand_computed_single_tier():
    # Four items; the judge agrees with humans on the three at confidence 0.9 and not on the one at 0.6.
    # alpha = 0.55, delta = 0.125, grid 1.0, 0.9, ..., 0.0, min_accepted = 1.
    # - 1.0 accepts nothing: skipped.
    # - 0.9 accepts 3 items, 0 disagreements. Clopper-Pearson upper bound u solves (1 - u)^3 = delta,
    #   so u = 1 - 0.125^(1/3) = 1 - 0.5 = 0.5 <= 0.55: passed. (0.8 and 0.7 accept the same 3: one test.)
    # - 0.6 accepts 4 items, 1 disagreement. At rate 0.55, P(at most 1 of 4) = 0.45^4 + 4 * 0.55 * 0.45^3
    #   = 0.0410 + 0.2005 = 0.2415 > delta, so the bound exceeds 0.55: failed, testing stops.
    # The threshold is 0.9; the cascade accepts 3 of 4 with agreement 1.
    conf = [0.9, 0.9, 0.9, 0.6]
    wrong = [False, False, False, True]
    threshold, tests = select_threshold(conf, wrong, alpha=0.55, delta=0.125, grid_step=0.1, min_accepted=1)
    assert threshold == 0.9
    assert [(t.threshold, t.accepted, t.disagreements, t.passed) for t in tests] == [
        (0.9, 3, 0, True),
        (0.6, 4, 1, False),
    ]
    assert tests[0].upper_bound == pytest.approx(0.5)
    p_at_alpha = 0.45**4 + 4 * 0.55 * 0.45**3
    assert p_at_alpha == pytest.approx(0.24148125)
    assert tests[1].upper_bound > 0.55

    items = [
        item(i, YES, (YES if not w else NO, c)) for i, (c, w) in enumerate(zip(conf, wrong, strict=True))
    ]
    result = calibrate(
        items,
        [TierSpec(tier=0, judge="j")],
        dimension=REFUSAL,
        alpha=0.55,
        delta=0.125,
        grid_step=0.1,
        min_accepted=1,
    )
    assert result.tiers[0].threshold == 0.9
    assert (result.accepted, result.coverage, result.agreement) == (3, 0.75, 1.0)


def test_hand_computed_two_tiers_split_delta():
    # The same cheap tier, now first of two tiers, at delta = 0.25: each tier is tested at 0.25 / 2 =
    # 0.125, so the cheap tier again certifies 0.9 (bound 0.5 <= 0.55) and keeps 3 items.
    # The fourth item reaches the strong tier, which is right at confidence 0.8: one item, no
    # disagreement, bound 1 - 0.125^(1/1) = 0.875 > 0.55, so the strong tier certifies nothing and the
    # item goes to audit.
    items = [item(i, YES, (YES, 0.9), (YES, 0.5)) for i in range(3)] + [item(3, YES, (NO, 0.6), (YES, 0.8))]
    tiers = [TierSpec(tier=0, judge="cheap"), TierSpec(tier=2, judge="strong")]
    result = calibrate(items, tiers, dimension=REFUSAL, alpha=0.55, delta=0.25, grid_step=0.1, min_accepted=1)
    cheap, strong = result.tiers
    assert (cheap.delta, cheap.threshold, cheap.accepted) == (0.125, 0.9, 3)
    assert (strong.reached, strong.threshold, strong.accepted) == (1, None, 0)
    assert strong.tests[0].upper_bound == pytest.approx(0.875)
    # With delta = 0.125 overall each tier gets 0.0625: 1 - 0.0625^(1/3) = 0.603 > 0.55, nothing certified.
    tight = calibrate(items, tiers, dimension=REFUSAL, alpha=0.55, delta=0.125, grid_step=0.1, min_accepted=1)
    assert tight.tiers[0].tests[0].upper_bound == pytest.approx(1 - 0.0625 ** (1 / 3))
    assert tight.tiers[0].threshold is None
    # the config keeps only the last tier, at inf (never accept): everything is audited
    assert [(r.judge, r.threshold) for r in tight.rules()] == [("strong", math.inf)]
    routed = route(items, tight.plan())
    assert all(r.accepted_by is None and r.called == (1,) for r in routed)


def test_empirical_rate_would_accept_what_the_bound_rejects():
    # 40 items at confidence 0.9, 3 disagreements: empirical rate 3/40 = 0.075 <= alpha = 0.1, but the
    # Clopper-Pearson bound at delta = 0.1 is the 0.9 quantile of Beta(4, 37), 0.159 > 0.1. A calibration
    # that tested the empirical rate would trust this judge; the guarantee forbids it.
    conf = [0.9] * 40
    wrong = [True] * 3 + [False] * 37
    threshold, tests = select_threshold(conf, wrong, alpha=0.1, delta=0.1)
    assert threshold is None
    assert tests[0].upper_bound == pytest.approx(0.1594, abs=1e-4)
    naive, _ = select_threshold(conf, wrong, alpha=0.1, delta=0.1, upper_bound=empirical_rate)
    assert naive == 0.9


def test_min_accepted_skips_small_sets_without_looking_at_labels():
    # the top item alone would fail any test; with min_accepted = 30 the sequence starts at 30 items
    conf = [0.99] + [0.8] * 59
    wrong = [True] + [False] * 59
    threshold, tests = select_threshold(conf, wrong, alpha=0.1, delta=0.1, min_accepted=30)
    assert tests[0].accepted == 60
    assert threshold == 0.8
    strict, tests = select_threshold(conf, wrong, alpha=0.1, delta=0.1, min_accepted=1)
    assert strict is None and tests[0].accepted == 1


def test_no_verdict_is_never_accepted():
    items = [item(i, YES, (None, 1.0), (YES, 1.0)) for i in range(40)]
    tiers = [TierSpec(tier=0, judge="cheap"), TierSpec(tier=2, judge="strong")]
    result = calibrate(items, tiers, dimension=REFUSAL, alpha=0.1, delta=0.1)
    assert result.tiers[0].accepted == 0 and result.tiers[0].threshold is None
    assert result.tiers[1].accepted == 40
    routed = route(items, [(0, 0.0), (1, 0.5)])
    assert all(r.accepted_by == 1 and r.called == (0, 1) for r in routed)


# --- the guarantee on fresh data -------------------------------------------------------------------


def synthetic(rng, n, cheap_floor, strong_floor):
    """Binary labels; each judge's confidence is uniform on [0, 1] and it agrees with the human with
    probability floor + (1 - floor) * confidence (a known, increasing accuracy curve)."""
    human = rng.random(n) < 0.5
    columns = []
    for floor in (cheap_floor, strong_floor):
        conf = np.round(rng.random(n), 4)
        right = rng.random(n) < floor + (1 - floor) * conf
        columns.append((np.where(right, human, ~human), conf))
    return human, columns


def achieved_agreement(human, columns, thresholds):
    """The decision rule on a fresh split: accept tier 1 at c1 >= t1, else tier 2 at c2 >= t2."""
    (label1, conf1), (label2, conf2) = columns
    t1, t2 = (math.inf if t is None else t for t in thresholds)
    first = conf1 >= t1
    second = ~first & (conf2 >= t2)
    accepted = first.sum() + second.sum()
    if accepted == 0:
        return None
    agreed = (label1[first] == human[first]).sum() + (label2[second] == human[second]).sum()
    return agreed / accepted


def failures(*, alpha, delta, cheap_floor, strong_floor, n_cal, draws, seed, bound=clopper_pearson_upper):
    """Over ``draws`` independent calibration sets, how often the fresh-split agreement < 1 - alpha."""
    rng = np.random.default_rng(seed)
    tiers = [TierSpec(tier=0, judge="cheap"), TierSpec(tier=2, judge="strong")]
    missed = certified = 0
    for _ in range(draws):
        human, columns = synthetic(rng, n_cal, cheap_floor, strong_floor)
        items = [
            CalibrationItem(
                item_id=str(i),
                human=str(human[i]),
                verdicts=tuple(TierVerdict(label=str(lab[i]), confidence=float(c[i])) for lab, c in columns),
            )
            for i in range(n_cal)
        ]
        result = calibrate(items, tiers, dimension=REFUSAL, alpha=alpha, delta=delta, upper_bound=bound)
        fresh_human, fresh_columns = synthetic(rng, 20_000, cheap_floor, strong_floor)
        agreement = achieved_agreement(fresh_human, fresh_columns, [t.threshold for t in result.tiers])
        if agreement is not None:
            certified += 1
            missed += agreement < 1 - alpha
    return missed, certified


def allowed_misses(draws, delta):
    # If the guarantee held with failure probability exactly delta, more misses than this would occur
    # with probability below 0.001.
    return int(binom.ppf(0.999, draws, delta))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    alpha=st.sampled_from([0.05, 0.1, 0.15, 0.2]),
    delta=st.sampled_from([0.05, 0.1, 0.2]),
    cheap_floor=st.floats(0.4, 0.8),
    strong_floor=st.floats(0.6, 0.9),
    n_cal=st.integers(300, 800),
    seed=st.integers(0, 2**32 - 1),
)
def test_guarantee_holds_on_fresh_data(alpha, delta, cheap_floor, strong_floor, n_cal, seed):
    draws = 40
    missed, certified = failures(
        alpha=alpha,
        delta=delta,
        cheap_floor=cheap_floor,
        strong_floor=strong_floor,
        n_cal=n_cal,
        draws=draws,
        seed=seed,
    )
    assert missed <= allowed_misses(draws, delta), (missed, certified)


def test_empirical_rate_breaks_the_guarantee_on_fresh_data():
    # Same experiment, a cheap judge whose risk crosses alpha mid-grid (agreement 0.5 + 0.5 c: the
    # accepted set's disagreement is 0.25 (1 - t), = alpha at t = 0.6). With the empirical rate the
    # chosen thresholds sit where the risk is about alpha, so about half the draws miss; with the bound
    # they stay within delta.
    kwargs = dict(alpha=0.1, delta=0.1, cheap_floor=0.5, strong_floor=0.5, n_cal=400, draws=40, seed=7)
    missed_bound, _ = failures(**kwargs)
    missed_naive, certified_naive = failures(**kwargs, bound=empirical_rate)
    assert missed_bound <= allowed_misses(40, 0.1)
    assert missed_naive > allowed_misses(40, 0.1), (missed_naive, certified_naive)


def test_route_is_the_rule_the_property_test_measures():
    rng = np.random.default_rng(3)
    human, columns = synthetic(rng, 500, 0.5, 0.7)
    items = [
        CalibrationItem(
            item_id=str(i),
            human=str(human[i]),
            verdicts=tuple(TierVerdict(label=str(lab[i]), confidence=float(c[i])) for lab, c in columns),
        )
        for i in range(500)
    ]
    summary = summarise_routes(items, route(items, [(0, 0.7), (1, 0.4)]))
    assert summary.agreement == pytest.approx(achieved_agreement(human, columns, [0.7, 0.4]))
    assert summary.calls[0] == 500 and summary.calls[1] == int((columns[0][1] < 0.7).sum())


# --- validation that teaches -----------------------------------------------------------------------


def test_inputs_are_validated_with_messages_that_say_what_to_do():
    items = [item(0, YES, (YES, 0.9), (YES, 0.9))]
    tiers = [TierSpec(tier=0, judge="a"), TierSpec(tier=2, judge="b")]
    with pytest.raises(CalibrationError, match=r"alpha .* strictly between 0 and 1, got 1\.5"):
        calibrate(items, tiers, dimension=REFUSAL, alpha=1.5, delta=0.1)
    with pytest.raises(CalibrationError, match=r"strictly increasing, cheapest first, got \[2, 0\]"):
        calibrate(items, tiers[::-1], dimension=REFUSAL, alpha=0.1, delta=0.1)
    with pytest.raises(CalibrationError, match="has 1 verdicts for 2 tiers"):
        calibrate([item(0, YES, (YES, 0.9))], tiers, dimension=REFUSAL, alpha=0.1, delta=0.1)
    with pytest.raises(CalibrationError, match=r"confidence 1.2, expected a value in \[0, 1\]"):
        calibrate([item(0, YES, (YES, 1.2), (YES, 1.0))], tiers, dimension=REFUSAL, alpha=0.1, delta=0.1)
    with pytest.raises(CalibrationError, match=r"grid step 0\.3 must divide 1"):
        calibrate(items, tiers, dimension=REFUSAL, alpha=0.1, delta=0.1, grid_step=0.3)


def small_set():
    judgements = [
        Judgement(item_id="a", dimension=REFUSAL, tier=0, judge="rules", label=YES, confidence=0.9),
        Judgement(item_id="b", dimension=REFUSAL, tier=0, judge="rules", label=NO, confidence=0.7),
        Judgement(
            item_id="a", dimension=REFUSAL, tier=2, judge="llm", label=YES, confidence=0.8, cost_usd=0.01
        ),
    ]
    humans = [
        HumanLabel(item_id="a", dimension=REFUSAL, label=YES, annotator="ann"),
        HumanLabel(item_id="b", dimension=REFUSAL, label=NO, annotator="ann"),
    ]
    return LabelledSet(
        name="small", judgements=tuple(judgements), humans=tuple(humans), truth_annotator="ann"
    )


def test_cascade_items_explains_missing_verdicts_and_unknown_judges():
    data = small_set()
    with pytest.raises(CalibrationError, match="'llm' has no refusal verdict on 1 of 2 human-labelled items"):
        cascade_items(data, REFUSAL, ["rules", "llm"])
    with pytest.raises(
        CalibrationError, match="\\['gpt-9'\\] have no refusal verdicts in small; choose from"
    ):
        cascade_items(data, REFUSAL, ["gpt-9"])
    items, specs = cascade_items(data, REFUSAL, ["rules"])
    assert [i.item_id for i in items] == ["a", "b"] and specs == [TierSpec(tier=0, judge="rules")]


# --- tables ----------------------------------------------------------------------------------------


def test_tables_round_trip(tmp_path):
    data = small_set()
    write_judgements(tmp_path / "j.jsonl", data.judgements)
    write_human_labels(tmp_path / "h.jsonl", data.humans)
    assert tuple(read_judgements(tmp_path / "j.jsonl")) == data.judgements
    assert tuple(read_human_labels(tmp_path / "h.jsonl")) == data.humans
    loaded = load_labelled_set(data=None, judgements=tmp_path / "j.jsonl", humans=tmp_path / "h.jsonl")
    assert loaded.truth_annotator == "ann" and loaded.judgements == data.judgements


def row(**fields):
    base = {"item_id": "x", "dimension": "refusal", "tier": 0, "judge": "r", "label": None, "confidence": 0}
    return json.dumps({**base, **fields})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "j.jsonl:2: not JSON"),
        ('{"item_id": "x"}', "j.jsonl:2: bad judgement row: dimension: Field required"),
        (row(label="maybe"), "label 'maybe' is not a refusal label; expected one of full_compliance"),
        (row(confidence=2), "confidence: Input should be less than or equal to 1"),
        (row(item_id="a", judge="rules"), "already judged item 'a' on refusal at line 1"),
        (row(dimension="vibes"), "dimension: Input should be 'refusal', 'format', 'quality' or 'pairwise'"),
    ],
)
def test_judgement_reader_names_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "j.jsonl"
    path.write_text(row(item_id="a", judge="rules") + "\n" + line + "\n")
    with pytest.raises(TableError, match=re.escape(message)):
        read_judgements(path)


def test_human_reader_and_truth_annotator_explain(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text(
        json.dumps({"item_id": "a", "dimension": "refusal", "label": YES, "annotator": "x"})
        + "\n"
        + json.dumps({"item_id": "a", "dimension": "refusal", "label": NO, "annotator": "y"})
        + "\n"
    )
    humans = read_human_labels(path)
    with pytest.raises(
        TableError, match="several annotators \\(x, y\\); say which one is the truth with --truth"
    ):
        choose_truth_annotator(humans, None)
    with pytest.raises(TableError, match="truth annotator 'z' has no labels; the human-label table has x, y"):
        choose_truth_annotator(humans, "z")
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(TableError, match="the human-label table is empty"):
        read_human_labels(empty)
    with pytest.raises(TableError, match="cannot read the judgement table"):
        read_judgements(tmp_path / "missing.jsonl")


# --- config ----------------------------------------------------------------------------------------


def test_config_round_trips_and_routes_the_same(tmp_path):
    rng = np.random.default_rng(11)
    human, columns = synthetic(rng, 600, 0.75, 0.8)
    items = [
        CalibrationItem(
            item_id=str(i),
            human=str(human[i]),
            verdicts=tuple(TierVerdict(label=str(lab[i]), confidence=float(c[i])) for lab, c in columns),
        )
        for i in range(600)
    ]
    tiers = [TierSpec(tier=0, judge="cheap", confidence="made up"), TierSpec(tier=2, judge="strong")]
    # min_accepted 100: the first test sees enough items that one unlucky disagreement cannot stop it
    result = calibrate(items, tiers, dimension=REFUSAL, alpha=0.1, delta=0.1, min_accepted=100)
    assert all(t.threshold is not None for t in result.tiers)
    config = to_config([result], version="t1", calibration_data="synthetic")
    path = tmp_path / "c.yaml"
    config.dump(path)
    loaded = CascadeConfig.load(path)
    assert loaded == config
    rules = loaded.dimensions["refusal"].tiers
    assert rules[0].judge == "cheap" and rules[0].confidence == "made up"
    assert rules[0].calibrated_coverage == pytest.approx(result.tiers[0].accepted / 600)
    assert rules[0].calibrated_upper_bound is not None and rules[0].calibrated_upper_bound <= 0.1
    assert config_plan(loaded, REFUSAL, tiers) == result.plan()
    # every tier considered stays a shadow tier: one the fit drops is still judged on the sample
    assert loaded.dimensions["refusal"].shadow_tiers == [0, 2]


def test_threshold_inf_means_never_and_other_values_are_rejected():
    assert TierRule(tier=2, threshold=math.inf).threshold == math.inf
    # As `up` and `collect` print the rules: "never accepts", not ">= inf".
    assert TierRule(tier=2, threshold=math.inf).rule() == "tier 2 never accepts"
    assert TierRule(tier=0, threshold=0.78912).rule() == "tier 0 >= 0.789"
    assert yaml.safe_load(yaml.safe_dump({"t": math.inf})) == {"t": math.inf}
    for bad in (1.5, -0.1, math.nan):
        with pytest.raises(ValueError, match="threshold must be in \\[0, 1\\]"):
            TierRule(tier=0, threshold=bad)


# --- real recorded data ----------------------------------------------------------------------------


def test_xstest_calibration_meets_its_target_on_the_held_out_split(shared_data: Path):
    # Figures measured on seed 0 (see benchmarks/cascade_cost.py for 20 seeds).
    data = build("xstest", shared_data, seed=0)
    cal, test = data.split(Split.CALIBRATION), data.split(Split.TEST)
    assert {len(cal.truth(REFUSAL)), len(test.truth(REFUSAL))} == {800, 895}
    for alpha, min_coverage, max_strong in ((0.2, 0.95, 0.05), (0.15, 0.7, 0.35), (0.1, 0.3, 1.0)):
        items, tiers = cascade_items(cal, REFUSAL, ["strmatch", "gpt-4"])
        result = calibrate(items, tiers, dimension=REFUSAL, alpha=alpha, delta=0.1)
        held, _ = cascade_items(test, REFUSAL, ["strmatch", "gpt-4"])
        summary = summarise_routes(held, route(held, result.plan()))
        assert summary.agreement is not None and summary.agreement >= 1 - alpha
        assert summary.coverage >= min_coverage
        assert summary.calls_per_1000(1) <= 1000 * max_strong
    # at 0.9 the string matcher's best cell already fails the first test: GPT-4 serves alone
    assert result.tiers[0].threshold is None and result.tiers[1].threshold is not None


@pytest.mark.parametrize("name", ["llmbar", "judgebench"])
def test_hard_sets_certify_nothing_at_080(shared_data: Path, name):
    # Measured: no judge's confident verdicts agree with the labels well enough to certify 0.8 on these
    # calibration splits (LLMBar: GPT-4's order-consistent verdicts agree ~81%; JudgeBench: ~157
    # items, o1-mini 14 wrong of 102 consistent, bound 0.206 > 0.2). Everything goes to audit.
    data = build(name, shared_data, seed=0)
    items, tiers = cascade_items(data.split(Split.CALIBRATION), Dimension.PAIRWISE, list(data.cascade))
    result = calibrate(items, tiers, dimension=Dimension.PAIRWISE, alpha=0.2, delta=0.1)
    assert result.accepted == 0
    assert result.tiers[-1].tests[0].upper_bound > 0.2
    looser = calibrate(items, tiers, dimension=Dimension.PAIRWISE, alpha=0.3, delta=0.1)
    assert looser.coverage > 0.5 and looser.agreement is not None and looser.agreement >= 0.7


def test_calibrate_command_writes_a_config_the_pipeline_loads(tmp_path):
    out = tmp_path / "cascade.yaml"
    tables = tmp_path / "tables"
    result = CliRunner().invoke(
        app,
        [
            "calibrate",
            "--data",
            "xstest",
            "--alpha",
            "0.1",
            "--delta",
            "0.1",
            "--out",
            str(out),
            "--write-tables",
            str(tables),
        ],
    )
    assert result.exit_code == 0, result.output
    config = CascadeConfig.load(out)
    assert (config.alpha, config.delta) == (0.1, 0.1)
    rules = config.dimensions["refusal"].tiers
    assert rules[-1].judge == "gpt-4" and 0.5 < rules[-1].threshold <= 1.0
    assert "held-out test split" in result.output
    judgements = read_judgements(tables / "xstest.judgements.jsonl")
    assert len(judgements) == 4500 and sum(j.label is None for j in judgements) == 11
    assert len(read_human_labels(tables / "xstest.humans.jsonl")) == 6750


def test_calibrate_command_rejects_bad_input_with_a_clear_message(tmp_path):
    result = CliRunner().invoke(
        app, ["calibrate", "--data", "xstest", "--alpha", "0", "--out", str(tmp_path / "c")]
    )
    assert result.exit_code != 0 and "--alpha must lie strictly between 0 and 1" in result.output
    result = CliRunner().invoke(app, ["calibrate", "--data", "nosuch", "--out", str(tmp_path / "c")])
    assert result.exit_code != 0
    assert "unknown recorded data set 'nosuch'" in result.output
