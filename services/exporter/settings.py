"""Settings of the exporter process. Read once in ``main()``, passed down.

Each setting is an explicit argument (the command line) first, then an environment variable, then
the default. Kafka itself is reached through ``evalstream.settings.KafkaSettings``
(``EVALSTREAM_KAFKA_*``). Environment names are ``EVALSTREAM_EXPORTER_<FIELD>``:

=======================================  ==========================================================
``EVALSTREAM_EXPORTER_VERDICTS_TOPIC``   topic of Verdicts (default ``evalstream.verdicts``)
``EVALSTREAM_EXPORTER_SUMMARIES_TOPIC``  topic of Summary partials (default ``evalstream.summaries``)
``EVALSTREAM_EXPORTER_GROUP_ID``         consumer group (default ``evalstream-exporter``); run one
                                         exporter per group
``EVALSTREAM_EXPORTER_INSTANCE_ID``     static group membership id (default ``exporter-0``)
``EVALSTREAM_EXPORTER_STATE_FILE``       totals + offsets, saved together (default
                                         ``.evalstream/exporter/state.json``)
``EVALSTREAM_EXPORTER_METRICS_HOST``     address of ``/metrics`` (default ``127.0.0.1``)
``EVALSTREAM_EXPORTER_METRICS_PORT``     port of ``/metrics``; 0 picks a free one (default 9464)
``EVALSTREAM_EXPORTER_FLUSH_INTERVAL_S`` seconds between saves; scrapes see applied records after
                                         the save (default 1.0)
``EVALSTREAM_EXPORTER_MAX_POLL_RECORDS`` most records per poll (default 2000)
``EVALSTREAM_EXPORTER_LAG_INTERVAL_S``   seconds between consumer-lag probes (default 5.0)
``EVALSTREAM_EXPORTER_PIPELINE_GROUP``   the pipeline's consumer group, to report its input lag
                                         (default ``evalstream-pipeline``; empty: don't)
``EVALSTREAM_EXPORTER_EVENTS_TOPIC``     the pipeline's input topic (default ``llm.events``)
``EVALSTREAM_EXPORTER_LABEL_CAPS``       JSON object, label name -> most distinct values, e.g.
                                         ``{"model": 50}`` (others keep their defaults)
``EVALSTREAM_EXPORTER_LABEL_ALLOW``      JSON object, label name -> the only values kept, e.g.
                                         ``{"route": ["chat", "search"]}``
=======================================  ==========================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from evalstream import topics

from .labels import LabelBudget, LabelName

__all__ = ["ENV_PREFIX", "ExporterSettings"]

#: Prefix of every exporter environment variable.
ENV_PREFIX: Final = "EVALSTREAM_EXPORTER_"


class ExporterSettings(BaseSettings):
    """What the exporter reads, where it keeps its state, where it serves, and its label budget."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    verdicts_topic: Annotated[str, Field(min_length=1)] = topics.VERDICTS
    summaries_topic: Annotated[str, Field(min_length=1)] = topics.SUMMARIES
    group_id: Annotated[str, Field(min_length=1)] = "evalstream-exporter"
    #: Static membership (KIP-345): a restart with the same id takes the partitions back at once.
    instance_id: Annotated[str, Field(min_length=1)] = "exporter-0"
    state_file: Path = Path(".evalstream/exporter/state.json")
    metrics_host: str = "127.0.0.1"
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9464
    flush_interval_s: Annotated[float, Field(ge=0.0)] = 1.0
    max_poll_records: Annotated[int, Field(ge=1)] = 2000
    lag_interval_s: Annotated[float, Field(gt=0.0)] = 5.0
    #: The pipeline's consumer group; its lag on ``events_topic`` is exported. Empty: not probed.
    pipeline_group: str = "evalstream-pipeline"
    events_topic: str = topics.EVENTS
    label_caps: dict[LabelName, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    label_allow: dict[LabelName, list[str]] = Field(default_factory=dict)

    @field_validator("label_caps", "label_allow", mode="before")
    @classmethod
    def _known_label_names(cls, value: object) -> object:
        if isinstance(value, dict):
            known = [str(name) for name in LabelName]
            unknown = sorted(str(k) for k in value if str(k) not in known)
            if unknown:
                raise ValueError(f"unknown label name(s) {unknown}; metrics only carry {known}")
        return value

    def budget(self) -> LabelBudget:
        base = LabelBudget()
        return LabelBudget(
            caps={**base.caps, **self.label_caps},
            allow={name: frozenset(values) for name, values in self.label_allow.items()},
        )
