"""Tier 2: LLM judges over any OpenAI-compatible endpoint (vLLM, OpenAI, a gateway, the replay server).

One judgement is one or more chat-completion calls: one per judge model (a PoLL panel when there are
several), and for pairwise one per presentation order (the swap catches position bias). Each call asks
for a JSON verdict (``prompts``), parses it strictly, and is retried within one overall deadline.

The parts, each with its own docstring:

- ``llm_http``: the HTTP client (the one place that talks to the endpoint), its settings, retry policy,
  wire types, the error tree translated from httpx, the circuit breaker's use and API-key scrubbing;
- ``llm_votes``: confidence (logprobs, else agreement across samples, panel models and orders) and
  how votes combine into one decision;
- ``llm_calls``: one logical call (``CallRunner``): its requests, re-asks, the fallback from
  logprobs to samples, model checks;
- ``llm_stream``: streamed replies reassembled (so that an abandoned call stops on the server);
- ``llm_dialect``: which structured-output dialect the endpoint speaks (negotiated once);
- ``concurrency``: how many calls the endpoint gets at once (adaptive);
- this module: the judge, which fans a batch out into calls and decides each item from its votes.

No per-item problem fails a request: every dimension asked for ends as a judgement or as a
``DimensionFailure`` on its item (an item with none answered also carries ``error``, naming every
dimension's failure), and a bug while deciding one item's votes is logged with its traceback and
becomes that item's ``internal`` failure.

Where confidence comes from (``JudgeOutput.confidence_source``, counted in ``totals()`` as
``confidence.<source>``):

- ``logprobs``: the label's token probabilities, while they are usable. They are not when the
  endpoint returns none, or when at temperature 0 a chosen token is less likely than an alternative
  the endpoint lists (the logprobs are not the distribution the reply was decoded from: llama.cpp
  reports the unconstrained distribution under a grammar). The model is then switched, for the
  judge's life, to
- ``agreement``: ``fallback_samples`` samples at ``sample_temperature`` and the vote share
  (``llm_votes``). An endpoint that ignores ``n`` (llama.cpp answers one choice) is asked once per
  sample instead, each with its own ``seed``;
- ``single``: only one vote came back (the samples' calls failed or the deadline ended them):
  confidence ``2/3``, no real measure.

Re-asks differ from the first ask (``seed`` and at least ``sample_temperature``): at temperature 0 an
identical request gets an identical reply.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Final

import httpx

from evalstream.wire.dimensions import Dimension, Tier

from .base import DimensionFailure, ItemOutcome, JudgeInput, JudgeOutput
from .circuit import register_breaker_metrics
from .llm_calls import CallRunner, _Call, _CallResult
from .llm_client import _MESSAGE_EXCERPT, _ChatClient
from .llm_errors import (
    LLMAuthError,
    LLMCircuitOpen,
    LLMClosedError,
    LLMConnectionError,
    LLMDeadlineExceeded,
    LLMError,
    LLMFormatUnsupported,
    LLMModelMismatch,
    LLMProtocolError,
    LLMRateLimitError,
    LLMRejectedError,
    LLMServerError,
    LLMStatusError,
    LLMTimeoutError,
    LLMUnparseableReply,
)
from .llm_http import LLMJudgeSettings, RetryPolicy
from .llm_votes import Vote, combine_votes, label_probabilities, score_probabilities
from .llm_wire import ChatReply, TokenLogprob
from .prompts import (
    PromptTemplate,
    load_prompt,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .settings import JudgeServerSettings

__all__ = [
    "ChatReply",
    "LLMAuthError",
    "LLMCircuitOpen",
    "LLMClosedError",
    "LLMConnectionError",
    "LLMDeadlineExceeded",
    "LLMError",
    "LLMFormatUnsupported",
    "LLMJudge",
    "LLMJudgeSettings",
    "LLMModelMismatch",
    "LLMProtocolError",
    "LLMRateLimitError",
    "LLMRejectedError",
    "LLMServerError",
    "LLMStatusError",
    "LLMTimeoutError",
    "LLMUnparseableReply",
    "PairInput",
    "RetryPolicy",
    "TokenLogprob",
    "Vote",
    "combine_votes",
    "from_settings",
    "label_probabilities",
    "score_probabilities",
]

_log = logging.getLogger(__name__)

JUDGE_KIND: Final = "llm"


# --------------------------------------------------------------------------------------------- judge


@dataclass(frozen=True, slots=True, kw_only=True)
class PairInput:
    """Two responses to one prompt, for the pairwise dimension."""

    item_id: str
    prompt: str
    response_a: str
    response_b: str


@dataclass(slots=True)
class _Totals:
    counts: Counter[str] = field(default_factory=Counter)
    cost_usd: float = 0.0


class LLMJudge:
    """The tier-2 judge: refusal, quality and pairwise over an OpenAI-compatible endpoint."""

    def __init__(
        self,
        settings: LLMJudgeSettings | None = None,
        *,
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._settings = settings or LLMJudgeSettings()
        self._policy = policy or self._settings.retry_policy()
        self._clock = clock
        self._closing = threading.Event()
        self._client = _ChatClient(
            self._settings, self._policy, clock=clock, closing=self._closing, transport=transport
        )
        self._prompts: dict[Dimension, PromptTemplate] = {
            d: load_prompt(d, self._settings.prompt_version) for d in self.DIMENSIONS
        }
        self._pool = ThreadPoolExecutor(
            max_workers=self._settings.max_concurrency, thread_name_prefix="llm-judge"
        )
        self._lock = threading.Lock()
        self._totals = _Totals()
        self._calls = CallRunner(
            self._settings,
            self._policy,
            self._client,
            self._prompts,
            clock=clock,
            closing=self._closing,
            count=self._count,
        )

    DIMENSIONS: ClassVar[frozenset[Dimension]] = frozenset(
        {Dimension.REFUSAL, Dimension.QUALITY, Dimension.PAIRWISE}
    )

    def __repr__(self) -> str:
        key = "'***'" if self._client.has_key else None
        return f"LLMJudge(name={self.name!r}, url={str(self._client.where)!r}, api_key={key})"

    @property
    def name(self) -> str:
        return f"{JUDGE_KIND}-{self._settings.prompt_version}:{'+'.join(self._settings.models)}"

    @property
    def tier(self) -> int:
        return int(Tier.LLM)

    @property
    def dimensions(self) -> frozenset[str]:
        return frozenset(str(d) for d in self.DIMENSIONS)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """The endpoint's circuit-breaker and concurrency-limit metrics, on the judge server's registry."""
        if self._client.breaker is not None:
            register_breaker_metrics(registry, self.name, [(str(self._client.where), self._client.breaker)])
        from prometheus_client import Gauge

        Gauge(
            "evalstream_llm_judge_concurrency_limit",
            "Calls the LLM judge lets be in flight to its endpoint now (adaptive).",
            ["judge", "endpoint"],
            registry=registry,
        ).labels(judge=self.name, endpoint=str(self._client.where)).set_function(
            lambda: self._client.limit.snapshot().limit
        )

    @property
    def dialect(self) -> str:
        """The structured-output dialect in use (under ``auto``: the one found so far)."""
        return self._calls.dialects.current

    def totals(self) -> dict[str, float]:
        """Calls, attempts, retries, re-asks, tokens, cost and errors by type since start."""
        with self._lock:
            return {**self._totals.counts, "cost_usd": self._totals.cost_usd}

    def close(self) -> None:
        """Abandon backoff sleeps and queued calls (they end as ``closed`` outcomes), wait for running
        attempts, close connections."""
        self._closing.set()
        self._pool.shutdown(wait=True)
        self._client.close()

    def __enter__(self) -> LLMJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the Judge protocol

    def judge_batch(self, items: Sequence[JudgeInput], dimensions: frozenset[str]) -> list[ItemOutcome]:
        """Refusal and quality judge ``response``; pairwise compares ``response`` (A) with
        ``reference_answer`` (B) and is skipped for items without one."""
        return self.judge_batch_within(items, dimensions, budget_s=None)

    def judge_batch_within(
        self, items: Sequence[JudgeInput], dimensions: frozenset[str], *, budget_s: float | None
    ) -> list[ItemOutcome]:
        """``judge_batch`` that answers within ``budget_s`` seconds (None: no limit but each call's own
        deadline). Every call's deadline is the sooner of its own and the batch's, so calls still
        waiting for a concurrency slot when the budget is spent end at once as ``deadline_exceeded``
        item errors: the caller gets an answer for every item before it gives up on the request."""
        budget_end = None if budget_s is None else self._clock() + budget_s
        wanted = [d for d in sorted(self.DIMENSIONS) if not dimensions or d in dimensions]
        jobs: list[tuple[int, Dimension, dict[str, str]]] = []
        skipped: dict[int, str] = {}
        for i, item in enumerate(items):
            for dim in wanted:
                if dim is Dimension.PAIRWISE:
                    if item.reference_answer is None:
                        skipped[i] = "pairwise: no reference_answer to compare with"
                        continue
                    texts = {
                        "prompt": item.prompt,
                        "response_a": item.response,
                        "response_b": item.reference_answer,
                    }
                else:
                    texts = {"prompt": item.prompt, "response": item.response}
                jobs.append((i, dim, texts))
        outcomes = self._run([item.item_id for item in items], jobs, budget_end)
        for i, note in skipped.items():
            outcomes[i].extra["skipped"] = note
        return outcomes

    def judge_pairs(self, pairs: Sequence[PairInput]) -> list[ItemOutcome]:
        """Pairwise preference for each pair, asked in both orders (``pairwise_swap``)."""
        jobs = [
            (
                i,
                Dimension.PAIRWISE,
                {"prompt": p.prompt, "response_a": p.response_a, "response_b": p.response_b},
            )
            for i, p in enumerate(pairs)
        ]
        return self._run([p.item_id for p in pairs], jobs)

    # ---- orchestration

    def _run(
        self,
        item_ids: list[str],
        jobs: list[tuple[int, Dimension, dict[str, str]]],
        budget_end: float | None = None,
    ) -> list[ItemOutcome]:
        calls = [
            _Call(job=j, dimension=dim, model=model, swapped=swapped, texts=texts, budget_end=budget_end)
            for j, (_, dim, texts) in enumerate(jobs)
            for model in self._settings.models
            for swapped in (
                (False, True) if dim is Dimension.PAIRWISE and self._settings.pairwise_swap else (False,)
            )
        ]
        results = list(self._pool.map(self._call_safely, calls))
        by_job: dict[int, list[tuple[_Call, _CallResult | LLMError]]] = defaultdict(list)
        for call, result in zip(calls, results, strict=True):
            by_job[call.job].append((call, result))
        judgements: dict[int, list[JudgeOutput]] = defaultdict(list)
        failures: dict[int, list[DimensionFailure]] = defaultdict(list)
        extras: dict[int, dict[str, str]] = defaultdict(dict)
        for j, (i, dim, _) in enumerate(jobs):
            output, failure, extra = self._decide_safely(dim, by_job[j])
            extras[i].update(extra)
            if output is not None:
                judgements[i].append(output)
            if failure is not None:
                failures[i].append(failure)
        outcomes = []
        for i, item_id in enumerate(item_ids):
            failed = tuple(failures.get(i, ()))
            error, error_type = "", ""
            if failed and not judgements.get(i):  # nothing answered: the item's error names every failure
                error = "; ".join(f.error for f in failed)
                types = {f.error_type for f in failed}
                error_type = failed[0].error_type if len(types) == 1 else "mixed"
            outcomes.append(
                ItemOutcome(
                    item_id=item_id,
                    judgements=tuple(judgements.get(i, ())),
                    error=error,
                    error_type=error_type,
                    dimension_errors=failed,
                    extra=extras.get(i, {}),
                )
            )
        return outcomes

    def _decide_safely(
        self, dim: Dimension, results: list[tuple[_Call, _CallResult | LLMError]]
    ) -> tuple[JudgeOutput | None, DimensionFailure | None, dict[str, str]]:
        """``_decide``, with a bug in it confined to this item's dimension (logged with its traceback)."""
        try:
            output, exc, extra = self._decide(dim, results)
        except Exception as bug:
            _log.exception("LLM judge: deciding %s from %d call results failed", dim, len(results))
            self._count("errors.internal")
            message = f"{dim}: the judge failed deciding this item ({type(bug).__name__}: {bug}); see its log"
            return None, DimensionFailure(dimension=str(dim), error=message, error_type="internal"), {}
        if exc is None:
            return output, None, extra
        raw = ""
        if isinstance(exc, LLMUnparseableReply):  # what the model said, for the dead letter
            raw = f"; raw reply: {exc.raw[: self._settings.raw_reply_chars // 5]!r}"
        message = self._client.scrub(f"{dim}: {exc} (after {exc.attempts} attempts){raw}")
        return None, DimensionFailure(dimension=str(dim), error=message, error_type=exc.error_type), extra

    def _decide(
        self, dim: Dimension, results: list[tuple[_Call, _CallResult | LLMError]]
    ) -> tuple[JudgeOutput | None, LLMError | None, dict[str, str]]:
        votes = [v for _, r in results if isinstance(r, _CallResult) for v in r.votes]
        errors = [(c, r) for c, r in results if isinstance(r, LLMError)]
        prompt_tokens = sum(r.prompt_tokens for _, r in results if isinstance(r, _CallResult))
        completion_tokens = sum(r.completion_tokens for _, r in results if isinstance(r, _CallResult))
        extra: dict[str, str] = {}
        for call, exc in errors:
            where = f"{dim}.{call.model}{'.swapped' if call.swapped else ''}"
            extra[f"{where}.error"] = self._client.scrub(f"{exc.error_type}: {exc}")[:_MESSAGE_EXCERPT]
            if isinstance(exc, LLMUnparseableReply):
                extra["raw_reply"] = self._client.scrub(exc.raw)[: self._settings.raw_reply_chars]
        if dialects := {r.dialect for _, r in results if isinstance(r, _CallResult) and r.dialect}:
            extra[f"{dim}.response_format"] = ",".join(sorted(dialects))
        if not votes:
            return None, errors[0][1] if errors else LLMError("no votes"), extra
        decision = combine_votes(dim, votes)
        source = "single" if decision.source == "agreement" and len(votes) == 1 else decision.source
        self._count(f"confidence.{source}")
        extra[f"{dim}.confidence_source"] = source
        extra[f"{dim}.agreement"] = decision.agreement
        if dim is Dimension.PAIRWISE:
            first = {v.label for v in votes if not v.swapped}
            second = {v.label for v in votes if v.swapped}
            if first and second:
                extra[f"{dim}.position_consistent"] = str(first == second).lower()
        cost = (
            prompt_tokens / 1000 * self._settings.price_input_per_1k
            + completion_tokens / 1000 * self._settings.price_output_per_1k
        )
        output = JudgeOutput(
            dimension=str(dim),
            label=decision.label,
            score=decision.score,
            confidence=decision.confidence,
            rationale=self._client.scrub(decision.rationale)[:_MESSAGE_EXCERPT],
            input_tokens=prompt_tokens,
            output_tokens=completion_tokens,
            cost_usd=cost,
            confidence_source=source,
        )
        return output, None, extra

    def _count(self, key: str, by: int = 1, cost: float = 0.0) -> None:
        with self._lock:
            self._totals.counts[key] += by
            self._totals.cost_usd += cost

    def _call_safely(self, call: _Call) -> _CallResult | LLMError:
        try:
            return self._calls.run(call)
        except LLMError as exc:
            self._count(f"errors.{exc.error_type}")
            _log.warning("LLM judge call failed (%s, model %s): %s", call.dimension, call.model, exc)
            return exc


def from_settings(settings: JudgeServerSettings) -> LLMJudge:
    """The registry's factory: LLM settings come from ``EVALSTREAM_LLM_*`` (read once, here)."""
    return LLMJudge(LLMJudgeSettings())
