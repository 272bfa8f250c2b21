"""``run(argv)`` on real parts: the embedded broker, a judge server process, the pipeline process."""

from __future__ import annotations

import collections
import contextlib
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from evalstream.local import servers
from evalstream.local.broker import EmbeddedBroker
from evalstream.local.supervisor import ChildProcess
from evalstream.runtime.procs import free_port, wait_until
from evalstream.runtime.ready import METRICS_READY
from evalstream.runtime.settings import KafkaSettings
from evalstream.tools.replay import ReplayOptions, run_replay
from evalstream.v1 import summary_pb2, verdict_pb2

from .kafka_helpers import TopicReader
from .otlp_receiver import OTLPReceiver, attribute
from .pipeline_helpers import event_json
from .real_parts import Topics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def judge_tier0(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    child = servers.judge_server(
        "rules", name="judge-tier0", log_file=tmp_path_factory.mktemp("judge") / "judge.log"
    )
    yield child.start(timeout=60)
    assert child.stop() == 0, child.output()


def pipeline_process(
    broker: EmbeddedBroker, judge: str, t: Topics, unique: str, log_dir: Path, *extra: str
) -> ChildProcess:
    """The pipeline as its own process (not started); register it in ``children`` for cleanup."""
    flags = [
        "--bootstrap", broker.bootstrap, "--judges", f"0={judge}", "--group-id", f"pipe-{unique}",
        "--transactional-id", f"tx-{unique}", *t.flags(), *extra,
    ]  # fmt: skip
    return servers.pipeline(*flags, log_file=log_dir / "pipeline.log")


def produce(
    bootstrap: str, topic: str, values: list[bytes], *, headers: list[tuple[str, bytes]] | None = None
) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=8 * 1024 * 1024)
    for i, value in enumerate(values):
        producer.send(topic, key=f"k{i}".encode(), value=value, headers=headers or [])
    producer.flush()
    producer.close()


def test_pipeline_runs_continuously_and_accounts_for_every_event(
    broker: EmbeddedBroker, judge_tier0: str, unique: str, tmp_path: Path, children: list[ChildProcess]
) -> None:
    t = Topics(unique)
    t.create(broker.bootstrap)
    reader = TopicReader(broker.bootstrap, [t.verdicts, t.summaries, t.dead])
    with OTLPReceiver() as otlp:
        pipe = pipeline_process(broker, judge_tier0, t, unique, tmp_path)
        children.append(pipe)
        pipe.env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp.endpoint
        pipe.env["OTEL_BSP_SCHEDULE_DELAY"] = "200"
        pipe.start(timeout=60)

        now = datetime.now(UTC)
        first = [event_json(f"a{i}-{unique}", when=now) for i in range(300)]
        bad = [b"{oops", event_json(f"a0-{unique}", when=now)]  # malformed, and a duplicate of a0
        produce(broker.bootstrap, t.events, first + bad)
        reader.until(
            lambda r: len(r[t.verdicts]) >= 300 and len(r[t.dead]) >= 2, timeout=60, what="first wave"
        )

        # A second wave, produced while the pipeline is running, is picked up within seconds.
        started = time.monotonic()
        second = [event_json(f"b{i}-{unique}", when=datetime.now(UTC)) for i in range(200)]
        produce(broker.bootstrap, t.events, second)
        reader.until(lambda r: len(r[t.verdicts]) >= 500, timeout=30, what="second wave")
        pickup_s = time.monotonic() - started
        assert pickup_s < 15, f"second wave took {pickup_s:.1f}s to be judged"

        pipe.signal(signal.SIGTERM)
        assert pipe.wait(30) == 0, pipe.output()
        reader.settle()
        spans = otlp.snapshot()

    verdicts = [verdict_pb2.Verdict.FromString(m.value) for m in reader.records[t.verdicts]]
    dead = [verdict_pb2.DeadLetter.FromString(m.value) for m in reader.records[t.dead]]
    summaries = [summary_pb2.Summary.FromString(m.value) for m in reader.records[t.summaries]]
    reader.close()

    ids = [v.event_id for v in verdicts]
    assert len(ids) == len(set(ids)) == 500
    assert sorted(d.error_type for d in dead) == ["duplicate_event_id", "invalid_json"]
    assert {d.source_topic for d in dead} == {t.events}
    totals = collections.Counter()
    for s in summaries:
        if s.dimension == "":
            totals.update(events_in=s.events_in, unsampled=s.unsampled, judged=s.judged, dead=s.dead_lettered)
    produced = len(first) + len(bad) + len(second)
    assert totals["events_in"] == produced
    assert totals["unsampled"] + totals["judged"] + totals["dead"] == produced
    assert totals["judged"] == len(verdicts) and totals["dead"] == len(dead)
    assert all({d.dimension for d in v.dimensions} == {"refusal", "format"} for v in verdicts)

    # Tracing reached a real OTLP receiver: decode spans carry the event id, verdicts carry results.
    decoded = {attribute(s, "evalstream.event_id") for s in spans if s.name == "evalstream.decode"}
    assert f"a1-{unique}" in decoded and f"b1-{unique}" in decoded
    results = [e for s in spans if s.name == "evalstream.verdict" for e in s.events]
    assert any(e.name == "gen_ai.evaluation.result" for e in results)
    assert any(s.name == "evalstream.judge" for s in spans)


def test_judge_down_dead_letters_then_recovers(
    broker: EmbeddedBroker, unique: str, tmp_path: Path, children: list[ChildProcess]
) -> None:
    """With no judge answering, events are retried within the deadline, then dead-lettered with the
    reason (and, once the tier's circuit is open, at once); once a judge is back, the circuit closes
    on its next probe and new events are judged again. The pipeline never stops."""
    t = Topics(unique)
    t.create(broker.bootstrap)

    port = free_port()
    reader = TopicReader(broker.bootstrap, [t.verdicts, t.dead])
    pipe = pipeline_process(
        broker,
        f"127.0.0.1:{port}",
        t,
        unique,
        tmp_path,
        "--judge-deadline-s",
        "1.5",
        "--judge-breaker-open-s",
        "1",
        "--metrics-port",
        "0",
    )
    children.append(pipe)
    # 20 events in 4 judge requests: the circuit opens during the first ones and refuses the rest.
    pipe.env["EVALSTREAM_PIPELINE_JUDGE_BATCH_SIZE"] = "5"
    pipe.start(timeout=60)
    try:
        produce(
            broker.bootstrap,
            t.events,
            [event_json(f"d{i}-{unique}", when=datetime.now(UTC)) for i in range(20)],
        )
        reader.until(lambda r: len(r[t.dead]) >= 20, timeout=60, what="dead letters while the judge is down")
        letters = [verdict_pb2.DeadLetter.FromString(m.value) for m in reader.records[t.dead]]
        assert {d.error_type for d in letters} == {"judge_unavailable"}
        # The pipeline's own /metrics shows the tier's circuit open and the calls it refused.
        metrics = pipeline_metrics(pipe)
        assert metrics[("evalstream_pipeline_judge_circuit_state", (("state", "closed"), ("tier", "0")))] == 0
        assert metrics[("evalstream_pipeline_judge_circuit_rejected_total", (("tier", "0"),))] > 0
        # The first calls wait out their deadline (UNAVAILABLE); once the tier's circuit opens, fail fast.
        assert all(
            d.stage == "judge" and ("UNAVAILABLE" in d.message or "circuit open" in d.message)
            for d in letters
        )

        judge = start_rules_judge(port, tmp_path, children)
        try:
            send_until_judged(broker.bootstrap, t, reader, prefix=f"e-{unique}", per_wave=5)
        finally:
            judge.stop()
        assert pipe.alive
        wait_until(
            lambda: (
                pipeline_metrics(pipe)[
                    ("evalstream_pipeline_judge_circuit_state", (("state", "closed"), ("tier", "0")))
                ]
                == 1
            ),
            timeout=30,
            what="the pipeline's circuit for tier 0 to show closed on /metrics",
        )
        assert pipeline_metrics(pipe)[("evalstream_pipeline_batches_total", ())] >= 2
        later = [verdict_pb2.DeadLetter.FromString(m.value) for m in reader.records[t.dead]][len(letters) :]
        assert all("circuit open" in d.message for d in later), [d.message for d in later][:3]
    finally:
        pipe.stop()
        reader.close()


def start_rules_judge(port: int, log_dir: Path, children: list[ChildProcess]) -> ChildProcess:
    """A tier-0 judge server on ``port``, started (for a judge that was down and comes back)."""
    judge = servers.judge_server("rules", name="judge-late", port=port, log_file=log_dir / "judge.log")
    children.append(judge)
    judge.start(timeout=60)
    return judge


def send_until_judged(bootstrap: str, t: Topics, reader: TopicReader, *, prefix: str, per_wave: int) -> None:
    """Produce small waves of events until a verdict comes back. After a judge comes back its tier's
    circuit is still open: events fail fast until the cool-down lets a probe through, which closes it."""
    deadline = time.monotonic() + 60
    wave = 0
    while not reader.records[t.verdicts]:
        assert time.monotonic() < deadline, "no verdict within 60s of the judge coming back"
        produce(
            bootstrap,
            t.events,
            [event_json(f"{prefix}-{wave}.{i}", when=datetime.now(UTC)) for i in range(per_wave)],
        )
        wave += 1
        with contextlib.suppress(TimeoutError):
            reader.until(lambda r: bool(r[t.verdicts]), timeout=2, what="a verdict")


def pipeline_metrics(pipe: ChildProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on the pipeline's /metrics, keyed by (name, sorted labels)."""
    address = pipe.await_line(METRICS_READY)["address"]
    text = httpx.get(f"http://{address}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_xstest_replay_with_malformed_events_balances_exactly(
    broker: EmbeddedBroker, judge_tier0: str, unique: str, tmp_path: Path, children: list[ChildProcess]
) -> None:
    """The issue's acceptance test: all XSTest v2 completions plus 5% malformed events, through the
    real broker, pipeline process and judge process; in = unsampled + verdicts + dead letters."""
    t = Topics(unique)
    t.create(broker.bootstrap, events=False)  # replay creates the events topic, sized for oversized events
    kafka = KafkaSettings(bootstrap=broker.bootstrap)
    report = run_replay(
        ReplayOptions(topic=t.events, malformed=0.05, seed=7, run_id=unique), kafka, show_progress=False
    )
    assert report.failed == {} or sum(report.failed.values()) == 0, report.first_error
    assert report.total_sent >= 2250 and report.expected_dead_letters >= 0.04 * report.total_sent

    sampling = tmp_path / "sampling.yaml"
    sampling.write_text("default_rate: 0.7\n")  # some events are left unsampled, and counted
    pipe = pipeline_process(
        broker,
        judge_tier0,
        t,
        unique,
        tmp_path,
        "--exit-when-idle-s",
        "4",
        "--sampling-config",
        str(sampling),
    )
    children.append(pipe)
    pipe.start(timeout=60)
    assert pipe.wait(300) == 0, pipe.output()[-3000:]

    reader = TopicReader(broker.bootstrap, [t.verdicts, t.summaries, t.dead])
    reader.until(lambda r: len(r[t.summaries]) > 0, timeout=30, what="summaries")
    reader.settle(2.0)
    verdicts = [verdict_pb2.Verdict.FromString(m.value) for m in reader.records[t.verdicts]]
    dead = [verdict_pb2.DeadLetter.FromString(m.value) for m in reader.records[t.dead]]
    summaries = [summary_pb2.Summary.FromString(m.value) for m in reader.records[t.summaries]]
    reader.close()

    unsampled = sum(s.unsampled for s in summaries if s.dimension == "")
    events_in = sum(s.events_in for s in summaries if s.dimension == "")
    assert events_in == report.total_sent
    assert unsampled + len(verdicts) + len(dead) == report.total_sent
    assert len(dead) == report.expected_dead_letters
    assert 0 < unsampled < report.good
    ids = [v.event_id for v in verdicts]
    assert len(ids) == len(set(ids)), "a verdict was written twice"
    by_reason = collections.Counter(d.error_type for d in dead)
    for kind, count in report.sent.items():
        if kind.value != "good":
            assert by_reason[EXPECTED_REASON[kind.value]] >= count, (kind, by_reason)
    assert all(d.message and d.stage for d in dead)
    assert {v.model for v in verdicts} == {
        "gpt4",
        "llama2new",
        "llama2orig",
        "mistralguard",
        "mistralinstruct",
    }


EXPECTED_REASON = {
    "invalid_json": "invalid_json",
    "missing_field": "missing_field",
    "wrong_type": "invalid_value",
    "unknown_field": "unknown_field",
    "oversized": "oversized",
    "stale_event_time": "stale_event_time",
    "future_event_time": "future_event_time",
    "duplicate_event_id": "duplicate_event_id",
    "protobuf_garbage": "invalid_protobuf",
}
