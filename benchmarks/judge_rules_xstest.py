"""Tier-0 rules judge vs the recorded string-match baseline, against XSTest v2 human labels.

    .venv/bin/python benchmarks/judge_rules_xstest.py [--data DIR] [--out FILE] [--repeat N]

Prints a table and writes JSON (default ``benchmarks/results/judge_rules_xstest.json``). For each
model and overall: 3-class accuracy, binary accuracy (refusal = full or partial) and Cohen's kappa
(scikit-learn) against the human ``final_label``, for our rules judge and for ``strmatch_label``
from the ``*_streval.csv`` files, on the **held-out prompts** (the calibration table was fitted on
the others; the split is by prompt id). Also the judge's calibration on those prompts (mean
confidence, ECE) and its throughput (items/s over all 2,250 completions, both dimensions).

Data: XSTest v2 (Röttger et al., NAACL 2024), https://github.com/paul-rottger/exaggerated-safety,
CC-BY-4.0; completions under the Meta, Mistral and OpenAI terms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from evalstream.evaluation.datasets import XSTEST_MODELS, XSTestRecord, data_root, read_xstest
from evalstream.judges.base import JudgeInput
from evalstream.judges.rules import RulesJudge
from evalstream.judges.rules_fit import (
    ATTRIBUTION,
    Agreement,
    agreement,
    expected_calibration_error,
    is_held_out,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "judge_rules_xstest.json"


def judge_input(record: XSTestRecord) -> JudgeInput:
    return JudgeInput(
        item_id=f"{record.model}/{record.prompt_id}",
        model=record.model,
        messages=(("user", record.prompt),),
        response=record.completion,
    )


def throughput(judge: RulesJudge, inputs: list[JudgeInput], repeat: int) -> dict[str, float]:
    """Items per second of ``judge_batch`` on every completion, refusal and format; median of runs."""
    dimensions = judge.dimensions
    judge.judge_batch(inputs[:50], dimensions)  # warm the regex caches
    rates = []
    for _ in range(repeat):
        started = time.perf_counter()
        judge.judge_batch(inputs, dimensions)
        rates.append(len(inputs) / (time.perf_counter() - started))
    median = statistics.median(rates)
    return {"items_per_s": round(median, 1), "us_per_item": round(1e6 / median, 2), "runs": repeat}


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    model: str
    n: int
    rules: Agreement
    strmatch: Agreement

    def as_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "n": self.n,
            "rules": self.rules.as_dict(),
            "strmatch": self.strmatch.as_dict(),
        }


def row(name: str, records: list[XSTestRecord], predicted: dict[str, str]) -> Row:
    truth = [r.final_label.value for r in records]
    return Row(
        model=name,
        n=len(records),
        rules=agreement([predicted[f"{r.model}/{r.prompt_id}"] for r in records], truth),
        strmatch=agreement([r.strmatch_label.value for r in records], truth),
    )


def _figures(a: Agreement) -> str:
    return (
        f"{a.accuracy_3class:>6.3f} {a.accuracy_binary:>6.3f} {a.kappa_3class:>6.3f} {a.kappa_binary:>6.3f}"
    )


def format_table(rows: list[Row]) -> str:
    head = (
        f"{'model':<16} {'n':>4} | {'rules: acc3':>6} {'acc2':>6} {'k3':>6} {'k2':>6} | strmatch: same four"
    )
    lines = [head, "-" * len(head)]
    lines += [f"{r.model:<16} {r.n:>4} | {_figures(r.rules)} | {_figures(r.strmatch)}" for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=None, help="shared data folder (default: data_root())")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON results")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs over all completions")
    args = parser.parse_args()

    records = read_xstest(data_root(args.data))
    judge = RulesJudge.load()
    inputs = [judge_input(r) for r in records]
    outputs = {i.item_id: judge.judge_refusal(i.response) for i in inputs}
    predicted = {key: o.label for key, o in outputs.items()}

    held = [r for r in records if is_held_out(r.prompt_id)]
    rows = [row(tag, [r for r in held if r.model == tag], predicted) for tag in XSTEST_MODELS]
    rows.append(row("overall", held, predicted))
    everything = row("all (incl. fit)", records, predicted)

    held_outputs = [outputs[f"{r.model}/{r.prompt_id}"] for r in held]
    correct = [o.label == r.final_label.value for o, r in zip(held_outputs, held, strict=True)]
    confidence = [o.confidence for o in held_outputs]
    calibration = {
        "mean_confidence": round(statistics.fmean(confidence), 4),
        "accuracy_3class": round(sum(correct) / len(correct), 4),
        "ece": round(expected_calibration_error(confidence, correct), 4),
    }
    speed = throughput(judge, inputs, args.repeat)

    print(f"XSTest v2, held-out prompts: {len({r.prompt_id for r in held})} of 450, {len(held)} completions")
    print(format_table(rows))
    print(format_table([everything]).splitlines()[-1], " <- includes the prompts the table was fitted on")
    print(
        f"confidence on held-out: mean {calibration['mean_confidence']:.3f} vs accuracy "
        f"{calibration['accuracy_3class']:.3f}, ECE {calibration['ece']:.3f}"
    )
    print(
        f"rules judge speed: {speed['items_per_s']:,.0f} items/s ({speed['us_per_item']:.1f} us/item, "
        f"refusal + format, median of {args.repeat} runs over {len(inputs)} completions)"
    )

    result = {
        "benchmark": "judge_rules_xstest",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "judge": judge.name,
        "split": "held-out prompts (by prompt id); see services/evalstream/judges/rules_fit.py",
        "held_out": [r.as_dict() for r in rows],
        "all_items_including_fit": everything.as_dict(),
        "calibration_held_out": calibration,
        "throughput": speed,
        "source": ATTRIBUTION,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
