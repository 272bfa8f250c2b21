"""Live judgements: send labelled XSTest items to the running judge tiers, then calibrate on them.

``evalstream collect --judges 0=HOST:PORT,1=...,2=...`` asks every tier, over the same gRPC contract
the pipeline uses, for its refusal verdict and confidence on each of the 2,250 XSTest v2 completions;
writes the judgement and human-label tables (``evalstream.evaluation.judgements`` formats); and fits the
cascade thresholds (``evaluation.calibration``) so that agreement with the adjudicated human label is
at least ``1 - alpha`` with probability ``1 - delta``. The result is the cascade config the pipeline
loads (``--cascade-config``).

Splits, by prompt: the tier-0 rules table and the tier-1 encoder were fitted on the prompts that
``rules_fit.is_held_out`` does not hold out, so those items are the FIT split here and never used
for thresholds. The held-out prompts are halved (salted hash, ``seed``) into CALIBRATION, where
thresholds are chosen, and TEST, where the achieved agreement is reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

from evalstream.evaluation.calibration import CalibrationError, calibrate, cascade_items, to_config
from evalstream.evaluation.judgements import (
    JudgementIn,
    LabelledSet,
    Split,
    assign_split,
    write_human_labels,
    write_judgements,
)
from evalstream.evaluation.labelled_items import LabelledItemIn, to_event, to_labelled_set
from evalstream.evaluation.recorded import build_xstest
from evalstream.evaluation.routing import route, summarise_routes
from evalstream.v1 import judge_pb2
from evalstream.wire.cascade_config import CascadeConfig, DimensionCascade, TierRule
from evalstream.wire.contract import to_proto
from evalstream.wire.dimensions import Dimension

__all__ = [
    "HeldOut",
    "LiveCalibration",
    "calibrate_live",
    "collect_items",
    "collect_xstest",
    "xstest_items",
    "xstest_split",
]

log = logging.getLogger(__name__)

Call = Callable[[int, judge_pb2.JudgeRequest], judge_pb2.JudgeResponse]


def xstest_split(prompt_id: str, *, seed: int = 0) -> Split:
    """FIT for prompts the tier-0/1 judges were fitted on; CALIBRATION or TEST (half each) otherwise."""
    from evalstream.judges.rules_fit import is_held_out

    if not is_held_out(prompt_id):
        return Split.FIT
    return assign_split(prompt_id, seed=seed, fractions=(0.0, 0.5, 0.5))


def xstest_items(data_dir: Path | None = None, *, seed: int = 0) -> list[LabelledItemIn]:
    """The 2,250 XSTest v2 completions as labelled items: the built-in reader's records (the replay's
    events, the adjudicated label and both annotators') without the recorded judgements, split by
    prompt (``xstest_split``)."""
    return [
        item.model_copy(
            update={"judgements": [], "split": xstest_split(item.group or item.item_id, seed=seed)}
        )
        for item in build_xstest(data_dir).items
    ]


def collect_items(
    items: Sequence[LabelledItemIn],
    tiers: Sequence[int],
    call: Call,
    *,
    dimensions: Sequence[Dimension] | None = None,
    batch_size: int = 128,
    progress: Callable[[int, int], None] | None = None,
) -> list[LabelledItemIn]:
    """``items`` with every tier's live judgement on every labelled dimension (or ``dimensions``).

    ``call(tier, request)`` is the judge call (the pipeline's ``JudgeClient.judge`` in production).
    A per-item error or a missing judgement becomes a judgement with no label (the cascade escalates
    it). Earlier judgements by the same judges on the same dimensions are replaced.
    """
    asked = list(dimensions) if dimensions else sorted({lab.dimension for i in items for lab in i.labels})
    stamp = datetime.now(UTC).isoformat()
    requests = [
        judge_pb2.JudgeItem(item_id=item.item_id, event=to_proto(to_event(item, event_time_iso=stamp)))
        for item in items
    ]
    live: dict[str, list[JudgementIn]] = {item.item_id: [] for item in items}
    total, done = len(items) * len(tiers), 0
    for tier in tiers:
        for start in range(0, len(requests), batch_size):
            chunk = requests[start : start + batch_size]
            request = judge_pb2.JudgeRequest(items=chunk, dimensions=[d.value for d in asked])
            response = call(tier, request)
            judge = response.judge or f"tier-{tier}"
            for sent, result in zip(chunk, response.results, strict=True):
                for dimension in asked:
                    found = [j for j in result.judgements if j.dimension == dimension.value]
                    j = found[0] if found else None
                    usable = j is not None and not result.error
                    live[sent.item_id].append(
                        JudgementIn(
                            dimension=dimension,
                            tier=tier,
                            judge=judge,
                            label=j.label if usable and j else None,
                            confidence=min(max(j.confidence, 0.0), 1.0) if usable and j else 0.0,
                            cost_usd=j.cost.usd if j else 0.0,
                            input_tokens=j.cost.input_tokens if j else 0,
                            output_tokens=j.cost.output_tokens if j else 0,
                            confidence_source=j.confidence_source if usable and j else "",
                        )
                    )
            done += len(chunk)
            if progress:
                progress(done, total)
    out = []
    for item in items:
        new = live[item.item_id]
        replaced = {(j.dimension, j.judge) for j in new}
        kept = [j for j in item.judgements if (j.dimension, j.judge) not in replaced]
        out.append(item.model_copy(update={"judgements": [*kept, *new]}))
    return out


LIVE_SOURCE = "reported by the judge over gRPC"


def collect_xstest(
    tiers: Sequence[int],
    call: Call,
    *,
    seed: int = 0,
    batch_size: int = 128,
    progress: Callable[[int, int], None] | None = None,
    data_dir: Path | None = None,
) -> LabelledSet:
    """Every tier's refusal judgement on every XSTest completion, with human labels and splits."""
    items = collect_items(
        xstest_items(data_dir, seed=seed),
        tiers,
        call,
        dimensions=[Dimension.REFUSAL],
        batch_size=batch_size,
        progress=progress,
    )
    return to_labelled_set(
        items,
        name="xstest-live",
        seed=seed,
        truth_annotator="adjudicated",
        confidence_source=LIVE_SOURCE,
        notes=("splits: FIT = prompts the rules table and encoder were fitted on; the rest halved",),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldOut:
    """The calibrated cascade of one dimension on the held-out TEST split."""

    items: int
    coverage: float
    agreement: float | None
    strong_calls_per_1000: float


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveCalibration:
    config: CascadeConfig
    held_out: Mapping[Dimension, HeldOut]

    def _primary(self) -> HeldOut:
        return self.held_out.get(Dimension.REFUSAL) or next(iter(self.held_out.values()))

    @property
    def test_items(self) -> int:
        return self._primary().items

    @property
    def test_coverage(self) -> float:
        return self._primary().coverage

    @property
    def test_agreement(self) -> float | None:
        return self._primary().agreement

    @property
    def strong_calls_per_1000(self) -> float:
        return self._primary().strong_calls_per_1000


def calibrate_live(
    data: LabelledSet, *, alpha: float, delta: float, version: str | None = None
) -> LiveCalibration:
    """Thresholds for every human-labelled dimension's cascade on the CALIBRATION split, checked on
    TEST. An unlabelled ``format`` stays on tier 0 with every flag accepted (deterministic rules with
    no human labels; the exporter marks it as not calibrated)."""
    judges = list(data.cascade)
    labelled = [d for d in data.dimensions if data.truth(d)]
    if not labelled:
        raise CalibrationError(f"{data.name} has no dimension with both judgements and human labels")
    calibration = data.split(Split.CALIBRATION)
    results = []
    held_out: dict[Dimension, HeldOut] = {}
    for dimension in labelled:
        items, specs = cascade_items(calibration, dimension, judges)
        result = calibrate(items, specs, dimension=dimension, alpha=alpha, delta=delta)
        results.append(result)
        held, _ = cascade_items(data.split(Split.TEST), dimension, judges)
        summary = summarise_routes(held, route(held, result.plan()))
        held_out[dimension] = HeldOut(
            items=summary.items,
            coverage=summary.coverage,
            agreement=summary.agreement,
            strong_calls_per_1000=summary.calls_per_1000(len(specs) - 1),
        )
    stamp = datetime.now(UTC)
    config = to_config(
        results,
        version=version or f"{data.name}-a{alpha:g}-d{delta:g}-{stamp:%Y%m%dT%H%M%SZ}",
        calibration_data=f"{data.name}: calibration split, {results[0].items} items; "
        f"truth = {data.truth_annotator}",
        created_at=stamp,
    )
    dims: dict[str, DimensionCascade] = {
        Dimension.FORMAT.value: DimensionCascade(tiers=[TierRule(tier=0, threshold=0.0)]),
        **config.dimensions,
    }
    return LiveCalibration(
        config=config.model_copy(update={"dimensions": dims}), held_out=MappingProxyType(held_out)
    )


def write_tables(data: LabelledSet, directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    judgements, humans = directory / "judgements.jsonl", directory / "humans.jsonl"
    write_judgements(judgements, data.judgements)
    write_human_labels(humans, data.humans)
    return judgements, humans
