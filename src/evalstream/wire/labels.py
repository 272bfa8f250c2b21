"""The human-label record on ``evalstream.labels``: one Kafka record per label, JSON, keyed by the
event id, with the ``content-type`` header of ``evalstream.wire.topics``::

    {"event_id": "run7-xstest_v2-llama2orig-v2-12-0", "dimension": "refusal",
     "label": "full_refusal", "annotator": "adjudicated", "labelled_at": "2025-03-01T12:00:00Z"}

- ``event_id``: the ``LLMEvent.event_id`` the label is about (the exporter joins it to the verdict).
- ``dimension`` and ``label``: one of ``evalstream.wire.dimensions.LABELS`` (the judges' vocabulary).
- ``annotator``: who labelled; the exporter scores judges against one of them (its
  ``agreement_truth_annotator``, ``adjudicated`` by default); other annotators' labels are kept on the
  topic (for the alternative annotator test) and counted as ignored.
- ``labelled_at``: when the human labelled it (ISO 8601 with a time zone).

Unknown fields are rejected, not ignored, as for events. JSON rather than a protobuf message: labels
come from annotation tools and spreadsheets at human rates, where JSON is what those tools emit and
a pydantic model gives errors that name the field; a new message would also put a regenerated-stubs
change on the shared contract for a record only the exporter reads.

``decode_label`` and ``encode_label`` are the pure edge the exporter and ``evalstream label``
(``evalstream.tools.labels``) share. ``LabelRecordError`` (a ``ValueError``): a record or file line
that is not a valid label.
"""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from evalstream.wire.dimensions import LABELS, Dimension
from evalstream.wire.jsonl import explain

__all__ = ["FIELDS", "HumanLabelIn", "LabelRecordError", "decode_label", "encode_label"]


class LabelRecordError(ValueError):
    """A label record (or a line of a label file) is not a valid human label."""


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


#: The fields of a label record, as error messages name them.
FIELDS: Final = "event_id, dimension, label, annotator, labelled_at"


def decode_label(value: bytes | None) -> HumanLabelIn:
    """The label in one record's value; ``LabelRecordError`` says what is wrong with it."""
    try:
        return HumanLabelIn.model_validate_json(value or b"")
    except ValidationError as exc:
        raise LabelRecordError(
            f"not a human label: {explain(exc)}. A label is a JSON object with {FIELDS}"
        ) from None


def encode_label(label: HumanLabelIn) -> bytes:
    return label.model_dump_json().encode()
