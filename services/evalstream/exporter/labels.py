"""Label values under a budget: a fixed set of label names, an allow-list and a cap per name.

Every label value the exporter writes goes through ``LabelFolder.value``. A value is kept as it is
when its label name has no allow-list or the allow-list holds it, it is not too long, and it is one
of the first ``cap`` distinct values seen for that name (values already admitted stay admitted).
Anything else becomes ``other`` and the fold is counted, so a flood of new model names or routes
cannot grow the number of series without bound, and the folding itself is visible.

Empty values (a dead letter that never decoded has no model) become ``unknown``; ``unknown`` and
``other`` never use up the cap. The admitted values are part of the exporter's persisted state, so
the same value keeps its own series across restarts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

__all__ = [
    "DEFAULT_CAPS",
    "MAX_VALUE_LENGTH",
    "OTHER",
    "UNKNOWN",
    "LabelBudget",
    "LabelFolder",
    "LabelName",
]

OTHER: Final = "other"
UNKNOWN: Final = "unknown"
#: Longer values are folded: a label value is a name, never a prompt or an id.
MAX_VALUE_LENGTH: Final = 128


class LabelName(StrEnum):
    """The only label names evaluation metrics carry."""

    MODEL = "model"
    MODEL_VERSION = "model_version"
    ROUTE = "route"
    DIMENSION = "dimension"
    TIER = "tier"
    LABEL = "label"
    REASON = "reason"
    CASCADE_VERSION = "cascade_version"


#: Distinct values kept per label name before folding into ``other`` (the "1x" label budget).
DEFAULT_CAPS: Final[Mapping[LabelName, int]] = {
    LabelName.MODEL: 20,
    LabelName.MODEL_VERSION: 20,
    LabelName.ROUTE: 20,
    LabelName.DIMENSION: 8,
    LabelName.TIER: 8,
    LabelName.LABEL: 32,
    LabelName.REASON: 32,
    LabelName.CASCADE_VERSION: 8,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelBudget:
    """How many values each label name may take, and which ones when an allow-list is given."""

    caps: Mapping[LabelName, int] = field(default_factory=lambda: dict(DEFAULT_CAPS))
    allow: Mapping[LabelName, frozenset[str]] = field(default_factory=dict)
    max_value_length: int = MAX_VALUE_LENGTH

    def cap(self, name: LabelName) -> int:
        return self.caps.get(name, DEFAULT_CAPS[name])

    def scaled(self, factor: int) -> LabelBudget:
        """The same budget with every cap multiplied by ``factor`` (benchmarks)."""
        return LabelBudget(
            caps={name: self.cap(name) * factor for name in LabelName},
            allow=self.allow,
            max_value_length=self.max_value_length,
        )


class LabelFolder:
    """Maps raw values to kept values or ``other``; remembers what it admitted and what it folded."""

    def __init__(self, budget: LabelBudget, admitted: Mapping[str, Iterable[str]] | None = None) -> None:
        self._budget = budget
        # dicts keep admission order, so the persisted state is stable and readable.
        self._admitted: dict[LabelName, dict[str, None]] = {name: {} for name in LabelName}
        for name, values in (admitted or {}).items():
            allow = budget.allow.get(LabelName(name))
            # A value admitted before an allow-list was set is dropped from then on.
            self._admitted[LabelName(name)] = dict.fromkeys(v for v in values if allow is None or v in allow)
        self._caps = {name: budget.cap(name) for name in LabelName}

    @property
    def budget(self) -> LabelBudget:
        return self._budget

    def kept(self, name: LabelName) -> Mapping[str, None]:
        """The values admitted so far for ``name`` (live; callers use it as a fast path)."""
        return self._admitted[name]

    def value(self, name: LabelName, raw: str) -> tuple[str, bool]:
        """The value to use for ``raw`` and whether it was folded into ``other``."""
        if not raw:
            return UNKNOWN, False
        allow = self._budget.allow.get(name)
        if allow is not None and raw not in allow:
            return OTHER, True
        admitted = self._admitted[name]
        if raw in admitted or raw in (OTHER, UNKNOWN):
            return raw, False
        if len(raw) > self._budget.max_value_length or len(admitted) >= self._caps[name]:
            return OTHER, True
        admitted[raw] = None
        return raw, False

    def admitted(self) -> dict[str, list[str]]:
        """Admitted values per label name, in admission order (for the state file)."""
        return {str(name): list(values) for name, values in self._admitted.items()}

    def counts(self) -> dict[str, int]:
        return {str(name): len(values) for name, values in self._admitted.items()}
