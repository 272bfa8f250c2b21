"""Thresholds with a guarantee: fixed-sequence testing over a cascade of judges.

Given, per item, the human label and each tier's verdict (label, confidence), choose one confidence
threshold per tier so that the cascade's agreement with humans, on the items it accepts, is at least
``1 - alpha`` with probability at least ``1 - delta``. This is Cascaded Selective Evaluation from
Jung, Brahman and Choi, "Trust or Escalate: LLM Judges with Provable Guarantees for Human Agreement"
(2024; ICLR 2025), Algorithms 1 and 2.

One tier (Algorithm 1), on the items that reach it:

- thresholds are tried on a fixed decreasing grid, 1.000, 0.999, ..., 0.000 (``grid_step``). Grid
  points that would accept fewer than ``min_accepted`` items are skipped; that looks at confidences
  only, never at labels, so the sequence of hypotheses is fixed before any agreement is seen;
- at a grid point, the ``k`` disagreements among the ``n`` accepted items give an exact one-sided
  Clopper-Pearson upper bound on the disagreement rate at level ``1 - delta_tier``;
- testing stops at the first grid point whose bound exceeds ``alpha``. Fixed-sequence testing needs no
  multiplicity correction along the sequence, and every point before the first failure is certified.
  The tier's threshold is the last certified point, raised to the lowest accepted confidence on the
  grid (the same accepted calibration items, also certified, no looser on new data). If the very
  first point fails, the tier accepts nothing.

The cascade (Algorithm 2): tiers are calibrated in order, each on the items no earlier tier accepted,
each at ``delta / K`` for ``K`` tiers. By the union bound, with probability at least ``1 - delta``
every tier's accepted items disagree with humans at a rate of at most ``alpha``, and then so do all
accepted items together (a mixture of such rates). Items the last tier does not accept go to human
audit: the guarantee is about what the cascade accepts, and coverage says how much that is.

Calibrating greedily, cheapest tier first, lets each tier accept as much as its guarantee allows, which
minimises the calls to the later, stronger and dearer tiers. A tier that can accept nothing is left
out of the written config, since calling it would only cost; if that is the last tier it stays, with
threshold ``inf`` ("accept when confidence >= inf": never), so everything reaching it is audited.

The core is pure (values in, values out). ``calibrate_command`` is the thin ``evalstream calibrate``
shell. scipy is imported where it is used, so that registering the command keeps ``evalstream --help``
fast.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from evalstream.evaluation.judgements import LabelledSet
from evalstream.wire.cascade_config import CascadeConfig, DimensionCascade, TierRule
from evalstream.wire.dimensions import Dimension

__all__ = [
    "CalibrationError",
    "CalibrationItem",
    "CascadeCalibration",
    "ThresholdTest",
    "TierCalibration",
    "TierSpec",
    "TierVerdict",
    "UpperBound",
    "calibrate",
    "cascade_items",
    "clopper_pearson_upper",
    "select_threshold",
    "to_config",
]

log = logging.getLogger(__name__)

#: Grid step of the thresholds tried (1.000, 0.999, ..., 0.000).
DEFAULT_GRID_STEP = 0.001
#: Grid points accepting fewer items are skipped (as in the paper's released code).
DEFAULT_MIN_ACCEPTED = 30

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
#: ``(disagreements, accepted, delta) -> upper bound`` on the disagreement rate, element-wise.
UpperBound = Callable[[IntArray, IntArray, float], FloatArray]


class CalibrationError(ValueError):
    """The calibration inputs are inconsistent or out of range; the message says what to change."""


# --- inputs ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TierVerdict:
    """One tier's verdict on one item. ``label`` None: no usable verdict (never accepted)."""

    label: str | None
    confidence: float
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibrationItem:
    """An item with its human label and every tier's verdict, in cascade order."""

    item_id: str
    human: str
    verdicts: tuple[TierVerdict, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TierSpec:
    """A tier of the cascade: its number in the config and the judge that serves it."""

    tier: int
    judge: str
    confidence: str = ""  # how this judge's confidence is obtained, written into the config


# --- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ThresholdTest:
    """One step of the fixed sequence: accepting confidence >= ``threshold``."""

    threshold: float
    accepted: int
    disagreements: int
    upper_bound: float
    passed: bool  # upper_bound <= alpha


@dataclass(frozen=True, slots=True, kw_only=True)
class TierCalibration:
    spec: TierSpec
    threshold: float | None  # None: no threshold could be certified; the tier accepts nothing
    delta: float  # the share of delta this tier was tested at
    reached: int  # calibration items that reached this tier
    accepted: int
    disagreements: int
    upper_bound: float | None  # Clopper-Pearson bound on the disagreement rate at ``threshold``
    tests: tuple[ThresholdTest, ...]  # the sequence as run, ending at the first failure

    @property
    def agreement(self) -> float | None:
        return 1.0 - self.disagreements / self.accepted if self.accepted else None


@dataclass(frozen=True, slots=True, kw_only=True)
class CascadeCalibration:
    """Thresholds for one dimension's cascade and what they did on the calibration items."""

    dimension: Dimension
    alpha: float
    delta: float
    items: int
    tiers: tuple[TierCalibration, ...]

    @property
    def accepted(self) -> int:
        return sum(t.accepted for t in self.tiers)

    @property
    def coverage(self) -> float:
        return self.accepted / self.items

    @property
    def agreement(self) -> float | None:
        if not self.accepted:
            return None
        return 1.0 - sum(t.disagreements for t in self.tiers) / self.accepted

    def plan(self) -> list[tuple[int, float]]:
        """``(verdict index, threshold)`` of each tier the config keeps, in order (see ``route``)."""
        last = len(self.tiers) - 1
        return [
            (i, math.inf if t.threshold is None else t.threshold)
            for i, t in enumerate(self.tiers)
            if t.threshold is not None or i == last
        ]

    def rules(self) -> list[TierRule]:
        """The config's tier rules: uncertified tiers dropped, an uncertified last tier kept at inf."""
        out = []
        for index, threshold in self.plan():
            t = self.tiers[index]
            out.append(
                TierRule(
                    tier=t.spec.tier,
                    threshold=threshold,
                    judge=t.spec.judge,
                    confidence=t.spec.confidence,
                    calibrated_agreement=t.agreement,
                    calibrated_coverage=t.accepted / self.items,
                    calibrated_upper_bound=t.upper_bound,
                    calibrated_items=t.reached,
                )
            )
        return out


# --- the statistics --------------------------------------------------------------------------------


def clopper_pearson_upper(disagreements: IntArray, accepted: IntArray, delta: float) -> FloatArray:
    """Exact one-sided upper ``1 - delta`` confidence bound on a binomial rate (Clopper-Pearson).

    The rate ``r`` at which seeing at most ``k`` disagreements in ``n`` would have probability
    ``delta``: the ``1 - delta`` quantile of Beta(k + 1, n - k), 1 when ``k == n``. It equals the upper
    end of scipy's ``binomtest(k, n, alternative="less").proportion_ci(1 - delta)`` (the tests check
    that); the beta quantile bounds a whole grid in one call.
    """
    from scipy.stats import beta

    k = np.asarray(disagreements, dtype=np.int64)
    n = np.asarray(accepted, dtype=np.int64)
    full = k >= n
    bound = beta.ppf(1.0 - delta, k + 1, np.where(full, 1, n - k))
    return np.asarray(np.where(full, 1.0, bound), dtype=np.float64)


def _grid(step: float) -> FloatArray:
    points = round(1.0 / step)
    if not 1 <= points <= 100_000 or abs(points * step - 1.0) > 1e-9:
        raise CalibrationError(
            f"grid step {step} must divide 1 into between 1 and 100000 steps (e.g. 0.01 or 0.001)"
        )
    return np.round(np.linspace(1.0, 0.0, points + 1), 10)


def select_threshold(
    confidence: Sequence[float] | FloatArray,
    disagree: Sequence[bool] | npt.NDArray[np.bool_],
    *,
    alpha: float,
    delta: float,
    grid_step: float = DEFAULT_GRID_STEP,
    min_accepted: int = DEFAULT_MIN_ACCEPTED,
    upper_bound: UpperBound = clopper_pearson_upper,
) -> tuple[float | None, tuple[ThresholdTest, ...]]:
    """Algorithm 1 for one tier: the lowest certified threshold (or None) and the tests run.

    ``confidence[i]`` is the judge's confidence on item ``i`` (``-inf`` for no verdict: never
    accepted); ``disagree[i]`` whether its label differs from the human's. ``upper_bound`` is the
    bound tested against ``alpha``; only tests swap it, to show the guarantee rests on it.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    wrong = np.asarray(disagree, dtype=bool)
    if conf.shape != wrong.shape or conf.ndim != 1:
        raise CalibrationError(f"confidence {conf.shape} and disagree {wrong.shape} must be equal 1-D arrays")
    grid = _grid(grid_step)
    order = np.argsort(-conf, kind="stable")
    descending = conf[order]
    wrong_before = np.concatenate([[0], np.cumsum(wrong[order])]).astype(np.int64)
    # accepted[j]: how many items have confidence >= grid[j] (grid decreasing -> non-decreasing)
    accepted = np.searchsorted(-descending, -grid, side="right").astype(np.int64)
    eligible = np.flatnonzero(accepted >= max(min_accepted, 1))
    if eligible.size == 0:
        return None, ()
    # one test per distinct accepted set: the highest grid point that accepts it
    first = eligible[np.r_[True, accepted[eligible][1:] != accepted[eligible][:-1]]]
    n = accepted[first]
    k = wrong_before[n]
    bounds = upper_bound(k, n, delta)
    tests: list[ThresholdTest] = []
    chosen: float | None = None
    for j, n_j, k_j, b_j in zip(first, n, k, bounds, strict=True):
        passed = bool(b_j <= alpha)
        tests.append(
            ThresholdTest(
                threshold=float(grid[j]),
                accepted=int(n_j),
                disagreements=int(k_j),
                upper_bound=float(b_j),
                passed=passed,
            )
        )
        if not passed:
            break
        chosen = float(grid[j])
    return chosen, tuple(tests)


def _check_unit(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise CalibrationError(f"{name} must lie strictly between 0 and 1, got {value}")


def calibrate(
    items: Sequence[CalibrationItem],
    tiers: Sequence[TierSpec],
    *,
    dimension: Dimension,
    alpha: float,
    delta: float,
    grid_step: float = DEFAULT_GRID_STEP,
    min_accepted: int = DEFAULT_MIN_ACCEPTED,
    upper_bound: UpperBound = clopper_pearson_upper,
) -> CascadeCalibration:
    """Algorithm 2: calibrate ``tiers`` in order on the items that reach each, at ``delta / K`` each."""
    _check_unit("alpha (the allowed disagreement with humans)", alpha)
    _check_unit("delta (the allowed probability that the guarantee fails)", delta)
    if not tiers:
        raise CalibrationError("no tiers to calibrate; name at least one judge")
    numbers = [t.tier for t in tiers]
    if numbers != sorted(set(numbers)):
        raise CalibrationError(
            f"tiers must be strictly increasing, cheapest first, got {numbers} for judges "
            f"{[t.judge for t in tiers]}; give each judge its own tier number"
        )
    if not items:
        raise CalibrationError("no calibration items: every item needs a human label and each tier's verdict")
    if min_accepted < 1:
        raise CalibrationError(f"min_accepted must be at least 1, got {min_accepted}")
    for item in items:
        if len(item.verdicts) != len(tiers):
            raise CalibrationError(
                f"item {item.item_id!r} has {len(item.verdicts)} verdicts for {len(tiers)} tiers; "
                "every calibration item needs one verdict per tier, in tier order"
            )
        for spec, verdict in zip(tiers, item.verdicts, strict=True):
            if not 0.0 <= verdict.confidence <= 1.0:
                raise CalibrationError(
                    f"item {item.item_id!r}: judge {spec.judge!r} has confidence {verdict.confidence}, "
                    "expected a value in [0, 1]"
                )
    per_tier = delta / len(tiers)
    reaching = np.ones(len(items), dtype=bool)
    results: list[TierCalibration] = []
    for index, spec in enumerate(tiers):
        conf = np.array(
            [-np.inf if it.verdicts[index].label is None else it.verdicts[index].confidence for it in items]
        )
        wrong = np.array([it.verdicts[index].label != it.human for it in items])
        threshold, tests = select_threshold(
            conf[reaching],
            wrong[reaching],
            alpha=alpha,
            delta=per_tier,
            grid_step=grid_step,
            min_accepted=min_accepted,
            upper_bound=upper_bound,
        )
        accepted = reaching & (conf >= threshold) if threshold is not None else np.zeros_like(reaching)
        n_acc = int(accepted.sum())
        results.append(
            TierCalibration(
                spec=spec,
                threshold=threshold,
                delta=per_tier,
                reached=int(reaching.sum()),
                accepted=n_acc,
                disagreements=int((accepted & wrong).sum()),
                upper_bound=next((t.upper_bound for t in reversed(tests) if t.passed), None),
                tests=tests,
            )
        )
        reaching &= ~accepted
    return CascadeCalibration(
        dimension=dimension, alpha=alpha, delta=delta, items=len(items), tiers=tuple(results)
    )


def to_config(
    calibrations: Sequence[CascadeCalibration],
    *,
    version: str,
    calibration_data: str,
    created_at: datetime | None = None,
) -> CascadeConfig:
    """One cascade config from calibrations of distinct dimensions at the same alpha and delta."""
    if not calibrations:
        raise CalibrationError("nothing calibrated: no dimension had items")
    dims = [c.dimension.value for c in calibrations]
    if len(set(dims)) != len(dims):
        raise CalibrationError(f"each dimension may be calibrated once, got {dims}")
    if len({(c.alpha, c.delta) for c in calibrations}) != 1:
        raise CalibrationError("all dimensions of one config must share alpha and delta")
    return CascadeConfig(
        version=version,
        created_at=created_at or datetime.now(UTC),
        alpha=calibrations[0].alpha,
        delta=calibrations[0].delta,
        calibration_data=calibration_data,
        dimensions={c.dimension.value: DimensionCascade(tiers=c.rules()) for c in calibrations},
    )


# --- from tables -----------------------------------------------------------------------------------


def cascade_items(
    data: LabelledSet, dimension: Dimension, judges: Sequence[str]
) -> tuple[list[CalibrationItem], list[TierSpec]]:
    """The items of ``data`` with a truth label and every named judge's verdict on ``dimension``,
    and the tiers those judges serve, in the order given (cheapest first)."""
    available = sorted({j.judge for j in data.judgements if j.dimension == dimension})
    if not judges:
        raise CalibrationError(
            f"name the cascade's judges, cheapest first; {dimension.value} has {available}"
        )
    unknown = [j for j in judges if j not in available]
    if unknown:
        raise CalibrationError(
            f"judge(s) {unknown} have no {dimension.value} verdicts in {data.name}; choose from {available}"
        )
    if len(set(judges)) != len(judges):
        raise CalibrationError(f"a judge may serve one tier only, got {list(judges)}")
    verdicts = {name: data.verdicts(dimension, name) for name in judges}
    specs = []
    for name in judges:
        tiers = sorted({j.tier for j in verdicts[name].values()})
        if len(tiers) != 1:
            raise CalibrationError(f"judge {name!r} appears at tiers {tiers}; a judge serves one tier")
        specs.append(TierSpec(tier=tiers[0], judge=name, confidence=data.confidence_sources.get(name, "")))
    truth = data.truth(dimension)
    if not truth:
        raise CalibrationError(
            f"no {dimension.value} labels from annotator {data.truth_annotator!r} in {data.name}; "
            f"annotators there: {data.annotators}"
        )
    for name in judges:
        missing = [i for i in truth if i not in verdicts[name]]
        if missing:
            raise CalibrationError(
                f"judge {name!r} has no {dimension.value} verdict on {len(missing)} of {len(truth)} "
                f"human-labelled items (e.g. {missing[:3]}); calibration needs every tier's verdict on "
                "every calibration item: run each tier on the whole calibration set"
            )
    items = [
        CalibrationItem(
            item_id=item_id,
            human=label,
            verdicts=tuple(
                TierVerdict(
                    label=verdicts[n][item_id].label,
                    confidence=verdicts[n][item_id].confidence,
                    cost_usd=verdicts[n][item_id].cost_usd,
                )
                for n in judges
            ),
        )
        for item_id, label in sorted(truth.items())
    ]
    return items, specs
