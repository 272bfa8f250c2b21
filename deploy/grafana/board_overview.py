"""The evalstream / Overview dashboard, as plain data (see ``spec``)."""

from __future__ import annotations

from spec import KEY, KEY_LEGEND, RATE, SEL, DashboardSpec, RowSpec, poor_ratio, refusal_ratio, stat, t, ts

__all__ = ["OVERVIEW"]

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
