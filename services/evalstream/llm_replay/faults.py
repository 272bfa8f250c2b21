"""Fault injection for the replay server: what to break, how often, and counters of what was broken.

A fault spec is a comma-separated list of rules, each ``KIND``, ``KIND:N`` or ``KIND~P``:

- ``KIND`` applies to every request;
- ``KIND:N`` applies to the first N requests with the same body (a client's retries send the same
  body, so ``503:2`` fails two attempts and lets the third through; ``seed`` and ``temperature``
  do not count, so a re-ask, which varies them, is the same request); rules are consumed in order,
  so ``503:1,schema:1`` answers 503, then a schema-breaking reply, then the recorded verdict;
- ``KIND~P`` applies with probability P (seeded).

Kinds: ``500``, ``502``, ``503`` (server errors), ``429`` (rate limited, with ``retry-after``),
``hang`` (no answer until the hang time passes, then the connection closes), ``reset`` (TCP reset, no
answer), ``malformed`` (200 with a truncated JSON body), ``envelope`` (200 JSON without ``choices``),
``schema`` (200, a well-formed completion whose content does not fit the verdict schema), ``slow``
(the real answer after the slow delay), ``split_logprobs`` (the recorded verdict with token logprobs
in which the chosen label is less likely than another, as llama.cpp's server reports them under a
grammar), ``html`` (200 with an HTML page, as a login wall or a misrouted gateway answers),
``interrupt`` (a streamed reply cut short: the first chunk, then ``[DONE]`` with no
``finish_reason``, as llama-cpp-python ends a stream when another request arrives), ``stall`` (a
streamed reply that stops after its first chunk until the hang time passes, stopping early, counted
as ``stream.abandoned``, when the client closes the connection, as a server that watches for
disconnects stops generating; both answer a plain request normally). The
server applies the spec from its config unless a request carries the ``x-evalstream-fault`` header,
which replaces it for that request.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = ["FAULT_HEADER", "FaultKind", "FaultPlan", "FaultRule", "parse_faults"]

#: Request header that selects the fault spec for one request (overrides the server's config).
FAULT_HEADER: Final = "x-evalstream-fault"
_MAX_TRACKED_BODIES: Final = 100_000


class FaultKind(StrEnum):
    SERVER_ERROR = "500"
    BAD_GATEWAY = "502"
    UNAVAILABLE = "503"
    RATE_LIMITED = "429"
    HANG = "hang"
    RESET = "reset"
    MALFORMED = "malformed"
    ENVELOPE = "envelope"
    SCHEMA = "schema"
    SLOW = "slow"
    SPLIT_LOGPROBS = "split_logprobs"
    HTML = "html"
    INTERRUPT = "interrupt"
    STALL = "stall"

    @property
    def status(self) -> int | None:
        """The HTTP status this fault answers with, for the status faults."""
        return int(self.value) if self.value.isdigit() else None


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultRule:
    kind: FaultKind
    count: int | None = None  # the first N requests with the same body
    probability: float | None = None


def parse_faults(spec: str) -> tuple[FaultRule, ...]:
    """Parse ``"503:2,schema:1"``, ``"hang"``, ``"429~0.1"``; an empty spec is no fault."""
    rules: list[FaultRule] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part or part == "none":
            continue
        name, count, probability = part, None, None
        try:
            if ":" in part:
                name, n = part.split(":", 1)
                count = int(n)
            elif "~" in part:
                name, p = part.split("~", 1)
                probability = float(p)
            kind = FaultKind(name)
        except ValueError as exc:
            raise ValueError(
                f"bad fault rule {part!r} in {spec!r}: expected KIND, KIND:N or KIND~P with KIND one of "
                f"{', '.join(k.value for k in FaultKind)}"
            ) from exc
        if (count is not None and count < 0) or (probability is not None and not 0 <= probability <= 1):
            raise ValueError(f"bad fault rule {part!r}: N must be >= 0 and P in [0, 1]")
        rules.append(FaultRule(kind=kind, count=count, probability=probability))
    return tuple(rules)


def _request_digest(body: bytes) -> str:
    """The body's digest, less the fields a client varies between asks of one request."""
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return hashlib.sha256(body).hexdigest()
    if isinstance(request, dict):
        request = {k: v for k, v in request.items() if k not in ("seed", "temperature")}
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


class FaultPlan:
    """Decides which fault, if any, a request gets. Thread-safe; counts what it injected."""

    def __init__(self, default: tuple[FaultRule, ...] = (), *, seed: int = 0) -> None:
        self._default = default
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._seen: Counter[tuple[str, str]] = Counter()  # (spec, body digest) -> requests so far
        self.injected: Counter[str] = Counter()

    def choose(self, body: bytes, header: str | None) -> FaultKind | None:
        """The fault for this request. ``header`` (if given) replaces the configured rules; a bad
        header raises ValueError, which the server answers with 400."""
        rules = parse_faults(header) if header is not None else self._default
        if not rules:
            return None
        spec = header if header is not None else "<config>"
        digest = _request_digest(body)
        with self._lock:
            if len(self._seen) > _MAX_TRACKED_BODIES:
                self._seen.clear()
            nth = self._seen[spec, digest]
            self._seen[spec, digest] += 1
            kind = self._pick(rules, nth)
            if kind is not None:
                self.injected[kind.value] += 1
            return kind

    def _pick(self, rules: tuple[FaultRule, ...], nth: int) -> FaultKind | None:
        for rule in rules:
            if rule.count is not None:
                if nth < rule.count:
                    return rule.kind
                nth -= rule.count
            elif rule.probability is not None:
                if self._rng.random() < rule.probability:
                    return rule.kind
            else:
                return rule.kind
        return None
