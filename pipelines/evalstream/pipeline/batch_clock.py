"""The clock and id of the batch a reused bounded pipeline is judging: ``BatchClock``.

The local runner builds its bounded Beam pipeline once and runs it for every micro-batch
(``bounded.BatchPipeline``): building and converting the pipeline cost ~0.18 s per batch. The
transforms still need each batch's clock (``Decode``'s age limits, dead letters' ``failed_at``, the
verdicts' ``judged_at``) and its id (``Dedupe``'s claims in the shared window, ``Summarise``'s
``batch_id``), which change between runs while the pipeline does not. ``BatchClock`` carries them: the
runner sets them before each run, and the DoFns read them through an ``in_process.InProcess``
reference (Beam's ``Shared``, as the dedupe window and the circuit breakers), so the pickled pipeline
holds only a tag. It needs an in-process runner, like the shared window.

Where a transform takes ``now``, it takes a fixed ``datetime`` (a one-off bounded pipeline), ``None``
(the wall clock, per batch: streaming runners) or a ``BatchClock``; ``now_of`` reads any of them.
Where it takes a batch id, a ``str`` or a ``BatchClock``; ``batch_id_of`` reads either.
"""

from __future__ import annotations

from datetime import UTC, datetime

from evalstream.pipeline.in_process import InProcess

__all__ = ["BatchClock", "Now", "batch_id_of", "now_of"]


class _Current:
    """What the runner set last (a plain class: ``Shared`` holds it by weak reference)."""

    def __init__(self) -> None:
        self.now: datetime | None = None
        self.batch_id: str | None = None


class BatchClock(InProcess[_Current]):
    """A picklable reference to the clock and id of the batch being run, set by its creator."""

    def __init__(self) -> None:
        super().__init__(_Current())

    def set(self, *, now: datetime, batch_id: str) -> None:
        """The next run's clock and batch id (the creator only, between runs)."""
        current = self.resolve()
        current.now, current.batch_id = now, batch_id

    def now(self) -> datetime:
        now = self.resolve().now
        if now is None:
            raise RuntimeError("BatchClock.now() before the runner set a batch")
        return now

    def batch_id(self) -> str:
        batch_id = self.resolve().batch_id
        if batch_id is None:
            raise RuntimeError("BatchClock.batch_id() before the runner set a batch")
        return batch_id


Now = datetime | BatchClock | None


def now_of(now: Now) -> datetime:
    """The batch clock: fixed, the ``BatchClock``'s current batch's, or the wall clock (None)."""
    if isinstance(now, BatchClock):
        return now.now()
    return now or datetime.now(UTC)


def batch_id_of(batch_id: str | BatchClock) -> str:
    return batch_id.batch_id() if isinstance(batch_id, BatchClock) else batch_id
