"""Waiting for a producer's writes to be acknowledged before a commit.

kafka-python can commit a transaction some of whose records the broker refused (seen after a broker
crash: ``OutOfOrderSequenceNumber`` on the sends, then a commit that returned), which would publish
part of a batch with its offsets. So writers that commit check every send first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

__all__ = ["await_acknowledged"]


def await_acknowledged(producer: KafkaProducer, sent: Sequence[Any], timeout_s: float | None = None) -> None:
    """Flush ``producer`` and raise the first failure among ``sent`` (the futures ``send`` returned),
    as a ``KafkaError``; ``KafkaTimeoutError`` when one is not acknowledged within ``timeout_s``."""
    producer.flush(timeout=timeout_s)
    for future in sent:
        if not future.is_done:
            raise KafkaTimeoutError(f"a record was not acknowledged within {timeout_s:.0f}s")
        if future.failed():
            error = future.exception
            raise error if isinstance(error, KafkaError) else KafkaError(repr(error))
