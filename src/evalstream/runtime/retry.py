"""The one retry policy for every remote call: the pipeline's gRPC judge calls and the LLM judge's HTTP
calls.

One overall deadline per call, retries included; each attempt bounded by ``attempt_timeout_s`` and by
what is left of the deadline; jittered exponential backoff between attempts (tenacity); no attempt is
started when the sleep before it would end past the deadline, and at most ``max_attempts`` (None: as
many as the deadline allows). *What* is retryable belongs to the transport, not to the policy: gRPC
status codes for judge calls (``evalstream.pipeline.judge_client``), HTTP statuses for LLM endpoints
(``evalstream.judges.llm_errors``).

The defaults are the judge call's (``EVALSTREAM_PIPELINE_JUDGE_DEADLINE_S``); the LLM judge builds
its policy from its own settings (``LLMJudgeSettings.retry_policy``): a model answering a batch needs
longer deadlines than a regex.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from tenacity import RetryCallState, stop_after_attempt, stop_never, wait_exponential_jitter
from tenacity.stop import stop_base

__all__ = ["RetryPolicy", "StopBeforeDeadline"]


class StopBeforeDeadline(stop_base):
    """Stop when the next sleep would end past ``deadline`` (a ``clock`` time): no attempt is started
    only to be cut off."""

    def __init__(self, deadline: float, clock: Callable[[], float]) -> None:
        self._deadline = deadline
        self._clock = clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._clock() + retry_state.upcoming_sleep >= self._deadline


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How long a call may take and how it is retried. Tests shrink it."""

    deadline_s: float = 10.0
    attempt_timeout_s: float = 5.0  # capped by what is left of the deadline
    max_attempts: int | None = None  # None: as many as the deadline allows
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    jitter_s: float = 0.05

    def __post_init__(self) -> None:
        if self.deadline_s <= 0 or self.attempt_timeout_s <= 0:
            raise ValueError(
                f"retry policy: deadline_s and attempt_timeout_s must be > 0, got {self.deadline_s} and "
                f"{self.attempt_timeout_s}"
            )
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"retry policy: max_attempts must be >= 1 or None, got {self.max_attempts}")

    def with_deadline(self, seconds: float) -> RetryPolicy:
        """The same policy with another overall deadline; attempts may then take half of it each (a
        slow tier, e.g. an LLM judging a batch of hundreds)."""
        return replace(self, deadline_s=seconds, attempt_timeout_s=max(self.attempt_timeout_s, seconds / 2))

    def wait(self) -> wait_exponential_jitter:
        """Tenacity's wait between attempts."""
        # ``multiplier`` is tenacity 9.2's name for the first backoff (``initial`` is deprecated).
        return wait_exponential_jitter(
            multiplier=self.backoff_initial_s, max=self.backoff_max_s, jitter=self.jitter_s
        )

    def stop(self, deadline: float, clock: Callable[[], float]) -> stop_base:
        """Tenacity's stop condition for a call that must end by ``deadline`` (a ``clock`` time)."""
        attempts = stop_never if self.max_attempts is None else stop_after_attempt(self.max_attempts)
        return attempts | StopBeforeDeadline(deadline, clock)
