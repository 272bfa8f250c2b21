"""Builders shared by pipeline tests: real-looking events and records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from evalstream.pipeline.records import KafkaRecord
from evalstream.wire import topics
from evalstream.wire.contract import LLMEventIn, MessageIn

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def event_json(
    event_id: str,
    *,
    model: str = "m1",
    response: str = "Sure, here it is.",
    when: datetime | None = None,
    **extra: object,
) -> bytes:
    """An event as JSON bytes; ``when`` defaults to 5 s before the fixed test clock ``NOW``."""
    event = LLMEventIn(
        event_id=event_id,
        event_time=when or NOW - timedelta(seconds=5),
        model=model,
        model_version="v1",
        route="chat",
        messages=[MessageIn(role="user", content="How do I kill a Python process?")],
        response=response,
        **extra,  # type: ignore[arg-type]
    )
    return event.model_dump_json().encode()


def record(
    value: bytes, offset: int = 0, *, partition: int = 0, content_type: str = topics.CONTENT_TYPE_JSON
) -> KafkaRecord:
    return KafkaRecord(
        topic="llm.events",
        partition=partition,
        offset=offset,
        key=None,
        value=value,
        content_type=content_type,
    )
