"""Summarise: mergeable partial aggregates per (model, model_version, route, dimension, minute).

Every input record of a batch is accounted for in the event-level summaries (``dimension == ""``):
``events_in = unsampled + judged + dead_lettered``, with dead letters counted by reason (decode
failures have no model and land under model ``""``). Response lengths go into a KLL sketch for
drift. Verdicts in the embedding probe's sample (``Verdict.embedding_probe``, a uniform sample of
judged events: ``cascade.py``) add their response statistics to one KLL sketch per statistic
(``response_stat_sketches``), are counted (``embedding_probe_events``, and ``_failures`` for those
without statistics), and their probe calls count in ``calls_by_tier``. Verdicts outside the sample
keep their statistics (e.g. from tier 1 after an escalation) but add none to the sketches: those
would describe the escalated responses, not the traffic. Dimension-level summaries carry label
counts, score sums and a KLL sketch of scores. Every summary carries the batch id, so a consumer can
apply each partial once.

In Beam, each input element is a batch (a list of unsampled events, verdicts or dead letters): it is
folded into one accumulator per key where it is, and only those partials are merged per key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import apache_beam as beam
from datasketches import kll_floats_sketch

from evalstream.pipeline.batch_clock import BatchClock, batch_id_of
from evalstream.v1 import events_pb2, summary_pb2, verdict_pb2

__all__ = ["Summarise", "SummaryKey", "summaries_from"]

KLL_K = 200


class SummaryKey(NamedTuple):
    """A plain tuple on the wire, so Beam groups it with its deterministic tuple coder."""

    model: str
    model_version: str
    route: str
    dimension: str
    window_start_unix: int


@dataclass(slots=True)
class _Acc:
    events_in: int = 0
    unsampled: int = 0
    judged: int = 0
    dead: int = 0
    duplicates: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    chars_sum: float = 0.0
    labels: Counter[str] = field(default_factory=Counter)
    score_sum: float = 0.0
    score_sq_sum: float = 0.0
    confidence_sum: float = 0.0
    audits: int = 0
    decided_by_tier: Counter[int] = field(default_factory=Counter)
    calls_by_tier: Counter[int] = field(default_factory=Counter)
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: float = 0.0
    usd: float = 0.0
    sketch: kll_floats_sketch | None = None
    probe_events: int = 0
    probe_failures: int = 0
    stat_sketches: dict[str, kll_floats_sketch] = field(default_factory=dict)

    def __getstate__(self) -> dict[str, object]:
        # datasketches objects do not pickle; Beam pickles accumulators between stages.
        state = {name: getattr(self, name) for name in self.__slots__}
        state["sketch"] = self.sketch.serialize() if self.sketch is not None else None
        state["stat_sketches"] = {name: s.serialize() for name, s in self.stat_sketches.items()}
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        raw = state.pop("sketch")
        stats = state.pop("stat_sketches")
        for name, value in state.items():
            setattr(self, name, value)
        self.sketch = kll_floats_sketch.deserialize(raw) if isinstance(raw, bytes) else None
        assert isinstance(stats, dict)
        self.stat_sketches = {str(name): kll_floats_sketch.deserialize(b) for name, b in stats.items()}

    def observe(self, value: float) -> None:
        if self.sketch is None:
            self.sketch = kll_floats_sketch(KLL_K)
        self.sketch.update(value)

    def observe_stat(self, name: str, value: float) -> None:
        sketch = self.stat_sketches.get(name)
        if sketch is None:
            sketch = self.stat_sketches[name] = kll_floats_sketch(KLL_K)
        sketch.update(value)

    def merge(self, other: _Acc) -> None:
        for name in (
            "events_in", "unsampled", "judged", "dead", "duplicates", "chars_sum", "score_sum",
            "score_sq_sum", "confidence_sum", "audits", "input_tokens", "output_tokens", "latency_ms", "usd",
            "probe_events", "probe_failures",
        ):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.reasons.update(other.reasons)
        self.labels.update(other.labels)
        self.decided_by_tier.update(other.decided_by_tier)
        self.calls_by_tier.update(other.calls_by_tier)
        if other.sketch is not None:
            if self.sketch is None:
                self.sketch = kll_floats_sketch(KLL_K)
            self.sketch.merge(other.sketch)
        for name, sketch in other.stat_sketches.items():
            mine = self.stat_sketches.get(name)
            if mine is None:
                mine = self.stat_sketches[name] = kll_floats_sketch(KLL_K)
            mine.merge(sketch)


def _minute(seconds: int) -> int:
    return seconds - seconds % 60


Fact = tuple[object, verdict_pb2.DimensionVerdict | None]


def _facts(element: object) -> Iterator[tuple[SummaryKey, Fact]]:
    """Key one unsampled event, verdict or dead letter (and each verdict dimension) for merging."""
    if isinstance(element, events_pb2.LLMEvent):
        minute = _minute(element.event_time.seconds)
        yield SummaryKey(element.model, element.model_version, element.route, "", minute), (element, None)
    elif isinstance(element, verdict_pb2.Verdict):
        minute = _minute(element.event_time.seconds)
        yield SummaryKey(element.model, element.model_version, element.route, "", minute), (element, None)
        for dim in element.dimensions:
            key = SummaryKey(element.model, element.model_version, element.route, dim.dimension, minute)
            yield key, (element, dim)
    elif isinstance(element, verdict_pb2.DeadLetter):
        yield SummaryKey(element.model, "", "", "", _minute(element.failed_at.seconds)), (element, None)
    else:
        raise TypeError(f"Summarise takes LLMEvent, Verdict or DeadLetter, got {type(element).__name__}")


def _apply(acc: _Acc, fact: Fact) -> None:
    element, dim = fact
    if dim is not None:
        acc.score_sum += dim.score
        acc.score_sq_sum += dim.score * dim.score
        acc.confidence_sum += dim.confidence
        acc.audits += int(dim.needs_audit)
        acc.input_tokens += dim.cost.input_tokens
        acc.output_tokens += dim.cost.output_tokens
        acc.latency_ms += dim.cost.latency_ms
        acc.usd += dim.cost.usd
        acc.labels[dim.label] += 1
        acc.decided_by_tier[dim.deciding_tier] += 1
        acc.calls_by_tier.update(dim.tiers_tried)
        # shadow judging of the calibration sample (calibration_sample.py): tiers asked past the decision
        acc.calls_by_tier.update(j.tier for j in dim.judgements if j.tier not in dim.tiers_tried)
        acc.observe(dim.score)
        return
    acc.events_in += 1
    if isinstance(element, events_pb2.LLMEvent):
        acc.unsampled += 1
        acc.chars_sum += len(element.response)
        acc.observe(len(element.response))
    elif isinstance(element, verdict_pb2.Verdict):
        acc.judged += 1
        acc.chars_sum += element.response_chars
        acc.observe(element.response_chars)
        if element.HasField("embedding_probe"):
            probe = element.embedding_probe
            acc.probe_events += 1
            acc.probe_failures += int(bool(probe.error))
            if probe.called:
                acc.calls_by_tier[probe.tier] += 1
            for name, value in element.response_stats.items():
                acc.observe_stat(name, value)
    elif isinstance(element, verdict_pb2.DeadLetter):
        acc.dead += 1
        acc.duplicates += int(element.error_type == "duplicate_event_id")
        acc.reasons[element.error_type] += 1


def _to_summary(key: SummaryKey, acc: _Acc, batch_id: str, cascade_version: str = "") -> summary_pb2.Summary:
    summary = summary_pb2.Summary(
        batch_id=batch_id,
        cascade_version=cascade_version,
        model=key.model,
        model_version=key.model_version,
        route=key.route,
        dimension=key.dimension,
        window_start_unix=key.window_start_unix,
    )
    if key.dimension == "":
        summary.events_in = acc.events_in
        summary.unsampled = acc.unsampled
        summary.judged = acc.judged
        summary.dead_lettered = acc.dead
        summary.duplicates = acc.duplicates
        summary.dead_letter_reasons.update(acc.reasons)
        summary.response_chars_sum = acc.chars_sum
        if acc.sketch is not None:
            summary.response_chars_sketch = acc.sketch.serialize()
        summary.calls_by_tier.update(acc.calls_by_tier)
        summary.embedding_probe_events = acc.probe_events
        summary.embedding_probe_failures = acc.probe_failures
        for name, sketch in sorted(acc.stat_sketches.items()):
            summary.response_stat_sketches[name] = sketch.serialize()
    else:
        summary.label_counts.update(acc.labels)
        summary.score_sum = acc.score_sum
        summary.score_sq_sum = acc.score_sq_sum
        summary.confidence_sum = acc.confidence_sum
        summary.audits = acc.audits
        summary.decided_by_tier.update(acc.decided_by_tier)
        summary.calls_by_tier.update(acc.calls_by_tier)
        summary.input_tokens = acc.input_tokens
        summary.output_tokens = acc.output_tokens
        summary.judge_latency_ms_sum = acc.latency_ms
        summary.cost_usd = acc.usd
        if acc.sketch is not None:
            summary.score_sketch = acc.sketch.serialize()
    return summary


def _partials(elements: Iterable[object]) -> dict[SummaryKey, _Acc]:
    accs: dict[SummaryKey, _Acc] = {}
    for element in elements:
        for key, fact in _facts(element):
            acc = accs.get(key)
            if acc is None:
                acc = accs[key] = _Acc()
            _apply(acc, fact)
    return accs


def summaries_from(
    elements: Iterable[object], batch_id: str, cascade_version: str = ""
) -> list[summary_pb2.Summary]:
    """The pure form of ``Summarise``: the same summaries from a plain iterable (tests, backfill)."""
    accs = _partials(elements)
    return [
        _to_summary(k, a, batch_id, cascade_version)
        for k, a in sorted(accs.items(), key=lambda kv: _sort_key(kv[0]))
    ]


def _sort_key(key: SummaryKey) -> tuple[str, str, str, str, int]:
    return (key.model, key.model_version, key.route, key.dimension, key.window_start_unix)


class _MergeAcc(beam.CombineFn):
    """Merges the partial accumulators of the batches."""

    def create_accumulator(self) -> _Acc:
        return _Acc()

    def add_input(self, acc: _Acc, partial: _Acc) -> _Acc:
        acc.merge(partial)
        return acc

    def merge_accumulators(self, accumulators: Iterable[_Acc]) -> _Acc:
        out = _Acc()
        for acc in accumulators:
            out.merge(acc)
        return out

    def extract_output(self, acc: _Acc) -> _Acc:
        return acc


class Summarise(beam.PTransform):
    """Batches of (unsampled events, verdicts, dead letters) -> Summary partials for one batch id."""

    def __init__(self, batch_id: str | BatchClock, cascade_version: str = "") -> None:
        super().__init__()
        self._batch_id = batch_id
        self._cascade_version = cascade_version

    def expand(self, batches: beam.pvalue.PCollection) -> beam.pvalue.PCollection:
        batch_id, version = self._batch_id, self._cascade_version
        return (
            batches
            | "Partials" >> beam.FlatMap(lambda batch: ((tuple(k), a) for k, a in _partials(batch).items()))
            | "MergePerKey" >> beam.CombinePerKey(_MergeAcc())
            | "ToSummary"
            >> beam.MapTuple(
                lambda key, acc: _to_summary(SummaryKey(*key), acc, batch_id_of(batch_id), version)
            )
        )
