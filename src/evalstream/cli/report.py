"""``evalstream report``: the shell over ``evaluation.report.build_report`` and its rich tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from evalstream.cli.options import DataOption, HumansOption, JudgementsOption
from evalstream.evaluation.calibration import CalibrationError, calibrate, cascade_items
from evalstream.evaluation.judgements import LabelledSet, Split
from evalstream.evaluation.report import CascadeSpec, Report, build_report
from evalstream.evaluation.routing import config_plan
from evalstream.evaluation.statistics import DEFAULT_ALT_EPSILON
from evalstream.runtime.tables import print_table
from evalstream.wire.cascade_config import CascadeConfig
from evalstream.wire.dimensions import Dimension
from evalstream.wire.targets import DEFAULT_ALPHA, DEFAULT_DELTA

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["render", "report_command"]


# --- rendering -------------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(report: Report, console: Console) -> None:
    """Rich tables of a report on ``console``, each readable at 80 columns (``print_table``).

    The wide figures (kappa's interval, position bias, the alt-test) have a table of their own.
    """
    from rich.table import Table

    table = Table(
        title=f"{report.data} / {report.dimension.value}: {report.items} items ({report.split} split), "
        f"truth = {report.truth_annotator}"
    )
    columns = ("judge", "tier", "items", "coverage", "accuracy", "kappa", "escalated", "audited", "USD / 1k")
    for column in columns:
        table.add_column(column, justify="left" if column == "judge" else "right")
    checks = Table(title=f"{report.data} / {report.dimension.value}: kappa's interval, bias, alt-test")
    for column in ("judge", "kappa 95% CI", "position bias", "alt-test (omega, rho)"):
        checks.add_column(column, justify="left" if column == "judge" else "right")
    for row in report.judges:
        table.add_row(
            row.name,
            "-" if row.tier is None else str(row.tier),
            str(row.items),
            _f(row.coverage),
            _f(row.accuracy),
            _f(row.kappa),
            _f(row.escalation_rate),
            _f(row.audit_rate),
            f"{row.cost_per_1000:.2f}",
        )
        interval = "-"
        if row.kappa_low is not None and row.kappa_high is not None:
            interval = f"[{row.kappa_low:.3f}, {row.kappa_high:.3f}]"
        alt = "-"
        if row.alt_test is not None:
            verdict = "pass" if row.alt_test.passed else "fail"
            alt = f"{verdict} ({row.alt_test.winning_rate:.2f}, {row.alt_test.advantage_probability:.2f})"
        bias = "-" if row.position_bias is None else f"{row.position_bias:.3f} (n={row.position_items})"
        checks.add_row(row.name, interval, bias, alt)
    print_table(console, table)
    print_table(console, checks)
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
    print_table(console, classes)
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
    data: DataOption = None,
    judgements: JudgementsOption = None,
    humans: HumansOption = None,
    truth_annotator: str | None = typer.Option(None, help="Whose human labels are the truth."),
    split: str | None = typer.Option(
        None, help="Report on this split: test (default where there is one), calibration, fit or all."
    ),
    config: Path | None = typer.Option(
        None, help="Cascade config to report (default: calibrate one on the calibration split)."
    ),
    judges: str | None = typer.Option(None, help="Comma-separated cascade judges, cheapest first."),
    alpha: float = typer.Option(
        DEFAULT_ALPHA, help="Without --config: allowed disagreement of the calibrated cascade."
    ),
    delta: float = typer.Option(
        DEFAULT_DELTA, help="Without --config: allowed probability the guarantee fails."
    ),
    seed: int = typer.Option(0, help="Seed of a recorded set's split and of the bootstrap."),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples for kappa's confidence interval."),
    alt_epsilon: float = typer.Option(
        DEFAULT_ALT_EPSILON, help="Alt-test cost-benefit margin (0.2 expert annotators, 0.1 crowd)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Agreement of each judge and of the cascade with humans: accuracy, kappa, coverage, cost, bias."""
    from rich.console import Console

    from evalstream.evaluation.datasets import DataFormatError, DataNotFoundError
    from evalstream.evaluation.judgements import TableError
    from evalstream.evaluation.recorded import load_labelled_set

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
    where = "the calibration split" if labelled.splits else "all items (no split: in-sample)"
    return CascadeSpec(
        tiers=tuple(tiers),
        plan=tuple(fitted.plan()),
        source=f"calibrated on {where} at alpha {alpha:g}, delta {delta:g}",
    )
