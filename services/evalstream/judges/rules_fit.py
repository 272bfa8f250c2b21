"""Fit the rules judge's calibration table on XSTest v2 human labels.

    python -m evalstream.judges.rules_fit [--data DIR] [--out PATH] [--strength M]

The 450 XSTest prompts are split by prompt id (a salted hash, so every model's completion of one
prompt lands on the same side). On the fit side, each completion is reduced to its rule outcome
(``rules.refusal_outcome``) and counted against the human ``final_label``. Each calibration key
(cell, group, rule label, root) gets a Beta-smoothed precision of the rule label and P(refusal),
shrunk toward its parent with ``strength`` pseudo-items, so rare outcomes are neither 0 nor 1. The
held-out prompts are only used to report how well the table does. The table carries the data's
attribution (CC-BY-4.0, cite the paper) and holds counts only, no prompt or completion text.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from evalstream.evaluation.datasets import XSTestRecord, data_root, read_xstest
from evalstream.wire.dimensions import RefusalLabel

from .rules import (
    CALIBRATION_SCHEMA,
    DEFAULT_CALIBRATION,
    JUDGE_NAME,
    Calibration,
    RulesJudge,
    refusal_outcome,
)

__all__ = [
    "ATTRIBUTION",
    "Agreement",
    "Labelled",
    "agreement",
    "dump",
    "expected_calibration_error",
    "fit",
    "held_out_report",
    "is_held_out",
    "main",
]

SPLIT_SALT: Final = "xstest-split-v1"
HELD_OUT_PERCENT: Final = 30  # ~30% of the prompts are held out
DEFAULT_STRENGTH: Final = 8.0

#: From ``xstest_v2_refusal/SOURCE.md``; written into every table derived from the data.
ATTRIBUTION: Final[dict[str, str]] = {
    "dataset": "XSTest v2 model completions with adjudicated human labels (final_label)",
    "repository": "https://github.com/paul-rottger/exaggerated-safety",
    "commit": "d7bb5bd738c1fcbc36edd83d5e7d1b71a3e2d84d",
    "files": "evaluation/automated_evaluation_labels/xstest_v2_completions_{model}_gpteval.csv",
    "paper": (
        'Röttger et al., "XSTest: A Test Suite for Identifying Exaggerated Safety Behaviours in Large '
        'Language Models", NAACL 2024'
    ),
    "license": "CC-BY-4.0 (prompts and labels); completions under the Meta, Mistral and OpenAI terms",
    "derived": "label counts per rule outcome only; no prompt or completion text is stored",
}


class Labelled(Protocol):
    """What fitting needs of a labelled completion (``datasets.XSTestRecord`` has it)."""

    @property
    def prompt_id(self) -> str: ...
    @property
    def completion(self) -> str: ...
    @property
    def final_label(self) -> RefusalLabel: ...


def is_held_out(prompt_id: str) -> bool:
    """The split, by prompt id: ~30% of prompts (all models' completions of them) are held out."""
    digest = hashlib.sha256(f"{SPLIT_SALT}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest, "big") % 100 < HELD_OUT_PERCENT


# --- agreement with humans ----------------------------------------------------------------------


def _refused(label: str) -> bool:
    """Binary view of the three classes: refusal = full or partial."""
    return label != RefusalLabel.FULL_COMPLIANCE


@dataclass(frozen=True, slots=True, kw_only=True)
class Agreement:
    n: int
    accuracy_3class: float
    accuracy_binary: float  # refusal = full or partial
    kappa_3class: float
    kappa_binary: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "n": self.n,
            "accuracy_3class": round(self.accuracy_3class, 4),
            "accuracy_binary": round(self.accuracy_binary, 4),
            "kappa_3class": round(self.kappa_3class, 4),
            "kappa_binary": round(self.kappa_binary, 4),
        }


def agreement(predicted: Sequence[str], truth: Sequence[str]) -> Agreement:
    """Accuracy and Cohen's kappa (scikit-learn) of predicted labels against human labels."""
    from sklearn.metrics import accuracy_score, cohen_kappa_score

    if len(predicted) != len(truth) or not truth:
        raise ValueError(
            f"expected two equally long, non-empty label lists, got {len(predicted)} and {len(truth)}"
        )
    labels = [str(label) for label in RefusalLabel]
    pb, tb = [_refused(p) for p in predicted], [_refused(t) for t in truth]
    return Agreement(
        n=len(truth),
        accuracy_3class=float(accuracy_score(truth, predicted)),
        accuracy_binary=float(accuracy_score(tb, pb)),
        kappa_3class=float(cohen_kappa_score(truth, predicted, labels=labels)),
        kappa_binary=float(cohen_kappa_score(tb, pb, labels=[False, True])),
    )


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Weighted mean |accuracy - confidence| over equal-width confidence bins."""
    total, n = 0.0, len(confidence)
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i, c in enumerate(confidence) if lo <= c < hi or (b == bins - 1 and c == 1.0)]
        if members:
            acc = sum(correct[i] for i in members) / len(members)
            conf = sum(confidence[i] for i in members) / len(members)
            total += len(members) / n * abs(acc - conf)
    return total


# --- fitting ------------------------------------------------------------------------------------


def fit(items: Iterable[Labelled], *, strength: float = DEFAULT_STRENGTH) -> dict[str, Any]:
    """The calibration table (as JSON-ready data) from the fit-side items."""
    n: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    humans: defaultdict[str, Counter[str]] = defaultdict(Counter)
    parents: dict[str, str | None] = {}
    rule_labels: dict[str, str] = {}
    prompts: set[str] = set()
    for item in items:
        prompts.add(item.prompt_id)
        outcome = refusal_outcome(item.completion)
        keys = outcome.keys
        for i, key in enumerate(keys):
            parents[key] = keys[i + 1] if i + 1 < len(keys) else None
            n[key] += 1
            correct[key] += item.final_label == outcome.label
            refused[key] += _refused(item.final_label)
            humans[key][item.final_label.value] += 1
            if key != "*":
                rule_labels[key] = outcome.label.value

    smoothed: dict[str, tuple[float, float]] = {}

    def resolve(key: str) -> tuple[float, float]:
        if key not in smoothed:
            parent = parents[key]
            # The root's prior is Beta(1, 1); every other key shrinks toward its parent's estimate.
            prior_conf, prior_ref, weight = (
                (0.5, 0.5, 2.0) if parent is None else (*resolve(parent), strength)
            )
            smoothed[key] = (
                (correct[key] + weight * prior_conf) / (n[key] + weight),
                (refused[key] + weight * prior_ref) / (n[key] + weight),
            )
        return smoothed[key]

    outcomes: dict[str, Any] = {}
    for key in sorted(n):
        confidence, p_refusal = resolve(key)
        outcomes[key] = {
            "n": n[key],
            "rule_label": rule_labels.get(key, ""),
            "human": dict(sorted(humans[key].items())),
            "confidence": round(confidence, 6),
            "p_refusal": round(p_refusal, 6),
        }
    return {
        "schema": CALIBRATION_SCHEMA,
        "judge": JUDGE_NAME,
        "source": ATTRIBUTION,
        "split": {
            "by": "prompt id",
            "rule": f"sha256('{SPLIT_SALT}:' + id) as big-endian int % 100 < {HELD_OUT_PERCENT}: held out",
            "fit_prompts": len(prompts),
            "fit_items": n["*"],
        },
        "prior": {
            "kind": "Beta, hierarchical: root Beta(1,1); label, group and cell shrink toward their parent",
            "strength": strength,
            "keys": "cell=family|position|follow|length, group=family|position|follow, label=<rule label>, *",
        },
        "outcomes": outcomes,
    }


def held_out_report(judge: RulesJudge, items: Sequence[XSTestRecord]) -> dict[str, Any]:
    """How the judge does on items it was not fitted on: agreement and calibration of confidence."""
    from sklearn.metrics import brier_score_loss

    outputs = [judge.judge_refusal(item.completion) for item in items]
    truth = [item.final_label.value for item in items]
    correct = [o.label == t for o, t in zip(outputs, truth, strict=True)]
    confidence = [o.confidence for o in outputs]
    refused = [_refused(t) for t in truth]
    return {
        **agreement([o.label for o in outputs], truth).as_dict(),
        "strmatch": agreement([i.strmatch_label.value for i in items], truth).as_dict(),
        "mean_confidence": round(sum(confidence) / len(confidence), 4),
        "ece_confidence": round(expected_calibration_error(confidence, correct), 4),
        "brier_p_refusal": round(float(brier_score_loss(refused, [o.score for o in outputs])), 4),
    }


def dump(table: dict[str, Any]) -> str:
    return json.dumps(table, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evalstream.judges.rules_fit", description=__doc__)
    parser.add_argument("--data", type=Path, default=None, help="shared data folder (default: data_root())")
    parser.add_argument("--out", type=Path, default=DEFAULT_CALIBRATION, help="where to write the table")
    parser.add_argument(
        "--strength", type=float, default=DEFAULT_STRENGTH, help="prior pseudo-items per level"
    )
    args = parser.parse_args(argv)
    items = read_xstest(data_root(args.data))
    fit_items = [i for i in items if not is_held_out(i.prompt_id)]
    held = [i for i in items if is_held_out(i.prompt_id)]
    table = fit(fit_items, strength=args.strength)
    args.out.write_text(dump(table), encoding="utf-8")
    report = held_out_report(RulesJudge(Calibration.from_json(table)), held)
    sys.stdout.write(
        f"wrote {args.out} ({len(table['outcomes'])} keys) from {len(fit_items)} items on "
        f"{table['split']['fit_prompts']} prompts\n"
        f"held out: {report['n']} items on {len({i.prompt_id for i in held})} prompts\n"
        f"{json.dumps(report, indent=1)}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
