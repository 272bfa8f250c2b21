"""Human labels on ``evalstream.labels``: the record, and ``evalstream label``, which publishes them.

One Kafka record per label, JSON, keyed by the event id, with the ``content-type`` header of
``evalstream.topics``::

    {"event_id": "run7-xstest_v2-llama2orig-v2-12-0", "dimension": "refusal",
     "label": "full_refusal", "annotator": "adjudicated", "labelled_at": "2025-03-01T12:00:00Z"}

- ``event_id``: the ``LLMEvent.event_id`` the label is about (the exporter joins it to the verdict).
- ``dimension`` and ``label``: one of ``evalstream.dimensions.LABELS`` (the judges' vocabulary).
- ``annotator``: who labelled; the exporter scores judges against one of them (its
  ``agreement_truth_annotator``, ``adjudicated`` by default); other annotators' labels are kept on the
  topic (for the alternative annotator test) and counted as ignored.
- ``labelled_at``: when the human labelled it (ISO 8601 with a time zone).

Unknown fields are rejected, not ignored, as for events. JSON rather than a protobuf message: labels
come from annotation tools and spreadsheets at human rates, where JSON is what those tools emit and
a pydantic model gives errors that name the field; a new message would also put a regenerated-stubs
change on the shared contract for a record only the exporter reads.

``decode_label`` and ``encode_label`` are the pure edge the exporter and this command share;
``xstest_labels`` builds labels for replayed XSTest events (ids as ``evalstream replay`` makes them);
``publish_labels`` and ``label_command`` are the Kafka and CLI shells.

Exceptions: ``LabelRecordError`` (a record or file line that is not a valid label, a ``ValueError``);
``LabelPublishError`` (Kafka unreachable or a label not acknowledged).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Final

import typer
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from evalstream import topics
from evalstream.contract import now_utc
from evalstream.datasets import XSTEST_MODELS, XSTestRecord
from evalstream.dimensions import LABELS, Dimension, RefusalLabel
from evalstream.settings import KafkaSettings

__all__ = [
    "XSTEST_ANNOTATORS",
    "HumanLabelIn",
    "LabelPublishError",
    "LabelRecordError",
    "decode_label",
    "encode_label",
    "label_command",
    "publish_labels",
    "read_label_file",
    "xstest_labels",
]

#: The XSTest columns published as annotators: the adjudicated ``final_label`` (the truth) and the
#: two independent annotators. Names match the human-label tables of ``evalstream.recorded_judgements``.
XSTEST_ANNOTATORS: Final = ("adjudicated", "annotator_1", "annotator_2")


class LabelRecordError(ValueError):
    """A label record (or a line of a label file) is not a valid human label."""


class LabelPublishError(RuntimeError):
    """Kafka could not be reached, or it did not acknowledge every label."""


_Name = Annotated[str, Field(min_length=1, max_length=256)]


class HumanLabelIn(BaseModel):
    """One human label on one event and dimension (the ``evalstream.labels`` record)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: _Name
    dimension: Dimension
    label: str
    annotator: Annotated[str, Field(min_length=1, max_length=128)]
    labelled_at: AwareDatetime

    @model_validator(mode="after")
    def _label_of_dimension(self) -> HumanLabelIn:
        if self.label not in LABELS[self.dimension]:
            raise ValueError(
                f"label {self.label!r} is not a {self.dimension.value} label; expected one of "
                f"{', '.join(sorted(LABELS[self.dimension]))}"
            )
        return self


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "record"
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        parts.append(f"{where}: {err['msg']}{shown}")
    return "; ".join(parts)


_FIELDS = "event_id, dimension, label, annotator, labelled_at"


def decode_label(value: bytes | None) -> HumanLabelIn:
    """The label in one record's value; ``LabelRecordError`` says what is wrong with it."""
    try:
        return HumanLabelIn.model_validate_json(value or b"")
    except ValidationError as exc:
        raise LabelRecordError(
            f"not a human label: {_explain(exc)}. A label is a JSON object with {_FIELDS}"
        ) from None


def encode_label(label: HumanLabelIn) -> bytes:
    return label.model_dump_json().encode()


def read_label_file(path: Path, *, labelled_at: datetime) -> list[HumanLabelIn]:
    """Labels from a JSON Lines file, one label a line; ``labelled_at`` fills lines without one."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LabelRecordError(f"cannot read the label file {path}: {exc}") from exc
    out: list[HumanLabelIn] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LabelRecordError(
                f"{path}:{number}: not JSON ({exc.msg}); a label file is JSON Lines, one object a line"
            ) from None
        if not isinstance(raw, dict):
            raise LabelRecordError(f"{path}:{number}: expected a JSON object, got {type(raw).__name__}")
        raw.setdefault("labelled_at", labelled_at.isoformat())
        try:
            out.append(HumanLabelIn.model_validate(raw))
        except ValidationError as exc:
            raise LabelRecordError(f"{path}:{number}: {_explain(exc)}; each line needs {_FIELDS}") from None
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
    from evalstream.replay import event_id_for  # replay pulls in Kafka and rich: only when used

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
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        producer = KafkaProducer(**kafka.client_kwargs(), acks="all", linger_ms=5)
    except KafkaError as exc:
        raise LabelPublishError(f"cannot reach Kafka at {kafka.bootstrap}: {exc}; is the broker up?") from exc
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
        raise LabelPublishError(f"labels to {topic!r} at {kafka.bootstrap} not acknowledged: {exc}") from exc
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
    bootstrap: Annotated[
        str | None, typer.Option(help="Kafka host:port list (default: EVALSTREAM_KAFKA_BOOTSTRAP).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Shared data folder (default: EVALSTREAM_DATA_DIR or ../shared/data).")
    ] = None,
) -> None:
    """Publish human labels to Kafka, from a file or from XSTest, for the exporter's judge agreement."""
    from evalstream.datasets import read_xstest

    if (file is None) == (not xstest):
        raise typer.BadParameter("give either --file PATH or --xstest --run-id RUN (not both)")
    kafka = KafkaSettings(bootstrap=bootstrap) if bootstrap else KafkaSettings()
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
