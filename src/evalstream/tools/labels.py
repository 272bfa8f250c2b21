"""``evalstream label``: publishes human labels (the record: ``evalstream.wire.labels``) on
``evalstream.labels``.

``xstest_labels`` builds labels for replayed XSTest events (ids as ``evalstream replay`` makes them);
``read_label_file`` reads a JSON Lines file of labels; ``publish_labels`` and ``label_command`` are the
Kafka and CLI shells.

Exceptions: ``LabelRecordError`` (from ``evalstream.wire.labels``: a file line that is not a valid
label); ``LabelPublishError`` (Kafka unreachable or a label not acknowledged).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Final

import typer
from pydantic import ValidationError

from evalstream.evaluation.datasets import XSTEST_MODELS, XSTestRecord
from evalstream.runtime.settings import KafkaSettings
from evalstream.tools.options import BootstrapOption, DataDirOption, kafka_settings
from evalstream.wire import topics
from evalstream.wire.contract import now_utc
from evalstream.wire.dimensions import Dimension, RefusalLabel
from evalstream.wire.jsonl import explain, json_objects
from evalstream.wire.labels import FIELDS, HumanLabelIn, LabelRecordError, encode_label

__all__ = [
    "XSTEST_ANNOTATORS",
    "LabelPublishError",
    "label_command",
    "publish_labels",
    "read_label_file",
    "xstest_labels",
]

#: The XSTest columns published as annotators: the adjudicated ``final_label`` (the truth) and the
#: two independent annotators. Names match the human-label tables of ``evaluation.recorded``.
XSTEST_ANNOTATORS: Final = ("adjudicated", "annotator_1", "annotator_2")


class LabelPublishError(RuntimeError):
    """Kafka could not be reached, or it did not acknowledge every label."""


def read_label_file(path: Path, *, labelled_at: datetime) -> list[HumanLabelIn]:
    """Labels from a JSON Lines file, one label a line; ``labelled_at`` fills lines without one."""
    out: list[HumanLabelIn] = []
    for number, raw in json_objects(path, kind="label file", error=LabelRecordError):
        raw.setdefault("labelled_at", labelled_at.isoformat())
        try:
            out.append(HumanLabelIn.model_validate(raw))
        except ValidationError as exc:
            raise LabelRecordError(f"{path}:{number}: {explain(exc)}; each line needs {FIELDS}") from None
    if not out:
        raise LabelRecordError(f"{path}: the label file has no labels")
    return out


def xstest_labels(
    records: Iterable[XSTestRecord],
    *,
    run_id: str,
    passes: int = 1,
    annotators: Sequence[str] = XSTEST_ANNOTATORS,
    labelled_at: datetime,
) -> Iterator[HumanLabelIn]:
    """The refusal labels of XSTest records, for the events ``evalstream replay --run-id`` made of
    them in passes ``0 .. passes - 1`` (``--repeat``): same ids, one label per annotator."""
    from evalstream.tools.replay import event_id_for  # replay pulls in Kafka and rich: only when used

    unknown = sorted(set(annotators) - set(XSTEST_ANNOTATORS))
    if unknown:
        raise LabelRecordError(f"unknown XSTest annotator(s) {unknown}; choose from {XSTEST_ANNOTATORS}")
    for pass_index in range(passes):
        for record in records:
            by_annotator: Mapping[str, RefusalLabel] = {
                "adjudicated": record.final_label,
                "annotator_1": record.annotation_1,
                "annotator_2": record.annotation_2,
            }
            for annotator in annotators:
                yield HumanLabelIn(
                    event_id=event_id_for(run_id, record, pass_index),
                    dimension=Dimension.REFUSAL,
                    label=by_annotator[annotator].value,
                    annotator=annotator,
                    labelled_at=labelled_at,
                )


def publish_labels(labels: Iterable[HumanLabelIn], kafka: KafkaSettings, topic: str = topics.LABELS) -> int:
    """Send every label (key = event id), wait for all acknowledgements; returns how many were sent."""
    from kafka.errors import KafkaError

    from evalstream.kafka.clients import KafkaEdgeError, explain
    from evalstream.kafka.clients import producer as make_producer

    try:
        producer = make_producer(kafka, linger_ms=5)
    except KafkaEdgeError as exc:
        raise LabelPublishError(str(exc)) from exc
    headers = [(topics.CONTENT_TYPE_HEADER, topics.CONTENT_TYPE_JSON.encode())]
    try:
        futures = [
            producer.send(topic, key=label.event_id.encode(), value=encode_label(label), headers=headers)
            for label in labels
        ]
        producer.flush(timeout=120)
        for future in futures:
            future.get(timeout=0)
    except KafkaError as exc:
        raise LabelPublishError(str(explain(kafka, f"publishing labels to {topic!r}", exc))) from exc
    finally:
        producer.close(timeout=30)
    return len(futures)


def label_command(
    file: Annotated[
        Path | None, typer.Option(help="JSON Lines file of labels (event_id, dimension, label, annotator).")
    ] = None,
    xstest: Annotated[
        bool, typer.Option(help="Publish XSTest's human refusal labels for a replayed run instead.")
    ] = False,
    run_id: Annotated[
        str | None, typer.Option(help="--xstest: the run id given to `evalstream replay`.")
    ] = None,
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--model", help=f"--xstest: model tags, repeated (default: {', '.join(XSTEST_MODELS)})."
        ),
    ] = None,
    passes: Annotated[int, typer.Option(help="--xstest: the replay's --repeat.", min=1)] = 1,
    annotators: Annotated[
        list[str] | None,
        typer.Option(
            "--annotator", help=f"--xstest: annotators to publish (default: {', '.join(XSTEST_ANNOTATORS)})."
        ),
    ] = None,
    topic: Annotated[str, typer.Option(help="Kafka topic of human labels.")] = topics.LABELS,
    bootstrap: BootstrapOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Publish human labels to Kafka, from a file or from XSTest, for the exporter's judge agreement."""
    from evalstream.evaluation.datasets import read_xstest

    if (file is None) == (not xstest):
        raise typer.BadParameter("give either --file PATH or --xstest --run-id RUN (not both)")
    kafka = kafka_settings(bootstrap)
    now = now_utc()
    try:
        if file is not None:
            labels = read_label_file(file, labelled_at=now)
        else:
            if not run_id:
                raise typer.BadParameter("--xstest needs --run-id, the one `evalstream replay` used")
            records = read_xstest(data_dir, models=models or list(XSTEST_MODELS))
            labels = list(
                xstest_labels(
                    records,
                    run_id=run_id,
                    passes=passes,
                    annotators=annotators or XSTEST_ANNOTATORS,
                    labelled_at=now,
                )
            )
        sent = publish_labels(labels, kafka, topic)
    except (LabelRecordError, LabelPublishError, ValueError, OSError) as exc:
        typer.echo(f"label failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    who = ", ".join(sorted({label.annotator for label in labels}))
    typer.echo(f"published {sent} labels to {topic} (annotators: {who})")
