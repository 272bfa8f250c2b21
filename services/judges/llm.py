"""Tier 2: LLM judges over any OpenAI-compatible endpoint (vLLM, OpenAI, a gateway, the replay server).

One judgement is one or more chat-completion calls: one per judge model (a PoLL panel when there are
several), and for pairwise one per presentation order (the swap catches position bias). Each call asks
for a JSON verdict (``prompts``), parses it strictly, and is retried within one overall deadline.

Confidence, in order of preference:

1. ``logprobs``: the probability the judge gave the label (the label's tokens, with ``top_logprobs``
   for the alternatives), averaged over calls.
2. agreement: when the endpoint returns no logprobs the judge switches that model to ``n`` samples
   (``fallback_samples``) and counts votes across samples, panel models and orders. The majority
   label wins; its confidence is Laplace's rule of succession, ``(k + 1) / (n + 2)`` for ``k`` of
   ``n`` votes, so disagreement lowers it and one unanimous vote is not certainty. A pairwise A/B split
   is a ``tie``. Other ties go to the lead (first) model's vote.

Errors, translated from httpx at this module's edge (``error_type`` goes into ``ItemOutcome``)::

    LLMError                          error_type          retried
    ├── LLMConnectionError            connection          yes   connect refused, reset, protocol error
    ├── LLMTimeoutError               timeout             yes   an attempt got no answer in time
    ├── LLMProtocolError              bad_reply           yes   200 but not a chat completion (bad JSON)
    ├── LLMStatusError                http_error          by status (RetryPolicy.retryable_status)
    │   ├── LLMRateLimitError         rate_limited        yes   429; honours retry-after
    │   ├── LLMServerError            server_error        yes   5xx
    │   ├── LLMAuthError              auth                no    401, 403
    │   └── LLMRejectedError          rejected            no    other 4xx (unknown model or item, 400)
    ├── LLMUnparseableReply           unparseable_reply   once  content does not fit the verdict schema
    ├── LLMDeadlineExceeded           deadline_exceeded   no    the call's overall deadline passed
    ├── LLMCircuitOpen                circuit_open        no    the endpoint's circuit is open (failing fast)
    └── LLMClosedError                closed              no    the judge is shutting down

Circuit breaker (``circuit.py``): a call whose retries end on a connection error, timeout, 5xx or
non-completion reply counts against the endpoint; after ``breaker_failures`` such calls in a row,
calls (and the retries of calls under way) fail fast as ``circuit_open`` for ``breaker_open_s``,
then one probe attempt decides. Its metrics go on the judge
server's registry (``register_metrics``). An unparseable reply's error carries the raw reply, so
the pipeline's dead letter shows what the model said.

The API key is a ``SecretStr``: it is sent as a bearer token and never logged, put in a message or
shown in a repr. An endpoint may echo it back (in an error body, a malformed reply, a verdict's
rationale), verbatim, percent-encoded or in base64: every exception message, log line, rationale and
outcome this module builds from what an endpoint sent is scrubbed of those forms (``_secret_forms``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal
from urllib.parse import quote, quote_plus

import httpx
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from evalstream.dimensions import Dimension, PairwiseLabel, RefusalLabel, Tier, quality_label

from .base import ItemOutcome, JudgeInput, JudgeOutput
from .circuit import endpoint_breaker, register_breaker_metrics
from .prompts import (
    ParsedVerdict,
    PromptTemplate,
    ReplySchemaError,
    load_prompt,
    parse_reply,
    response_format,
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
    "LLMJudge",
    "LLMJudgeSettings",
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
_MESSAGE_EXCERPT: Final = 300


# --------------------------------------------------------------------------------------------- errors


class LLMError(Exception):
    """A chat-completion call failed; ``error_type`` is the machine-readable reason."""

    error_type: ClassVar[str] = "llm_error"
    retryable: ClassVar[bool] = False
    #: Counts against the endpoint's circuit breaker (the endpoint is unwell, not the request).
    endpoint_failure: ClassVar[bool] = False
    attempts: int = 1  # HTTP attempts made before this error was final


class LLMConnectionError(LLMError):
    error_type = "connection"
    retryable = True
    endpoint_failure = True


class LLMTimeoutError(LLMError):
    error_type = "timeout"
    retryable = True
    endpoint_failure = True


class LLMProtocolError(LLMError):
    error_type = "bad_reply"
    retryable = True
    endpoint_failure = True


class LLMStatusError(LLMError):
    error_type = "http_error"

    def __init__(self, message: str, *, status: int, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class LLMRateLimitError(LLMStatusError):
    error_type = "rate_limited"


class LLMServerError(LLMStatusError):
    error_type = "server_error"
    endpoint_failure = True


class LLMAuthError(LLMStatusError):
    error_type = "auth"


class LLMRejectedError(LLMStatusError):
    error_type = "rejected"


class LLMUnparseableReply(LLMError):
    error_type = "unparseable_reply"

    def __init__(self, message: str, *, raw: str) -> None:
        super().__init__(message)
        self.raw = raw


class LLMDeadlineExceeded(LLMError):
    error_type = "deadline_exceeded"


class LLMCircuitOpen(LLMError):
    error_type = "circuit_open"


class LLMClosedError(LLMError):
    error_type = "closed"


# --------------------------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """One deadline for a call and all its attempts; jittered exponential backoff; stop early when
    the next sleep would pass the deadline. Tests shrink it."""

    deadline_s: float = 60.0
    attempt_timeout_s: float = 30.0  # capped by what is left of the deadline
    max_attempts: int = 5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    retryable_status: frozenset[int] = frozenset({408, 409, 429, 500, 502, 503, 504})
    reasks: int = 1  # a reply that does not fit the schema is asked again this many times


class LLMJudgeSettings(BaseSettings):
    """Explicit argument, then ``EVALSTREAM_LLM_<FIELD>``, then the default (``EVALSTREAM_LLM_API_KEY``,
    ``EVALSTREAM_LLM_BASE_URL``, ...). List fields take JSON in the environment."""

    model_config = SettingsConfigDict(env_prefix="EVALSTREAM_LLM_", frozen=True, extra="ignore")

    #: OpenAI-style base URL, ending in ``/v1``.
    base_url: str = "http://127.0.0.1:8089/v1"
    #: The lead judge model.
    model: str = "gpt-4"
    #: More judge models for a PoLL panel (majority vote with the lead).
    panel: tuple[str, ...] = ()
    api_key: SecretStr | None = None
    #: A file holding the key, used when ``api_key`` is not set.
    api_key_file: Path | None = None
    prompt_version: str = "v1"
    #: Samples per call while the endpoint may give logprobs, and once it has shown it does not.
    samples: int = Field(default=1, ge=1, le=16)
    fallback_samples: int = Field(default=3, ge=1, le=16)
    temperature: float = Field(default=0.0, ge=0, le=2)
    #: Temperature when asking for several samples (identical samples carry no information).
    sample_temperature: float = Field(default=0.7, ge=0, le=2)
    logprobs: bool = True
    top_logprobs: int = Field(default=5, ge=0, le=20)
    max_tokens: int = Field(default=512, ge=16)
    response_format: Literal["json_schema", "json_object", "none"] = "json_schema"
    pairwise_swap: bool = True
    max_concurrency: int = Field(default=8, ge=1)
    deadline_s: float = Field(default=60.0, gt=0)
    attempt_timeout_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    #: USD per 1,000 prompt and completion tokens (same for every panel model).
    price_input_per_1k: float = Field(default=0.0, ge=0)
    price_output_per_1k: float = Field(default=0.0, ge=0)
    #: Extra request headers (a gateway's routing header, the replay server's fault header).
    extra_headers: dict[str, str] = Field(default_factory=dict)
    #: How much of an unparseable reply goes into the outcome's ``extra``.
    raw_reply_chars: int = Field(default=1000, ge=0)
    #: Failed calls (after their retries) in a row that open the endpoint's circuit (0: no breaker).
    breaker_failures: int = Field(default=5, ge=0)
    #: Seconds the circuit stays open before a probe.
    breaker_open_s: float = Field(default=10.0, ge=0)

    @property
    def models(self) -> tuple[str, ...]:
        return (self.model, *(m for m in self.panel if m != self.model))

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            deadline_s=self.deadline_s,
            attempt_timeout_s=self.attempt_timeout_s,
            max_attempts=self.max_attempts,
        )

    def resolve_api_key(self) -> SecretStr | None:
        """The explicit or environment key, else the key file's content."""
        if self.api_key is not None:
            return self.api_key
        if self.api_key_file is None:
            return None
        try:
            text = self.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(
                f"cannot read the LLM API key file {self.api_key_file}: {exc.strerror}"
            ) from None
        if not text:
            raise ValueError(f"the LLM API key file {self.api_key_file} is empty")
        return SecretStr(text)


# --------------------------------------------------------------------------------------------- wire


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()  # alternatives at this position: (token, logprob)


@dataclass(frozen=True, slots=True, kw_only=True)
class Choice:
    content: str | None
    logprobs: tuple[TokenLogprob, ...] | None  # None: the endpoint returned none
    finish_reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatReply:
    choices: tuple[Choice, ...]
    prompt_tokens: int
    completion_tokens: int
    attempts: int


def _parse_logprobs(raw: Any) -> tuple[TokenLogprob, ...] | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("content"), list):
        return None
    out = []
    for t in raw["content"]:
        top = tuple((a["token"], float(a["logprob"])) for a in t.get("top_logprobs") or ())
        out.append(TokenLogprob(t["token"], float(t["logprob"]), top))
    return tuple(out)


def _chat_reply(body: Any, attempts: int, scrub: Callable[[str], str]) -> ChatReply:
    """Unpack a chat-completion body; LLMProtocolError (its message scrubbed) when it is not one."""
    try:
        choices = tuple(
            Choice(
                content=c["message"].get("content"),
                logprobs=_parse_logprobs(c.get("logprobs")),
                finish_reason=c.get("finish_reason") or "",
            )
            for c in body["choices"]
        )
        usage = body.get("usage") or {}
        if not choices:
            raise ValueError("no choices")
        return ChatReply(
            choices=choices,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            attempts=attempts,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LLMProtocolError(
            scrub(f"reply is not a chat completion ({type(exc).__name__}: {exc})")
        ) from None


def _secret_forms(secret: str) -> tuple[str, ...]:
    """The key as an endpoint might echo it: verbatim, percent-encoded, or base64 (standard or URL-safe,
    padded or not, of the key or of its ``Bearer`` header value); longest first."""
    if not secret:
        return ()
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}
    for data in (secret.encode(), f"Bearer {secret}".encode()):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(data).decode()
            forms |= {text, text.rstrip("=")}
    return tuple(sorted(forms, key=len, reverse=True))


class _StopBeforeDeadline(stop_base):
    """Stop when the next sleep would end past the deadline: no attempt is started to be cut off."""

    def __init__(self, deadline: float, clock: Callable[[], float]) -> None:
        self._deadline = deadline
        self._clock = clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._clock() + retry_state.upcoming_sleep >= self._deadline


class _ChatClient:
    """The one place that talks HTTP: httpx in, our exceptions out, retries within a deadline."""

    def __init__(
        self,
        settings: LLMJudgeSettings,
        policy: RetryPolicy,
        *,
        clock: Callable[[], float],
        closing: threading.Event,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        key = settings.resolve_api_key()
        self._secret = key.get_secret_value() if key is not None else ""
        self._secret_forms = _secret_forms(self._secret)
        headers = {**settings.extra_headers}
        if key is not None:
            headers["authorization"] = f"Bearer {self._secret}"
        self._url = settings.base_url.rstrip("/") + "/chat/completions"
        self._where = httpx.URL(self._url).copy_with(userinfo=b"", query=None, fragment=None)  # for messages
        self._policy = policy
        self._clock = clock
        self._closing = closing
        self.breaker = endpoint_breaker(
            str(self._where), failures=settings.breaker_failures, open_s=settings.breaker_open_s, clock=clock
        )
        limits = httpx.Limits(
            max_connections=settings.max_concurrency, max_keepalive_connections=settings.max_concurrency
        )
        self._http = httpx.Client(headers=headers, limits=limits, transport=transport)

    def __repr__(self) -> str:
        return f"_ChatClient(url={str(self._where)!r})"

    @property
    def where(self) -> httpx.URL:
        """The endpoint without credentials or query, for messages."""
        return self._where

    @property
    def has_key(self) -> bool:
        return bool(self._secret)

    def close(self) -> None:
        self._http.close()

    def scrub(self, text: str) -> str:
        """``text`` with every form of the key (``_secret_forms``) replaced by ``***``."""
        for form in self._secret_forms:
            text = text.replace(form, "***")
        return text

    def complete(self, body: dict[str, Any], *, deadline: float, on_retry: Callable[[], None]) -> ChatReply:
        """POST one chat completion, retrying retryable failures until ``deadline`` (clock time)."""
        policy = self._policy
        attempts = 0

        backoff = wait_random_exponential(multiplier=policy.backoff_initial_s, max=policy.backoff_max_s)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            hint = exc.retry_after_s if isinstance(exc, LLMStatusError) else None
            return max(backoff(state), hint or 0.0)

        def sleep(seconds: float) -> None:
            if self._closing.wait(seconds):
                raise LLMClosedError("the judge is closing; retry abandoned")

        def before_sleep(state: RetryCallState) -> None:
            on_retry()
            exc = state.outcome.exception() if state.outcome else None
            _log.info(
                "LLM call to %s (model %s) failed: %s; attempt %d, retrying in %.2fs",
                self._where, body.get("model"), exc, state.attempt_number, state.upcoming_sleep,
            )  # fmt: skip

        retrying = Retrying(
            stop=stop_after_attempt(policy.max_attempts) | _StopBeforeDeadline(deadline, self._clock),
            wait=wait,
            sleep=sleep,
            retry=retry_if_exception(lambda e: isinstance(e, LLMError) and self._retryable(e)),
            before_sleep=before_sleep,
            reraise=True,
        )
        healthy: bool | None = None  # what the last attempt said of the endpoint; None: no attempt
        last_error: LLMError | None = None
        try:
            for attempt in retrying:
                with attempt:
                    left = deadline - self._clock()
                    if left <= 0:
                        if last_error is not None:  # a sleep overran: report what kept failing
                            raise last_error
                        raise LLMDeadlineExceeded(
                            f"deadline passed before attempt {attempts + 1} to {self._where}"
                        )
                    self._admit()
                    attempts += 1
                    cut_short = left < policy.attempt_timeout_s  # the deadline, not the policy, times it
                    try:
                        payload = self._attempt(body, min(policy.attempt_timeout_s, left))
                        reply = _chat_reply(payload, attempts, self.scrub)
                    except LLMTimeoutError as exc:
                        if not cut_short:
                            healthy, last_error = False, exc
                            raise
                        # Ended by the deadline (the call's or the caller's): says nothing new of the
                        # endpoint's health, and the call is over; report what kept failing, if anything.
                        if last_error is not None:
                            raise last_error from exc
                        raise LLMDeadlineExceeded(
                            f"deadline passed during attempt {attempts} to {self._where} "
                            f"(cut to {left:.2f}s): {exc}"
                        ) from exc
                    except LLMError as exc:
                        healthy = not exc.endpoint_failure
                        last_error = exc
                        raise
                    healthy = True
                    return reply
        except LLMError as exc:
            exc.attempts = attempts
            raise
        finally:
            self._report(healthy)
        raise AssertionError("unreachable: tenacity returns or raises")  # pragma: no cover

    def _admit(self) -> None:
        """Raise ``LLMCircuitOpen`` when the endpoint's circuit refuses this attempt."""
        if self.breaker is None or self.breaker.allow():
            return
        snap = self.breaker.snapshot()
        raise LLMCircuitOpen(
            f"circuit open for {self._where} after {snap.consecutive_failures} failed calls in a row; "
            f"failing fast, next probe in {snap.retry_in_s:.1f}s"
        )

    def _report(self, healthy: bool | None) -> None:
        """One call's outcome to the breaker: a call counts as failed when its retries ended on an
        endpoint failure, so per-request blips that a retry cures never open the circuit."""
        if self.breaker is None or healthy is None:
            return
        if healthy:
            self.breaker.record_success()
        else:
            self.breaker.record_failure()

    def _retryable(self, exc: LLMError) -> bool:
        if isinstance(exc, LLMStatusError):
            return exc.status in self._policy.retryable_status
        return exc.retryable

    def _attempt(self, body: dict[str, Any], timeout: float) -> Any:
        model = body.get("model")
        try:
            response = self._http.post(self._url, json=body, timeout=httpx.Timeout(timeout))
        except httpx.TimeoutException as exc:
            raise LLMTimeoutError(f"no answer from {self._where} (model {model}) in {timeout:.2f}s") from exc
        except httpx.TransportError as exc:
            msg = self.scrub(f"{type(exc).__name__}: {exc}")
            raise LLMConnectionError(f"connection to {self._where} (model {model}) failed: {msg}") from exc
        if response.status_code >= 400:
            raise self._status_error(response, model)
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LLMProtocolError(
                f"{self._where} (model {model}) answered 200 with a body that is not JSON: {exc}"
            ) from None

    def _status_error(self, response: httpx.Response, model: Any) -> LLMStatusError:
        status = response.status_code
        detail = response.text[:_MESSAGE_EXCERPT]
        with contextlib.suppress(ValueError, KeyError, TypeError):
            detail = str(response.json()["error"]["message"])[:_MESSAGE_EXCERPT]
        message = self.scrub(f"{self._where} (model {model}) answered HTTP {status}: {detail}")
        cls: type[LLMStatusError]
        if status == 429:
            cls = LLMRateLimitError
        elif status >= 500:
            cls = LLMServerError
        elif status in (401, 403):
            cls = LLMAuthError
            message += "; check EVALSTREAM_LLM_API_KEY or EVALSTREAM_LLM_API_KEY_FILE"
        else:
            cls = LLMRejectedError
        return cls(message, status=status, retry_after_s=_retry_after(response.headers))


def _retry_after(headers: httpx.Headers) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


# --------------------------------------------------------------------------------------------- confidence


def _value_tokens(tokens: Sequence[TokenLogprob], key: str, string: bool) -> tuple[int, int] | None:
    """(index of the first token holding the value of ``key``, char offset of the value in it)."""
    text = "".join(t.token for t in tokens)
    match = re.search(rf'"{re.escape(key)}"\s*:\s*' + ('"' if string else ""), text)
    if match is None:
        return None
    start, pos = match.end(), 0
    for i, t in enumerate(tokens):
        if pos + len(t.token) > start:
            return i, start - pos
        pos += len(t.token)
    return None


def label_probabilities(
    tokens: Sequence[TokenLogprob], key: str, labels: Collection[str]
) -> dict[str, float] | None:
    """P(label) for a JSON string field from token logprobs: the chosen label's tokens give its
    probability; each ``top_logprobs`` alternative that commits to a different label adds
    P(prefix) * P(alternative). None when the field or its tokens are not there."""
    found = _value_tokens(tokens, key, string=True)
    if found is None:
        return None
    first, offset = found
    probs: dict[str, float] = defaultdict(float)
    path, prefix = 0.0, ""
    for i, tok in enumerate(tokens[first:]):
        lead = offset if i == 0 else 0
        for alt, lp in tok.top:
            if alt == tok.token or len(alt) < lead or alt[:lead] != tok.token[:lead]:
                continue
            cand = prefix + alt[lead:]
            hits = [lab for lab in labels if (lab + '"').startswith(cand) or cand.startswith(lab + '"')]
            if len(hits) == 1:
                probs[hits[0]] += math.exp(path + lp)
        path += tok.logprob
        prefix += tok.token[lead:]
        if '"' in prefix:
            break
    value = prefix.split('"', 1)[0]
    if value not in labels:
        return None
    probs[value] += math.exp(path)
    return dict(probs)


def score_probabilities(
    tokens: Sequence[TokenLogprob], key: str, lo: int, hi: int
) -> dict[int, float] | None:
    """P(score) for a JSON integer field from the logprobs of its first token (a two-digit score whose
    first digit is a separate token counts as that digit: an underestimate of 10)."""
    found = _value_tokens(tokens, key, string=False)
    if found is None:
        return None
    first, offset = found
    head = tokens[first]
    digits = head.token[offset:]
    following = "".join(t.token for t in tokens[first + 1 : first + 3])
    chosen_text = re.match(r"\d+", digits + following)
    if chosen_text is None or not lo <= int(chosen_text.group()) <= hi:
        return None
    probs: dict[int, float] = defaultdict(float)
    probs[int(chosen_text.group())] += math.exp(head.logprob)
    for alt, lp in head.top:
        if alt == head.token or alt[:offset] != head.token[:offset]:
            continue
        text = alt[offset:].strip()
        if text.isdigit() and lo <= int(text) <= hi:
            probs[int(text)] += math.exp(lp)
    return dict(probs)


@dataclass(frozen=True, slots=True, kw_only=True)
class Vote:
    """One sampled verdict, in the item's frame (pairwise labels already un-swapped)."""

    model: str
    label: str
    score: float | None = None  # quality only
    probs: Mapping[str, float] | None = None  # label -> probability, from logprobs
    rationale: str = ""
    swapped: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    label: str
    score: float
    confidence: float
    source: Literal["logprobs", "agreement"]
    agreement: str  # "k/n"
    rationale: str


_REFUSING: Final = frozenset({RefusalLabel.FULL_REFUSAL, RefusalLabel.PARTIAL_REFUSAL})


def _score(dimension: Dimension, dist: Mapping[str, float], votes: Sequence[Vote]) -> float:
    total = sum(dist.values()) or 1.0
    if dimension is Dimension.REFUSAL:
        return sum(p for lab, p in dist.items() if lab in _REFUSING) / total
    if dimension is Dimension.PAIRWISE:
        return (dist.get(PairwiseLabel.A, 0.0) + 0.5 * dist.get(PairwiseLabel.TIE, 0.0)) / total
    scores = [v.score for v in votes if v.score is not None]
    return sum(scores) / len(scores) if scores else 0.0


def _majority(dimension: Dimension, votes: Sequence[Vote], weights: Mapping[str, float]) -> str:
    if dimension is Dimension.QUALITY:  # the label of the mean score
        return quality_label(sum(v.score or 0.0 for v in votes) / len(votes))
    top = max(weights.values())
    winners = {lab for lab, w in weights.items() if math.isclose(w, top)}
    if dimension is Dimension.PAIRWISE and {PairwiseLabel.A, PairwiseLabel.B} <= winners:
        return PairwiseLabel.TIE  # the orders or the panel disagree: neither is better
    return next(v.label for v in votes if v.label in winners)  # other ties: the lead model's vote


def combine_votes(dimension: Dimension, votes: Sequence[Vote]) -> Decision:
    """Averaged logprob distributions when every vote has one, else a majority vote (PoLL) with
    confidence ``(k + 1) / (n + 2)``; see the module docstring."""
    if not votes:
        raise ValueError("no votes to combine")
    n = len(votes)
    counts = Counter(v.label for v in votes)
    if all(v.probs for v in votes):
        dist: dict[str, float] = defaultdict(float)
        for v in votes:
            for lab, p in (v.probs or {}).items():
                dist[lab] += p / n
        label = _majority(dimension, votes, dist)
        confidence, source = min(1.0, dist.get(label, 0.0)), "logprobs"
        weights: Mapping[str, float] = dist
    else:
        weights = {lab: c / n for lab, c in counts.items()}
        label = _majority(dimension, votes, weights)
        confidence, source = (counts.get(label, 0) + 1) / (n + 2), "agreement"
    return Decision(
        label=label,
        score=_score(dimension, weights, votes),
        confidence=confidence,
        source=source,  # type: ignore[arg-type]
        agreement=f"{counts.get(label, 0)}/{n}",
        rationale=next((v.rationale for v in votes if v.label == label), ""),
    )


def _swap(label: str) -> str:
    return {PairwiseLabel.A: PairwiseLabel.B, PairwiseLabel.B: PairwiseLabel.A}.get(
        PairwiseLabel(label), label
    )


def _vote(dimension: Dimension, model: str, swapped: bool, parsed: ParsedVerdict, choice: Choice) -> Vote:
    probs: dict[str, float] | None = None
    if choice.logprobs:
        if dimension is Dimension.QUALITY:
            scores = score_probabilities(choice.logprobs, "score", 1, 10)
            if scores:
                total = sum(scores.values())
                folded: dict[str, float] = defaultdict(float)
                for s, p in scores.items():
                    folded[quality_label(s)] += p
                probs = dict(folded)
                parsed = ParsedVerdict(
                    label=parsed.label,
                    score=sum(s * p for s, p in scores.items()) / total,
                    rationale=parsed.rationale,
                )
        else:
            labels = [
                str(lab) for lab in (PairwiseLabel if dimension is Dimension.PAIRWISE else RefusalLabel)
            ]
            probs = label_probabilities(choice.logprobs, "label", labels)
    label = parsed.label
    if swapped:
        label = _swap(label)
        probs = {_swap(lab): p for lab, p in probs.items()} if probs else probs
    return Vote(
        model=model, label=label, score=parsed.score, probs=probs, rationale=parsed.rationale, swapped=swapped
    )


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
        self._no_logprobs: set[str] = set()  # models whose replies came without logprobs
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
        """The endpoint's circuit-breaker metrics, on the judge server's registry."""
        if self._client.breaker is not None:
            register_breaker_metrics(registry, self.name, [(str(self._client.where), self._client.breaker)])

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
        failures: dict[int, list[tuple[Dimension, LLMError]]] = defaultdict(list)
        extras: dict[int, dict[str, str]] = defaultdict(dict)
        for j, (i, dim, _) in enumerate(jobs):
            output, failure, extra = self._decide(dim, by_job[j])
            extras[i].update(extra)
            if output is not None:
                judgements[i].append(output)
            if failure is not None:
                failures[i].append((dim, failure))
        outcomes = []
        for i, item_id in enumerate(item_ids):
            extra = extras.get(i, {})
            if failures.get(i) and not judgements.get(i):
                dim, exc = failures[i][0]
                raw = ""
                if isinstance(exc, LLMUnparseableReply):  # what the model said, for the dead letter
                    raw = f"; raw reply: {exc.raw[: self._settings.raw_reply_chars // 5]!r}"
                outcomes.append(
                    ItemOutcome(
                        item_id=item_id,
                        error=self._client.scrub(f"{dim}: {exc} (after {exc.attempts} attempts){raw}"),
                        error_type=exc.error_type,
                        extra=extra,
                    )
                )
            else:
                outcomes.append(
                    ItemOutcome(item_id=item_id, judgements=tuple(judgements.get(i, ())), extra=extra)
                )
        return outcomes

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
        if not votes:
            return None, errors[0][1] if errors else LLMError("no votes"), extra
        decision = combine_votes(dim, votes)
        extra[f"{dim}.confidence_source"] = decision.source
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
        self, call: _Call, messages: list[dict[str, str]], n: int, with_logprobs: bool
    ) -> dict[str, Any]:
        s = self._settings
        body: dict[str, Any] = {
            "model": call.model,
            "messages": messages,
            "n": n,
            "temperature": s.temperature if n == 1 else s.sample_temperature,
            "max_tokens": s.max_tokens,
        }
        if with_logprobs:
            body["logprobs"] = True
            if s.top_logprobs:
                body["top_logprobs"] = s.top_logprobs
        if (fmt := response_format(call.dimension, s.response_format)) is not None:
            body["response_format"] = fmt
        return body

    def _call(self, call: _Call) -> _CallResult:
        """One logical call: transport retries inside ``complete``, one re-ask for an unparseable
        reply, one re-ask with more samples when the endpoint turns out to give no logprobs; all
        within one deadline."""
        s = self._settings
        if self._closing.is_set():
            raise LLMClosedError("the judge is closing; call not started")
        deadline = self._clock() + self._policy.deadline_s
        if call.budget_end is not None:
            deadline = min(deadline, call.budget_end)
            if deadline <= self._clock():
                raise LLMDeadlineExceeded("the request's time ran out before this call could start")
        result = _CallResult(votes=[])
        reasks = 0
        messages = self._messages(call)  # one rendering (one nonce): a re-ask repeats the same prompt
        while True:
            with self._lock:
                known_without = call.model in self._no_logprobs
            want_logprobs = s.logprobs and not known_without
            n = s.samples if want_logprobs else max(s.samples, s.fallback_samples)
            reply = self._client.complete(
                self._body(call, messages, n, want_logprobs),
                deadline=deadline,
                on_retry=lambda: self._count("retries"),
            )
            cost = (
                reply.prompt_tokens / 1000 * s.price_input_per_1k
                + reply.completion_tokens / 1000 * s.price_output_per_1k
            )
            self._count("calls")
            self._count("attempts", reply.attempts)
            self._count("input_tokens", reply.prompt_tokens)
            self._count("output_tokens", reply.completion_tokens, cost)
            result.prompt_tokens += reply.prompt_tokens
            result.completion_tokens += reply.completion_tokens
            if want_logprobs and all(c.logprobs is None for c in reply.choices):
                with self._lock:
                    self._no_logprobs.add(call.model)
                if n < s.fallback_samples:
                    _log.info(
                        "model %s gives no logprobs: asking for %d samples", call.model, s.fallback_samples
                    )
                    continue
            votes, problems = [], []
            for choice in reply.choices:
                try:
                    parsed = parse_reply(call.dimension, choice.content)
                except ReplySchemaError as bad:
                    problems.append((bad, choice.content or ""))
                    continue
                votes.append(_vote(call.dimension, call.model, call.swapped, parsed, choice))
            if votes:
                result.votes = votes
                return result
            first, raw = problems[0]
            problem = self._client.scrub(str(first))  # the reply's own text, which may echo the key
            if reasks >= self._policy.reasks:
                raise LLMUnparseableReply(
                    f"model {call.model} replied {len(problems)}x outside the verdict schema "
                    f"after {reasks + 1} asks: {problem}",
                    raw=self._client.scrub(raw),
                )
            if self._clock() >= deadline:
                raise LLMDeadlineExceeded(f"deadline passed before re-asking model {call.model}: {problem}")
            reasks += 1
            self._count("reasks")
            _log.info("model %s replied outside the schema (%s); asking again", call.model, problem)


def from_settings(settings: JudgeServerSettings) -> LLMJudge:
    """The registry's factory: LLM settings come from ``EVALSTREAM_LLM_*`` (read once, here)."""
    return LLMJudge(LLMJudgeSettings())
