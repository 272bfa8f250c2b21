"""Pipeline throughput and end-to-end lag on real parts, old runner against new, with same-run ceilings.

    .venv/bin/python benchmarks/pipeline_throughput.py [--events 20000] [--rate 1000] [--seconds 20]
        [--baseline-rev df0a8b5]

1. Starts a fresh embedded broker (Apache Kafka, one KRaft node; its start time, storage format
   included, until the admin API answers, is reported) and a tier-0 judge server, and produces
   ``--events`` XSTest v2 events (real completions, unique ids) to a 4-partition topic.
2. Ceilings, measured on the same events: the raw consume rate (read_committed, no processing) of the
   pipeline's Kafka client (kafka-python) and of librdkafka (confluent-kafka); and the tier-0 judge's
   own capacity: the events sent straight to it through the pipeline's judge client, in requests of
   the pipeline's size with as many in flight as the pipeline keeps.
3. The pipeline over the same events (each run its own consumer group), as its own process, for the
   **old** runner (``--baseline-rev``, checked out with ``git worktree add`` into a temporary folder and
   run with ``PYTHONPATH`` on its four source roots) and the **new** one (this checkout), interleaved:
   every event judged (sampling rate 1, the judge bounds it), then with sampling rate 0 (no judge
   calls: the runner's own cost against raw consume).
4. Lag: each runner as a pipeline process while events are produced at ``--rate`` per second for
   ``--seconds``; lag = time a verdict is readable (read_committed) minus the event's time.

The load average is recorded before and after: the machine may be shared, so compare each figure with
its same-run ceilings. Prints a table and writes JSON to benchmarks/results/pipeline_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SOURCE_ROOTS = ("src", "pipelines", "services", "protos")
#: main before the batch-level runner (issue 15): per-record Beam transforms, writes after each batch.
BASELINE_REV = "df0a8b5"
#: The pipeline's judge request size and requests in flight (``PipelineSettings``, ``JudgeCascade``).
JUDGE_BATCH = 256
JUDGE_IN_FLIGHT = 2


def produce(bootstrap: str, topic: str, n: int, rate: float = 0.0) -> float:
    """Send ``n`` XSTest events, each stamped with the time it is sent, optionally paced at ``rate``
    per second; returns records/s achieved."""
    from evalstream.evaluation.datasets import read_xstest
    from evalstream.tools.replay import build_event

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


def topic_reader(bootstrap: str, topic: str, group: str) -> KafkaConsumer:
    """A read_committed consumer of ``topic`` from its start, in a fresh group named after ``group``."""
    return KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{group}-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_poll_records=5000,
        fetch_max_bytes=64 * 1024 * 1024,
    )


def raw_consume_rate(bootstrap: str, topic: str, n: int) -> float:
    consumer = topic_reader(bootstrap, topic, "raw")
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


def judge_capacity(bootstrap: str, topic: str, n: int, judge_address: str) -> float:
    """Items/s of the tier-0 judge on the topic's events: decoded once beforehand, then sent through
    the pipeline's judge client in requests of ``JUDGE_BATCH`` with ``JUDGE_IN_FLIGHT`` in flight,
    asking for the default cascade's dimensions."""
    from evalstream.pipeline.judge_client import JudgeClient, RetryPolicy
    from evalstream.v1 import judge_pb2
    from evalstream.wire.cascade_config import default_cascade
    from evalstream.wire.contract import LLMEventIn, to_proto

    consumer = topic_reader(bootstrap, topic, "judge-cap")
    values: list[bytes] = []
    while len(values) < n:
        for messages in consumer.poll(timeout_ms=500).values():
            values += [m.value for m in messages]
    consumer.close()
    events = [to_proto(LLMEventIn.model_validate_json(v)) for v in values]
    dimensions = sorted(default_cascade().dimensions)
    requests = [
        judge_pb2.JudgeRequest(
            items=[judge_pb2.JudgeItem(item_id=e.event_id, event=e) for e in events[i : i + JUDGE_BATCH]],
            dimensions=dimensions,
        )
        for i in range(0, len(events), JUDGE_BATCH)
    ]
    client = JudgeClient(judge_address, tier=0, policy=RetryPolicy(deadline_s=60, attempt_timeout_s=30))
    try:
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=JUDGE_IN_FLIGHT) as pool:
            answered = sum(len(r.results) for r in pool.map(client.judge, requests))
        elapsed = time.monotonic() - start
    finally:
        client.close()
    if answered != len(events):
        raise RuntimeError(f"judge answered {answered} of {len(events)} items")
    return len(events) / elapsed


def run_pipeline_here(spec: dict[str, Any]) -> dict[str, Any]:
    """One MicroBatchRunner over ``spec``'s topic until idle, in this process (the subprocess entry:
    only imports that every revision has)."""
    import resource

    from evalstream.pipeline.microbatch import MicroBatchRunner
    from evalstream.pipeline.settings import PipelineSettings
    from evalstream.runtime.settings import KafkaSettings

    settings = PipelineSettings(**spec["settings"])
    before = resource.getrusage(resource.RUSAGE_SELF)
    stats = MicroBatchRunner(settings, KafkaSettings(bootstrap=spec["bootstrap"])).run()
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "events": stats.events_in,
        "verdicts": stats.verdicts,
        "unsampled": stats.unsampled,
        "dead": stats.dead,
        "events_per_s": round(stats.busy_rate),
        "batches": stats.batches,
        "beam_s": round(stats.beam_s, 2),
        "write_commit_s": round(stats.write_s, 2),
        "cpu_us_per_event": round(cpu / max(stats.events_in, 1) * 1e6),
    }


class Revision:
    """A runner to measure: this checkout, or another revision in a temporary git worktree."""

    def __init__(self, name: str, checkout: Path) -> None:
        self.name = name
        self.checkout = checkout
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(str(checkout / r) for r in SOURCE_ROOTS),
            "EVALSTREAM_DATA_DIR": os.environ.get(
                "EVALSTREAM_DATA_DIR", str(ROOT.parent / "shared" / "data")
            ),
        }

    def run_pipeline(self, bootstrap: str, settings: dict[str, Any]) -> dict[str, Any]:
        spec = json.dumps({"bootstrap": bootstrap, "settings": settings})
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--run-pipeline", spec],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{self.name} pipeline failed ({done.returncode}):\n{done.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result


def worktree(rev: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev], check=True,
                   capture_output=True)  # fmt: skip
    return where


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]
    )


def lag_phase(
    revision: Revision, bootstrap: str, judge_address: str, rate: float, seconds: float, log_dir: Path
) -> dict[str, Any]:
    """The runner as a pipeline process; events produced at ``rate`` for ``seconds``; verdict lags."""
    from evalstream.kafka.admin import ensure_topics
    from evalstream.local import servers
    from evalstream.runtime.settings import KafkaSettings
    from evalstream.v1 import verdict_pb2

    tag = uuid.uuid4().hex[:6]
    lag_topic, verdicts_topic = f"bench-lag-{tag}", f"bench-verdicts-{tag}"
    ensure_topics(KafkaSettings(bootstrap=bootstrap), {lag_topic: 4, verdicts_topic: 4})
    pipe = servers.pipeline(
        "--bootstrap", bootstrap, "--judges", f"0={judge_address}", "--input-topic", lag_topic,
        "--verdicts-topic", verdicts_topic, "--group-id", f"lag-{tag}", "--transactional-id", f"lag-{tag}",
        log_file=log_dir / f"pipeline-{revision.name}.log",
        env={"PYTHONPATH": revision.env["PYTHONPATH"]},
    )  # fmt: skip
    pipe.start()
    n_lag = int(rate * seconds)
    consumer = KafkaConsumer(
        verdicts_topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        group_id=None,
    )
    lags: list[float] = []
    try:
        producer_thread = threading.Thread(target=produce, args=(bootstrap, lag_topic, n_lag, rate))
        producer_thread.start()
        deadline = time.monotonic() + seconds + 60
        while len(lags) < n_lag and time.monotonic() < deadline:
            for messages in consumer.poll(timeout_ms=100).values():
                now = datetime.now(UTC)
                for m in messages:
                    verdict = verdict_pb2.Verdict.FromString(m.value)
                    lags.append((now - verdict.event_time.ToDatetime(tzinfo=UTC)).total_seconds())
        producer_thread.join()
    finally:
        consumer.close()
        pipe.stop()
    return {
        "lag_events": n_lag,
        "lag_verdicts_seen": len(lags),
        "lag_p50_s": round(percentile(lags, 50), 3) if lags else None,
        "lag_p95_s": round(percentile(lags, 95), 3) if lags else None,
        "lag_max_s": round(max(lags), 3) if lags else None,
    }


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of a process, from /proc (Linux)."""
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def git_rev(where: Path) -> str:
    done = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True)  # fmt: skip
    dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    return done.stdout.strip() + ("+changes" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events for the throughput phase")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s produced in the lag phase")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each lag phase")
    parser.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the old runner")
    parser.add_argument("--out", type=Path, default=RESULTS / "pipeline_throughput.json")
    parser.add_argument("--run-pipeline", metavar="JSON", help=argparse.SUPPRESS)  # the subprocess entry
    args = parser.parse_args()
    if args.run_pipeline:
        print(json.dumps(run_pipeline_here(json.loads(args.run_pipeline))))
        return

    from rich.console import Console
    from rich.table import Table

    from evalstream.kafka.admin import ensure_topics
    from evalstream.local import servers
    from evalstream.local.broker import EmbeddedBroker
    from evalstream.runtime.settings import KafkaSettings

    console = Console()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="evalstream-bench-") as tmp:
        old = Revision("old", worktree(args.baseline_rev, Path(tmp) / "baseline"))
        new = Revision("new", ROOT)
        rate0 = Path(tmp) / "rate0.yaml"
        rate0.write_text("default_rate: 0.0\nalways_negative_feedback: false\nalways_finish_reasons: []\n")
        broker = EmbeddedBroker(data_dir=Path(tmp) / "broker")
        began = time.monotonic()
        broker.start()
        broker_start_s = time.monotonic() - began
        judge = servers.judge_server("rules", name="judge-tier0", log_file=Path(tmp) / "judge.log")
        kafka = KafkaSettings(bootstrap=broker.bootstrap)
        runs: dict[str, dict[str, Any]] = {"old": {}, "new": {}}
        try:
            judge_address = judge.start()
            topic = f"bench-events-{uuid.uuid4().hex[:6]}"
            ensure_topics(kafka, {topic: 4})
            console.print(f"producing {args.events} XSTest events ...")
            produce_rate = produce(broker.bootstrap, topic, args.events)

            console.print("ceilings: raw consume (kafka-python, librdkafka), tier-0 judge capacity ...")
            raw_rate = raw_consume_rate(broker.bootstrap, topic, args.events)
            raw_rd_rate = raw_consume_rate_librdkafka(broker.bootstrap, topic, args.events)
            judge_rate = judge_capacity(broker.bootstrap, topic, args.events, judge_address)

            for label, extra in (("judged", {}), ("rate0", {"sampling_config": str(rate0)})):
                for revision in (old, new):
                    console.print(f"{revision.name} runner, {label}, over the same events ...")
                    settings = {
                        "input_topic": topic,
                        "judges": f"0={judge_address}",
                        "group_id": f"bench-{uuid.uuid4().hex[:6]}",
                        "transactional_id": f"bench-{uuid.uuid4().hex[:6]}",
                        "exit_when_idle_s": 3.0,
                        **extra,
                    }
                    got = revision.run_pipeline(broker.bootstrap, settings)
                    if got["events"] != args.events:
                        raise RuntimeError(f"{revision.name} runner saw {got['events']} of {args.events}")
                    runs[revision.name][label] = got

            for revision in (old, new):
                console.print(
                    f"{revision.name} runner: lag at {args.rate:g} events/s for {args.seconds:g}s ..."
                )
                runs[revision.name]["lag"] = lag_phase(
                    revision, broker.bootstrap, judge_address, args.rate, args.seconds, Path(tmp)
                )
            broker_rss = rss_mb(broker.pid)
        finally:
            judge.stop()
            broker.stop()
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old.checkout)],
                           check=False, capture_output=True)  # fmt: skip

    result: dict[str, Any] = {
        "old_rev": args.baseline_rev,
        "new_rev": git_rev(ROOT),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "broker_start_s": round(broker_start_s, 2),
        "broker_rss_mb_after_run": broker_rss,
        "events": args.events,
        "produce_events_per_s": round(produce_rate),
        "raw_consume_events_per_s": round(raw_rate),
        "raw_consume_librdkafka_events_per_s": round(raw_rd_rate),
        "judge_tier0_items_per_s": round(judge_rate),
        "lag_rate_events_per_s": args.rate,
    }
    for name, run in runs.items():
        judged, rate0_run = run["judged"], run["rate0"]
        result[name] = {
            "judged": judged,
            "judged_vs_raw": round(judged["events_per_s"] / raw_rate, 3),
            "judged_vs_judge": round(judged["events_per_s"] / judge_rate, 3),
            "rate0": rate0_run,
            "rate0_vs_raw": round(rate0_run["events_per_s"] / raw_rate, 3),
            **run["lag"],
        }

    load = f"{result['load_average_before'][0]} -> {result['load_average_after'][0]}"
    table = Table(title=f"pipeline throughput (tier 0, real broker, one run; load average {load})")
    table.add_column("measure")
    table.add_column(f"old ({args.baseline_rev})", justify="right")
    table.add_column(f"new ({result['new_rev']})", justify="right")
    for key in ("raw_consume_events_per_s", "raw_consume_librdkafka_events_per_s", "judge_tier0_items_per_s"):
        table.add_row(key + " (ceiling)", str(result[key]), str(result[key]))
    rows = [
        ("pipeline events/s, every event judged", lambda r: r["judged"]["events_per_s"]),
        ("  / raw consume (kafka-python)", lambda r: r["judged_vs_raw"]),
        ("  / tier-0 judge capacity", lambda r: r["judged_vs_judge"]),
        ("  time in Beam / write+commit (s)",
         lambda r: f"{r['judged']['beam_s']} / {r['judged']['write_commit_s']}"),
        ("  pipeline CPU per event (us)", lambda r: r["judged"]["cpu_us_per_event"]),
        ("pipeline events/s, sampling rate 0", lambda r: r["rate0"]["events_per_s"]),
        ("  / raw consume (kafka-python)", lambda r: r["rate0_vs_raw"]),
        ("  pipeline CPU per event (us)", lambda r: r["rate0"]["cpu_us_per_event"]),
        (f"lag at {args.rate:g}/s: p50 / p95 / max (s)",
         lambda r: f"{r['lag_p50_s']} / {r['lag_p95_s']} / {r['lag_max_s']}"),
        ("  verdicts seen / produced", lambda r: f"{r['lag_verdicts_seen']} / {r['lag_events']}"),
    ]  # fmt: skip
    for label, cell in rows:
        table.add_row(label, str(cell(result["old"])), str(cell(result["new"])))
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
