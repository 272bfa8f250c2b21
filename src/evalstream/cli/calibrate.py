"""``evalstream calibrate``: the shell over ``evaluation.calibration``, with its rich tables."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from evalstream.cli.options import DataOption, HumansOption, JudgementsOption
from evalstream.evaluation.calibration import (
    DEFAULT_GRID_STEP,
    DEFAULT_MIN_ACCEPTED,
    CalibrationError,
    CascadeCalibration,
    calibrate,
    cascade_items,
    to_config,
)
from evalstream.evaluation.judgements import Split
from evalstream.evaluation.routing import RouteSummary, route, summarise_routes
from evalstream.runtime.tables import print_table
from evalstream.wire.dimensions import Dimension
from evalstream.wire.targets import DEFAULT_ALPHA, DEFAULT_DELTA

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["calibrate_command"]

# --- the command -----------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf (audit all)"
    return f"{value:.{digits}f}"


def calibrate_command(
    data: DataOption = None,
    judgements: JudgementsOption = None,
    humans: HumansOption = None,
    truth_annotator: str | None = typer.Option(
        None, help="Whose human labels are the truth (default: the only annotator, or the set's own)."
    ),
    judges: str | None = typer.Option(
        None, help="Comma-separated judges of the cascade, cheapest first (default: the set's cascade)."
    ),
    alpha: float = typer.Option(
        DEFAULT_ALPHA, help="Allowed disagreement with humans: agreement >= 1 - alpha."
    ),
    delta: float = typer.Option(DEFAULT_DELTA, help="Allowed probability that the guarantee fails."),
    out: Path = typer.Option(Path("cascade.yaml"), help="Where to write the cascade config (YAML)."),
    seed: int = typer.Option(0, help="Seed of the fit/calibration/test split of a recorded set."),
    grid_step: float = typer.Option(DEFAULT_GRID_STEP, help="Step of the decreasing threshold grid."),
    min_accepted: int = typer.Option(
        DEFAULT_MIN_ACCEPTED, help="Skip thresholds that accept fewer calibration items than this."
    ),
    version: str | None = typer.Option(None, help="Config version (default: derived from data and time)."),
    write_tables: Path | None = typer.Option(
        None, help="Also write the judgement and human-label tables (JSONL) into this folder."
    ),
) -> None:
    """Fit per-tier confidence thresholds on human labels and write a versioned cascade config."""
    from rich.console import Console

    from evalstream.evaluation.datasets import DataFormatError, DataNotFoundError
    from evalstream.evaluation.judgements import TableError
    from evalstream.evaluation.recorded import load_labelled_set

    console = Console()
    _check_unit_cli("--alpha", alpha)
    _check_unit_cli("--delta", delta)
    try:
        with console.status("reading judgements and human labels"):
            labelled = load_labelled_set(
                data=data,
                judgements=judgements,
                humans=humans,
                truth_annotator=truth_annotator,
                seed=seed,
                write_tables=write_tables,
            )
    except (TableError, DataFormatError, DataNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from exc

    calibration_part = labelled.split(Split.CALIBRATION)
    test_part = labelled.split(Split.TEST)
    chosen = [j.strip() for j in judges.split(",") if j.strip()] if judges else None
    calibrations: list[CascadeCalibration] = []
    checks: list[tuple[Dimension, RouteSummary, int]] = []  # held-out: dimension, summary, strong index
    for dimension in labelled.dimensions:
        cascade = chosen or list(labelled.cascade) or labelled.judges
        try:
            items, specs = cascade_items(calibration_part, dimension, cascade)
            result = calibrate(
                items,
                specs,
                dimension=dimension,
                alpha=alpha,
                delta=delta,
                grid_step=grid_step,
                min_accepted=min_accepted,
            )
        except CalibrationError as exc:
            raise typer.BadParameter(str(exc)) from exc
        calibrations.append(result)
        if test_part.truth(dimension):
            held, _ = cascade_items(test_part, dimension, cascade)
            summary = summarise_routes(held, route(held, result.plan()))
            checks.append((dimension, summary, len(specs) - 1))
        _print_calibration(console, result)
    stamp = datetime.now(UTC)
    config = to_config(
        calibrations,
        version=version or f"{labelled.name}-a{alpha:g}-d{delta:g}-{stamp:%Y%m%dT%H%M%SZ}",
        calibration_data=f"{labelled.name}: calibration split (seed {seed}), "
        f"{calibrations[0].items} items; truth = {labelled.truth_annotator}",
        created_at=stamp,
    )
    config.dump(out)
    for dimension, s, strong in checks:
        console.print(
            f"held-out test split ({dimension.value}): {s.items} items, coverage {_fmt(s.coverage)}, "
            f"agreement {_fmt(s.agreement)} (target >= {1 - alpha:.3f}), "
            f"last-tier calls per 1,000 items {s.calls_per_1000(strong):.0f}"
        )
    for note in labelled.notes:
        console.print(f"[dim]note: {note}[/dim]")
    console.print(f"wrote {out} (version {config.version})")


def _check_unit_cli(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise typer.BadParameter(f"{name} must lie strictly between 0 and 1, got {value}")


def _print_calibration(console: Console, result: CascadeCalibration) -> None:
    from rich.table import Table

    table = Table(
        title=f"{result.dimension.value}: agreement >= {1 - result.alpha:.3f} with probability "
        f">= {1 - result.delta:.3f} (calibration items: {result.items})"
    )
    columns = (
        "judge", "tier", "confidence source", "delta", "reached", "threshold", "accepted", "agreement",
        "guaranteed >=",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "judge" else "right")
    for t in result.tiers:
        table.add_row(
            t.spec.judge,
            str(t.spec.tier),
            t.spec.confidence_source or "-",
            f"{t.delta:.4f}",
            str(t.reached),
            _fmt(t.threshold) if t.threshold is not None else "none certified",
            str(t.accepted),
            _fmt(t.agreement),
            _fmt(1 - t.upper_bound if t.upper_bound is not None else None),
        )
    print_table(console, table)
    console.print(
        f"cascade on calibration items: coverage {_fmt(result.coverage)}, "
        f"agreement {_fmt(result.agreement)}, "
        f"audit {result.items - result.accepted} items"
    )
