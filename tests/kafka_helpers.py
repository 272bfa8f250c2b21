"""Reading what the pipeline wrote, as any read_committed consumer would, with deadlines."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from kafka import KafkaConsumer


class TopicReader:
    """Accumulates every committed record of some topics; ``until`` polls with a deadline."""

    def __init__(self, bootstrap: str, topics: Sequence[str]) -> None:
        self.records: dict[str, list[Any]] = defaultdict(list)
        self._consumer = KafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            enable_auto_commit=False,
            group_id=None,
        )

    def until(self, condition: Callable[[dict[str, list[Any]]], bool], *, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self.records):
            if time.monotonic() > deadline:
                counts = {t: len(r) for t, r in self.records.items()}
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; have {counts}")
            for tp, messages in self._consumer.poll(timeout_ms=200).items():
                self.records[tp.topic].extend(messages)

    def settle(self, quiet_s: float = 1.5) -> None:
        """Read until nothing new arrives for ``quiet_s`` seconds (to catch extra, unwanted records)."""
        last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            for tp, messages in self._consumer.poll(timeout_ms=200).items():
                if messages:
                    self.records[tp.topic].extend(messages)
                    last = time.monotonic()

    def close(self) -> None:
        self._consumer.close()
