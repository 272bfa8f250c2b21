"""The judge cascade: batched calls to judge tiers, escalation by calibrated thresholds, dead letters.

For each dimension in the cascade config, tiers are tried in order. A tier's judgement is accepted
when its confidence is at least that tier's threshold for the judgement's confidence source
(``TierRule.thresholds``: a threshold fitted on one source applies to that source only); otherwise
the item escalates to the next tier listed for the dimension. A judgement from a source the tier has
no threshold for escalates the same way and is counted (``CascadeOutcome.source_mismatches``, logged
per batch). When the last tier is not confident either, its label is kept with
``needs_audit`` set, and the verdict is also sent to the audit output for humans.

Failures (documented rule): when a tier cannot answer for an item (the server is unavailable past
the deadline, rejects the request, or returns a per-item error) and a later tier is listed for the
dimension, the item escalates to it; when it was the last tier, the whole event becomes a dead
letter (stage ``judge``) with the reason. An event yields a verdict only when every dimension was
decided, so each sampled event ends as exactly one verdict or one dead letter.

A tier whose circuit breaker is open (``pipelines/evalstream/pipeline/judge_client.py``) fails at once with
``JudgeUnavailable``, so the same rule applies without waiting out the deadline. The breakers
outlive each micro-batch's pipeline (``judge_cascade.SharedBreakers``).

Response statistics (``ItemResult.stats``, e.g. tier 1's embedding statistics) that a tier returns
for an item it answered are kept on the event's verdict (``Verdict.response_stats``; when two tiers
return the same statistic, the later tier's value is kept).

**Embedding probe** (``EmbeddingProbe``). Tier 1 sees only what tier 0 escalated, a biased subset, so
its statistics alone would describe the escalated responses, not the traffic. The probe's sample is a
deterministic ``fraction`` of the sampled events (a salted hash of the event id, independent of the
sampler's hash): every event of the sample that gets a verdict carries ``Verdict.embedding_probe``,
and those of them whose verdict did not involve the probe's tier are sent to it in one extra request
per batch, for the statistics only (asking for the dimensions the cascade routes to that tier, or all
of them when it routes none). So the sample is a uniform sample of judged events, which is what the
summaries build their statistics sketches from (``summarise.py``). The probe never changes a label or
a dimension's ``tiers_tried``; its requests count in ``CascadeOutcome.calls`` and, per item, in the
event-level summary's ``calls_by_tier``. A probe that fails (the tier is unavailable, its circuit is
open, it rejects the request or returns no statistics for an item) never dead-letters an event nor
changes its verdict: the verdict's ``embedding_probe.error`` says why there are no statistics, a
warning is logged per batch, and the summaries count it (``embedding_probe_failures``). The probe is
off when its fraction is 0 or its tier has no endpoint. With no circuit breaker, a probe to a tier
that is down waits out the judge deadline once per batch.

**Recorded judgements and the calibration sample.** Every dimension verdict keeps each tier's
judgement it got (``DimensionVerdict.judgements``, ``Judgement.tier`` set here), so recalibration can
read them from Kafka. Events in the calibration sample (``calibration_sample.py``) are asked of every
tier of each dimension past the deciding one too, and of the dimension's ``shadow_tiers`` that have a
judge endpoint (shadow judging: a tier a recalibration dropped stays judged, so a later one can bring
it back): recorded and paid for, never changing the verdict nor ``tiers_tried``; their verdicts carry
``calibration_sample`` and go to the audit output.

The core (``judge_batch``) is pure given a ``call`` function; the Beam step (``judge_cascade.py``)
wires real gRPC clients.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from opentelemetry import trace

from evalstream.pipeline.calibration_sample import CalibrationSample
from evalstream.pipeline.judge_client import JudgeError, JudgeRejected
from evalstream.pipeline.records import DeadReason, SampledEvent, Stage, dead_letter, timestamp
from evalstream.pipeline.sampling import unit_hash
from evalstream.v1 import judge_pb2, verdict_pb2
from evalstream.wire.cascade_config import CascadeConfig, Threshold, threshold_for
from evalstream.wire.dimensions import Tier

__all__ = [
    "AUDIT",
    "DEAD",
    "DEFAULT_PROBE_FRACTION",
    "Call",
    "CascadeOutcome",
    "EmbeddingProbe",
    "judge_batch",
]

DEAD = "dead"
AUDIT = "audit"
#: Share of sampled events in the embedding probe's sample (see the module docstring).
DEFAULT_PROBE_FRACTION = 0.1
#: Salts the probe's hash of the event id, so its sample is independent of the sampler's.
PROBE_SALT = "embedding-probe-v1:"

log = logging.getLogger("evalstream.pipeline.cascade")

Call = Callable[[int, judge_pb2.JudgeRequest], judge_pb2.JudgeResponse]

_tracer = trace.get_tracer("evalstream.pipeline.cascade")


@dataclass(slots=True)
class _DimState:
    tiers: list[tuple[int, Threshold]]  # the decision tiers: (tier, threshold or thresholds by source)
    tried: list[int] = field(default_factory=list)
    cost: verdict_pb2.Cost = field(default_factory=verdict_pb2.Cost)
    decided: verdict_pb2.DimensionVerdict | None = None
    failure: tuple[DeadReason, str] | None = None
    judgements: list[verdict_pb2.Judgement] = field(default_factory=list)  # every tier's, as asked
    shadow: bool = False  # in the calibration sample: every tier is asked (calibration_sample.py)
    shadow_tiers: tuple[int, ...] = ()  # in the sample: tiers asked besides the decision tiers

    def next_tier(self) -> int | None:
        if (self.decided is not None and not self.shadow) or self.failure is not None:
            return None
        order = sorted({t for t, _ in self.tiers} | set(self.shadow_tiers))
        done = len(self.tried)
        return order[done] if done < len(order) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbeddingProbe:
    """Which events are in the embedding probe's sample, and the tier whose statistics it wants."""

    fraction: float = DEFAULT_PROBE_FRACTION
    tier: int = int(Tier.ENCODER)

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"embedding probe fraction must be in [0, 1], got {self.fraction}")

    def in_sample(self, event_id: str) -> bool:
        return self.fraction > 0 and unit_hash(PROBE_SALT + event_id) < self.fraction


@dataclass(frozen=True, slots=True)
class CascadeOutcome:
    verdicts: list[verdict_pb2.Verdict]
    dead: list[verdict_pb2.DeadLetter]
    audits: list[verdict_pb2.Verdict]
    calls: dict[int, int]  # judge calls (requests) per tier
    #: judgements not accepted because their tier has no threshold for their confidence source,
    #: by ``(dimension, tier, source)``
    source_mismatches: Counter[tuple[str, int, str]] = field(default_factory=Counter)


def _add_cost(total: verdict_pb2.Cost, part: verdict_pb2.Cost) -> None:
    total.input_tokens += part.input_tokens
    total.output_tokens += part.output_tokens
    total.latency_ms += part.latency_ms
    total.usd += part.usd


def _failure(exc: JudgeError) -> tuple[DeadReason, str]:
    reason = DeadReason.JUDGE_REJECTED if isinstance(exc, JudgeRejected) else DeadReason.JUDGE_UNAVAILABLE
    return reason, str(exc)


def judge_batch(
    items: Sequence[SampledEvent],
    *,
    cascade: CascadeConfig,
    call: Call,
    now: datetime,
    probe: EmbeddingProbe | None = None,
    sample: CalibrationSample | None = None,
    reachable: Collection[int] | None = None,
) -> CascadeOutcome:
    """Run the cascade for a batch. ``call(tier, request)`` raises ``JudgeError`` on failure.

    ``probe``: the embedding probe (None: off); ``sample``: the calibration sample (None: off);
    ``reachable``: the tiers with a judge endpoint (None: all), the shadow tiers the sample may ask."""
    stats: list[dict[str, float]] = [{} for _ in items]
    shadow = [sample is not None and sample.in_sample(item.event.event_id) for item in items]
    states = [
        {
            dim: _DimState(
                tiers=[(t.tier, t.thresholds()) for t in spec.tiers],
                shadow=shadow[i],
                shadow_tiers=tuple(t for t in spec.shadow_tiers if reachable is None or t in reachable)
                if shadow[i]
                else (),
            )
            for dim, spec in cascade.dimensions.items()
        }
        for i, _ in enumerate(items)
    ]
    calls: dict[int, int] = {}
    mismatches: Counter[tuple[str, int, str]] = Counter()
    for tier in sorted(
        {t for dims in states for st in dims.values() for t in st.shadow_tiers} | set(cascade.tiers)
    ):
        wanted = [
            (i, sorted(d for d, st in dims.items() if st.next_tier() == tier))
            for i, dims in enumerate(states)
        ]
        wanted = [(i, ds) for i, ds in wanted if ds]
        if not wanted:
            continue
        dimensions = sorted({d for _, ds in wanted for d in ds})
        request = judge_pb2.JudgeRequest(
            items=[
                judge_pb2.JudgeItem(item_id=items[i].event.event_id, event=items[i].event) for i, _ in wanted
            ],
            dimensions=dimensions,
        )
        calls[tier] = calls.get(tier, 0) + 1
        with _tracer.start_as_current_span("evalstream.judge") as span:
            span.set_attribute("evalstream.judge.tier", tier)
            span.set_attribute("evalstream.event_ids", [items[i].event.event_id for i, _ in wanted])
            try:
                response = call(tier, request)
                failure: tuple[DeadReason, str] | None = None
            except JudgeError as exc:
                failure = _failure(exc)
                span.record_exception(exc)
        if failure is None and len(response.results) != len(wanted):
            failure = (
                DeadReason.JUDGE_ITEM_ERROR,
                f"judge tier {tier} answered {len(response.results)} results for {len(wanted)} items",
            )
        for pos, (i, ds) in enumerate(wanted):
            result = None if failure else response.results[pos]
            by_dim = {j.dimension: j for j in result.judgements} if result else {}
            dim_errors = {e.dimension: e for e in result.dimension_errors} if result else {}
            if result is not None and not result.error:
                stats[i].update(result.stats)
            for dim in ds:
                st = states[i][dim]
                st.tried.append(tier)
                thresholds = dict(st.tiers)
                last = tier == st.tiers[-1][0]  # the last decision tier
                problem = failure
                if problem is None and result is not None and result.error:
                    problem = (
                        DeadReason.JUDGE_ITEM_ERROR,
                        f"tier {tier}: {result.error_type}: {result.error}",
                    )
                judgement = by_dim.get(dim)
                if problem is None and judgement is None and (err := dim_errors.get(dim)) is not None:
                    problem = (DeadReason.JUDGE_ITEM_ERROR, f"tier {tier}: {err.error_type}: {err.error}")
                if problem is None and judgement is None:
                    problem = (DeadReason.JUDGE_ITEM_ERROR, f"tier {tier} returned no {dim!r} judgement")
                if problem is not None or judgement is None:
                    if last and st.decided is None:
                        st.failure = problem
                    continue
                judgement.tier = tier
                st.judgements.append(judgement)
                if st.decided is not None or tier not in thresholds:  # shadow judging: recorded and
                    # paid for, the verdict stands
                    _add_cost(st.decided.cost if st.decided is not None else st.cost, judgement.cost)
                    continue
                _add_cost(st.cost, judgement.cost)
                threshold = threshold_for(thresholds[tier], judgement.confidence_source)
                if threshold is None:
                    mismatches[(dim, tier, judgement.confidence_source)] += 1
                accepted = threshold is not None and judgement.confidence >= threshold
                if accepted or last:
                    st.decided = verdict_pb2.DimensionVerdict(
                        dimension=dim,
                        label=judgement.label,
                        score=judgement.score,
                        confidence=judgement.confidence,
                        deciding_tier=tier,
                        tiers_tried=[t for t in st.tried if t in thresholds],
                        cost=st.cost,
                        judge=judgement.judge,
                        needs_audit=not accepted,
                        confidence_source=judgement.confidence_source,
                    )

    probed = (
        _probe(items, states, stats, cascade=cascade, probe=probe, call=call, calls=calls)
        if probe is not None and probe.fraction > 0
        else {}
    )
    verdicts: list[verdict_pb2.Verdict] = []
    dead: list[verdict_pb2.DeadLetter] = []
    audits: list[verdict_pb2.Verdict] = []
    version = cascade.version
    for index, (item, dims) in enumerate(zip(items, states, strict=True)):
        event = item.event
        failed = [(d, st.failure) for d, st in sorted(dims.items()) if st.failure is not None]
        if failed:
            reasons = {f[0] for _, f in failed if f}
            reason = DeadReason.JUDGE_UNAVAILABLE if DeadReason.JUDGE_UNAVAILABLE in reasons else min(reasons)
            dead.append(
                dead_letter(
                    raw=event.SerializeToString(),
                    stage=Stage.JUDGE,
                    reason=reason,
                    message="; ".join(f"{d}: {f[1]}" for d, f in failed if f),
                    source=None,
                    failed_at=now,
                    event_id=event.event_id,
                    model=event.model,
                )
            )
            continue
        verdict = verdict_pb2.Verdict(
            event_id=event.event_id,
            event_time=event.event_time,
            model=event.model,
            model_version=event.model_version,
            route=event.route,
            dimensions=[st.decided for _, st in sorted(dims.items()) if st.decided is not None],
            sample_rate=item.sample_rate,
            forced=item.forced,
            judged_at=timestamp(now),
            cascade_version=version,
            response_chars=len(event.response),
            response_stats=stats[index],
            calibration_sample=shadow[index],
        )
        for decided in verdict.dimensions:
            decided.judgements.extend(dims[decided.dimension].judgements)
        if index in probed:
            verdict.embedding_probe.CopyFrom(probed[index])
        verdicts.append(verdict)
        if verdict.calibration_sample or any(d.needs_audit for d in verdict.dimensions):
            audits.append(verdict)
    if mismatches:
        log.warning(
            "judgements escalated for want of a threshold for their confidence source "
            "(dimension, tier, source: count): %s; recalibrate on data with these sources",
            ", ".join(f"{d}, {t}, {s or 'unsaid'}: {n}" for (d, t, s), n in sorted(mismatches.items())),
        )
    return CascadeOutcome(
        verdicts=verdicts, dead=dead, audits=audits, calls=calls, source_mismatches=mismatches
    )


def _probe(
    items: Sequence[SampledEvent],
    states: Sequence[dict[str, _DimState]],
    stats: list[dict[str, float]],
    *,
    cascade: CascadeConfig,
    probe: EmbeddingProbe,
    call: Call,
    calls: dict[int, int],
) -> dict[int, verdict_pb2.EmbeddingProbe]:
    """The embedding probe for the events of the batch that will get a verdict: marks those in its
    sample, calls its tier for those the cascade did not send there, and adds their statistics."""
    tier = probe.tier
    marks: dict[int, verdict_pb2.EmbeddingProbe] = {}
    to_call: list[int] = []
    for i, (item, dims) in enumerate(zip(items, states, strict=True)):
        if any(st.failure is not None for st in dims.values()) or not probe.in_sample(item.event.event_id):
            continue
        if any(tier in st.tried for st in dims.values()):
            missing = "" if stats[i] else f"tier {tier} judged the event but returned no statistics"
            marks[i] = verdict_pb2.EmbeddingProbe(tier=tier, error=missing)
        else:
            to_call.append(i)
    if to_call:
        dimensions = sorted(
            d for d, spec in cascade.dimensions.items() if any(t.tier == tier for t in spec.tiers)
        )
        request = judge_pb2.JudgeRequest(
            items=[
                judge_pb2.JudgeItem(item_id=items[i].event.event_id, event=items[i].event) for i in to_call
            ],
            dimensions=dimensions,
        )
        calls[tier] = calls.get(tier, 0) + 1
        error = ""
        with _tracer.start_as_current_span("evalstream.embedding_probe") as span:
            span.set_attribute("evalstream.judge.tier", tier)
            span.set_attribute("evalstream.event_ids", [items[i].event.event_id for i in to_call])
            try:
                response = call(tier, request)
            except JudgeError as exc:
                error = f"embedding probe: {exc}"
                span.record_exception(exc)
        if not error and len(response.results) != len(to_call):
            answered = len(response.results)
            error = f"embedding probe: tier {tier} answered {answered} results for {len(to_call)} items"
        for pos, i in enumerate(to_call):
            problem = error
            if not problem:
                result = response.results[pos]
                if result.error:
                    problem = f"embedding probe: tier {tier}: {result.error_type}: {result.error}"
                elif not result.stats:
                    problem = f"embedding probe: tier {tier} returned no statistics"
                else:
                    stats[i].update(result.stats)
            marks[i] = verdict_pb2.EmbeddingProbe(tier=tier, called=True, error=problem)
    failures = [m.error for m in marks.values() if m.error]
    if failures:
        log.warning(
            "embedding probe: %d of %d sampled events got no statistics from tier %d (verdicts unchanged); "
            "first reason: %s",
            len(failures),
            len(marks),
            tier,
            failures[0],
        )
    return marks
