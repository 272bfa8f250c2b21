"""Judge agreement online: human labels joined to verdicts by event id, accuracy and Cohen's kappa.

Human labels arrive on ``evalstream.labels`` (the record: ``evalstream.wire.labels.HumanLabelIn``). Only
the labels of the truth annotator (``truth_annotator``, ``adjudicated`` by default) are scored; other
annotators' labels are ignored here. A label is about one event and dimension; a verdict carries one
decision per dimension (the deciding tier's label).

The join, with bounded state. Whichever side arrives first waits for the other:

- a verdict waits (by event id, with the dimensions it decided) until a label for each dimension has
  come, or until the **labels** stream has moved ``ttl_s`` past it;
- a label waits (by event id and dimension) until its verdict comes, or until the **verdicts**
  stream has moved ``ttl_s`` past it.

Each side expires by the other stream's clock (Kafka record times, no wall clock): "no label came
within a day of the verdict" can only be said once the labels stream has reached that day, which
also holds while the exporter catches up after a stop. Each side holds at most ``max_pending``
entries; beyond that the oldest is evicted. Outcomes are counted in
``evalstream_judge_agreement_join_total{side, outcome}``:

- label side: ``paired``; ``audited`` (the verdict's dimension went to human audit: the cascade did
  not accept it, so it is not scored, as in ``evalstream report``); ``not_judged`` (the verdict has no
  such dimension); ``duplicate`` (that event and dimension were paired already); ``superseded`` (a
  newer label for the same event and dimension replaced it while waiting); ``expired``; ``evicted``;
- verdict side: ``expired`` and ``evicted`` (verdicts no label came for: most of them, normally).

Scores per dimension and deciding tier, and over all tiers (``tier="all"``): cumulative counters of
pairs and matches (rate them in PromQL for accuracy over any window), and over the last ``window``
pairs, gauges of accuracy with a Wilson interval (``scipy.stats.binomtest``) and Cohen's kappa with
a percentile bootstrap interval (``evalstream.evaluation.report.kappa_with_ci``: scikit-learn's kappa, scipy's
bootstrap). The pairs are sorted before the bootstrap, so the interval depends on the pairs only, not
on their arrival order (a restart, or another reader, gets the same figures). The window keeps
memory and the bootstrap's cost bounded, and lets a drop in agreement show.

State (pending entries, windows, both clocks) is part of the exporter's state, saved with the
offsets, so a restart neither loses waiting entries nor pairs anything twice.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Final, NamedTuple

from evalstream.wire.dimensions import Dimension
from evalstream.wire.labels import HumanLabelIn

from .agreement_scores import scores
from .guarantee import (
    CALIBRATED,
    GUARANTEE_PAIRS,
    GUARANTEE_VERSION,
    LOWER_BOUND,
    TARGET,
    TIER_CALIBRATED_AGREEMENT,
    GuaranteeTarget,
    agreement_lower_bound,
)
from .labels import LabelName
from .totals import Kind, MetricSpec, Totals

__all__ = [
    "ALL_TIERS",
    "SPECS",
    "AgreementConfig",
    "AgreementTracker",
    "JoinOutcome",
    "Side",
    "VerdictDimension",
]

#: The ``tier`` value of scores over every deciding tier (the cascade as a whole).
ALL_TIERS: Final = "all"
#: Cascade versions remembered (to tell a newer version from an older one still arriving).
_VERSIONS_KEPT: Final = 16

PAIRS: Final = "evalstream_judge_agreement_pairs_total"
MATCHES: Final = "evalstream_judge_agreement_matches_total"
JOIN: Final = "evalstream_judge_agreement_join_total"
PENDING: Final = "evalstream_judge_agreement_pending"
WINDOW_PAIRS: Final = "evalstream_judge_agreement_window_pairs"
ACCURACY: Final = "evalstream_judge_agreement_accuracy"
ACCURACY_LOW: Final = "evalstream_judge_agreement_accuracy_ci_lower"
ACCURACY_HIGH: Final = "evalstream_judge_agreement_accuracy_ci_upper"
KAPPA: Final = "evalstream_judge_agreement_kappa"
KAPPA_LOW: Final = "evalstream_judge_agreement_kappa_ci_lower"
KAPPA_HIGH: Final = "evalstream_judge_agreement_kappa_ci_upper"

_DT = (str(LabelName.DIMENSION), str(LabelName.TIER))


def _gauge(name: str, help: str, labels: tuple[str, ...] = _DT) -> MetricSpec:
    return MetricSpec(name=name, help=help, labels=labels, kind=Kind.GAUGE)


SPECS: Final = (
    MetricSpec(
        name=PAIRS, help="Verdicts joined to a human label, by dimension and deciding tier.", labels=_DT
    ),
    MetricSpec(name=MATCHES, help="Joined pairs where the judge's label equals the human's.", labels=_DT),
    MetricSpec(
        name=JOIN,
        help="Outcomes of the label-verdict join, by side (label or verdict) and outcome.",
        labels=("side", "outcome"),
    ),
    _gauge(PENDING, "Labels or verdicts waiting for the other side of the join.", ("side",)),
    _gauge(WINDOW_PAIRS, "Pairs in the agreement window (the last N pairs) the gauges are computed on."),
    _gauge(ACCURACY, "Share of the window's pairs where judge and human agree."),
    _gauge(ACCURACY_LOW, "Lower bound of the 95% Wilson interval of the accuracy."),
    _gauge(ACCURACY_HIGH, "Upper bound of the 95% Wilson interval of the accuracy."),
    _gauge(KAPPA, "Cohen's kappa between judge and human over the window."),
    _gauge(KAPPA_LOW, "Lower bound of the 95% bootstrap interval of Cohen's kappa."),
    _gauge(KAPPA_HIGH, "Upper bound of the 95% bootstrap interval of Cohen's kappa."),
)
_SCORE_GAUGES = (WINDOW_PAIRS, ACCURACY, ACCURACY_LOW, ACCURACY_HIGH, KAPPA, KAPPA_LOW, KAPPA_HIGH)


class Side(StrEnum):
    LABEL = "label"
    VERDICT = "verdict"


class JoinOutcome(StrEnum):
    PAIRED = "paired"
    AUDITED = "audited"
    NOT_JUDGED = "not_judged"
    DUPLICATE = "duplicate"
    SUPERSEDED = "superseded"
    EXPIRED = "expired"
    EVICTED = "evicted"


@dataclass(frozen=True, slots=True, kw_only=True)
class AgreementConfig:
    truth_annotator: str = "adjudicated"
    ttl_s: float = 86400.0
    max_pending: int = 20_000  # per side
    window: int = 500
    confidence: float = 0.95
    resamples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.ttl_s <= 0 or self.max_pending < 1 or self.window < 1 or not 0 < self.confidence < 1:
            raise ValueError(
                f"agreement settings: ttl_s > 0, max_pending >= 1, window >= 1 and 0 < confidence < 1 "
                f"expected, got {self}"
            )


class VerdictDimension(NamedTuple):
    """What the join keeps of one dimension of a verdict (a NamedTuple: built once per verdict
    dimension on the exporter's hot path)."""

    dimension: str  # as on the wire (labels name it the same way)
    tier: str  # label value of the deciding tier
    label: str
    audited: bool


class _Waiting:
    """A verdict waiting for labels: when it arrived, its dimensions (with "paired" flags) and the
    cascade version that judged it."""

    __slots__ = ("arrived", "dims", "paired", "version")

    def __init__(
        self, arrived: float, dims: dict[str, VerdictDimension], paired: set[str], version: str = ""
    ) -> None:
        self.arrived = arrived
        self.dims = dims
        self.paired = paired
        self.version = version


Label = Callable[[LabelName, str], str]


class AgreementTracker:
    """The join and the scores; counters and gauges are written into ``totals``.

    ``label`` maps a raw value to its value under the exporter's label budget. ``guarantee`` (from the
    loaded cascade config) turns on the guarantee monitor's series (``guarantee``).
    """

    def __init__(
        self,
        config: AgreementConfig,
        totals: Totals,
        label: Label,
        state: Mapping[str, Any] | None = None,
        guarantee: GuaranteeTarget | None = None,
    ) -> None:
        self._config = config
        self._totals = totals
        self._label = label
        self._guarantee = guarantee
        self._targets: dict[str, float] = {}  # dimension label value -> 1 - alpha
        self._verdicts: OrderedDict[str, _Waiting] = OrderedDict()
        self._labels: OrderedDict[tuple[str, str], tuple[float, str]] = OrderedDict()
        self._windows: dict[tuple[str, str], deque[tuple[str, str]]] = {}
        self._verdict_clock = 0.0
        self._label_clock = 0.0
        self._dirty: set[tuple[str, str]] = set()
        # The guarantee is tested on the verdicts of the newest cascade version only (a reloaded config
        # starts a fresh window): versions in the order first seen, and per dimension whether each
        # accepted, labelled verdict of the newest version agreed with the human.
        self._versions: list[str] = []
        self._guarantee_windows: dict[str, deque[bool]] = {}
        if state is not None:
            self._restore(state)
        self._set_guarantee()

    def set_guarantee(self, guarantee: GuaranteeTarget | None) -> None:
        """A new cascade config was loaded (live reload): its promises replace the old ones."""
        self._guarantee = guarantee
        self._targets.clear()
        self._set_guarantee()

    def _set_guarantee(self) -> None:
        """The config's promises as gauges (replacing any restored with the totals: the config may
        have changed across the restart); every calibrated dimension's bound is recomputed."""
        values = self._totals.values
        for name in (
            CALIBRATED,
            TARGET,
            LOWER_BOUND,
            TIER_CALIBRATED_AGREEMENT,
            GUARANTEE_PAIRS,
            GUARANTEE_VERSION,
        ):
            values[name].clear()
        g = self._guarantee
        if g is None:
            return

        def dimension(raw: str) -> str:
            return self._label(LabelName.DIMENSION, raw)

        for raw, calibrated in g.calibrated.items():
            values[CALIBRATED][(dimension(raw),)] = float(calibrated)
        for raw, target in g.targets.items():
            self._targets[dimension(raw)] = target
            values[TARGET][(dimension(raw),)] = target
        for (raw, tier), agreement in g.tier_agreement.items():
            values[TIER_CALIBRATED_AGREEMENT][(dimension(raw), self._label(LabelName.TIER, tier))] = agreement
        self._dirty.update(key for key in self._windows if key[1] == ALL_TIERS)

    # --- the join -----------------------------------------------------------------------------------

    def _count(self, side: Side, outcome: JoinOutcome, n: int = 1) -> None:
        self._totals.inc(JOIN, (side.value, outcome.value), n)

    def _expire(self) -> None:
        ttl, cap = self._config.ttl_s, self._config.max_pending
        verdicts, labels = self._verdicts, self._labels
        while verdicts:
            oldest = next(iter(verdicts.values()))
            if oldest.arrived + ttl >= self._label_clock and len(verdicts) <= cap:
                break
            verdicts.popitem(last=False)
            late = oldest.arrived + ttl < self._label_clock
            self._count(Side.VERDICT, JoinOutcome.EXPIRED if late else JoinOutcome.EVICTED)
        while labels:
            arrived, _ = next(iter(labels.values()))
            if arrived + ttl >= self._verdict_clock and len(labels) <= cap:
                break
            labels.popitem(last=False)
            late = arrived + ttl < self._verdict_clock
            self._count(Side.LABEL, JoinOutcome.EXPIRED if late else JoinOutcome.EVICTED)

    def _see_version(self, version: str) -> None:
        """A verdict of ``version`` arrived; a version not seen before is the newest from now on."""
        if version in self._versions:
            return
        self._versions = [*self._versions, version][-_VERSIONS_KEPT:]
        for dimension in self._guarantee_windows:
            self._dirty.add((dimension, ALL_TIERS))
        self._guarantee_windows.clear()

    def _pair(self, dim: VerdictDimension, human: str, version: str = "") -> None:
        dimension = self._label(LabelName.DIMENSION, dim.dimension)
        agree = float(human == dim.label)
        if self._versions and version == self._versions[-1]:
            window_g = self._guarantee_windows.get(dimension)
            if window_g is None:
                window_g = self._guarantee_windows[dimension] = deque(maxlen=self._config.window)
            window_g.append(bool(agree))
        for tier in (dim.tier, ALL_TIERS):
            key = (dimension, tier)
            self._totals.inc(PAIRS, key)
            self._totals.inc(MATCHES, key, agree)
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = deque(maxlen=self._config.window)
            window.append((human, dim.label))
            self._dirty.add(key)

    def _match(self, waiting: _Waiting, dimension: str, human: str) -> JoinOutcome:
        dim = waiting.dims.get(dimension)
        if dim is None:
            return JoinOutcome.NOT_JUDGED
        if dimension in waiting.paired:
            return JoinOutcome.DUPLICATE
        waiting.paired.add(dimension)
        if dim.audited:
            return JoinOutcome.AUDITED
        self._pair(dim, human, waiting.version)
        return JoinOutcome.PAIRED

    def add_verdict(
        self, event_id: str, dims: Sequence[VerdictDimension], at_s: float, version: str = ""
    ) -> None:
        """A verdict arrived (``at_s``: its Kafka time; ``version``: its cascade version): pair it
        with waiting labels, or let it wait."""
        self._verdict_clock = max(self._verdict_clock, at_s)
        self._see_version(version)
        waiting = _Waiting(at_s, {d.dimension: d for d in dims}, set(), version)
        if self._labels:  # usually empty: labels come after their verdicts
            for dimension in Dimension:
                held = self._labels.pop((event_id, dimension.value), None)
                if held is not None:
                    self._count(Side.LABEL, self._match(waiting, dimension.value, held[1]))
        if len(waiting.paired) < len(waiting.dims):
            self._verdicts.pop(event_id, None)  # the pipeline writes one verdict per event id
            self._verdicts[event_id] = waiting
        self._expire()

    def add_label(self, label: HumanLabelIn, at_s: float) -> bool:
        """A label arrived (``at_s``: its Kafka time); False when it is not the truth annotator's."""
        self._label_clock = max(self._label_clock, at_s)
        if label.annotator != self._config.truth_annotator:
            self._expire()
            return False
        dimension = label.dimension.value
        waiting = self._verdicts.get(label.event_id)
        if waiting is not None:
            self._count(Side.LABEL, self._match(waiting, dimension, label.label))
            if len(waiting.paired) == len(waiting.dims):
                del self._verdicts[label.event_id]
        else:
            key = (label.event_id, dimension)
            if self._labels.pop(key, None) is not None:
                self._count(Side.LABEL, JoinOutcome.SUPERSEDED)
            self._labels[key] = (at_s, label.label)
        self._expire()
        return True

    # --- gauges -------------------------------------------------------------------------------------

    def publish(self) -> None:
        """Pending counts, and the scores of every (dimension, tier) whose window changed."""
        values = self._totals.values
        values[PENDING][(Side.VERDICT.value,)] = float(len(self._verdicts))
        values[PENDING][(Side.LABEL.value,)] = float(len(self._labels))
        c = self._config
        for key in sorted(self._dirty):
            window = self._windows.get(key)
            for name in _SCORE_GAUGES:
                values[name].pop(key, None)
            if not window:
                continue
            s = scores(list(window), confidence=c.confidence, resamples=c.resamples, seed=c.seed)
            values[WINDOW_PAIRS][key] = float(s.pairs)
            values[ACCURACY][key] = s.accuracy
            values[ACCURACY_LOW][key] = s.accuracy_low
            values[ACCURACY_HIGH][key] = s.accuracy_high
            for name, value in ((KAPPA, s.kappa), (KAPPA_LOW, s.kappa_low), (KAPPA_HIGH, s.kappa_high)):
                if value is not None:
                    values[name][key] = value
            dimension, tier = key
            if tier == ALL_TIERS and dimension in self._targets and self._guarantee is not None:
                newest = self._guarantee_windows.get(dimension)
                values[LOWER_BOUND].pop((dimension,), None)
                values[GUARANTEE_PAIRS][(dimension,)] = float(len(newest or ()))
                if newest:
                    values[LOWER_BOUND][(dimension,)] = agreement_lower_bound(
                        sum(newest), len(newest), self._guarantee.delta
                    )
        if self._versions and self._guarantee is not None:
            values[GUARANTEE_VERSION].clear()
            values[GUARANTEE_VERSION][(self._label(LabelName.CASCADE_VERSION, self._versions[-1]),)] = 1.0
        self._dirty.clear()

    # --- state --------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "config": asdict(self._config),
            "clocks": [self._verdict_clock, self._label_clock],
            "unpublished": sorted(self._dirty),
            "verdicts": [
                [
                    event_id,
                    w.arrived,
                    [
                        [d.dimension, d.tier, d.label, d.audited, d.dimension in w.paired]
                        for d in w.dims.values()
                    ],
                    w.version,
                ]
                for event_id, w in self._verdicts.items()
            ],
            "versions": list(self._versions),
            "guarantee_windows": [
                [dim, [int(a) for a in window]] for dim, window in self._guarantee_windows.items()
            ],
            "labels": [
                [event_id, dim, arrived, label] for (event_id, dim), (arrived, label) in self._labels.items()
            ],
            "windows": [
                [dim, tier, [list(p) for p in window]] for (dim, tier), window in self._windows.items()
            ],
        }

    def _restore(self, state: Mapping[str, Any]) -> None:
        self._verdict_clock, self._label_clock = (float(c) for c in state["clocks"])
        # windows changed after the last publish (their gauges, restored with the totals, are older)
        self._dirty = {(str(dim), str(tier)) for dim, tier in state["unpublished"]}
        for event_id, arrived, dims, *version in state["verdicts"]:  # version: states since recalibrate
            kept = {
                str(d): VerdictDimension(dimension=str(d), tier=str(t), label=str(lbl), audited=bool(a))
                for d, t, lbl, a, _ in dims
            }
            paired = {str(d) for d, _, _, _, p in dims if p}
            self._verdicts[str(event_id)] = _Waiting(
                float(arrived), kept, paired, str(version[0]) if version else ""
            )
        self._versions = [str(v) for v in state.get("versions", [])]
        for dim, agreed in state.get("guarantee_windows", []):
            window_g: deque[bool] = deque(maxlen=self._config.window)
            window_g.extend(bool(a) for a in agreed)
            self._guarantee_windows[str(dim)] = window_g
        if state["config"].get("truth_annotator") == self._config.truth_annotator:
            for event_id, dim, arrived, label in state["labels"]:
                self._labels[(str(event_id), str(dim))] = (float(arrived), str(label))
        for dim, tier, pairs in state["windows"]:
            window: deque[tuple[str, str]] = deque(maxlen=self._config.window)
            window.extend((str(h), str(j)) for h, j in pairs)
            self._windows[(str(dim), str(tier))] = window
