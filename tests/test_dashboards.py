"""The Grafana dashboards: the committed JSON is what the generator writes, and every panel's query
runs on a real Prometheus that scraped a real replay (broker, judges, pipeline and exporter processes).

Grafana is in no reachable registry, so the dashboards are checked the way Grafana would use them:
template variables are substituted as Grafana substitutes them and each query goes to Prometheus's
HTTP API. A query error fails; so does an empty result, except for the targets in ``MAY_BE_EMPTY``.
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import re
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from evalstream.exporter.core import SPECS
from evalstream.local.broker import EmbeddedBroker
from evalstream.local.prometheus import PrometheusError, PrometheusServer, rule_files
from evalstream.local.supervisor import ChildProcess
from evalstream.runtime.procs import wait_until
from evalstream.runtime.settings import KafkaSettings
from evalstream.tools.replay import ReplayOptions, run_replay

from .exported import exported_names
from .observed_stack import start_observed_stack

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

#: Targets that may return no series in the test run, and why: (dashboard uid, panel title, refId).
MAY_BE_EMPTY: dict[tuple[str, str, str], str] = {
    ("evalstream-overview", "Refusal rate: last hour vs the alert line", "B"): (
        "the trailing-day baseline is avg_over_time(...[1d] offset 1h): no value until the data is an hour "
        "old (tests/test_alerts_e2e.py runs the same rules with scaled windows and sees it)"
    ),
    ("evalstream-pipeline", "Judge server errors by code", "A"): (
        "a healthy run fails no Judge RPC, and the errors counter has a series only from the first error"
    ),
    **{
        ("evalstream-pipeline", "LLM endpoint circuits", ref): (
            "the observed stack runs tiers 0 and 1, no LLM judge; tests/test_faults.py reads these series "
            "on the LLM judge's /metrics through a 5xx burst"
        )
        for ref in "AB"
    },
    ("evalstream-pipeline", "Label values folded into 'other'", "A"): (
        "no label exceeds its budget here, and the folded counter has a series only from the first fold"
    ),
    **{
        ("evalstream-overview", title, ref): (
            "drift needs a reference window (the trailing day by default) before it has a value; "
            "tests/test_labels_e2e.py checks these gauges on a real mistralinstruct -> llama2orig shift"
        )
        for title, refs in (
            ("Drift: population stability index", "A"),
            ("Drift: chi-square p-value", "A"),
        )
        for ref in refs
    },
    **{
        ("evalstream-judge-trust", title, ref): (
            "agreement needs human labels on evalstream.labels, which this run does not publish; "
            "tests/test_labels_e2e.py publishes XSTest's and checks these gauges against Kafka"
        )
        for title in ("Cohen's kappa vs human labels (95% CI)", "Accuracy vs human labels (95% CI)")
        for ref in "ABC"
    },
    **{
        ("evalstream-judge-trust", title, ref): (
            "the guarantee needs a calibrated cascade config (alpha, calibrated agreements) and human "
            "labels; this run's cascade is hand-set and publishes no labels. tests/test_agreement.py "
            "checks these series, deploy/prometheus/tests/guarantee.yml the alerts on them"
        )
        for title, refs in (
            ("Promised vs shown agreement with humans", "AB"),
            ("Tiers: live accuracy vs calibrated", "AB"),
            ("Verdicts per minute by cascade version", "B"),
        )
        for ref in refs
    },
}

#: What Grafana puts in for its own variables in this test: ``$__rate_interval`` is what it computes
#: for the default 15 s scrape interval (4 x 15 s); ``$__range`` is the dashboards' default range.
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__range": "6h", "__interval": "15s"}
REPLAYED_MODELS = ("mistralinstruct", "llama2orig", "gpt4")


def load(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text())
    return board


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' collapsed panels included, rows themselves excluded."""
    out = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels") or [])
        else:
            out.append(panel)
    return out


def targets() -> list[tuple[str, str, str, str]]:
    """(dashboard uid, panel title, refId, expr) of every query in every dashboard."""
    return [
        (board["uid"], panel["title"], target["refId"], target["expr"])
        for board in map(load, DASHBOARDS)
        for panel in panels(board)
        for target in panel["targets"]
    ]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's ``$name`` and ``${name}`` substitution; an unknown variable is an error."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"query uses ${name}, which the test does not know: {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


# --- the JSON ------------------------------------------------------------------------------------


def test_generated_dashboards_are_fresh(tmp_path: Path) -> None:
    generate = [sys.executable, str(GRAFANA / "generate.py"), "--out", str(tmp_path)]
    subprocess.run(generate, check=True, capture_output=True)
    fresh = sorted(p.name for p in tmp_path.glob("*.json"))
    assert fresh == sorted(p.name for p in DASHBOARDS), "dashboards added or removed: run the generator"
    committed = GRAFANA / "dashboards"
    stale = [name for name in fresh if not filecmp.cmp(tmp_path / name, committed / name, shallow=False)]
    assert stale == [], f"stale dashboards {stale}: run `python deploy/grafana/generate.py` and commit"


def test_dashboards_are_well_formed() -> None:
    assert {load(p)["uid"] for p in DASHBOARDS} == {
        "evalstream-overview",
        "evalstream-cascade",
        "evalstream-judge-trust",
        "evalstream-pipeline",
    }
    for path in DASHBOARDS:
        board = load(path)
        assert path.name == f"{board['uid']}.json"
        ids = [p["id"] for p in board["panels"]]
        ids += [p["id"] for row in board["panels"] if row["type"] == "row" for p in row.get("panels") or []]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        variables = {v["name"] for v in board["templating"]["list"]}
        assert variables == {"datasource", "model", "route"}
        for panel in panels(board):
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["description"], f"{panel['title']} has no description"
            assert panel["targets"], f"{panel['title']} has no query"
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs))
            for target in panel["targets"]:
                used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
                assert used <= variables | set(GRAFANA_VARIABLES), (panel["title"], used)


def test_queries_name_only_series_that_exist() -> None:
    """Every evalstream series a panel reads is exported by the exporter or a judge server, or made by
    a recording rule; every exporter series a panel reads is documented in docs/metrics.md."""
    exported = exported_names()
    recorded = {m for path in rule_files() for m in re.findall(r"record:\s*(\S+)", path.read_text())}
    documented = set(re.findall(r"`(evalstream_\w+)", (ROOT / "docs" / "metrics.md").read_text()))
    unknown, undocumented = set(), set()
    for uid, title, ref, expr in targets():
        for name in re.findall(r"\b(evalstream[\w:]+)", expr):
            if name not in recorded and name not in exported:
                unknown.add((uid, title, ref, name))
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name in {s.name for s in SPECS} | {f"{s.name}_bucket" for s in SPECS} and not (
                {name, base} & documented
            ):
                undocumented.add((uid, title, ref, name))
    assert unknown == set()
    assert undocumented == set()


def test_allow_list_names_real_targets() -> None:
    known = {(uid, title, ref) for uid, title, ref, _ in targets()}
    assert set(MAY_BE_EMPTY) <= known, set(MAY_BE_EMPTY) - known


def test_provisioning_points_at_the_dashboards() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "evalstream.yaml").read_text())
    assert [d["type"] for d in datasources["datasources"]] == ["prometheus"]
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "evalstream.yaml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/evalstream"


# --- every query against a real Prometheus --------------------------------------------------------


def run_queries(prom: PrometheusServer, values: dict[str, str]) -> tuple[dict, dict]:
    """Every target with ``values`` substituted: (errors, series count) keyed by target."""
    errors: dict[tuple[str, str, str], str] = {}
    counts: dict[tuple[str, str, str], int] = {}
    for uid, title, ref, expr in targets():
        query = substitute(expr, values)
        try:
            counts[(uid, title, ref)] = len(prom.query(query))
        except PrometheusError as exc:
            errors[(uid, title, ref)] = f"{query}\n  -> {exc}"
    return errors, counts


def variable_values(prom: PrometheusServer, board: dict[str, Any], values: dict[str, str]) -> dict[str, list]:
    """Each query variable's options, as Grafana gets them for ``label_values(selector, label)``."""
    found = {}
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"])
        assert match, variable["query"]
        selector, label = substitute(match.group(1), values), match.group(2)
        found[variable["name"]] = prom.api(f"label/{label}/values", **{"match[]": selector})
    return found


@pytest.mark.slow
@pytest.mark.broker
def test_every_panel_query_on_a_real_prometheus(
    broker: EmbeddedBroker,
    unique: str,
    tmp_path: Path,
    encoder_artefact: Path,
    children: list[ChildProcess],
) -> None:
    with ExitStack() as exits:
        stack = start_observed_stack(
            bootstrap=broker.bootstrap,
            unique=unique,
            log_dir=tmp_path,
            encoder_artefact=encoder_artefact,
            children=children,
            exits=exits,
        )
        prom = stack.prometheus
        report = run_replay(
            ReplayOptions(
                topic=stack.topics.events, models=REPLAYED_MODELS, limit=240, rate=8.0, malformed=0.05, seed=7
            ),
            KafkaSettings(bootstrap=broker.bootstrap),
            show_progress=False,
        )
        assert report.total_sent == 240 and report.expected_dead_letters > 0

        def everything_counted() -> bool:
            return (prom.value("sum(evalstream_events_total)") or 0) >= report.total_sent

        wait_until(everything_counted, timeout=120, what="Prometheus to see every replayed event")

        all_values = {"model": ".*", "route": ".*", **GRAFANA_VARIABLES}
        outcome: dict[str, Any] = {}

        def all_present() -> bool:
            """Every target that must have data has it (recording rules lag a cycle or two)."""
            outcome["errors"], outcome["counts"] = run_queries(prom, all_values)
            return not outcome["errors"] and all(
                n > 0 for key, n in outcome["counts"].items() if key not in MAY_BE_EMPTY
            )

        with contextlib.suppress(TimeoutError):  # the assertions below say which, if any
            wait_until(all_present, timeout=30, interval=1.0, what="every panel to have data")
        assert outcome["errors"] == {}, "\n".join(f"{k}: {v}" for k, v in outcome["errors"].items())
        empty = sorted(k for k, n in outcome["counts"].items() if n == 0 and k not in MAY_BE_EMPTY)
        assert empty == [], f"panels with no data although the replay must give them some: {empty}"

        # A multi-value selection, as Grafana renders it for Prometheus: a regex alternation.
        picked = {"model": "(mistralinstruct|llama2orig)", "route": "(default)", **GRAFANA_VARIABLES}
        errors, counts = run_queries(prom, picked)
        assert errors == {}
        assert counts[("evalstream-overview", "Refusal rate by model", "A")] == 2

        # The template variables list what was replayed.
        for path in DASHBOARDS:
            options = variable_values(prom, load(path), all_values)
            assert set(REPLAYED_MODELS) <= set(options["model"]), options
            assert "default" in options["route"], options
