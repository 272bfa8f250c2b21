"""Labelled items: the one JSON Lines format for human-labelled data, a user's own or a built-in set.

One object a line, one item (a prompt and the response being judged) with its human labels and,
optionally, judges' recorded verdicts on it::

    {"item_id": "support-000017",
     "messages": [{"role": "user", "content": "How do I reset my password?"}],
     "response": "Open Settings > Account and choose Reset password ...",
     "model": "support-bot", "model_version": "2025-06",
     "labels": [{"dimension": "refusal", "label": "full_compliance", "annotator": "alice"},
                {"dimension": "refusal", "label": "full_compliance", "annotator": "bob"}],
     "split": "calibration", "group": "prompt-17",
     "judgements": [{"dimension": "refusal", "tier": 0, "judge": "rules-v1",
                     "label": "full_compliance", "confidence": 0.93}]}

- ``item_id`` (required, unique in the file), ``messages`` (required, at least one) and ``response``
  (required): what the judges see, as in an ``LLMEvent``. ``model``, ``model_version``,
  ``finish_reason`` (``""``: not known), ``reference_answer``: optional, passed to the judges.
  ``response_b`` (optional): for a pairwise comparison (the ``pairwise`` dimension: which of two
  responses is better), the second response; ``response`` is the first (A). The live tiers judge one
  response, so ``collect`` does not send it.
- ``labels`` (required, at least one): per dimension (``refusal``, ``quality``, ``format``, ...), the
  label (``evalstream.wire.dimensions.LABELS``) and the annotator who gave it. Several annotators per
  item are welcome: the truth is one of them (``--truth-annotator``, or the only one there is), the
  others feed the alternative annotator test.
- ``split`` (optional): ``calibration`` (thresholds are fitted here), ``test`` (held out, where the
  achieved agreement is reported) or ``fit`` (used by nothing here: items a judge was trained on).
  Items without one are split half and half by a salted hash of ``group`` (default: the item id), so
  items sharing a group (answers to one prompt) share a split.
- ``judgements`` (optional): verdicts recorded by judges (as in the judgement table, without
  ``item_id``). ``evalstream collect --data FILE --judges ...`` fills them from the live tiers;
  ``calibrate`` and ``report`` need them.

``read_labelled_items`` validates every line and raises ``TableError`` naming the file, the line,
the field, what was expected and what arrived; ``to_labelled_set`` turns the items into the
``LabelledSet`` calibration and reports read. The built-in data sets (``evaluation.recorded``) are
readers into this same model (``LabelledItems``: the items and what the set says about them), so
``calibrate`` and ``report`` take one path for ``--data xstest`` and ``--data FILE``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evalstream.evaluation.judgements import (
    HumanLabelRowIn,
    JudgementIn,
    LabelledSet,
    Split,
    TableError,
    assign_split,
    choose_truth_annotator,
)
from evalstream.wire.contract import LLMEventIn, MessageIn
from evalstream.wire.jsonl import explain, json_objects

__all__ = [
    "LabelledItemIn",
    "LabelledItems",
    "is_labelled_items_file",
    "read_labelled_items",
    "to_event",
    "to_labelled_set",
    "write_labelled_items",
]

#: Fractions (fit, calibration, test) for items without a ``split``.
DEFAULT_FRACTIONS = (0.0, 0.5, 0.5)
_FIELDS = "item_id, messages, response, labels (and optionally model, split, group, judgements)"


class LabelledItemIn(BaseModel):
    """One line of a labelled-items file (see the module doc)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    item_id: Annotated[str, Field(min_length=1, max_length=512)]
    messages: Annotated[list[MessageIn], Field(min_length=1)]
    response: str
    response_b: str | None = None  # pairwise: the second response (``response`` is A)
    model: Annotated[str, Field(min_length=1, max_length=256)] = "unknown"
    model_version: Annotated[str, Field(max_length=256)] = ""
    finish_reason: Annotated[str, Field(max_length=64)] = ""
    reference_answer: str | None = None
    labels: Annotated[list[HumanLabelRowIn], Field(min_length=1)]
    split: Split | None = None
    group: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    judgements: list[JudgementIn] = []

    @model_validator(mode="after")
    def _one_label_per_annotator(self) -> LabelledItemIn:
        seen: set[tuple[str, str]] = set()
        for label in self.labels:
            key = (label.dimension.value, label.annotator)
            if key in seen:
                raise ValueError(
                    f"annotator {label.annotator!r} labels {label.dimension.value} twice; keep one label "
                    "per annotator and dimension"
                )
            seen.add(key)
        judged: set[tuple[str, str]] = set()
        for j in self.judgements:
            key = (j.dimension.value, j.judge)
            if key in judged:
                raise ValueError(f"judge {j.judge!r} judges {j.dimension.value} twice; keep one verdict")
            judged.add(key)
        return self


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelledItems:
    """Labelled items as a built-in data set reads them, with what the set says about them: the truth
    annotator by default, the default cascade's judges (cheapest first; empty: every recorded judge in
    tier order), where each judge's confidence comes from, and notes on anything derived."""

    name: str
    items: tuple[LabelledItemIn, ...]
    truth_annotator: str | None = None
    cascade: tuple[str, ...] = ()
    confidence_sources: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    notes: tuple[str, ...] = ()

    def labelled_set(self, *, truth_annotator: str | None = None, seed: int = 0) -> LabelledSet:
        """The labelled set of the items (``to_labelled_set``), the truth ``truth_annotator`` or the set's."""
        return to_labelled_set(
            self.items,
            name=self.name,
            seed=seed,
            truth_annotator=truth_annotator or self.truth_annotator,
            confidence_sources=self.confidence_sources,
            cascade=self.cascade,
            notes=self.notes,
        )


def is_labelled_items_file(data: str) -> bool:
    """``--data`` names a file (a path that exists, or ends in .jsonl) rather than a built-in set."""
    return data.endswith(".jsonl") or Path(data).is_file()


def read_labelled_items(path: Path) -> list[LabelledItemIn]:
    """Every item of a labelled-items file; ``TableError`` on the first bad line or a repeated id."""
    if not path.is_file():
        raise TableError(f"labelled-items file {path} does not exist")
    items: list[LabelledItemIn] = []
    seen: dict[str, int] = {}
    for number, raw in json_objects(path, kind="labelled-items file", error=TableError):
        try:
            item = LabelledItemIn.model_validate(raw)
        except ValidationError as exc:
            raise TableError(
                f"{path}:{number}: bad labelled item: {explain(exc, whole='item')}. Each line needs "
                f"{_FIELDS} (docs/calibration.md)"
            ) from None
        if item.item_id in seen:
            raise TableError(
                f"{path}:{number}: item_id {item.item_id!r} was already used at line {seen[item.item_id]}; "
                "item ids must be unique"
            )
        seen[item.item_id] = number
        items.append(item)
    if not items:
        raise TableError(f"{path}: the labelled-items file has no items")
    return items


def write_labelled_items(path: Path, items: Iterable[LabelledItemIn]) -> int:
    """Write items as JSON Lines; returns how many."""
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(item.model_dump(mode="json", exclude_defaults=True), ensure_ascii=False))
            fh.write("\n")
            n += 1
    return n


def to_labelled_set(
    items: Sequence[LabelledItemIn],
    *,
    name: str,
    seed: int = 0,
    truth_annotator: str | None = None,
    confidence_source: str | None = None,
    confidence_sources: Mapping[str, str] | None = None,
    cascade: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> LabelledSet:
    """The labelled set of ``items``: their labels, recorded judgements and splits (given, or by a
    salted hash of the group); the cascade is ``cascade``, or else the recorded judges in tier order.
    A judge's confidence source is ``confidence_sources[judge]``, else ``confidence_source``."""
    humans = [label.on(item.item_id) for item in items for label in item.labels]
    judgements = [j.on(item.item_id) for item in items for j in item.judgements]
    splits = {
        item.item_id: item.split
        or assign_split(item.group or item.item_id, seed=seed, fractions=DEFAULT_FRACTIONS)
        for item in items
    }
    tiers: dict[str, int] = {}
    for j in judgements:
        tiers[j.judge] = min(tiers.get(j.judge, j.tier), j.tier)
    judges = tuple(sorted(tiers, key=lambda judge: (tiers[judge], judge)))
    source = confidence_source or f"recorded in {name}"
    sources = {judge: (confidence_sources or {}).get(judge, source) for judge in judges}
    return LabelledSet(
        name=name,
        judgements=tuple(judgements),
        humans=tuple(humans),
        truth_annotator=choose_truth_annotator(humans, truth_annotator),
        splits=MappingProxyType(splits),
        cascade=tuple(cascade) or judges,
        confidence_sources=MappingProxyType(sources),
        notes=tuple(notes)
        or (f"{name}: {len(items)} items; splits given or by a salted hash of the group (seed {seed})",),
    )


def to_event(item: LabelledItemIn, *, event_time_iso: str) -> LLMEventIn:
    """The event a judge sees for ``item`` (``evalstream collect`` sends it over gRPC)."""
    return LLMEventIn.model_validate(
        {
            "event_id": item.item_id,
            "event_time": event_time_iso,
            "model": item.model,
            "model_version": item.model_version,
            "messages": [m.model_dump() for m in item.messages],
            "response": item.response,
            "finish_reason": item.finish_reason,
            **({"reference_answer": item.reference_answer} if item.reference_answer is not None else {}),
        }
    )
