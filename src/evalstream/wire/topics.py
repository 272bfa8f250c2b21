"""Kafka topic names and header names: the one place they are spelled."""

from __future__ import annotations

from typing import Final

EVENTS: Final = "llm.events"
VERDICTS: Final = "evalstream.verdicts"
SUMMARIES: Final = "evalstream.summaries"
DEADLETTER: Final = "evalstream.deadletter"
LABELS: Final = "evalstream.labels"
AUDIT: Final = "evalstream.audit"

#: Header that says how an event's value is encoded. Absent means JSON.
CONTENT_TYPE_HEADER: Final = "content-type"
CONTENT_TYPE_JSON: Final = "application/json"
CONTENT_TYPE_PROTOBUF: Final = "application/x-protobuf"
