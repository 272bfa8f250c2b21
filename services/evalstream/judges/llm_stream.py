"""Streamed chat completions (``stream: true``), reassembled into the body a plain request gets.

Why stream: a judge that gives up on a call (its attempt or request deadline passed, the judge is
closing) closes the connection, and a server that watches for that stops generating.
llama-cpp-python's server checks for a closed connection between streamed tokens and stops; for a
plain (non-streamed) request it checks only before it starts, then generates to the end for nobody,
holding its one slot. vLLM aborts a request whose client went away either way.

The wire (server-sent events, one ``data: <json>`` line per chunk, ``data: [DONE]`` at the end; other
lines are comments such as pings, event names or ids)::

    {"model": m, "choices": [{"index": i, "delta": {"role"?, "content"?}, "logprobs": {"content": [...]}?,
                              "finish_reason": null | "stop" | "length" ...}], "usage"?: {...}}

Choices are told apart by ``index`` (several with ``n`` > 1); a choice's ``content`` pieces and
logprob tokens are concatenated in order. ``usage`` comes in a last chunk when the request asks
(``stream_options.include_usage``, OpenAI and vLLM); a server that sends none (llama-cpp-python) is
counted from the chunks: completion tokens = logprob tokens when there are any, else content pieces.

A stream that says ``[DONE]`` with a choice that has no ``finish_reason`` was cut short by the
server: llama-cpp-python's ``interrupt_requests`` (on by default) ends a running stream when another
request arrives. That is ``LLMInterrupted`` (retried, and counted as overload: the adaptive limit
halves). A stream that ends without ``[DONE]`` is a broken connection.

``_Watchdog`` ends an attempt on time whatever the read waits for: it shuts the connection's socket
down at the attempt's end, so the server sees the client leave.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import httpx

__all__ = ["StreamBroken", "StreamInterrupted", "reassemble"]

DONE: Final = "[DONE]"


class StreamBroken(ValueError):
    """The event stream is not a chat-completion stream, or ended before ``[DONE]``."""


class StreamInterrupted(ValueError):
    """``[DONE]`` arrived while a choice had no ``finish_reason``: the server cut the reply short."""


@dataclass(slots=True)
class _Choice:
    content: list[str] = field(default_factory=list)
    logprobs: list[Any] = field(default_factory=list)
    has_logprobs: bool = False
    finish_reason: str | None = None
    pieces: int = 0


def _data(lines: Iterator[str]) -> Iterator[str]:
    """The ``data`` payloads of an event stream; multi-line data joined with newlines."""
    buffered: list[str] = []
    for line in lines:
        if not line:
            if buffered:
                yield "\n".join(buffered)
                buffered = []
            continue
        if line.startswith("data:"):
            value = line[5:]
            buffered.append(value[1:] if value.startswith(" ") else value)
        # comments (": ping"), event:, id:, retry: say nothing about the reply
    if buffered:
        yield "\n".join(buffered)


def reassemble(lines: Iterator[str], *, on_chunk: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Read an event stream's lines to ``[DONE]``; return a chat-completion body (``choices`` with
    ``message.content``, ``logprobs.content``, ``finish_reason``; ``model``; ``usage``).
    ``on_chunk`` runs after every payload (the caller checks its deadline there and may raise).
    Raises ``StreamBroken`` or ``StreamInterrupted``."""
    choices: dict[int, _Choice] = {}
    model = ""
    usage: dict[str, Any] | None = None
    done = False
    for payload in _data(lines):
        if payload.strip() == DONE:
            done = True
            break
        try:
            chunk = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise StreamBroken(f"a streamed chunk is not JSON ({exc}): {payload[:120]!r}") from None
        if not isinstance(chunk, dict):
            raise StreamBroken(f"a streamed chunk is not a JSON object: {payload[:120]!r}")
        if "error" in chunk:
            raise StreamBroken(f"the stream carried an error: {str(chunk['error'])[:300]}")
        model = str(chunk.get("model") or model)
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        for raw in chunk.get("choices") or ():
            try:
                choice = choices.setdefault(int(raw.get("index") or 0), _Choice())
                delta = raw.get("delta") or {}
                if (piece := delta.get("content")) is not None:
                    choice.content.append(str(piece))
                    choice.pieces += 1
                if isinstance(lp := raw.get("logprobs"), dict) and isinstance(lp.get("content"), list):
                    choice.has_logprobs = True
                    choice.logprobs.extend(lp["content"])
                if raw.get("finish_reason"):
                    choice.finish_reason = str(raw["finish_reason"])
            except (AttributeError, TypeError, ValueError) as exc:
                raise StreamBroken(f"a streamed choice is malformed ({exc}): {str(raw)[:120]!r}") from None
        on_chunk()
    if not done:
        raise StreamBroken("the event stream ended before data: [DONE]")
    if cut := sorted(i for i, c in choices.items() if c.finish_reason is None):
        raise StreamInterrupted(
            f"the stream ended ([DONE]) with choice(s) {cut} unfinished (no finish_reason): the server "
            "cut the reply short (llama-cpp-python does when another request arrives, unless started "
            "with --interrupt_requests false)"
        )
    ordered = [choices[i] for i in sorted(choices)]
    if usage is None:
        counted = sum(len(c.logprobs) if c.has_logprobs else c.pieces for c in ordered)
        usage = {"prompt_tokens": 0, "completion_tokens": counted, "counted_from_stream": True}
    return {
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": "".join(c.content)},
                "logprobs": {"content": c.logprobs} if c.has_logprobs else None,
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(ordered)
        ],
        "usage": usage,
    }


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
