"""The clock and id of the batch a reused bounded pipeline is judging: ``BatchClock``.

The local runner builds its bounded Beam pipeline once and runs it for every micro-batch
(``bounded.BatchPipeline``): building and converting the pipeline cost ~0.18 s per batch. The
transforms still need each batch's clock (``Decode``'s age limits, dead letters' ``failed_at``, the
verdicts' ``judged_at``) and its id (``Dedupe``'s claims in the shared window, ``Summarise``'s
``batch_id``), which change between runs while the pipeline does not. ``BatchClock`` carries them: the
runner sets them before each run, and the DoFns read them through Beam's ``Shared`` (a process-local
registry, as ``dedupe.SharedSeenIds`` and RunInference's shared models), so the pickled pipeline
holds only a tag. It needs an in-process runner, like the shared window.

Where a transform takes ``now``, it takes a fixed ``datetime`` (a one-off bounded pipeline), ``None``
(the wall clock, per batch: streaming runners) or a ``BatchClock``; ``now_of`` reads any of them.
Where it takes a batch id, a ``str`` or a ``BatchClock``; ``batch_id_of`` reads either.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from apache_beam.utils import shared

__all__ = ["BatchClock", "Now", "batch_id_of", "now_of"]


class _Current:
    """What the runner set last (a plain class: ``Shared`` holds it by weak reference)."""

    def __init__(self) -> None:
        self.now: datetime | None = None
        self.batch_id: str | None = None


class BatchClock:
    """A picklable reference to the clock and id of the batch being run, set by its creator."""

    def __init__(self) -> None:
        current = _Current()
        self._handle = shared.Shared()
        self._tag = uuid.uuid4().hex
        self._current: _Current | None = self._handle.acquire(lambda: current, tag=self._tag)
        self._anchor = self._current  # the creator's strong reference keeps it alive

    def __getstate__(self) -> dict[str, object]:
        return {"_handle": self._handle, "_tag": self._tag}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._current = None

    def set(self, *, now: datetime, batch_id: str) -> None:
        """The next run's clock and batch id (the creator only, between runs)."""
        current = self._resolve()
        current.now, current.batch_id = now, batch_id

    def now(self) -> datetime:
        now = self._resolve().now
        if now is None:
            raise RuntimeError("BatchClock.now() before the runner set a batch")
        return now

    def batch_id(self) -> str:
        batch_id = self._resolve().batch_id
        if batch_id is None:
            raise RuntimeError("BatchClock.batch_id() before the runner set a batch")
        return batch_id

    def _resolve(self) -> _Current:
        if self._current is None:

            def missing() -> _Current:
                raise RuntimeError(
                    "the BatchClock is gone: a reused bounded pipeline needs an in-process runner, and "
                    "the runner must keep its BatchClock alive while the pipeline runs"
                )

            self._current = self._handle.acquire(missing, tag=self._tag)
        return self._current


Now = datetime | BatchClock | None


def now_of(now: Now) -> datetime:
    """The batch clock: fixed, the ``BatchClock``'s current batch's, or the wall clock (None)."""
    if isinstance(now, BatchClock):
        return now.now()
    return now or datetime.now(UTC)


def batch_id_of(batch_id: str | BatchClock) -> str:
    return batch_id.batch_id() if isinstance(batch_id, BatchClock) else batch_id
