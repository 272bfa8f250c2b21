"""The generic judge server: any ``Judge`` behind ``evalstream.v1.JudgeService``, plus gRPC health.

    python -m evalstream.judges.server --judge rules [--host 127.0.0.1] [--port 0] [--metrics-port N]

When it listens it prints exactly one line, ``JUDGE_READY`` (``evalstream.runtime.ready``), to stdout
(a parent that passed ``--port 0`` reads the port from it); everything else goes to the log on
stderr. On SIGTERM or SIGINT it rejects new calls with UNAVAILABLE, reports NOT_SERVING on the
health service, lets in-flight calls finish within the grace period, stops, and exits 0.

The servicer (``servicer.py``) only converts: protos to ``JudgeInput``, ``judge.judge_batch``,
outcomes back to protos. Rejections are mapped on purpose:

- INVALID_ARGUMENT: an empty item id, or a dimension the judge does not know;
- RESOURCE_EXHAUSTED: a batch over ``max_batch``, or ``max_concurrent`` requests already in flight;
- UNAVAILABLE: the server is stopping;
- INTERNAL: the judge broke its contract or raised (a bug: logged with its traceback).

Metrics (``evalstream_judge_*``) are registered on the registry passed to ``create_server``; a
judge with metrics of its own (``ExportsMetrics``, e.g. the LLM judge's circuit breaker) registers
them on the same registry.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent import futures
from types import FrameType
from typing import Any, Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, start_http_server
from pydantic import ValidationError

from evalstream.runtime.flags import Flag, SettingsFlags, add_settings_flags
from evalstream.runtime.ready import JUDGE_READY, METRICS_READY
from evalstream.v1 import judge_pb2_grpc

from .base import Judge
from .registry import UnknownJudgeError, create_judge
from .servicer import ExportsMetrics, JudgeServicer, ServerMetrics
from .settings import JudgeServerSettings

__all__ = [
    "JudgeServer",
    "ServerStartError",
    "create_server",
    "main",
]

log = logging.getLogger("evalstream.judges.server")  # also when run as __main__

SERVICE_NAME: Final = "evalstream.v1.JudgeService"
# Threads beyond max_concurrent, so that a request over the limit is rejected at once instead of
# queueing behind the busy ones.
_SPARE_WORKERS: Final = 2


class ServerStartError(RuntimeError):
    """The server could not bind its address."""


# --- the server ---------------------------------------------------------------------------------


class JudgeServer(grpc.Server):
    """A ``grpc.Server`` that stops in order.

    ``stop(grace)``: new Judge calls get UNAVAILABLE from the servicer, health reports NOT_SERVING,
    calls already being judged get up to ``grace`` seconds to finish (gRPC keeps serving meanwhile, so
    the rejections and the health status are answered rather than cut off), then gRPC stops and
    cancels whatever is left, such as health watches. ``stop(None)`` cancels everything at once.
    """

    def __init__(
        self,
        server: grpc.Server,
        *,
        servicer: JudgeServicer,
        health_servicer: Any,
    ) -> None:
        self._server = server
        self._servicer = servicer
        self._health = health_servicer

    def stop(self, grace: float | None = None) -> threading.Event:
        # Reject first: a client that sees NOT_SERVING must not then get a call accepted.
        self._servicer.begin_shutdown()
        self._health.enter_graceful_shutdown()
        if grace is None:
            return self._server.stop(None)
        done = threading.Event()

        def drain() -> None:
            if not self._servicer.wait_idle(grace):
                log.warning(
                    "%d judge call(s) still running after %.1fs; cancelling", self._servicer.active, grace
                )
            self._server.stop(0).wait()
            done.set()

        threading.Thread(target=drain, name="judge-drain", daemon=True).start()
        return done

    def start(self) -> None:
        self._server.start()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(generic_rpc_handlers)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def create_server(
    config: JudgeServerSettings, judge: Judge, registry: CollectorRegistry
) -> tuple[JudgeServer, int]:
    """Build and bind (not start) a server for ``judge``; returns it and the port it bound."""
    metrics = ServerMetrics(registry, judge.name)
    if isinstance(judge, ExportsMetrics):
        judge.register_metrics(registry)
    servicer = JudgeServicer(
        judge, max_batch=config.max_batch, max_concurrent=config.max_concurrent, metrics=metrics
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=config.max_concurrent + _SPARE_WORKERS, thread_name_prefix="judge-rpc"
        ),
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    judge_pb2_grpc.add_JudgeServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    address = _address(config.host, config.port)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ServerStartError(
            f"cannot bind the judge server to {address}: {exc}; is the port in use? --port 0 picks a free one"
        ) from exc
    if port == 0:
        raise ServerStartError(f"cannot bind the judge server to {address}; is the port in use?")
    return JudgeServer(server, servicer=servicer, health_servicer=health_servicer), port


# --- main ---------------------------------------------------------------------------------------


def flags() -> tuple[argparse.ArgumentParser, SettingsFlags]:
    """The server's flags: ``JudgeServerSettings`` fields (``runtime/flags.py``)."""
    parser = argparse.ArgumentParser(
        prog="python -m evalstream.judges.server",
        description="Serve one judge tier over gRPC. Unset options come from EVALSTREAM_JUDGE_* or defaults.",
    )
    judge = add_settings_flags(
        parser, JudgeServerSettings, flags={"name": Flag(name="--judge"), "grace_s": Flag(name="--grace")}
    )
    return parser, judge


def _parse(argv: Sequence[str] | None) -> dict[str, Any]:
    """The ``JudgeServerSettings`` fields given as flags."""
    parser, judge = flags()
    return judge.explicit(parser.parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    metrics_http = None
    try:
        settings = JudgeServerSettings(**_parse(argv))
        judge = create_judge(settings.name, settings)
        registry = CollectorRegistry()
        server, port = create_server(settings, judge, registry)
        if settings.metrics_port is not None:
            metrics_http, _ = start_http_server(settings.metrics_port, addr=settings.host, registry=registry)
            log.info("%s", METRICS_READY.format(address=_address(settings.host, metrics_http.server_port)))
    except (ValidationError, UnknownJudgeError, ServerStartError, ValueError, OSError) as exc:
        log.error("judge server not started: %s", exc)
        return 2

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping, in-flight calls get %.1fs", signal.Signals(signum).name, settings.grace_s)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    log.info("serving %s (tier %d), max batch %d", judge.name, judge.tier, settings.max_batch)
    JUDGE_READY.announce(address=_address(settings.host, port))
    stop.wait()
    server.stop(settings.grace_s).wait()
    if metrics_http is not None:
        metrics_http.shutdown()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
