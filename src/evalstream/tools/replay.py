"""``evalstream replay``: real labelled traffic (XSTest v2) into Kafka as ``LLMEvent`` records.

The parts, each with its own docstring:

- ``replay_events``: the pure core: one event per XSTest completion (ids, fields, token estimates),
  the seeded plan (``plan_replay``), encoding (``encode_slot``), and the malformed kinds with the
  dead letter each must become downstream;
- ``replay_publish``: ``publish``, which drives any ``RecordSink`` at a pace (``RateLimiter``) and
  reports what was acknowledged (``ReplayReport``);
- this module: the Kafka and CLI shells (``KafkaSink``, ``prepare_topic``, ``run_replay``,
  ``replay_command``). Every public name of the parts can be imported from here.

Exceptions: ``ReplayError`` (Kafka unreachable, topic too small for oversized events,
records not acknowledged).
"""

from __future__ import annotations

import logging
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from evalstream.evaluation.datasets import XSTEST_MODELS, read_xstest
from evalstream.kafka import clients
from evalstream.kafka.clients import KafkaEdgeError
from evalstream.runtime.settings import KafkaSettings
from evalstream.runtime.tables import print_table
from evalstream.tools.options import BootstrapOption, DataDirOption, kafka_settings
from evalstream.tools.replay_events import (
    DEAD_LETTER_REASON,
    FAR,
    MALFORMED_KINDS,
    OVERSIZED_RESPONSE_BYTES,
    REQUIRED_FIELDS,
    UNKNOWN_FIELDS,
    WRONG_TYPES,
    Encoding,
    EventKind,
    OutgoingRecord,
    Slot,
    build_event,
    duplicate,
    encode_slot,
    estimate_tokens,
    event_id_for,
    plan_replay,
    planned_total,
)
from evalstream.tools.replay_publish import Done, RateLimiter, RecordSink, ReplayReport, publish
from evalstream.wire import topics
from evalstream.wire.contract import now_utc

__all__ = [
    "DEAD_LETTER_REASON",
    "FAR",
    "KAFKA_DEFAULT_MAX_MESSAGE_BYTES",
    "MALFORMED_KINDS",
    "MAX_RECORD_BYTES",
    "OVERSIZED_RESPONSE_BYTES",
    "REQUIRED_FIELDS",
    "UNKNOWN_FIELDS",
    "WRONG_TYPES",
    "Done",
    "Encoding",
    "EventKind",
    "KafkaSink",
    "OutgoingRecord",
    "RateLimiter",
    "RecordSink",
    "ReplayError",
    "ReplayOptions",
    "ReplayReport",
    "Slot",
    "build_event",
    "duplicate",
    "encode_slot",
    "estimate_tokens",
    "event_id_for",
    "plan_replay",
    "planned_total",
    "prepare_topic",
    "publish",
    "replay_command",
    "run_replay",
    "summary_table",
]

log = logging.getLogger(__name__)

#: Producer ``max_request_size`` and the ``max.message.bytes`` of topics replay creates.
MAX_RECORD_BYTES: Final = 8 * 1024 * 1024
#: Kafka's default ``max.message.bytes``, assumed when a broker does not report the topic's value.
KAFKA_DEFAULT_MAX_MESSAGE_BYTES: Final = 1_048_588


class ReplayError(RuntimeError):
    """Replay could not publish what it planned; the message says what to change."""


# --- Kafka shell -----------------------------------------------------------------------------------


class KafkaSink:
    """A ``RecordSink`` over a kafka-python ``KafkaProducer``, for one topic."""

    def __init__(self, producer: Any, topic: str, flush_timeout_s: float = 120.0) -> None:
        self._producer = producer
        self._topic = topic
        self._flush_timeout_s = flush_timeout_s

    def send(self, record: OutgoingRecord, done: Done) -> None:
        try:
            future = self._producer.send(
                self._topic, key=record.key, value=record.value, headers=record.headers()
            )
        except KafkaError as exc:
            done(exc)
            return
        future.add_callback(lambda _metadata: done(None))
        future.add_errback(done)

    def flush(self) -> None:
        try:
            self._producer.flush(timeout=self._flush_timeout_s)
        except KafkaError as exc:
            raise ReplayError(
                f"records to {self._topic!r} not delivered within {self._flush_timeout_s}s"
            ) from exc


def prepare_topic(kafka: KafkaSettings, topic: str, *, partitions: int, needed_bytes: int) -> bool:
    """Create ``topic`` with ``partitions`` and ``max.message.bytes`` of ``MAX_RECORD_BYTES`` when it
    is missing (returns True). An existing topic must accept ``needed_bytes``-sized records."""
    try:
        admin = clients.admin(kafka)
    except KafkaEdgeError as exc:
        raise ReplayError(str(exc)) from exc
    try:
        if topic not in set(admin.list_topics()):
            configs = {"max.message.bytes": str(MAX_RECORD_BYTES)}
            try:
                admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=configs)])
                log.info("created topic %s (%s partitions, max.message.bytes=%s)", topic, partitions, configs)
                return True
            except TopicAlreadyExistsError:
                log.info("topic %s was created concurrently", topic)
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        entry = described.get("topic", {}).get(topic, {}).get("max.message.bytes")
        limit = int(entry["value"]) if entry else KAFKA_DEFAULT_MAX_MESSAGE_BYTES
        if limit < needed_bytes:
            raise ReplayError(
                f"topic {topic!r} accepts records up to {limit} bytes"
                f"{'' if entry else ' (Kafka default; the broker reports no value)'}, but oversized "
                f"events need {needed_bytes}: raise it (kafka-configs.sh --alter --entity-type topics "
                f"--entity-name {topic} --add-config max.message.bytes={MAX_RECORD_BYTES}), "
                "or replay into a new topic, or without --malformed"
            )
        return False
    except KafkaError as exc:
        raise ReplayError(str(clients.explain(kafka, f"preparing topic {topic!r}", exc))) from exc
    finally:
        admin.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayOptions:
    topic: str = topics.EVENTS
    models: tuple[str, ...] = tuple(XSTEST_MODELS)
    limit: int | None = None
    repeat: int = 1
    seed: int = 0
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    rate: float = 0.0
    malformed: float = 0.0
    encoding: Encoding = Encoding.JSON
    partitions: int = 4
    data_dir: Path | None = None


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:>8,.0f} events/s")


def run_replay(
    options: ReplayOptions,
    kafka: KafkaSettings,
    *,
    console: Console | None = None,
    show_progress: bool = True,
    now: Callable[[], datetime] = now_utc,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplayReport:
    """Read XSTest, plan, prepare the topic, publish with a progress bar; the report of what was sent."""
    records = read_xstest(options.data_dir, models=options.models)
    plan = plan_replay(
        records,
        seed=options.seed,
        run_id=options.run_id,
        repeat=options.repeat,
        limit=options.limit,
        malformed=options.malformed,
    )
    total = planned_total(len(records), repeat=options.repeat, limit=options.limit)
    oversized = options.malformed > 0 and total > 0  # any malformed share may include oversized events
    prepare_topic(
        kafka,
        options.topic,
        partitions=options.partitions,
        needed_bytes=OVERSIZED_RESPONSE_BYTES + 64 * 1024 if oversized else 0,
    )
    try:
        producer = clients.producer(kafka, linger_ms=5, max_request_size=MAX_RECORD_BYTES)
    except KafkaEdgeError as exc:
        raise ReplayError(str(exc)) from exc
    progress = Progress(
        TextColumn("[bold]replay[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not show_progress,
    )
    try:
        with progress:
            task = progress.add_task(options.topic, total=total)
            report = publish(
                plan,
                sink=KafkaSink(producer, options.topic),
                topic=options.topic,
                encoding=options.encoding,
                run_id=options.run_id,
                seed=options.seed,
                limiter=RateLimiter(rate=options.rate, clock=clock, sleep=sleep),
                now=now,
                clock=clock,
                on_sent=lambda: progress.advance(task),
            )
    finally:
        producer.close(timeout=30)
    log.info(
        "replayed %s events to %s in %.1fs (%s malformed, %s failed)",
        report.total_sent,
        report.topic,
        report.elapsed_s,
        report.expected_dead_letters,
        sum(report.failed.values()),
    )
    return report


def summary_table(report: ReplayReport) -> Table:
    table = Table(title=f"replay {report.run_id} -> {report.topic} ({report.encoding})")
    table.add_column("kind")
    table.add_column("sent", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("dead-letter reason")
    for kind in EventKind:
        if report.sent.get(kind) or report.failed.get(kind):
            reason = DEAD_LETTER_REASON.get(kind, "-")
            table.add_row(kind, str(report.sent.get(kind, 0)), str(report.failed.get(kind, 0)), reason)
    table.add_section()
    table.add_row("total", str(report.total_sent), str(sum(report.failed.values())), "")
    table.add_row("expected dead letters", str(report.expected_dead_letters), "", "")
    table.caption = (
        f"{report.bytes_sent / 1e6:.1f} MB in {report.elapsed_s:.2f}s, {report.events_per_s:,.0f} events/s; "
        f"seed {report.seed}"
    )
    return table


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def replay_command(
    topic: Annotated[str, typer.Option(help="Kafka topic to publish to.")] = topics.EVENTS,
    models: Annotated[
        list[str] | None,
        typer.Option(
            help=f"XSTest model tags, comma-separated or repeated (default: {', '.join(XSTEST_MODELS)})."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="Publish at most this many events (0: all).", min=0)] = 0,
    repeat: Annotated[int, typer.Option(help="Replay the data this many times, with new ids.", min=1)] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the order and of the malformed choices.")] = 0,
    run_id: Annotated[
        str | None,
        typer.Option(help="Part of every event id; the same run id repeats the ids (default: random)."),
    ] = None,
    rate: Annotated[float, typer.Option(help="Events per second (0: as fast as possible).", min=0)] = 0.0,
    malformed: Annotated[
        float, typer.Option(help="Share of events replaced by bad inputs, e.g. 0.05.", min=0.0, max=1.0)
    ] = 0.0,
    encoding: Annotated[
        Encoding, typer.Option("--format", help="Wire format of good events.")
    ] = Encoding.JSON,
    partitions: Annotated[int, typer.Option(help="Partitions when the topic is created.", min=1)] = 4,
    bootstrap: BootstrapOption = None,
    data_dir: DataDirOption = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Replay XSTest v2 completions into Kafka as LLM events, optionally with malformed inputs."""
    console = Console()
    kafka = kafka_settings(bootstrap)
    options = ReplayOptions(
        topic=topic,
        models=tuple(m.strip() for arg in models or XSTEST_MODELS for m in arg.split(",") if m.strip()),
        limit=limit or None,
        repeat=repeat,
        seed=seed,
        rate=rate,
        malformed=malformed,
        encoding=encoding,
        partitions=partitions,
        data_dir=data_dir,
        run_id=run_id or secrets.token_hex(4),
    )
    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C: what was sent is flushed
    try:
        report = run_replay(options, kafka, console=Console(stderr=True), show_progress=progress)
    except (ReplayError, ValueError, OSError) as exc:
        console.print(f"[red]replay failed:[/] {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        console.print("replay stopped; records sent so far were flushed")
        raise typer.Exit(0) from None
    print_table(console, summary_table(report))
    if report.failed:
        console.print(
            f"[red]{sum(report.failed.values())} records not acknowledged;[/] first: {report.first_error}"
        )
        raise typer.Exit(1)
