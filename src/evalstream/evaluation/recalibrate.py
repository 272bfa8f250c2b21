"""Recalibration from production: human labels joined with the per-tier judgements the pipeline
recorded, refitted with the same guarantee as ``evalstream calibrate``.

The pipeline's calibration sample (``pipelines/evalstream/pipeline/calibration_sample.py``) sends a
uniform share of judged events to every tier of each dimension and to the audit topic; each verdict
records every tier's judgement (``DimensionVerdict.judgements``). Humans label audited events
(``evalstream label``, the ``evalstream.labels`` topic). ``join_labels`` joins the two by event id;
``refit`` fits each dimension's thresholds with ``evaluation.calibration.calibrate`` on the joined
items and returns a new config. The Kafka reading and the command are in ``tools/recalibrate.py``.

Only events of the calibration sample are calibration items: the guarantee is fitted on items where
every tier's verdict is known, drawn like the traffic (exchangeable with it). Labels on other audited
events (those no tier was sure of, a biased subset) are counted as ``not_in_calibration_sample``.

Every label record read ends in exactly one outcome (``LabelOutcome``), counted and reported:

- ``joined``: a truth-annotator label on a calibration-sample event with every tier's judgement;
- ``invalid_record``: not a label record at all (bad JSON, missing or unknown fields);
- ``label_outside_set``: a label that is not one of its dimension's labels;
- ``other_annotator``: another annotator than the truth one (kept on the topic, not fitted on);
- ``dimension_not_in_cascade``: a dimension the base config does not judge;
- ``duplicate``: the same annotator's same label on the same event and dimension again (one is used);
- ``conflicting``: the same annotator gave different labels to one event and dimension (none is used);
- ``unknown_event``: no verdict with that event id in what was read;
- ``before_verdict``: labelled before the event was judged (it cannot be a label of that verdict);
- ``after_join_window``: labelled more than the join window after the event was judged;
- ``not_in_calibration_sample``: the event was not shadow-judged by every tier;
- ``incomplete_judgements``: a tier of the dimension gave no judgement on that event (it failed): a
  decision tier of the base config, or a shadow tier most of the dimension's items have;
- ``judge_changed``: a tier's judgement came from another judge than the one most items had (the
  judge behind a tier changed while the labels were collected; thresholds hold for one judge).

The tiers fitted for a dimension are the base config's decision tiers and those of its
``shadow_tiers`` that at least half the dimension's candidate items have a judgement of (a shadow tier
with no judge endpoint in the pipeline has none, and is left out rather than making every item
incomplete). So a tier an earlier refit dropped, still shadow-judged, is considered again and comes back
when the labels support it. The new config's ``shadow_tiers`` are every tier the base could consider
(its decision and shadow tiers), so none is lost from the sample.

A dimension with fewer joined items than ``min_items`` keeps the base config's rules, and the config's
provenance says so.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from evalstream.evaluation.calibration import (
    DEFAULT_GRID_STEP,
    DEFAULT_MIN_ACCEPTED,
    CalibrationItem,
    CascadeCalibration,
    TierSpec,
    TierVerdict,
    calibrate,
)
from evalstream.v1 import verdict_pb2
from evalstream.wire.cascade_config import CascadeConfig, DimensionCascade
from evalstream.wire.dimensions import LABELS, Dimension
from evalstream.wire.labels import HumanLabelIn, LabelRecordError, decode_label

__all__ = [
    "DEFAULT_JOIN_WINDOW",
    "DEFAULT_MIN_ITEMS",
    "JoinedItem",
    "JoinedLabels",
    "LabelOutcome",
    "Refit",
    "join_labels",
    "judged_range",
    "refit",
]

#: A label counts for a verdict judged at most this long before it was labelled.
DEFAULT_JOIN_WINDOW = timedelta(days=14)
#: A dimension with fewer joined items keeps its old thresholds.
DEFAULT_MIN_ITEMS = 100


class LabelOutcome(StrEnum):
    JOINED = "joined"
    INVALID_RECORD = "invalid_record"
    LABEL_OUTSIDE_SET = "label_outside_set"
    OTHER_ANNOTATOR = "other_annotator"
    DIMENSION_NOT_IN_CASCADE = "dimension_not_in_cascade"
    DUPLICATE = "duplicate"
    CONFLICTING = "conflicting"
    UNKNOWN_EVENT = "unknown_event"
    BEFORE_VERDICT = "before_verdict"
    AFTER_JOIN_WINDOW = "after_join_window"
    NOT_IN_CALIBRATION_SAMPLE = "not_in_calibration_sample"
    INCOMPLETE_JUDGEMENTS = "incomplete_judgements"
    JUDGE_CHANGED = "judge_changed"


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinedItem:
    """A labelled calibration-sample event on one dimension: the human's label and each tier's judgement."""

    event_id: str
    human: str
    judgements: dict[int, verdict_pb2.Judgement]  # tier -> its judgement
    judged_at: datetime
    labelled_at: datetime


@dataclass(slots=True)
class JoinedLabels:
    """The result of the join: items per dimension, and what became of every label record."""

    items: dict[Dimension, list[JoinedItem]] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    #: Verdict records read, and those whose event id had come before (the first one is used).
    verdicts: int = 0
    duplicate_verdicts: int = 0
    judges: dict[Dimension, dict[int, str]] = field(default_factory=dict)  # the judge fitted per tier
    #: The tiers fitted per dimension, ascending: the decision tiers and the shadow tiers most items have.
    tiers: dict[Dimension, list[int]] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)  # outcome -> one example, for the report

    @property
    def labels(self) -> int:
        return sum(self.outcomes.values())

    def _count(self, outcome: LabelOutcome, example: str, n: int = 1) -> None:
        self.outcomes[outcome.value] += n
        self.examples.setdefault(outcome.value, example)


def _outside_set(value: bytes | None) -> bool:
    """True when the record is a label object whose only fault is a label outside its dimension's set."""
    try:
        raw = json.loads(value or b"")
        dimension = Dimension(raw["dimension"])
        HumanLabelIn.model_validate({**raw, "label": sorted(LABELS[dimension])[0]})
    except (ValueError, KeyError, TypeError):
        return False
    return raw.get("label") not in LABELS[dimension]


def join_labels(
    verdicts: Iterable[verdict_pb2.Verdict],
    label_records: Iterable[bytes | None],
    *,
    cascade: CascadeConfig,
    truth_annotator: str,
    join_window: timedelta = DEFAULT_JOIN_WINDOW,
) -> JoinedLabels:
    """Join label records (``evalstream.labels`` values) with verdicts (``evalstream.verdicts``)."""
    out = JoinedLabels()
    by_id: dict[str, verdict_pb2.Verdict] = {}
    for verdict in verdicts:
        out.verdicts += 1
        if verdict.event_id in by_id:
            out.duplicate_verdicts += 1
            continue
        by_id[verdict.event_id] = verdict

    # one label per (event, dimension) of the truth annotator; the rest counted
    chosen: dict[tuple[str, Dimension], list[HumanLabelIn]] = {}
    for value in label_records:
        try:
            label = decode_label(value)
        except LabelRecordError as exc:
            outcome = LabelOutcome.LABEL_OUTSIDE_SET if _outside_set(value) else LabelOutcome.INVALID_RECORD
            out._count(outcome, str(exc)[:300])
            continue
        if label.annotator != truth_annotator:
            out._count(LabelOutcome.OTHER_ANNOTATOR, f"annotator {label.annotator!r}")
            continue
        if label.dimension.value not in cascade.dimensions:
            out._count(LabelOutcome.DIMENSION_NOT_IN_CASCADE, f"dimension {label.dimension.value!r}")
            continue
        chosen.setdefault((label.event_id, label.dimension), []).append(label)

    candidates: dict[Dimension, list[JoinedItem]] = {}
    for (event_id, dimension), labels in chosen.items():
        if len({lab.label for lab in labels}) > 1:
            out._count(
                LabelOutcome.CONFLICTING,
                f"{event_id} {dimension.value}: {sorted({lab.label for lab in labels})}",
                len(labels),
            )
            continue
        if len(labels) > 1:
            out._count(LabelOutcome.DUPLICATE, f"{event_id} {dimension.value}", len(labels) - 1)
        label = min(labels, key=lambda lab: lab.labelled_at)
        found = by_id.get(event_id)
        if found is None:
            out._count(LabelOutcome.UNKNOWN_EVENT, event_id)
            continue
        judged_at = found.judged_at.ToDatetime(tzinfo=UTC)
        if label.labelled_at < judged_at:
            out._count(
                LabelOutcome.BEFORE_VERDICT, f"{event_id}: labelled {label.labelled_at}, judged {judged_at}"
            )
            continue
        if label.labelled_at - judged_at > join_window:
            out._count(
                LabelOutcome.AFTER_JOIN_WINDOW,
                f"{event_id}: labelled {label.labelled_at}, judged {judged_at} (window {join_window})",
            )
            continue
        if not found.calibration_sample:
            out._count(LabelOutcome.NOT_IN_CALIBRATION_SAMPLE, event_id)
            continue
        decided = next((d for d in found.dimensions if d.dimension == dimension.value), None)
        recorded = {j.tier: j for j in decided.judgements} if decided is not None else {}
        spec = cascade.dimensions[dimension.value]
        missing = [t.tier for t in spec.tiers if t.tier not in recorded or not recorded[t.tier].label]
        if missing:
            out._count(LabelOutcome.INCOMPLETE_JUDGEMENTS, f"{event_id} {dimension.value}: no tier {missing}")
            continue
        candidates.setdefault(dimension, []).append(
            JoinedItem(
                event_id=event_id,
                human=label.label,
                judgements={t: recorded[t] for t in spec.sample_tiers if t in recorded and recorded[t].label},
                judged_at=judged_at,
                labelled_at=label.labelled_at,
            )
        )

    for dimension, found_items in candidates.items():
        spec = cascade.dimensions[dimension.value]
        have = Counter(t for item in found_items for t in item.judgements)
        tiers = [t for t in spec.sample_tiers if 2 * have[t] >= len(found_items)]
        out.tiers[dimension] = tiers
        items = []
        for item in found_items:
            if missing := [t for t in tiers if t not in item.judgements]:
                out._count(
                    LabelOutcome.INCOMPLETE_JUDGEMENTS,
                    f"{item.event_id} {dimension.value}: no tier {missing}",
                )
            else:
                items.append(
                    JoinedItem(
                        event_id=item.event_id,
                        human=item.human,
                        judgements={t: item.judgements[t] for t in tiers},
                        judged_at=item.judged_at,
                        labelled_at=item.labelled_at,
                    )
                )
        if not items:
            continue
        judges = {
            tier: Counter(item.judgements[tier].judge for item in items).most_common(1)[0][0]
            for tier in tiers
        }
        out.judges[dimension] = judges
        kept = []
        for item in items:
            changed = [t for t, j in judges.items() if item.judgements[t].judge != j]
            if changed:
                out._count(
                    LabelOutcome.JUDGE_CHANGED,
                    f"{item.event_id}: tier {changed[0]} judged by {item.judgements[changed[0]].judge!r}, "
                    f"most items by {judges[changed[0]]!r}",
                )
            else:
                kept.append(item)
        out.items[dimension] = sorted(kept, key=lambda i: i.event_id)
        out.outcomes[LabelOutcome.JOINED.value] += len(kept)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Refit:
    """What ``refit`` did: the new rules per dimension, the fits, and the dimensions kept as they were."""

    dimensions: dict[str, DimensionCascade]
    calibrations: list[CascadeCalibration]
    kept: dict[str, str]  # dimension -> why its base rules were kept


def refit(
    joined: JoinedLabels,
    base: CascadeConfig,
    *,
    alpha: float,
    delta: float,
    min_items: int = DEFAULT_MIN_ITEMS,
    grid_step: float = DEFAULT_GRID_STEP,
    min_accepted: int = DEFAULT_MIN_ACCEPTED,
) -> Refit:
    """Each dimension of ``base`` refitted on its joined items over the tiers joined for it (the base
    config's decision tiers and shadow tiers, ``JoinedLabels.tiers``), or kept (with the reason) when it
    has fewer than ``min_items`` of them."""
    dimensions: dict[str, DimensionCascade] = {}
    calibrations: list[CascadeCalibration] = []
    kept: dict[str, str] = {}
    for name, spec in base.dimensions.items():
        dimension = Dimension(name)
        items = joined.items.get(dimension, [])
        if len(items) < min_items:
            kept[name] = (
                f"{len(items)} joined items, fewer than the {min_items} needed: kept the rules of "
                f"{base.version}"
            )
            dimensions[name] = spec
            continue
        judges = joined.judges[dimension]
        tiers = joined.tiers[dimension]
        specs = [
            TierSpec(
                tier=tier,
                judge=judges[tier],
                confidence=Counter(i.judgements[tier].confidence_source for i in items).most_common(1)[0][0],
            )
            for tier in tiers
        ]
        result = calibrate(
            [
                CalibrationItem(
                    item_id=item.event_id,
                    human=item.human,
                    verdicts=tuple(
                        TierVerdict(
                            label=item.judgements[t].label,
                            confidence=item.judgements[t].confidence,
                            cost_usd=item.judgements[t].cost.usd,
                            confidence_source=item.judgements[t].confidence_source,
                        )
                        for t in tiers
                    ),
                )
                for item in items
            ],
            specs,
            dimension=dimension,
            alpha=alpha,
            delta=delta,
            grid_step=grid_step,
            min_accepted=min_accepted,
        )
        calibrations.append(result)
        dimensions[name] = DimensionCascade(tiers=result.rules(), shadow_tiers=spec.sample_tiers)
    return Refit(dimensions=dimensions, calibrations=calibrations, kept=kept)


def judged_range(items: Sequence[JoinedItem]) -> tuple[datetime | None, datetime | None]:
    if not items:
        return None, None
    return min(i.judged_at for i in items), max(i.judged_at for i in items)
