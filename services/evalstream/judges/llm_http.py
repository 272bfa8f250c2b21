"""The LLM judge's HTTP edge: one chat-completion client over any OpenAI-compatible endpoint, its
settings, retry policy, wire types and errors.

Errors, translated from httpx at this module's edge (``error_type`` goes into ``ItemOutcome``)::

    LLMError                          error_type          retried
    ├── LLMConnectionError            connection          yes   connect refused, reset, protocol error
    ├── LLMTimeoutError               timeout             yes   an attempt got no answer in time
    ├── LLMProtocolError              bad_reply           yes   200 but not a chat completion (bad JSON)
    │   ├── LLMInterrupted            interrupted         yes   a streamed reply the server cut short;
    │   │                                                       counted as overload, not by the breaker
    │   └── LLMNotAnAPI               not_an_api          no    a body that is not JSON by its content
    │                                                           type (an HTML page): a wrong base URL
    ├── LLMStatusError                http_error          by status (RetryPolicy.retryable_status)
    │   ├── LLMRateLimitError         rate_limited        yes   429; honours retry-after
    │   ├── LLMServerError            server_error        yes   5xx
    │   ├── LLMAuthError              auth                no    401, 403
    │   ├── LLMFormatUnsupported      format_unsupported  no    4xx/5xx naming response_format: a
    │   │                                                       capability answer, not a failure
    │   ├── LLMStreamUnsupported      stream_unsupported  no    4xx naming stream (under stream=auto
    │   │                                                       the judge asks again, not streaming)
    │   └── LLMRejectedError          rejected            no    other 4xx (unknown model or item, 400)
    ├── LLMModelMismatch              model_mismatch      no    the endpoint does not serve the model
    │                                                           configured, or answered with another
    ├── LLMUnparseableReply           unparseable_reply   once  content does not fit the verdict schema
    ├── LLMDeadlineExceeded           deadline_exceeded   no    the call's overall deadline passed
    ├── LLMCircuitOpen                circuit_open        no    the endpoint's circuit is open (failing fast)
    └── LLMClosedError                closed              no    the judge is shutting down

Streaming (``llm_stream.py``, setting ``stream``): a call is streamed so that an attempt the judge
gives up on is closed on the server too. At the attempt's end (its timeout, or what is left of the
call's or the request's deadline) a watchdog shuts the connection's socket down, whatever the read
is waiting for; a server that watches for disconnects (llama-cpp-python between tokens, vLLM) stops
generating and frees its slot. A plain request that times out is closed as well, but
llama-cpp-python's server generates it to the end regardless.

Circuit breaker (``circuit.py``): a call whose retries end on a connection error, timeout, 5xx or
non-completion reply counts against the endpoint (a capability answer, ``format_unsupported``,
counts neither way); after ``breaker_failures`` such calls in a row,
calls (and the retries of calls under way) fail fast as ``circuit_open`` for ``breaker_open_s``,
then one probe attempt decides. Its metrics go on the judge server's registry
(``LLMJudge.register_metrics``). An unparseable reply's error carries the raw reply, so the
pipeline's dead letter shows what the model said.

The API key is a ``SecretStr``: it is sent as a bearer token and never logged, put in a message or
shown in a repr. An endpoint may echo it back (in an error body, a malformed reply, a verdict's
rationale), verbatim, percent-encoded or in base64: every exception message, log line, rationale and
outcome the judge builds from what an endpoint sent is scrubbed of those forms (``_secret_forms``,
applied by ``_ChatClient.scrub``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final, Literal
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

from .circuit import endpoint_breaker
from .concurrency import AdaptiveLimit, SlotTimeout
from .llm_stream import StreamBroken, StreamInterrupted, reassemble

__all__ = [
    "ChatReply",
    "Choice",
    "LLMAuthError",
    "LLMCircuitOpen",
    "LLMClosedError",
    "LLMConnectionError",
    "LLMDeadlineExceeded",
    "LLMError",
    "LLMFormatUnsupported",
    "LLMInterrupted",
    "LLMJudgeSettings",
    "LLMModelMismatch",
    "LLMNotAnAPI",
    "LLMProtocolError",
    "LLMRateLimitError",
    "LLMRejectedError",
    "LLMServerError",
    "LLMStatusError",
    "LLMStreamUnsupported",
    "LLMTimeoutError",
    "LLMUnparseableReply",
    "RetryPolicy",
    "TokenLogprob",
    "model_listed",
    "model_matches",
]

_log = logging.getLogger(__name__.removesuffix("_http"))  # log under the judge's name (judges.llm)

_MESSAGE_EXCERPT: Final = 300
_BODY_HEAD: Final = 120  # bytes of a non-JSON body quoted in the error


# --------------------------------------------------------------------------------------------- errors


class LLMError(Exception):
    """A chat-completion call failed; ``error_type`` is the machine-readable reason."""

    error_type: ClassVar[str] = "llm_error"
    retryable: ClassVar[bool] = False
    endpoint_failure: ClassVar[bool] = False
    """Counts against the endpoint's circuit breaker (the endpoint is unwell, not the request)."""
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


class LLMInterrupted(LLMProtocolError):
    """A streamed reply ended (``[DONE]``) before every choice had finished: the server cut it short
    for another request (llama-cpp-python's ``interrupt_requests``). Retried; it tells the adaptive
    limit that the endpoint takes fewer calls at once, and says nothing of its health."""

    error_type = "interrupted"
    endpoint_failure = False


class LLMNotAnAPI(LLMProtocolError):
    """The endpoint answered with a body whose content type is not JSON (a login page, a proxy's
    error page): asking again gets the same page."""

    error_type = "not_an_api"
    retryable = False


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


class LLMFormatUnsupported(LLMStatusError):
    """The endpoint refused the request's ``response_format``: it says what the endpoint can do, not
    that it is unwell. Never retried as is, never counted by the breaker; under
    ``response_format=auto`` the judge asks again in the next dialect."""

    error_type = "format_unsupported"


class LLMStreamUnsupported(LLMStatusError):
    """The endpoint refused a streamed request (a 4xx naming ``stream``): a capability answer."""

    error_type = "stream_unsupported"


class LLMModelMismatch(LLMError):
    """The endpoint does not serve the configured model, or answered with another one."""

    error_type = "model_mismatch"


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

    model_config = SettingsConfigDict(
        env_prefix="EVALSTREAM_LLM_", frozen=True, extra="ignore", use_attribute_docstrings=True
    )

    base_url: str = "http://127.0.0.1:8089/v1"
    """OpenAI-style base URL, ending in ``/v1``."""
    model: str = "gpt-4"
    """The lead judge model."""
    panel: tuple[str, ...] = ()
    """More judge models for a PoLL panel (majority vote with the lead)."""
    api_key: SecretStr | None = None
    """The endpoint's API key (never logged)."""
    api_key_file: Path | None = None
    """A file holding the key, used when ``api_key`` is not set."""
    prompt_version: str = "v1"
    """Version of the judge prompts (``prompts/<dimension>.<version>.yaml``); part of the judge's name."""
    samples: int = Field(default=1, ge=1, le=16)
    """Samples per call while the endpoint may give logprobs."""
    fallback_samples: int = Field(default=3, ge=1, le=16)
    """Samples per call once the endpoint has shown it gives no logprobs."""
    temperature: float = Field(default=0.0, ge=0, le=2)
    """Sampling temperature of a single-sample call."""
    sample_temperature: float = Field(default=0.7, ge=0, le=2)
    """Temperature when asking for several samples (identical samples carry no information)."""
    logprobs: bool = True
    """Ask for token logprobs (the verdict's confidence) while the endpoint gives them."""
    top_logprobs: int = Field(default=5, ge=0, le=20)
    """Alternatives per token in the logprobs."""
    max_tokens: int = Field(default=512, ge=16)
    """Most tokens in a reply."""
    response_format: Literal["auto", "json_schema", "json_object_schema", "json_object", "none"] = "auto"
    """Structured-output dialect (``EVALSTREAM_LLM_RESPONSE_FORMAT``): ``json_schema`` (OpenAI's
    ``{"type": "json_schema", ...}``), ``json_object_schema`` (llama.cpp's ``{"type": "json_object",
    "schema": ...}``, a grammar), ``json_object`` (JSON mode: any object), ``none`` (no
    ``response_format``; the schema goes in the prompt), or ``auto``: try them in that order, once
    per endpoint, and keep the first the endpoint does not refuse."""
    stream: Literal["auto", "on", "off"] = "auto"
    """Stream completions (``stream: true``) so that an attempt the judge gives up on is closed and
    the server stops generating it (llama-cpp-python stops a streamed reply between tokens, but
    generates a plain one to the end for nobody): ``auto`` streams and, when the endpoint refuses
    streaming (a 4xx naming ``stream``), asks again without it and keeps to plain requests; ``on``
    streams (a refusal is an error); ``off`` never streams."""
    check_model: bool = True
    """Check the model: at the first call, that ``GET /v1/models`` lists it (when the endpoint has
    that route); on every reply, that the reply names it (or a dated version or alias of it)."""
    pairwise_swap: bool = True
    """Pairwise comparisons are asked in both orders (position bias)."""
    max_concurrency: int = Field(default=8, ge=1)
    """Calls in flight to the endpoint: adaptive, from ``min_concurrency`` up to ``max_concurrency``
    while latency holds, halved on a timeout or 429 (``concurrency.py``)."""
    min_concurrency: int = Field(default=1, ge=1)
    """Calls in flight to start with (the adaptive limit's floor)."""
    deadline_s: float = Field(default=60.0, gt=0)
    """One overall deadline per call, retries included."""
    attempt_timeout_s: float = Field(default=30.0, gt=0)
    """Timeout of one attempt (capped by what is left of the deadline)."""
    max_attempts: int = Field(default=5, ge=1)
    """Most attempts per call."""
    price_input_per_1k: float = Field(default=0.0, ge=0)
    """USD per 1,000 prompt tokens (same for every panel model)."""
    price_output_per_1k: float = Field(default=0.0, ge=0)
    """USD per 1,000 completion tokens."""
    extra_headers: dict[str, str] = Field(default_factory=dict)
    """Extra request headers (a gateway's routing header, the replay server's fault header)."""
    raw_reply_chars: int = Field(default=1000, ge=0)
    """How much of an unparseable reply goes into the outcome's ``extra``."""
    breaker_failures: int = Field(default=5, ge=0)
    """Failed calls (after their retries) in a row that open the endpoint's circuit (0: no breaker)."""
    breaker_open_s: float = Field(default=10.0, ge=0)
    """Seconds the circuit stays open before a probe."""

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
    model: str = ""  # the model the reply says answered ("" when it does not say)


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
            model=str(body.get("model") or ""),
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
        self.limit = AdaptiveLimit(
            low=min(settings.min_concurrency, settings.max_concurrency),
            high=settings.max_concurrency,
            clock=clock,
        )
        self._base = settings.base_url.rstrip("/")
        self._stream_mode = settings.stream
        self._streaming = settings.stream != "off"  # under auto: until the endpoint refuses it
        self._models_lock = threading.Lock()
        self._served: dict[str, tuple[str, ...]] | None = None  # id -> aliases, from GET /models
        self._models_checked = False
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

    def served_models(self, timeout: float) -> dict[str, tuple[str, ...]] | None:
        """What ``GET {base_url}/models`` lists (model id -> aliases), asked once and remembered. None
        when the endpoint has no such route or no usable list, or did not answer within ``timeout``
        seconds (not remembered: the next call asks again; a one-slot server answers it only between
        completions). Calls wait for the first asker's answer, within the same ``timeout``."""
        if not self._models_lock.acquire(timeout=max(0.0, timeout)):
            return None
        try:
            if self._models_checked:
                return self._served
            url = self._base + "/models"
            try:
                response = self._http.get(url, timeout=httpx.Timeout(max(timeout, 0.001)))
            except httpx.HTTPError as exc:
                _log.info("GET %s failed (%s); will ask again", _safe(url), type(exc).__name__)
                return None
            self._models_checked = True
            if response.status_code != 200:
                _log.info("GET %s answered HTTP %d: model names are not checked against a list",
                          _safe(url), response.status_code)  # fmt: skip
                return None
            try:
                self._served = {
                    str(m["id"]): tuple(str(a) for a in m.get("aliases") or ())
                    for m in response.json()["data"]
                }
            except (ValueError, KeyError, TypeError, AttributeError):
                _log.info("GET %s is not an OpenAI model list: model names are not checked", _safe(url))
            return self._served
        finally:
            self._models_lock.release()

    def models_known(self) -> dict[str, tuple[str, ...]] | None:
        """The remembered model list, without asking."""
        return self._served

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
                    try:
                        slot = self.limit.acquire(deadline, self._closing)  # a concurrency slot
                    except SlotTimeout as exc:
                        if self._closing.is_set():
                            raise LLMClosedError("the judge is closing; call not sent") from exc
                        if last_error is not None:
                            raise last_error from exc
                        raise LLMDeadlineExceeded(
                            f"deadline passed waiting to call {self._where}: {exc}"
                        ) from exc
                    try:
                        self._admit()
                        left = deadline - self._clock()
                        attempts += 1
                        cut_short = left < policy.attempt_timeout_s  # the deadline, not the policy, times it
                        started = self._clock()
                        try:
                            payload = self._attempt(body, max(0.001, min(policy.attempt_timeout_s, left)))
                            reply = _chat_reply(payload, attempts, self.scrub)
                        except LLMTimeoutError as exc:
                            if not cut_short:
                                slot.overloaded()
                                healthy, last_error = False, exc
                                raise
                            # Ended by the deadline (the call's or the caller's): says nothing new of the
                            # endpoint's health, and the call is over; report what kept failing, if any.
                            if last_error is not None:
                                raise last_error from exc
                            raise LLMDeadlineExceeded(
                                f"deadline passed during attempt {attempts} to {self._where} "
                                f"(cut to {left:.2f}s): {exc}"
                            ) from exc
                        except LLMFormatUnsupported:
                            healthy = None  # a capability answer: the breaker counts neither way
                            raise
                        except LLMError as exc:
                            if isinstance(exc, LLMRateLimitError | LLMInterrupted):
                                slot.overloaded()
                            healthy = not exc.endpoint_failure
                            last_error = exc
                            raise
                        slot.done(latency_s=self._clock() - started)
                        healthy = True
                        return reply
                    finally:
                        slot.done()
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
        if isinstance(exc, LLMFormatUnsupported):
            return False
        if isinstance(exc, LLMStatusError):
            return exc.status in self._policy.retryable_status
        return exc.retryable

    @property
    def streaming(self) -> bool:
        """Whether calls are streamed now (under ``stream=auto``: until the endpoint refused it)."""
        return self._streaming

    def _attempt(self, body: dict[str, Any], timeout: float) -> Any:
        """One HTTP attempt, at most ``timeout`` seconds; the reply's JSON body (reassembled when
        streamed). Under ``stream=auto`` a refusal to stream is answered within the attempt by
        asking again without streaming, once for the endpoint."""
        end = self._clock() + timeout
        if self._streaming:
            try:
                return self._send(body, end, stream=True)
            except LLMStreamUnsupported as exc:
                if self._stream_mode != "auto":
                    raise LLMStreamUnsupported(
                        f"{exc}; EVALSTREAM_LLM_STREAM=on and the endpoint does not stream: set it to "
                        "auto or off",
                        status=exc.status,
                    ) from exc
                if self._streaming:
                    self._streaming = False
                    _log.warning(
                        "%s refused a streamed request (%s): plain requests from now on; a call the "
                        "judge gives up on may go on generating there", self._where, exc,
                    )  # fmt: skip
        return self._send(body, end, stream=False)

    def _send(self, body: dict[str, Any], end: float, *, stream: bool) -> Any:
        model = body.get("model")
        timeout = max(0.001, end - self._clock())
        if stream:
            body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        watchdog: _Watchdog | None = None
        try:
            with self._http.stream("POST", self._url, json=body, timeout=httpx.Timeout(timeout)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._status_error(
                        response, model, asked_format="response_format" in body, asked_stream=stream
                    )
                if stream and response.headers.get("content-type", "").startswith("text/event-stream"):
                    watchdog = _Watchdog(response, end - self._clock())
                    try:
                        return reassemble(response.iter_lines())
                    except StreamInterrupted as exc:
                        if watchdog.fired:
                            raise httpx.ReadTimeout("the attempt's time ran out") from exc
                        raise LLMInterrupted(f"{self._where} (model {model}): {exc}") from None
                    except StreamBroken as exc:
                        if watchdog.fired:
                            raise httpx.ReadTimeout("the attempt's time ran out") from exc
                        raise LLMProtocolError(self.scrub(f"{self._where} (model {model}): {exc}")) from None
                    finally:
                        watchdog.stop()
                response.read()  # a plain reply (also to a streamed request from a server that does not)
        except httpx.TimeoutException as exc:
            raise LLMTimeoutError(self._timed_out(model, timeout, watchdog)) from exc
        except httpx.TransportError as exc:
            if watchdog is not None and watchdog.fired:
                raise LLMTimeoutError(self._timed_out(model, timeout, watchdog)) from exc
            msg = self.scrub(f"{type(exc).__name__}: {exc}")
            raise LLMConnectionError(f"connection to {self._where} (model {model}) failed: {msg}") from exc
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            kind = response.headers.get("content-type", "(none)")
            head = self.scrub(response.content[:_BODY_HEAD].decode("utf-8", errors="replace"))
            cls = LLMProtocolError if "json" in kind or kind == "(none)" else LLMNotAnAPI
            raise cls(
                f"{self._where} (model {model}) answered {response.status_code} with a body that is not "
                f"JSON ({exc}); content-type {kind}, {len(response.content)} bytes, starting {head!r}; "
                "is EVALSTREAM_LLM_BASE_URL the API's base URL (ending in /v1), not a web page or proxy?"
            ) from None

    def _timed_out(self, model: Any, timeout: float, watchdog: _Watchdog | None) -> str:
        if watchdog is not None and watchdog.fired:
            _log.info("closed the stream from %s (model %s) at the attempt's end", self._where, model)
            return (
                f"no complete answer from {self._where} (model {model}) in {timeout:.2f}s; the stream "
                "was closed, so the server can stop generating"
            )
        return f"no answer from {self._where} (model {model}) in {timeout:.2f}s"

    def _status_error(
        self, response: httpx.Response, model: Any, *, asked_format: bool, asked_stream: bool = False
    ) -> LLMStatusError:
        status = response.status_code
        detail = response.text[:_MESSAGE_EXCERPT]
        with contextlib.suppress(ValueError, KeyError, TypeError):
            detail = str(response.json()["error"]["message"])[:_MESSAGE_EXCERPT]
        message = self.scrub(f"{self._where} (model {model}) answered HTTP {status}: {detail}")
        cls: type[LLMStatusError]
        if asked_format and status not in (401, 403, 429) and _names_response_format(response.text):
            cls = LLMFormatUnsupported
        elif (
            asked_stream
            and (400 <= status < 500 or status == 501)
            and status not in (401, 403, 404, 408, 409, 429)
            and _names_stream(response.text)
        ):
            cls = LLMStreamUnsupported
        elif status == 429:
            cls = LLMRateLimitError
        elif status >= 500:
            cls = LLMServerError
        elif status in (401, 403):
            cls = LLMAuthError
            message += "; check EVALSTREAM_LLM_API_KEY or EVALSTREAM_LLM_API_KEY_FILE"
        else:
            cls = LLMRejectedError
        return cls(message, status=status, retry_after_s=_retry_after(response.headers))


def _safe(url: str) -> str:
    """A URL without credentials or query, for messages."""
    return str(httpx.URL(url).copy_with(userinfo=b"", query=None, fragment=None))


def _names_response_format(text: str) -> bool:
    """Whether an error body is about the request's ``response_format`` (a capability answer)."""
    return "response_format" in text or "json_schema" in text


def _names_stream(text: str) -> bool:
    """Whether an error body is about streaming (``stream``, ``stream_options``; not ``upstream``)."""
    return re.search(r"\bstream(_options)?\b", text, re.IGNORECASE) is not None


class _Watchdog:
    """Shuts the response's socket down after ``seconds`` unless stopped first: a read waiting for
    the next streamed line (a server still evaluating the prompt sends nothing) then ends at once,
    and the server sees the connection close. Without access to the socket (another transport) the
    attempt ends at the read timeout instead."""

    def __init__(self, response: httpx.Response, seconds: float) -> None:
        self.fired = False
        self._stopped = threading.Event()
        stream = response.extensions.get("network_stream")
        self._socket: socket.socket | None = stream.get_extra_info("socket") if stream is not None else None
        self._thread: threading.Thread | None = None
        if isinstance(self._socket, socket.socket):
            self._thread = threading.Thread(
                target=self._run, args=(max(0.0, seconds),), name="llm-stream-watchdog", daemon=True
            )
            self._thread.start()

    def _run(self, seconds: float) -> None:
        if self._stopped.wait(seconds) or self._socket is None:
            return
        self.fired = True
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stopped.set()


def _retry_after(headers: httpx.Headers) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


def model_listed(model: str, served: dict[str, tuple[str, ...]]) -> bool:
    """Whether ``model`` is one of the listed ids or their aliases (case-insensitive)."""
    names = {n.lower() for ident, aliases in served.items() for n in (ident, *aliases)}
    return model.lower() in names


def model_matches(requested: str, answered: str, served: dict[str, tuple[str, ...]] | None) -> bool:
    """Whether a reply that names ``answered`` comes from the model ``requested``: the same name, a
    dated version of it (``gpt-4o`` -> ``gpt-4o-2024-08-06``), or a listed id with it as an alias.
    A reply that names no model passes (nothing to check)."""
    if not answered or answered.lower() == requested.lower():
        return True
    if answered.lower().startswith(requested.lower() + "-"):
        return True
    return served is not None and requested.lower() in {a.lower() for a in served.get(answered, ())}
