"""Building kafka-python clients, and saying in plain words why a Kafka call failed.

Every client gets ``KafkaSettings.client_kwargs()`` (bootstrap, security, client id) plus the options
of its job. ``KafkaEdgeError`` wraps a ``KafkaError`` with the cluster's address, what was being
done, and what to do; ``FencedError`` says another instance with the same transactional id (or
static group member id) took over, so this one must stop.
"""

from __future__ import annotations

from typing import Any

from evalstream.runtime.settings import KafkaSettings
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import (
    FencedInstanceIdError,
    InvalidProducerEpochError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    ProducerFencedError,
    TransactionalIdAuthorizationFailedError,
)

__all__ = [
    "FencedError",
    "KafkaEdgeError",
    "admin",
    "consumer",
    "explain",
    "fenced",
    "producer",
    "transactional_producer",
]


class KafkaEdgeError(RuntimeError):
    """A Kafka client could not be built or a call failed; the message says why and what to do."""


class FencedError(KafkaEdgeError):
    """A newer instance with the same transactional id or group instance id took over: stop."""


def fenced(exc: BaseException) -> bool:
    """True when ``exc`` means this instance was fenced by a newer one. A transactional producer's
    stale epoch counts: only a newer producer with the same id (or a transaction timeout, far longer
    than a batch's write) bumps it, and a zombie that made itself a new producer would fence its
    successor in turn."""
    return isinstance(exc, ProducerFencedError | FencedInstanceIdError | InvalidProducerEpochError)


def explain(kafka: KafkaSettings, doing: str, exc: BaseException) -> KafkaEdgeError:
    """``exc`` as a ``KafkaEdgeError`` (a ``FencedError`` when fenced) naming the cluster and a next step."""
    what = f"{type(exc).__name__}: {exc}"
    if fenced(exc):
        return FencedError(
            f"{doing} on {kafka.bootstrap}: fenced ({what}): another instance with the same transactional "
            "id or group instance id started; this one stops (run one process per id)"
        )
    if isinstance(exc, KafkaConnectionError | KafkaTimeoutError):
        hint = "is the broker running there? (--bootstrap or EVALSTREAM_KAFKA_BOOTSTRAP)"
    elif isinstance(exc, TransactionalIdAuthorizationFailedError):
        hint = "grant the principal Write and Describe on the transactional id (docs/kafka.md, ACLs)"
    else:
        hint = "see the broker's log"
    return KafkaEdgeError(f"{doing} on {kafka.bootstrap} failed ({what}); {hint}")


def consumer(kafka: KafkaSettings, **options: Any) -> KafkaConsumer:
    """A consumer with ``options`` (group, isolation level, fetch sizes) on top of the settings."""
    try:
        return KafkaConsumer(**options, **kafka.client_kwargs())
    except KafkaError as exc:
        raise explain(kafka, "connecting a consumer", exc) from exc


def producer(kafka: KafkaSettings, **options: Any) -> KafkaProducer:
    """A plain producer: ``acks=all`` unless ``options`` say otherwise."""
    try:
        return KafkaProducer(**{"acks": "all", **options}, **kafka.client_kwargs())
    except KafkaError as exc:
        raise explain(kafka, "connecting a producer", exc) from exc


def transactional_producer(kafka: KafkaSettings, transactional_id: str, **options: Any) -> KafkaProducer:
    """A producer with ``transactional_id``, initialised: Kafka aborts any transaction an earlier
    producer with the same id left open and fences that producer (its commits are refused)."""
    made = producer(kafka, transactional_id=transactional_id, **options)
    try:
        made.init_transactions()
    except KafkaError as exc:
        made.close(timeout=5)
        raise explain(kafka, f"initialising transactional id {transactional_id!r}", exc) from exc
    return made


def admin(kafka: KafkaSettings) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(**kafka.client_kwargs())
    except KafkaError as exc:
        raise explain(kafka, "connecting an admin client", exc) from exc
