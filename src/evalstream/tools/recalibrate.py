"""``evalstream recalibrate``: reads the verdicts and human labels from Kafka, joins them, refits the
cascade's thresholds (``evaluation.recalibrate``) and writes a new versioned cascade config with its
provenance (topics and offset ranges read, items per dimension, what became of every label, time
ranges, alpha and delta).

Both topics are read from their beginning to their end as it was when the command started
(``read_committed``: only committed pipeline transactions), with no consumer group, so a rerun reads
the same records and changes nothing on the cluster. Records are handled one at a time: what is kept
is the calibration sample's verdicts, the event id and judging time of the others, and the labels.
The version is derived from the config's content
(``wire.cascade_config.content_version``): the same thresholds always get the same version.

Exceptions: ``RecalibrationError`` (Kafka unreachable, a topic that does not exist, a read that does
not reach the topic's end in time).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from evalstream.evaluation.calibration import DEFAULT_GRID_STEP, DEFAULT_MIN_ACCEPTED, CalibrationError
from evalstream.evaluation.recalibrate import (
    DEFAULT_JOIN_WINDOW,
    DEFAULT_MIN_ITEMS,
    JoinedLabels,
    Refit,
    join_labels,
    refit,
)
from evalstream.kafka.clients import KafkaEdgeError, consumer
from evalstream.runtime.settings import KafkaSettings
from evalstream.tools.options import BootstrapOption, kafka_settings
from evalstream.v1 import verdict_pb2
from evalstream.wire import topics
from evalstream.wire.cascade_config import CascadeConfig, OffsetRange, Provenance, content_version

__all__ = ["Recalibration", "RecalibrationError", "read_topic", "recalibrate", "recalibrate_command"]

log = logging.getLogger(__name__)


class RecalibrationError(RuntimeError):
    """Kafka could not be read as needed; the message says which topic and what to do."""


def read_topic(
    kafka: KafkaSettings, topic: str, handle: Callable[[Any], None], *, timeout_s: float = 600.0
) -> list[OffsetRange]:
    """``handle`` every committed record of ``topic`` up to its end at the start of the call (one at a
    time: nothing of the topic is held here); returns the ranges read."""
    from kafka import TopicPartition
    from kafka.errors import KafkaError

    try:
        reader = consumer(kafka, enable_auto_commit=False, isolation_level="read_committed")
    except KafkaEdgeError as exc:
        raise RecalibrationError(str(exc)) from exc
    try:
        parts = reader.partitions_for_topic(topic)
        if not parts:
            raise RecalibrationError(
                f"topic {topic!r} does not exist on {kafka.bootstrap}; is the pipeline (or the labeller) "
                "writing to it? (--verdicts-topic, --labels-topic)"
            )
        assigned = [TopicPartition(topic, p) for p in sorted(parts)]
        reader.assign(assigned)
        reader.seek_to_beginning(*assigned)
        starts = {tp: reader.position(tp) for tp in assigned}
        ends = reader.end_offsets(assigned)
        seen: dict[int, int] = {tp.partition: 0 for tp in assigned}
        deadline = time.monotonic() + timeout_s
        while any(reader.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise RecalibrationError(f"did not reach the end of {topic!r} within {timeout_s:.0f}s")
            for tp, batch in reader.poll(timeout_ms=500, max_records=5000).items():
                for record in batch:
                    if record.offset < ends[tp]:
                        handle(record)
                        seen[tp.partition] += 1
    except KafkaError as exc:
        what = f"{type(exc).__name__}: {exc}"
        raise RecalibrationError(f"reading {topic!r} on {kafka.bootstrap} failed: {what}") from exc
    finally:
        reader.close()
    ranges = [
        OffsetRange(
            topic=topic,
            partition=tp.partition,
            first=starts[tp],
            last=ends[tp] - 1,
            records=seen[tp.partition],
        )
        for tp in assigned
    ]
    return ranges


@dataclass(frozen=True, slots=True, kw_only=True)
class Recalibration:
    config: CascadeConfig
    joined: JoinedLabels
    refit: Refit
    unreadable_verdicts: int


class _Verdicts:
    """Keeps what the join needs of each verdict record: the whole verdict for the calibration sample,
    the event id and judging time for the rest (so a label on them is counted, not unknown)."""

    def __init__(self) -> None:
        self.kept: list[verdict_pb2.Verdict] = []
        self.unreadable: list[int] = []

    def __call__(self, record: Any) -> None:
        from google.protobuf.message import DecodeError

        try:
            verdict = verdict_pb2.Verdict.FromString(record.value or b"")
        except DecodeError:
            self.unreadable.append(record.offset)
            return
        if not verdict.calibration_sample:
            slim = verdict_pb2.Verdict(event_id=verdict.event_id)
            slim.judged_at.CopyFrom(verdict.judged_at)
            verdict = slim
        self.kept.append(verdict)


def recalibrate(
    kafka: KafkaSettings,
    *,
    base: CascadeConfig,
    truth_annotator: str,
    alpha: float | None = None,
    delta: float | None = None,
    verdicts_topic: str = topics.VERDICTS,
    labels_topic: str = topics.LABELS,
    join_window: timedelta = DEFAULT_JOIN_WINDOW,
    min_items: int = DEFAULT_MIN_ITEMS,
    grid_step: float = DEFAULT_GRID_STEP,
    min_accepted: int = DEFAULT_MIN_ACCEPTED,
    now: datetime | None = None,
) -> Recalibration:
    """Read both topics, join, refit; alpha and delta default to the base config's (else 0.1)."""
    alpha = alpha if alpha is not None else base.alpha or 0.1
    delta = delta if delta is not None else base.delta or 0.1
    verdicts = _Verdicts()
    verdict_ranges = read_topic(kafka, verdicts_topic, verdicts)
    label_records: list[bytes | None] = []
    label_ranges = read_topic(kafka, labels_topic, lambda record: label_records.append(record.value))
    unreadable = verdicts.unreadable
    joined = join_labels(
        verdicts.kept,
        label_records,
        cascade=base,
        truth_annotator=truth_annotator,
        join_window=join_window,
    )
    if unreadable:
        log.warning(
            "%d records of %s are not verdicts (first offset %d); skipped and counted",
            len(unreadable),
            verdicts_topic,
            unreadable[0],
        )
    fitted = refit(
        joined,
        base,
        alpha=alpha,
        delta=delta,
        min_items=min_items,
        grid_step=grid_step,
        min_accepted=min_accepted,
    )
    items = [i for dim in joined.items.values() for i in dim]
    stamp = now or datetime.now(UTC)
    draft = CascadeConfig(
        version="draft",
        created_at=stamp,
        alpha=alpha,
        delta=delta,
        calibration_data=(
            f"recalibrated from {base.version}: labels on {labels_topic} (annotator {truth_annotator}) "
            f"joined with the calibration sample's verdicts on {verdicts_topic}"
        ),
        dimensions=fitted.dimensions,
        provenance=Provenance(
            base_version=base.version,
            truth_annotator=truth_annotator,
            join_window_s=join_window.total_seconds(),
            read=verdict_ranges + label_ranges,
            items={d.value: len(v) for d, v in sorted(joined.items.items())},
            labels=dict(sorted(joined.outcomes.items())),
            verdicts={
                "read": joined.verdicts + len(unreadable),
                "duplicate": joined.duplicate_verdicts,
                "unreadable": len(unreadable),
            },
            kept=fitted.kept,
            judged_from=min((i.judged_at for i in items), default=None),
            judged_to=max((i.judged_at for i in items), default=None),
            labelled_from=min((i.labelled_at for i in items), default=None),
            labelled_to=max((i.labelled_at for i in items), default=None),
        ),
    )
    config = draft.model_copy(update={"version": content_version(draft, prefix="recal")})
    return Recalibration(config=config, joined=joined, refit=fitted, unreadable_verdicts=len(unreadable))


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf (audit all)" if math.isinf(value) else f"{value:.3f}"


def recalibrate_command(
    cascade_config: Annotated[
        Path, typer.Option(help="The cascade config running now (the base: its tiers, and rules kept).")
    ],
    out: Annotated[Path, typer.Option(help="Where to write the new cascade config (YAML).")] = Path(
        "cascade.yaml"
    ),
    truth_annotator: Annotated[str, typer.Option(help="Whose labels are the truth.")] = "adjudicated",
    alpha: Annotated[
        float | None, typer.Option(help="Allowed disagreement with humans (default: the base config's).")
    ] = None,
    delta: Annotated[
        float | None, typer.Option(help="Allowed probability the guarantee fails (default: the base's).")
    ] = None,
    join_window_h: Annotated[
        float, typer.Option(help="A label joins a verdict judged at most this many hours earlier.", min=0)
    ] = DEFAULT_JOIN_WINDOW.total_seconds() / 3600,
    min_items: Annotated[
        int, typer.Option(help="A dimension with fewer labelled items keeps its old thresholds.", min=1)
    ] = DEFAULT_MIN_ITEMS,
    min_accepted: Annotated[
        int, typer.Option(help="Skip thresholds that accept fewer items than this.", min=1)
    ] = DEFAULT_MIN_ACCEPTED,
    verdicts_topic: Annotated[str, typer.Option(help="Topic of the pipeline's verdicts.")] = topics.VERDICTS,
    labels_topic: Annotated[str, typer.Option(help="Topic of human labels.")] = topics.LABELS,
    bootstrap: BootstrapOption = None,
) -> None:
    """Refit the cascade's thresholds on human labels of the calibration sample, read from Kafka."""
    from rich.console import Console
    from rich.table import Table

    from evalstream.runtime.tables import print_table

    console = Console()
    for name, value in (("--alpha", alpha), ("--delta", delta)):
        if value is not None and not 0.0 < value < 1.0:
            raise typer.BadParameter(f"{name} must lie strictly between 0 and 1, got {value}")
    try:
        base = CascadeConfig.load(cascade_config)
    except ValueError as exc:
        raise typer.BadParameter(f"--cascade-config {cascade_config}: {exc}") from exc
    kafka = kafka_settings(bootstrap)
    try:
        result = recalibrate(
            kafka,
            base=base,
            truth_annotator=truth_annotator,
            alpha=alpha,
            delta=delta,
            verdicts_topic=verdicts_topic,
            labels_topic=labels_topic,
            join_window=timedelta(hours=join_window_h),
            min_items=min_items,
            min_accepted=min_accepted,
        )
    except (RecalibrationError, CalibrationError) as exc:
        typer.echo(f"recalibrate failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    joined = result.joined
    labels = Table(title=f"label records read: {joined.labels}")
    for column in ("outcome", "records", "example"):
        labels.add_column(column)
    for outcome, count in sorted(joined.outcomes.items(), key=lambda kv: -kv[1]):
        labels.add_row(outcome, str(count), joined.examples.get(outcome, "")[:120])
    print_table(console, labels)
    rules = Table(title=f"{base.version} -> {result.config.version}")
    for column in ("dimension", "items", "before", "after", "coverage", "agreement"):
        rules.add_column(column)
    fits = {c.dimension.value: c for c in result.refit.calibrations}
    for name, spec in result.config.dimensions.items():
        fit = fits.get(name)
        rules.add_row(
            name,
            str(result.config.provenance.items.get(name, 0) if result.config.provenance else 0),
            ", ".join(t.rule() for t in base.dimensions[name].tiers),
            ", ".join(t.rule() for t in spec.tiers) if fit else "kept",
            _fmt(fit.coverage) if fit else "-",
            _fmt(fit.agreement) if fit else "-",
        )
    print_table(console, rules)
    for name, why in result.refit.kept.items():
        console.print(f"{name}: {why}")
    if result.unreadable_verdicts or joined.duplicate_verdicts:
        console.print(
            f"verdict records: {result.unreadable_verdicts} unreadable, {joined.duplicate_verdicts} "
            "repeated event ids (the first used)"
        )
    result.config.dump(out)
    console.print(f"wrote {out} (version {result.config.version})")
