"""How well each judge, and the cascade, agree with humans on a labelled set.

For every judge of a dimension and for the calibrated cascade: accuracy, Cohen's kappa with a
bootstrap confidence interval (scikit-learn's kappa, scipy's bootstrap), per-class precision and
recall, coverage, escalation rate, cost per 1,000 items, the position-bias rate of pairwise judges
(the verdict changes when the two responses swap places) and, where several human annotators labelled
the items, the alternative annotator test.

- Accuracy, kappa and per-class figures count the items a judge gave a verdict on (for the cascade:
  the items it accepted); coverage says what share that is. A pairwise ``tie`` is a verdict, and wrong
  when the truth has no ties.
- Escalation rate: of the items reaching a tier, the share sent on. Audit rate: the share of all items
  the cascade did not accept (they go to humans).
- Cost per 1,000 items: for a judge, as if it judged every item; for the cascade, what its calls cost.
- The cascade plan (``Report.cascade_plan``, also the first note): each judge of the cascade with its
  threshold and the items it is called on per 1,000, or "dropped" where calibration certified no
  threshold for it at the target: then the items go straight to the next tier, which is why a strong
  judge can be called on every item while the cascade's coverage is low (XSTest at alpha 0.1: string
  match is dropped, GPT-4 sees all items and accepts 36.6% of them).
- The alternative annotator test (Calderon, Reichart and Dror, 2025, "The Alternative Annotator Test
  for LLM-as-a-Judge: How to Statistically Justify Replacing Human Annotators with LLMs"): leave each
  human annotator out in turn; per item, does the judge or the left-out annotator agree better with the
  remaining annotators? A one-sided one-sample t-test asks whether the annotator's advantage is below
  ``epsilon`` (the cost-benefit margin; 0.2 suits expert annotators, 0.1 crowd workers), the p-values
  are corrected with Benjamini-Yekutieli at ``q``, the winning rate is the share of annotators the
  judge beats, and the judge passes when it beats at least half. The advantage probability rho is the
  mean share of items where the judge aligns at least as well as the left-out annotator. The paper
  asks for at least three annotators; with two (XSTest) each comparison has one remaining annotator.

``build_report`` is the pure core; the statistics are in ``statistics``; ``evalstream report``'s
shell and rendering are ``evalstream.cli.report``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from evalstream.evaluation.calibration import CalibrationError, Threshold, TierSpec, cascade_items
from evalstream.evaluation.judgements import LabelledSet
from evalstream.evaluation.routing import route
from evalstream.evaluation.statistics import (
    DEFAULT_ALT_EPSILON,
    AltTest,
    ClassScores,
    alternative_annotator_test,
    kappa_with_ci,
    per_class,
    position_bias,
)
from evalstream.wire.dimensions import Dimension

__all__ = [
    "CascadeSpec",
    "JudgeReport",
    "PlanStep",
    "Report",
    "build_report",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class JudgeReport:
    name: str  # judge name, or "cascade"
    tier: int | None
    items: int
    covered: int  # items with a verdict (cascade: accepted)
    accuracy: float | None
    kappa: float | None
    kappa_low: float | None
    kappa_high: float | None
    per_class: tuple[ClassScores, ...]
    escalation_rate: float | None  # of items reaching this tier, the share escalated
    audit_rate: float | None  # cascade only: share of items sent to human audit
    cost_per_1000: float
    calls_per_1000: Mapping[str, float]  # cascade only: judge -> calls per 1,000 items
    position_bias: float | None
    position_items: int  # items with two parsed orders (the position-bias denominator)
    alt_test: AltTest | None

    @property
    def coverage(self) -> float:
        return self.covered / self.items if self.items else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanStep:
    """One judge of the cascade as it routes: its threshold, or ``None`` where calibration certified
    no threshold and the tier was dropped (the items go straight to the next tier)."""

    judge: str
    tier: int
    threshold: Threshold | None  # one number, or one per confidence source
    calls_per_1000: float  # items on which this tier is called, per 1,000 items (0 when dropped)
    #: items per 1,000 whose verdict here escalated because the tier has no threshold for its source
    source_mismatches_per_1000: float = 0.0

    def describe(self) -> str:
        if self.threshold is None:
            return f"{self.judge} (tier {self.tier}) dropped: no threshold certified, never called"

        def at(value: float) -> str:
            return "accepts nothing (audit)" if math.isinf(value) else f"threshold {value:.3f}"

        if isinstance(self.threshold, int | float):
            rule = at(self.threshold)
        else:
            rule = ", ".join(f"{at(v)} for {s or 'unsaid'}" for s, v in sorted(self.threshold.items()))
            rule += " (other confidence sources escalate"
            rule += f": {self.source_mismatches_per_1000:.0f} per 1,000 items)"
        return f"{self.judge} (tier {self.tier}) {rule}, called on {self.calls_per_1000:.0f} per 1,000 items"


@dataclass(frozen=True, slots=True, kw_only=True)
class CascadeSpec:
    """The cascade to report: its judges (cheapest first), the route plan and where it came from."""

    tiers: tuple[TierSpec, ...]
    plan: tuple[tuple[int, Threshold], ...]
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    data: str
    dimension: Dimension
    split: str
    items: int
    truth_annotator: str
    cascade_source: str
    judges: tuple[JudgeReport, ...]
    notes: tuple[str, ...]
    #: the cascade's judges in order, with what routing does with each (empty without a cascade)
    cascade_plan: tuple[PlanStep, ...] = ()

    def to_json(self) -> dict[str, Any]:
        def convert(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None if math.isnan(value) else str(value)
            if isinstance(value, Mapping):
                return {str(k): convert(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [convert(v) for v in value]
            return value

        out = convert(dataclasses.asdict(self))
        for row, judge in zip(out["judges"], self.judges, strict=True):
            row["coverage"] = judge.coverage
        out["dimension"] = self.dimension.value
        assert isinstance(out, dict)
        return out


# --- the report ------------------------------------------------------------------------------------


def _alt_annotators(data: LabelledSet, dimension: Dimension) -> dict[str, dict[str, str]]:
    """Every annotator but the truth (an adjudication is not an independent annotator)."""
    out: dict[str, dict[str, str]] = {}
    for h in data.humans:
        if h.dimension == dimension and h.annotator != data.truth_annotator:
            out.setdefault(h.annotator, {})[h.item_id] = h.label
    return out


def _scores(
    name: str,
    tier: int | None,
    items: int,
    pairs: Sequence[tuple[str, str]],
    alt_labels: Mapping[str, str],
    alt_humans: Mapping[str, Mapping[str, str]],
    *,
    n_resamples: int,
    seed: int,
    alt_epsilon: float,
    escalation_rate: float | None,
    audit_rate: float | None,
    cost_per_1000: float,
    calls_per_1000: Mapping[str, float],
    positions: Sequence[Sequence[str | None]],
) -> JudgeReport:
    truth = [t for t, _ in pairs]
    pred = [p for _, p in pairs]
    kappa, low, high = kappa_with_ci(truth, pred, n_resamples=n_resamples, seed=seed)
    bias, bias_items = position_bias(positions)
    return JudgeReport(
        name=name,
        tier=tier,
        items=items,
        covered=len(pairs),
        accuracy=sum(t == p for t, p in pairs) / len(pairs) if pairs else None,
        kappa=kappa,
        kappa_low=low,
        kappa_high=high,
        per_class=per_class(truth, pred),
        escalation_rate=escalation_rate,
        audit_rate=audit_rate,
        cost_per_1000=cost_per_1000,
        calls_per_1000=calls_per_1000,
        position_bias=bias,
        position_items=bias_items,
        alt_test=alternative_annotator_test(alt_labels, alt_humans, epsilon=alt_epsilon)
        if alt_humans
        else None,
    )


def build_report(
    data: LabelledSet,
    dimension: Dimension,
    cascade: CascadeSpec | None,
    *,
    split: str,
    n_resamples: int = 1000,
    seed: int = 0,
    alt_epsilon: float = DEFAULT_ALT_EPSILON,
    progress: Callable[[str], object] | None = None,
) -> Report:
    """The report of every judge of ``dimension`` in ``data`` (already restricted to the split to
    report on) and of ``cascade`` if given. ``progress`` is called with each row's name as it starts."""
    truth = data.truth(dimension)
    if not truth:
        raise CalibrationError(
            f"no {dimension.value} labels from {data.truth_annotator!r} in {data.name} ({split}); "
            f"annotators there: {data.annotators}"
        )
    alt_humans = _alt_annotators(data, dimension)
    if len(alt_humans) < 2:
        alt_humans = {}
    rows: list[JudgeReport] = []
    cascade_calls: dict[str, float] = {}
    escalation: dict[str, float] = {}
    cascade_row: JudgeReport | None = None
    plan_steps: list[PlanStep] = []
    if cascade is not None:
        if progress is not None:
            progress("cascade")
        items, _ = cascade_items(data, dimension, [t.judge for t in cascade.tiers])
        routed = route(items, cascade.plan)
        n = len(items)
        for index, _threshold in cascade.plan:
            reached = [r for r in routed if index in r.called]
            judge = cascade.tiers[index].judge
            cascade_calls[judge] = 1000.0 * len(reached) / n
            if reached:
                escalation[judge] = sum(r.accepted_by != index for r in reached) / len(reached)
        accepted = [(it, r) for it, r in zip(items, routed, strict=True) if r.label is not None]
        cascade_row = _scores(
            "cascade",
            None,
            n,
            [(it.human, r.label) for it, r in accepted if r.label is not None],
            {r.item_id: r.label for _, r in accepted if r.label is not None},
            alt_humans,
            n_resamples=n_resamples,
            seed=seed,
            alt_epsilon=alt_epsilon,
            escalation_rate=escalation.get(cascade.tiers[cascade.plan[0][0]].judge) if cascade.plan else None,
            audit_rate=1.0 - len(accepted) / n if n else None,
            cost_per_1000=1000.0 * sum(r.cost_usd for r in routed) / n if n else 0.0,
            calls_per_1000=cascade_calls,
            positions=(),
        )
        thresholds = dict(cascade.plan)
        for index, spec in enumerate(cascade.tiers):
            plan_steps.append(
                PlanStep(
                    judge=spec.judge,
                    tier=spec.tier,
                    threshold=thresholds.get(index),
                    calls_per_1000=cascade_calls.get(spec.judge, 0.0),
                    source_mismatches_per_1000=1000.0 * sum(index in r.source_mismatches for r in routed) / n
                    if n
                    else 0.0,
                )
            )
    for judge in data.judges:
        verdicts = data.verdicts(dimension, judge)
        if not verdicts:
            continue
        if progress is not None:
            progress(judge)
        everything = [i for i in truth if i in verdicts]
        sources = sorted({verdicts[i].confidence_source for i in everything})
        # the judge, then (when its confidences come from several sources) each source on its own
        parts: list[tuple[str, str | None]] = [(judge, None)]  # (row name, source or None: all)
        if len(sources) > 1:
            parts += [(f"{judge} [{source or 'unsaid'}]", source) for source in sources]
        for name, only in parts:
            judged = [i for i in everything if only is None or verdicts[i].confidence_source == only]
            pairs = [(truth[i], label) for i in judged if (label := verdicts[i].label) is not None]
            rows.append(
                _scores(
                    name,
                    next(iter(verdicts.values())).tier,
                    len(judged),
                    pairs,
                    {
                        i: v.label
                        for i, v in verdicts.items()
                        if v.label is not None and (only is None or v.confidence_source == only)
                    },
                    alt_humans,
                    n_resamples=n_resamples,
                    seed=seed,
                    alt_epsilon=alt_epsilon,
                    escalation_rate=escalation.get(name),
                    audit_rate=None,
                    cost_per_1000=1000.0 * sum(verdicts[i].cost_usd for i in judged) / len(judged)
                    if judged
                    else 0.0,
                    calls_per_1000={},
                    positions=[verdicts[i].position_labels for i in judged],
                )
            )
    if cascade_row is not None:
        rows.append(cascade_row)
    notes = list(data.notes)
    if plan_steps:
        notes.insert(0, "cascade plan: " + "; ".join(step.describe() for step in plan_steps))
    if alt_humans and len(alt_humans) < 3:
        notes.append(
            f"alternative annotator test with {len(alt_humans)} annotators "
            f"({', '.join(sorted(alt_humans))}); "
            "Calderon et al. recommend at least 3"
        )
    return Report(
        data=data.name,
        dimension=dimension,
        split=split,
        items=len(truth),
        truth_annotator=data.truth_annotator,
        cascade_source=cascade.source if cascade is not None else "none",
        judges=tuple(rows),
        notes=tuple(notes),
        cascade_plan=tuple(plan_steps),
    )
