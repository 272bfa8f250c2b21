"""Drift's windows: per model, route and feature, mergeable sketches and label counts per time bucket,
merged into the current window and the reference. Saved and restored with the exporter's state;
``drift.DriftTracker`` compares them (``drift_stats``).
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from datasketches import kll_floats_sketch

__all__ = [
    "Aggregate",
    "Feature",
    "FeatureKey",
    "Reference",
    "Series",
    "SeriesKey",
    "floor",
    "merged",
    "sketch_from",
]


class Feature(StrEnum):
    RESPONSE_CHARS = "response_chars"
    SCORE = "score"
    REFUSAL_RATE = "refusal_rate"
    EMBEDDING = "embedding"


class Reference(StrEnum):
    TRAILING = "trailing"
    PINNED = "pinned"


# --- windows ---------------------------------------------------------------------------------------

FeatureKey = tuple[str, str]  # (feature, dimension)
SeriesKey = tuple[str, str]  # (model, route)
GaugeKey = tuple[str, str, str, str]  # (model, route, feature, dimension)


def sketch_from(raw: bytes) -> Any:
    return kll_floats_sketch.deserialize(raw)


def _copy(sketch: Any) -> Any:
    out = kll_floats_sketch(sketch.k)
    out.merge(sketch)
    return out


class Aggregate:
    """Sketches and category counts per feature, for one bucket (or a merge of buckets)."""

    __slots__ = ("_json", "counts", "sketches")

    def __init__(self) -> None:
        self.sketches: dict[FeatureKey, Any] = {}
        self.counts: dict[FeatureKey, Counter[str]] = {}
        self._json: dict[str, Any] | None = None

    def add_sketch(self, key: FeatureKey, sketch: Any, *, owned: bool = False) -> None:
        mine = self.sketches.get(key)
        if mine is None:
            self.sketches[key] = sketch if owned else _copy(sketch)
        else:
            mine.merge(sketch)
        self._json = None

    def add_counts(self, key: FeatureKey, counts: Mapping[str, float]) -> None:
        self.counts.setdefault(key, Counter()).update(counts)
        self._json = None

    def merge(self, other: Aggregate) -> None:
        for key, sketch in other.sketches.items():
            self.add_sketch(key, sketch)
        for key, counts in other.counts.items():
            self.add_counts(key, counts)

    def n(self, key: FeatureKey) -> float:
        if key[0] == Feature.REFUSAL_RATE:
            return float(sum(self.counts.get(key, {}).values()))
        sketch = self.sketches.get(key)
        return 0.0 if sketch is None else float(sketch.n)

    def keys(self) -> set[FeatureKey]:
        return set(self.sketches) | set(self.counts)

    def to_json(self) -> dict[str, Any]:
        if self._json is None:  # cached: most buckets do not change between two saves
            self._json = {
                "sketches": [
                    [f, d, base64.b64encode(s.serialize()).decode()] for (f, d), s in self.sketches.items()
                ],
                "counts": [[f, d, dict(c)] for (f, d), c in self.counts.items()],
            }
        return self._json

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Aggregate:
        agg = cls()
        for f, d, raw in doc["sketches"]:
            agg.sketches[(str(f), str(d))] = sketch_from(base64.b64decode(raw))
        for f, d, counts in doc["counts"]:
            agg.counts[(str(f), str(d))] = Counter({str(k): float(v) for k, v in counts.items()})
        return agg


def merged(aggregates: Iterable[Aggregate]) -> Aggregate:
    out = Aggregate()
    for agg in aggregates:
        out.merge(agg)
    return out


class Series:
    """One model and route: current buckets, and trailing buckets or a pinned baseline."""

    __slots__ = ("_reference", "baseline", "baseline_start", "coarse", "fine")

    def __init__(self) -> None:
        self.fine: dict[int, Aggregate] = {}
        self.coarse: dict[int, Aggregate] = {}
        self.baseline: Aggregate | None = None
        self.baseline_start: int | None = None
        self._reference: Aggregate | None = None  # cache of the merged reference

    def reference(self, mode: Reference) -> Aggregate:
        if self._reference is None:
            if mode is Reference.PINNED:
                self._reference = self.baseline or Aggregate()
            else:
                self._reference = merged(self.coarse.values())
        return self._reference

    def reference_changed(self) -> None:
        self._reference = None


def floor(seconds: int, step: int) -> int:
    return seconds - seconds % step
