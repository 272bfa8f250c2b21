"""Dedupe: one event per event id; every later copy becomes a ``duplicate_event_id`` dead letter.

Within a batch, copies are grouped by event id and the first by (partition, offset) wins. Across
batches, the micro-batch runner keeps the ids it has recently judged or counted in a bounded
``SeenIds`` window and lends it to the transform through Beam's ``Shared`` (the same mechanism
RunInference uses to share a model), so nothing is copied into each batch's pipeline. A streaming
runner would keep the same window in per-key state with an expiry timer instead.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

import apache_beam as beam
from apache_beam.utils import shared

from evalstream.pipeline.records import DeadReason, Decoded, Stage, dead_letter

__all__ = ["Dedupe", "SeenIds", "SharedSeenIds"]

DEAD = "dead"


class SeenIds:
    """A bounded, insertion-ordered set of recently judged event ids (oldest evicted first)."""

    def __init__(self, capacity: int = 200_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add_all(self, ids: Iterable[str]) -> None:
        for event_id in ids:
            self._ids[event_id] = None
            self._ids.move_to_end(event_id)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)

    def snapshot(self) -> frozenset[str]:
        return frozenset(self._ids)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


class SharedSeenIds:
    """A picklable reference to a process-local ``SeenIds``, for runners that execute in-process.

    The creator holds the strong reference that keeps the window alive; DoFns resolve it by tag.
    """

    def __init__(self, seen: SeenIds) -> None:
        self._handle = shared.Shared()
        self._tag = uuid.uuid4().hex
        self._anchor = self._handle.acquire(lambda: seen, tag=self._tag)

    def __getstate__(self) -> dict[str, object]:
        return {"_handle": self._handle, "_tag": self._tag}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)

    def resolve(self) -> SeenIds:
        def missing() -> SeenIds:
            raise RuntimeError(
                "the shared SeenIds window is gone: Dedupe with shared ids needs an in-process runner "
                "and the runner must keep its SharedSeenIds alive while the pipeline runs"
            )

        found: SeenIds = self._handle.acquire(missing, tag=self._tag)
        return found


class _PickFirst(beam.DoFn):
    def __init__(self, seen: frozenset[str] | SharedSeenIds, now: datetime | None) -> None:
        self._seen_ref = seen
        self._fixed_now = now

    def setup(self) -> None:
        ref = self._seen_ref
        self._seen: frozenset[str] | SeenIds = ref.resolve() if isinstance(ref, SharedSeenIds) else ref

    def start_bundle(self) -> None:
        self._now = self._fixed_now or datetime.now(UTC)

    def process(self, element: tuple[str, Iterable[Decoded]]) -> Iterator[object]:
        event_id, copies = element
        ordered = sorted(copies, key=lambda c: (c.record.partition, c.record.offset))
        first_dup = 0 if event_id in self._seen else 1
        if first_dup:
            yield ordered[0]
        for copy in ordered[first_dup:]:
            record, event = copy.record, copy.event
            where = "an earlier batch" if not first_dup else f"offset {ordered[0].record.offset}"
            yield beam.pvalue.TaggedOutput(
                DEAD,
                dead_letter(
                    raw=record.value,
                    stage=Stage.DEDUPE,
                    reason=DeadReason.DUPLICATE_EVENT_ID,
                    message=f"event_id {event_id!r} was already seen ({where}); judged once",
                    source=record,
                    failed_at=self._now,
                    event_id=event_id,
                    model=event.model,
                ),
            )


class Dedupe(beam.PTransform):
    """``Decoded`` -> (first copies, dead letters for the rest): ``result.events``, ``result.dead``."""

    def __init__(
        self, *, seen: frozenset[str] | SharedSeenIds = frozenset(), now: datetime | None = None
    ) -> None:
        super().__init__()
        self._seen = seen
        self._now = now

    def expand(self, pairs: beam.pvalue.PCollection) -> beam.pvalue.DoOutputsTuple:
        return (
            pairs
            | "KeyByEventId" >> beam.Map(lambda d: (d.event.event_id, d))
            | "GroupCopies" >> beam.GroupByKey()
            | "PickFirst" >> beam.ParDo(_PickFirst(self._seen, self._now)).with_outputs(DEAD, main="events")
        )
