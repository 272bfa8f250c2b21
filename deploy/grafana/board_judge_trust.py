"""The evalstream / Judge trust dashboard, as plain data (see ``spec``)."""

from __future__ import annotations

from spec import RATE, SEL, DashboardSpec, RowSpec, stat, t, total, ts

__all__ = ["JUDGE_TRUST"]

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
            title="The cascade's guarantee on production traffic",
            panels=(
                ts(
                    "Promised vs shown agreement with humans",
                    "What the cascade config promises for accepted verdicts (1 - alpha) and the exact "
                    "lower bound (confidence 1 - delta) of the agreement labelled production verdicts "
                    "show. Below the promise on enough labels: EvalstreamGuaranteeNotHeld, recalibrate.",
                    t("evalstream_guarantee_target", "{{dimension}} promised (1 - alpha)"),
                    t("evalstream_guarantee_agreement_lower_bound", "{{dimension}} shown (lower bound)"),
                    unit="percentunit",
                    min=0,
                    max=1,
                ),
                ts(
                    "Tiers: live accuracy vs calibrated",
                    "Each tier's accuracy against human labels now, beside what it reached on its "
                    "calibration split. Confidently below: EvalstreamJudgeTierAgreementDrift.",
                    t(
                        'evalstream_judge_agreement_accuracy{tier!="all"}',
                        "{{dimension}} tier {{tier}} live",
                    ),
                    t(
                        "evalstream_guarantee_tier_calibrated_agreement",
                        "{{dimension}} tier {{tier}} calibrated",
                    ),
                    unit="percentunit",
                    min=0,
                    max=1,
                ),
                ts(
                    "Verdicts per minute by cascade version",
                    "Which cascade config judged the traffic (Verdict.cascade_version): a live reload "
                    "shows as one version handing over to the next; the guarantee's lower bound is "
                    "computed on the newest version's labelled verdicts only.",
                    t(
                        "sum by (cascade_version) (rate(evalstream_cascade_verdicts_total[5m])) * 60",
                        "{{cascade_version}}",
                    ),
                    t(
                        "evalstream_guarantee_window_pairs",
                        "{{dimension}}: labelled verdicts of the newest version (guarantee window)",
                    ),
                    min=0,
                ),
                stat(
                    "Dimensions without human calibration",
                    "Dimensions whose cascade thresholds were not fitted on human labels (e.g. format "
                    "under the default cascade): their confidences promise nothing. Listed by "
                    "evalstream_guarantee_calibrated == 0.",
                    "count(evalstream_guarantee_calibrated == 0) or vector(0)",
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
