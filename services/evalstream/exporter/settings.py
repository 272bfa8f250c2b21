"""Settings of the exporter process. Read once in ``main()``, passed down.

Each setting is an explicit argument (the command line) first, then an environment variable
(``EVALSTREAM_EXPORTER_<FIELD>``), then the default. Kafka itself is reached through
``evalstream.runtime.settings.KafkaSettings`` (``EVALSTREAM_KAFKA_*``). Each field's docstring is its
description: the flag's help (``server.py``) and docs/configuration.md, which lists every variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final

from pydantic import Field, PrivateAttr, field_validator, model_validator
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

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="ignore", use_attribute_docstrings=True
    )

    verdicts_topic: Annotated[str, Field(min_length=1)] = topics.VERDICTS
    """Topic of Verdicts."""
    summaries_topic: Annotated[str, Field(min_length=1)] = topics.SUMMARIES
    """Topic of Summary partials."""
    group_id: Annotated[str, Field(min_length=1)] = "evalstream-exporter"
    """Consumer group; run one exporter per group."""
    instance_id: Annotated[str, Field(min_length=1)] = "exporter-0"
    """Static group membership id (KIP-345): a restart with the same id takes the partitions back at
    once."""
    state_file: Path = Path(".evalstream/exporter/state.json")
    """Totals and offsets, saved together."""
    metrics_host: str = "127.0.0.1"
    """Address of ``/metrics``."""
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9464
    """Port of ``/metrics``; 0 picks a free one."""
    flush_interval_s: Annotated[float, Field(ge=0.0)] = 1.0
    """Seconds between saves; scrapes see applied records after the save."""
    max_poll_records: Annotated[int, Field(ge=1)] = 2000
    """Most records per poll."""
    lag_interval_s: Annotated[float, Field(gt=0.0)] = 5.0
    """Seconds between consumer-lag probes."""
    pipeline_group: str = "evalstream-pipeline"
    """The pipeline's consumer group; its lag on ``events_topic`` is exported. Empty: not probed."""
    events_topic: str = topics.EVENTS
    """The pipeline's input topic."""
    label_caps: dict[LabelName, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    """Label name -> most distinct values, e.g. ``{"model": 50}`` (JSON; others keep their defaults)."""
    label_allow: dict[LabelName, list[str]] = Field(default_factory=dict)
    """Label name -> the only values kept, e.g. ``{"route": ["chat", "search"]}`` (JSON)."""
    labels_topic: str = topics.LABELS
    """Topic of human labels for judge agreement; empty: not read."""
    drift_reference: Reference = Reference.TRAILING
    """``trailing`` (the window before the current one) or ``pinned`` (a baseline kept once)."""
    drift_current_s: int = 3600
    """Current drift window, seconds."""
    drift_bucket_s: int = 600
    """Bucket size of the current window, seconds (a multiple of 60)."""
    drift_reference_s: int = 86400
    """Length of the drift reference, seconds."""
    drift_reference_bucket_s: int = 3600
    """Bucket size of a trailing reference, seconds."""
    drift_baseline_start: int | None = None
    """Pinned reference: unix seconds where the baseline starts; unset: each model and route's first
    minute."""
    drift_bins: int = 10
    """PSI and chi-square bins (reference quantiles)."""
    drift_min_samples: int = 50
    """Fewest items in each window before drift is reported."""
    agreement_truth_annotator: Annotated[str, Field(min_length=1)] = "adjudicated"
    """Whose labels the judges are scored against."""
    agreement_ttl_s: float = 86400.0
    """Seconds a verdict or a label waits for the other."""
    agreement_max_pending: int = 20_000
    """Most waiting verdicts, and labels (each)."""
    agreement_window: int = 500
    """Pairs the accuracy and kappa gauges are computed on."""
    agreement_resamples: int = 1000
    """Bootstrap resamples of the kappa interval."""
    cascade_config: Path | None = None
    """The cascade config the pipeline runs (YAML): its alpha, delta and calibrated agreements are what
    the guarantee monitor tests (``guarantee.py``); unset: no guarantee series."""
    cascade_reload_s: Annotated[float, Field(ge=0)] = 2.0
    """Seconds between checks of the cascade config file for a new version (live reload: a
    recalibrated config's promises replace the old ones); 0: never."""

    _guarantee: GuaranteeTarget | None = PrivateAttr(default=None)

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
        # The cascade config must load, or the exporter does not start; loaded once, here.
        self._guarantee = self._load_guarantee()
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
        """What the cascade config promises (read when the settings were built)."""
        return self._guarantee

    def _load_guarantee(self) -> GuaranteeTarget | None:
        """ValueError naming the file when it cannot be read."""
        if self.cascade_config is None:
            return None
        return GuaranteeTarget.from_config(CascadeConfig.load(self.cascade_config))

    def budget(self) -> LabelBudget:
        base = LabelBudget()
        return LabelBudget(
            caps={**base.caps, **self.label_caps},
            allow={name: frozenset(values) for name, values in self.label_allow.items()},
        )
