"""The LLM judge's errors: what a chat-completion call can end in, each with its machine-readable
``error_type`` (it goes into ``ItemOutcome`` and the dimension errors), whether it is retried and
whether it counts against the endpoint's circuit breaker (the tree is in ``llm_http``)."""

from __future__ import annotations

import re
from typing import ClassVar, Final

import httpx

#: HTTP statuses an attempt is retried on; other statuses are answers (``llm_http``'s error tree).
RETRYABLE_STATUS: Final = frozenset({408, 409, 429, 500, 502, 503, 504})


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


def _names_response_format(text: str) -> bool:
    """Whether an error body is about the request's ``response_format`` (a capability answer)."""
    return "response_format" in text or "json_schema" in text


def _names_stream(text: str) -> bool:
    """Whether an error body is about streaming (``stream``, ``stream_options``; not ``upstream``)."""
    return re.search(r"\bstream(_options)?\b", text, re.IGNORECASE) is not None


def _retry_after(headers: httpx.Headers) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None
