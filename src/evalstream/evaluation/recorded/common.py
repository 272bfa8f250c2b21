"""What every recorded data set shares: the set names, list prices and cost estimates, the
deterministic split, and label and confidence from the votes of two presentation orders."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

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


VOTES_SOURCE: Final = (
    "share of the two presentation orders backing the verdict (a tie or unparsed order counts half)"
)
