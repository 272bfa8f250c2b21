"""The observed stack for the dashboard and alert tests: real processes from the judges to Alertmanager.

Broker topics (unique), tier-0 rules and tier-1 encoder judge servers, the pipeline with a given
cascade, the exporter (probing the pipeline's lag), Alertmanager, and a Prometheus that scrapes the
exporter and the judge servers' own /metrics and sends alerts to Alertmanager. Every process is
registered in the ``children`` list (or the ``ExitStack``) before it starts, so it is stopped at
teardown whether the test passed or not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from evalstream.local import servers
from evalstream.local.alertmanager import AlertmanagerServer
from evalstream.local.prometheus import PrometheusServer, rule_files
from evalstream.local.supervisor import ChildProcess
from evalstream.runtime.procs import wait_until
from evalstream.runtime.ready import METRICS_READY
from evalstream.wire.cascade_config import CascadeConfig, DimensionCascade, TierRule

from .real_parts import Topics, judge_server, pipeline, start

#: The cascade both tests run: refusal is tried on the rules first and escalates to the encoder when
#: the rules are unsure; quality is the encoder's alone and goes to human audit below 0.6 confidence.
#: So every cascade series (escalations, calls and decisions per tier, audits) has data.
TEST_CASCADE = CascadeConfig(
    version="observed-stack-test",
    dimensions={
        "refusal": DimensionCascade(tiers=[TierRule(tier=0, threshold=0.8), TierRule(tier=1, threshold=0.0)]),
        "quality": DimensionCascade(tiers=[TierRule(tier=1, threshold=0.6)]),
        "format": DimensionCascade(tiers=[TierRule(tier=0, threshold=0.0)]),
    },
)


@dataclass
class ObservedStack:
    bootstrap: str
    topics: Topics
    pipeline_group: str
    exporter: str  # host:port of /metrics
    judge_metrics: Mapping[int, str]  # tier -> host:port of the judge server's /metrics
    alertmanager: AlertmanagerServer
    prometheus: PrometheusServer


def _metrics_address(child: ChildProcess) -> str:
    return child.await_line(METRICS_READY)["address"]


def start_observed_stack(
    *,
    bootstrap: str,
    unique: str,
    log_dir: Path,
    encoder_artefact: Path,
    children: list[ChildProcess],
    exits: ExitStack,
    rules: Sequence[Path] | None = None,
    webhook_url: str | None = None,
    cascade: CascadeConfig = TEST_CASCADE,
    interval_s: float = 1.0,
) -> ObservedStack:
    """Start everything; ``rules`` default to the production rule files."""
    t = Topics(unique)
    t.create(bootstrap)
    judges: dict[int, str] = {}
    judge_metrics: dict[int, str] = {}
    for tier, name, env in (
        (0, "rules", {}),
        (1, "encoder", {"EVALSTREAM_ENCODER_MODEL_DIR": str(encoder_artefact)}),
    ):
        child = judge_server(f"judge-tier{tier}", name, log_dir, "--metrics-port", "0", env=env)
        judges[tier] = start(children, child, timeout=180)
        judge_metrics[tier] = _metrics_address(child)

    cascade_file = log_dir / "cascade.yaml"
    cascade.dump(cascade_file)
    # Small judge batches: the encoder answers a batch of 32 well within the client's 5 s attempt
    # timeout even on a busy 2-core machine; 256 (the default) did not, and tripped the circuit.
    env = {"EVALSTREAM_PIPELINE_JUDGE_BATCH_SIZE": "32"}
    pipe = pipeline(
        bootstrap,
        judges,
        t,
        unique,
        log_dir,
        "--cascade-config",
        str(cascade_file),
        "--metrics-port",
        "0",
        env=env,
    )
    start(children, pipe)
    pipeline_metrics = _metrics_address(pipe)

    flags = [
        "--bootstrap", bootstrap,
        "--verdicts-topic", t.verdicts,
        "--summaries-topic", t.summaries,
        "--group-id", f"exporter-{unique}",
        "--state-file", str(log_dir / "exporter-state.json"),
        "--metrics-port", "0",
        "--flush-interval", "0.2",
        "--lag-interval", "1",
        "--pipeline-group", f"pipe-{unique}",
        "--events-topic", t.events,
        "--cascade-config", str(cascade_file),
    ]  # fmt: skip
    exporter = servers.exporter(*flags, log_file=log_dir / "exporter.log")
    exporter_address = start(children, exporter)

    alertmanager = exits.enter_context(
        AlertmanagerServer(
            data_dir=log_dir / "alertmanager",
            webhook_url=webhook_url,
            group_wait_s=0.5,
            group_interval_s=1.0,
            repeat_interval_s=3600.0,
        )
    )
    prometheus = exits.enter_context(
        PrometheusServer(
            targets={
                "evalstream-exporter": [exporter_address],
                "evalstream-judges": sorted(judge_metrics.values()),
                "evalstream-pipeline": [pipeline_metrics],
            },
            data_dir=log_dir / "prometheus",
            rules=list(rules) if rules is not None else rule_files(),
            alertmanagers=[alertmanager.address],
            scrape_interval_s=interval_s,
            evaluation_interval_s=interval_s,
        )
    )
    wait_until(prometheus.targets_up, timeout=30, what="prometheus to scrape every target")
    return ObservedStack(
        bootstrap=bootstrap,
        topics=t,
        pipeline_group=f"pipe-{unique}",
        exporter=exporter_address,
        judge_metrics=judge_metrics,
        alertmanager=alertmanager,
        prometheus=prometheus,
    )
