"""OpenTelemetry tracing: on when an OTLP endpoint is configured, a no-op otherwise.

Set ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), the standard
OpenTelemetry variables, to export spans over OTLP/HTTP; leave them unset and nothing is exported
and nothing is buffered. Span and attribute names:

- ``evalstream.decode`` (attribute ``evalstream.event_id``)
- ``evalstream.judge`` per judge call (``evalstream.judge.tier``, ``evalstream.event_ids``)
- a ``gen_ai.evaluation.result`` span event per dimension verdict, with
  ``gen_ai.evaluation.name``, ``gen_ai.evaluation.score.label``, ``gen_ai.evaluation.score.value``
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Final

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

__all__ = ["endpoint_from_env", "setup_tracing", "tracing_enabled"]

log = logging.getLogger(__name__)

#: Standard OpenTelemetry variables that switch tracing on.
ENDPOINT_ENVS: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

_configured: dict[str, TracerProvider] = {}


def endpoint_from_env(env: Mapping[str, str] = os.environ) -> str | None:
    for name in ENDPOINT_ENVS:
        if value := env.get(name):
            return value
    return None


def setup_tracing(service_name: str, endpoint: str | None) -> TracerProvider | None:
    """Install a tracer provider exporting to ``endpoint`` over OTLP/HTTP; idempotent per process.

    With no endpoint, the global no-op tracer stays in place: spans cost a few microseconds each, and
    the pipeline's per-record spans are skipped (``tracing_enabled``).
    """
    if endpoint is None:
        return None
    if service_name in _configured:
        return _configured[service_name]
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    traces_url = (
        endpoint if endpoint.rstrip("/").endswith("/v1/traces") else endpoint.rstrip("/") + "/v1/traces"
    )
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url)))
    trace.set_tracer_provider(provider)
    _configured[service_name] = provider
    log.info("tracing to %s as %s", traces_url, service_name)
    return provider


def tracing_enabled() -> bool:
    """Whether a tracer provider that records spans is installed (``setup_tracing`` with an endpoint,
    or the application's own SDK provider). Hot loops skip their per-record spans when it is not."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider)
