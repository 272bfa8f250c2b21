"""Scores of one judge against humans over (human, judge) label pairs: accuracy with its Wilson
interval and Cohen's kappa with a bootstrap interval. Pure; ``agreement.AgreementTracker`` keeps the
pairs and publishes the scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import binomtest

from evalstream.evaluation.statistics import kappa_with_ci

__all__ = ["Scores", "scores"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Scores:
    pairs: int
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    kappa: float | None  # None where undefined (one label only)
    kappa_low: float | None
    kappa_high: float | None


def scores(
    pairs: Sequence[tuple[str, str]], *, confidence: float = 0.95, resamples: int = 1000, seed: int = 0
) -> Scores:
    """Accuracy (Wilson interval) and Cohen's kappa (bootstrap interval) of (human, judge) pairs."""
    if not pairs:
        raise ValueError("scores needs at least one (human, judge) pair")
    ordered = sorted(pairs)
    truth = [t for t, _ in ordered]
    pred = [p for _, p in ordered]
    matches = sum(t == p for t, p in ordered)
    interval = binomtest(matches, len(ordered)).proportion_ci(confidence_level=confidence, method="wilson")
    kappa, low, high = kappa_with_ci(truth, pred, confidence=confidence, n_resamples=resamples, seed=seed)
    return Scores(
        pairs=len(ordered),
        accuracy=matches / len(ordered),
        accuracy_low=float(interval.low),
        accuracy_high=float(interval.high),
        kappa=kappa,
        kappa_low=low,
        kappa_high=high,
    )
