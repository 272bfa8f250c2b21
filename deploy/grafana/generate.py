"""Generate evalstream's Grafana dashboards (JSON) from the definitions beside this file.

Run from anywhere: ``python deploy/grafana/generate.py`` writes ``deploy/grafana/dashboards/*.json``
(``--out DIR`` writes elsewhere, which is how ``tests/test_dashboards.py`` checks that the committed
JSON is fresh). The dashboards are built with grafana-foundation-sdk (a dev dependency, like
grpcio-tools for the protobuf stubs); the JSON is committed so that Grafana, its provisioning and the
Helm chart need nothing but the files.

Every query names only series that ``docs/metrics.md`` lists (the exporter's, the judge servers', the
recording rules of ``deploy/prometheus/rules/``) or Prometheus's own ``ALERTS`` and ``up``. Queries
use the template variables ``$model`` and ``$route`` (regex matchers; "All" is ``.*``) and Grafana's
``$__rate_interval`` and ``$__range``. ``tests/test_dashboards.py`` runs every one of them against a
real Prometheus that scraped a real replay.

The definitions are plain data (``DashboardSpec`` > ``RowSpec`` > ``PanelSpec`` > ``Target``, in
``spec``), one module per dashboard (``board_overview``, ``board_cascade``, ``board_judge_trust``,
``board_pipeline``); only ``build``, here, knows the SDK.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from board_cascade import CASCADE
from board_judge_trust import JUDGE_TRUST
from board_overview import OVERVIEW
from board_pipeline import PIPELINE
from spec import DASHBOARDS_DIR, DATASOURCE_VAR, DashboardSpec, Kind

DASHBOARDS: Final[tuple[DashboardSpec, ...]] = (OVERVIEW, CASCADE, JUDGE_TRUST, PIPELINE)


# --- building the JSON -----------------------------------------------------------------------------


def build(spec: DashboardSpec) -> dict[str, Any]:
    """The Grafana dashboard JSON model of ``spec``."""
    from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common as common_models
    from grafana_foundation_sdk.models import dashboard as models

    datasource = models.DataSourceRef(type_val="prometheus", uid=f"${{{DATASOURCE_VAR}}}")
    everything = models.VariableOption(text="All", value="$__all", selected=True)
    board = (
        dashboard.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(["evalstream"])
        .editable()
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .with_variable(dashboard.DatasourceVariable(DATASOURCE_VAR).label("Prometheus").type("prometheus"))
        .with_variable(
            dashboard.QueryVariable("model")
            .label("Model")
            .datasource(datasource)
            .query("label_values(evalstream_events_total, model)")
            .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(models.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(everything)
        )
        .with_variable(
            dashboard.QueryVariable("route")
            .label("Route")
            .datasource(datasource)
            .query('label_values(evalstream_events_total{model=~"$model"}, route)')
            .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(models.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(everything)
        )
        .link(
            dashboard.DashboardLink("evalstream")
            .type(models.DashboardLinkType.DASHBOARDS)
            .tags(["evalstream"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )
    panel_id = 0
    for row in spec.rows:
        panel_id += 1
        board = board.with_row(dashboard.Row(row.title).id(panel_id))
        for panel in row.panels:
            panel_id += 1
            builder: timeseries.Panel | stat.Panel
            if panel.kind is Kind.STAT:
                builder = (
                    stat.Panel()
                    .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
                    .graph_mode(common_models.BigValueGraphMode.AREA)
                    .color_mode(common_models.BigValueColorMode.VALUE)
                )
            else:
                builder = (
                    timeseries.Panel()
                    .legend(
                        common.VizLegendOptions()
                        .display_mode(common_models.LegendDisplayMode.LIST)
                        .placement(common_models.LegendPlacement.BOTTOM)
                        .show_legend(True)
                    )
                    .tooltip(common.VizTooltipOptions().mode(common_models.TooltipDisplayMode.MULTI))
                )
            builder = (
                builder.id(panel_id)
                .title(panel.title)
                .description(panel.description)
                .datasource(datasource)
                .unit(panel.unit)
                .height(panel.height)
                .span(panel.width)
            )
            if panel.min is not None:
                builder = builder.min(panel.min)
            if panel.max is not None:
                builder = builder.max(panel.max)
            for ref, target in zip("ABCDEFGH", panel.targets, strict=False):
                query = prometheus.Dataquery().ref_id(ref).expr(target.expr).datasource(datasource)
                if target.legend:
                    query = query.legend_format(target.legend)
                if panel.kind is Kind.STAT:
                    query = query.instant()
                builder = builder.with_target(query)
            board = board.with_panel(builder)
    encoded: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return encoded


def render(spec: DashboardSpec) -> str:
    """``build(spec)`` as the committed file's text: sorted keys, two-space indent, final newline."""
    return json.dumps(build(spec), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_all(out: Path, specs: Sequence[DashboardSpec] = DASHBOARDS) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in specs:
        path = out / f"{spec.uid}.json"
        path.write_text(render(spec))
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=DASHBOARDS_DIR, help="output dir (default: dashboards/)")
    args = parser.parse_args(argv)
    written = write_all(args.out)
    sys.stdout.write(f"wrote {len(written)} dashboards into {args.out}\n")


if __name__ == "__main__":
    main()
