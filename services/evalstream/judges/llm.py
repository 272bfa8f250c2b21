"""Tier 2: LLM judges over any OpenAI-compatible endpoint (vLLM, OpenAI, a gateway, the replay server).

One judgement is one or more chat-completion calls: one per judge model (a PoLL panel when there are
several), and for pairwise one per presentation order (the swap catches position bias). Each call asks
for a JSON verdict (``prompts``), parses it strictly, and is retried within one overall deadline.

The parts, each with its own docstring:

- ``llm_http``: the HTTP client (the one place that talks to the endpoint), its settings, retry policy,
  wire types, the error tree translated from httpx, the circuit breaker's use and API-key scrubbing;
- ``llm_votes``: confidence (logprobs, else agreement across samples, panel models and orders) and
  how votes combine into one decision;
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
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final

import httpx

from evalstream.wire.dimensions import Dimension, Tier

from .base import DimensionFailure, ItemOutcome, JudgeInput, JudgeOutput
from .circuit import register_breaker_metrics
from .llm_dialect import DialectNegotiator
from .llm_http import (
    _MESSAGE_EXCERPT,
    ChatReply,
    Choice,
    LLMAuthError,
    LLMCircuitOpen,
    LLMClosedError,
    LLMConnectionError,
    LLMDeadlineExceeded,
    LLMError,
    LLMFormatUnsupported,
    LLMJudgeSettings,
    LLMModelMismatch,
    LLMProtocolError,
    LLMRateLimitError,
    LLMRejectedError,
    LLMServerError,
    LLMStatusError,
    LLMTimeoutError,
    LLMUnparseableReply,
    RetryPolicy,
    TokenLogprob,
    _ChatClient,
    model_listed,
    model_matches,
)
from .llm_votes import Vote, _vote, combine_votes, label_probabilities, score_probabilities
from .prompts import (
    Dialect,
    PromptTemplate,
    ReplySchemaError,
    load_prompt,
    parse_reply,
    response_format,
    schema_instruction,
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
#: A chosen token this much (natural log) less likely than a listed alternative, at temperature 0,
#: shows logprobs that are not the distribution the reply was decoded from.
_GREEDY_SLACK: Final = math.log(1.01)


# --------------------------------------------------------------------------------------------- judge


@dataclass(frozen=True, slots=True, kw_only=True)
class PairInput:
    """Two responses to one prompt, for the pairwise dimension."""

    item_id: str
    prompt: str
    response_a: str
    response_b: str


@dataclass(frozen=True, slots=True, kw_only=True)
class _Call:
    job: int
    dimension: Dimension
    model: str
    swapped: bool
    texts: Mapping[str, str]
    budget_end: float | None = None  # clock time by which the whole request must be answered


@dataclass(slots=True, kw_only=True)
class _CallResult:
    votes: list[Vote]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    dialect: str = ""


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
        self._no_logprobs: dict[str, str] = {}  # model -> why its logprobs are not used
        self._ignores_n: set[str] = set()  # models whose endpoint answers one choice whatever ``n``
        self._dialects = DialectNegotiator(self._settings.response_format, clock=clock)
        self._totals = _Totals()

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
        return self._dialects.current

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
            return self._call(call)
        except LLMError as exc:
            self._count(f"errors.{exc.error_type}")
            _log.warning("LLM judge call failed (%s, model %s): %s", call.dimension, call.model, exc)
            return exc

    def _messages(self, call: _Call) -> list[dict[str, str]]:
        texts = dict(call.texts)
        if call.swapped:
            texts["response_a"], texts["response_b"] = call.texts["response_b"], call.texts["response_a"]
        return self._prompts[call.dimension].render(texts)

    def _body(
        self,
        call: _Call,
        messages: list[dict[str, str]],
        *,
        n: int,
        with_logprobs: bool,
        dialect: Dialect,
        variant: int,
    ) -> dict[str, Any]:
        """One request. ``variant`` 0 is the first ask; each later one (a re-ask, another sample from
        an endpoint that ignores ``n``) gets its own ``seed`` and at least ``sample_temperature``, so
        it is not an identical repeat."""
        s = self._settings
        temperature = s.temperature if n == 1 else s.sample_temperature
        if dialect in ("json_object", "none"):  # the schema is not enforced: say it in the prompt
            system, *rest = messages
            messages = [{**system, "content": system["content"] + schema_instruction(call.dimension)}, *rest]
        body: dict[str, Any] = {
            "model": call.model,
            "messages": messages,
            "n": n,
            "temperature": temperature if variant == 0 else max(temperature, s.sample_temperature),
            "max_tokens": s.max_tokens,
        }
        if variant:
            body["seed"] = variant
        if with_logprobs:
            body["logprobs"] = True
            if s.top_logprobs:
                body["top_logprobs"] = s.top_logprobs
        if (fmt := response_format(call.dimension, dialect)) is not None:
            body["response_format"] = fmt
        return body

    def _check_served(self, model: str, deadline: float) -> None:
        """``LLMModelMismatch`` when the endpoint's model list (asked once) does not have ``model``."""
        if not self._settings.check_model:
            return
        served = self._client.served_models(
            timeout=min(self._policy.attempt_timeout_s, deadline - self._clock())
        )
        if served is not None and not model_listed(model, served):
            raise LLMModelMismatch(
                f"{self._client.where} does not serve model {model!r} (EVALSTREAM_LLM_MODEL or "
                f"EVALSTREAM_LLM_PANEL); GET /models lists {sorted(served)[:10]}: set the judge's model "
                "to one of them"
            )

    def _complete(
        self,
        call: _Call,
        messages: list[dict[str, str]],
        *,
        n: int,
        with_logprobs: bool,
        variant: int,
        deadline: float,
    ) -> tuple[ChatReply, Dialect]:
        """One completion in the endpoint's dialect (found by asking, under ``auto``), its usage
        counted and its model checked."""
        s = self._settings
        while True:
            with self._dialects.probing(deadline):
                dialect = self._dialects.current
                body = self._body(
                    call, messages, n=n, with_logprobs=with_logprobs, dialect=dialect, variant=variant
                )
                try:
                    reply = self._client.complete(
                        body, deadline=deadline, on_retry=lambda: self._count("retries")
                    )
                except LLMFormatUnsupported as exc:
                    self._count("format_refusals")
                    nxt = self._dialects.refused(dialect, str(exc))
                    if nxt is None:
                        setting = "auto" if self._dialects.auto else dialect
                        raise LLMFormatUnsupported(
                            f"{exc}; EVALSTREAM_LLM_RESPONSE_FORMAT={setting} and the endpoint takes no "
                            "structured-output dialect the judge knows: set it to one the endpoint "
                            "accepts, or to auto",
                            status=exc.status,
                        ) from exc
                    continue
                self._dialects.accepted(dialect)
            cost = (
                reply.prompt_tokens / 1000 * s.price_input_per_1k
                + reply.completion_tokens / 1000 * s.price_output_per_1k
            )
            self._count("calls")
            self._count("attempts", reply.attempts)
            self._count("input_tokens", reply.prompt_tokens)
            self._count("output_tokens", reply.completion_tokens, cost)
            if s.check_model and not model_matches(call.model, reply.model, self._client.models_known()):
                raise LLMModelMismatch(
                    f"asked {self._client.where} for model {call.model!r}, but the reply says model "
                    f"{reply.model!r}; set EVALSTREAM_LLM_MODEL to the model the endpoint serves, or "
                    "EVALSTREAM_LLM_CHECK_MODEL=false for a gateway that renames models"
                )
            return reply, dialect

    def _logprobs_problem(self, choices: Sequence[Choice], greedy: bool) -> str | None:
        """Why these choices' logprobs cannot be taken as the judge's confidence, or None."""
        if all(c.logprobs is None for c in choices):
            return "the endpoint returns no logprobs"
        if greedy:
            for c in choices:
                for tok in c.logprobs or ():
                    best = max((lp for _, lp in tok.top), default=tok.logprob)
                    if best > tok.logprob + _GREEDY_SLACK:
                        return (
                            f"at temperature 0 it chose token {tok.token!r} ({math.exp(tok.logprob):.3f}) "
                            f"over a likelier one ({math.exp(best):.3f}): its logprobs are not the "
                            "distribution it decoded from (constrained decoding)"
                        )
        return None

    def _samples(
        self,
        call: _Call,
        messages: list[dict[str, str]],
        *,
        want: int,
        with_logprobs: bool,
        variant: int,
        deadline: float,
        result: _CallResult,
        required: bool = True,
    ) -> tuple[list[Choice], int]:
        """``want`` choices: one request with ``n=want``, or one request per choice from an endpoint
        that ignores ``n`` (found out here, remembered). Each request after the first of the call has
        its own ``variant`` (seed). When a later request fails, the choices so far are returned;
        when the first fails (and ``required``), its error is raised. Returns the next variant."""
        got: list[Choice] = []
        while len(got) < want and (not got or self._clock() < deadline):
            with self._lock:
                ignores_n = call.model in self._ignores_n
            ask = 1 if ignores_n else want - len(got)
            try:
                reply, dialect = self._complete(
                    call, messages, n=ask, with_logprobs=with_logprobs, variant=variant, deadline=deadline
                )
            except LLMError as exc:
                if required and not got:
                    raise
                _log.info("a further sample from model %s failed: %s", call.model, exc)
                break
            variant += 1
            result.dialect = dialect
            result.prompt_tokens += reply.prompt_tokens
            result.completion_tokens += reply.completion_tokens
            got.extend(reply.choices)
            if ask > 1 and len(reply.choices) < ask:
                with self._lock:
                    first = call.model not in self._ignores_n
                    self._ignores_n.add(call.model)
                if first:
                    _log.warning(
                        "model %s answered %d choice(s) for n=%d: asking once per sample from now on",
                        call.model, len(reply.choices), ask,
                    )  # fmt: skip
        return got, variant

    def _call(self, call: _Call) -> _CallResult:
        """One logical call: transport retries inside ``complete``, one re-ask for an unparseable
        reply, and, when the endpoint's logprobs turn out to be unusable, more samples beside the
        reply in hand; all within one deadline."""
        s = self._settings
        if self._closing.is_set():
            raise LLMClosedError("the judge is closing; call not started")
        deadline = self._clock() + self._policy.deadline_s
        if call.budget_end is not None:
            deadline = min(deadline, call.budget_end)
            if deadline <= self._clock():
                raise LLMDeadlineExceeded("the request's time ran out before this call could start")
        self._check_served(call.model, deadline)
        result = _CallResult(votes=[])
        reasks = 0
        variant = 0
        messages = self._messages(call)  # one rendering (one nonce) for every ask of this call
        while True:
            with self._lock:
                known_without = call.model in self._no_logprobs
            want_logprobs = s.logprobs and not known_without
            n = s.samples if want_logprobs else max(s.samples, s.fallback_samples)
            choices, variant = self._samples(
                call,
                messages,
                want=n,
                with_logprobs=want_logprobs,
                variant=variant,
                deadline=deadline,
                result=result,
            )
            use_logprobs = want_logprobs
            greedy = n == 1 and s.temperature == 0 and reasks == 0
            if want_logprobs and (problem := self._logprobs_problem(choices, greedy)) is not None:
                use_logprobs = False
                with self._lock:
                    first = call.model not in self._no_logprobs
                    self._no_logprobs[call.model] = problem
                if first:
                    _log.warning(
                        "model %s: logprobs not used for confidence (%s); sampling %d replies instead",
                        call.model, problem, s.fallback_samples,
                    )  # fmt: skip
                # the reply in hand is one sample: ask for the rest
                more, variant = self._samples(
                    call,
                    messages,
                    want=s.fallback_samples - len(choices),
                    with_logprobs=False,
                    variant=variant,
                    deadline=deadline,
                    result=result,
                    required=False,
                )
                choices += more
            votes, problems = [], []
            for choice in choices:
                try:
                    parsed = parse_reply(call.dimension, choice.content)
                except ReplySchemaError as bad:
                    problems.append((bad, choice.content or ""))
                    continue
                votes.append(_vote(call.dimension, call.model, call.swapped, parsed, choice, use_logprobs))
            if votes:
                result.votes = votes
                return result
            first_problem, raw = problems[0]
            reason = self._client.scrub(str(first_problem))  # the reply's own text, which may echo the key
            if reasks >= self._policy.reasks:
                raise LLMUnparseableReply(
                    f"model {call.model} replied {len(problems)}x outside the verdict schema "
                    f"after {reasks + 1} asks (response_format {result.dialect}): {reason}",
                    raw=self._client.scrub(raw),
                )
            if self._clock() >= deadline:
                raise LLMDeadlineExceeded(f"deadline passed before re-asking model {call.model}: {reason}")
            reasks += 1
            self._count("reasks")
            _log.info("model %s replied outside the schema (%s); asking again", call.model, reason)


def from_settings(settings: JudgeServerSettings) -> LLMJudge:
    """The registry's factory: LLM settings come from ``EVALSTREAM_LLM_*`` (read once, here)."""
    return LLMJudge(LLMJudgeSettings())
