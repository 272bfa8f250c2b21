"""The cascade's decision rule on labelled items: route each item through the tiers by a threshold plan
(accept, escalate, or send to human audit), summarise coverage, agreement and calls, and read a
plan back from a cascade config."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from evalstream.evaluation.calibration import CalibrationError, CalibrationItem, TierSpec
from evalstream.wire.cascade_config import CascadeConfig, Threshold, threshold_for
from evalstream.wire.dimensions import Dimension

__all__ = ["RouteSummary", "Routed", "config_plan", "route", "summarise_routes"]


# --- the decision rule -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Routed:
    """Where one item ended: the verdict index accepted (None: human audit) and the tiers called."""

    item_id: str
    accepted_by: int | None
    label: str | None
    called: tuple[int, ...]  # verdict indices of the tiers called, in order
    cost_usd: float
    #: verdict indices whose verdict escalated because the tier has no threshold for its source
    source_mismatches: tuple[int, ...] = ()


def route(items: Sequence[CalibrationItem], plan: Sequence[tuple[int, Threshold]]) -> list[Routed]:
    """Send each item down the cascade as the pipeline does: ``plan`` lists ``(verdict index,
    threshold)`` per tier, the threshold one number or one per confidence source
    (``threshold_for``); a verdict is accepted when it has a label and confidence >= the threshold
    of its source, otherwise the item escalates (a source without a threshold is counted in
    ``source_mismatches``); past the last tier it goes to audit."""
    out = []
    for item in items:
        called: list[int] = []
        mismatched: list[int] = []
        cost = 0.0
        accepted_by: int | None = None
        for index, threshold in plan:
            verdict = item.verdicts[index]
            called.append(index)
            cost += verdict.cost_usd
            applies = threshold_for(threshold, verdict.confidence_source)
            if applies is None:
                mismatched.append(index)
                continue
            if verdict.label is not None and verdict.confidence >= applies:
                accepted_by = index
                break
        label = item.verdicts[accepted_by].label if accepted_by is not None else None
        out.append(
            Routed(
                item_id=item.item_id,
                accepted_by=accepted_by,
                label=label,
                called=tuple(called),
                cost_usd=cost,
                source_mismatches=tuple(mismatched),
            )
        )
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteSummary:
    items: int
    accepted: int
    agreed: int
    calls: Mapping[int, int]  # verdict index -> items on which that tier was called
    cost_usd: float

    @property
    def coverage(self) -> float:
        return self.accepted / self.items if self.items else 0.0

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.accepted if self.accepted else None

    def calls_per_1000(self, index: int) -> float:
        return 1000.0 * self.calls.get(index, 0) / self.items if self.items else 0.0


def summarise_routes(items: Sequence[CalibrationItem], routed: Sequence[Routed]) -> RouteSummary:
    calls: dict[int, int] = {}
    for r in routed:
        for index in r.called:
            calls[index] = calls.get(index, 0) + 1
    accepted = [(it, r) for it, r in zip(items, routed, strict=True) if r.accepted_by is not None]
    return RouteSummary(
        items=len(items),
        accepted=len(accepted),
        agreed=sum(it.human == r.label for it, r in accepted),
        calls=calls,
        cost_usd=sum(r.cost_usd for r in routed),
    )


def config_plan(
    config: CascadeConfig, dimension: Dimension, tiers: Sequence[TierSpec]
) -> list[tuple[int, Threshold]]:
    """A config's tier rules for ``dimension`` as a ``route`` plan over ``tiers`` (by judge name where
    the rule names one, else by tier number)."""
    spec = config.dimensions.get(dimension.value)
    if spec is None:
        raise CalibrationError(
            f"the cascade config has no {dimension.value!r} dimension; it has {sorted(config.dimensions)}"
        )
    plan = []
    for rule in spec.tiers:
        matches = [
            i for i, t in enumerate(tiers) if (t.judge == rule.judge if rule.judge else t.tier == rule.tier)
        ]
        if len(matches) != 1:
            raise CalibrationError(
                f"config tier {rule.tier} (judge {rule.judge or 'unnamed'}) matches {len(matches)} of the "
                f"data's judges {[(t.tier, t.judge) for t in tiers]}; name the judges with --judges"
            )
        plan.append((matches[0], rule.thresholds()))
    return plan
