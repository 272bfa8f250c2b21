"""The exporter's counters and histograms as plain values, and the collector that serves them.

``Totals`` is the whole evaluation state the exporter exposes: per metric, per label values, a
counter value, a gauge value, or a histogram's bucket counts and sum. It is plain data so that it can
be persisted together with the consumed offsets (see ``state.py``) and restored exactly; the
prometheus_client metric classes cannot restore a histogram's buckets.

``TotalsCollector`` serves a published copy of ``Totals``. The exporter publishes only after the
state is on disk and the offsets are committed, so a scrape never sees a value that a restart could
take back (Prometheus would read a lower value as a counter reset and count it twice).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["Kind", "MetricSpec", "Totals", "TotalsCollector"]

Labels = tuple[str, ...]


class Kind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricSpec:
    """One metric: its exposition name (counters end in ``_total``), help, label names, kind."""

    name: str
    help: str
    labels: tuple[str, ...]
    kind: Kind = Kind.COUNTER
    buckets: tuple[float, ...] = ()  # upper bounds for histograms, ascending, without +Inf

    def __post_init__(self) -> None:
        if self.kind is Kind.COUNTER and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name!r} must end in _total (Prometheus naming)")
        if self.kind is Kind.HISTOGRAM and (not self.buckets or list(self.buckets) != sorted(self.buckets)):
            raise ValueError(f"histogram {self.name!r} needs ascending buckets, got {self.buckets}")


class Totals:
    """Counter and gauge values and histogram buckets, by metric name and label values.

    ``values[name][labels]`` holds counters and gauges; ``hists[name][labels]`` holds a list of
    per-bucket counts (not cumulative, the last one is +Inf) followed by the sum of observations.
    """

    __slots__ = ("hists", "specs", "values")

    def __init__(self, specs: Iterable[MetricSpec]) -> None:
        self.specs: dict[str, MetricSpec] = {s.name: s for s in specs}
        self.values: dict[str, dict[Labels, float]] = {
            s.name: {} for s in self.specs.values() if s.kind is not Kind.HISTOGRAM
        }
        self.hists: dict[str, dict[Labels, list[float]]] = {
            s.name: {} for s in self.specs.values() if s.kind is Kind.HISTOGRAM
        }

    def inc(self, name: str, labels: Labels, amount: float = 1.0) -> None:
        series = self.values[name]
        series[labels] = series.get(labels, 0.0) + amount

    def set(self, name: str, labels: Labels, value: float) -> None:
        self.values[name][labels] = value

    def observe(self, name: str, labels: Labels, value: float) -> None:
        series = self.hists[name]
        counts = series.get(labels)
        buckets = self.specs[name].buckets
        if counts is None:
            counts = series[labels] = [0.0] * (len(buckets) + 2)
        counts[bisect_left(buckets, value)] += 1.0  # first bound >= value: Prometheus' "le"
        counts[-1] += value

    def get(self, name: str, labels: Labels) -> float:
        return self.values[name].get(labels, 0.0)

    def copy(self) -> Totals:
        other = Totals.__new__(Totals)
        other.specs = self.specs
        other.values = {name: series.copy() for name, series in self.values.items()}
        other.hists = {name: {k: v.copy() for k, v in series.items()} for name, series in self.hists.items()}
        return other

    def series_count(self) -> int:
        return sum(len(s) for s in self.values.values()) + sum(len(s) for s in self.hists.values())

    # --- persistence ----------------------------------------------------------------------------

    def to_json(self) -> dict[str, list[list[Any]]]:
        """``{metric: [[label values..., value or bucket list], ...]}``; metrics without series omitted."""
        out: dict[str, list[list[Any]]] = {}
        for name, series in self.values.items():
            if series:
                out[name] = [[*labels, value] for labels, value in series.items()]
        for name, hseries in self.hists.items():
            if hseries:
                out[name] = [[*labels, counts] for labels, counts in hseries.items()]
        return out

    @classmethod
    def from_json(cls, specs: Iterable[MetricSpec], data: Mapping[str, Sequence[Sequence[Any]]]) -> Totals:
        """Restore; raises ``ValueError`` naming the metric when the data does not fit its spec."""
        totals = cls(specs)
        for name, rows in data.items():
            spec = totals.specs.get(name)
            if spec is None:
                raise ValueError(f"state has metric {name!r}, which this exporter does not define")
            width = len(spec.labels)
            for row in rows:
                if len(row) != width + 1:
                    raise ValueError(
                        f"state row for {name} has {len(row) - 1} label values, expected {width} "
                        f"({', '.join(spec.labels)})"
                    )
                labels = tuple(str(v) for v in row[:width])
                if spec.kind is Kind.HISTOGRAM:
                    counts = [float(c) for c in row[width]]
                    if len(counts) != len(spec.buckets) + 2:
                        raise ValueError(
                            f"state histogram {name} has {len(counts) - 2} buckets, expected "
                            f"{len(spec.buckets)}; the bucket layout changed"
                        )
                    totals.hists[name][labels] = counts
                else:
                    totals.values[name][labels] = float(row[width])
        return totals


def _families(totals: Totals) -> Iterator[Metric]:
    for spec in totals.specs.values():
        labels = list(spec.labels)
        if spec.kind is Kind.COUNTER:
            counter = CounterMetricFamily(spec.name.removesuffix("_total"), spec.help, labels=labels)
            for values, value in totals.values[spec.name].items():
                counter.add_metric(list(values), value)
            yield counter
        elif spec.kind is Kind.GAUGE:
            gauge = GaugeMetricFamily(spec.name, spec.help, labels=labels)
            for values, value in totals.values[spec.name].items():
                gauge.add_metric(list(values), value)
            yield gauge
        else:
            hist = HistogramMetricFamily(spec.name, spec.help, labels=labels)
            bounds = [*(_le(b) for b in spec.buckets), "+Inf"]
            for values, counts in totals.hists[spec.name].items():
                cumulative: list[tuple[str, float]] = []
                running = 0.0
                for bound, count in zip(bounds, counts, strict=False):
                    running += count
                    cumulative.append((bound, running))
                hist.add_metric(list(values), cumulative, counts[-1])
            yield hist


def _le(bound: float) -> str:
    return repr(float(bound))


class TotalsCollector(Collector):
    """Serves the last published ``Totals``; publishing swaps one reference, so scrapes never block."""

    def __init__(self, specs: Iterable[MetricSpec]) -> None:
        self._empty = Totals(specs)
        self._published = self._empty

    def publish(self, totals: Totals) -> None:
        """Serve ``totals`` from now on; the caller must not change it afterwards (pass a copy)."""
        self._published = totals

    @property
    def published(self) -> Totals:
        return self._published

    def collect(self) -> Iterator[Metric]:
        return _families(self._published)

    def describe(self) -> Iterator[Metric]:
        return _families(self._empty)
