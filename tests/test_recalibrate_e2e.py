"""Acceptance for the production loop, on real parts: calibrate on one labelled source, run another,
watch the guarantee alert fire in Prometheus, recalibrate from the labels that came back, load the new
config live, watch the alert clear, with every event accounted for throughout.

Real processes: the embedded broker, the tier-0 rules and tier-1 encoder judge servers, the pipeline
(with a calibration sample and live reload), the exporter (guarantee monitor, watching the same config
file) and Prometheus with the production rules, their time windows scaled by ``SCALE`` (``for: 30m``
of ``EvalstreamGuaranteeNotHeld`` becomes 3 s; thresholds and the 100-pair floor unchanged; the
scaling is ``tests/test_alerts_e2e.py``'s). The commands are the CLI's own: ``evalstream collect``,
``label``, ``recalibrate``.

The data (``../shared/data``, XSTest v2; the only refusal-labelled source here): calibration on the
completions of GPT-4 and Mistral-7B-Instruct, traffic from Mistral-7B with a guard prompt (another
model's answers to the same prompts: the rules judge's thresholds fitted on the first hold for it at
about 0.76, under the promised 0.90; ``benchmarks/recalibration_loop.py``). Human labels are the
adjudicated XSTest labels of the events the pipeline put on the audit topic as its calibration sample,
as an annotator would label them. After the reload the same completions are replayed under new event
ids: the new thresholds were fitted on the first replay's sample, so the second replay's sample (a
different 60% of the completions, by the hash of the new ids) is partly the items they were fitted on;
the out-of-sample figures are the benchmark's, not this test's. The run ids are fixed (the topics are
this test's own), so the calibration sample, and with it the refitted threshold, is the same on every
run: with two other draws of the sample the certified tier-1 threshold was 0.717 (coverage 0.79) and
0.97 (coverage 0.22, too few accepted verdicts to test the promise on one replay), which is how much a
fit on ~260 labels can move.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Any

import pytest

from evalstream.evaluation.datasets import read_xstest
from evalstream.evaluation.labelled_items import write_labelled_items
from evalstream.kafka.admin import ensure_topics
from evalstream.local import servers
from evalstream.local.broker import EmbeddedBroker
from evalstream.local.prometheus import PrometheusServer
from evalstream.local.supervisor import ChildProcess, python_module
from evalstream.runtime.procs import wait_until
from evalstream.runtime.settings import KafkaSettings
from evalstream.tools.collect import xstest_items
from evalstream.tools.replay import ReplayOptions, event_id_for, run_replay
from evalstream.v1 import summary_pb2, verdict_pb2
from evalstream.wire.cascade_config import CascadeConfig

from .kafka_helpers import TopicReader
from .real_parts import Topics, judge_server, pipeline, start
from .test_alerts_e2e import scaled_rule_files

#: Encoder training (the session fixture, about 2 minutes) and three judged passes on a shared 2-core
#: machine: more than the default 300 s under load.
pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.timeout(900)]

CALIBRATE_ON = ("gpt4", "mistralinstruct")
TRAFFIC = "mistralguard"
ALERT = "EvalstreamGuaranteeNotHeld"
#: 30 production minutes of "for:" last 3 s here; the alert's other terms have no time window.
SCALE = 1 / 600
SAMPLE = 0.6


def cli(name: str, log_dir: Path, *args: str) -> ChildProcess:
    return ChildProcess(
        name=name, cmd=python_module("evalstream.cli.app", *args), log_file=log_dir / f"{name}.log"
    )


def run_cli(children: list[ChildProcess], name: str, log_dir: Path, *args: str, timeout: float = 300) -> str:
    child = cli(name, log_dir, *args)
    children.append(child)
    child.start()
    assert child.wait(timeout) == 0, child.output()[-4000:]
    return child.output()


def guarantee_alerts(prom: PrometheusServer) -> list[dict[str, Any]]:
    return [a for a in prom.alerts() if a["labels"].get("alertname") == ALERT]


def value(prom: PrometheusServer, expr: str) -> float | None:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else None


def test_guarantee_breaks_on_new_traffic_and_holds_again_after_recalibration_and_a_live_reload(
    broker: EmbeddedBroker,
    unique: str,
    tmp_path: Path,
    encoder_artefact: Path,
    children: list[ChildProcess],
    shared_data: Path,
) -> None:
    kafka = KafkaSettings(bootstrap=broker.bootstrap)
    t = Topics(unique)
    t.create(broker.bootstrap)
    labels_topic = f"labels-{unique}"
    ensure_topics(kafka, {labels_topic: 1})
    judges = {
        0: start(children, judge_server("judge-tier0", "rules", tmp_path), timeout=180),
        1: start(
            children,
            judge_server(
                "judge-tier1",
                "encoder",
                tmp_path,
                env={"EVALSTREAM_ENCODER_MODEL_DIR": str(encoder_artefact)},
            ),
            timeout=180,
        ),
    }
    endpoints = ",".join(f"{tier}={address}" for tier, address in sorted(judges.items()))

    # 1. Calibrate on the first source with the live tiers (evalstream collect, over gRPC).
    source = tmp_path / "source.jsonl"
    write_labelled_items(source, [i for i in xstest_items(shared_data) if i.model in CALIBRATE_ON])
    out = run_cli(
        children, "collect", tmp_path, "collect", "--data", str(source), "--judges", endpoints,
        "--alpha", "0.1", "--delta", "0.1", "--truth-annotator", "adjudicated",
        "--out-dir", str(tmp_path / "calibration"),
    )  # fmt: skip
    first = CascadeConfig.load(tmp_path / "calibration" / "cascade.yaml")
    assert first.alpha == 0.1 and first.dimensions["refusal"].tiers[0].tier == 0, out
    live = tmp_path / "cascade.yaml"
    first.dump(live)

    # 2. The stack on that config: pipeline with a calibration sample, exporter, Prometheus.
    pipe = pipeline(
        broker.bootstrap, judges, t, unique, tmp_path,
        "--cascade-config", str(live), "--cascade-reload-s", "0.5",
        "--calibration-sample-fraction", str(SAMPLE), "--metrics-port", "0",
        env={"EVALSTREAM_PIPELINE_JUDGE_BATCH_SIZE": "32"},
    )  # fmt: skip
    start(children, pipe)
    exporter = servers.exporter(
        "--bootstrap", broker.bootstrap, "--verdicts-topic", t.verdicts, "--summaries-topic", t.summaries,
        "--labels-topic", labels_topic, "--group-id", f"exporter-{unique}",
        "--state-file", str(tmp_path / "exporter-state.json"), "--metrics-port", "0",
        "--flush-interval", "0.2", "--pipeline-group", "", "--cascade-config", str(live),
        "--cascade-reload-s", "0.5",
        log_file=tmp_path / "exporter.log", env={"EVALSTREAM_EXPORTER_AGREEMENT_RESAMPLES": "50"},
    )  # fmt: skip
    exporter_address = start(children, exporter)
    prom = PrometheusServer(
        targets={"evalstream-exporter": [exporter_address]},
        data_dir=tmp_path / "prometheus",
        rules=scaled_rule_files(tmp_path / "scaled-rules", SCALE),
    )
    prom.start()
    try:
        wait_until(prom.targets_up, timeout=30, what="prometheus to scrape the exporter")
        reader = TopicReader(broker.bootstrap, [t.verdicts, t.summaries, t.dead, t.audit])
        records = {r.prompt_id: r for r in read_xstest(shared_data, models=[TRAFFIC])}
        produced = 0

        def replay_and_label(run_id: str) -> list[verdict_pb2.Verdict]:
            """Replay the traffic, wait for every event to be accounted for, label the sample."""
            nonlocal produced
            run_replay(
                ReplayOptions(topic=t.events, models=(TRAFFIC,), run_id=run_id, seed=3),
                kafka,
                show_progress=False,
            )
            produced += len(records)
            reader.until(
                lambda r: len(r[t.verdicts]) + len(r[t.dead]) >= produced,
                timeout=300,
                what=f"{run_id} judged",
            )
            ids = {event_id_for(run_id, rec, 0): rec for rec in records.values()}
            judged = [verdict_pb2.Verdict.FromString(m.value) for m in reader.records[t.verdicts]]
            wanted = {v.event_id for v in judged if v.event_id in ids and v.calibration_sample}

            def audited() -> list[verdict_pb2.Verdict]:
                on_audit = [verdict_pb2.Verdict.FromString(m.value) for m in reader.records[t.audit]]
                return [v for v in on_audit if v.event_id in wanted]

            # the sample's verdicts go to the audit topic (in the same transactions as the verdicts)
            reader.until(lambda _: len(audited()) >= len(wanted), timeout=60, what=f"{run_id} audits")
            sample = audited()
            assert {v.event_id for v in sample} == wanted
            assert 0.45 * len(ids) < len(sample) < 0.75 * len(ids)
            labels = tmp_path / f"labels-{run_id}.jsonl"
            rows = [
                {"event_id": v.event_id, "dimension": "refusal", "annotator": "adjudicated",
                 "label": ids[v.event_id].final_label.value}
                for v in sample
            ]  # fmt: skip
            labels.write_text("".join(json.dumps(row) + "\n" for row in rows))
            run_cli(
                children, f"label-{run_id}", tmp_path, "label", "--file", str(labels),
                "--topic", labels_topic, "--bootstrap", broker.bootstrap,
            )  # fmt: skip
            return sample

        # 3. Traffic from the other source: the guarantee does not hold, and Prometheus says so.
        before = replay_and_label("loop-a")
        assert all(v.cascade_version == first.version for v in before)
        assert all(
            {j.tier for j in d.judgements} == {0, 1}
            for v in before
            for d in v.dimensions
            if d.dimension == "refusal"
        )  # every tier judged the sample (shadow judging)
        wait_until(
            lambda: any(a["state"] == "firing" for a in guarantee_alerts(prom)),
            timeout=120,
            interval=0.5,
            what=f"{ALERT} firing",
        )
        bound = value(prom, 'evalstream_guarantee_agreement_lower_bound{dimension="refusal"}')
        assert bound is not None and bound < 0.9
        assert (value(prom, 'evalstream_guarantee_window_pairs{dimension="refusal"}') or 0) >= 100

        # 4. Recalibrate from what Kafka holds, and load the result live.
        new_path = tmp_path / "cascade.new.yaml"
        out = run_cli(
            children, "recalibrate", tmp_path, "recalibrate", "--cascade-config", str(live),
            "--out", str(new_path), "--verdicts-topic", t.verdicts, "--labels-topic", labels_topic,
            "--bootstrap", broker.bootstrap, "--min-items", "100",
        )  # fmt: skip
        second = CascadeConfig.load(new_path)
        assert second.version != first.version and second.version.startswith("recal-")
        assert second.provenance is not None
        assert second.provenance.items == {"refusal": len(before)}, out
        assert second.provenance.labels == {"joined": len(before)}
        assert {r.topic for r in second.provenance.read} == {t.verdicts, labels_topic}
        assert second.dimensions["refusal"] != first.dimensions["refusal"]
        os.replace(new_path, live)  # atomic: the pipeline and exporter never see half a file
        wait_until(
            lambda: f"version {second.version} replaces {first.version}" in pipe.output(),
            timeout=30,
            what="the pipeline to load the new config",
        )

        # 5. The same traffic under new ids, labels back: the alert clears on the new version's verdicts.
        after = replay_and_label("loop-b")
        assert all(v.cascade_version == second.version for v in after)
        assert second.dimensions["refusal"].shadow_tiers == [0, 1]
        assert all(
            {j.tier for j in d.judgements} == {0, 1}
            for v in after
            for d in v.dimensions
            if d.dimension == "refusal"
        )  # a tier the refit dropped is still judged on the sample, so a later refit can bring it back

        def cleared() -> bool:
            pairs = value(prom, 'evalstream_guarantee_window_pairs{dimension="refusal"}') or 0
            version = value(
                prom, f'evalstream_guarantee_cascade_version{{cascade_version="{second.version}"}}'
            )
            return pairs >= 100 and version == 1.0 and guarantee_alerts(prom) == []

        wait_until(cleared, timeout=120, interval=0.5, what=f"{ALERT} to clear on the new version")
        bound_after = value(prom, 'evalstream_guarantee_agreement_lower_bound{dimension="refusal"}')
        assert bound_after is not None and bound_after >= 0.9
        for version in (first.version, second.version):  # the dashboard's hand-over panel has both
            expr = f'evalstream_cascade_verdicts_total{{cascade_version="{version}"}}'
            wait_until(lambda e=expr: value(prom, e) == len(records), timeout=30, what=expr)
        print(
            f"guarantee lower bound {bound:.3f} before, {bound_after:.3f} after recalibration "
            f"({first.dimensions['refusal'].tiers[0].rule()} -> "
            f"{', '.join(r.rule() for r in second.dimensions['refusal'].tiers)})"
        )

        # 6. The accounting, from the summaries Kafka holds: events in = unsampled + verdicts + dead.
        reader.settle(2.0)
        verdicts = [verdict_pb2.Verdict.FromString(m.value) for m in reader.records[t.verdicts]]
        summaries = [summary_pb2.Summary.FromString(m.value) for m in reader.records[t.summaries]]
        reader.close()
    finally:
        prom.stop()
    ids = [v.event_id for v in verdicts]
    assert len(ids) == len(set(ids))
    totals: collections.Counter[str] = collections.Counter()
    by_version: collections.Counter[str] = collections.Counter()
    for s in summaries:
        if s.dimension == "":
            totals.update(events_in=s.events_in, unsampled=s.unsampled, judged=s.judged, dead=s.dead_lettered)
            by_version[s.cascade_version] += s.events_in
    assert totals["events_in"] == produced == 2 * len(records)
    assert totals["events_in"] == totals["unsampled"] + totals["judged"] + totals["dead"]
    assert totals["judged"] == len(verdicts) and totals["dead"] == len(reader.records[t.dead])
    assert by_version == {first.version: len(records), second.version: len(records)}
