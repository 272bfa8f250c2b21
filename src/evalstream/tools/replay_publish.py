"""Publishing a replay: ``publish`` encodes each planned slot at its publishing time, paces it
(``RateLimiter``), sends it to any ``RecordSink`` and counts what the sink acknowledged
(``ReplayReport``). Nothing here knows Kafka: the Kafka sink and the CLI are in ``replay``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Protocol

from evalstream.tools.replay_events import Encoding, EventKind, OutgoingRecord, Slot, duplicate, encode_slot
from evalstream.wire.contract import now_utc

__all__ = ["Done", "RateLimiter", "RecordSink", "ReplayReport", "publish"]


@dataclass(kw_only=True)
class RateLimiter:
    """Paces calls to ``rate`` per second (0: no limit). Falls behind by at most one second before it
    stops trying to catch up, so a stall is not followed by a burst."""

    rate: float
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _next: float | None = field(default=None, init=False, repr=False)

    def wait(self) -> None:
        if self.rate <= 0:
            return
        now = self.clock()
        if self._next is None or self._next < now - 1.0:
            self._next = now
        delay = self._next - now
        if delay > 0:
            self.sleep(delay)
        self._next += 1.0 / self.rate


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayReport:
    """What was sent, by kind; ``expected_dead_letters`` is what the pipeline must dead-letter."""

    topic: str
    run_id: str
    seed: int
    encoding: Encoding
    sent: Mapping[EventKind, int]  # acknowledged by the broker
    failed: Mapping[EventKind, int]  # not acknowledged
    bytes_sent: int
    elapsed_s: float
    first_error: str | None = None

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    @property
    def good(self) -> int:
        return self.sent.get(EventKind.GOOD, 0)

    @property
    def expected_dead_letters(self) -> int:
        return self.total_sent - self.good

    @property
    def events_per_s(self) -> float:
        return self.total_sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


Done = Callable[[BaseException | None], None]


class RecordSink(Protocol):
    """Where records go. ``done`` is called once per record, possibly from another thread."""

    def send(self, record: OutgoingRecord, done: Done) -> None: ...

    def flush(self) -> None: ...


class _Tally:
    """Counts acknowledgements; the producer calls back from its I/O thread, hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent: Counter[EventKind] = Counter()
        self.failed: Counter[EventKind] = Counter()
        self.bytes = 0
        self.first_error: str | None = None

    def done_for(self, record: OutgoingRecord) -> Done:
        def done(error: BaseException | None) -> None:
            with self._lock:
                if error is None:
                    self.sent[record.kind] += 1
                    self.bytes += len(record.value)
                else:
                    self.failed[record.kind] += 1
                    if self.first_error is None:
                        self.first_error = f"{record.kind} record {record.key!r}: {error!r}"

        return done


def publish(
    plan: Iterable[Slot],
    *,
    sink: RecordSink,
    topic: str,
    encoding: Encoding,
    run_id: str,
    seed: int,
    limiter: RateLimiter,
    now: Callable[[], datetime] = now_utc,
    clock: Callable[[], float] = time.monotonic,
    on_sent: Callable[[], None] | None = None,
) -> ReplayReport:
    """Encode each slot at its publishing time, pace it, send it; flush and count what was acknowledged."""
    kept: dict[int, OutgoingRecord] = {}  # records later duplicates copy, for the current pass
    current_pass = 0
    tally = _Tally()
    started = clock()
    for slot in plan:
        if slot.pass_index != current_pass:
            kept.clear()
            current_pass = slot.pass_index
        limiter.wait()
        if slot.duplicate_of is not None:
            record = duplicate(kept[slot.duplicate_of])
        else:
            record = encode_slot(slot, now=now(), encoding=encoding)
        if slot.keep:
            kept[slot.index] = record
        sink.send(record, tally.done_for(record))
        if on_sent is not None:
            on_sent()
    sink.flush()
    return ReplayReport(
        topic=topic,
        run_id=run_id,
        seed=seed,
        encoding=encoding,
        sent=MappingProxyType(dict(tally.sent)),
        failed=MappingProxyType(dict(tally.failed)),
        bytes_sent=tally.bytes,
        elapsed_s=clock() - started,
        first_error=tally.first_error,
    )
