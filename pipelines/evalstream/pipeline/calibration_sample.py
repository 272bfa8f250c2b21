"""The calibration sample: a deterministic share of sampled events judged by every tier (shadow
judging) and sent to the audit topic for human labels, so that ``evalstream recalibrate`` can refit
the cascade's thresholds on the production traffic itself.

Why every tier: the cascade's guarantee is fitted on items where every tier's verdict is known
(``evaluation.calibration``); on ordinary traffic a later tier sees only what earlier tiers escalated,
a biased subset. The sample is a uniform draw of judged events (a salted hash of the event id,
independent of the sampler's and of the embedding probe's, ``pipelines/cascade.py``), so its labelled
items are exchangeable with the traffic, which is what the guarantee assumes.

In the sample, each dimension is sent to every tier the cascade lists for it, whatever the earlier
tiers decided. The verdict stays the cascade's own (the first confident tier's, as without the sample);
the later tiers' judgements are recorded in ``DimensionVerdict.judgements`` and their cost is added to
the dimension's cost (so the summaries and the exporter's cost metrics count it), their requests to
``CascadeOutcome.calls``. A later tier that fails on a sampled event that an earlier tier already
decided never dead-letters it: the verdict stands, the judgement is missing and recalibration counts
that item as incomplete. The verdict carries ``calibration_sample = true`` and goes to the audit topic.
``fraction`` 0 (the default) turns it off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from evalstream.pipeline.sampling import unit_hash

__all__ = ["CALIBRATION_SALT", "CalibrationSample"]

#: Salts the sample's hash of the event id, apart from the sampler's (none) and the probe's.
CALIBRATION_SALT: Final = "calibration-sample-v1:"


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibrationSample:
    """Which sampled events are shadow-judged by every tier (``fraction`` of them; 0: none)."""

    fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(
                f"calibration_sample_fraction must be in [0, 1] (the share of sampled events judged by "
                f"every tier), got {self.fraction}"
            )

    def in_sample(self, event_id: str) -> bool:
        return self.fraction > 0 and unit_hash(CALIBRATION_SALT + event_id) < self.fraction
