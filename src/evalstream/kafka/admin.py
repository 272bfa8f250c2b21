"""Create the topics evalstream uses, when they are missing. The one place that calls the admin API.

Exceptions: ``TopicSetupError`` when the cluster cannot be reached or refuses to create a topic.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping

from evalstream.kafka import clients
from evalstream.kafka.clients import KafkaEdgeError
from evalstream.runtime.settings import KafkaSettings
from evalstream.wire import topics
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

__all__ = ["DEFAULT_PARTITIONS", "TopicSetupError", "ensure_topics"]

log = logging.getLogger(__name__)

#: Partitions per topic when evalstream creates them (a real cluster's operators may choose more).
DEFAULT_PARTITIONS: Mapping[str, int] = {
    topics.EVENTS: 4,
    topics.VERDICTS: 4,
    topics.SUMMARIES: 1,
    topics.DEADLETTER: 1,
    topics.AUDIT: 1,
    topics.LABELS: 1,
}


#: Topic configs set at creation. Events may be large: the broker must accept a several-MB event so
#: the pipeline can dead-letter it as "oversized" instead of the producer failing.
DEFAULT_CONFIGS: Mapping[str, Mapping[str, str]] = {
    topics.EVENTS: {"max.message.bytes": str(8 * 1024 * 1024)}
}


class TopicSetupError(RuntimeError):
    """Topics could not be created."""


def ensure_topics(
    kafka: KafkaSettings,
    wanted: Mapping[str, int] = DEFAULT_PARTITIONS,
    configs: Mapping[str, Mapping[str, str]] = DEFAULT_CONFIGS,
) -> list[str]:
    """Create each missing topic with its partition count and configs; returns the names created."""
    try:
        admin = clients.admin(kafka)
    except KafkaEdgeError as exc:
        raise TopicSetupError(str(exc)) from exc
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, n, 1, topic_configs=dict(configs.get(name, {})))
            for name, n in wanted.items()
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # created concurrently: fine
                admin.create_topics(missing)
            log.info("created topics %s", ", ".join(t.name for t in missing))
        return [t.name for t in missing]
    except KafkaError as exc:
        raise TopicSetupError(f"cannot create topics on {kafka.bootstrap}: {exc}") from exc
    finally:
        admin.close()
