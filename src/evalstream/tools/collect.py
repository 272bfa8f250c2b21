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

from evalstream.evaluation.calibration import calibrate, cascade_items, to_config
from evalstream.evaluation.datasets import XSTestRecord, read_xstest
from evalstream.evaluation.judgements import (
    Judgement,
    LabelledSet,
    Split,
    write_human_labels,
    write_judgements,
)
from evalstream.evaluation.recorded import assign_split, build_xstest
from evalstream.evaluation.routing import route, summarise_routes
from evalstream.tools.replay import build_event
from evalstream.v1 import judge_pb2
from evalstream.wire.cascade_config import CascadeConfig, DimensionCascade, TierRule
from evalstream.wire.contract import to_proto
from evalstream.wire.dimensions import Dimension

__all__ = ["LiveCalibration", "calibrate_live", "collect_xstest", "xstest_split"]

log = logging.getLogger(__name__)

Call = Callable[[int, judge_pb2.JudgeRequest], judge_pb2.JudgeResponse]


def xstest_split(prompt_id: str, *, seed: int = 0) -> Split:
    """FIT for prompts the tier-0/1 judges were fitted on; CALIBRATION or TEST (half each) otherwise."""
    from evalstream.judges.rules_fit import is_held_out

    if not is_held_out(prompt_id):
        return Split.FIT
    return assign_split(prompt_id, seed=seed, fractions=(0.0, 0.5, 0.5))


def _item_id(record: XSTestRecord) -> str:
    return f"xstest/{record.model}/{record.prompt_id}"


def collect_xstest(
    tiers: Sequence[int],
    call: Call,
    *,
    seed: int = 0,
    batch_size: int = 128,
    progress: Callable[[int, int], None] | None = None,
    data_dir: Path | None = None,
) -> LabelledSet:
    """Every tier's refusal judgement on every XSTest completion, with human labels and splits.

    ``call(tier, request)`` is the judge call (the pipeline's ``JudgeClient.judge`` in production).
    A per-item error or a missing judgement becomes a row with no label (the cascade escalates it).
    """
    records = read_xstest(data_dir)
    now = datetime.now(UTC)
    items = [
        judge_pb2.JudgeItem(
            item_id=_item_id(r), event=to_proto(build_event(r, event_id=_item_id(r), event_time=now))
        )
        for r in records
    ]
    rows: list[Judgement] = []
    names: dict[int, str] = {}
    total = len(items) * len(tiers)
    done = 0
    for tier in tiers:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            request = judge_pb2.JudgeRequest(items=chunk, dimensions=[Dimension.REFUSAL.value])
            response = call(tier, request)
            names.setdefault(tier, response.judge)
            for item, result in zip(chunk, response.results, strict=True):
                found = [j for j in result.judgements if j.dimension == Dimension.REFUSAL.value]
                usable = not result.error and found
                j = found[0] if found else None
                rows.append(
                    Judgement(
                        item_id=item.item_id,
                        dimension=Dimension.REFUSAL,
                        tier=tier,
                        judge=response.judge or f"tier-{tier}",
                        label=j.label if usable and j else None,
                        confidence=min(max(j.confidence, 0.0), 1.0) if usable and j else 0.0,
                        cost_usd=j.cost.usd if j else 0.0,
                        input_tokens=j.cost.input_tokens if j else 0,
                        output_tokens=j.cost.output_tokens if j else 0,
                    )
                )
            done += len(chunk)
            if progress:
                progress(done, total)
    recorded = build_xstest(data_dir, seed=seed)
    splits = {_item_id(r): xstest_split(r.prompt_id, seed=seed) for r in records}
    return LabelledSet(
        name="xstest-live",
        judgements=tuple(rows),
        humans=recorded.humans,
        truth_annotator="adjudicated",
        splits=MappingProxyType(splits),
        cascade=tuple(names[t] for t in tiers),
        confidence_sources=MappingProxyType({n: "reported by the judge over gRPC" for n in names.values()}),
        notes=("splits: FIT = prompts the rules table and encoder were fitted on; the rest halved",),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveCalibration:
    config: CascadeConfig
    test_items: int
    test_coverage: float
    test_agreement: float | None
    strong_calls_per_1000: float


def calibrate_live(
    data: LabelledSet, *, alpha: float, delta: float, version: str | None = None
) -> LiveCalibration:
    """Thresholds for the refusal cascade on the CALIBRATION split, checked on TEST. The format
    dimension stays on tier 0 with every flag accepted (deterministic rules, no human labels)."""
    judges = list(data.cascade)
    items, specs = cascade_items(data.split(Split.CALIBRATION), Dimension.REFUSAL, judges)
    result = calibrate(items, specs, dimension=Dimension.REFUSAL, alpha=alpha, delta=delta)
    stamp = datetime.now(UTC)
    config = to_config(
        [result],
        version=version or f"{data.name}-a{alpha:g}-d{delta:g}-{stamp:%Y%m%dT%H%M%SZ}",
        calibration_data=f"{data.name}: calibration split, {result.items} items; truth = adjudicated",
        created_at=stamp,
    )
    dims: Mapping[str, DimensionCascade] = {
        **config.dimensions,
        Dimension.FORMAT.value: DimensionCascade(tiers=[TierRule(tier=0, threshold=0.0)]),
    }
    config = config.model_copy(update={"dimensions": dict(dims)})
    held, _ = cascade_items(data.split(Split.TEST), Dimension.REFUSAL, judges)
    summary = summarise_routes(held, route(held, result.plan()))
    return LiveCalibration(
        config=config,
        test_items=summary.items,
        test_coverage=summary.coverage,
        test_agreement=summary.agreement,
        strong_calls_per_1000=summary.calls_per_1000(len(specs) - 1),
    )


def write_tables(data: LabelledSet, directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    judgements, humans = directory / "judgements.jsonl", directory / "humans.jsonl"
    write_judgements(judgements, data.judgements)
    write_human_labels(humans, data.humans)
    return judgements, humans
