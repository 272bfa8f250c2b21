"""Judge agreement and drift on real parts: XSTest replayed into the broker, the tier-0 judge, pipeline
and exporter processes, human labels published with ``evalstream label``; the exporter's /metrics
against an independent computation from what is read back from Kafka."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score

from evalstream.evaluation.datasets import read_xstest
from evalstream.evaluation.statistics import kappa_with_ci
from evalstream.kafka.admin import ensure_topics
from evalstream.local import servers
from evalstream.local.broker import EmbeddedBroker
from evalstream.local.supervisor import ChildProcess, python_module
from evalstream.runtime.procs import wait_until
from evalstream.runtime.settings import KafkaSettings
from evalstream.tools.replay import (
    Encoding,
    KafkaSink,
    RateLimiter,
    ReplayOptions,
    event_id_for,
    plan_replay,
    publish,
    run_replay,
)
from evalstream.v1 import verdict_pb2

from .kafka_helpers import TopicReader
from .real_parts import Topics, judge_server, pipeline, start

pytestmark = [pytest.mark.slow, pytest.mark.broker]

MODEL = "llama2orig"
REFUSING = {"full_refusal", "partial_refusal"}


@pytest.fixture(scope="module")
def judge_tier0(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    child = judge_server("judge-tier0", "rules", tmp_path_factory.mktemp("judge"))
    try:
        yield child.start(timeout=90)
    finally:
        child.stop()


def exporter(
    broker: EmbeddedBroker,
    t: Topics,
    labels_topic: str,
    unique: str,
    log_dir: Path,
    *extra: str,
    name="exporter",
) -> ChildProcess:
    # fmt: off
    flags = [
        "--bootstrap", broker.bootstrap,
        "--verdicts-topic", t.verdicts, "--summaries-topic", t.summaries, "--labels-topic", labels_topic,
        "--group-id", f"exporter-{unique}", "--state-file", str(log_dir / "exporter-state.json"),
        "--metrics-port", "0", "--flush-interval", "0.2", "--pipeline-group", "",
        *extra,
    ]
    # fmt: on
    return servers.exporter(*flags, name=name, log_file=log_dir / f"{name}.log")


def label_cli(name: str, log_dir: Path, *args: str) -> ChildProcess:
    return ChildProcess(
        name=name, cmd=python_module("evalstream.cli.app", "label", *args), log_file=log_dir / f"{name}.log"
    )


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(url, timeout=5.0).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def run_pipeline(children, broker, judge, t, unique, log_dir) -> None:
    pipe = pipeline(broker.bootstrap, {0: judge}, t, unique, log_dir, "--exit-when-idle-s", "4")
    start(children, pipe)
    assert pipe.wait(300) == 0, pipe.output()[-3000:]


def test_agreement_gauges_match_an_independent_join_of_verdicts_and_labels_read_back(
    broker, judge_tier0, unique, tmp_path, children, shared_data
):
    t = Topics(unique)
    t.create(broker.bootstrap)
    labels_topic = f"labels-{unique}"
    ensure_topics(KafkaSettings(bootstrap=broker.bootstrap), {labels_topic: 1})
    url = f"http://{start(children, exporter(broker, t, labels_topic, unique, tmp_path))}/metrics"

    # 1. Before any event: the adjudicated labels of the odd-numbered prompts, from a file (they wait).
    records = read_xstest(shared_data, models=[MODEL])
    early = tmp_path / "early.jsonl"
    early.write_text(
        "".join(
            json.dumps(
                {
                    "event_id": event_id_for(unique, r, 0),
                    "dimension": "refusal",
                    "label": r.final_label.value,
                    "annotator": "adjudicated",
                }
            )
            + "\n"
            for r in records
            if int(r.prompt_id.removeprefix("v2-")) % 2
        )
    )
    first = label_cli(
        "label-file", tmp_path, "--file", str(early), "--topic", labels_topic, "--bootstrap", broker.bootstrap
    )
    children.append(first)
    first.start()
    assert first.wait(120) == 0, first.output()

    # 2. The events of one model, judged by the pipeline (the file's labels pair with these verdicts).
    kafka = KafkaSettings(bootstrap=broker.bootstrap)
    report = run_replay(
        ReplayOptions(topic=t.events, models=(MODEL,), run_id=unique, seed=5), kafka, show_progress=False
    )
    assert report.total_sent == len(records) == 450
    run_pipeline(children, broker, judge_tier0, t, unique, tmp_path)

    # 3. After the verdicts: all three XSTest annotators for every prompt (these verdicts waited).
    second = label_cli(
        "label-xstest",
        tmp_path,
        "--xstest",
        "--run-id",
        unique,
        "--model",
        MODEL,
        "--topic",
        labels_topic,
        "--bootstrap",
        broker.bootstrap,
    )
    children.append(second)
    second.start()
    assert second.wait(120) == 0, second.output()
    assert "published 1350 labels" in second.output()

    # Independent computation from what Kafka holds.
    reader = TopicReader(broker.bootstrap, [t.verdicts, labels_topic])
    reader.until(
        lambda r: len(r[t.verdicts]) >= 450 and len(r[labels_topic]) >= 225 + 1350, timeout=60, what="records"
    )
    reader.settle(1.0)
    verdicts = [verdict_pb2.Verdict.FromString(m.value) for m in reader.records[t.verdicts]]
    labels = [json.loads(m.value) for m in reader.records[labels_topic]]
    reader.close()
    truth: dict[str, str] = {}
    for row in labels:  # the truth annotator's first label per event (later copies are duplicates)
        if row["annotator"] == "adjudicated" and row["dimension"] == "refusal":
            truth.setdefault(row["event_id"], row["label"])
    pairs: dict[str, list[tuple[str, str]]] = {"all": []}
    for v in verdicts:
        (refusal,) = [d for d in v.dimensions if d.dimension == "refusal"]
        if v.event_id in truth and not refusal.needs_audit:
            pairs["all"].append((truth[v.event_id], refusal.label))
            pairs.setdefault(str(refusal.deciding_tier), []).append((truth[v.event_id], refusal.label))
    assert len(pairs["all"]) == 450

    def settled() -> bool:
        s = scrape(url)
        return sample(s, "evalstream_judge_agreement_window_pairs", dimension="refusal", tier="all") == 450

    wait_until(settled, timeout=120, what="the exporter to pair all 450 labels", interval=0.5)
    samples = scrape(url)
    for tier, tier_pairs in pairs.items():
        ordered = sorted(tier_pairs)
        human, judge = [h for h, _ in ordered], [j for _, j in ordered]
        matches = sum(h == j for h, j in ordered)
        wilson = binomtest(matches, len(ordered)).proportion_ci(confidence_level=0.95, method="wilson")
        kappa, low, high = kappa_with_ci(human, judge, n_resamples=1000, seed=0)
        assert kappa == pytest.approx(cohen_kappa_score(human, judge), abs=1e-12)
        want = {
            "evalstream_judge_agreement_pairs_total": len(ordered),
            "evalstream_judge_agreement_matches_total": matches,
            "evalstream_judge_agreement_window_pairs": len(ordered),
            "evalstream_judge_agreement_accuracy": matches / len(ordered),
            "evalstream_judge_agreement_accuracy_ci_lower": wilson.low,
            "evalstream_judge_agreement_accuracy_ci_upper": wilson.high,
            "evalstream_judge_agreement_kappa": kappa,
            "evalstream_judge_agreement_kappa_ci_lower": low,
            "evalstream_judge_agreement_kappa_ci_upper": high,
        }
        for name, value in want.items():
            got = sample(samples, name, dimension="refusal", tier=tier)
            assert got == pytest.approx(value, abs=1e-9), (tier, name, got, value)
        print(
            f"agreement tier={tier}: n={len(ordered)} accuracy={matches / len(ordered):.3f} "
            f"[{wilson.low:.3f}, {wilson.high:.3f}] kappa={kappa:.3f} [{low:.3f}, {high:.3f}]"
        )
    join = Counter(
        {
            dict(labels_)["outcome"]: v
            for (n, labels_), v in samples.items()
            if n == "evalstream_judge_agreement_join_total" and dict(labels_)["side"] == "label"
        }
    )
    assert join["paired"] == 450 and join["duplicate"] == 225  # the file's labels, sent again
    ignored = sample(samples, "evalstream_exporter_records_total", stream="labels", outcome="ignored")
    assert ignored == 900  # annotator_1 and annotator_2


def _replay_phase(bootstrap: str, topic: str, records, *, run_id: str, at: datetime) -> int:
    """Publish ``records`` as events dated ``at``, through replay's own planning and Kafka sink."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        report = publish(
            plan_replay(records, seed=1, run_id=run_id),
            sink=KafkaSink(producer, topic),
            topic=topic,
            encoding=Encoding.JSON,
            run_id=run_id,
            seed=1,
            limiter=RateLimiter(rate=0.0),
            now=lambda: at,
        )
    finally:
        producer.close(timeout=30)
    assert not report.failed, report.first_error
    return report.total_sent


def test_drift_gauges_rise_when_the_model_behind_a_name_changes_and_stay_low_when_it_does_not(
    broker, judge_tier0, unique, tmp_path, children, shared_data
):
    """One name serves mistralinstruct, then llama2orig half an hour later ("shift"); another serves
    mistralinstruct both times ("same"). Current window: the last 10 minutes; reference: the hour
    before it."""
    t = Topics(unique)
    t.create(broker.bootstrap)
    labels_topic = f"labels-{unique}"
    ensure_topics(KafkaSettings(bootstrap=broker.bootstrap), {labels_topic: 1})
    drift_flags = ("--drift-current", "600", "--drift-bucket", "60",
                   "--drift-reference-window", "3600", "--drift-reference-bucket", "600")  # fmt: skip
    first = exporter(broker, t, labels_topic, unique, tmp_path, *drift_flags)
    url = f"http://{start(children, first)}/metrics"
    by_model = {m: read_xstest(shared_data, models=[m]) for m in ("mistralinstruct", "llama2orig")}
    now = datetime.now(UTC).replace(second=30, microsecond=0)
    before = now - timedelta(minutes=30)
    phases = [
        ("shift", "mistralinstruct", before, "a"),
        ("same", "mistralinstruct", before, "a"),
        ("shift", "llama2orig", now, "b"),
        ("same", "mistralinstruct", now, "b"),
    ]
    for name, source, at, phase in phases:
        records = [replace(r, model=name) for r in by_model[source]]
        sent = _replay_phase(broker.bootstrap, t.events, records, run_id=f"{unique}{phase}", at=at)
        assert sent == 450
    run_pipeline(children, broker, judge_tier0, t, unique, tmp_path)

    # Refusal counts per phase, read back from the verdicts: the refusal-rate PSI, computed here.
    reader = TopicReader(broker.bootstrap, [t.verdicts])
    reader.until(lambda r: len(r[t.verdicts]) >= 1800, timeout=60, what="1800 verdicts")
    reader.close()
    refusals: Counter[tuple[str, bool, bool]] = Counter()  # (model, current window, refused)
    for m in reader.records[t.verdicts]:
        v = verdict_pb2.Verdict.FromString(m.value)
        (refusal,) = [d for d in v.dimensions if d.dimension == "refusal"]
        refusals[(v.model, v.event_time.seconds >= int(now.timestamp()) - 60, refusal.label in REFUSING)] += 1

    def rate_psi(model: str) -> float:
        r = [refusals[(model, False, x)] / 450 for x in (True, False)]
        c = [refusals[(model, True, x)] / 450 for x in (True, False)]
        return sum((ci - ri) * math.log(ci / ri) for ri, ci in zip(r, c, strict=True))

    def features(samples, model: str) -> dict[str, tuple[float | None, float | None]]:
        out = {}
        for feature, dimension in (("response_chars", ""), ("refusal_rate", "refusal"), ("score", "refusal")):
            key = {"model": model, "route": "default", "feature": feature, "dimension": dimension}
            out[feature] = (
                sample(samples, "evalstream_drift_psi", **key),
                sample(samples, "evalstream_drift_pvalue", **key),
            )
        return out

    def complete() -> bool:
        s = scrape(url)
        return all(
            sample(
                s,
                "evalstream_drift_current_samples",
                model=m,
                route="default",
                feature="response_chars",
                dimension="",
            )
            == 450
            and sample(
                s,
                "evalstream_drift_reference_samples",
                model=m,
                route="default",
                feature="refusal_rate",
                dimension="refusal",
            )
            == 450
            for m in ("shift", "same")
        )

    try:
        wait_until(complete, timeout=120, what="drift gauges over both windows of both models", interval=0.5)
    except TimeoutError as exc:
        drift = {k: v for k, v in scrape(url).items() if k[0].startswith("evalstream_drift")}
        raise AssertionError(f"{exc}; drift series: {drift}") from None
    samples = scrape(url)
    shift, same = features(samples, "shift"), features(samples, "same")
    print(f"drift shift: {shift}\ndrift same: {same}")
    assert shift["refusal_rate"][0] == pytest.approx(rate_psi("shift"), abs=1e-9)
    assert same["refusal_rate"][0] == pytest.approx(rate_psi("same"), abs=1e-9) == pytest.approx(0.0)
    for feature, (psi_, p) in shift.items():
        assert psi_ > 0.25 and p < 1e-6, (feature, psi_, p)
    for feature, (psi_, p) in same.items():
        assert psi_ < 0.1 and p > 0.05, (feature, psi_, p)

    # A restart (SIGTERM: save, commit, exit 0) restores the windows and the gauges exactly.
    assert first.stop() == 0, first.output()[-2000:]
    again = exporter(broker, t, labels_topic, unique, tmp_path, *drift_flags, name="exporter-again")
    url = f"http://{start(children, again)}/metrics"
    assert "restored from the state file" in again.output()
    restored = scrape(url)
    assert {k: v for k, v in restored.items() if k[0].startswith("evalstream_drift_")} == {
        k: v for k, v in samples.items() if k[0].startswith("evalstream_drift_")
    }
