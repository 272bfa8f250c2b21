"""Every series name evalstream exports: the exporter's (``SPECS``, the shell's own), a judge server's,
the LLM judge's circuit breakers', and the pipeline process's own. Rules and dashboards may name only
these (or recorded ones)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from evalstream.exporter.consumer import ShellMetrics
from evalstream.exporter.core import SPECS
from evalstream.judges.circuit import register_breaker_metrics
from evalstream.judges.servicer import ServerMetrics
from evalstream.pipeline.metrics import PipelineMetrics
from evalstream.runtime.circuit import BreakerPolicy, CircuitBreaker


def exported_names() -> set[str]:
    names: set[str] = set()
    for spec in SPECS:
        names.add(spec.name)
        if spec.kind == "histogram":
            names |= {f"{spec.name}_bucket", f"{spec.name}_sum", f"{spec.name}_count"}
    registry = CollectorRegistry()
    ShellMetrics(registry)
    ServerMetrics(registry, "judge")
    breaker = CircuitBreaker("endpoint", BreakerPolicy(failure_threshold=1, open_s=1.0))
    register_breaker_metrics(registry, "judge", [("endpoint", breaker)])
    PipelineMetrics(registry, breakers=lambda: {0: breaker})
    for metric in registry.collect():
        names |= {sample.name for sample in metric.samples}
        names.add(metric.name + ("_total" if metric.type == "counter" else ""))
    return names
