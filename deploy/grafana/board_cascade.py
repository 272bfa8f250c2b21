"""The evalstream / Judge cascade dashboard, as plain data (see ``spec``)."""

from __future__ import annotations

from spec import MODEL_SEL, RATE, SEL, DashboardSpec, RowSpec, t, total, ts

__all__ = ["CASCADE"]

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
