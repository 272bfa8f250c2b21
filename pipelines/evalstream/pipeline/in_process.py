"""``InProcess``: a picklable reference to an object of this process, for DoFns on in-process runners.

The local runner lends its DoFns state that must outlive one pipeline run and must not be copied into
the pickled pipeline: the dedupe window (``dedupe.SharedSeenIds``), the judges' circuit breakers
(``judge_cascade.SharedBreakers``) and the current batch's clock and id (``batch_clock.BatchClock``).
Each is an ``InProcess``: its creator keeps the object (the strong reference that keeps it alive),
pickling keeps only a tag, and an unpickled copy finds the object again by that tag in Beam's
``Shared`` registry (as RunInference shares a model). Where the object is not found (the creator is
gone, or the DoFn runs in another process), ``_missing`` says what happens: by default an error.
"""

from __future__ import annotations

import uuid
from typing import Generic, TypeVar

from apache_beam.utils import shared

__all__ = ["InProcess"]

T = TypeVar("T")


class InProcess(Generic[T]):
    """A reference to ``obj`` that survives pickling within this process. ``obj`` must be weakly
    referenceable (a plain class instance)."""

    def __init__(self, obj: T) -> None:
        self._handle = shared.Shared()
        self._tag = uuid.uuid4().hex
        self._obj: T | None = self._handle.acquire(lambda: obj, tag=self._tag)

    def __getstate__(self) -> dict[str, object]:
        return {name: value for name, value in self.__dict__.items() if name != "_obj"}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._obj = None

    def _missing(self) -> T:
        raise RuntimeError(
            f"the object a {type(self).__name__} refers to is gone: it needs an in-process runner, and "
            f"its creator must keep the {type(self).__name__} alive while the pipeline runs"
        )

    def resolve(self) -> T:
        if self._obj is None:
            self._obj = self._handle.acquire(self._missing, tag=self._tag)
        return self._obj
