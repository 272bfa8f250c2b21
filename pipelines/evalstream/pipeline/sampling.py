"""Sample: decide deterministically which events are judged.

An event is sampled when a hash of its event id, mapped to [0, 1), is below the rate for its
(model, route); the same id always gets the same decision, on any worker, on any retry. Always-judge
rules override the rate: negative user feedback, and finish reasons listed in ``always_finish_reasons``
(by default ``length`` and ``content_filter``). The rate actually applied is recorded with the event
so that the exporter can scale counts back up. Each element is a batch (a list of events).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import apache_beam as beam
import yaml
from pydantic import BaseModel, ConfigDict, Field

from evalstream.pipeline.records import SampledEvent, as_batches
from evalstream.v1 import events_pb2

__all__ = ["UNSAMPLED", "Sample", "SamplingConfig", "decide", "unit_hash"]

UNSAMPLED = "unsampled"

Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class SamplingConfig(BaseModel):
    """Rates per model and per model/route; the most specific match wins.

    ```yaml
    default_rate: 0.1
    models: {llama2orig: 0.5}
    routes: {"llama2orig/support": 1.0}
    ```
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_rate: Rate = 1.0
    models: dict[str, Rate] = Field(default_factory=dict)
    routes: dict[str, Rate] = Field(default_factory=dict)  # key "model/route"
    always_negative_feedback: bool = True
    always_finish_reasons: frozenset[str] = frozenset({"length", "content_filter"})

    @classmethod
    def load(cls, path: Path) -> SamplingConfig:
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read sampling config {path}: {exc}") from exc
        return cls.model_validate(raw)

    def rate_for(self, model: str, route: str) -> float:
        return self.routes.get(f"{model}/{route}", self.models.get(model, self.default_rate))


def unit_hash(event_id: str) -> float:
    """A stable map of the event id to [0, 1)."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def decide(event: events_pb2.LLMEvent, config: SamplingConfig) -> SampledEvent | None:
    """The sampled event with its rate, or None when the event is not judged."""
    rate = config.rate_for(event.model, event.route)
    forced = (
        config.always_negative_feedback and event.feedback == events_pb2.FEEDBACK_NEGATIVE
    ) or event.finish_reason in config.always_finish_reasons
    if forced:
        return SampledEvent(event=event, sample_rate=1.0, forced=True)
    if rate > 0 and unit_hash(event.event_id) < rate:
        return SampledEvent(event=event, sample_rate=rate, forced=False)
    return None


class _SampleFn(beam.DoFn):
    def __init__(self, config: SamplingConfig) -> None:
        self._config = config

    def process(self, events: list[events_pb2.LLMEvent]) -> Iterator[object]:
        sampled: list[SampledEvent] = []
        unsampled: list[events_pb2.LLMEvent] = []
        for event in events:
            chosen = decide(event, self._config)
            if chosen is None:
                unsampled.append(event)
            else:
                sampled.append(chosen)
        if sampled:
            yield sampled
        if unsampled:
            yield beam.pvalue.TaggedOutput(UNSAMPLED, unsampled)


class Sample(beam.PTransform):
    """Batches of LLMEvent -> (batches of SampledEvent for judging, batches of unsampled LLMEvent for
    counting)."""

    def __init__(self, config: SamplingConfig) -> None:
        super().__init__()
        self._config = config

    def expand(self, batches: beam.pvalue.PCollection) -> beam.pvalue.DoOutputsTuple:
        decide_fn = beam.ParDo(_SampleFn(self._config))
        return as_batches(
            batches | "Decide" >> decide_fn.with_outputs(UNSAMPLED, main="sampled"), "sampled", UNSAMPLED
        )
