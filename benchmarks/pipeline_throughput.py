"""Pipeline throughput and end-to-end lag on real parts, against a same-run baseline.

    .venv/bin/python benchmarks/pipeline_throughput.py [--events 20000] [--rate 1000] [--seconds 20]

1. Starts a fresh embedded broker (Apache Kafka, one KRaft node; its start time, storage format
   included, until the admin API answers, is reported) and produces ``--events`` XSTest v2 events
   (real completions, unique ids) to a 4-partition topic.
2. Baselines: the raw consume rate (read_committed, no processing) of the pipeline's Kafka client
   (kafka-python) and of librdkafka (confluent-kafka) on the same topic.
3. The pipeline (micro-batches on Beam's in-process runner, tier-0 judge over gRPC in its own
   process, outputs and offsets in one transaction per batch) over the same events.
4. Lag: the pipeline as its own process while events are produced at ``--rate`` per second for
   ``--seconds``; lag = time a verdict is readable (read_committed) minus the event's time.

Prints a table and writes JSON to benchmarks/results/pipeline_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer
from rich.console import Console
from rich.table import Table

from evalstream.evaluation.datasets import read_xstest
from evalstream.kafka.admin import ensure_topics
from evalstream.local import servers
from evalstream.local.broker import EmbeddedBroker
from evalstream.pipeline.microbatch import MicroBatchRunner
from evalstream.pipeline.settings import PipelineSettings
from evalstream.runtime.settings import KafkaSettings
from evalstream.tools.replay import build_event
from evalstream.v1 import verdict_pb2

RESULTS = Path(__file__).resolve().parent / "results"


def produce(bootstrap: str, topic: str, n: int, rate: float = 0.0) -> float:
    """Send ``n`` XSTest events, each stamped with the time it is sent, optionally paced at ``rate``
    per second; returns records/s achieved."""
    records = read_xstest()
    run = uuid.uuid4().hex[:8]
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, batch_size=256 * 1024)
    start = time.monotonic()
    for i in range(n):
        if rate:
            ahead = start + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        event = build_event(
            records[i % len(records)], event_id=f"bench-{run}-{i}", event_time=datetime.now(UTC)
        )
        producer.send(topic, key=event.event_id.encode(), value=event.model_dump_json().encode())
    producer.flush()
    producer.close()
    return n / (time.monotonic() - start)


def raw_consume_rate(bootstrap: str, topic: str, n: int) -> float:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_poll_records=5000,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    seen = 0
    first: float | None = None
    while seen < n:
        for messages in consumer.poll(timeout_ms=500).values():
            if first is None:
                first = time.monotonic()
            seen += len(messages)
    rate = n / (time.monotonic() - (first or time.monotonic()))
    consumer.close()
    return rate


def raw_consume_rate_librdkafka(bootstrap: str, topic: str, n: int) -> float:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-rd-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    seen = 0
    first: float | None = None
    while seen < n:
        messages = consumer.consume(num_messages=5000, timeout=0.5)
        for m in messages:
            if m.error() is not None:
                raise RuntimeError(f"librdkafka consumer: {m.error()}")
        if messages and first is None:
            first = time.monotonic()
        seen += len(messages)
    rate = n / (time.monotonic() - (first or time.monotonic()))
    consumer.close()
    return rate


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of a process, from /proc (Linux)."""
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events for the throughput phase")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s produced in the lag phase")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the lag phase")
    parser.add_argument("--out", type=Path, default=RESULTS / "pipeline_throughput.json")
    args = parser.parse_args()
    console = Console()

    with tempfile.TemporaryDirectory(prefix="evalstream-bench-") as tmp:
        broker = EmbeddedBroker(data_dir=Path(tmp) / "broker")
        began = time.monotonic()
        broker.start()
        broker_start_s = time.monotonic() - began
        judge = servers.judge_server("rules", name="judge-tier0", log_file=Path(tmp) / "judge.log")
        kafka = KafkaSettings(bootstrap=broker.bootstrap)
        try:
            judge_address = judge.start()
            topic = f"bench-events-{uuid.uuid4().hex[:6]}"
            ensure_topics(kafka, {topic: 4})
            console.print(f"producing {args.events} XSTest events ...")
            produce_rate = produce(broker.bootstrap, topic, args.events)

            console.print("baselines: raw consume, kafka-python and librdkafka ...")
            raw_rate = raw_consume_rate(broker.bootstrap, topic, args.events)
            raw_rd_rate = raw_consume_rate_librdkafka(broker.bootstrap, topic, args.events)

            console.print("pipeline over the same events ...")
            settings = PipelineSettings(
                input_topic=topic,
                judges=f"0={judge_address}",
                group_id=f"bench-{uuid.uuid4().hex[:6]}",
                transactional_id=f"bench-{uuid.uuid4().hex[:6]}",
                exit_when_idle_s=3.0,
            )
            stats = MicroBatchRunner(settings, kafka).run()
            assert stats.events_in == args.events, stats

            console.print(
                f"lag: {args.rate:g} events/s for {args.seconds:g}s into a running pipeline process ..."
            )
            lag_topic = f"bench-lag-{uuid.uuid4().hex[:6]}"
            verdicts_topic = f"bench-verdicts-{uuid.uuid4().hex[:6]}"
            ensure_topics(kafka, {lag_topic: 4, verdicts_topic: 4})
            pipe = servers.pipeline(
                "--bootstrap",
                broker.bootstrap,
                "--judges",
                f"0={judge_address}",
                "--input-topic",
                lag_topic,
                "--verdicts-topic",
                verdicts_topic,
                "--group-id",
                f"lag-{uuid.uuid4().hex[:6]}",
                "--transactional-id",
                f"lag-{uuid.uuid4().hex[:6]}",
                log_file=Path(tmp) / "pipeline.log",
            )
            pipe.start()
            n_lag = int(args.rate * args.seconds)
            consumer = KafkaConsumer(
                verdicts_topic,
                bootstrap_servers=broker.bootstrap,
                auto_offset_reset="earliest",
                isolation_level="read_committed",
                group_id=None,
            )
            lags: list[float] = []
            producer_thread = threading.Thread(
                target=produce, args=(broker.bootstrap, lag_topic, n_lag, args.rate)
            )
            producer_thread.start()
            deadline = time.monotonic() + args.seconds + 60
            while len(lags) < n_lag and time.monotonic() < deadline:
                for messages in consumer.poll(timeout_ms=100).values():
                    now = datetime.now(UTC)
                    for m in messages:
                        verdict = verdict_pb2.Verdict.FromString(m.value)
                        lags.append((now - verdict.event_time.ToDatetime(tzinfo=UTC)).total_seconds())
            producer_thread.join()
            consumer.close()
            broker_rss = rss_mb(broker.pid)
            pipe.stop()
        finally:
            judge.stop()
            broker.stop()

    result = {
        "broker_start_s": round(broker_start_s, 2),
        "broker_rss_mb_after_run": broker_rss,
        "events": args.events,
        "produce_events_per_s": round(produce_rate),
        "raw_consume_events_per_s": round(raw_rate),
        "raw_consume_librdkafka_events_per_s": round(raw_rd_rate),
        "pipeline_events_per_s": round(stats.busy_rate),
        "pipeline_vs_raw": round(stats.busy_rate / raw_rate, 3),
        "pipeline_batches": stats.batches,
        "pipeline_beam_s": round(stats.beam_s, 2),
        "pipeline_write_commit_s": round(stats.write_s, 2),
        "lag_rate_events_per_s": args.rate,
        "lag_events": n_lag,
        "lag_verdicts_seen": len(lags),
        "lag_p50_s": round(percentile(lags, 50), 3) if lags else None,
        "lag_p95_s": round(percentile(lags, 95), 3) if lags else None,
        "lag_max_s": round(max(lags), 3) if lags else None,
    }
    table = Table(title="pipeline throughput (tier 0, real broker, one run)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, str(value))
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
