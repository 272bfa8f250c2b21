"""Drift from sketches: statistics against hand-computed cases and against exact computations on the
raw samples, the windows (trailing and pinned), bounded memory, and state across a restart."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from datasketches import kll_floats_sketch
from prometheus_client import CollectorRegistry, generate_latest
from scipy.stats import chi2, chi2_contingency

from evalstream.exporter.core import SPECS, ExporterCore
from evalstream.exporter.drift import DriftConfig, DriftTracker, Reference
from evalstream.exporter.drift_stats import (
    PSI_FLOOR,
    chi_square_pvalue,
    compare_counts,
    compare_sketches,
    psi,
    sketch_sample_size,
)
from evalstream.exporter.totals import Totals
from evalstream.v1 import summary_pb2
from evalstream.wire.dimensions import EmbeddingStat

K = 200
EPS_PMF = kll_floats_sketch.get_normalized_rank_error(K, True)  # 99% bound, double-sided (PMF)
EPS_RANK = kll_floats_sketch.get_normalized_rank_error(K, False)  # 99% bound, single-sided (quantiles)
DECILES = [i / 10 for i in range(1, 10)]


def sketch(values) -> kll_floats_sketch:
    s = kll_floats_sketch(K)
    s.update(np.asarray(list(values) if isinstance(values, range) else values, dtype=np.float32))
    return s


def exact_shares(values, splits) -> np.ndarray:
    """Share of raw values per bin (s_{i-1}, s_i], as the sketch's inclusive PMF defines them."""
    x = np.asarray(values, dtype=np.float32)  # what the sketch stores
    return np.bincount(np.searchsorted(splits, x, side="left"), minlength=len(splits) + 1) / len(x)


def psi_gradient_bound(r: np.ndarray, c: np.ndarray, delta: float) -> float:
    """First-order bound on |PSI error| when every share of r and c is off by at most ``delta``:
    d PSI / d c_i = ln(c_i / r_i) + 1 - r_i / c_i, d PSI / d r_i = ln(r_i / c_i) + 1 - c_i / r_i."""
    dc = np.log(c / r) + 1 - r / c
    dr = np.log(r / c) + 1 - c / r
    return float((np.abs(dc) + np.abs(dr)).sum() * delta)


# --- statistics: hand-computed cases -----------------------------------------------------------


def test_psi_by_hand():
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5) = 0.25 (ln 2 + ln 1.5)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * (math.log(2) + math.log(1.5)), abs=1e-12)
    assert psi([10, 30], [10, 30]) == 0.0  # counts are normalised; same shares, no drift
    assert psi([1, 2, 3], [3, 2, 1]) == pytest.approx(psi([3, 2, 1], [1, 2, 3]))  # symmetric
    # an empty bin is raised to the floor, so PSI stays finite and large
    floored = np.array([1.0, PSI_FLOOR]) / (1 + PSI_FLOOR)
    half = np.array([0.5, 0.5])
    assert psi([1, 0], [1, 1]) == pytest.approx(float(((half - floored) * np.log(half / floored)).sum()))
    with pytest.raises(ValueError, match="same bins"):
        psi([1, 2], [1, 2, 3])


def test_chi_square_by_hand():
    # rows of 100, column totals 50/60/90: expected 25/30/45 in each row;
    # chi2 = 2 * (5^2/25 + 0 + 5^2/45) = 3.111..., 2 degrees of freedom: p = exp(-chi2 / 2)
    p = chi_square_pvalue([20, 30, 50], [30, 30, 40])
    assert p == pytest.approx(math.exp(-(2 * (25 / 25 + 25 / 45)) / 2), rel=1e-12)
    assert chi_square_pvalue([5, 0, 7], [10, 0, 14]) == pytest.approx(1.0)  # same shares; empty bin dropped
    assert chi_square_pvalue([5, 0], [7, 0]) == 1.0  # one bin left: nothing can differ


def test_compare_sketches_by_hand_on_exact_sketches():
    ref, cur = sketch(range(1, 101)), sketch(range(6, 106))  # n <= k: the sketches hold every item
    assert not ref.is_estimation_mode() and sketch_sample_size(ref) == 100
    assert ref.get_quantiles(DECILES, True) == [10, 20, 30, 40, 50, 60, 70, 80, 90]
    # current per decile bin of the reference: 6..10 -> 5%, eight bins of 10%, 91..105 -> 15%
    result = compare_sketches(ref, cur)
    assert result.psi == pytest.approx(0.05 * math.log(2) + 0.05 * math.log(1.5), abs=1e-12)
    # expected counts 7.5 and 12.5 in the first and last columns: chi2 = 2 (2.5^2/7.5 + 2.5^2/12.5)
    assert result.p_value == pytest.approx(chi2.sf(2 * (6.25 / 7.5 + 6.25 / 12.5), df=9), rel=1e-9)
    assert (result.reference_n, result.current_n) == (100, 100)


def test_compare_counts_by_hand_refusal_shift():
    # XSTest's human labels: mistralinstruct refuses 76 of 450 (17%), llama2orig 349 of 450 (78%)
    result = compare_counts({"refusal": 76, "other": 374}, {"refusal": 349, "other": 101})
    r, c = np.array([76, 374]) / 450, np.array([349, 101]) / 450
    assert result.psi == pytest.approx(float(((c - r) * np.log(c / r)).sum()), abs=1e-12)
    assert result.psi > 1.5
    table = np.array([[76, 374], [349, 101]])
    assert (
        result.p_value == pytest.approx(chi2_contingency(table).pvalue, rel=1e-12) and result.p_value < 1e-50
    )
    assert compare_counts({"refusal": 10, "other": 90}, {"refusal": 20, "other": 180}).psi == 0.0


# --- statistics: sketches against exact computations on the raw samples -------------------------


@pytest.fixture(scope="module")
def samples():
    """Response lengths shaped like real ones (log-normal), two same-distribution samples and a
    shifted one (lengths up 30%), 20,000 each: the sketches are in estimation mode."""
    rng = np.random.default_rng(7)
    a, b = rng.lognormal(6.0, 0.8, 20_000), rng.lognormal(6.0, 0.8, 20_000)
    shifted = rng.lognormal(6.0 + math.log(1.3), 0.8, 20_000)
    return {"a": a, "b": b, "shifted": shifted, **{f"sk_{k}": sketch(v) for k, v in (("a", a), ("b", b))}}


def test_sketch_bin_shares_are_within_the_sketch_error_of_the_raw_shares(samples):
    ref = samples["sk_a"]
    assert ref.is_estimation_mode()
    splits = sorted(set(ref.get_quantiles(DECILES, True)))
    for name in ("a", "b", "shifted"):
        s = ref if name == "a" else sketch(samples[name])
        assert (
            np.abs(np.asarray(s.get_pmf(splits, True)) - exact_shares(samples[name], splits)).max() <= EPS_PMF
        )


def test_sketch_psi_matches_exact_psi_within_the_propagated_sketch_error(samples):
    """Tolerance: every bin share is known to +-EPS_PMF from the sketch's PMF; the decile split
    points to +-EPS_RANK in rank, which moves a bin's share by at most 2 EPS_RANK. Propagated to first
    order through PSI's partial derivatives at the exact shares."""
    raw_ref = samples["a"]
    exact_splits = np.quantile(raw_ref.astype(np.float32), DECILES, method="inverted_cdf")
    for name in ("b", "shifted"):
        raw_cur = samples[name]
        r, c = exact_shares(raw_ref, exact_splits), exact_shares(raw_cur, exact_splits)
        exact = float(((c - r) * np.log(c / r)).sum())
        got = compare_sketches(samples["sk_a"], sketch(raw_cur))
        tolerance = psi_gradient_bound(r, c, EPS_PMF + 2 * EPS_RANK)
        assert abs(got.psi - exact) <= tolerance, (name, got.psi, exact, tolerance)
    assert compare_sketches(samples["sk_a"], samples["sk_b"]).psi < 0.02  # same distribution
    assert compare_sketches(samples["sk_a"], sketch(samples["shifted"])).psi > 0.05  # lengths up 30%


def test_sketch_chi_square_agrees_with_scipy_on_raw_counts_and_its_sample_size_cap_prevents_false_alarms(
    samples,
):
    ref = samples["sk_a"]
    splits = sorted(set(ref.get_quantiles(DECILES, True)))
    n = len(samples["a"])
    exact_same = chi2_contingency(
        np.vstack([exact_shares(samples["a"], splits) * n, exact_shares(samples["b"], splits) * n])
    ).pvalue
    exact_shift = chi2_contingency(
        np.vstack([exact_shares(samples["a"], splits) * n, exact_shares(samples["shifted"], splits) * n])
    ).pvalue
    same = compare_sketches(ref, samples["sk_b"]).p_value
    shift = compare_sketches(ref, sketch(samples["shifted"])).p_value
    # same decisions as the exact test on the raw samples, at any usual level
    assert exact_same > 0.05 and same > 0.05
    assert exact_shift < 1e-12 and shift < 1e-12
    # The cap: treated as 20,000 items each, the sketches' own approximation (<= EPS_PMF a bin) would
    # read as drift between two samples of one distribution; at 1/EPS^2 items it does not.
    cap = 1 / EPS_PMF**2
    assert sketch_sample_size(ref) == pytest.approx(cap) and cap < n
    pa, pb = (np.asarray(s.get_pmf(splits, True)) for s in (ref, samples["sk_b"]))
    assert chi_square_pvalue(pa * n, pb * n) < same


def test_big_same_distribution_windows_stay_quiet_with_the_cap_and_would_not_without_it():
    """A million response lengths in each window, one distribution: the exact test on the raw samples
    and the capped sketch test agree there is no drift; uncapped, the sketches' own error would be."""
    n = 1_000_000
    rng = np.random.default_rng(2)
    a, b = rng.lognormal(6, 1, n), rng.lognormal(6, 1, n)
    sa, sb = sketch(a), sketch(b)
    exact_splits = np.quantile(a.astype(np.float32), DECILES, method="inverted_cdf")
    exact = chi2_contingency(
        np.vstack([exact_shares(a, exact_splits), exact_shares(b, exact_splits)]) * n
    ).pvalue
    splits = sorted(set(sa.get_quantiles(DECILES, True)))
    pa, pb = (np.asarray(s.get_pmf(splits, True)) for s in (sa, sb))
    uncapped = chi_square_pvalue(pa * n, pb * n)
    capped = compare_sketches(sa, sb)
    print(
        f"same distribution, 1M a window: exact p={exact:.3g}, sketch uncapped p={uncapped:.3g}, "
        f"capped p={capped.p_value:.3g}, PSI {capped.psi:.4f}"
    )
    assert exact > 0.05 and capped.p_value > 0.05 and capped.psi < 0.01
    assert uncapped < 1e-6
    shifted = compare_sketches(sa, sketch(rng.lognormal(6.2, 1, n)))  # 22% longer
    assert shifted.p_value < 1e-6 and shifted.psi > 0.005


# --- the windows -----------------------------------------------------------------------------------


def chars_summary(minute: int, values, *, model="m", route="chat") -> summary_pb2.Summary:
    return summary_pb2.Summary(
        batch_id="b",
        model=model,
        model_version="v1",
        route=route,
        window_start_unix=minute,
        events_in=len(values),
        unsampled=len(values),
        response_chars_sketch=sketch(values).serialize(),
    )


def refusal_summary(
    minute: int, refused: int, complied: int, scores=None, *, model="m"
) -> summary_pb2.Summary:
    s = summary_pb2.Summary(
        batch_id="b",
        model=model,
        model_version="v1",
        route="chat",
        dimension="refusal",
        window_start_unix=minute,
    )
    s.label_counts.update({"full_refusal": refused, "full_compliance": complied})
    if scores is not None:
        s.score_sketch = sketch(scores).serialize()
    return s


def tracker(**kw) -> tuple[DriftTracker, Totals]:
    totals = Totals(SPECS)
    return DriftTracker(DriftConfig(**kw), totals), totals


H = 3600


def test_trailing_reference_is_the_window_before_the_current_one():
    t, totals = tracker(bucket_s=60, current_s=600, reference_s=3600, reference_bucket_s=600, min_samples=50)
    base = 100 * H
    for minute in range(base, base + 30 * 60, 60):  # 30 minutes of short answers, 10 refusals of 100
        t.add_summary("m", "chat", "", chars_summary(minute, range(100, 200)))
        t.add_summary("m", "chat", "refusal", refusal_summary(minute, 10, 90))
    for minute in range(base + 30 * 60, base + 40 * 60, 60):  # then 10 minutes of long ones, 80% refusals
        t.add_summary("m", "chat", "", chars_summary(minute, range(400, 500)))
        t.add_summary("m", "chat", "refusal", refusal_summary(minute, 80, 20))
    t.publish()
    psi_ = totals.values["evalstream_drift_psi"]
    chars, refusal = ("m", "chat", "response_chars", ""), ("m", "chat", "refusal_rate", "refusal")
    assert totals.values["evalstream_drift_current_samples"][chars] == 1000  # the last 10 minutes
    assert totals.values["evalstream_drift_reference_samples"][chars] == 3000  # the 30 minutes before
    assert psi_[chars] > 5 and totals.values["evalstream_drift_pvalue"][chars] < 1e-100
    assert psi_[refusal] == pytest.approx(compare_counts({"r": 300, "o": 2700}, {"r": 800, "o": 200}).psi)
    assert totals.values["evalstream_drift_watermark_timestamp_seconds"][()] == base + 39 * 60


def test_same_traffic_in_both_windows_reports_no_drift_and_scores_are_per_dimension():
    t, totals = tracker(bucket_s=60, current_s=600, reference_s=1800, reference_bucket_s=600)
    rng = np.random.default_rng(3)
    for i in range(40):
        minute = 50 * H + 60 * i
        t.add_summary("m", "chat", "", chars_summary(minute, rng.lognormal(6, 0.8, 200)))
        t.add_summary("m", "chat", "refusal", refusal_summary(minute, 20, 180, rng.beta(1, 5, 200)))
    t.publish()
    for feature in (("response_chars", ""), ("score", "refusal"), ("refusal_rate", "refusal")):
        key = ("m", "chat", *feature)
        assert totals.values["evalstream_drift_psi"][key] < 0.05, feature
        assert totals.values["evalstream_drift_pvalue"][key] > 0.01, feature


def test_too_few_items_reports_nothing_and_late_partials_are_counted():
    t, totals = tracker(bucket_s=60, current_s=600, reference_s=600, reference_bucket_s=600, min_samples=500)
    t.add_summary("m", "chat", "", chars_summary(10 * H, range(100)))
    t.add_summary("m", "chat", "", chars_summary(10 * H + 900, range(100)))
    t.publish()
    assert totals.values["evalstream_drift_psi"] == {}  # 100 items a window, 500 wanted
    t.add_summary("m", "chat", "", chars_summary(9 * H, range(100)))  # before the trailing reference
    assert totals.values["evalstream_drift_skipped_total"][("late",)] == 1


def test_a_future_event_time_cannot_move_the_clock_past_the_record_time():
    t, _ = tracker(bucket_s=60, current_s=600, reference_s=600, reference_bucket_s=600)
    t.add_summary("m", "chat", "", chars_summary(10 * H, range(100)), record_s=10 * H + 5)
    t.add_summary("m", "chat", "", chars_summary(30 * H, range(100)), record_s=10 * H + 30)
    assert t.watermark == 10 * H + 30


def test_memory_is_bounded_by_the_buckets_over_two_days_of_minutes():
    t, _ = tracker(bucket_s=600, current_s=3600, reference_s=86400, reference_bucket_s=3600)
    for i in range(2 * 24 * 60):
        t.add_summary("m", "chat", "", chars_summary(60 * i, [i % 300, 7, 9]))
    (series,) = t.state()["series"]
    assert len(series["fine"]) <= 3600 // 600
    assert len(series["coarse"]) <= 86400 // 3600 + 1
    size = len(json.dumps(t.state()))
    assert size < 31 * 6_000, size  # ~31 sketches of at most a few KB (base64)


def test_pinned_baseline_is_each_keys_first_window_and_stays():
    t, totals = tracker(
        reference=Reference.PINNED, bucket_s=60, current_s=600, reference_s=1200, min_samples=50
    )
    start = 20 * H
    for i in range(20):  # the baseline: 20 minutes at 10% refusals
        t.add_summary("m", "chat", "refusal", refusal_summary(start + 60 * i, 10, 90))
    for i in range(20, 200):  # then hours at 10%: stable against the pinned baseline
        t.add_summary("m", "chat", "refusal", refusal_summary(start + 60 * i, 10, 90))
    t.publish()
    key = ("m", "chat", "refusal_rate", "refusal")
    assert totals.values["evalstream_drift_reference_samples"][key] == 2000
    assert totals.values["evalstream_drift_psi"][key] == pytest.approx(0.0)
    for i in range(200, 210):  # 10 minutes at 60%: drift against the baseline from 3 hours ago
        t.add_summary("m", "chat", "refusal", refusal_summary(start + 60 * i, 60, 40))
    t.publish()
    assert totals.values["evalstream_drift_psi"][key] > 1
    assert totals.values["evalstream_drift_reference_samples"][key] == 2000


def test_a_corrupt_sketch_is_counted_not_fatal():
    t, totals = tracker()
    bad = chars_summary(60, range(10))
    bad.response_chars_sketch = b"not a sketch"
    t.add_summary("m", "chat", "", bad)
    assert totals.values["evalstream_drift_skipped_total"][("bad_sketch",)] == 1


# --- through the exporter core, and across a restart -----------------------------------------------


def _core(state=None, **kw):
    registry = CollectorRegistry()
    config = DriftConfig(bucket_s=60, current_s=600, reference_s=1800, reference_bucket_s=600, **kw)
    return ExporterCore(registry, state=state, drift=config), registry


def _feed(core, minutes, lengths, refused):
    for minute in minutes:
        core.apply_summary(chars_summary(minute, lengths, model="m1"))
        core.apply_summary(refusal_summary(minute, refused, 100 - refused, model="m1"))


def test_core_exports_drift_gauges_and_a_restart_restores_the_windows_exactly():
    core, registry = _core()
    _feed(core, range(7 * H, 7 * H + 1800, 60), range(50, 150), 15)
    _feed(core, range(7 * H + 1800, 7 * H + 2400, 60), range(300, 400), 75)
    core.publish()
    labels = {"model": "m1", "route": "chat", "feature": "refusal_rate", "dimension": "refusal"}
    assert registry.get_sample_value("evalstream_drift_psi", labels) > 1
    chars = {**labels, "feature": "response_chars", "dimension": ""}
    assert registry.get_sample_value("evalstream_drift_pvalue", chars) < 1e-10
    saved = json.loads(json.dumps(core.state()))  # what the state file holds
    again, registry2 = _core(state=saved)
    again.publish()
    assert generate_latest(registry2) == generate_latest(registry)
    # Both go on alike: exactly for counts; for sketches within their error (KLL merges are
    # randomised, so two merges of the same sketches differ a little).
    for c in (core, again):
        _feed(c, range(7 * H + 2400, 7 * H + 2700, 60), range(300, 400), 75)
        c.publish()
    for name in ("evalstream_drift_psi", "evalstream_drift_pvalue", "evalstream_drift_current_samples"):
        assert registry2.get_sample_value(name, labels) == registry.get_sample_value(name, labels)
    assert registry2.get_sample_value("evalstream_drift_psi", chars) == pytest.approx(
        registry.get_sample_value("evalstream_drift_psi", chars), rel=0.05
    )


def test_windows_changed_after_the_last_publish_are_recomputed_after_a_restart():
    core, _ = _core()
    _feed(core, range(7 * H, 7 * H + 2400, 60), range(50, 150), 15)
    core.publish()
    _feed(core, range(7 * H + 2400, 7 * H + 2700, 60), range(300, 400), 75)  # saved, not yet published
    again, registry = _core(state=json.loads(json.dumps(core.state())))
    again.publish()
    core.publish()
    labels = {"model": "m1", "route": "chat", "feature": "refusal_rate", "dimension": "refusal"}
    assert registry.get_sample_value("evalstream_drift_psi", labels) == pytest.approx(
        core.collector.published.get("evalstream_drift_psi", ("m1", "chat", "refusal_rate", "refusal"))
    )


def test_other_window_settings_drop_the_saved_windows_and_their_gauges():
    core, _ = _core()
    _feed(core, range(7 * H, 7 * H + 2400, 60), range(50, 150), 15)
    core.publish()
    saved = json.loads(json.dumps(core.state()))
    again, registry = _core(state=saved, min_samples=51)
    again.publish()
    assert (
        registry.get_sample_value(
            "evalstream_drift_psi",
            {"model": "m1", "route": "chat", "feature": "refusal_rate", "dimension": "refusal"},
        )
        is None
    )


# --- embedding statistics ---------------------------------------------------------------------------


def stats_summary(minute: int, stats: dict[str, list[float]], *, model="m") -> summary_pb2.Summary:
    s = summary_pb2.Summary(
        batch_id="b", model=model, model_version="v1", route="chat", window_start_unix=minute
    )
    for name, values in stats.items():
        s.response_stat_sketches[name] = sketch(values).serialize()
    return s


def test_embedding_statistics_are_one_feature_named_in_dimension_and_unknown_names_are_skipped():
    t, totals = tracker(bucket_s=60, current_s=600, reference_s=1800, reference_bucket_s=600)
    rng = np.random.default_rng(11)
    base = 30 * H
    for i in range(40):  # 30 minutes of one distribution, then 10 where responses are less typical
        stats = {
            "embedding_centroid_cosine": rng.beta(5, 3, 100) if i < 30 else rng.beta(3, 3, 100),
            "embedding_pc1": rng.normal(0, 0.2, 100),  # unchanged
        }
        if i >= 30:
            stats["made_up_statistic"] = np.array([1.0, 2.0])
        t.add_summary("m", "chat", "", stats_summary(base + 60 * i, stats))
    t.publish()
    psi_ = totals.values["evalstream_drift_psi"]
    cosine, pc1 = (
        ("m", "chat", "embedding", "embedding_centroid_cosine"),
        ("m", "chat", "embedding", "embedding_pc1"),
    )
    assert set(psi_) == {cosine, pc1}  # the unknown statistic got no series
    assert totals.values["evalstream_drift_skipped_total"][("unknown_statistic",)] == 10
    assert totals.values["evalstream_drift_current_samples"][cosine] == 1000
    assert totals.values["evalstream_drift_reference_samples"][cosine] == 3000
    assert psi_[cosine] > 0.25 and totals.values["evalstream_drift_pvalue"][cosine] < 1e-10
    assert psi_[pc1] < 0.05 and totals.values["evalstream_drift_pvalue"][pc1] > 0.001
    # a restart brings the embedding windows back
    saved = json.loads(json.dumps(t.state()))
    again_totals = Totals.from_json(SPECS, json.loads(json.dumps(totals.to_json())))
    again = DriftTracker(
        DriftConfig(bucket_s=60, current_s=600, reference_s=1800, reference_bucket_s=600), again_totals, saved
    )
    assert json.loads(json.dumps(again.state())) == saved  # the same sketches, byte for byte
    before, after = t.compare("m", "chat"), again.compare("m", "chat")
    assert set(after) == {("embedding", "embedding_centroid_cosine"), ("embedding", "embedding_pc1")}
    for key, cmp in after.items():  # KLL merges are randomised: equal within the sketch's error
        assert (cmp.current_n, cmp.reference_n) == (before[key].current_n, before[key].reference_n)
        assert cmp.psi == pytest.approx(before[key].psi, abs=0.05)


@pytest.fixture(scope="module")
def xstest_embedding_stats(encoder_artefact, shared_data):
    """Every XSTest completion of two models, through the real trained encoder judge: the response
    statistics per model, in prompt order."""
    from evalstream.evaluation.datasets import read_xstest
    from evalstream.judges.base import JudgeInput
    from evalstream.judges.encoder import EncoderJudge

    judge = EncoderJudge.load(encoder_artefact)
    out = {}
    for model in ("mistralinstruct", "llama2orig"):
        records = [r for r in read_xstest(shared_data) if r.model == model]
        items = [
            JudgeInput(
                item_id=r.prompt_id, model=model, messages=(("user", r.prompt),), response=r.completion
            )
            for r in records
        ]
        outcomes = judge.judge_batch(items, frozenset({"refusal"}))
        out[model] = [o.stats for o in outcomes]
    return out


def _verdicts(stats, minute: int, model: str):
    from evalstream.v1 import verdict_pb2

    for i, s in enumerate(stats):
        v = verdict_pb2.Verdict(event_id=f"{model}-{minute}-{i}", model=model, route="chat", response_chars=1)
        v.event_time.seconds = minute
        v.response_stats.update(s)
        v.embedding_probe.tier = 1
        v.embedding_probe.called = True
        yield v


@pytest.mark.slow
def test_embedding_drift_on_real_xstest_completions_mistral_to_llama2(xstest_embedding_stats):
    """Summaries built by the pipeline's summariser from the real encoder's statistics, through the
    exporter core: Mistral-Instruct's answers as the reference, then Llama-2 (original system prompt)
    answering the other half of the prompts, against Mistral (and Llama-2) answering them. Same sizes
    (225 a window), disjoint prompts in both cases: only the model differs."""
    from evalstream.pipeline.summarise import summaries_from

    mistral, llama = xstest_embedding_stats["mistralinstruct"], xstest_embedding_stats["llama2orig"]
    cases = {  # key (the model label) -> (reference, current)
        "mistral-halves": (mistral[::2], mistral[1::2]),
        "llama-halves": (llama[::2], llama[1::2]),
        "mistral-to-llama": (mistral[::2], llama[1::2]),
    }
    core, registry = _core()
    ref_minute, cur_minute = 9 * H, 9 * H + 1500
    for window, minute in ((0, ref_minute), (1, cur_minute)):  # the reference first, then the current
        for key, pair in cases.items():
            for s in summaries_from(_verdicts(pair[window], minute, key), f"batch-{window}"):
                core.apply_summary(s)
    core.publish()

    def gauge(name, key, stat):
        return registry.get_sample_value(
            name, {"model": key, "route": "chat", "feature": "embedding", "dimension": stat}
        )

    figures = {
        stat.value: {
            key: (gauge("evalstream_drift_psi", key, stat), gauge("evalstream_drift_pvalue", key, stat))
            for key in cases
        }
        for stat in EmbeddingStat
    }
    for stat, row in figures.items():
        print(stat, {k: f"PSI {p:.3f} p {q:.2g}" for k, (p, q) in row.items()})
    assert all(gauge("evalstream_drift_current_samples", k, "embedding_pc1") == 225 for k in cases)
    for stat in ("embedding_centroid_cosine", "embedding_pc2"):
        same = max(figures[stat]["mistral-halves"][0], figures[stat]["llama-halves"][0])
        shifted, p_value = figures[stat]["mistral-to-llama"]
        assert same < 0.2, (stat, figures[stat])  # two halves of one model: sampling noise only
        assert shifted > 0.3 and shifted > 2.5 * same, (stat, figures[stat])  # a real shift
        assert p_value < 1e-6, (stat, figures[stat])
