"""The JSON edge of the event contract: pydantic models that validate incoming events.

Events arrive on Kafka as JSON (default) or as serialized ``evalstream.v1.LLMEvent`` protobuf.
JSON is validated here, with errors that name the field, and converted to the protobuf message that
travels through the pipeline. This module is shared by the pipeline (decoding), the replay tool
(encoding) and tests; it imports neither Beam nor gRPC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, ConfigDict, Field, field_validator

from evalstream.v1 import events_pb2

__all__ = [
    "FeedbackIn",
    "LLMEventIn",
    "MessageIn",
    "TokenCountsIn",
    "WireValueError",
    "from_proto",
    "to_proto",
]

NonEmpty = Annotated[str, Field(min_length=1, max_length=256)]


class FeedbackIn(StrEnum):
    POSITIVE = "positive"
    NEGATIVE = "negative"


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Annotated[str, Field(min_length=1, max_length=32)]
    content: str


class TokenCountsIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Annotated[int, Field(ge=0, le=2**31)] = 0
    completion: Annotated[int, Field(ge=0, le=2**31)] = 0


class LLMEventIn(BaseModel):
    """One prompt/response exchange, as JSON. Unknown fields are rejected, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    event_id: NonEmpty
    event_time: datetime
    model: NonEmpty
    model_version: Annotated[str, Field(max_length=256)] = ""
    route: Annotated[str, Field(max_length=256)] = "default"
    tenant: Annotated[str, Field(max_length=256)] = ""
    messages: Annotated[list[MessageIn], Field(min_length=1)]
    response: str
    finish_reason: Annotated[str, Field(max_length=64)] = ""  # "" = not known, as an unset proto field
    tokens: TokenCountsIn = TokenCountsIn()
    latency_ms: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    reference_answer: str | None = None
    feedback: FeedbackIn | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("event_time")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("event_time needs a timezone, e.g. 2024-05-01T12:00:00Z")
        try:
            return value.astimezone(UTC)
        except OverflowError:  # e.g. 9999-12-31T23:59:59-23:59 is past year 9999 in UTC
            raise ValueError(
                f"event_time {value.isoformat()} is outside the years 1-9999 once converted to UTC"
            ) from None


class WireValueError(ValueError):
    """A protobuf event holds a value the contract cannot represent: an enum number it does not
    define, or a ``Timestamp`` outside 0001-01-01..9999-12-31. ``field`` names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"field {field!r} is wrong: {message}")
        self.field = field


_FEEDBACK = {
    None: events_pb2.FEEDBACK_UNSPECIFIED,
    FeedbackIn.POSITIVE: events_pb2.FEEDBACK_POSITIVE,
    FeedbackIn.NEGATIVE: events_pb2.FEEDBACK_NEGATIVE,
}


def to_proto(event: LLMEventIn) -> events_pb2.LLMEvent:
    """Convert a validated JSON event to the wire message."""
    ts = Timestamp()
    ts.FromDatetime(event.event_time)
    msg = events_pb2.LLMEvent(
        event_id=event.event_id,
        event_time=ts,
        model=event.model,
        model_version=event.model_version,
        route=event.route,
        tenant=event.tenant,
        messages=[events_pb2.Message(role=m.role, content=m.content) for m in event.messages],
        response=event.response,
        finish_reason=event.finish_reason,
        tokens=events_pb2.TokenCounts(prompt=event.tokens.prompt, completion=event.tokens.completion),
        latency_ms=event.latency_ms,
        feedback=_FEEDBACK[event.feedback],
        labels=event.labels,
    )
    if event.reference_answer is not None:
        msg.reference_answer = event.reference_answer
    return msg


_FEEDBACK_IN = {v: k for k, v in _FEEDBACK.items()}


def from_proto(msg: events_pb2.LLMEvent) -> LLMEventIn:
    """Convert a wire message back to the JSON model (decoding, replay's protobuf mode, tests).

    Raises ``pydantic.ValidationError`` for values the model rejects and ``WireValueError`` for wire
    values it cannot even be given (proto3 keeps unknown enum numbers; a Timestamp can be out of range).
    """
    if msg.feedback not in _FEEDBACK_IN:
        raise WireValueError(
            "feedback",
            f"{msg.feedback} is not a Feedback number (expected one of {sorted(_FEEDBACK_IN)})",
        )
    try:
        when = msg.event_time.ToDatetime(tzinfo=UTC)
    except ValueError as exc:
        raise WireValueError("event_time", str(exc)) from None
    return LLMEventIn(
        event_id=msg.event_id,
        event_time=when,
        model=msg.model,
        model_version=msg.model_version,
        route=msg.route,
        tenant=msg.tenant,
        messages=[MessageIn(role=m.role, content=m.content) for m in msg.messages],
        response=msg.response,
        finish_reason=msg.finish_reason,
        tokens=TokenCountsIn(prompt=msg.tokens.prompt, completion=msg.tokens.completion),
        latency_ms=msg.latency_ms,
        reference_answer=msg.reference_answer if msg.HasField("reference_answer") else None,
        feedback=_FEEDBACK_IN[msg.feedback],
        labels=dict(msg.labels),
    )


def now_utc() -> datetime:
    return datetime.now(UTC)
