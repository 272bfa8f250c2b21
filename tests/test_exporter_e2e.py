"""The exporter on real parts: the broker, the exporter as a subprocess, a real Prometheus.

Verdicts and summaries are produced in Kafka transactions into unique topics; values are checked
through Prometheus's HTTP API (or the exporter's /metrics), against totals computed here from the
records produced. The exporter is killed with SIGKILL while records flow, restarted, and the totals
must stay exact: no counter goes back, nothing is counted twice.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from evalstream.kafka.admin import ensure_topics
from evalstream.local import servers
from evalstream.local.prometheus import PrometheusServer
from evalstream.local.supervisor import ChildProcess
from evalstream.runtime.procs import wait_until
from evalstream.runtime.settings import KafkaSettings
from evalstream.v1 import summary_pb2, verdict_pb2
from evalstream.wire.dimensions import RefusalLabel, quality_label

pytestmark = [pytest.mark.slow, pytest.mark.broker]

MODELS = ("m-a", "m-b")
ROUTES = ("chat", "search")
REFUSALS = tuple(RefusalLabel)


# --- what we produce, and what it must add up to ----------------------------------------------


@dataclass
class Expected:
    """Totals computed from the records produced (independently of the exporter's code)."""

    verdicts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (model, route)
    labels: Counter[tuple[str, str]] = field(default_factory=Counter)  # (dimension, label)
    events: int = 0
    unsampled: int = 0
    judged: int = 0
    dead: Counter[str] = field(default_factory=Counter)  # reason
    quality_le_5: int = 0
    escalations: int = 0
    audits: int = 0
    usd_micros: int = 0
    dimension_partials: int = 0  # dimension-level summaries, which the exporter ignores

    def add(self, other: Expected) -> None:
        for name in ("verdicts", "labels", "dead"):
            getattr(self, name).update(getattr(other, name))
        for name in (
            "events",
            "unsampled",
            "judged",
            "quality_le_5",
            "escalations",
            "audits",
            "usd_micros",
            "dimension_partials",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _ts(seconds: float) -> Timestamp:
    return Timestamp(seconds=int(seconds), nanos=int(seconds % 1 * 1e9))


def make_batch(start: int, n: int) -> tuple[list[verdict_pb2.Verdict], list[summary_pb2.Summary], Expected]:
    """``n`` verdicts from event number ``start``, the summaries a pipeline batch would write with them."""
    now = time.time()
    exp = Expected()
    verdicts = []
    for i in range(start, start + n):
        model, route = MODELS[i % 2], ROUTES[(i // 2) % 2]
        score = float(1 + i % 10)
        tried = [0] if i % 4 else [0, 1, 2]
        usd_micros = 1000 if tried[-1] == 2 else 0
        quality = verdict_pb2.DimensionVerdict(
            dimension="quality",
            label=quality_label(score),
            score=score,
            confidence=0.9,
            deciding_tier=tried[-1],
            tiers_tried=tried,
            cost=verdict_pb2.Cost(input_tokens=300, output_tokens=5, latency_ms=40.0, usd=usd_micros / 1e6),
            needs_audit=i % 7 == 0,
        )
        refusal = verdict_pb2.DimensionVerdict(
            dimension="refusal",
            label=REFUSALS[i % 3],
            score=0.5,
            confidence=0.8,
            deciding_tier=0,
            tiers_tried=[0],
            cost=verdict_pb2.Cost(latency_ms=0.05),
        )
        verdicts.append(
            verdict_pb2.Verdict(
                event_id=f"e{i}",
                model=model,
                model_version="v1",
                route=route,
                event_time=_ts(now - 2.5),
                judged_at=_ts(now),
                sample_rate=0.25,
                dimensions=[refusal, quality],
            )
        )
        exp.verdicts[(model, route)] += 1
        exp.labels[("quality", quality.label)] += 1
        exp.labels[("refusal", refusal.label)] += 1
        exp.quality_le_5 += score <= 5
        exp.escalations += len(tried) - 1
        exp.audits += quality.needs_audit
        exp.usd_micros += usd_micros
    summaries = []
    for (model, route), judged in sorted(exp.verdicts.items()):
        s = summary_pb2.Summary(
            batch_id=f"b{start}",
            model=model,
            model_version="v1",
            route=route,
            window_start_unix=int(now) // 60 * 60,
        )
        s.judged, s.unsampled, s.dead_lettered, s.duplicates = judged, 3 * judged, 2, 1
        s.events_in = s.judged + s.unsampled + s.dead_lettered
        s.dead_letter_reasons.update({"duplicate_event_id": 1, "judge_unavailable": 1})
        summaries.append(s)
        # a dimension-level partial: its counts must be ignored (they come from verdicts)
        d = summary_pb2.Summary(
            batch_id=f"b{start}", model=model, model_version="v1", route=route, dimension="refusal"
        )
        d.label_counts["full_refusal"] = 1000
        summaries.append(d)
        exp.dimension_partials += 1
        exp.events += s.events_in
        exp.unsampled += s.unsampled
        exp.judged += s.judged
        exp.dead.update(s.dead_letter_reasons)
    undecodable = summary_pb2.Summary(
        batch_id=f"b{start}", events_in=3, dead_lettered=3
    )  # model "" on purpose
    undecodable.dead_letter_reasons["invalid_json"] = 3
    summaries.append(undecodable)
    exp.events += 3
    exp.dead["invalid_json"] += 3
    return verdicts, summaries, exp


@dataclass
class Topics:
    bootstrap: str
    verdicts: str
    summaries: str
    producer: KafkaProducer
    # Aborts go through a producer of their own: two producer ids interleave on the partitions, which
    # read_committed must sort out (the same producer's commits after its abort are checked in
    # tests/test_broker_conformance.py).
    aborter: KafkaProducer
    produced: Expected = field(default_factory=Expected)
    next_event: int = 0

    def produce(self, n: int, *, abort: bool = False) -> Expected:
        """One transaction with ``n`` verdicts and their summaries; aborted ones never count."""
        verdicts, summaries, exp = make_batch(self.next_event, n)
        self.next_event += n
        producer = self.aborter if abort else self.producer
        producer.begin_transaction()
        for v in verdicts:
            producer.send(self.verdicts, key=v.event_id.encode(), value=v.SerializeToString())
        for s in summaries:
            producer.send(self.summaries, key=s.model.encode(), value=s.SerializeToString())
        if abort:
            producer.flush()
            producer.abort_transaction()
            return Expected()
        producer.commit_transaction()
        self.produced.add(exp)
        return exp


@pytest.fixture
def topics(broker, unique) -> Iterator[Topics]:
    names = {f"exporter-verdicts-{unique}": 4, f"exporter-summaries-{unique}": 1}
    ensure_topics(KafkaSettings(bootstrap=broker.bootstrap), names)
    producer, aborter = (
        KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=f"exporter-test-{unique}-{role}")
        for role in ("commit", "abort")
    )
    producer.init_transactions()
    aborter.init_transactions()
    yield Topics(broker.bootstrap, *names, producer=producer, aborter=aborter)
    producer.close()
    aborter.close()


def exporter(
    topics: Topics, tmp_path: Path, unique: str, name: str, *, port: int = 0, **extra: str
) -> ChildProcess:
    args = {
        "--bootstrap": topics.bootstrap,
        "--verdicts-topic": topics.verdicts,
        "--summaries-topic": topics.summaries,
        "--group-id": f"exporter-{unique}",
        "--state-file": str(tmp_path / "state.json"),
        "--metrics-port": str(port),
        "--flush-interval": "0.1",
        "--lag-interval": "0.5",
        "--pipeline-group": "",
        **extra,
    }
    return servers.exporter(
        *(x for kv in args.items() for x in kv), name=name, log_file=tmp_path / f"{name}.log"
    )


# --- reading values back -----------------------------------------------------------------------


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(url, timeout=5.0).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scraped_sum(samples: dict, name: str, **match: str) -> float:
    return sum(v for (n, labels), v in samples.items() if n == name and set(match.items()) <= labels)


def prom_totals(prom: PrometheusServer) -> dict[str, object]:
    def by(expr: str, *labels: str) -> dict[tuple[str, ...], float]:
        return {tuple(r["metric"].get(k, "") for k in labels): float(r["value"][1]) for r in prom.query(expr)}

    def one(expr: str) -> float | None:
        return prom.value(expr)

    return {
        "verdicts": by("sum by (model, route) (evalstream_verdicts_total)", "model", "route"),
        "labels": by("sum by (dimension, label) (evalstream_verdict_labels_total)", "dimension", "label"),
        "events": one("sum(evalstream_events_total)"),
        "unsampled": one("sum(evalstream_events_unsampled_total)"),
        "judged": one("sum(evalstream_events_judged_total)"),
        "dead": by("sum by (reason) (evalstream_events_dead_lettered_total)", "reason"),
        "quality_le_5": one('sum(evalstream_quality_score_bucket{le="5.0"})'),
        "escalations": one("sum(evalstream_judge_escalations_total)"),
        "audits": one("sum(evalstream_judge_audits_total)"),
        "usd_micros": one("round(sum(evalstream_judge_cost_usd_total) * 1e6)"),
    }


def expected_totals(exp: Expected) -> dict[str, object]:
    return {
        "verdicts": {k: float(v) for k, v in exp.verdicts.items()},
        "labels": {k: float(v) for k, v in exp.labels.items()},
        "events": float(exp.events),
        "unsampled": float(exp.unsampled),
        "judged": float(exp.judged),
        "dead": {(k,): float(v) for k, v in exp.dead.items()},
        "quality_le_5": float(exp.quality_le_5),
        "escalations": float(exp.escalations),
        "audits": float(exp.audits),
        "usd_micros": float(exp.usd_micros),
    }


def wait_for(read: Callable[[], object], want: object, *, timeout: float, what: str) -> None:
    seen: list[object] = [None]

    def same() -> bool:
        seen[0] = read()
        return seen[0] == want

    try:
        wait_until(same, timeout=timeout, what=what, interval=0.25)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\nwant: {want}\nhave: {seen[0]}") from None


# --- the tests ---------------------------------------------------------------------------------


def test_prometheus_sees_exact_totals_across_a_sigkill_mid_stream(topics, tmp_path, unique):
    first = exporter(topics, tmp_path, unique, "exporter-1", **{"--max-poll-records": "50"})
    address = first.start(timeout=60)
    url = f"http://{address}/metrics"
    port = int(address.rsplit(":", 1)[1])
    restarted: ChildProcess | None = None
    prom = PrometheusServer(targets={"evalstream-exporter": [address]}, data_dir=tmp_path / "prometheus")
    try:
        prom.start()
        # Phase 1: committed transactions and one aborted one (read_committed never shows it).
        topics.produce(40)
        topics.produce(25, abort=True)
        topics.produce(35)
        wait_for(
            lambda: prom_totals(prom),
            expected_totals(topics.produced),
            timeout=60,
            what="phase 1 in Prometheus",
        )
        phase1_at = time.time()
        wait_until(
            lambda: prom.value(f"sum(evalstream_verdicts_total @ {phase1_at:.3f})") == 75,
            timeout=30,
            what="a Prometheus sample of phase 1",
        )

        # Phase 2: a producer keeps writing while the exporter is SIGKILLed and restarted.
        killed = threading.Event()
        failures: list[BaseException] = []

        def produce_phase2() -> None:
            try:
                for batch in range(30):
                    topics.produce(100)
                    if batch == 9 and not killed.wait(timeout=60):
                        raise TimeoutError("the test never killed the exporter")
            except BaseException as exc:  # reported by the test thread
                failures.append(exc)

        writer = threading.Thread(target=produce_phase2, name="phase2-producer")
        writer.start()

        def partly_applied() -> bool:
            assert not failures, failures
            return scraped_sum(scrape(url), "evalstream_verdicts_total") > 75

        wait_until(
            partly_applied,
            timeout=60,
            what="the exporter to apply part of phase 2",
        )
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        killed.set()
        restarted = exporter(topics, tmp_path, unique, "exporter-2", port=port)
        restarted.start(timeout=60)
        writer.join(timeout=120)
        assert not writer.is_alive() and not failures, failures

        want = expected_totals(topics.produced)
        wait_for(
            lambda: prom_totals(prom), want, timeout=90, what="phase 1 + 2 in Prometheus after the restart"
        )
        # Nothing went backwards (a restored total below a scraped one would read as a reset) ...
        for metric in (
            "evalstream_verdicts_total",
            "evalstream_events_total",
            "evalstream_verdict_labels_total",
        ):
            assert prom.value(f"max(resets({metric}[10m]))") == 0, metric
        # ... so the increase since phase 1 is exactly phase 2: 3,000 verdicts.
        assert (
            prom.value(f"sum(evalstream_verdicts_total) - sum(evalstream_verdicts_total @ {phase1_at:.3f})")
            == 3000
        )
        # The recording rules ran on the real series: the accounting closes for every key. (Rules
        # are evaluated once a second, so their latest result may predate the last scrape; and
        # verdicts may be published a flush before the summaries of the same transaction.)
        for rule in ("evalstream:accounting:imbalance", "evalstream:accounting:verdicts_minus_judged"):
            wait_until(
                lambda rule=rule: {float(r["value"][1]) for r in prom.query(rule)} == {0.0},
                timeout=30,
                what=f"{rule} to be 0 for every key",
            )
        samples = scrape(url)
        assert scraped_sum(samples, "evalstream_exporter_records_total", outcome="undecodable") == 0
        ignored = scraped_sum(samples, "evalstream_exporter_records_total", outcome="ignored")
        assert ignored == topics.produced.dimension_partials
        wait_until(
            lambda: scraped_sum(scrape(url), "evalstream_exporter_consumer_lag_records") == 0,
            timeout=30,
            what="the exporter's consumer lag to read 0",
        )
        assert restarted.stop() == 0  # SIGTERM: save, commit, exit 0
    finally:
        prom.stop()
        first.stop()
        if restarted is not None:
            restarted.stop()


def test_restart_without_or_with_a_stale_state_file_never_reapplies(topics, tmp_path, unique):
    """Lost or stale state: totals restart from zero at the committed offsets; nothing is re-applied."""
    state = tmp_path / "state.json"

    def run(name: str, batches: int, want_verdicts: int, want_log: str) -> None:
        child = exporter(topics, tmp_path, unique, name)
        url = f"http://{child.start(timeout=60)}/metrics"
        try:
            for _ in range(batches):
                topics.produce(50)
            wait_for(
                lambda: scraped_sum(scrape(url), "evalstream_verdicts_total"),
                float(want_verdicts),
                timeout=60,
                what=f"{name}: {want_verdicts} verdicts",
            )
            assert child.stop() == 0
        finally:
            child.stop()
        assert want_log in child.output(), child.output()[-2000:]

    run("first", 2, 100, "no state file")
    shutil.copy(state, tmp_path / "state-after-first.json")
    run("restored", 1, 150, "restored from the state file")  # 100 restored + 50 new
    shutil.copy(tmp_path / "state-after-first.json", state)  # the group has committed beyond this
    run("stale", 1, 50, "state file is stale")  # from zero: the 50 of "restored" are not applied again
    state.unlink()
    run("lost", 2, 100, "no state file")
