"""The judge handler interface: one narrow method, scoring a batch.

Judges know nothing of gRPC. The server (``server.py``) converts wire messages to ``JudgeInput``,
calls ``Judge.judge_batch`` and converts the ``ItemOutcome`` list back. Batching, deadlines, retries
and dead letters live in the pipeline's cascade, written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from evalstream.v1 import events_pb2

__all__ = [
    "BudgetedJudge",
    "DimensionFailure",
    "ItemOutcome",
    "Judge",
    "JudgeInput",
    "JudgeOutput",
    "input_from_event",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class JudgeInput:
    item_id: str
    model: str
    messages: tuple[tuple[str, str], ...]  # (role, content), the prompt as sent
    response: str
    finish_reason: str = ""  # "" = not known (see rules_format.NORMAL_STOPS)
    completion_tokens: int = 0
    reference_answer: str | None = None

    @property
    def prompt(self) -> str:
        """The last user message: what most judges compare the response against."""
        for role, content in reversed(self.messages):
            if role == "user":
                return content
        return self.messages[-1][1] if self.messages else ""


@dataclass(frozen=True, slots=True, kw_only=True)
class JudgeOutput:
    dimension: str
    label: str
    score: float
    confidence: float  # calibrated, in [0, 1]
    rationale: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    #: Where ``confidence`` came from (``verdict.proto`` ``Judgement.confidence_source``); "" unsaid.
    confidence_source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class DimensionFailure:
    """One dimension the judge could not answer for one item."""

    dimension: str
    error: str
    error_type: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ItemOutcome:
    item_id: str
    judgements: tuple[JudgeOutput, ...] = ()
    error: str = ""  # non-empty: this item could not be judged at all
    error_type: str = ""
    #: Every dimension asked for and not answered, also when others were (then ``error`` is empty).
    dimension_errors: tuple[DimensionFailure, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)
    #: Statistics of the item's input, named by ``evalstream.wire.dimensions.EmbeddingStat`` (tier 1: its
    #: response embedding's); never a judgement. Empty for judges that compute none.
    stats: dict[str, float] = field(default_factory=dict)


class Judge(Protocol):
    """A judge scores a batch of items on the dimensions it knows."""

    @property
    def name(self) -> str:
        """Name and version, e.g. ``rules-v1``; reported in every verdict."""
        ...

    @property
    def tier(self) -> int: ...

    @property
    def dimensions(self) -> frozenset[str]: ...

    def judge_batch(self, items: Sequence[JudgeInput], dimensions: frozenset[str]) -> list[ItemOutcome]:
        """One outcome per item, same order. Raise only for programming errors; per-item failures
        are outcomes with ``error`` set."""
        ...


@runtime_checkable
class BudgetedJudge(Judge, Protocol):
    """A judge that can bound a batch's time (the LLM judge: its calls wait on a remote endpoint).
    The server passes what is left of the caller's gRPC deadline, so the judge answers every item
    (some as ``deadline_exceeded`` errors) before the caller gives up and retries the whole batch."""

    def judge_batch_within(
        self, items: Sequence[JudgeInput], dimensions: frozenset[str], *, budget_s: float | None
    ) -> list[ItemOutcome]: ...


def input_from_event(item_id: str, event: events_pb2.LLMEvent) -> JudgeInput:
    """Unpack the wire event into the judge's input."""
    return JudgeInput(
        item_id=item_id,
        model=event.model,
        messages=tuple((m.role, m.content) for m in event.messages),
        response=event.response,
        finish_reason=event.finish_reason,
        completion_tokens=event.tokens.completion,
        reference_answer=event.reference_answer if event.HasField("reference_answer") else None,
    )
