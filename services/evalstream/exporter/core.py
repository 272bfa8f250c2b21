"""The exporter's pure core: apply one decoded Verdict or Summary to the evaluation totals.

No Kafka, no HTTP, no clock: ``ExporterCore`` takes records and changes ``Totals``; ``publish``
hands a copy to the collector registered on the ``CollectorRegistry`` given to the constructor.
Tests apply records and read values back from their own registry.

What comes from where (the contract with the pipeline):

- event-level ``Summary`` (``dimension == ""``): events in, unsampled, judged, dead-lettered by
  reason, duplicates, response characters. ``events_in = unsampled + judged + dead_lettered``.
  "Sampled" is judged plus judge-stage dead letters (reasons named ``judge_*``): a sampled event
  ends as a verdict or as a judge failure.
- dimension-level ``Summary``: its counts duplicate the verdicts' and are ignored; its score
  sketch and refusal label counts feed drift.
- ``Verdict``: labels per dimension, the quality score, deciding tier and tiers tried (calls and
  escalations), audits, tokens, cost and judge latency, and the lag from event to verdict; the
  embedding probe (events in its sample, those left without statistics, and its extra calls, counted
  in ``evalstream_judge_calls_total`` with no dimension); each verdict also waits in the
  judge-agreement join for human labels.
- human label (``evalstream.labels``, JSON): joined to its verdict by event id (``agreement.py``).

Drift (``drift.py``) and judge agreement (``agreement.py``) keep their own state, saved with the
totals; their gauges are recomputed at ``publish``, from state that is saved by then.

A ``DimensionVerdict``'s cost is the sum over all tiers tried; the proto does not split it, so tokens,
cost and latency are attributed to the deciding tier (the only tier that spends tokens in a cascade
whose LLM tiers come last).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import CollectorRegistry

from evalstream.v1 import summary_pb2, verdict_pb2
from evalstream.wire.dimensions import Dimension
from evalstream.wire.labels import LabelRecordError, decode_label

from . import agreement as agreement_
from . import drift as drift_
from . import guarantee as guarantee_
from .agreement import AgreementConfig, AgreementTracker, VerdictDimension
from .drift import DriftConfig, DriftTracker
from .labels import LabelBudget, LabelFolder, LabelName
from .totals import Kind, MetricSpec, Totals, TotalsCollector

__all__ = ["JUDGE_REASON_PREFIX", "SPECS", "ExporterCore", "Outcome", "Stream"]

#: Dead-letter reasons of the judge stage start with this; such events were sampled.
JUDGE_REASON_PREFIX: Final = "judge_"


class Stream(StrEnum):
    """Which pipeline output a record came from (the ``stream`` label of the exporter's own metrics)."""

    VERDICTS = "verdicts"
    SUMMARIES = "summaries"
    LABELS = "labels"


class Outcome(StrEnum):
    APPLIED = "applied"
    IGNORED = "ignored"  # a dimension-level summary (counts come from verdicts); another annotator's label
    UNDECODABLE = "undecodable"


_M = (LabelName.MODEL, LabelName.MODEL_VERSION, LabelName.ROUTE)
_MD = (*_M, LabelName.DIMENSION)
_MDT = (*_MD, LabelName.TIER)

QUALITY_BUCKETS: Final = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)
JUDGE_LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
LAG_BUCKETS: Final = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

EVENTS: Final = "evalstream_events_total"
UNSAMPLED: Final = "evalstream_events_unsampled_total"
SAMPLED: Final = "evalstream_events_sampled_total"
JUDGED: Final = "evalstream_events_judged_total"
DEAD: Final = "evalstream_events_dead_lettered_total"
DUPLICATES: Final = "evalstream_events_duplicates_total"
RESPONSE_CHARS: Final = "evalstream_response_chars_total"
VERDICTS: Final = "evalstream_verdicts_total"
CASCADE_VERDICTS: Final = "evalstream_cascade_verdicts_total"
FORCED: Final = "evalstream_verdicts_forced_total"
LABELS: Final = "evalstream_verdict_labels_total"
QUALITY: Final = "evalstream_quality_score"
DECISIONS: Final = "evalstream_judge_decisions_total"
CALLS: Final = "evalstream_judge_calls_total"
PROBE_EVENTS: Final = "evalstream_embedding_probe_events_total"
PROBE_FAILURES: Final = "evalstream_embedding_probe_failures_total"
ESCALATIONS: Final = "evalstream_judge_escalations_total"
AUDITS: Final = "evalstream_judge_audits_total"
INPUT_TOKENS: Final = "evalstream_judge_input_tokens_total"
OUTPUT_TOKENS: Final = "evalstream_judge_output_tokens_total"
COST: Final = "evalstream_judge_cost_usd_total"
JUDGE_LATENCY: Final = "evalstream_judge_latency_seconds"
LAG: Final = "evalstream_verdict_lag_seconds"
RECORDS: Final = "evalstream_exporter_records_total"
FOLDED: Final = "evalstream_exporter_label_values_folded_total"
ADMITTED: Final = "evalstream_exporter_label_values"
LAST_RECORD: Final = "evalstream_exporter_last_record_timestamp_seconds"


def _spec(name: str, help: str, labels: tuple[str, ...], **kw: Any) -> MetricSpec:
    return MetricSpec(name=name, help=help, labels=tuple(str(label) for label in labels), **kw)


SPECS: Final = (
    _spec(EVENTS, "Events that entered the pipeline (Summary.events_in).", _M),
    _spec(UNSAMPLED, "Valid events the sampler passed over.", _M),
    _spec(SAMPLED, "Events chosen for judging: judged plus judge-stage dead letters.", _M),
    _spec(JUDGED, "Events that got a verdict (Summary.judged).", _M),
    _spec(DEAD, "Events dead-lettered, by reason (decode failures: model=unknown).", (*_M, LabelName.REASON)),
    _spec(DUPLICATES, "Events dropped as duplicates of an event id (also in dead_lettered).", _M),
    _spec(RESPONSE_CHARS, "Characters of responses seen (unsampled and judged events).", _M),
    _spec(VERDICTS, "Verdicts received (one per judged event).", _M),
    _spec(FORCED, "Verdicts on events sampled by an always-judge rule rather than the rate.", _M),
    _spec(
        LABELS, "Verdicts by dimension and label (gen_ai.evaluation.score.label).", (*_MD, LabelName.LABEL)
    ),
    _spec(
        QUALITY,
        "Quality scores, 1 to 10 (gen_ai.evaluation.score.value).",
        _M,
        kind=Kind.HISTOGRAM,
        buckets=QUALITY_BUCKETS,
    ),
    _spec(DECISIONS, "Dimension verdicts by the tier whose judgement was accepted.", _MDT),
    _spec(
        CALLS,
        "Judge calls per tier (every tier tried for a dimension verdict; embedding probe: no dimension).",
        _MDT,
    ),
    _spec(PROBE_EVENTS, "Verdicts in the embedding probe's sample (Verdict.embedding_probe).", _M),
    _spec(PROBE_FAILURES, "Verdicts in the embedding probe's sample left without statistics.", _M),
    _spec(ESCALATIONS, "Escalations to a stronger tier (tiers tried minus one).", _MD),
    _spec(AUDITS, "Dimension verdicts no tier was sure of, sent to human audit (abstentions).", _MD),
    _spec(INPUT_TOKENS, "Judge input tokens, attributed to the deciding tier.", _MDT),
    _spec(OUTPUT_TOKENS, "Judge output tokens, attributed to the deciding tier.", _MDT),
    _spec(COST, "Judge cost in US dollars, attributed to the deciding tier.", _MDT),
    _spec(
        JUDGE_LATENCY,
        "Judge time per dimension verdict, all tiers tried, by deciding tier.",
        (LabelName.DIMENSION, LabelName.TIER),
        kind=Kind.HISTOGRAM,
        buckets=JUDGE_LATENCY_BUCKETS,
    ),
    _spec(
        LAG,
        "Time from event to verdict (judged_at - event_time).",
        (),
        kind=Kind.HISTOGRAM,
        buckets=LAG_BUCKETS,
    ),
    _spec(
        CASCADE_VERDICTS,
        "Verdicts by the cascade config version that judged them.",
        (LabelName.CASCADE_VERSION,),
    ),
    _spec(RECORDS, "Records the exporter consumed, by stream and outcome.", ("stream", "outcome")),
    _spec(FOLDED, "Label values folded into 'other' by the label budget, by label name.", ("label_name",)),
    _spec(ADMITTED, "Distinct values kept per label name.", ("label_name",), kind=Kind.GAUGE),
    _spec(
        LAST_RECORD, "Kafka timestamp of the newest record consumed, by stream.", ("stream",), kind=Kind.GAUGE
    ),
    *drift_.SPECS,
    *agreement_.SPECS,
    *guarantee_.SPECS,
)


def _seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


class ExporterCore:
    """Applies records to ``Totals``; serves published copies through ``registry``.

    Not thread-safe: one consumer loop applies; scrapes read published copies only.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        budget: LabelBudget | None = None,
        *,
        state: Mapping[str, Any] | None = None,
        drift: DriftConfig | None = None,
        agreement: AgreementConfig | None = None,
        guarantee: guarantee_.GuaranteeTarget | None = None,
    ) -> None:
        """``state`` is what ``state()`` returned before a restart (totals, admitted labels, drift
        windows and the agreement join; states saved before drift and agreement existed lack those).
        ``guarantee``: what the loaded cascade config promises (the guarantee monitor's series)."""
        budget = budget or LabelBudget()
        if state is None:
            self.totals = Totals(SPECS)
            self.folder = LabelFolder(budget)
        else:
            self.totals = Totals.from_json(SPECS, state["totals"])
            self.folder = LabelFolder(budget, state["labels"])
        self.collector = TotalsCollector(SPECS)
        registry.register(self.collector)
        self._kept = {name: self.folder.kept(name) for name in LabelName}
        # "never" until a record comes: lets a stall alert fire on a silent start (labels are sporadic)
        for stream in (Stream.VERDICTS, Stream.SUMMARIES):
            self.totals.values[LAST_RECORD].setdefault((stream.value,), 0.0)
        self.drift = DriftTracker(drift or DriftConfig(), self.totals, (state or {}).get("drift"))
        self.agreement = AgreementTracker(
            agreement or AgreementConfig(),
            self.totals,
            self._label,
            (state or {}).get("agreement"),
            guarantee=guarantee,
        )

    # --- labels ---------------------------------------------------------------------------------

    def _label(self, name: LabelName, raw: str) -> str:
        if raw in self._kept[name]:  # the common case, without a call
            return raw
        value, folded = self.folder.value(name, raw)
        if folded:
            self.totals.inc(FOLDED, (str(name),))
        return value

    def _model_labels(self, model: str, version: str, route: str) -> tuple[str, str, str]:
        return (
            self._label(LabelName.MODEL, model),
            self._label(LabelName.MODEL_VERSION, version),
            self._label(LabelName.ROUTE, route),
        )

    # --- records --------------------------------------------------------------------------------

    def apply_summary(self, summary: summary_pb2.Summary, *, record_s: float = 0.0) -> Outcome:
        """``record_s``: the Kafka time of the record (caps the drift clock; 0 when unknown)."""
        t = self.totals
        m = self._model_labels(summary.model, summary.model_version, summary.route)
        dimension = self._label(LabelName.DIMENSION, summary.dimension) if summary.dimension else ""
        self.drift.add_summary(m[0], m[2], dimension, summary, record_s)
        if summary.dimension:
            return Outcome.IGNORED
        t.inc(EVENTS, m, summary.events_in)
        t.inc(UNSAMPLED, m, summary.unsampled)
        t.inc(JUDGED, m, summary.judged)
        t.inc(DUPLICATES, m, summary.duplicates)
        t.inc(RESPONSE_CHARS, m, summary.response_chars_sum)
        judge_failures = 0
        by_reason = 0
        for reason, count in sorted(summary.dead_letter_reasons.items()):
            t.inc(DEAD, (*m, self._label(LabelName.REASON, reason)), count)
            by_reason += count
            if reason.startswith(JUDGE_REASON_PREFIX):
                judge_failures += count
        if summary.dead_lettered > by_reason:  # reasons missing: count them, under "unknown"
            t.inc(DEAD, (*m, self._label(LabelName.REASON, "")), summary.dead_lettered - by_reason)
        t.inc(SAMPLED, m, summary.judged + judge_failures)
        return Outcome.APPLIED

    def apply_verdict(self, verdict: verdict_pb2.Verdict, *, record_s: float = 0.0) -> Outcome:
        """``record_s``: the Kafka time of the record (the join's clock; 0: use ``judged_at``)."""
        t = self.totals
        m = self._model_labels(verdict.model, verdict.model_version, verdict.route)
        t.inc(VERDICTS, m)
        t.inc(FORCED, m, float(verdict.forced))
        if verdict.HasField("event_time") and verdict.HasField("judged_at"):
            t.observe(LAG, (), max(_seconds(verdict.judged_at) - _seconds(verdict.event_time), 0.0))
        # The per-dimension loop is the exporter's hot path: series dicts are bound once, not looked
        # up per increment (Totals.inc does the same, with a call per increment).
        v = t.values
        labels, decisions, calls, escalations = v[LABELS], v[DECISIONS], v[CALLS], v[ESCALATIONS]
        audits, input_tokens, output_tokens, usd = v[AUDITS], v[INPUT_TOKENS], v[OUTPUT_TOKENS], v[COST]
        joined: list[VerdictDimension] = []
        for dim in verdict.dimensions:
            d = self._label(LabelName.DIMENSION, dim.dimension)
            md = (*m, d)
            tier = self._label(LabelName.TIER, str(dim.deciding_tier))
            mdt = (*md, tier)
            key = (*md, self._label(LabelName.LABEL, dim.label))
            labels[key] = labels.get(key, 0.0) + 1.0
            decisions[mdt] = decisions.get(mdt, 0.0) + 1.0
            tried = dim.tiers_tried
            for tier_tried in tried:
                key = (*md, self._label(LabelName.TIER, str(tier_tried)))
                calls[key] = calls.get(key, 0.0) + 1.0
            if verdict.calibration_sample:  # shadow judging: the tiers asked past the decision
                for shadow in dim.judgements:
                    if shadow.tier not in tried:
                        key = (*md, self._label(LabelName.TIER, str(shadow.tier)))
                        calls[key] = calls.get(key, 0.0) + 1.0
            escalations[md] = escalations.get(md, 0.0) + max(len(tried) - 1, 0)
            audits[md] = audits.get(md, 0.0) + dim.needs_audit
            cost = dim.cost
            input_tokens[mdt] = input_tokens.get(mdt, 0.0) + cost.input_tokens
            output_tokens[mdt] = output_tokens.get(mdt, 0.0) + cost.output_tokens
            usd[mdt] = usd.get(mdt, 0.0) + cost.usd
            t.observe(JUDGE_LATENCY, (d, tier), cost.latency_ms / 1000.0)
            if dim.dimension == Dimension.QUALITY:
                t.observe(QUALITY, m, dim.score)
            joined.append(
                VerdictDimension(dimension=dim.dimension, tier=tier, label=dim.label, audited=dim.needs_audit)
            )
        if verdict.HasField("embedding_probe"):
            probe = verdict.embedding_probe
            t.inc(PROBE_EVENTS, m)
            t.inc(PROBE_FAILURES, m, float(bool(probe.error)))
            if probe.called:
                key = (*m, "", self._label(LabelName.TIER, str(probe.tier)))
                calls[key] = calls.get(key, 0.0) + 1.0
        t.inc(CASCADE_VERDICTS, (self._label(LabelName.CASCADE_VERSION, verdict.cascade_version),))
        self.agreement.add_verdict(
            verdict.event_id, joined, record_s or _seconds(verdict.judged_at), verdict.cascade_version
        )
        return Outcome.APPLIED

    def apply_label(self, value: bytes | None, *, record_s: float) -> Outcome:
        """One ``evalstream.labels`` record; raises ``LabelRecordError`` when it is not a label."""
        label = decode_label(value)
        return Outcome.APPLIED if self.agreement.add_label(label, record_s) else Outcome.IGNORED

    def apply_bytes(self, stream: Stream, value: bytes | None, timestamp_ms: int) -> Outcome:
        """Decode one record's value and apply it; an undecodable record is counted and skipped."""
        record_s = timestamp_ms / 1000.0 if timestamp_ms > 0 else 0.0
        try:
            if stream is Stream.VERDICTS:
                outcome = self.apply_verdict(verdict_pb2.Verdict.FromString(value or b""), record_s=record_s)
            elif stream is Stream.SUMMARIES:
                outcome = self.apply_summary(summary_pb2.Summary.FromString(value or b""), record_s=record_s)
            else:
                outcome = self.apply_label(value, record_s=record_s)
        except (DecodeError, LabelRecordError):
            outcome = Outcome.UNDECODABLE
        self.totals.inc(RECORDS, (stream.value, outcome.value))
        if timestamp_ms > 0:
            seconds = timestamp_ms / 1000.0
            if seconds > self.totals.get(LAST_RECORD, (stream.value,)):
                self.totals.set(LAST_RECORD, (stream.value,), seconds)
        return outcome

    # --- publishing and state -------------------------------------------------------------------

    def publish(self) -> None:
        """Let scrapes see everything applied so far (call only once it is safely persisted)."""
        self.drift.publish()
        self.agreement.publish()
        for name, count in self.folder.counts().items():
            self.totals.set(ADMITTED, (name,), count)
        self.collector.publish(self.totals.copy())

    def state(self) -> dict[str, Any]:
        """Everything a restart needs to continue exactly: totals, admitted label values, drift
        windows and the agreement join."""
        return {
            "totals": self.totals.to_json(),
            "labels": self.folder.admitted(),
            "drift": self.drift.state(),
            "agreement": self.agreement.state(),
        }
