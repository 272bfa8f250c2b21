"""Drift statistics over binned distributions and sketches: the population stability index (PSI), the
chi-square test of two binned samples, and the comparison of two KLL sketches or two label counts on
the reference sketch's quantile bins. Pure functions; the windows that feed them are ``drift``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from datasketches import kll_floats_sketch
from numpy.typing import ArrayLike
from scipy.stats import chi2_contingency, entropy

DEFAULT_BINS: Final = 10
#: Smallest share a bin counts with in PSI (a common choice; an empty bin would give infinity).
PSI_FLOOR: Final = 1e-4

__all__ = [
    "DEFAULT_BINS",
    "PSI_FLOOR",
    "Comparison",
    "chi_square_pvalue",
    "compare_counts",
    "compare_sketches",
    "psi",
    "sketch_sample_size",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    psi: float
    p_value: float
    reference_n: float
    current_n: float


# --- statistics -----------------------------------------------------------------------------------


def psi(reference: ArrayLike, current: ArrayLike, *, floor: float = PSI_FLOOR) -> float:
    """PSI of two binned distributions (shares or counts per bin, same bins): sum (c - r) ln(c / r).

    That is KL(c || r) + KL(r || c); both come from ``scipy.stats.entropy``. Shares are normalised
    and raised to at least ``floor``."""
    r = np.asarray(reference, dtype=float)
    c = np.asarray(current, dtype=float)
    if r.shape != c.shape or r.sum() <= 0 or c.sum() <= 0:
        raise ValueError(f"PSI needs two non-empty distributions over the same bins, got {r} and {c}")
    r = np.maximum(r / r.sum(), floor)
    c = np.maximum(c / c.sum(), floor)
    return float(entropy(c, r) + entropy(r, c))


def chi_square_pvalue(reference_counts: ArrayLike, current_counts: ArrayLike) -> float:
    """p-value of Pearson's chi-square test that both rows of counts come from one distribution.

    Bins empty in both rows are left out; with fewer than two bins left, nothing differs (1.0)."""
    table = np.vstack([np.asarray(reference_counts, dtype=float), np.asarray(current_counts, dtype=float)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 1.0
    return float(chi2_contingency(table).pvalue)


def sketch_sample_size(sketch: Any) -> float:
    """How many items a test may treat a KLL sketch as: all of them while it is exact, else at most
    1/eps^2, where eps is its PMF rank error (see the module docstring)."""
    n = float(sketch.n)
    if not sketch.is_estimation_mode():
        return n
    eps = kll_floats_sketch.get_normalized_rank_error(sketch.k, True)
    return min(n, 1.0 / float(eps) ** 2)


def compare_sketches(reference: Any, current: Any, *, bins: int = DEFAULT_BINS) -> Comparison:
    """PSI and chi-square p-value of two KLL sketches, on bins at the reference's quantiles."""
    if reference.is_empty() or current.is_empty():
        raise ValueError("compare_sketches needs two non-empty sketches")
    ranks = [i / bins for i in range(1, bins)]
    splits = sorted(set(reference.get_quantiles(ranks, True)))
    ref_p = np.asarray(reference.get_pmf(splits, True))
    cur_p = np.asarray(current.get_pmf(splits, True))
    return Comparison(
        psi=psi(ref_p, cur_p),
        p_value=chi_square_pvalue(ref_p * sketch_sample_size(reference), cur_p * sketch_sample_size(current)),
        reference_n=float(reference.n),
        current_n=float(current.n),
    )


def compare_counts(reference: Mapping[str, float], current: Mapping[str, float]) -> Comparison:
    """PSI and chi-square p-value of two categorical count tables (exact counts)."""
    categories = sorted(set(reference) | set(current))
    r = [float(reference.get(c, 0)) for c in categories]
    c = [float(current.get(c, 0)) for c in categories]
    return Comparison(psi=psi(r, c), p_value=chi_square_pvalue(r, c), reference_n=sum(r), current_n=sum(c))
