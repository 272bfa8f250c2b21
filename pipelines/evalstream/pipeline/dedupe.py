"""Dedupe: one event per event id; every later copy becomes a ``duplicate_event_id`` dead letter.

Each element is a batch (a list of ``Decoded``), or with the runner's shared window a part of one.
Within a batch, the first copy of an event id by (partition, offset) wins. Across batches, the
micro-batch runner keeps the ids it has recently judged or counted in a bounded
``SeenIds`` window and lends it to the transform through Beam's ``Shared`` (the same mechanism
RunInference uses to share a model), so nothing is copied into each batch's pipeline. A streaming
runner would keep the same window in per-key state with an expiry timer instead.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container, Iterable, Iterator
from datetime import datetime

import apache_beam as beam

from evalstream.pipeline.batch_clock import BatchClock, Now, batch_id_of, now_of
from evalstream.pipeline.in_process import InProcess
from evalstream.pipeline.records import DeadReason, Decoded, Stage, as_batches, dead_letter
from evalstream.v1 import verdict_pb2

__all__ = ["Dedupe", "SeenIds", "SharedSeenIds", "dedupe_batch"]

DEAD = "dead"


class SeenIds:
    """A bounded, insertion-ordered set of recently judged event ids (oldest evicted first), and the
    ids claimed by batches not yet committed.

    A batch's ``Dedupe`` claims each event id it lets through (``claims(batch_id)``), so a copy later
    in the same batch, or in a batch processed before this one is committed, is a duplicate. Once the
    batch is committed the runner moves the ids it judged or counted into the window (``commit``);
    when it is not, its claims are dropped (``release``) and the batch is read again.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._claims: dict[str, dict[str, int]] = {}  # batch id -> {event id: offset of its first copy}

    def add_all(self, ids: Iterable[str]) -> None:
        for event_id in ids:
            self._ids[event_id] = None
            self._ids.move_to_end(event_id)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)

    def claims(self, batch_id: str) -> dict[str, int]:
        """The event ids a batch let through so far (with the offset of each first copy)."""
        return self._claims.setdefault(batch_id, {})

    def commit(self, batch_id: str, ids: Iterable[str]) -> None:
        """The batch is written: its claims end, and ``ids`` (those judged or counted) join the window."""
        self._claims.pop(batch_id, None)
        self.add_all(ids)

    def release(self, batch_id: str) -> None:
        """The batch was not written: forget its claims."""
        self._claims.pop(batch_id, None)

    def snapshot(self) -> frozenset[str]:
        return frozenset(self._ids)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids or any(event_id in claimed for claimed in self._claims.values())

    def __len__(self) -> int:
        return len(self._ids)


class SharedSeenIds(InProcess[SeenIds]):
    """A picklable reference to a process-local ``SeenIds``, for runners that execute in-process.

    The creator holds the strong reference that keeps the window alive; DoFns resolve it by tag.
    """

    def _missing(self) -> SeenIds:
        raise RuntimeError(
            "the shared SeenIds window is gone: Dedupe with shared ids needs an in-process runner "
            "and the runner must keep its SharedSeenIds alive while the pipeline runs"
        )


def dedupe_batch(
    batch: Iterable[Decoded],
    *,
    seen: Container[str],
    now: datetime,
    firsts: dict[str, int] | None = None,
) -> tuple[list[Decoded], list[verdict_pb2.DeadLetter]]:
    """The first copy of each event id not in ``seen`` nor in ``firsts`` (by partition, offset), and a
    dead letter for every other copy. ``firsts``: the ids let through earlier in the same batch, with
    the offset of each first copy; updated."""
    firsts = {} if firsts is None else firsts
    unique: list[Decoded] = []
    dead: list[verdict_pb2.DeadLetter] = []
    for copy in sorted(batch, key=lambda c: (c.record.partition, c.record.offset)):
        event_id = copy.event.event_id
        first_offset = firsts.get(event_id)
        if first_offset is None and event_id not in seen:
            firsts[event_id] = copy.record.offset
            unique.append(copy)
            continue
        where = f"offset {first_offset}" if first_offset is not None else "an earlier batch"
        dead.append(
            dead_letter(
                raw=copy.record.value,
                stage=Stage.DEDUPE,
                reason=DeadReason.DUPLICATE_EVENT_ID,
                message=f"event_id {event_id!r} was already seen ({where}); judged once",
                source=copy.record,
                failed_at=now,
                event_id=event_id,
                model=copy.event.model,
            )
        )
    return unique, dead


class _PickFirst(beam.DoFn):
    def __init__(
        self, seen: frozenset[str] | SharedSeenIds, now: Now, batch_id: str | BatchClock | None
    ) -> None:
        self._seen_ref = seen
        self._fixed_now = now
        self._batch_id = batch_id

    def setup(self) -> None:
        ref = self._seen_ref
        self._seen: frozenset[str] | SeenIds = ref.resolve() if isinstance(ref, SharedSeenIds) else ref

    def process(self, batch: list[Decoded]) -> Iterator[object]:
        now = now_of(self._fixed_now)
        firsts = (
            self._seen.claims(batch_id_of(self._batch_id))
            if isinstance(self._seen, SeenIds) and self._batch_id is not None
            else None
        )
        unique, dead = dedupe_batch(batch, seen=self._seen, now=now, firsts=firsts)
        if unique:
            yield unique
        if dead:
            yield beam.pvalue.TaggedOutput(DEAD, dead)


class Dedupe(beam.PTransform):
    """Batches of ``Decoded`` -> (batches of first copies, batches of dead letters for the rest):
    ``result.events``, ``result.dead``.

    With a shared window (``SharedSeenIds``) and a ``batch_id``, the elements may be parts of one
    batch, in (partition, offset) order: the ids each part lets through are claimed in the window for
    the batch, so later parts see them. Otherwise each element is a batch of its own."""

    def __init__(
        self,
        *,
        seen: frozenset[str] | SharedSeenIds = frozenset(),
        now: Now = None,
        batch_id: str | BatchClock | None = None,
    ) -> None:
        super().__init__()
        self._seen = seen
        self._now = now
        self._batch_id = batch_id

    def expand(self, batches: beam.pvalue.PCollection) -> beam.pvalue.DoOutputsTuple:
        fn = _PickFirst(self._seen, self._now, self._batch_id)
        return as_batches(
            batches | "PickFirst" >> beam.ParDo(fn).with_outputs(DEAD, main="events"), "events", DEAD
        )
