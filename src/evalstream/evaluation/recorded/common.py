"""What every recorded data set shares: the set names, list prices and cost estimates, the
deterministic split, label and confidence from the votes of two presentation orders, and the records
each set's reader yields (``labelled_items``: the labelled-items model of a user's file)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from evalstream.evaluation.judgements import HumanLabel, HumanLabelRowIn, Judgement, JudgementIn, Split
from evalstream.evaluation.labelled_items import LabelledItemIn
from evalstream.wire.dimensions import PairwiseLabel


class RecordedData(StrEnum):
    XSTEST = "xstest"
    LLMBAR = "llmbar"
    JUDGEBENCH = "judgebench"


@dataclass(frozen=True, slots=True)
class Price:
    """List price in USD per million tokens, and where it comes from."""

    input: float
    output: float
    source: str


#: List prices of the recorded judges (USD per 1M tokens) at the time of the recordings.
PRICES: Final[Mapping[str, Price]] = MappingProxyType(
    {
        "gpt-4": Price(30.0, 60.0, "OpenAI gpt-4 (8k), 2023"),
        "chatgpt": Price(1.5, 2.0, "OpenAI gpt-3.5-turbo-0613 (4k), 2023"),
        "o1-mini": Price(3.0, 12.0, "OpenAI o1-mini-2024-09-12 at launch"),
    }
)

#: Rough size of a judge prompt's fixed template, in characters, where the data does not record it.
TEMPLATE_CHARS: Final = 1000

FRACTIONS: Final[Mapping[RecordedData, tuple[float, float, float]]] = MappingProxyType(
    {
        RecordedData.XSTEST: (0.2, 0.4, 0.4),  # fit (confidence), calibration, test
        RecordedData.LLMBAR: (0.0, 0.5, 0.5),
        RecordedData.JUDGEBENCH: (0.0, 0.5, 0.5),
    }
)


def tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def cost(judge: str, input_tokens: int, output_tokens: int) -> float:
    price = PRICES.get(judge)
    if price is None:
        return 0.0
    return (input_tokens * price.input + output_tokens * price.output) / 1e6


def cost_note() -> str:
    listed = "; ".join(
        f"{name} ${p.input:g}/${p.output:g} per 1M in/out ({p.source})" for name, p in PRICES.items()
    )
    return (
        "cost_usd is an estimate: tokens = characters / 4 with a "
        f"~{TEMPLATE_CHARS}-character prompt template; "
        f"list prices {listed}; judges without a list price (self-hosted, string match) count 0"
    )


# --- pairwise votes --------------------------------------------------------------------------------


def from_votes(votes: Sequence[str | None]) -> tuple[str | None, float]:
    """Label and confidence from per-order verdicts: the share of orders backing the label, with a
    tie or a missing order counting half for each side."""
    if all(v is None for v in votes):
        return None, 0.0
    backing_a = sum(1.0 if v == PairwiseLabel.A else 0.0 if v == PairwiseLabel.B else 0.5 for v in votes)
    p = backing_a / len(votes)
    label = PairwiseLabel.A if p > 0.5 else PairwiseLabel.B if p < 0.5 else PairwiseLabel.TIE
    return label.value, max(p, 1.0 - p)


#: ``confidence_source`` of recorded verdicts (the judgement table's column; the ``*_SOURCE`` texts
#: say how each is computed): the empirical precision of a judge's label on the fit split, the
#: share of the presentation orders behind a verdict, a reward model's score margin.
LABEL_PRECISION: Final = "label_precision"
ORDER_VOTES: Final = "order_votes"
REWARD_MARGIN: Final = "reward_margin"

VOTES_SOURCE: Final = (
    "share of the two presentation orders backing the verdict (a tie or unparsed order counts half)"
)


# --- the records a reader yields -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Content:
    """What one item shows a judge: the prompt, the response(s), the model that answered."""

    prompt: str
    response: str
    response_b: str | None = None  # pairwise: the second response
    model: str = "unknown"
    model_version: str = ""
    group: str | None = None  # items sharing a group share a split (answers to one prompt)


def labelled_items(
    content: Mapping[str, Content],
    *,
    judgements: Sequence[Judgement],
    humans: Sequence[HumanLabel],
    splits: Mapping[str, Split],
) -> tuple[LabelledItemIn, ...]:
    """One labelled-items record per item of ``content`` (in its order), with its labels, recorded
    judgements and split: validated by the same model as a user's file."""
    labels: dict[str, list[HumanLabelRowIn]] = {}
    for h in humans:
        labels.setdefault(h.item_id, []).append(HumanLabelRowIn.of(h))
    judged: dict[str, list[JudgementIn]] = {}
    for j in judgements:
        judged.setdefault(j.item_id, []).append(JudgementIn.of(j))
    return tuple(
        LabelledItemIn.model_validate(
            {
                "item_id": item_id,
                "messages": [{"role": "user", "content": c.prompt}],
                "response": c.response,
                "response_b": c.response_b,
                "model": c.model,
                "model_version": c.model_version,
                "labels": labels.get(item_id, []),
                "split": splits[item_id],
                "group": c.group,
                "judgements": judged.get(item_id, []),
            }
        )
        for item_id, c in content.items()
    )
