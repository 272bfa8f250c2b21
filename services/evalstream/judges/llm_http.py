"""The LLM judge's HTTP edge: its settings and retry policy, and how its client behaves towards an
OpenAI-compatible endpoint. The parts, by job: ``llm_client`` (the client, ``_ChatClient``: the one
place that talks HTTP), ``llm_errors`` (the error tree below), ``llm_wire`` (a chat completion as the
judge reads it; model-name matching; the key's echo forms), ``llm_stream`` (streamed replies and the
attempt watchdog). The errors and wire types are re-exported here.

Errors, translated from httpx at the client's edge (``error_type`` goes into ``ItemOutcome``)::

    LLMError                          error_type          retried
    ├── LLMConnectionError            connection          yes   connect refused, reset, protocol error
    ├── LLMTimeoutError               timeout             yes   an attempt got no answer in time
    ├── LLMProtocolError              bad_reply           yes   200 but not a chat completion (bad JSON)
    │   ├── LLMInterrupted            interrupted         yes   a streamed reply the server cut short;
    │   │                                                       counted as overload, not by the breaker
    │   └── LLMNotAnAPI               not_an_api          no    a body that is not JSON by its content
    │                                                           type (an HTML page): a wrong base URL
    ├── LLMStatusError                http_error          by status (RETRYABLE_STATUS)
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

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from evalstream.runtime.retry import RetryPolicy

from .llm_errors import (
    RETRYABLE_STATUS,
    LLMAuthError,
    LLMCircuitOpen,
    LLMClosedError,
    LLMConnectionError,
    LLMDeadlineExceeded,
    LLMError,
    LLMFormatUnsupported,
    LLMInterrupted,
    LLMModelMismatch,
    LLMNotAnAPI,
    LLMProtocolError,
    LLMRateLimitError,
    LLMRejectedError,
    LLMServerError,
    LLMStatusError,
    LLMStreamUnsupported,
    LLMTimeoutError,
    LLMUnparseableReply,
)
from .llm_wire import ChatReply, Choice, TokenLogprob, model_listed, model_matches

__all__ = [
    "RETRYABLE_STATUS",
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


# --------------------------------------------------------------------------------------------- config


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
        """The one retry policy type (``evalstream.runtime.retry``), with this endpoint's deadlines
        and a backoff for a model server: 0.25 s doubling up to 8 s, plus up to 0.25 s of jitter (on
        average what the judge's former full-jitter backoff of 0.5 s doubling slept, never longer at
        any attempt, so the retries a deadline allowed before still fit)."""
        return RetryPolicy(
            deadline_s=self.deadline_s,
            attempt_timeout_s=self.attempt_timeout_s,
            max_attempts=self.max_attempts,
            backoff_initial_s=0.25,
            backoff_max_s=8.0,
            jitter_s=0.25,
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
