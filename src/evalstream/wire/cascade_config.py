"""The versioned cascade configuration: which tiers judge each dimension, and when to trust them.

``evalstream calibrate`` writes it (thresholds fitted on human labels so that the cascade agrees
with humans at least ``1 - alpha`` of the time with probability ``1 - delta``); the pipeline loads
it. For each dimension the tiers are tried in order; a tier's judgement is accepted when its
confidence is at least the tier's threshold, otherwise the item escalates to the next tier. When the
last tier is not confident either, the verdict carries the last tier's label with
``needs_audit = true`` and the item goes to the audit topic for humans.

A threshold is a number in [0, 1], or ``.inf`` in YAML: "accept when confidence >= inf", never. The
calibration writes ``.inf`` for a last tier it could not certify at any threshold, so that everything
reaching it is audited rather than guessed.

``shadow_tiers`` (per dimension, optional) are the tiers the pipeline's calibration sample asks besides
the deciding ones (shadow judging): ``evalstream recalibrate`` writes there every tier it could
consider, so that a tier a refit dropped from ``tiers`` is still judged on the sample and a later refit
can bring it back when the labels support it. They never change a verdict.

Confidence sources: a judgement says where its confidence came from
(``Judgement.confidence_source``: ``logprobs``, ``agreement``, ``single``, ``rule_precision``,
``classifier_probability`` ...), and confidences from different sources are not on one scale. A
threshold fitted on one source's judgements names it (``confidence_source``); a tier whose
judgements mixed sources has one threshold per source (``source_thresholds`` beside the main one).
The pipeline accepts a judgement only under the threshold of its own source; a judgement from a
source the tier was not fitted for escalates (and, at the last tier, goes to audit), counted as a
source mismatch. A rule without ``confidence_source`` (a config fitted before sources were recorded,
or on data without them) applies to every source.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from evalstream.wire.targets import DEFAULT_ALPHA, DEFAULT_DELTA

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_DELTA",
    "CascadeConfig",
    "DimensionCascade",
    "OffsetRange",
    "Provenance",
    "Threshold",
    "TierRule",
    "content_version",
    "default_cascade",
    "threshold_for",
]

#: A tier's threshold as routing applies it: one for every judgement (a number), or one per confidence
#: source (a judgement from a source not listed is never accepted at that tier).
Threshold = float | Mapping[str, float]


def threshold_for(threshold: Threshold, source: str) -> float | None:
    """The threshold a judgement with confidence source ``source`` must reach, or None when the tier
    has no threshold for that source (the judgement escalates)."""
    if isinstance(threshold, int | float):
        return float(threshold)
    return threshold.get(source)


def _check_threshold(value: float) -> float:
    if not (0.0 <= value <= 1.0 or value == math.inf):
        raise ValueError(
            f"threshold must be in [0, 1] (accept when confidence >= threshold) or .inf (never), got {value}"
        )
    return value


class TierRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tier: Annotated[int, Field(ge=0, le=9)]
    #: Accept the tier's verdict when its confidence >= threshold; in [0, 1], or inf for never.
    threshold: float
    #: Empirical agreement with humans of the accepted items on the calibration split, if fitted.
    calibrated_agreement: float | None = None
    #: Share of items this tier accepted on the calibration split, if fitted (as a share of all
    #: calibration items, so the tiers' shares add up to the cascade's coverage).
    calibrated_coverage: float | None = None
    #: The judge that serves this tier when the thresholds were fitted (they hold for that judge only).
    judge: str | None = None
    #: Where that judge's confidence comes from (thresholds are on this scale).
    confidence: str = ""
    #: The confidence source of the judgements ``threshold`` was fitted on (``Judgement.confidence_source``);
    #: a judgement from another source is not accepted under it. Empty: every source (unfitted, or
    #: fitted on data that did not record sources).
    confidence_source: str = ""
    #: Thresholds for further sources of the same tier, when its judgements mixed sources (each fitted
    #: on its own source's judgements).
    source_thresholds: dict[str, float] = Field(default_factory=dict)
    #: Clopper-Pearson upper bound on the accepted items' disagreement rate at the tier's share of delta.
    calibrated_upper_bound: float | None = None
    #: Calibration items that reached this tier.
    calibrated_items: int | None = None

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, value: float) -> float:
        return _check_threshold(value)

    @field_validator("source_thresholds")
    @classmethod
    def _source_thresholds(cls, value: dict[str, float]) -> dict[str, float]:
        for threshold in value.values():
            _check_threshold(threshold)
        return value

    @model_validator(mode="after")
    def _sources(self) -> TierRule:
        if self.source_thresholds and not self.confidence_source:
            raise ValueError(
                "source_thresholds need confidence_source: name the source the main threshold is for"
            )
        if self.confidence_source in self.source_thresholds:
            raise ValueError(
                f"confidence source {self.confidence_source!r} has two thresholds (threshold and "
                "source_thresholds); keep one"
            )
        return self

    def thresholds(self) -> Threshold:
        """The rule's threshold(s) as routing applies them (``threshold_for``)."""
        if not self.confidence_source:
            return self.threshold
        return {self.confidence_source: self.threshold, **self.source_thresholds}

    def rule(self) -> str:
        """The rule in words: "tier 0 >= 0.789", "tier 2 (agreement) >= 0.8", or "tier 2 never
        accepts" for an infinite threshold."""

        def one(threshold: float, source: str) -> str:
            where = f"tier {self.tier}" + (f" ({source})" if source else "")
            return f"{where} never accepts" if math.isinf(threshold) else f"{where} >= {threshold:.3g}"

        parts = [one(self.threshold, self.confidence_source)]
        parts += [one(v, k) for k, v in sorted(self.source_thresholds.items())]
        return "; ".join(parts)


class DimensionCascade(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tiers: Annotated[list[TierRule], Field(min_length=1)]
    #: Tiers the calibration sample also asks (those with a judge endpoint), deciding nothing: strictly
    #: increasing; a tier that is in ``tiers`` too is allowed (it is asked once). Empty: the decision
    #: tiers only.
    shadow_tiers: list[Annotated[int, Field(ge=0, le=9)]] = []

    @model_validator(mode="after")
    def _ordered(self) -> DimensionCascade:
        order = [t.tier for t in self.tiers]
        if order != sorted(set(order)):
            raise ValueError(f"tiers must be strictly increasing, got {order}")
        if self.shadow_tiers != sorted(set(self.shadow_tiers)):
            raise ValueError(
                f"shadow_tiers must be strictly increasing (each tier once), got {self.shadow_tiers}"
            )
        return self

    @property
    def sample_tiers(self) -> list[int]:
        """The tiers the calibration sample asks: the decision tiers and the shadow tiers, ascending."""
        return sorted({t.tier for t in self.tiers} | set(self.shadow_tiers))


class OffsetRange(BaseModel):
    """The records of one topic partition a recalibration read: offsets ``first`` to ``last``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str
    partition: Annotated[int, Field(ge=0)]
    first: Annotated[int, Field(ge=0)]
    last: Annotated[int, Field(ge=-1)]  # first - 1: nothing read
    records: Annotated[int, Field(ge=0)]


class Provenance(BaseModel):
    """Where a recalibrated config's thresholds come from (``evalstream recalibrate``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The config it was recalibrated from; dimensions it could not refit keep that config's rules.
    base_version: str
    truth_annotator: str
    #: A label joins a verdict judged at most this long before it was labelled.
    join_window_s: float
    read: list[OffsetRange]
    #: Calibration items (labelled events of the calibration sample with every tier's judgement).
    items: dict[str, int]
    #: What became of every label record read: joined, or the reason it was not (counted, never dropped).
    labels: dict[str, int]
    #: Verdict records read, those of an event id read before (the first is used), those unreadable.
    verdicts: dict[str, int] = {}
    #: Dimensions whose rules were kept from the base config, and why.
    kept: dict[str, str] = {}
    judged_from: datetime | None = None
    judged_to: datetime | None = None
    labelled_from: datetime | None = None
    labelled_to: datetime | None = None


class CascadeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Annotated[str, Field(min_length=1)]
    created_at: datetime | None = None
    alpha: Annotated[float, Field(gt=0, lt=1)] | None = None  # target disagreement with humans
    delta: Annotated[float, Field(gt=0, lt=1)] | None = None  # allowed probability of missing it
    calibration_data: str = ""  # what the thresholds were fitted on
    dimensions: dict[str, DimensionCascade]
    provenance: Provenance | None = None  # set by ``evalstream recalibrate``

    @classmethod
    def load(cls, path: Path) -> CascadeConfig:
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read cascade config {path}: {exc}") from exc
        return cls.model_validate(raw)

    def dump(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))

    @property
    def tiers(self) -> list[int]:
        """Every tier any dimension decides with, ascending (each needs a judge endpoint)."""
        return sorted({t.tier for d in self.dimensions.values() for t in d.tiers})

    @property
    def shadow_tiers(self) -> list[int]:
        """Every tier only the calibration sample asks (no dimension decides with it), ascending; one
        without a judge endpoint is not asked."""
        return sorted({t for d in self.dimensions.values() for t in d.shadow_tiers} - set(self.tiers))


def content_version(config: CascadeConfig, prefix: str = "cascade") -> str:
    """A version derived from what the config decides (its dimensions' rules and shadow tiers, alpha and
    delta), not from when or where it was written: the same thresholds always give the same version."""
    decides = config.model_dump(mode="json", include={"dimensions", "alpha", "delta"})
    for dimension in decides["dimensions"].values():  # a config without shadow tiers keeps its version
        if not dimension["shadow_tiers"]:
            del dimension["shadow_tiers"]
    digest = hashlib.blake2b(json.dumps(decides, sort_keys=True).encode(), digest_size=6).hexdigest()
    return f"{prefix}-{digest}"


def default_cascade() -> CascadeConfig:
    """Tier 0 only, every verdict accepted: what runs before anything is calibrated."""
    rule = TierRule(tier=0, threshold=0.0)
    return CascadeConfig(
        version="default-tier0",
        dimensions={"refusal": DimensionCascade(tiers=[rule]), "format": DimensionCascade(tiers=[rule])},
    )
