"""Tier-1 encoder judge speed, with the tier-0 rules judge as the same-run baseline.

    .venv/bin/python benchmarks/encoder_judge.py [--model-dir DIR] [--items 128] [--threads 1]

1. The artefact: ``--model-dir`` (else ``EVALSTREAM_ENCODER_MODEL_DIR``); with neither, it is trained
   into a temporary directory first and the training time is reported.
2. Load time: a fresh Python process imports the judge module and loads the judge, three times
   (median); the same for the rules judge.
3. Throughput: ``judge_batch`` over ``--items`` real XSTest v2 completions (prompt + response), at
   batch sizes 1, 16 and 128, for refusal alone and for refusal + quality, at each torch thread count
   in ``--threads``; the rules judge (refusal + format) on the same items and batch sizes. Each cell
   is the median of ``--repeat`` runs after one warm-up batch.

Prints a table and writes JSON to benchmarks/results/encoder_judge.json. Other processes on the
machine change these figures a lot (two torch threads on two busy cores are slower than one): the
JSON records the load average before and after. Measured once (load average ~1.5-3 from other work):
one thread, refusal ~60 items/s at batch 1 and ~105 at 16-128, refusal + quality ~20-33; with two
threads batch 16-128 fell to 20-32 and the rules judge in the same process to half its speed
(torch's idle threads spin).

Data: XSTest v2 (Röttger et al., NAACL 2024), https://github.com/paul-rottger/exaggerated-safety,
CC-BY-4.0; completions under the Meta, Mistral and OpenAI terms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from evalstream.evaluation.datasets import data_root, read_xstest
from evalstream.judges.base import Judge, JudgeInput
from evalstream.judges.encoder import ENCODER_MODEL_DIR_ENV, EncoderJudge
from evalstream.judges.encoder_train import train
from evalstream.judges.rules import RulesJudge

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "encoder_judge.json"
BATCH_SIZES = (1, 16, 128)

_LOAD_ENCODER = """
import sys, time
from pathlib import Path
t = time.perf_counter()
from evalstream.judges.encoder import EncoderJudge
judge = EncoderJudge.load(Path(sys.argv[1]), num_threads=1)
print(time.perf_counter() - t)
"""
_LOAD_RULES = """
import time
t = time.perf_counter()
from evalstream.judges.rules import RulesJudge
judge = RulesJudge.load()
print(time.perf_counter() - t)
"""


def load_seconds(script: str, *args: str, runs: int = 3) -> dict[str, float]:
    """Import + load inside a fresh interpreter (what a judge server pays at start), median of runs."""
    inside, wall = [], []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", script, *args], check=True, capture_output=True, text=True
        )
        wall.append(time.perf_counter() - started)
        inside.append(float(done.stdout.strip().splitlines()[-1]))
    return {
        "import_and_load_s": round(statistics.median(inside), 2),
        "process_wall_s": round(statistics.median(wall), 2),
        "runs": runs,
    }


def items_per_second(
    judge: Judge, items: Sequence[JudgeInput], batch: int, dimensions: frozenset[str], repeat: int
) -> float:
    judge.judge_batch(items[:batch], dimensions)  # warm-up
    rates = []
    for _ in range(repeat):
        started = time.perf_counter()
        for i in range(0, len(items), batch):
            judge.judge_batch(items[i : i + batch], dimensions)
        rates.append(len(items) / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="trained artefact (default: env, or train)"
    )
    parser.add_argument("--data", type=Path, default=None, help="shared data folder (default: data_root())")
    parser.add_argument("--items", type=int, default=128, help="completions judged per cell")
    parser.add_argument("--threads", default="1", help="torch thread counts to measure, e.g. 1,2")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per cell (median)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON results")
    args = parser.parse_args()
    console = Console()
    load_before = os.getloadavg()

    model_dir = args.model_dir or (Path(p) if (p := os.environ.get(ENCODER_MODEL_DIR_ENV)) else None)
    training: dict[str, Any] | None = None
    scratch = None
    if model_dir is None:
        scratch = tempfile.TemporaryDirectory(prefix="encoder-bench-")
        model_dir = Path(scratch.name) / "artefact"
        started = time.perf_counter()
        with console.status("training the encoder judge (no --model-dir)"):
            train(model_dir, root=args.data, num_threads=1)
        training = {"seconds": round(time.perf_counter() - started, 1), "threads": 1}

    records = read_xstest(data_root(args.data))
    step = max(1, len(records) // args.items)
    items = [
        JudgeInput(
            item_id=f"{r.model}/{r.prompt_id}",
            model=r.model,
            messages=(("user", r.prompt),),
            response=r.completion,
        )
        for r in records[::step][: args.items]
    ]

    with console.status("load times (fresh processes)"):
        loads = {
            "encoder": load_seconds(_LOAD_ENCODER, str(model_dir)),
            "rules": load_seconds(_LOAD_RULES),
        }

    rules = RulesJudge.load()
    cells: list[dict[str, Any]] = []
    thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]
    encoder: EncoderJudge | None = None
    for threads in thread_counts:
        encoder = EncoderJudge.load(model_dir, num_threads=threads)  # sets torch's threads for the process
        for batch in BATCH_SIZES:
            with console.status(f"threads {threads}, batch {batch}"):
                cells.append(
                    {
                        "threads": threads,
                        "batch": batch,
                        "encoder_refusal_items_per_s": round(
                            items_per_second(encoder, items, batch, frozenset({"refusal"}), args.repeat), 1
                        ),
                        "encoder_refusal_quality_items_per_s": round(
                            items_per_second(encoder, items, batch, encoder.dimensions, args.repeat), 1
                        ),
                        "rules_items_per_s": round(
                            items_per_second(rules, items, batch, rules.dimensions, args.repeat), 1
                        ),
                    }
                )
    if encoder is None:
        parser.error("--threads named no thread count")

    table = Table(title=f"{encoder.name} vs {rules.name}: items/s on {len(items)} XSTest completions")
    for column in (
        "torch threads",
        "batch",
        "encoder: refusal",
        "encoder: refusal + quality",
        "rules (tier 0)",
    ):
        table.add_column(column, justify="right")
    for c in cells:
        table.add_row(
            str(c["threads"]),
            str(c["batch"]),
            f"{c['encoder_refusal_items_per_s']:,.1f}",
            f"{c['encoder_refusal_quality_items_per_s']:,.1f}",
            f"{c['rules_items_per_s']:,.0f}",
        )
    console.print(table)
    console.print(
        "load (fresh process, import + load, median of 3): "
        f"encoder {loads['encoder']['import_and_load_s']:.2f} s, "
        f"rules {loads['rules']['import_and_load_s']:.2f} s"
        + (f"; training {training['seconds']:.1f} s" if training else "")
    )

    result = {
        "benchmark": "encoder_judge",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "encoder_judge": encoder.name,
        "baseline": rules.name,
        "items": len(items),
        "repeat": args.repeat,
        "load": loads,
        "training": training,
        "throughput": cells,
        "data": f"XSTest v2 completions, every {step}th (Röttger et al., NAACL 2024; CC-BY-4.0)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    console.print(f"wrote {args.out}")
    if scratch is not None:
        scratch.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
