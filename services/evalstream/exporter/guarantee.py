"""The guarantee monitor: does the cascade, in production, still agree with humans as calibrated?

``evalstream calibrate`` fits thresholds so that the verdicts the cascade *accepts* agree with humans
at least ``1 - alpha`` of the time, with probability ``1 - delta``; the cascade config records both
(``CascadeConfig.alpha``, ``.delta``) and, per tier, the agreement it reached on the calibration
split. That promise holds only for traffic like the calibration data (exchangeability). The monitor
tests it on the traffic itself, from the human labels joined to verdicts (``agreement``):

- ``evalstream_guarantee_agreement_lower_bound{dimension}``: the one-sided Clopper-Pearson lower
  bound, at confidence ``1 - delta``, of the accepted verdicts' agreement with humans over the
  agreement window (the last N labelled, accepted verdicts, every deciding tier) **of the newest
  cascade version** (``Verdict.cascade_version``): the same exact binomial bound calibration
  certifies thresholds with (``evaluation.calibration``). Audited verdicts are not scored (humans
  decide them). When the pipeline loads a new config, the window starts afresh on its verdicts (the
  old version's verdicts still arriving are not scored here), so an alert raised against the old
  thresholds clears once enough labelled verdicts of the new one agree.
- ``evalstream_guarantee_window_pairs{dimension}``: the pairs that bound is computed on;
  ``evalstream_guarantee_cascade_version{cascade_version}``: 1 for the version they are of.
- ``evalstream_guarantee_target{dimension}``: ``1 - alpha`` of the loaded cascade config.
  ``EvalstreamGuaranteeNotHeld`` fires when the bound stays below it on enough pairs: the labelled
  traffic no longer shows the agreement the cascade promised, so recalibrate on fresh labels.
- ``evalstream_guarantee_tier_calibrated_agreement{dimension, tier}``: each tier's agreement on its
  calibration split; ``EvalstreamJudgeTierAgreementDrift`` (slower) fires when a tier's live
  accuracy is confidently below it.
- ``evalstream_guarantee_calibrated{dimension}``: 1 where the config's thresholds were fitted on human
  labels (alpha set and a tier with a calibrated agreement), 0 where they were not (e.g. ``format``
  under the default cascade): such a dimension's confidences are not calibrated and must not be read
  as such; the dashboards mark it.

Without a cascade config (``EVALSTREAM_EXPORTER_CASCADE_CONFIG`` unset) none of these series exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import numpy as np

from evalstream.evaluation.calibration import clopper_pearson_upper
from evalstream.wire.cascade_config import CascadeConfig

from .labels import LabelName
from .totals import Kind, MetricSpec

__all__ = [
    "CALIBRATED",
    "GUARANTEE_PAIRS",
    "GUARANTEE_VERSION",
    "LOWER_BOUND",
    "SPECS",
    "TARGET",
    "TIER_CALIBRATED_AGREEMENT",
    "GuaranteeTarget",
    "agreement_lower_bound",
]

CALIBRATED: Final = "evalstream_guarantee_calibrated"
TARGET: Final = "evalstream_guarantee_target"
LOWER_BOUND: Final = "evalstream_guarantee_agreement_lower_bound"
GUARANTEE_PAIRS: Final = "evalstream_guarantee_window_pairs"
GUARANTEE_VERSION: Final = "evalstream_guarantee_cascade_version"
TIER_CALIBRATED_AGREEMENT: Final = "evalstream_guarantee_tier_calibrated_agreement"

_D = (str(LabelName.DIMENSION),)
_DT = (str(LabelName.DIMENSION), str(LabelName.TIER))

SPECS: Final = (
    MetricSpec(
        name=CALIBRATED,
        help="1 where the cascade's thresholds for the dimension were fitted on human labels, else 0.",
        labels=_D,
        kind=Kind.GAUGE,
    ),
    MetricSpec(
        name=TARGET,
        help="The agreement with humans the cascade config promises for accepted verdicts (1 - alpha).",
        labels=_D,
        kind=Kind.GAUGE,
    ),
    MetricSpec(
        name=LOWER_BOUND,
        help="One-sided Clopper-Pearson lower bound (confidence 1 - delta) of accepted verdicts' "
        "agreement with human labels over the agreement window.",
        labels=_D,
        kind=Kind.GAUGE,
    ),
    MetricSpec(
        name=GUARANTEE_PAIRS,
        help="Labelled, accepted verdicts of the newest cascade version the lower bound is computed on.",
        labels=_D,
        kind=Kind.GAUGE,
    ),
    MetricSpec(
        name=GUARANTEE_VERSION,
        help="1 for the cascade version whose verdicts the guarantee monitor scores (the newest seen).",
        labels=(str(LabelName.CASCADE_VERSION),),
        kind=Kind.GAUGE,
    ),
    MetricSpec(
        name=TIER_CALIBRATED_AGREEMENT,
        help="A tier's agreement with humans on the accepted items of its calibration split.",
        labels=_DT,
        kind=Kind.GAUGE,
    ),
)


def agreement_lower_bound(matches: int, pairs: int, delta: float) -> float:
    """The exact one-sided lower ``1 - delta`` bound on the agreement rate of ``pairs`` with
    ``matches`` agreeing: one minus Clopper-Pearson's upper bound on the disagreement rate."""
    if pairs < 1 or not 0 <= matches <= pairs:
        raise ValueError(f"need 0 <= matches <= pairs and pairs >= 1, got {matches} of {pairs}")
    upper = clopper_pearson_upper(np.array([pairs - matches]), np.array([pairs]), delta)
    return float(1.0 - upper[0])


@dataclass(frozen=True, slots=True, kw_only=True)
class GuaranteeTarget:
    """What the loaded cascade config promises, per dimension."""

    version: str
    delta: float  # confidence of the lower bound is 1 - delta
    targets: Mapping[str, float]  # calibrated dimension -> 1 - alpha
    calibrated: Mapping[str, bool]  # every dimension of the config
    tier_agreement: Mapping[tuple[str, str], float]  # (dimension, tier) -> calibrated agreement

    @classmethod
    def from_config(cls, config: CascadeConfig) -> GuaranteeTarget:
        calibrated: dict[str, bool] = {}
        targets: dict[str, float] = {}
        tiers: dict[tuple[str, str], float] = {}
        for dimension, cascade in config.dimensions.items():
            fitted = {
                str(rule.tier): rule.calibrated_agreement
                for rule in cascade.tiers
                if rule.calibrated_agreement is not None
            }
            calibrated[dimension] = config.alpha is not None and bool(fitted)
            if calibrated[dimension] and config.alpha is not None:
                targets[dimension] = 1.0 - config.alpha
                tiers.update({(dimension, tier): value for tier, value in fitted.items()})
        return cls(
            version=config.version,
            delta=config.delta if config.delta is not None else 0.1,
            targets=MappingProxyType(targets),
            calibrated=MappingProxyType(calibrated),
            tier_agreement=MappingProxyType(tiers),
        )
