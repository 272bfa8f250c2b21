"""The judgement table and the human-label table: what calibration and reports read.

Both are JSON Lines, one object a line. The recorded-verdict builders
(``recorded``) write them today; the live tiers (rules, encoder, LLM over gRPC)
will write the same rows.

Judgement table, one judge's verdict on one item and dimension::

    {"item_id": "xstest/gpt4/v2-1", "dimension": "refusal", "tier": 0, "judge": "strmatch",
     "label": "full_compliance", "confidence": 0.95, "cost_usd": 0.0,
     "input_tokens": 0, "output_tokens": 0}

- ``label`` is one of the dimension's labels (``evalstream.wire.dimensions.LABELS``), or ``null`` when the
  judge gave no usable verdict (unparseable output, a refusal to classify). A cascade never accepts a
  null verdict: the item escalates, as the pipeline does on a per-item judge error.
- ``confidence`` in [0, 1]: how sure the judge is; a cascade accepts when it is at least the tier's
  threshold.
- ``confidence_source`` (optional): where the confidence came from, as the judge reports it
  (``Judgement.confidence_source`` on the wire: ``rule_precision``, ``softmax``, ``logprobs``,
  ``agreement``, ``single``, ...). Confidences from different sources are not on one scale:
  calibration fits each tier per source, and the pipeline applies a threshold only to judgements
  from the source it was fitted for. Absent (or empty): not said; such rows form their own group.
- ``position_labels`` (optional, pairwise judges): the verdict in each presentation order, mapped back
  to the original A/B frame (``null`` where that order gave none). The report's position-bias rate
  is the share of items whose orders disagree.

Human-label table, one annotator's label on one item and dimension::

    {"item_id": "xstest/gpt4/v2-1", "dimension": "refusal", "label": "full_compliance",
     "annotator": "adjudicated"}

Readers validate every line and raise ``TableError`` naming the file, line, field, what was expected
and what arrived.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evalstream.wire.dimensions import LABELS, Dimension
from evalstream.wire.jsonl import explain, json_objects

__all__ = [
    "HumanLabel",
    "HumanLabelRowIn",
    "Judgement",
    "JudgementIn",
    "LabelledSet",
    "Split",
    "TableError",
    "assign_split",
    "choose_truth_annotator",
    "read_human_labels",
    "read_judgements",
    "write_human_labels",
    "write_judgements",
]


class TableError(ValueError):
    """A judgement or human-label table is missing, malformed, or inconsistent."""


class Split(StrEnum):
    """Which part of a labelled set an item belongs to. Disjoint by construction."""

    FIT = "fit"  # used to derive confidences for judges that report none (never for thresholds)
    CALIBRATION = "calibration"  # used to choose thresholds
    TEST = "test"  # held out: never seen by calibration


def assign_split(group: str, *, seed: int, fractions: tuple[float, float, float]) -> Split:
    """A deterministic split for ``group`` (a salted SHA-256 as a number in [0, 1))."""
    digest = hashlib.sha256(f"evalstream-split:{seed}:{group}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    fit, calibration, _ = fractions
    if u < fit:
        return Split.FIT
    return Split.CALIBRATION if u < fit + calibration else Split.TEST


@dataclass(frozen=True, slots=True, kw_only=True)
class Judgement:
    """One judge's verdict on one item and dimension (one line of the judgement table)."""

    item_id: str
    dimension: Dimension
    tier: int
    judge: str
    label: str | None  # None: no usable verdict
    confidence: float
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    position_labels: tuple[str | None, ...] = ()
    confidence_source: str = ""  # "" not said


@dataclass(frozen=True, slots=True, kw_only=True)
class HumanLabel:
    """One annotator's label on one item and dimension (one line of the human-label table)."""

    item_id: str
    dimension: Dimension
    label: str
    annotator: str


_Name = Annotated[str, Field(min_length=1, max_length=512)]


def _check_label(dimension: Dimension, label: str | None, what: str) -> None:
    if label is not None and label not in LABELS[dimension]:
        raise ValueError(
            f"{what} {label!r} is not a {dimension.value} label; expected one of "
            f"{', '.join(sorted(LABELS[dimension]))}"
        )


class JudgementIn(BaseModel):
    """One judge's verdict on one dimension, as a row carries it (without the item it is about)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dimension: Dimension
    tier: Annotated[int, Field(ge=0, le=9)]
    judge: _Name
    label: str | None
    confidence: Annotated[float, Field(ge=0.0, le=1.0)]
    cost_usd: Annotated[float, Field(ge=0.0)] = 0.0
    input_tokens: Annotated[int, Field(ge=0)] = 0
    output_tokens: Annotated[int, Field(ge=0)] = 0
    position_labels: list[str | None] = []
    confidence_source: Annotated[str, Field(max_length=64)] = ""

    @model_validator(mode="after")
    def _labels(self) -> JudgementIn:
        _check_label(self.dimension, self.label, "label")
        for position in self.position_labels:
            _check_label(self.dimension, position, "position label")
        return self

    @classmethod
    def of(cls, j: Judgement) -> JudgementIn:
        """The row fields of ``j`` (all but its item id)."""
        return cls(
            dimension=j.dimension,
            tier=j.tier,
            judge=j.judge,
            label=j.label,
            confidence=j.confidence,
            cost_usd=j.cost_usd,
            input_tokens=j.input_tokens,
            output_tokens=j.output_tokens,
            position_labels=list(j.position_labels),
            confidence_source=j.confidence_source,
        )

    def on(self, item_id: str) -> Judgement:
        return Judgement(
            item_id=item_id,
            dimension=self.dimension,
            tier=self.tier,
            judge=self.judge,
            label=self.label,
            confidence=self.confidence,
            cost_usd=self.cost_usd,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            position_labels=tuple(self.position_labels),
            confidence_source=self.confidence_source,
        )


class _JudgementRow(JudgementIn):
    item_id: _Name


class HumanLabelRowIn(BaseModel):
    """One annotator's label on one dimension, as a row carries it (without the item it is about)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dimension: Dimension
    label: str
    annotator: _Name

    @model_validator(mode="after")
    def _labels(self) -> HumanLabelRowIn:
        _check_label(self.dimension, self.label, "label")
        return self

    @classmethod
    def of(cls, h: HumanLabel) -> HumanLabelRowIn:
        """The row fields of ``h`` (all but its item id)."""
        return cls(dimension=h.dimension, label=h.label, annotator=h.annotator)

    def on(self, item_id: str) -> HumanLabel:
        return HumanLabel(
            item_id=item_id, dimension=self.dimension, label=self.label, annotator=self.annotator
        )


class _HumanRow(HumanLabelRowIn):
    item_id: _Name


def read_judgements(path: Path) -> list[Judgement]:
    """Every row of a judgement table; raises ``TableError`` on the first bad line or a duplicate."""
    fields = "item_id, dimension, tier, judge, label, confidence, cost_usd, input_tokens, output_tokens"
    out: list[Judgement] = []
    seen: dict[tuple[str, str, str], int] = {}
    for number, raw in json_objects(path, kind="judgement table", error=TableError):
        try:
            row = _JudgementRow.model_validate(raw)
        except ValidationError as exc:
            raise TableError(
                f"{path}:{number}: bad judgement row: {explain(exc, whole='row')}. Each row needs {fields} "
                "(see src/evalstream/evaluation/judgements.py)"
            ) from None
        key = (row.item_id, row.dimension.value, row.judge)
        if key in seen:
            raise TableError(
                f"{path}:{number}: judge {row.judge!r} already judged item {row.item_id!r} on "
                f"{row.dimension.value} at line {seen[key]}; keep one verdict per judge, item and dimension"
            )
        seen[key] = number
        out.append(row.on(row.item_id))
    if not out:
        raise TableError(f"{path}: the judgement table is empty")
    return out


def read_human_labels(path: Path) -> list[HumanLabel]:
    """Every row of a human-label table; raises ``TableError`` on the first bad line or a duplicate."""
    out: list[HumanLabel] = []
    seen: dict[tuple[str, str, str], int] = {}
    for number, raw in json_objects(path, kind="human-label table", error=TableError):
        try:
            row = _HumanRow.model_validate(raw)
        except ValidationError as exc:
            raise TableError(
                f"{path}:{number}: bad human-label row: {explain(exc, whole='row')}. Each row needs item_id, "
                "dimension, label, annotator"
            ) from None
        key = (row.item_id, row.dimension.value, row.annotator)
        if key in seen:
            raise TableError(
                f"{path}:{number}: annotator {row.annotator!r} already labelled item {row.item_id!r} on "
                f"{row.dimension.value} at line {seen[key]}; keep one label per annotator, item and dimension"
            )
        seen[key] = number
        out.append(row.on(row.item_id))
    if not out:
        raise TableError(f"{path}: the human-label table is empty")
    return out


def write_judgements(path: Path, rows: Iterable[Judgement]) -> int:
    """Write a judgement table; returns the number of rows."""
    lines = []
    for j in rows:
        fields = JudgementIn.of(j).model_dump(mode="json")
        if not j.position_labels:
            del fields["position_labels"]
        if not j.confidence_source:
            del fields["confidence_source"]
        obj: dict[str, Any] = {"item_id": j.item_id, **fields}
        lines.append(json.dumps(obj, ensure_ascii=False))
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def write_human_labels(path: Path, rows: Iterable[HumanLabel]) -> int:
    """Write a human-label table; returns the number of rows."""
    lines = [
        json.dumps(
            {
                "item_id": h.item_id,
                "dimension": h.dimension.value,
                "label": h.label,
                "annotator": h.annotator,
            },
            ensure_ascii=False,
        )
        for h in rows
    ]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelledSet:
    """Judgements and human labels on the same items, with the split each item belongs to.

    ``truth_annotator`` names the human label that counts as the truth (``adjudicated``, ``gold``);
    other annotators are kept for the alternative annotator test. ``cascade`` names the judges of the
    default cascade, cheapest first. ``confidence_sources`` says, per judge, where its confidence
    comes from (written into the cascade config). ``notes`` say how anything not recorded
    (confidence, cost) was derived, so reports can print it next to the figures.
    """

    name: str
    judgements: tuple[Judgement, ...]
    humans: tuple[HumanLabel, ...]
    truth_annotator: str
    splits: Mapping[str, Split] = field(default_factory=lambda: MappingProxyType({}))
    cascade: tuple[str, ...] = ()
    confidence_sources: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    notes: tuple[str, ...] = ()

    @property
    def judges(self) -> list[str]:
        """Judge names in tier order, then by name."""
        tiers = {j.judge: j.tier for j in self.judgements}
        return sorted(tiers, key=lambda name: (tiers[name], name))

    @property
    def annotators(self) -> list[str]:
        return sorted({h.annotator for h in self.humans})

    @property
    def dimensions(self) -> list[Dimension]:
        return sorted({j.dimension for j in self.judgements})

    def split(self, which: Split | Sequence[Split] | None) -> LabelledSet:
        """The same set restricted to items of the given split(s); ``None`` keeps everything.

        Without split assignments every item counts as calibration data."""
        if which is None:
            return self
        wanted = {which} if isinstance(which, Split) else set(which)

        def keep(item_id: str) -> bool:
            return self.splits.get(item_id, Split.CALIBRATION) in wanted

        return LabelledSet(
            name=self.name,
            judgements=tuple(j for j in self.judgements if keep(j.item_id)),
            humans=tuple(h for h in self.humans if keep(h.item_id)),
            truth_annotator=self.truth_annotator,
            splits=self.splits,
            cascade=self.cascade,
            confidence_sources=self.confidence_sources,
            notes=self.notes,
        )

    def truth(self, dimension: Dimension) -> dict[str, str]:
        """Item id -> the truth annotator's label on ``dimension``."""
        return {
            h.item_id: h.label
            for h in self.humans
            if h.dimension == dimension and h.annotator == self.truth_annotator
        }

    def verdicts(self, dimension: Dimension, judge: str) -> dict[str, Judgement]:
        """Item id -> this judge's judgement on ``dimension``."""
        return {j.item_id: j for j in self.judgements if j.dimension == dimension and j.judge == judge}


def choose_truth_annotator(humans: Sequence[HumanLabel], requested: str | None) -> str:
    """The annotator whose labels are the truth: ``requested``, or the only annotator there is."""
    names = sorted({h.annotator for h in humans})
    if requested is not None:
        if requested not in names:
            raise TableError(
                f"truth annotator {requested!r} has no labels; the human-label table has {', '.join(names)}"
            )
        return requested
    if len(names) == 1:
        return names[0]
    raise TableError(
        f"the human-label table has several annotators ({', '.join(names)}); say which one is the truth "
        "with --truth-annotator (the others feed the alternative annotator test)"
    )
