"""Settings of the exporter process. Read once in ``main()``, passed down.

Each setting is an explicit argument (the command line) first, then an environment variable, then
the default. Kafka itself is reached through ``evalstream.runtime.settings.KafkaSettings``
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
``EVALSTREAM_EXPORTER_LABELS_TOPIC``     topic of human labels (default ``evalstream.labels``;
                                         empty: no judge agreement)
``EVALSTREAM_EXPORTER_DRIFT_REFERENCE``  ``trailing`` (the window before the current one) or
                                         ``pinned`` (a baseline kept once); default trailing
``EVALSTREAM_EXPORTER_DRIFT_CURRENT_S``  current drift window, seconds (default 3600)
``EVALSTREAM_EXPORTER_DRIFT_BUCKET_S``   its bucket size, a multiple of 60 (default 600)
``EVALSTREAM_EXPORTER_DRIFT_REFERENCE_S`` length of the reference, seconds (default 86400)
``EVALSTREAM_EXPORTER_DRIFT_REFERENCE_BUCKET_S`` bucket size of a trailing reference (default 3600)
``EVALSTREAM_EXPORTER_DRIFT_BASELINE_START`` pinned: unix seconds where the baseline starts
                                         (default: each model and route's first minute)
``EVALSTREAM_EXPORTER_DRIFT_BINS``       PSI and chi-square bins (reference quantiles; default 10)
``EVALSTREAM_EXPORTER_DRIFT_MIN_SAMPLES`` fewest items in each window before drift is reported (50)
``EVALSTREAM_EXPORTER_AGREEMENT_TRUTH_ANNOTATOR`` whose labels judges are scored against
                                         (default ``adjudicated``)
``EVALSTREAM_EXPORTER_AGREEMENT_TTL_S``  how long a verdict or label waits for the other (86400)
``EVALSTREAM_EXPORTER_AGREEMENT_MAX_PENDING`` most waiting verdicts, and labels (20000 each)
``EVALSTREAM_EXPORTER_AGREEMENT_WINDOW`` pairs the accuracy and kappa gauges are computed on (500)
``EVALSTREAM_EXPORTER_AGREEMENT_RESAMPLES`` bootstrap resamples of the kappa interval (1000)
``EVALSTREAM_EXPORTER_CASCADE_CONFIG``   the cascade config the pipeline runs (YAML): its alpha, delta
                                         and calibrated agreements are what the guarantee monitor
                                         tests (``guarantee.py``); unset: no guarantee series
=======================================  ==========================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from evalstream.wire import topics
from evalstream.wire.cascade_config import CascadeConfig

from .agreement import AgreementConfig
from .drift import DriftConfig, Reference
from .guarantee import GuaranteeTarget
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
    #: Human labels for judge agreement; empty: not read.
    labels_topic: str = topics.LABELS
    drift_reference: Reference = Reference.TRAILING
    drift_current_s: int = 3600
    drift_bucket_s: int = 600
    drift_reference_s: int = 86400
    drift_reference_bucket_s: int = 3600
    drift_baseline_start: int | None = None
    drift_bins: int = 10
    drift_min_samples: int = 50
    agreement_truth_annotator: Annotated[str, Field(min_length=1)] = "adjudicated"
    agreement_ttl_s: float = 86400.0
    agreement_max_pending: int = 20_000
    agreement_window: int = 500
    agreement_resamples: int = 1000
    #: The cascade config the pipeline runs; the guarantee monitor tests its promises. None: off.
    cascade_config: Path | None = None

    @field_validator("label_caps", "label_allow", mode="before")
    @classmethod
    def _known_label_names(cls, value: object) -> object:
        if isinstance(value, dict):
            known = [str(name) for name in LabelName]
            unknown = sorted(str(k) for k in value if str(k) not in known)
            if unknown:
                raise ValueError(f"unknown label name(s) {unknown}; metrics only carry {known}")
        return value

    @model_validator(mode="after")
    def _windows(self) -> ExporterSettings:
        self.drift_config()  # ValueError (a validation error) naming what does not fit
        self.agreement_config()
        self.guarantee()  # the cascade config must load, or the exporter does not start
        return self

    def drift_config(self) -> DriftConfig:
        return DriftConfig(
            reference=self.drift_reference,
            bucket_s=self.drift_bucket_s,
            current_s=self.drift_current_s,
            reference_s=self.drift_reference_s,
            reference_bucket_s=self.drift_reference_bucket_s,
            baseline_start=self.drift_baseline_start,
            bins=self.drift_bins,
            min_samples=self.drift_min_samples,
        )

    def agreement_config(self) -> AgreementConfig:
        return AgreementConfig(
            truth_annotator=self.agreement_truth_annotator,
            ttl_s=self.agreement_ttl_s,
            max_pending=self.agreement_max_pending,
            window=self.agreement_window,
            resamples=self.agreement_resamples,
        )

    def guarantee(self) -> GuaranteeTarget | None:
        """What the cascade config promises; ValueError naming the file when it cannot be read."""
        if self.cascade_config is None:
            return None
        return GuaranteeTarget.from_config(CascadeConfig.load(self.cascade_config))

    def budget(self) -> LabelBudget:
        base = LabelBudget()
        return LabelBudget(
            caps={**base.caps, **self.label_caps},
            allow={name: frozenset(values) for name, values in self.label_allow.items()},
        )
