"""The LLM judge's HTTP client (``_ChatClient``): the one place that talks to the endpoint. httpx in,
the error tree of ``llm_errors`` out; retries within one deadline (tenacity), the endpoint's circuit
breaker and adaptive concurrency limit, streamed or plain attempts (``llm_stream``), the model list
and API-key scrubbing. ``llm_http`` says how it behaves."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception

from .circuit import endpoint_breaker
from .concurrency import AdaptiveLimit, SlotTimeout
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
    LLMNotAnAPI,
    LLMProtocolError,
    LLMRateLimitError,
    LLMRejectedError,
    LLMServerError,
    LLMStatusError,
    LLMStreamUnsupported,
    LLMTimeoutError,
    _names_response_format,
    _names_stream,
    _retry_after,
)
from .llm_stream import StreamBroken, StreamInterrupted, _Watchdog, reassemble
from .llm_wire import ChatReply, _chat_reply, _safe, _secret_forms

if TYPE_CHECKING:
    from evalstream.runtime.retry import RetryPolicy

    from .llm_http import LLMJudgeSettings

__all__: list[str] = []  # private to the judge: ``llm_http`` is the public face

_log = logging.getLogger(__name__.removesuffix("_client"))  # log under the judge's name (judges.llm)
_MESSAGE_EXCERPT: Final = 300
_BODY_HEAD: Final = 120  # bytes of a non-JSON body quoted in the error


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

        backoff = policy.wait()

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
            stop=policy.stop(deadline, self._clock),
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
            return exc.status in RETRYABLE_STATUS
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
