"""Which structured-output dialect an endpoint speaks, found once and remembered.

OpenAI-compatible servers differ in ``response_format``: OpenAI and vLLM take ``json_schema``;
llama.cpp's servers refuse it (llama-cpp-python 0.3.36 answers HTTP 500, "Input should be 'text' or
'json_object'") but take ``{"type": "json_object", "schema": ...}`` and enforce the schema as a
grammar; some take only plain JSON mode; some nothing. A refusal that names ``response_format`` is a
capability answer (``LLMFormatUnsupported``), not an endpoint failure.

With ``EVALSTREAM_LLM_RESPONSE_FORMAT=auto`` (the default) the judge tries the dialects in
``prompts.DIALECTS`` order. Until one has been accepted, one call at a time holds the probe (the
others wait for it within their deadlines), so an endpoint sees one refused request per dialect it
does not speak, not one per call in flight. A fixed setting is used as is; its refusal is an error
that names the setting.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

from .llm_http import LLMDeadlineExceeded
from .prompts import DIALECTS, Dialect

__all__ = ["DialectNegotiator"]

_log = logging.getLogger(__name__.removesuffix("_dialect"))


class DialectNegotiator:
    """The dialect for one endpoint: the setting, or under ``auto`` the first one not refused."""

    def __init__(self, setting: Dialect | str, *, clock: Callable[[], float]) -> None:
        self.auto = setting == "auto"
        self._order: tuple[Dialect, ...] = DIALECTS if self.auto else (setting,)  # type: ignore[assignment]
        self._index = 0
        self._settled = not self.auto
        self._lock = threading.Lock()
        self._probe = threading.Lock()
        self._clock = clock
        self.refused_dialects: list[Dialect] = []

    @property
    def current(self) -> Dialect:
        with self._lock:
            return self._order[self._index]

    @property
    def settled(self) -> bool:
        with self._lock:
            return self._settled

    @contextlib.contextmanager
    def probing(self, deadline: float) -> Iterator[None]:
        """Hold the probe while the dialect is not settled (one call at a time); free once it is."""
        if self.settled:
            yield
            return
        if not self._probe.acquire(timeout=max(0.0, deadline - self._clock())):
            raise LLMDeadlineExceeded("deadline passed waiting for the structured-output probe")
        try:
            yield
        finally:
            self._probe.release()

    def accepted(self, dialect: Dialect) -> None:
        """The endpoint answered a request in ``dialect``: keep it."""
        with self._lock:
            if not self._settled and self._order[self._index] == dialect:
                self._settled = True
                _log.info("endpoint speaks structured-output dialect %s", dialect)

    def refused(self, dialect: Dialect, reason: str) -> Dialect | None:
        """The endpoint refused ``dialect``: the next one to try, or None when none is left (or the
        dialect is fixed by the setting)."""
        with self._lock:
            if self._order[self._index] != dialect:  # another call moved on already
                return self._order[self._index]
            if self._index + 1 >= len(self._order):
                return None
            self.refused_dialects.append(dialect)
            self._index += 1
            nxt = self._order[self._index]
        _log.warning("endpoint refused response_format %s (%s); trying %s", dialect, reason, nxt)
        return nxt
