"""Exporter throughput against the raw consume rate, and the cost of the label budget.

    .venv/bin/python benchmarks/exporter.py [--verdicts 100000] [--summary-every 50]

1. On a fresh embedded broker, produces ``--verdicts`` Verdicts (two dimensions each) and one
   event-level Summary per ``--summary-every`` verdicts, in transactions, into unique topics.
2. In one run, over the same records: the raw consume rate of the Kafka client the exporter uses
   (kafka-python, read_committed); the same consume loop applying every record to the exporter
   core; the core alone on records already in memory; and the whole exporter shell (consumer
   group, state saved and offsets committed every second) until it has applied everything.
3. The label budget at 1x, 10x and 100x the default caps, each in a fresh process: as many distinct
   model / version / route values as the caps allow, every dimension label and dead-letter reason;
   then the series count, the time to render /metrics (median of 5), the state file's size and
   save time, the apply rate while the series are created, and the process's resident memory.

Prints a table and writes JSON to benchmarks/results/exporter.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry, generate_latest
from rich.console import Console
from rich.table import Table

from evalstream.exporter.consumer import Exporter
from evalstream.exporter.core import ExporterCore, Stream
from evalstream.exporter.labels import DEFAULT_CAPS, LabelBudget, LabelName
from evalstream.exporter.settings import ExporterSettings
from evalstream.exporter.state import SavedState, StateFile
from evalstream.kafka.admin import ensure_topics
from evalstream.local.broker import EmbeddedBroker
from evalstream.runtime.settings import KafkaSettings
from evalstream.v1 import summary_pb2, verdict_pb2
from evalstream.wire.dimensions import RefusalLabel, quality_label

RESULTS = Path(__file__).resolve().parent / "results"
REASONS = (
    "oversized", "unsupported_content_type", "invalid_json", "invalid_protobuf", "missing_field",
    "unknown_field", "invalid_value", "stale_event_time", "future_event_time", "duplicate_event_id",
    "judge_unavailable", "judge_rejected", "judge_item_error",
)  # fmt: skip


def verdict(i: int, model: str, version: str, route: str, now: float) -> verdict_pb2.Verdict:
    score = float(1 + i % 10)
    tried = [0] if i % 4 else [0, 1, 2]
    return verdict_pb2.Verdict(
        event_id=f"e{i}",
        model=model,
        model_version=version,
        route=route,
        event_time=Timestamp(seconds=int(now) - 2),
        judged_at=Timestamp(seconds=int(now)),
        sample_rate=0.1,
        dimensions=[
            verdict_pb2.DimensionVerdict(
                dimension="refusal",
                label=list(RefusalLabel)[i % 3],
                score=0.3,
                confidence=0.9,
                deciding_tier=0,
                tiers_tried=[0],
                cost=verdict_pb2.Cost(latency_ms=0.05),
            ),
            verdict_pb2.DimensionVerdict(
                dimension="quality",
                label=quality_label(score),
                score=score,
                confidence=0.8,
                deciding_tier=tried[-1],
                tiers_tried=tried,
                cost=verdict_pb2.Cost(input_tokens=400, output_tokens=8, latency_ms=350.0, usd=0.0004),
                needs_audit=i % 9 == 0,
            ),
        ],
    )


def summary(i: int, model: str, version: str, route: str, judged: int) -> summary_pb2.Summary:
    s = summary_pb2.Summary(batch_id=f"b{i}", model=model, model_version=version, route=route)
    s.judged, s.unsampled, s.dead_lettered = judged, 9 * judged, 2
    s.events_in = s.judged + s.unsampled + s.dead_lettered
    s.dead_letter_reasons.update({REASONS[i % len(REASONS)]: 1, REASONS[(i + 1) % len(REASONS)]: 1})
    s.response_chars_sum = 700.0 * judged
    return s


def records(n_verdicts: int, summary_every: int, keys: int = 4) -> Iterator[tuple[Stream, bytes]]:
    """A realistic mix: a few (model, version, route) keys, one summary per ``summary_every`` verdicts."""
    now = time.time()
    for i in range(n_verdicts):
        k = i % keys
        yield Stream.VERDICTS, verdict(i, f"model-{k}", "v1", "chat", now).SerializeToString()
        if (i + 1) % summary_every == 0:
            yield Stream.SUMMARIES, summary(i, f"model-{k}", "v1", "chat", summary_every).SerializeToString()


# --- throughput on the broker ------------------------------------------------------------------


def produce(bootstrap: str, topics: dict[Stream, str], items: list[tuple[Stream, bytes]]) -> float:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"bench-{uuid.uuid4().hex[:8]}", linger_ms=5,
        batch_size=256 * 1024,
    )  # fmt: skip
    producer.init_transactions()
    start = time.monotonic()
    for offset in range(0, len(items), 5000):
        producer.begin_transaction()
        for stream, value in items[offset : offset + 5000]:
            producer.send(topics[stream], value=value)
        producer.commit_transaction()
    seconds = time.monotonic() - start
    producer.close()
    return len(items) / seconds


def consume(bootstrap: str, topics: dict[Stream, str], expected: int, core: ExporterCore | None) -> float:
    """Records/s of one read_committed pass over the topics, applying to ``core`` when given."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False,
        max_poll_records=2000, fetch_max_bytes=64 * 1024 * 1024,
    )  # fmt: skip
    streams = {topic: stream for stream, topic in topics.items()}
    parts = [TopicPartition(t, p) for t in streams for p in sorted(consumer.partitions_for_topic(t) or ())]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    seen = 0
    start = time.monotonic()
    while seen < expected:
        for tp, batch in consumer.poll(timeout_ms=500).items():
            seen += len(batch)
            if core is not None:
                stream = streams[tp.topic]
                for record in batch:
                    core.apply_bytes(stream, record.value, record.timestamp)
        if time.monotonic() - start > 600:
            raise TimeoutError(f"consumed {seen} of {expected} records in 600 s")
    seconds = time.monotonic() - start
    consumer.close()
    return seen / seconds


def apply_only(items: list[tuple[Stream, bytes]], repeat: int = 3) -> float:
    rates = []
    for _ in range(repeat):
        core = ExporterCore(CollectorRegistry())
        start = time.perf_counter()
        for stream, value in items:
            core.apply_bytes(stream, value, 1)
        rates.append(len(items) / (time.perf_counter() - start))
    return statistics.median(rates)


def shell(bootstrap: str, topics: dict[Stream, str], expected: int, state_dir: Path) -> dict[str, float]:
    settings = ExporterSettings(
        verdicts_topic=topics[Stream.VERDICTS],
        summaries_topic=topics[Stream.SUMMARIES],
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        state_file=state_dir / "state.json",
        pipeline_group="",
        flush_interval_s=1.0,
    )
    registry = CollectorRegistry()
    exporter = Exporter(settings, KafkaSettings(bootstrap=bootstrap), registry)
    exporter.open()
    stop = threading.Event()
    runner = threading.Thread(target=exporter.run, args=(stop,))
    start = time.monotonic()
    runner.start()
    first_record: float | None = None
    while exporter.applied < expected:
        if first_record is None and exporter.applied:
            first_record = time.monotonic()
        if time.monotonic() - start > 600:
            raise TimeoutError(f"the exporter applied {exporter.applied} of {expected} records in 600 s")
        stop.wait(0.01)
    done = time.monotonic()
    stop.set()
    runner.join()
    exporter.close()
    saves = registry.get_sample_value("evalstream_exporter_save_duration_seconds_count") or 0.0
    save_sum = registry.get_sample_value("evalstream_exporter_save_duration_seconds_sum") or 0.0
    return {
        "records_per_s": expected / (done - (first_record or start)),
        "saves": saves,
        "mean_save_ms": 1000 * save_sum / saves if saves else 0.0,
    }


# --- the label budget, one scale per process ---------------------------------------------------


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def label_scale(scale: int) -> dict[str, float]:
    """Fill every cap of ``scale`` x the default budget, then measure /metrics and the state file."""
    rss_before = _rss_mib()
    budget = LabelBudget().scaled(scale)
    registry = CollectorRegistry()
    core = ExporterCore(registry, budget)
    n_keys = budget.cap(LabelName.MODEL)
    now = time.time()
    applied = 0
    start = time.perf_counter()
    for i in range(n_keys * 4):  # four verdicts per key reach every tier and label of both dimensions
        k = i % n_keys
        core.apply_verdict(verdict(i, f"model-{k}", f"v{k}", f"route-{k}", now))
        applied += 1
    for i in range(n_keys * len(REASONS)):
        k = i % n_keys
        core.apply_summary(summary(i, f"model-{k}", f"v{k}", f"route-{k}", 10))
        applied += 1
    apply_s = time.perf_counter() - start
    core.publish()
    scrape = []
    size = 0
    for _ in range(5):
        t = time.perf_counter()
        size = len(generate_latest(registry))
        scrape.append(time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as tmp:
        file = StateFile(path=Path(tmp) / "state.json")
        t = time.perf_counter()
        state_bytes = file.save(SavedState(core=core.state(), offsets={("v", 0): 1}))
        save_s = time.perf_counter() - t
    return {
        "scale": scale,
        "model_values": n_keys,
        "series": core.collector.published.series_count(),
        "fill_records_per_s": applied / apply_s,
        "scrape_ms": 1000 * statistics.median(scrape),
        "exposition_kib": size / 1024,
        "state_kib": state_bytes / 1024,
        "save_ms": 1000 * save_s,
        "rss_mib": _rss_mib(),
        "rss_growth_mib": _rss_mib() - rss_before,
    }


# --- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verdicts", type=int, default=100_000)
    parser.add_argument("--summary-every", type=int, default=50)
    parser.add_argument("--scales", default="1,10,100")
    parser.add_argument("--out", type=Path, default=RESULTS / "exporter.json")
    parser.add_argument("--label-scale-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.label_scale_worker:
        print(json.dumps(label_scale(args.label_scale_worker)))
        return

    console = Console(width=130)
    items = list(records(args.verdicts, args.summary_every))
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "records": len(items),
        "verdicts": args.verdicts,
        "default_caps": {str(k): v for k, v in DEFAULT_CAPS.items()},
    }
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(data_dir=Path(tmp) / "broker") as broker:
        run = uuid.uuid4().hex[:8]
        topics = {Stream.VERDICTS: f"bench-verdicts-{run}", Stream.SUMMARIES: f"bench-summaries-{run}"}
        ensure_topics(
            KafkaSettings(bootstrap=broker.bootstrap),
            {topics[Stream.VERDICTS]: 4, topics[Stream.SUMMARIES]: 1},
        )
        with console.status("producing"):
            result["produce_records_per_s"] = produce(broker.bootstrap, topics, items)
        with console.status("raw consume"):
            result["raw_consume_records_per_s"] = consume(broker.bootstrap, topics, len(items), None)
        with console.status("consume + apply"):
            result["consume_apply_records_per_s"] = consume(
                broker.bootstrap, topics, len(items), ExporterCore(CollectorRegistry())
            )
        with console.status("core alone"):
            result["apply_only_records_per_s"] = apply_only(items)
        with console.status("exporter shell"):
            result["shell"] = shell(broker.bootstrap, topics, len(items), Path(tmp))

    scales = []
    for scale in (int(s) for s in args.scales.split(",")):
        with console.status(f"label budget {scale}x"):
            out = subprocess.run(
                [sys.executable, __file__, "--label-scale-worker", str(scale)],
                capture_output=True, text=True, check=True, timeout=1800,
            )  # fmt: skip
            scales.append(json.loads(out.stdout.strip().splitlines()[-1]))
    result["label_budget"] = scales

    table = Table(title=f"exporter: {len(items):,} records ({args.verdicts:,} verdicts), 4 partitions")
    table.add_column("what")
    table.add_column("records/s", justify="right")
    raw = result["raw_consume_records_per_s"]
    for name, key in (
        ("produce (transactions of 5,000)", "produce_records_per_s"),
        ("raw consume (kafka-python, read_committed)", "raw_consume_records_per_s"),
        ("consume + apply (same client, same topics)", "consume_apply_records_per_s"),
        ("core alone (records in memory)", "apply_only_records_per_s"),
    ):
        table.add_row(
            name,
            f"{result[key]:,.0f}"
            + (f"  ({result[key] / raw:.0%} of raw)" if key != "produce_records_per_s" else ""),
        )
    sh = result["shell"]
    table.add_row(
        f"exporter shell (save + commit every 1 s: {sh['saves']:.0f} x {sh['mean_save_ms']:.1f} ms)",
        f"{sh['records_per_s']:,.0f}  ({sh['records_per_s'] / raw:.0%} of raw)",
    )
    console.print(table)
    budget = Table(title="label budget (each scale in a fresh process)")
    for column in ("scale", "models", "series", "fill rec/s", "scrape ms", "scrape KiB", "state KiB",
                   "save ms", "RSS MiB"):  # fmt: skip
        budget.add_column(column, justify="right")
    for s in scales:
        budget.add_row(
            f"{s['scale']}x",
            f"{s['model_values']:,}",
            f"{s['series']:,}",
            f"{s['fill_records_per_s']:,.0f}",
            f"{s['scrape_ms']:,.1f}",
            f"{s['exposition_kib']:,.0f}",
            f"{s['state_kib']:,.0f}",
            f"{s['save_ms']:,.1f}",
            f"{s['rss_mib']:,.0f} (+{s['rss_growth_mib']:,.0f})",
        )
    console.print(budget)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
