"""The evalstream / Pipeline health dashboard, as plain data (see ``spec``)."""

from __future__ import annotations

from spec import KEY_LEGEND, RATE, SEL, DashboardSpec, RowSpec, stat, t, total, ts

__all__ = ["PIPELINE"]

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
                    "Micro-batches and write retries",
                    "From the pipeline's own /metrics (--metrics-port): batches committed per second, and "
                    "batches whose write or commit failed and were read again.",
                    t(f"sum(rate(evalstream_pipeline_batches_total[{RATE}]))", "batches/s"),
                    t(f"sum(rate(evalstream_pipeline_write_retries_total[{RATE}]))", "write retries/s"),
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
