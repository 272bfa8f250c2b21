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
- The alternative annotator test (Calderon, Reichart and Dror, 2025, "The Alternative Annotator Test
  for LLM-as-a-Judge: How to Statistically Justify Replacing Human Annotators with LLMs"): leave each
  human annotator out in turn; per item, does the judge or the left-out annotator agree better with the
  remaining annotators? A one-sided one-sample t-test asks whether the annotator's advantage is below
  ``epsilon`` (the cost-benefit margin; 0.2 suits expert annotators, 0.1 crowd workers), the p-values
  are corrected with Benjamini-Yekutieli at ``q``, the winning rate is the share of annotators the
  judge beats, and the judge passes when it beats at least half. The advantage probability rho is the
  mean share of items where the judge aligns at least as well as the left-out annotator. The paper
  asks for at least three annotators; with two (XSTest) each comparison has one remaining annotator.

``build_report`` is the pure core; ``report_command`` is the ``evalstream report`` shell. scipy and
scikit-learn are imported where used, to keep ``evalstream --help`` fast.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import typer

from evalstream.calibration import (
    CalibrationError,
    TierSpec,
    calibrate,
    cascade_items,
    config_plan,
    route,
)
from evalstream.cascade_config import CascadeConfig
from evalstream.dimensions import Dimension
from evalstream.judgements import LabelledSet, Split

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "AltTest",
    "AltTestAnnotator",
    "CascadeSpec",
    "ClassScores",
    "JudgeReport",
    "Report",
    "alternative_annotator_test",
    "build_report",
    "kappa_with_ci",
    "position_bias",
    "report_command",
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
class CascadeSpec:
    """The cascade to report: its judges (cheapest first), the route plan and where it came from."""

    tiers: tuple[TierSpec, ...]
    plan: tuple[tuple[int, float], ...]
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


def _per_class(y_true: Sequence[str], y_pred: Sequence[str]) -> tuple[ClassScores, ...]:
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
        per_class=_per_class(truth, pred),
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
    for judge in data.judges:
        verdicts = data.verdicts(dimension, judge)
        if not verdicts:
            continue
        if progress is not None:
            progress(judge)
        judged = [i for i in truth if i in verdicts]
        pairs = [(truth[i], label) for i in judged if (label := verdicts[i].label) is not None]
        rows.append(
            _scores(
                judge,
                next(iter(verdicts.values())).tier,
                len(judged),
                pairs,
                {i: v.label for i, v in verdicts.items() if v.label is not None},
                alt_humans,
                n_resamples=n_resamples,
                seed=seed,
                alt_epsilon=alt_epsilon,
                escalation_rate=escalation.get(judge),
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
    )


# --- rendering -------------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(report: Report, console: Console) -> None:
    """Rich tables of a report on ``console``."""
    from rich.table import Table

    table = Table(
        title=f"{report.data} / {report.dimension.value}: {report.items} items ({report.split} split), "
        f"truth = {report.truth_annotator}"
    )
    columns = (
        "judge",
        "tier",
        "items",
        "coverage",
        "accuracy",
        "kappa [95% CI]",
        "escalated",
        "audited",
        "USD / 1k",
        "position bias",
        "alt-test (omega, rho)",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "judge" else "right")
    for row in report.judges:
        kappa = _f(row.kappa)
        if row.kappa_low is not None and row.kappa_high is not None:
            kappa += f" [{row.kappa_low:.3f}, {row.kappa_high:.3f}]"
        alt = "-"
        if row.alt_test is not None:
            verdict = "pass" if row.alt_test.passed else "fail"
            alt = f"{verdict} ({row.alt_test.winning_rate:.2f}, {row.alt_test.advantage_probability:.2f})"
        bias = "-" if row.position_bias is None else f"{row.position_bias:.3f} (n={row.position_items})"
        table.add_row(
            row.name,
            "-" if row.tier is None else str(row.tier),
            str(row.items),
            _f(row.coverage),
            _f(row.accuracy),
            kappa,
            _f(row.escalation_rate),
            _f(row.audit_rate),
            f"{row.cost_per_1000:.2f}",
            bias,
            alt,
        )
    console.print(table)
    classes = Table(title="per-class precision / recall (support)")
    labels = sorted({c.label for row in report.judges for c in row.per_class})
    classes.add_column("judge")
    for label in labels:
        classes.add_column(label, justify="right")
    for row in report.judges:
        by_label = {c.label: c for c in row.per_class}
        classes.add_row(
            row.name,
            *[
                f"{by_label[label].precision:.2f} / {by_label[label].recall:.2f} ({by_label[label].support})"
                if label in by_label
                else "-"
                for label in labels
            ],
        )
    console.print(classes)
    for row in report.judges:
        if row.calls_per_1000:
            calls = ", ".join(f"{judge} {calls:.0f}" for judge, calls in row.calls_per_1000.items())
            console.print(f"cascade ({report.cascade_source}): calls per 1,000 items: {calls}")
    for note in report.notes:
        console.print(f"[dim]note: {note}[/dim]")


# --- the command -----------------------------------------------------------------------------------


def _resolve_split(data: LabelledSet, split: str | None) -> tuple[LabelledSet, str]:
    if split is None:
        split = Split.TEST.value if any(s is Split.TEST for s in data.splits.values()) else "all"
    if split == "all":
        return data, split
    try:
        which = Split(split)
    except ValueError:
        raise typer.BadParameter(f"--split {split!r} is none of {', '.join([*Split, 'all'])}") from None
    part = data.split(which)
    if not part.humans:
        raise typer.BadParameter(f"the {split} split of {data.name} is empty; try --split all")
    return part, split


def report_command(
    data: str | None = typer.Option(
        None, "--data", help="A recorded labelled set: xstest, llmbar or judgebench (../shared/data)."
    ),
    judgements: Path | None = typer.Option(None, help="Judgement table (JSONL) instead of --data."),
    humans: Path | None = typer.Option(None, help="Human-label table (JSONL), with --judgements."),
    truth_annotator: str | None = typer.Option(None, help="Whose human labels are the truth."),
    split: str | None = typer.Option(
        None, help="Report on this split: test (default where there is one), calibration, fit or all."
    ),
    config: Path | None = typer.Option(
        None, help="Cascade config to report (default: calibrate one on the calibration split)."
    ),
    judges: str | None = typer.Option(None, help="Comma-separated cascade judges, cheapest first."),
    alpha: float = typer.Option(
        0.1, help="Without --config: allowed disagreement of the calibrated cascade."
    ),
    delta: float = typer.Option(0.1, help="Without --config: allowed probability the guarantee fails."),
    seed: int = typer.Option(0, help="Seed of a recorded set's split and of the bootstrap."),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples for kappa's confidence interval."),
    alt_epsilon: float = typer.Option(
        DEFAULT_ALT_EPSILON, help="Alt-test cost-benefit margin (0.2 expert annotators, 0.1 crowd)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Agreement of each judge and of the cascade with humans: accuracy, kappa, coverage, cost, bias."""
    from rich.console import Console

    from evalstream.datasets import DataFormatError, DataNotFoundError
    from evalstream.judgements import TableError
    from evalstream.recorded_judgements import load_labelled_set

    progress_console = Console(stderr=True)
    try:
        with progress_console.status("reading judgements and human labels"):
            labelled = load_labelled_set(
                data=data, judgements=judgements, humans=humans, truth_annotator=truth_annotator, seed=seed
            )
    except (TableError, DataFormatError, DataNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from exc

    part, split_name = _resolve_split(labelled, split)
    chosen = [j.strip() for j in judges.split(",") if j.strip()] if judges else None
    reports = []
    for dimension in labelled.dimensions:
        cascade_judges = chosen or list(labelled.cascade) or labelled.judges
        try:
            spec = _cascade_spec(labelled, dimension, cascade_judges, config, alpha=alpha, delta=delta)
            with progress_console.status(f"{dimension.value}: scoring") as status:

                def progress(name: str, d: Dimension = dimension) -> None:
                    status.update(f"{d.value}: scoring {name}")

                reports.append(
                    build_report(
                        part,
                        dimension,
                        spec,
                        split=split_name,
                        n_resamples=bootstrap,
                        seed=seed,
                        alt_epsilon=alt_epsilon,
                        progress=progress,
                    )
                )
        except CalibrationError as exc:
            raise typer.BadParameter(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in reports], indent=2))
        return
    console = Console()
    for r in reports:
        render(r, console)


def _cascade_spec(
    labelled: LabelledSet,
    dimension: Dimension,
    judges: Sequence[str],
    config: Path | None,
    *,
    alpha: float,
    delta: float,
) -> CascadeSpec:
    if config is not None:
        try:
            loaded = CascadeConfig.load(config)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        rules = loaded.dimensions.get(dimension.value)
        names = [r.judge for r in rules.tiers if r.judge] if rules else []
        tiers = cascade_items(labelled, dimension, names or list(judges))[1]
        return CascadeSpec(
            tiers=tuple(tiers),
            plan=tuple(config_plan(loaded, dimension, tiers)),
            source=f"{config} ({loaded.version})",
        )
    items, tiers = cascade_items(labelled.split(Split.CALIBRATION), dimension, judges)
    fitted = calibrate(items, tiers, dimension=dimension, alpha=alpha, delta=delta)
    where = "calibration split" if labelled.splits else "all items (no split: in-sample)"
    return CascadeSpec(
        tiers=tuple(tiers),
        plan=tuple(fitted.plan()),
        source=f"calibrated on the {where} at alpha {alpha:g}, delta {delta:g}",
    )
