"""Generate evalstream's Grafana dashboards (JSON) from the definitions in this file.

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

The definitions are plain data (``DashboardSpec`` > ``RowSpec`` > ``PanelSpec`` > ``Target``); only
``build`` knows the SDK.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
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


# --- the dashboards --------------------------------------------------------------------------------

OVERVIEW = DashboardSpec(
    uid="evalstream-overview",
    title="evalstream / Overview",
    description="Quality and refusals of the deployed models, as judged from sampled production traffic.",
    rows=(
        RowSpec(
            title="Traffic",
            panels=(
                stat(
                    "Events in",
                    "Events entering the pipeline per second.",
                    f"sum(rate(evalstream_events_total{{{SEL}}}[{RATE}]))",
                    unit="reqps",
                ),
                stat(
                    "Verdicts",
                    "Judged events per second.",
                    f"sum(rate(evalstream_verdicts_total{{{SEL}}}[{RATE}]))",
                    unit="reqps",
                ),
                stat(
                    "Refusal rate, last hour",
                    "Full or partial refusals among refusal verdicts over the last hour (selected models).",
                    refusal_ratio("1h", by=""),
                    unit="percentunit",
                ),
                stat(
                    "Alerts firing",
                    "evalstream alerts firing now (Prometheus's ALERTS series); Alertmanager has details.",
                    'count(ALERTS{alertstate="firing", alertname=~"Evalstream.*"}) or vector(0)',
                ),
            ),
        ),
        RowSpec(
            title="Refusals",
            panels=(
                ts(
                    "Refusal rate by model",
                    "Full or partial refusals among refusal verdicts.",
                    t(refusal_ratio(RATE), KEY_LEGEND),
                    unit="percentunit",
                    min=0,
                    max=1,
                ),
                ts(
                    "Refusal rate: last hour vs the alert line",
                    "What EvalstreamRefusalSpike compares: the last hour against twice the trailing day "
                    "(which leaves out the last hour). The alert also needs the last hour above 5% and at "
                    "least 50 refusal verdicts.",
                    t(f"evalstream:refusal:ratio_rate1h{{{SEL}}}", f"{KEY_LEGEND} last hour"),
                    t(
                        f"2 * evalstream:refusal:ratio_rate1h_baseline1d{{{SEL}}}",
                        f"{KEY_LEGEND} alert line (2x trailing day)",
                    ),
                    unit="percentunit",
                    min=0,
                ),
                ts(
                    "Refusal verdicts by label",
                    "Refusal verdicts per second, by label (full_compliance, partial_refusal, full_refusal).",
                    t(
                        "sum by (model, label) (rate(evalstream_verdict_labels_total"
                        f'{{{SEL}, dimension="refusal"}}[{RATE}]))',
                        "{{model}} {{label}}",
                    ),
                    unit="reqps",
                ),
            ),
        ),
        RowSpec(
            title="Quality",
            panels=(
                ts(
                    "Poor-quality share vs the SLO budget",
                    "Share of quality verdicts labelled poor over two of the burn-rate windows (as "
                    "evalstream:quality_poor:ratio_rate5m and _rate1h, but 0 instead of no data when no "
                    "verdict is poor), against the budget 1 - evalstream:quality_slo:objective.",
                    t(poor_ratio("5m"), f"{KEY_LEGEND} 5m"),
                    t(poor_ratio("1h"), f"{KEY_LEGEND} 1h"),
                    t("1 - evalstream:quality_slo:objective", "budget"),
                    unit="percentunit",
                    min=0,
                ),
                ts(
                    "Error-budget burn rate, last hour",
                    "How many times faster than allowed the quality budget burns. "
                    "EvalstreamQualityBudgetBurnFast pages above 14.4 (with the 5m window above it too).",
                    t(
                        f"(\n{poor_ratio('1h')}\n)\n"
                        "/ on() group_left() (1 - evalstream:quality_slo:objective)",
                        KEY_LEGEND,
                    ),
                    min=0,
                ),
                ts(
                    "Mean quality score (1-10)",
                    "Mean of the quality scores of judged responses.",
                    t(
                        f"sum by ({KEY}) (rate(evalstream_quality_score_sum{{{SEL}}}[{RATE}]))\n"
                        f"/\nsum by ({KEY}) (rate(evalstream_quality_score_count{{{SEL}}}[{RATE}]))",
                        KEY_LEGEND,
                    ),
                    min=1,
                    max=10,
                ),
                ts(
                    "Quality verdicts by label",
                    "Quality verdicts per second, by label (good >= 7, fair 4-6, poor <= 3).",
                    t(
                        "sum by (model, label) (rate(evalstream_verdict_labels_total"
                        f'{{{SEL}, dimension="quality"}}[{RATE}]))',
                        "{{model}} {{label}}",
                    ),
                    unit="reqps",
                ),
            ),
        ),
        RowSpec(
            title="Responses",
            panels=(
                ts(
                    "Mean response length",
                    "Response characters per event entering the pipeline: a cheap signal of changed "
                    "behaviour (a new system prompt, truncation, refusals).",
                    t(
                        f"sum by ({KEY}) (rate(evalstream_response_chars_total{{{SEL}}}[{RATE}]))\n"
                        f"/\nsum by ({KEY}) (rate(evalstream_events_total{{{SEL}}}[{RATE}]))",
                        KEY_LEGEND,
                    ),
                    unit="chars",
                    min=0,
                ),
                ts(
                    "Verdicts: sampled and forced",
                    "Verdicts per second, and those forced by an always-judge rule (e.g. negative feedback).",
                    t(f"sum by (model) (rate(evalstream_verdicts_total{{{SEL}}}[{RATE}]))", "{{model}} all"),
                    t(
                        f"sum by (model) (rate(evalstream_verdicts_forced_total{{{SEL}}}[{RATE}]))",
                        "{{model}} forced",
                    ),
                    unit="reqps",
                ),
            ),
        ),
        RowSpec(
            title="Drift",
            panels=(
                ts(
                    "Drift: population stability index",
                    "PSI of the current window against the reference (trailing day or a pinned baseline), "
                    "per model, route and feature (response length, refusal rate, score per dimension, "
                    "tier-1 embedding statistics), with the line the drift alert fires above.",
                    t(
                        f"max by (model, route, feature, dimension) (evalstream_drift_psi{{{SEL}}})",
                        "{{model}} {{route}} {{feature}} {{dimension}}",
                    ),
                    t("evalstream:drift_psi:threshold", "alert line"),
                    min=0,
                ),
                ts(
                    "Drift: chi-square p-value",
                    "How likely the current window's distribution came from the reference's, on the "
                    "same bins as the PSI; small values with a large PSI mean a real shift.",
                    t(
                        f"min by (model, route, feature, dimension) (evalstream_drift_pvalue{{{SEL}}})",
                        "{{model}} {{route}} {{feature}} {{dimension}}",
                    ),
                    min=0,
                    max=1,
                ),
            ),
        ),
    ),
)

CASCADE = DashboardSpec(
    uid="evalstream-cascade",
    title="evalstream / Judge cascade",
    description="Which tier decides, how often items escalate or go to humans, and what the judges cost.",
    rows=(
        RowSpec(
            title="Coverage and escalations",
            panels=(
                ts(
                    "Decisions by deciding tier",
                    "Dimension verdicts per second, by the tier whose verdict was accepted.",
                    t(
                        total("evalstream_judge_decisions_total", by="dimension, tier"),
                        "{{dimension}} tier {{tier}}",
                    ),
                    unit="reqps",
                ),
                ts(
                    "Share decided by each tier",
                    "Coverage of each tier per dimension. The calibrated guarantee holds for the "
                    "coverage the thresholds were fitted at (the cascade config records it).",
                    t(
                        total("evalstream_judge_decisions_total", by="dimension, tier")
                        + "\n/ ignoring(tier) group_left()\n"
                        + total("evalstream_judge_decisions_total", by="dimension"),
                        "{{dimension}} tier {{tier}}",
                    ),
                    unit="percentunit",
                    min=0,
                    max=1,
                ),
                ts(
                    "Escalations per decision, 5m",
                    "Escalations to a stronger tier per dimension verdict (recording rule).",
                    t(
                        f"evalstream:judge_escalations:per_verdict_rate5m{{{MODEL_SEL}}}",
                        "{{model}} {{dimension}}",
                    ),
                    min=0,
                ),
                ts(
                    "Sent to human audit, share of decisions, 5m",
                    "No tier was sure: the item went to the audit topic (recording rule).",
                    t(f"evalstream:judge_audits:ratio_rate5m{{{MODEL_SEL}}}", "{{model}} {{dimension}}"),
                    unit="percentunit",
                    min=0,
                ),
            ),
        ),
        RowSpec(
            title="Calls and cost",
            panels=(
                ts(
                    "Judge calls by tier",
                    "Judge calls per second (every tier tried counts, accepted or not).",
                    t(total("evalstream_judge_calls_total", by="tier"), "tier {{tier}}"),
                    unit="reqps",
                ),
                ts(
                    "Judge calls per 1,000 sampled events, by tier",
                    "The cost target: strong-judge calls should be at least 70% below one per "
                    "dimension per sampled event.",
                    t(
                        f"1000 * sum by (tier) (rate(evalstream_judge_calls_total{{{SEL}}}[{RATE}]))\n"
                        "/ on() group_left()\n"
                        f"sum(rate(evalstream_events_sampled_total{{{SEL}}}[{RATE}]))",
                        "tier {{tier}}",
                    ),
                    min=0,
                ),
                ts(
                    "Judge spend per hour by tier",
                    "US dollars per hour (recording rule, all models).",
                    t("evalstream:judge_cost_usd:rate1h", "tier {{tier}}"),
                    unit="currencyUSD",
                    min=0,
                ),
                ts(
                    "Judge spend per 1,000 verdicts",
                    "US dollars per 1,000 verdicts, by tier.",
                    t(
                        f"1000 * sum by (tier) (rate(evalstream_judge_cost_usd_total{{{SEL}}}[{RATE}]))\n"
                        "/ on() group_left()\n"
                        f"sum(rate(evalstream_verdicts_total{{{SEL}}}[{RATE}]))",
                        "tier {{tier}}",
                    ),
                    unit="currencyUSD",
                    min=0,
                ),
                ts(
                    "Judge tokens by tier",
                    "Judge input and output tokens per second.",
                    t(
                        f"sum by (tier) (rate(evalstream_judge_input_tokens_total{{{SEL}}}[{RATE}]))",
                        "tier {{tier}} input",
                    ),
                    t(
                        f"sum by (tier) (rate(evalstream_judge_output_tokens_total{{{SEL}}}[{RATE}]))",
                        "tier {{tier}} output",
                    ),
                    min=0,
                ),
            ),
        ),
    ),
)

JUDGE_TRUST = DashboardSpec(
    uid="evalstream-judge-trust",
    title="evalstream / Judge trust",
    description="Can the verdicts be trusted: the human-audit queue, the cascade's coverage, the labels.",
    rows=(
        RowSpec(
            title="Agreement with humans",
            panels=(
                ts(
                    "Cohen's kappa vs human labels (95% CI)",
                    "Kappa of the deciding tier's labels against the truth annotator's, on the last "
                    "window of verdicts joined to human labels (evalstream label), per dimension and "
                    'tier (tier="all": the cascade), with the objective the agreement alert uses.',
                    t(
                        "max by (dimension, tier) (evalstream_judge_agreement_kappa)",
                        "{{dimension}} tier {{tier}}",
                    ),
                    t(
                        "max by (dimension, tier) (evalstream_judge_agreement_kappa_ci_lower)",
                        "{{dimension}} tier {{tier}} lower",
                    ),
                    t(
                        "max by (dimension, tier) (evalstream_judge_agreement_kappa_ci_upper)",
                        "{{dimension}} tier {{tier}} upper",
                    ),
                    t("evalstream:judge_kappa:objective", "objective"),
                ),
                ts(
                    "Accuracy vs human labels (95% CI)",
                    "Share of joined verdicts whose label equals the human's, with its Wilson interval.",
                    t(
                        "max by (dimension, tier) (evalstream_judge_agreement_accuracy)",
                        "{{dimension}} tier {{tier}}",
                    ),
                    t(
                        "max by (dimension, tier) (evalstream_judge_agreement_accuracy_ci_lower)",
                        "{{dimension}} tier {{tier}} lower",
                    ),
                    t(
                        "max by (dimension, tier) (evalstream_judge_agreement_accuracy_ci_upper)",
                        "{{dimension}} tier {{tier}} upper",
                    ),
                    unit="percentunit",
                    min=0,
                    max=1,
                ),
            ),
        ),
        RowSpec(
            title="Human audit queue",
            panels=(
                stat(
                    "Sent to human audit",
                    "Items no tier was sure of, in the selected time range.",
                    f"sum(increase(evalstream_judge_audits_total{{{SEL}}}[$__range]))",
                ),
                stat(
                    "Audited share",
                    "Share of dimension verdicts sent to human audit, in the selected time range.",
                    f"sum(increase(evalstream_judge_audits_total{{{SEL}}}[$__range]))\n"
                    f"/\nsum(increase(evalstream_judge_decisions_total{{{SEL}}}[$__range]))",
                    unit="percentunit",
                ),
                ts(
                    "Sent to human audit per hour",
                    "Items a human should label, per model and dimension, over the last hour.",
                    t(
                        f"sum by (model, dimension) (increase(evalstream_judge_audits_total{{{SEL}}}[1h]))",
                        "{{model}} {{dimension}}",
                    ),
                    min=0,
                ),
            ),
        ),
        RowSpec(
            title="Coverage of the calibrated cascade",
            panels=(
                ts(
                    "Accepted without human audit",
                    "Share of dimension verdicts some tier was confident enough to decide; the "
                    "calibration's agreement guarantee is for this coverage.",
                    t(
                        "1 - (\n"
                        + total("evalstream_judge_audits_total", by="model, dimension")
                        + "\n/\n"
                        + total("evalstream_judge_decisions_total", by="model, dimension")
                        + "\n)",
                        "{{model}} {{dimension}}",
                    ),
                    unit="percentunit",
                    min=0,
                    max=1,
                ),
                ts(
                    "Escalations per decision",
                    "Escalations to a stronger tier per dimension verdict; a jump means the cheap tiers "
                    "became unsure of this traffic.",
                    t(
                        total("evalstream_judge_escalations_total", by="model, dimension")
                        + "\n/\n"
                        + total("evalstream_judge_decisions_total", by="model, dimension"),
                        "{{model}} {{dimension}}",
                    ),
                    min=0,
                ),
            ),
        ),
        RowSpec(
            title="What the judges say",
            panels=(
                ts(
                    "Verdict labels by dimension",
                    "Share of each label within its dimension: a shift without a deploy of the model "
                    "points at the judges.",
                    t(
                        total("evalstream_verdict_labels_total", by="dimension, label")
                        + "\n/ ignoring(label) group_left()\n"
                        + total("evalstream_verdict_labels_total", by="dimension"),
                        "{{dimension}} {{label}}",
                    ),
                    unit="percentunit",
                    min=0,
                    max=1,
                ),
                ts(
                    "Items the judge servers could not judge",
                    "Items per second a judge server answered with an error outcome, by judge.",
                    t(
                        f'sum by (judge) (rate(evalstream_judge_items_total{{outcome="error"}}[{RATE}]))',
                        "{{judge}}",
                    ),
                    unit="reqps",
                    min=0,
                ),
            ),
        ),
    ),
)

PIPELINE = DashboardSpec(
    uid="evalstream-pipeline",
    title="evalstream / Pipeline health",
    description="Is evaluation itself healthy: throughput, accounting, dead letters, lag, judges, exporter.",
    rows=(
        RowSpec(
            title="Throughput and accounting",
            panels=(
                ts(
                    "Events: in, unsampled, judged, dead-lettered",
                    "Events per second by outcome. Every event ends in exactly one of the last three.",
                    t(f"sum(rate(evalstream_events_total{{{SEL}}}[{RATE}]))", "in"),
                    t(f"sum(rate(evalstream_events_unsampled_total{{{SEL}}}[{RATE}]))", "unsampled"),
                    t(f"sum(rate(evalstream_events_judged_total{{{SEL}}}[{RATE}]))", "judged"),
                    t(f"sum(rate(evalstream_events_dead_lettered_total{{{SEL}}}[{RATE}]))", "dead-lettered"),
                    unit="reqps",
                ),
                ts(
                    "Accounting balance (must stay 0)",
                    "Events in - unsampled - judged - dead-lettered, and verdicts - judged, per key. "
                    "Anything but 0 for 5 minutes raises EvalstreamAccountingImbalance.",
                    t(f"evalstream:accounting:imbalance{{{SEL}}}", f"{KEY_LEGEND} in - out"),
                    t(
                        f"evalstream:accounting:verdicts_minus_judged{{{SEL}}}",
                        f"{KEY_LEGEND} verdicts - judged",
                    ),
                ),
            ),
        ),
        RowSpec(
            title="Pipeline process",
            panels=(
                ts(
                    "Micro-batches, write retries, broker lost state",
                    "From the pipeline's own /metrics (--metrics-port): batches committed per second, "
                    "batches whose write or commit failed and were read again, and times the broker was "
                    "found to have lost commits or records (a crash). Alert: "
                    "EvalstreamPipelineBrokerLostState.",
                    t(f"sum(rate(evalstream_pipeline_batches_total[{RATE}]))", "batches/s"),
                    t(f"sum(rate(evalstream_pipeline_write_retries_total[{RATE}]))", "write retries/s"),
                    t(
                        f"sum by (kind) (rate(evalstream_pipeline_broker_lost_state_total[{RATE}]))",
                        "broker lost {{kind}}/s",
                    ),
                    min=0,
                ),
                ts(
                    "Micro-batch duration, p95",
                    "Time per micro-batch, judging and commit included (the pipeline's /metrics).",
                    t(
                        "histogram_quantile(0.95, sum by (le) "
                        f"(rate(evalstream_pipeline_batch_duration_seconds_bucket[{RATE}])))",
                        "p95",
                    ),
                    unit="s",
                    min=0,
                ),
                ts(
                    "Judge tier circuits (pipeline side)",
                    "1 while the pipeline's breaker for a judge tier is not closed (its calls fail fast, "
                    "items escalate or are dead-lettered as judge_unavailable), and calls it refused per "
                    "second.",
                    t(
                        'max by (tier) (evalstream_pipeline_judge_circuit_state{state!="closed"})',
                        "tier {{tier}} not closed",
                    ),
                    t(
                        f"sum by (tier) (rate(evalstream_pipeline_judge_circuit_rejected_total[{RATE}]))",
                        "tier {{tier}} refused/s",
                    ),
                    min=0,
                ),
            ),
        ),
        RowSpec(
            title="Dead letters",
            panels=(
                ts(
                    "Dead letters by reason",
                    "Dead-lettered events per second by reason; the dead-letter topic holds the raw records.",
                    t(
                        f"sum by (reason) (rate(evalstream_events_dead_lettered_total{{{SEL}}}[{RATE}]))",
                        "{{reason}}",
                    ),
                    unit="reqps",
                ),
                ts(
                    "Dead-letter share of incoming events, 5m",
                    "All models (decode failures have none). EvalstreamDeadLetterRateHigh above 5%.",
                    t("evalstream:dead_letters:ratio_rate5m", "dead-lettered"),
                    unit="percentunit",
                    min=0,
                ),
                ts(
                    "Judge-stage failures, share of sampled events",
                    "Sampled events dead-lettered by the judge stage (unavailable, deadline, rejected); "
                    "0 when none. EvalstreamJudgeFailures above 2% over 5m.",
                    t(
                        "(\n"
                        + total(
                            "evalstream_events_dead_lettered_total", by="model", where='reason=~"judge_.*"'
                        )
                        + "\nor\n"
                        + total("evalstream_events_sampled_total", by="model")
                        + " * 0\n)\n/\n"
                        + total("evalstream_events_sampled_total", by="model"),
                        "{{model}}",
                    ),
                    unit="percentunit",
                    min=0,
                ),
            ),
        ),
        RowSpec(
            title="Lag",
            panels=(
                ts(
                    "Pipeline input backlog",
                    "Records on the input topic the pipeline's consumer group has not read yet.",
                    t("max(evalstream_pipeline_input_lag_records)", "records waiting"),
                    min=0,
                ),
                ts(
                    "Event-to-verdict lag",
                    "From the event's time to its verdict. EvalstreamPipelineLagging when p95 over 5m "
                    "stays above 60 s.",
                    t(
                        "histogram_quantile(0.5, sum by (le) (rate(evalstream_verdict_lag_seconds_bucket"
                        f"[{RATE}])))",
                        "p50",
                    ),
                    t(
                        "histogram_quantile(0.95, sum by (le) (rate(evalstream_verdict_lag_seconds_bucket"
                        f"[{RATE}])))",
                        "p95",
                    ),
                    t("evalstream:verdict_lag_seconds:p95_5m", "p95 over 5m (alert input)"),
                    unit="s",
                    min=0,
                ),
                ts(
                    "Exporter consumer lag",
                    "Records on the verdicts and summaries topics the exporter has not applied yet.",
                    t("sum by (stream) (evalstream_exporter_consumer_lag_records)", "{{stream}}"),
                    min=0,
                ),
                ts(
                    "Time since the last summary",
                    "Seconds since the newest summary the exporter read. With input waiting, over 120 s "
                    "raises EvalstreamPipelineStalled.",
                    t(
                        'time() - max(evalstream_exporter_last_record_timestamp_seconds{stream="summaries"})',
                        "seconds",
                    ),
                    unit="s",
                    min=0,
                ),
            ),
        ),
        RowSpec(
            title="Judges",
            panels=(
                ts(
                    "Judge latency per dimension verdict, p95",
                    "Judge time per dimension verdict, by deciding tier (from the verdicts' cost).",
                    t(
                        "histogram_quantile(0.95, "
                        + total("evalstream_judge_latency_seconds_bucket", by="le, tier", sel="")
                        + ")",
                        "tier {{tier}}",
                    ),
                    unit="s",
                    min=0,
                ),
                ts(
                    "Judge server RPC latency, p95",
                    "Time to answer a Judge RPC, measured by each judge server.",
                    t(
                        "histogram_quantile(0.95, sum by (le, judge) "
                        f"(rate(evalstream_judge_request_duration_seconds_bucket[{RATE}])))",
                        "{{judge}}",
                    ),
                    unit="s",
                    min=0,
                ),
                ts(
                    "Judge server RPCs",
                    "Judge RPCs per second received by each judge server, and those in flight now.",
                    t(f"sum by (judge) (rate(evalstream_judge_requests_total[{RATE}]))", "{{judge}} RPCs/s"),
                    t("sum by (judge) (evalstream_judge_requests_in_flight)", "{{judge}} in flight"),
                    min=0,
                ),
                ts(
                    "Judge server errors by code",
                    "Judge RPCs that failed, by gRPC status: RESOURCE_EXHAUSTED means add capacity, "
                    "INTERNAL is a judge bug. EvalstreamJudgeServerErrors above 5%.",
                    t(total("evalstream_judge_errors_total", by="judge, code", sel=""), "{{judge}} {{code}}"),
                    unit="reqps",
                    min=0,
                ),
                ts(
                    "LLM endpoint circuits",
                    "Each LLM judge's circuit breaker per endpoint: 1 while not closed (open, or half-open "
                    "probing), and calls refused by an open circuit per second. Items refused end as "
                    "circuit_open dead letters. EvalstreamJudgeCircuitOpen after 5 minutes not closed.",
                    t(
                        'max by (judge, endpoint) (evalstream_judge_circuit_state{state!="closed"})',
                        "{{judge}} {{endpoint}} not closed",
                    ),
                    t(
                        f"sum by (judge, endpoint) (rate(evalstream_judge_circuit_rejected_total[{RATE}]))",
                        "{{judge}} {{endpoint}} refused/s",
                    ),
                    min=0,
                ),
            ),
        ),
        RowSpec(
            title="Exporter",
            panels=(
                stat(
                    "Exporter up",
                    "1 when Prometheus scrapes the exporter; EvalstreamExporterDown after 2 minutes at 0.",
                    'min(up{job="evalstream-exporter"})',
                ),
                stat(
                    "Series served",
                    "Series on the exporter's /metrics (the label budget keeps it bounded).",
                    "sum(evalstream_exporter_series)",
                ),
                ts(
                    "Exporter records by stream and outcome",
                    "Records per second applied, ignored or undecodable, per input stream.",
                    t(
                        f"sum by (stream, outcome) (rate(evalstream_exporter_records_total[{RATE}]))",
                        "{{stream}} {{outcome}}",
                    ),
                    unit="reqps",
                ),
                ts(
                    "Label values folded into 'other'",
                    "New label values beyond the exporter's label budget, by label name. "
                    "EvalstreamLabelBudgetExhausted when any fold for 10 minutes.",
                    t(
                        "sum by (label_name) (increase(evalstream_exporter_label_values_folded_total"
                        f"[{RATE}]))",
                        "{{label_name}}",
                    ),
                    min=0,
                ),
            ),
        ),
    ),
)

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
