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

Confidence sources: a tier's judgements may get their confidence in different ways (the LLM judge:
token ``logprobs``, sample ``agreement``, a ``single`` vote), and those are not one scale: a
threshold fitted on their mixture holds for the mixture as it was, not for each kind. So each tier is
fitted per confidence source: the items reaching the tier are grouped by their verdict's
``confidence_source`` and every group gets its own threshold (Algorithm 1 on that group), each
(tier, source) group tested at ``delta / G`` for ``G`` groups over all tiers (the union bound again;
the groups are known from the data before any label is looked at). A tier with one source is one
group, as before. The written config names the source of every threshold, and the pipeline applies
it only to judgements from that source: one from a source the tier was not fitted for escalates.
Verdicts without a source (tables that do not record it) form one group whose threshold applies to
every source, as before sources were recorded.

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
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from evalstream.evaluation.judgements import LabelledSet
from evalstream.wire.cascade_config import CascadeConfig, DimensionCascade, Threshold, TierRule
from evalstream.wire.dimensions import Dimension

__all__ = [
    "CalibrationError",
    "CalibrationItem",
    "CascadeCalibration",
    "Threshold",
    "ThresholdTest",
    "TierCalibration",
    "TierSpec",
    "TierVerdict",
    "UpperBound",
    "calibrate",
    "cascade_items",
    "clopper_pearson_upper",
    "select_threshold",
    "tier_sources",
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
    confidence_source: str = ""  # where ``confidence`` came from; "" not said


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
    #: The confidence source this tier's threshold is fitted for and applies to ("" every source);
    #: ``calibrate`` sets it per (tier, source) group.
    confidence_source: str = ""


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
    #: Which verdict of each item this tier reads (None: the tier's position in ``tiers``, when
    #: every tier is one group). Groups of one tier, one per confidence source, share it.
    verdict_index: int | None = None

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

    def _groups(self) -> list[tuple[int, list[TierCalibration]]]:
        """The tiers' results grouped by verdict index, in tier order."""
        groups: dict[int, list[TierCalibration]] = {}
        for position, t in enumerate(self.tiers):
            groups.setdefault(position if t.verdict_index is None else t.verdict_index, []).append(t)
        return list(groups.items())

    def plan(self) -> list[tuple[int, Threshold]]:
        """``(verdict index, threshold)`` of each tier the config keeps, in order (see ``route``).
        A tier fitted per confidence source has a threshold per certified source (the last tier
        also lists its uncertified sources, at inf: audited); a source-less tier one number."""
        groups = self._groups()
        last = len(groups) - 1
        out: list[tuple[int, Threshold]] = []
        for position, (index, parts) in enumerate(groups):
            if len(parts) == 1 and not parts[0].spec.confidence_source:
                t = parts[0]
                if t.threshold is not None or position == last:
                    out.append((index, math.inf if t.threshold is None else t.threshold))
                continue
            by_source = {
                t.spec.confidence_source: math.inf if t.threshold is None else t.threshold
                for t in parts
                if t.threshold is not None or position == last
            }
            if by_source:
                out.append((index, by_source))
        return out

    def rules(self) -> list[TierRule]:
        """The config's tier rules: uncertified tiers (and sources) dropped, an uncertified last tier
        kept at inf. Of a tier fitted per source, the source with most accepted items carries
        ``threshold``, the others ``source_thresholds``; its calibrated figures are the groups'
        together (the upper bound is the largest of theirs)."""
        groups = dict(self._groups())
        out = []
        for index, threshold in self.plan():
            parts = groups[index]
            spec = parts[0].spec
            accepted = sum(t.accepted for t in parts)
            wrong = sum(t.disagreements for t in parts)
            bounds = [t.upper_bound for t in parts if t.upper_bound is not None]
            others: dict[str, float] = {}
            if isinstance(threshold, int | float):
                main, source = float(threshold), ""
            else:
                main, source, others = _main(dict(threshold), parts)
            out.append(
                TierRule(
                    tier=spec.tier,
                    threshold=main,
                    judge=spec.judge,
                    confidence=spec.confidence,
                    confidence_source=source,
                    source_thresholds=others,
                    calibrated_agreement=1.0 - wrong / accepted if accepted else None,
                    calibrated_coverage=accepted / self.items,
                    calibrated_upper_bound=max(bounds) if bounds else None,
                    calibrated_items=sum(t.reached for t in parts),
                )
            )
        return out


def _main(
    thresholds: dict[str, float], parts: Sequence[TierCalibration]
) -> tuple[float, str, dict[str, float]]:
    """The main source of a per-source tier (most accepted items, then name), its threshold, the rest."""
    accepted = {t.spec.confidence_source: t.accepted for t in parts}
    source = min(thresholds, key=lambda s: (-accepted.get(s, 0), s))
    return thresholds[source], source, {s: v for s, v in sorted(thresholds.items()) if s != source}


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
    sources = tier_sources(items, tiers)
    groups = sum(len(s) for s in sources)
    per_group = delta / groups
    reaching = np.ones(len(items), dtype=bool)
    results: list[TierCalibration] = []
    for index, spec in enumerate(tiers):
        conf = np.array(
            [-np.inf if it.verdicts[index].label is None else it.verdicts[index].confidence for it in items]
        )
        wrong = np.array([it.verdicts[index].label != it.human for it in items])
        source_of = np.array([it.verdicts[index].confidence_source for it in items], dtype=object)
        accepted_here = np.zeros_like(reaching)
        for source in sources[index]:
            group = reaching & (source_of == source)
            threshold, tests = select_threshold(
                conf[group],
                wrong[group],
                alpha=alpha,
                delta=per_group,
                grid_step=grid_step,
                min_accepted=min_accepted,
                upper_bound=upper_bound,
            )
            accepted = group & (conf >= threshold) if threshold is not None else np.zeros_like(group)
            results.append(
                TierCalibration(
                    spec=replace(spec, confidence_source=source),
                    threshold=threshold,
                    delta=per_group,
                    reached=int(group.sum()),
                    accepted=int(accepted.sum()),
                    disagreements=int((accepted & wrong).sum()),
                    upper_bound=next((t.upper_bound for t in reversed(tests) if t.passed), None),
                    tests=tests,
                    verdict_index=index,
                )
            )
            accepted_here |= accepted
        reaching &= ~accepted_here
    return CascadeCalibration(
        dimension=dimension, alpha=alpha, delta=delta, items=len(items), tiers=tuple(results)
    )


def tier_sources(items: Sequence[CalibrationItem], tiers: Sequence[TierSpec]) -> list[list[str]]:
    """Per tier, the confidence sources of its verdicts with a label, sorted (one group each; ``""``
    for verdicts that do not say). A tier with no labelled verdict at all is one source-less group.
    Looks at sources only, never at labels, so the groups are fixed before any test."""
    out = []
    for index, spec in enumerate(tiers):
        found = sorted({it.verdicts[index].confidence_source for it in items if it.verdicts[index].label})
        if "" in found and len(found) > 1:
            unsaid = sum(
                1 for it in items if it.verdicts[index].label and not it.verdicts[index].confidence_source
            )
            raise CalibrationError(
                f"judge {spec.judge!r} (tier {spec.tier}) has verdicts with confidence sources "
                f"{found[1:]} and {unsaid} without one; a threshold cannot tell which scale those are "
                "on: record confidence_source on every row of that judge (or on none)"
            )
        out.append(found or [""])
    return out


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
        dimensions={c.dimension.value: _dimension_cascade(c) for c in calibrations},
    )


def _dimension_cascade(calibration: CascadeCalibration) -> DimensionCascade:
    """The dimension's rules, with every tier the calibration considered as a shadow tier: a tier it
    dropped is still judged on the calibration sample, so ``evalstream recalibrate`` can bring it back."""
    considered = sorted({t.spec.tier for t in calibration.tiers})
    return DimensionCascade(tiers=calibration.rules(), shadow_tiers=considered)


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
                    confidence_source=verdicts[n][item_id].confidence_source,
                )
                for n in judges
            ),
        )
        for item_id, label in sorted(truth.items())
    ]
    return items, specs
