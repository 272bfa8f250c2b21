"""Drift: each model and route's current window against a reference, from mergeable sketches.

Features (``Feature``), all from the pipeline's ``Summary`` partials:

- ``response_chars``: response length, the KLL sketch of event-level summaries;
- ``score`` (per ``dimension``): judge scores, the KLL sketch of dimension-level summaries;
- ``refusal_rate``: refusals (full or partial) among refusal verdicts, from the refusal summaries'
  label counts (exact counts, no sketch);
- ``embedding`` (per statistic, named in the ``dimension`` label: ``embedding_centroid_cosine``,
  ``embedding_pc1``, ``embedding_pc2``, ``evalstream.wire.dimensions.EmbeddingStat``): the tier-1 encoder's
  statistics of the response embedding against its training profile (cosine to the training
  centroid, coordinates on the first two principal axes; ``services/evalstream/judges/encoder.py``), the KLL
  sketches of event-level summaries, built from the embedding probe's uniform sample of judged events
  (``evalstream.pipeline.cascade``). One feature with the statistic in ``dimension`` rather than one feature
  per statistic: the statistics are one family from one source, read and alerted on together, and
  ``dimension`` already names the member of a family (as for ``score``). Names outside
  ``EmbeddingStat`` are skipped and counted (``reason="unknown_statistic"``), so a judge cannot grow
  the label set.

Windows are in event time, by the summaries' minute. The drift clock (the watermark) is the newest
summary minute seen, capped at the Kafka time of its record so that one event dated in the future
cannot empty every window. The **current** window is the last ``current_s``, kept in buckets of
``bucket_s``. The **reference** is either

- ``trailing``: the ``reference_s`` before the current window (a trailing day by default), kept in
  coarser buckets of ``reference_bucket_s`` (buckets leaving the current window are merged into them),
  so a day costs 24 sketches per feature rather than 144; or
- ``pinned``: a baseline of ``reference_s`` from ``baseline_start`` (or, when unset, from the first
  minute seen for each model and route), merged into one sketch and kept.

Partials older than anything kept are counted (``evalstream_drift_skipped_total{reason="late"}``)
and dropped. Memory is bounded by the label budget (model x route keys) times features times
buckets, each sketch at most a few KB (KLL, k=200).

Statistics (``compare_sketches``, ``compare_counts``), for every feature with at least
``min_samples`` in both windows:

- bins: the reference's deciles (``bins`` quantiles from its sketch, merged where values tie), and
  each window's share per bin from its sketch's PMF; for refusals, the two classes;
- PSI = sum over bins of (c - r) ln(c / r), the symmetrised Kullback-Leibler divergence, computed as
  ``scipy.stats.entropy`` both ways; shares below ``PSI_FLOOR`` are raised to it (an empty bin would
  make it infinite). Rule of thumb: < 0.1 stable, 0.1-0.25 moderate, > 0.25 a real shift;
- p-value: Pearson's chi-square test of homogeneity on the binned counts of both windows
  (``scipy.stats.chi2_contingency``). Chosen over a KS test on sketch quantiles because it needs only
  per-bin counts, which a KLL sketch answers with a known error, it handles ties (scores take few
  distinct values, and KS assumes a continuous distribution), and it sees exactly the bins PSI sees.
  A sketch in estimation mode knows each bin's share only to about its PMF rank error eps (1.65% at
  k=200, 99% of the time); so the counts are scaled to at most 1/eps^2 (~3,700) items, the sample size
  whose own sampling noise matches that error. Without the cap, large windows would call the sketch's
  approximation drift. Exact sketches (n <= k) and refusal counts are used as they are.

State: buckets serialize to bytes (base64 in the exporter's JSON state), saved with the offsets like
every total; a restart restores them and recomputes the same gauges. A state saved with other window
settings is dropped (the gauges come back once the windows fill again).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Final

from evalstream.v1 import summary_pb2
from evalstream.wire.dimensions import Dimension, EmbeddingStat, RefusalLabel

from .drift_stats import DEFAULT_BINS, Comparison, compare_counts, compare_sketches
from .drift_windows import (
    Aggregate,
    Feature,
    FeatureKey,
    Reference,
    Series,
    SeriesKey,
    floor,
    merged,
    sketch_from,
)
from .labels import LabelName
from .totals import Kind, MetricSpec, Totals

__all__ = [
    "SPECS",
    "DriftConfig",
    "DriftTracker",
    "Feature",
    "Reference",
]

_STATISTICS: Final = frozenset(s.value for s in EmbeddingStat)
#: Refusal labels that count as a refusal (as in the recording rule ``evalstream:refusal:ratio_rate1h``).
REFUSING: Final = frozenset({RefusalLabel.FULL_REFUSAL.value, RefusalLabel.PARTIAL_REFUSAL.value})

PSI_METRIC: Final = "evalstream_drift_psi"
PVALUE_METRIC: Final = "evalstream_drift_pvalue"
CURRENT_N: Final = "evalstream_drift_current_samples"
REFERENCE_N: Final = "evalstream_drift_reference_samples"
SKIPPED: Final = "evalstream_drift_skipped_total"
WATERMARK: Final = "evalstream_drift_watermark_timestamp_seconds"

_LABELS = (str(LabelName.MODEL), str(LabelName.ROUTE), "feature", str(LabelName.DIMENSION))

SPECS: Final = (
    MetricSpec(
        name=PSI_METRIC,
        help="Population stability index, current window vs reference, per feature.",
        labels=_LABELS,
        kind=Kind.GAUGE,
    ),
    MetricSpec(
        name=PVALUE_METRIC,
        help="Chi-square test p-value, current window vs reference, on the PSI bins.",
        labels=_LABELS,
        kind=Kind.GAUGE,
    ),
    MetricSpec(name=CURRENT_N, help="Items in the current drift window.", labels=_LABELS, kind=Kind.GAUGE),
    MetricSpec(name=REFERENCE_N, help="Items in the drift reference.", labels=_LABELS, kind=Kind.GAUGE),
    MetricSpec(name=SKIPPED, help="Summary partials drift could not use, by reason.", labels=("reason",)),
    MetricSpec(
        name=WATERMARK,
        help="The drift clock: newest summary minute seen (event time).",
        labels=(),
        kind=Kind.GAUGE,
    ),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftConfig:
    """Windows and statistics of drift; seconds are multiples of a minute (the summaries' window)."""

    reference: Reference = Reference.TRAILING
    bucket_s: int = 600
    current_s: int = 3600
    reference_s: int = 86400
    reference_bucket_s: int = 3600
    baseline_start: int | None = None  # pinned: unix seconds; None: each key's first minute
    bins: int = DEFAULT_BINS
    min_samples: int = 50

    def __post_init__(self) -> None:
        problems = []
        if self.bucket_s < 60 or self.bucket_s % 60:
            problems.append(f"bucket_s {self.bucket_s} must be a positive multiple of 60")
        elif self.current_s < self.bucket_s or self.current_s % self.bucket_s:
            problems.append(f"current_s {self.current_s} must be a multiple of bucket_s {self.bucket_s}")
        elif self.reference_bucket_s < self.bucket_s or self.reference_bucket_s % self.bucket_s:
            problems.append(
                f"reference_bucket_s {self.reference_bucket_s} must be a multiple of bucket_s {self.bucket_s}"
            )
        if self.reference_s < 60 or self.reference_s % 60:
            problems.append(f"reference_s {self.reference_s} must be a positive multiple of 60")
        if self.bins < 2:
            problems.append(f"bins {self.bins} must be at least 2")
        if self.min_samples < 1:
            problems.append(f"min_samples {self.min_samples} must be at least 1")
        if problems:
            raise ValueError("drift settings: " + "; ".join(problems))


class DriftTracker:
    """Keeps the windows per (model, route) and writes the drift gauges into ``totals``.

    ``add_summary`` takes label values already under the label budget. ``publish`` recomputes the
    keys that changed since the last call (all of them when the windows move).
    """

    def __init__(self, config: DriftConfig, totals: Totals, state: Mapping[str, Any] | None = None) -> None:
        self._config = config
        self._totals = totals
        self._series: dict[SeriesKey, Series] = {}
        self._watermark = 0
        self._dirty: set[SeriesKey] = set()
        if state is not None and state.get("config") == self._config_json():
            self._restore(state)
        # Gauges restored with the totals stay as they were (KLL merges are randomised: recomputing
        # them would move them within the sketch error for no new data), except for series changed
        # after the last publish, and series that no longer exist, which lose theirs.
        self._published: dict[SeriesKey, set[FeatureKey]] = {}
        for model, route, feature, dimension in list(totals.values[PSI_METRIC]):
            self._published.setdefault((model, route), set()).add((feature, dimension))
        self._dirty |= set(self._published) - set(self._series)

    # --- windows ------------------------------------------------------------------------------------

    @property
    def watermark(self) -> int:
        return self._watermark

    def _current_start(self) -> int:
        c = self._config
        return floor(self._watermark, c.bucket_s) - c.current_s + c.bucket_s

    def _trailing_start(self) -> int:
        c = self._config
        return floor(self._current_start() - c.reference_s, c.reference_bucket_s)

    def _advance(self, watermark: int) -> None:
        before = self._current_start()
        self._watermark = watermark
        self._totals.set(WATERMARK, (), float(watermark))
        current_start = self._current_start()
        if current_start == before:
            return
        c = self._config
        trailing_start = self._trailing_start()
        for key, series in self._series.items():
            for start in [s for s in series.fine if s < current_start]:
                agg = series.fine.pop(start)
                if c.reference is Reference.TRAILING and start >= trailing_start:
                    series.coarse.setdefault(floor(start, c.reference_bucket_s), Aggregate()).merge(agg)
            for start in [s for s in series.coarse if s < trailing_start]:
                del series.coarse[start]
            series.reference_changed()
            self._dirty.add(key)

    def add_summary(
        self, model: str, route: str, dimension: str, summary: summary_pb2.Summary, record_s: float = 0.0
    ) -> None:
        """Add one partial's sketches and counts; ``dimension`` is the label value of its dimension
        ("" for event-level partials), ``record_s`` the Kafka time of its record (0: unknown)."""
        facts: list[tuple[FeatureKey, Any, Mapping[str, float] | None]] = []
        try:
            if not summary.dimension:
                if summary.response_chars_sketch:
                    sketch = sketch_from(summary.response_chars_sketch)
                    facts.append(((Feature.RESPONSE_CHARS.value, ""), sketch, None))
                for name, raw in sorted(summary.response_stat_sketches.items()):
                    if name not in _STATISTICS:
                        self._totals.inc(SKIPPED, ("unknown_statistic",))
                    elif raw:
                        facts.append(((Feature.EMBEDDING.value, name), sketch_from(raw), None))
            else:
                if summary.score_sketch:
                    sketch = sketch_from(summary.score_sketch)
                    facts.append(((Feature.SCORE.value, dimension), sketch, None))
                if summary.dimension == Dimension.REFUSAL and summary.label_counts:
                    refused = sum(n for label, n in summary.label_counts.items() if label in REFUSING)
                    refusals = {
                        "refusal": float(refused),
                        "other": float(sum(summary.label_counts.values()) - refused),
                    }
                    facts.append(((Feature.REFUSAL_RATE.value, dimension), None, refusals))
        except ValueError:  # datasketches: "Possible corruption" of a serialized sketch
            self._totals.inc(SKIPPED, ("bad_sketch",))
            return
        if not facts:
            return
        minute = int(summary.window_start_unix)
        clock = min(minute, int(record_s)) if record_s > 0 else minute
        if clock > self._watermark:
            self._advance(clock)
        c = self._config
        key = (model, route)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = Series()
        targets: list[Aggregate] = []
        if c.reference is Reference.PINNED:
            if series.baseline_start is None:
                series.baseline_start = c.baseline_start if c.baseline_start is not None else minute
            if series.baseline_start <= minute < series.baseline_start + c.reference_s:
                if series.baseline is None:
                    series.baseline = Aggregate()
                targets.append(series.baseline)
                series.reference_changed()
        current_start = self._current_start()
        if minute >= current_start:
            targets.append(series.fine.setdefault(floor(minute, c.bucket_s), Aggregate()))
        elif c.reference is Reference.TRAILING and minute >= self._trailing_start():
            targets.append(series.coarse.setdefault(floor(minute, c.reference_bucket_s), Aggregate()))
            series.reference_changed()
        if not targets:
            self._totals.inc(SKIPPED, ("late",))
            return
        for agg in targets:
            for feature_key, sketch, counts in facts:
                if sketch is not None:
                    agg.add_sketch(feature_key, sketch)
                if counts is not None:
                    agg.add_counts(feature_key, counts)
        self._dirty.add(key)

    # --- gauges -------------------------------------------------------------------------------------

    def compare(self, model: str, route: str) -> dict[FeatureKey, Comparison]:
        """Every feature of ``(model, route)`` with enough items in both windows, compared."""
        series = self._series.get((model, route))
        if series is None:
            return {}
        current = merged(series.fine.values())
        reference = series.reference(self._config.reference)
        out: dict[FeatureKey, Comparison] = {}
        for key in sorted(current.keys() & reference.keys()):
            if min(current.n(key), reference.n(key)) < self._config.min_samples:
                continue
            if key[0] == Feature.REFUSAL_RATE:
                out[key] = compare_counts(reference.counts[key], current.counts[key])
            else:
                out[key] = compare_sketches(
                    reference.sketches[key], current.sketches[key], bins=self._config.bins
                )
        return out

    def publish(self) -> None:
        """Recompute the gauges of every (model, route) that changed."""
        values = self._totals.values
        for model, route in sorted(self._dirty):
            results = self.compare(model, route)
            for feature, dimension in self._published.get((model, route), set()) - set(results):
                for name in (PSI_METRIC, PVALUE_METRIC, CURRENT_N, REFERENCE_N):
                    values[name].pop((model, route, feature, dimension), None)
            for (feature, dimension), cmp in results.items():
                labels = (model, route, feature, dimension)
                values[PSI_METRIC][labels] = cmp.psi
                values[PVALUE_METRIC][labels] = cmp.p_value
                values[CURRENT_N][labels] = cmp.current_n
                values[REFERENCE_N][labels] = cmp.reference_n
            if results:
                self._published[(model, route)] = set(results)
            else:
                self._published.pop((model, route), None)
        self._dirty.clear()

    # --- state --------------------------------------------------------------------------------------

    def _config_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, StrEnum) else v) for k, v in asdict(self._config).items()}

    def state(self) -> dict[str, Any]:
        return {
            "config": self._config_json(),
            "watermark": self._watermark,
            "unpublished": sorted(self._dirty),
            "series": [
                {
                    "model": model,
                    "route": route,
                    "baseline_start": s.baseline_start,
                    "baseline": None if s.baseline is None else s.baseline.to_json(),
                    "fine": [[start, agg.to_json()] for start, agg in sorted(s.fine.items())],
                    "coarse": [[start, agg.to_json()] for start, agg in sorted(s.coarse.items())],
                }
                for (model, route), s in self._series.items()
            ],
        }

    def _restore(self, state: Mapping[str, Any]) -> None:
        self._watermark = int(state["watermark"])
        self._dirty = {(str(model), str(route)) for model, route in state["unpublished"]}
        for doc in state["series"]:
            series = Series()
            series.baseline_start = None if doc["baseline_start"] is None else int(doc["baseline_start"])
            if doc["baseline"] is not None:
                series.baseline = Aggregate.from_json(doc["baseline"])
            series.fine = {int(start): Aggregate.from_json(agg) for start, agg in doc["fine"]}
            series.coarse = {int(start): Aggregate.from_json(agg) for start, agg in doc["coarse"]}
            self._series[(str(doc["model"]), str(doc["route"]))] = series
