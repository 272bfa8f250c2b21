"""The plain-data model of a dashboard (``DashboardSpec`` > ``RowSpec`` > ``PanelSpec`` > ``Target``),
the shorthands the dashboard definitions use, and the PromQL fragments they share.

Only ``generate.build`` knows grafana-foundation-sdk; the ``board_*`` modules are plain data.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

HERE: Final = Path(__file__).resolve().parent
DASHBOARDS_DIR: Final = HERE / "dashboards"

#: The datasource every panel reads: the dashboard's ``datasource`` variable (any Prometheus).
DATASOURCE_VAR: Final = "datasource"
#: Matchers for the dashboards' model and route variables.
SEL: Final = 'model=~"$model", route=~"$route"'
MODEL_SEL: Final = 'model=~"$model"'  # for series that carry a model but no route
RATE: Final = "$__rate_interval"
KEY: Final = "model, model_version, route"
KEY_LEGEND: Final = "{{model}} {{model_version}} {{route}}"


class Kind(StrEnum):
    TIMESERIES = "timeseries"
    STAT = "stat"


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    expr: str
    legend: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PanelSpec:
    title: str
    description: str
    targets: tuple[Target, ...]
    unit: str = "short"
    kind: Kind = Kind.TIMESERIES
    width: int = 12
    height: int = 8
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RowSpec:
    title: str
    panels: tuple[PanelSpec, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DashboardSpec:
    uid: str
    title: str
    description: str
    rows: tuple[RowSpec, ...]


def ts(title: str, description: str, *targets: Target, unit: str = "short", **kw: Any) -> PanelSpec:
    return PanelSpec(title=title, description=description, targets=targets, unit=unit, **kw)


def stat(title: str, description: str, expr: str, *, unit: str = "short", **kw: Any) -> PanelSpec:
    return PanelSpec(
        title=title,
        description=description,
        targets=(Target(expr=expr),),
        unit=unit,
        kind=Kind.STAT,
        width=6,
        height=4,
        **kw,
    )


def t(expr: str, legend: str = "") -> Target:
    return Target(expr=expr, legend=legend)


def total(
    metric: str, *, by: str = "", where: str = "", sel: str = SEL, window: str = RATE, fn: str = "rate"
) -> str:
    """``sum by (by) (fn(metric{sel, where}[window]))``: the building block of most panels."""
    matchers = ", ".join(m for m in (sel, where) if m)
    selector = f"{metric}{{{matchers}}}" if matchers else metric
    grouping = f" by ({by}) " if by else ""
    return f"sum{grouping}({fn}({selector}[{window}]))"


def label_share(dimension: str, labels: str, window: str, by: str = KEY) -> str:
    """Share of ``dimension`` verdicts whose label matches the regex ``labels``: 0, not "no data",
    where there are verdicts but none with those labels (the recording rules give no series then)."""
    dim = f'dimension="{dimension}"'
    some = total("evalstream_verdict_labels_total", by=by, where=f'{dim}, label=~"{labels}"', window=window)
    every = total("evalstream_verdict_labels_total", by=by, where=dim, window=window)
    return f"(\n{some}\nor\n{every} * 0\n)\n/\n{every}"


def refusal_ratio(window: str, by: str = KEY) -> str:
    return label_share("refusal", "full_refusal|partial_refusal", window, by)


def poor_ratio(window: str) -> str:
    return label_share("quality", "poor", window)
