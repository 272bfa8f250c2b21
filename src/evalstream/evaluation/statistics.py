"""Agreement statistics between judges and humans: Cohen's kappa with a bootstrap interval
(scikit-learn's kappa, scipy's bootstrap), per-class precision and recall, the position-bias rate of
pairwise judges, and the alternative annotator test (Calderon, Reichart and Dror, 2025).

Pure functions over label sequences; no I/O, no command line. The exporter's live agreement and the
offline report both use them. scipy and scikit-learn are imported where used.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "AltTest",
    "AltTestAnnotator",
    "ClassScores",
    "alternative_annotator_test",
    "kappa_with_ci",
    "per_class",
    "position_bias",
]

#: Cost-benefit margin of the alternative annotator test for expert annotators (Calderon et al.).
DEFAULT_ALT_EPSILON = 0.2
#: False-discovery rate of the Benjamini-Yekutieli correction in the alternative annotator test.
DEFAULT_ALT_Q = 0.05
#: Fewest items an annotator must share with the judge to enter the alternative annotator test.
DEFAULT_ALT_MIN_ITEMS = 30


@dataclass(frozen=True, slots=True, kw_only=True)
class ClassScores:
    label: str
    precision: float
    recall: float
    support: int  # items whose truth is this label


@dataclass(frozen=True, slots=True, kw_only=True)
class AltTestAnnotator:
    annotator: str
    items: int
    judge_advantage: float  # share of items where the judge aligns at least as well as the annotator
    annotator_advantage: float  # share where the annotator aligns at least as well as the judge
    p_value: float
    p_adjusted: float  # Benjamini-Yekutieli
    judge_wins: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class AltTest:
    epsilon: float
    q: float
    annotators: tuple[AltTestAnnotator, ...]
    winning_rate: float  # omega: share of annotators the judge beats
    advantage_probability: float  # rho: mean judge advantage over annotators
    passed: bool  # winning_rate >= 0.5


# --- statistics ------------------------------------------------------------------------------------


def _kappa(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    """Cohen's kappa, NaN where it is undefined (both raters use one and the same label only)."""
    from sklearn.metrics import cohen_kappa_score

    if len(set(y_true) | set(y_pred)) < 2:
        return math.nan
    return float(cohen_kappa_score(y_true, y_pred))


def kappa_with_ci(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    *,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[float | None, float | None, float | None]:
    """Cohen's kappa and a percentile bootstrap interval over items (None where undefined)."""
    from scipy.stats import DegenerateDataWarning, bootstrap

    truth = np.asarray(y_true, dtype=object)
    pred = np.asarray(y_pred, dtype=object)
    kappa = _kappa(list(truth), list(pred))
    if math.isnan(kappa):
        return None, None, None
    if len(truth) < 3 or n_resamples < 1:
        return kappa, None, None

    def statistic(index: np.ndarray[Any, np.dtype[np.int64]]) -> float:
        return _kappa(list(truth[index]), list(pred[index]))

    with warnings.catch_warnings():
        # resamples where kappa is undefined (one label only) leave no interval: report none
        warnings.simplefilter("error", DegenerateDataWarning)
        try:
            result = bootstrap(
                (np.arange(len(truth)),),
                statistic,
                vectorized=False,
                n_resamples=n_resamples,
                confidence_level=confidence,
                method="percentile",
                rng=np.random.default_rng(seed),
            )
        except DegenerateDataWarning:
            return kappa, None, None
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return kappa, (None if math.isnan(low) else low), (None if math.isnan(high) else high)


def per_class(y_true: Sequence[str], y_pred: Sequence[str]) -> tuple[ClassScores, ...]:
    from sklearn.metrics import precision_recall_fscore_support

    if not y_true:
        return ()
    labels = sorted(set(y_true) | set(y_pred))
    precision, recall, _, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return tuple(
        ClassScores(label=label, precision=float(p), recall=float(r), support=int(s))
        for label, p, r, s in zip(labels, precision, recall, support, strict=True)
    )


def position_bias(position_labels: Sequence[Sequence[str | None]]) -> tuple[float | None, int]:
    """Share of items whose presentation orders disagree, among items with at least two parsed orders."""
    both = [[p for p in positions if p is not None] for positions in position_labels]
    both = [p for p in both if len(p) >= 2]
    if not both:
        return None, 0
    return sum(len(set(p)) > 1 for p in both) / len(both), len(both)


def alternative_annotator_test(
    judge: Mapping[str, str],
    annotators: Mapping[str, Mapping[str, str]],
    *,
    epsilon: float = DEFAULT_ALT_EPSILON,
    q: float = DEFAULT_ALT_Q,
    min_items: int = DEFAULT_ALT_MIN_ITEMS,
) -> AltTest | None:
    """The alt-test of Calderon et al. (2025): may ``judge`` replace one of ``annotators``?

    ``judge`` maps item -> the judge's label; ``annotators`` maps annotator -> item -> label. Scoring
    is accuracy: an alignment is the share of the remaining annotators with the same label. Returns
    None when fewer than two annotators share ``min_items`` items with the judge.
    """
    from scipy.stats import false_discovery_control, ttest_1samp

    rows: list[tuple[str, int, float, float, float]] = []
    for left_out, labels in sorted(annotators.items()):
        others = {name: other for name, other in annotators.items() if name != left_out}
        items = [i for i in sorted(labels) if i in judge and any(i in other for other in others.values())]
        if len(items) < min_items:
            continue
        judge_wins, annotator_wins = [], []
        for i in items:
            rest = [other[i] for other in others.values() if i in other]
            s_judge = sum(judge[i] == r for r in rest) / len(rest)
            s_human = sum(labels[i] == r for r in rest) / len(rest)
            judge_wins.append(float(s_judge >= s_human))
            annotator_wins.append(float(s_human >= s_judge))
        d = np.asarray(annotator_wins) - np.asarray(judge_wins)
        if np.ptp(d) == 0:  # no spread: the t statistic is undefined, the answer is not
            p_value = 0.0 if d[0] < epsilon else 1.0
        else:
            p_value = float(ttest_1samp(d, popmean=epsilon, alternative="less").pvalue)
        rows.append(
            (left_out, len(items), float(np.mean(judge_wins)), float(np.mean(annotator_wins)), p_value)
        )
    if len(rows) < 2:
        return None
    adjusted = false_discovery_control([r[4] for r in rows], method="by")
    per = tuple(
        AltTestAnnotator(
            annotator=name,
            items=n,
            judge_advantage=rho_j,
            annotator_advantage=rho_h,
            p_value=p,
            p_adjusted=float(adj),
            judge_wins=bool(adj <= q),
        )
        for (name, n, rho_j, rho_h, p), adj in zip(rows, adjusted, strict=True)
    )
    omega = sum(a.judge_wins for a in per) / len(per)
    return AltTest(
        epsilon=epsilon,
        q=q,
        annotators=per,
        winning_rate=omega,
        advantage_probability=float(np.mean([a.judge_advantage for a in per])),
        passed=omega >= 0.5,
    )
