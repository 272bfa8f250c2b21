"""The replay server's HTTP shell: OpenAI-compatible endpoints over the stdlib ``ThreadingHTTPServer``.

Why the stdlib server: the fault modes need the raw socket (a TCP reset, a hang with no bytes, a body
cut in half), which ASGI stacks such as starlette/uvicorn deliberately hide; it needs no new
dependency; and one thread per connection with HTTP/1.1 keep-alive is ample for tests and the demo.

Endpoints: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /healthz`` and
``GET /v1/replay/stats`` (counters: requests, statuses, injected faults, hits and misses per task and
model, tokens). Handlers only unpack, call ``replies.complete`` and pack.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import select
import signal
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, Final

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from evalstream.evaluation.datasets import data_root
from evalstream.runtime.flags import SettingsFlags, add_settings_flags
from evalstream.runtime.ready import LLM_REPLAY_READY

from .faults import FAULT_HEADER, FaultKind, FaultPlan, parse_faults
from .recordings import DATASETS, ReplayStore
from .replies import (
    SCHEMA_BREAKING_CONTENT,
    Fallback,
    Reply,
    complete,
    error_reply,
    models_reply,
    split_logprobs,
    stream_events,
)

__all__ = ["ReplayServer", "ReplaySettings", "create_server", "main"]

_log = logging.getLogger(__name__)

_MAX_BODY: Final = 32 * 1024 * 1024


class ReplaySettings(BaseSettings):
    """Replay server settings: explicit argument, then ``EVALSTREAM_LLM_REPLAY_<FIELD>``, then default."""

    model_config = SettingsConfigDict(
        env_prefix="EVALSTREAM_LLM_REPLAY_", frozen=True, extra="ignore", use_attribute_docstrings=True
    )

    host: str = "127.0.0.1"
    """Address to bind."""
    port: int = Field(default=8089, ge=0, le=65535)
    """Port; 0 binds a free one and the listening line says which."""
    data_dir: Path | None = None
    """Folder of the shared data; unset: as ``EVALSTREAM_DATA_DIR`` (``evaluation/datasets.py``)."""
    datasets: str = ",".join(DATASETS)
    """Comma-separated data sets to load."""
    latency_ms: float = Field(default=0.0, ge=0)
    """Simulated model time per request, plus uniform jitter up to ``latency_jitter_ms``."""
    latency_jitter_ms: float = Field(default=0.0, ge=0)
    """Uniform jitter added to ``latency_ms``, up to this many milliseconds."""
    faults: str = ""
    """Fault spec applied to every request without an ``x-evalstream-fault`` header (see ``faults``)."""
    fault_seed: int = 0
    """Seed of the random faults (``429~0.1``)."""
    hang_s: float = Field(default=60.0, ge=0)
    """How long ``hang`` holds a request before closing it."""
    slow_s: float = Field(default=1.0, ge=0)
    """How long ``slow`` delays a reply."""
    retry_after_s: float = Field(default=0.05, ge=0)
    """``retry-after`` seconds sent with 429."""
    formats: str = ""
    """Comma-separated ``response_format`` types the server takes (empty: every type). Others are
    answered as llama-cpp-python 0.3.36 answers ``json_schema``: HTTP 500 naming ``response_format``."""
    stream: bool = True
    """Answer ``stream: true`` requests as server-sent events; false (``--no-stream``): refuse them
    with 400, as a server that does not stream."""
    fallback: Fallback = Fallback.ERROR
    """What to answer for an item with no recorded verdict: ``error`` (404), ``content``
    (``fallback_content``) or ``obey`` (a gullible judge)."""
    fallback_content: str = ""
    """The assistant message for ``fallback=content``."""
    api_key: SecretStr | None = None
    """When set, requests need ``Authorization: Bearer <key>``."""
    grace_s: float = Field(default=5.0, ge=0)
    """Seconds to let in-flight requests finish after SIGTERM."""


class _Stats:
    """Counters behind ``/v1/replay/stats``; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, **increments: int) -> None:
        with self._lock:
            self.counts.update(increments)

    def bump(self, key: str, by: int = 1) -> None:
        with self._lock:
            self.counts[key] += by

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self.counts.items()))


class ReplayServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, settings: ReplaySettings, store: ReplayStore) -> None:
        self.settings = settings
        self.store = store
        self.plan = FaultPlan(parse_faults(settings.faults), seed=settings.fault_seed)
        self.stats = _Stats()
        self.stopping = threading.Event()  # wakes hanging and slow handlers on shutdown
        self._active = 0
        self._active_lock = threading.Lock()
        self._rng = random.Random(settings.fault_seed)
        super().__init__((settings.host, settings.port), _Handler)

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    def track(self, delta: int) -> None:
        with self._active_lock:
            self._active += delta

    @property
    def active(self) -> int:
        with self._active_lock:
            return self._active

    def model_delay(self) -> float:
        jitter = (
            self._rng.uniform(0, self.settings.latency_jitter_ms) if self.settings.latency_jitter_ms else 0.0
        )
        return (self.settings.latency_ms + jitter) / 1000

    def stats_body(self) -> dict[str, Any]:
        counts = self.stats.snapshot()
        counts.update({f"fault.{k}": v for k, v in sorted(self.plan.injected.items())})
        return {"counters": counts, "recordings": self.store.counts(), "active": self.active}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stalls
    server: ReplayServer
    server_version = "evalstream-llm-replay/1"

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s %s", self.address_string(), format % args)

    def _send(self, reply: Reply, *, body: bytes | None = None) -> None:
        payload = reply.encode() if body is None else body
        self.send_response(reply.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
        self.server.stats.bump(f"status.{reply.status}")

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/v1/models":
            self._send(models_reply(self.server.store))
        elif path == "/healthz":
            self._send(Reply(status=200, body={"status": "serving"}))
        elif path == "/v1/replay/stats":
            self._send(Reply(status=200, body=self.server.stats_body()))
        else:
            self._send(
                error_reply(404, f"no route GET {path}", kind="invalid_request_error", code="not_found")
            )

    def do_POST(self) -> None:
        self.server.track(+1)
        try:
            self._post()
        finally:
            self.server.track(-1)

    def _authorised(self) -> bool:
        key = self.server.settings.api_key
        if key is None:
            return True
        given = self.headers.get("authorization", "")
        return given == f"Bearer {key.get_secret_value()}"

    def _post(self) -> None:
        server = self.server
        server.stats.bump("requests")
        path = self.path.split("?", 1)[0].rstrip("/")
        length = int(self.headers.get("content-length") or 0)
        if length > _MAX_BODY:
            self.close_connection = True
            self._send(error_reply(413, f"body over {_MAX_BODY} bytes", kind="invalid_request_error"))
            return
        raw = self.rfile.read(length)
        if path != "/v1/chat/completions":
            self._send(
                error_reply(404, f"no route POST {path}", kind="invalid_request_error", code="not_found")
            )
            return
        if not self._authorised():
            self._send(
                error_reply(
                    401, "Incorrect API key provided.", kind="invalid_request_error", code="invalid_api_key"
                )
            )
            return
        try:
            fault = server.plan.choose(raw, self.headers.get(FAULT_HEADER))
        except ValueError as exc:
            self._send(error_reply(400, str(exc), kind="invalid_request_error", code="bad_fault_spec"))
            return
        if fault is not None and self._inject(fault, raw):
            return
        try:
            request = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self._send(error_reply(400, f"body is not JSON: {exc}", kind="invalid_request_error"))
            return
        if (refusal := _format_refusal(request, server.settings.formats)) is not None:
            self._send(refusal)
            return
        reply = complete(
            request,
            server.store,
            fallback=server.settings.fallback,
            fallback_content=server.settings.fallback_content,
            created=int(time.time()),
            streams=server.settings.stream,
        )
        if server.stopping.wait(server.model_delay()):
            self.close_connection = True
        if reply.status == 200:
            usage = reply.body["usage"]
            server.stats.add(
                **{f"{'hit' if reply.hit else 'fallback'}.{reply.task}.{reply.model}": 1},
                prompt_tokens=usage["prompt_tokens"],
                completion_tokens=usage["completion_tokens"],
            )
        elif reply.task or reply.model:
            server.stats.bump(f"miss.{reply.task or 'unknown'}.{reply.model}")
        if fault is FaultKind.SCHEMA and reply.status == 200:
            for choice in reply.body["choices"]:
                choice["message"]["content"] = SCHEMA_BREAKING_CONTENT
        if fault is FaultKind.SPLIT_LOGPROBS and reply.status == 200:
            for choice in reply.body["choices"]:
                choice["logprobs"] = split_logprobs(choice["message"]["content"] or "")
        if fault is FaultKind.ENVELOPE and reply.status == 200:
            reply.body.pop("choices")
        if fault is FaultKind.MALFORMED and reply.status == 200:
            encoded = reply.encode()
            self._send(reply, body=encoded[: len(encoded) // 2])
            return
        if reply.status == 200 and request.get("stream") and "choices" in reply.body:
            options = request.get("stream_options")
            usage = isinstance(options, dict) and bool(options.get("include_usage"))
            self._stream(reply, include_usage=usage, fault=fault)
            return
        self._send(reply)

    def _stream(self, reply: Reply, *, include_usage: bool, fault: FaultKind | None) -> None:
        """The reply as server-sent events; the connection closes at the end (no content-length).
        Under ``interrupt`` the first chunk and ``[DONE]``; under ``stall`` the first chunk, then
        nothing until the hang time passes or the client leaves."""
        self.send_response(reply.status)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True
        events = stream_events(reply.body, include_usage=include_usage)
        if fault is FaultKind.INTERRUPT:
            events = [events[0], events[-1]]
        try:
            for i, event in enumerate(events):
                if fault is FaultKind.STALL and i == 1 and self._stalled():
                    self.server.stats.bump("stream.abandoned")
                    return
                self.wfile.write(event)
                self.wfile.flush()
        except OSError:  # the client went away mid-stream
            self.server.stats.bump("stream.abandoned")
            return
        self.server.stats.bump(f"status.{reply.status}")
        self.server.stats.bump("stream.sent")

    def _stalled(self) -> bool:
        """Hold the stream until the hang time passes (False) or the client closes its end (True),
        looking every 20 ms, as a generating server looks between tokens."""
        server = self.server
        deadline = time.monotonic() + server.settings.hang_s
        while not server.stopping.wait(0.02):
            readable, _, _ = select.select([self.connection], [], [], 0)
            if readable:
                try:
                    if self.connection.recv(1, socket.MSG_PEEK) == b"":
                        return True
                except OSError:
                    return True
            if time.monotonic() >= deadline:
                return False
        return False

    def _inject(self, fault: FaultKind, raw: bytes) -> bool:
        """Apply a fault that replaces the answer; True when the request is finished."""
        server = self.server
        if (status := fault.status) is not None:
            reply = error_reply(
                status, f"injected fault {fault.value}", kind="server_error", code="replay_fault"
            )
            if fault is FaultKind.RATE_LIMITED:
                reply = error_reply(
                    429, "Rate limit reached (injected).", kind="requests", code="rate_limit_exceeded"
                )
                retry_after = server.settings.retry_after_s
                reply.headers.update(
                    {"retry-after": f"{retry_after:g}", "retry-after-ms": f"{retry_after * 1000:g}"}
                )
            self._send(reply)
            return True
        if fault is FaultKind.HANG:
            server.stopping.wait(server.settings.hang_s)
            self.close_connection = True
            return True
        if fault is FaultKind.RESET:
            # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()  # the fd closes (with RST) once the handler drops its file objects
            self.close_connection = True
            return True
        if fault is FaultKind.HTML:
            page = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Sign in to continue"
            page += b"</body></html>"
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            self.server.stats.bump("status.200")
            return True
        if fault is FaultKind.SLOW:
            server.stopping.wait(server.settings.slow_s)
        return False  # SLOW, SCHEMA, ENVELOPE, MALFORMED, SPLIT_LOGPROBS, INTERRUPT, STALL: answer, alter it


def _format_refusal(request: Any, formats: str) -> Reply | None:
    """The 500 a server that does not take the request's ``response_format`` type answers, or None."""
    accepted = [f.strip() for f in formats.split(",") if f.strip()]
    fmt = request.get("response_format") if isinstance(request, dict) else None
    if not accepted or not isinstance(fmt, dict) or fmt.get("type") in accepted:
        return None
    choices = " or ".join(repr(f) for f in ["text", *accepted])
    return error_reply(
        500,
        f"1 validation error for CreateChatCompletionRequest\nresponse_format.type\n  Input should be "
        f"{choices} [type=literal_error, input_value={fmt.get('type')!r}]",
        kind="internal_server_error",
    )


def create_server(settings: ReplaySettings, store: ReplayStore | None = None) -> ReplayServer:
    """Load the recordings (unless given) and bind; ``settings.port == 0`` picks a free port."""
    if store is None:
        datasets = [d.strip() for d in settings.datasets.split(",") if d.strip()]
        store = ReplayStore.load(data_root(settings.data_dir), datasets)
    return ReplayServer(settings, store)


def flags() -> tuple[argparse.ArgumentParser, SettingsFlags]:
    """``ReplaySettings`` fields as flags (``runtime/flags.py``), ``--api-key-file`` and ``--log-level``."""
    parser = argparse.ArgumentParser(
        prog="python -m evalstream.llm_replay",
        description="OpenAI-compatible server replaying real recorded judge verdicts from the shared data.",
    )
    replay = add_settings_flags(parser, ReplaySettings, skip=("api_key",))
    parser.add_argument("--api-key-file", type=Path, help="require this key (file holds the key)")
    parser.add_argument("--log-level", default="WARNING")
    return parser, replay


def _parse_args(argv: Sequence[str] | None) -> dict[str, Any]:
    parser, replay = flags()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    explicit = replay.explicit(args)
    if args.api_key_file is not None:
        explicit["api_key"] = SecretStr(args.api_key_file.read_text(encoding="utf-8").strip())
    return explicit


def main(argv: Sequence[str] | None = None) -> int:
    settings = ReplaySettings(**_parse_args(argv))
    server = create_server(settings)

    def stop(signum: int, _frame: FrameType | None) -> None:
        _log.info("signal %d: stopping", signum)
        server.stopping.set()
        threading.Thread(target=server.shutdown, name="replay-shutdown", daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    LLM_REPLAY_READY.announce(url=f"http://{settings.host}:{server.port}")
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        deadline = time.monotonic() + settings.grace_s
        while server.active and time.monotonic() < deadline:
            server.stopping.wait(0.02)  # in-flight handlers were woken by ``stopping``; let them answer
        server.server_close()
    return 0
