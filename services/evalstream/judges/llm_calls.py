"""One logical call of the LLM judge: the requests it sends (one per sample when the endpoint ignores
``n``), re-asks for replies outside the verdict schema, the switch from logprobs to sampled agreement
when the endpoint's logprobs are unusable, and the model checks; all within one deadline."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from evalstream.wire.dimensions import Dimension

from .llm_client import _ChatClient
from .llm_dialect import DialectNegotiator
from .llm_errors import (
    LLMClosedError,
    LLMDeadlineExceeded,
    LLMError,
    LLMFormatUnsupported,
    LLMModelMismatch,
    LLMUnparseableReply,
)
from .llm_http import LLMJudgeSettings, RetryPolicy
from .llm_votes import Vote, _vote
from .llm_wire import ChatReply, Choice, model_listed, model_matches
from .prompts import (
    Dialect,
    PromptTemplate,
    ReplySchemaError,
    parse_reply,
    response_format,
    schema_instruction,
)

__all__ = ["CallRunner"]

_log = logging.getLogger(__name__.removesuffix("_calls"))  # log under the judge's name (judges.llm)

#: A chosen token this much (natural log) less likely than a listed alternative, at temperature 0,
#: shows logprobs that are not the distribution the reply was decoded from.
#: A reply that does not fit the verdict schema is asked again this many times.
REASKS: Final = 1
_GREEDY_SLACK: Final = math.log(1.01)


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


class CallRunner:
    """Runs one ``_Call`` to its votes (``run``), remembering per model what the endpoint showed it
    does not do (usable logprobs, ``n``); the judge fans calls out and decides items from the votes."""

    def __init__(
        self,
        settings: LLMJudgeSettings,
        policy: RetryPolicy,
        client: _ChatClient,
        prompts: Mapping[Dimension, PromptTemplate],
        *,
        clock: Callable[[], float],
        closing: threading.Event,
        count: Callable[..., None],  # (key, by=1, cost=0.0): the judge's totals
    ) -> None:
        self._settings = settings
        self._policy = policy
        self._client = client
        self._prompts = prompts
        self._clock = clock
        self._closing = closing
        self._count = count
        self._lock = threading.Lock()
        self._no_logprobs: dict[str, str] = {}  # model -> why its logprobs are not used
        self._ignores_n: set[str] = set()  # models whose endpoint answers one choice whatever ``n``
        self.dialects = DialectNegotiator(settings.response_format, clock=clock)

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
            with self.dialects.probing(deadline):
                dialect = self.dialects.current
                body = self._body(
                    call, messages, n=n, with_logprobs=with_logprobs, dialect=dialect, variant=variant
                )
                try:
                    reply = self._client.complete(
                        body, deadline=deadline, on_retry=lambda: self._count("retries")
                    )
                except LLMFormatUnsupported as exc:
                    self._count("format_refusals")
                    nxt = self.dialects.refused(dialect, str(exc))
                    if nxt is None:
                        setting = "auto" if self.dialects.auto else dialect
                        raise LLMFormatUnsupported(
                            f"{exc}; EVALSTREAM_LLM_RESPONSE_FORMAT={setting} and the endpoint takes no "
                            "structured-output dialect the judge knows: set it to one the endpoint "
                            "accepts, or to auto",
                            status=exc.status,
                        ) from exc
                    continue
                self.dialects.accepted(dialect)
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

    def run(self, call: _Call) -> _CallResult:
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
            if reasks >= REASKS:
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
