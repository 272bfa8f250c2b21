"""``evalstream redrive``: send dead-lettered events back to the pipeline once their cause is fixed.

Dead letters of the judge stage carry the whole event (``raw``: the ``LLMEvent`` protobuf):
``judge_unavailable`` (a tier was down, or its circuit open, through the whole deadline) and
``judge_item_error`` (the judge could not judge the item: an LLM endpoint fault, a reply outside the
schema), by default; ``judge_rejected`` on request. Once the judge is back, ``redrive`` reads the
dead-letter topic as the consumer group ``evalstream-redrive`` and publishes each selected event
again to the pipeline's input topic (``--events-topic``, ``llm.events`` by default: judge-stage dead
letters do not record the topic their event came from), protobuf-encoded with the ``content-type``
header and an ``evalstream-redrive`` header naming the reason.

**Exactly once.** The republished events and the group's offsets are written in one Kafka
transaction per polled batch (``evalstream.kafka.transactions.BatchWriter``, the pipeline runner's
step), so a dead letter is redriven once even when the command is stopped and run again; the next run
starts after the last. The transactional id is ``<group>-0``: a second redrive of the same group
fences the first, which stops with an error instead of publishing twice. Dead letters of other
stages (bad input: redriving it would fail the same way) and ones whose ``raw`` was truncated are
skipped and counted, never lost: they stay on the dead-letter topic.

**Accounting.** A redriven event is a new input record: the pipeline counts it in ``events in`` again
and it ends as a verdict (or another dead letter); its first dead letter stays where it was. So
``in = unsampled + verdicts + dead letters`` holds per record, and a redriven event shows once among
dead letters and once among verdicts. It keeps its event id: the pipeline's dedupe window holds only
ids that got a verdict or were left unsampled, so it is judged, not taken for a duplicate.

Exceptions: ``RedriveError`` (Kafka unreachable, a write not acknowledged).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

import typer
from google.protobuf.message import DecodeError
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from evalstream.kafka.clients import KafkaEdgeError, consumer
from evalstream.kafka.transactions import BatchWriter, Output
from evalstream.pipeline.records import DeadReason, Stage
from evalstream.runtime.settings import KafkaSettings
from evalstream.tools.options import BootstrapOption, kafka_settings
from evalstream.v1 import verdict_pb2
from evalstream.wire import topics

__all__ = [
    "DEFAULT_REASONS",
    "GROUP_ID",
    "REDRIVE_HEADER",
    "RedriveError",
    "RedriveReport",
    "redrive",
    "redrive_command",
]

GROUP_ID: Final = "evalstream-redrive"
#: Header on a republished event: the reason of the dead letter it came from.
REDRIVE_HEADER: Final = "evalstream-redrive"
DEFAULT_REASONS: Final = (DeadReason.JUDGE_UNAVAILABLE, DeadReason.JUDGE_ITEM_ERROR)
REDRIVABLE: Final = frozenset({*DEFAULT_REASONS, DeadReason.JUDGE_REJECTED})


class RedriveError(RuntimeError):
    """Kafka could not be read or written; nothing of the failed batch was published."""


@dataclass(slots=True)
class RedriveReport:
    read: int = 0
    published: int = 0
    #: Dead letters left where they are, by why: ``reason:<error_type>`` not selected,
    #: ``stage:<stage>`` (not a judge-stage letter), ``truncated``, ``unreadable``.
    skipped: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)


def _selected(letter: verdict_pb2.DeadLetter, reasons: frozenset[str]) -> str | None:
    """Why ``letter`` is skipped, or None when it is redriven."""
    if letter.stage != Stage.JUDGE.value:
        return f"stage:{letter.stage or '?'}"
    if letter.error_type not in reasons:
        return f"reason:{letter.error_type}"
    if letter.raw_truncated or not letter.raw:
        return "truncated"
    return None


def redrive(
    kafka: KafkaSettings,
    *,
    reasons: Sequence[str] = DEFAULT_REASONS,
    deadletter_topic: str = topics.DEADLETTER,
    events_topic: str = topics.EVENTS,
    group_id: str = GROUP_ID,
    dry_run: bool = False,
    caught_up_timeout_s: float = 60.0,
) -> RedriveReport:
    """Redrive every selected dead letter the group has not read yet, up to the topic's end now."""
    wanted = frozenset(str(r) for r in reasons)
    unknown = sorted(wanted - {str(r) for r in REDRIVABLE})
    if unknown:
        raise ValueError(f"cannot redrive {unknown}: choose from {sorted(str(r) for r in REDRIVABLE)}")
    report = RedriveReport()
    try:
        reader = consumer(
            kafka,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
    except KafkaEdgeError as exc:
        raise RedriveError(str(exc)) from exc
    writer = None if dry_run else BatchWriter(kafka, transactional_id=f"{group_id}-0")
    try:
        parts = reader.partitions_for_topic(deadletter_topic)
        if not parts:
            return report  # no dead-letter topic: nothing was ever dead-lettered
        assigned = [TopicPartition(deadletter_topic, p) for p in sorted(parts)]
        reader.assign(assigned)
        ends = reader.end_offsets(assigned)
        if writer is not None:
            writer.ready()
        deadline = time.monotonic() + caught_up_timeout_s
        while any(reader.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise RedriveError(
                    f"did not reach the end of {deadletter_topic} within {caught_up_timeout_s:.0f}s"
                )
            batch = [m for ms in reader.poll(timeout_ms=500, max_records=1000).values() for m in ms]
            if batch:
                _one_batch(reader, writer, batch, wanted, events_topic, report)
        return report
    except (KafkaError, KafkaEdgeError) as exc:
        raise RedriveError(
            f"redrive failed, nothing of the last batch published: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        if writer is not None:
            writer.close()
        reader.close()


def _one_batch(
    reader: KafkaConsumer,
    writer: BatchWriter | None,
    batch: list[Any],
    wanted: frozenset[str],
    events_topic: str,
    report: RedriveReport,
) -> None:
    outgoing: list[tuple[Output, str]] = []  # (event, reason)
    offsets: dict[TopicPartition, OffsetAndMetadata] = {}
    for m in batch:
        report.read += 1
        offsets[TopicPartition(m.topic, m.partition)] = OffsetAndMetadata(m.offset + 1, "", -1)
        try:
            letter = verdict_pb2.DeadLetter.FromString(m.value)
        except DecodeError:
            report.skipped["unreadable"] += 1
            continue
        why_not = _selected(letter, wanted)
        if why_not is not None:
            report.skipped[why_not] += 1
            continue
        headers = (
            (topics.CONTENT_TYPE_HEADER, topics.CONTENT_TYPE_PROTOBUF.encode()),
            (REDRIVE_HEADER, letter.error_type.encode()),
        )
        event = Output(events_topic, letter.raw, letter.event_id.encode(), headers)
        outgoing.append((event, letter.error_type))
    if writer is not None:  # else a dry run: count only
        writer.write(reader, [event for event, _ in outgoing], offsets)
    report.published += len(outgoing)
    report.by_reason.update(reason for _, reason in outgoing)


def redrive_command(
    reasons: Annotated[
        list[str] | None,
        typer.Option(
            "--reason",
            help=f"Dead-letter reason to redrive, repeated (default: {', '.join(map(str, DEFAULT_REASONS))}; "
            f"also: {DeadReason.JUDGE_REJECTED}).",
        ),
    ] = None,
    deadletter_topic: Annotated[str, typer.Option(help="Dead-letter topic to read.")] = topics.DEADLETTER,
    events_topic: Annotated[
        str, typer.Option(help="The pipeline's input topic, where events go again.")
    ] = topics.EVENTS,
    group_id: Annotated[
        str, typer.Option(help="Consumer group that remembers what was redriven.")
    ] = GROUP_ID,
    dry_run: Annotated[
        bool, typer.Option(help="Count what would be redriven; publish and commit nothing.")
    ] = False,
    bootstrap: BootstrapOption = None,
) -> None:
    """Publish judge-stage dead letters' events again (once each), after the judge is back."""
    from rich.console import Console

    kafka = kafka_settings(bootstrap)
    try:
        report = redrive(
            kafka,
            reasons=reasons or DEFAULT_REASONS,
            deadletter_topic=deadletter_topic,
            events_topic=events_topic,
            group_id=group_id,
            dry_run=dry_run,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    except RedriveError as exc:
        Console(stderr=True).print(f"[red]redrive failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    verb = "would redrive" if dry_run else "redrove"
    by_reason = ", ".join(f"{r} {n}" for r, n in sorted(report.by_reason.items())) or "none"
    skipped = ", ".join(f"{r} {n}" for r, n in sorted(report.skipped.items())) or "none"
    Console().print(
        f"read {report.read} dead letters; {verb} {report.published} ({by_reason}); left in place: {skipped}"
    )
